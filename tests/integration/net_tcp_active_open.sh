#!/usr/bin/env bash
# The stack opens 200 connections to a Linux echo server, sends 1 MiB on
# each and checks every byte that comes back.  MX_FAULTS=1: with faults.
. "$(dirname "$0")/common.bash"
need_root_tap
N=${MX_NET:-13} IF=mxt${MX_NET:-13}
CONNS=${CONNS:-200} BYTES=${BYTES:-1048576}
extra=""
[ "${MX_FAULTS:-0}" = 1 ] && extra="fault_drop = 20
fault_reorder = 10
fault_dup = 5
fault_seed = 11"
write_config "$TMP/c.conf" $IF $N "$extra"
# The TAP and its host address exist only once the stack runs: the stack
# waits 2 s before connecting, while the server binds the TAP's address.
start_bg "$TMP/svc.log" "$BUILD/tests/net/netsvc" --config "$TMP/c.conf" \
	--connect 10.77.$N.1:7000 --conns $CONNS --bytes $BYTES --duration 200 --start-delay 2000
SVC=$LAST_PID
wait_iface $IF 10.77.$N.1 || { cat "$TMP/svc.log"; fail "TAP did not come up"; }
start_bg "$TMP/srv.log" $PY "$(dirname "$0")/tcp_echo.py" server 10.77.$N.1 7000 270
wait $SVC
rc=$?
cat "$TMP/svc.log"
[ $rc = 0 ] || { cat "$TMP/srv.log"; fail "active-open clients failed (rc=$rc)"; }
grep -q "clients $CONNS done $CONNS failed 0" "$TMP/svc.log" || fail "not all clients done"
