#!/usr/bin/env bash
# A SYN flood from a raw-socket sender (spoofed sources inside this test's
# own subnet) against the listener while legitimate clients still connect:
# the SYN backlog fills, SYN cookies take over, every real client succeeds.
. "$(dirname "$0")/common.bash"
need_root_tap
N=17 IF=mxt17
write_config "$TMP/c.conf" $IF $N "
[tcp]
syn_backlog = 32"
start_bg "$TMP/svc.log" "$BUILD/tests/net/netsvc" --config "$TMP/c.conf" --echo 7 --duration 90
SVC=$LAST_PID
wait_iface $IF 10.77.$N.1 || { cat "$TMP/svc.log"; fail "TAP did not come up"; }
# The flood: 30,000 SYNs in at most 10 s from 10.77.$N.100-199.
cat >"$TMP/flood.py" <<PYEOF
import random, socket, struct, time
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
dst = socket.inet_aton("10.77.$N.2")
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
rnd = random.Random(5)
end = time.monotonic() + 10
sent = 0
while sent < 30000 and time.monotonic() < end:
    src = socket.inet_aton("10.77.$N.%d" % rnd.randint(100, 199))
    sport = rnd.randint(1024, 65535)
    tcp = struct.pack("!HHIIBBHHH", sport, 7, rnd.getrandbits(32), 0, 5 << 4, 0x02, 65535, 0, 0)
    ph = src + dst + struct.pack("!BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", csum(ph + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), sent & 0xffff, 0, 64, 6, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    s.sendto(ip + tcp, ("10.77.$N.2", 0))
    sent += 1
print("flood sent", sent)
PYEOF
start_bg "$TMP/flood.log" timeout 20 $PY "$TMP/flood.py"
FLOOD=$LAST_PID
sleep 1
timeout 60 $PY "$(dirname "$0")/tcp_echo.py" clients 10.77.$N.2 7 50 65536 || rc=$?
wait $FLOOD
cat "$TMP/flood.log"
stop_pid $SVC || true
cat "$TMP/svc.log"
[ "${rc:-0}" = 0 ] || fail "legitimate clients failed during the flood"
c=$(mxstat "$TMP/svc.log" cookies_sent)
[ "${c:-0}" -gt 0 ] || fail "no SYN cookies were sent: the backlog never filled?"
v=$(mxstat "$TMP/svc.log" cookies_valid)
echo "cookies sent $c, validated ${v:-0}"
