#!/usr/bin/env bash
# Clean FIN and RST handling seen from the Linux side: clients that close
# normally, clients that abort with RST (SO_LINGER 0), and a stack that
# closes first; afterwards ss shows no stuck connection, and the stack's
# counters saw the resets.
. "$(dirname "$0")/common.bash"
need_root_tap
N=16 IF=mxt16
write_config "$TMP/c.conf" $IF $N
start_bg "$TMP/svc.log" "$BUILD/tests/net/netsvc" --config "$TMP/c.conf" --echo 7 --discard 9 --duration 60
SVC=$LAST_PID
wait_iface $IF 10.77.$N.1 || { cat "$TMP/svc.log"; fail "TAP did not come up"; }
timeout 60 $PY - <<PYEOF || fail "client script failed"
import socket, struct, time
host = "10.77.$N.2"
# 1. normal close after an echo exchange
for i in range(50):
    s = socket.create_connection((host, 7), timeout=5)
    s.sendall(b"hello %d\r\n" % i)
    want = b"hello %d\r\n" % i
    got = b""
    while len(got) < len(want):
        d = s.recv(100)
        assert d, "EOF before echo"
        got += d
    assert got == want, (got, want)
    s.shutdown(socket.SHUT_WR)
    assert s.recv(100) == b"", "stack did not close after our FIN"
    s.close()
# 2. abort with RST
for i in range(50):
    s = socket.create_connection((host, 9), timeout=5)
    s.sendall(b"x" * 100)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
# 3. a connection to a closed port is refused with RST
s = socket.socket()
s.settimeout(5)
try:
    s.connect((host, 4444))
    raise SystemExit("connect to a closed port succeeded")
except ConnectionRefusedError:
    pass
print("client phases ok")
PYEOF
sleep 1
ss -tan "dst 10.77.$N.2" >"$TMP/ss"
cat "$TMP/ss"
stuck=$(tail -n +2 "$TMP/ss" | grep -vc TIME-WAIT || true)
stop_pid $SVC || true
cat "$TMP/svc.log"
[ "$stuck" = 0 ] || fail "$stuck connections stuck on the Linux side"
resets=$(mxstat "$TMP/svc.log" resets_in)
[ "${resets:-0}" -ge 50 ] || fail "stack counted ${resets:-0} resets, expected >= 50"
echo "FIN/RST ok"
