#!/usr/bin/env bash
# Linux pings the stack through net_tap; ARP resolves both ways.
. "$(dirname "$0")/common.bash"
need_root_tap
N=11 IF=mxt11
write_config "$TMP/c.conf" $IF $N
start_bg "$TMP/svc.log" "$BUILD/tests/net/netsvc" --config "$TMP/c.conf" --discard 9 --duration 60
SVC=$LAST_PID
wait_iface $IF 10.77.$N.1 || { cat "$TMP/svc.log"; fail "TAP did not come up"; }
ping -c 5 -i 0.2 -W 2 10.77.$N.2 >"$TMP/ping.log" || { cat "$TMP/ping.log" "$TMP/svc.log"; fail "ping failed"; }
grep -q ' 0% packet loss' "$TMP/ping.log" || { cat "$TMP/ping.log"; fail "ping lost packets"; }
ip neigh show 10.77.$N.2 dev $IF | grep -qE 'REACHABLE|STALE|DELAY' || fail "no ARP entry for the stack on the host"
# A TCP connection makes the stack resolve the host (its SYN-ACK needs the MAC).
$PY - <<PYEOF || fail "TCP connect to the discard service failed"
import socket
s = socket.create_connection(("10.77.$N.2", 9), timeout=5)
s.sendall(b"x" * 1000)
s.close()
PYEOF
sleep 0.3
stop_pid $SVC || true
cat "$TMP/svc.log"
[ "$(mxstat "$TMP/svc.log" discard_bytes)" = 1000 ] || fail "discard service did not get 1000 bytes"
echo "ping and ARP ok"
