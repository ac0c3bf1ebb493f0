#!/usr/bin/env bash
# 200 concurrent Linux clients each send 1 MiB to the stack's echo service
# and read it back; SHA-256 of every stream compared.  With MX_FAULTS=1 the
# same through fault injection (2% drop, 1% reorder, 0.5% duplicate).
. "$(dirname "$0")/common.bash"
need_root_tap
N=${MX_NET:-12} IF=mxt${MX_NET:-12}
CONNS=${CONNS:-200} BYTES=${BYTES:-1048576}
extra=""
[ "${MX_FAULTS:-0}" = 1 ] && extra="fault_drop = 20
fault_reorder = 10
fault_dup = 5
fault_seed = 7"
write_config "$TMP/c.conf" $IF $N "$extra"
start_bg "$TMP/svc.log" "$BUILD/tests/net/netsvc" --config "$TMP/c.conf" --echo 7 --duration 280
SVC=$LAST_PID
wait_iface $IF 10.77.$N.1 || { cat "$TMP/svc.log"; fail "TAP did not come up"; }
start=$(date +%s.%N)
timeout 260 $PY "$(dirname "$0")/tcp_echo.py" clients 10.77.$N.2 7 $CONNS $BYTES || rc=$?
end=$(date +%s.%N)
sleep 0.5
ss -tan "dst 10.77.$N.2" | tail -n +2 | awk '{print $1}' | sort | uniq -c
stuck=$(ss -tan "dst 10.77.$N.2" | tail -n +2 | grep -vcE 'TIME-WAIT' || true)
stop_pid $SVC || true
cat "$TMP/svc.log"
[ "${rc:-0}" = 0 ] || fail "clients failed"
[ "$stuck" = 0 ] || fail "$stuck Linux connections not closed"
echo "$CONNS x $BYTES echoed in $(echo "$end - $start" | bc) s"
