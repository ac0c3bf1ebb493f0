#!/usr/bin/env bash
# SIGTERM under way: a client in the middle of DATA finishes and gets its
# 250 (the message is in the spool), a new connection gets 421 4.3.2, and
# the relay exits by itself once the session is over; a second relay on
# the same spool is refused while the first runs.
. "$(dirname "$0")/common.bash"
need_root_tap
N=34 IF=mxt34 H=10.77.34.2
write_relay_config "$TMP/r.conf" $IF $N
start_relay "$TMP/relay.log" "$TMP/r.conf"

# A second relay on the same spool must refuse to start.
sed -e "s/net_tap$N,iface=$IF/net_tap35,iface=mxt35/" -e "s/10.77.$N./10.77.35./g" \
	-e "s/file-prefix=mxit$N/file-prefix=mxit35/" "$TMP/r.conf" >"$TMP/r2.conf"
timeout 30 "$BUILD/app/mxrelay/mxrelay" --config "$TMP/r2.conf" >"$TMP/relay2.log" 2>&1 &&
	fail "a second relay started on a locked spool"
grep -q "locked by another running mxrelay" "$TMP/relay2.log" || { cat "$TMP/relay2.log"; fail "no clear lock message"; }

cat >"$TMP/slow.py" <<PYEOF
import socket, sys, time, re
s = socket.create_connection(("$H", 25), timeout=20)
f = s.makefile("rb")
def reply():
    while True:
        l = f.readline()
        if l[3:4] != b"-":
            return l
reply()
for cmd in (b"EHLO slow\r\n", b"MAIL FROM:<dev@fleet.test>\r\n", b"RCPT TO:<ops@fleet.test>\r\n", b"DATA\r\n"):
    s.sendall(cmd)
    r = reply()
s.sendall(b"Subject: slow\r\n\r\nfirst half\r\n")
open("$TMP/in-data", "w").close()
time.sleep(3)           # SIGTERM arrives now
s.sendall(b"second half\r\n.\r\n")
r = reply()
print("end of data:", r.decode().strip())
s.sendall(b"QUIT\r\n")
print("quit:", reply().decode().strip())
sys.exit(0 if r.startswith(b"250 2.0.0") else 1)
PYEOF
start_bg "$TMP/slow.log" $PY "$TMP/slow.py"
S=$LAST_PID
for _ in $(seq 100); do [ -e "$TMP/in-data" ] && break; sleep 0.1; done
kill -TERM $R
sleep 0.5
timeout 10 $PY - <<PYEOF >"$TMP/new.log" 2>&1 || { cat "$TMP/new.log"; fail "new connection during drain"; }
import socket
s = socket.create_connection(("$H", 25), timeout=5)
g = s.makefile("rb").readline()
print(g)
assert g.startswith(b"421 4.3.2"), g
PYEOF
wait $S || { cat "$TMP/slow.log"; fail "the session in DATA did not get its 250"; }
cat "$TMP/slow.log"
for _ in $(seq 100); do kill -0 $R 2>/dev/null || break; sleep 0.1; done
kill -0 $R 2>/dev/null && fail "relay still running after its sessions ended"
grep -E "draining|sessions|stopped" "$TMP/relay.log"
grep -q "all sessions finished" "$TMP/relay.log" || fail "drain did not finish cleanly"
id=$(grep -o 'queued as [0-9A-Z]*' "$TMP/slow.log" | awk '{print $3}')
"$BUILD/tools/mxspool/mxspool" "$TMP/spool" show "$id" | grep -q "second half" || fail "message $id not in the spool"
echo "graceful stop ok"
