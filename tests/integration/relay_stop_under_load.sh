#!/usr/bin/env bash
# relay_stop_under_load.sh - SIGTERM while 12 clients (over 2 workers) send
# mail as fast as they can: nothing that got "250 ... queued as ID" is lost
# (every acknowledged ID is in the spool afterwards: its destination has no
# route, so nothing leaves), no transaction gets a 250 after the relay said
# it is draining, every client ends with a clear answer (250, 421 or a
# closed connection, never a hang), and the relay exits 0 by itself within
# shutdown_timeout.  Exit 0 pass, 77 skip.
. "$(dirname "$0")/common.bash"
need_root_tap
N=84 IF=mxt84 H=10.77.84.2
MX_LCORES="${MX_LCORES:---lcores=0@0,1@1,2@0}" write_delivery_config "$TMP/r.conf" $IF $N "
[smtp]
shutdown_timeout = 10s
max_connections_per_ip = 1000"
start_relay "$TMP/relay.log" "$TMP/r.conf"

# Each client: connect, send messages to an unroutable literal one after the
# other, log "ack ID" per 250 and "time ..." lines; stops at the first non-250.
cat >"$TMP/load.py" <<'PYEOF'
import re, smtplib, sys, threading, time
host, out = sys.argv[1], sys.argv[2]
lock = threading.Lock()
log = open(out, "w", buffering=1)
def client(n):
    i = 0
    while True:
        try:
            c = smtplib.SMTP(host, 25, timeout=30)
        except Exception as e:
            with lock:
                log.write(f"end {n} connect {time.time():.6f} {e!r}\n")
            return
        try:
            code, msg = c.ehlo("dev.test")
            while code == 250:
                code, msg = c.mail(f"dev{n}@fleet.test")
                if code == 250:
                    code, msg = c.rcpt(f"u{n}x{i}@[192.0.2.77]")
                if code == 250:
                    code, msg = c.data(f"Subject: {n} {i}\r\n\r\nbody\r\n".encode())
                t = time.time()
                if code != 250:
                    with lock:
                        log.write(f"end {n} reply {t:.6f} {code}\n")
                    return
                m = re.search(rb"queued as ([0-9A-V]{12})", msg)
                with lock:
                    log.write(f"ack {m.group(1).decode()} {t:.6f}\n")
                i += 1
                if i % 5 == 0:  # new connections too, not one long session
                    c.quit()
                    break
        except Exception as e:
            with lock:
                log.write(f"end {n} error {time.time():.6f} {e!r}\n")
            return
ts = [threading.Thread(target=client, args=(n,)) for n in range(12)]
[t.start() for t in ts]
[t.join(60) for t in ts]
log.write("alive %d\n" % sum(t.is_alive() for t in ts))
PYEOF
: >"$TMP/acks"
start_bg "$TMP/load.log" timeout 90 $PY "$TMP/load.py" "$H" "$TMP/acks"
LOAD=$LAST_PID
for _ in $(seq 100); do [ "$(grep -c '^ack' "$TMP/acks" 2>/dev/null)" -ge 200 ] && break; sleep 0.1; done
[ "$(grep -c '^ack' "$TMP/acks")" -ge 200 ] || { cat "$TMP/load.log"; tail -5 "$TMP/acks"; fail "load did not start"; }
sig=$(date +%s.%N)
kill -TERM $R
rc=0
for _ in $(seq 150); do kill -0 $R 2>/dev/null || break; sleep 0.1; done
kill -0 $R 2>/dev/null && fail "relay still running 15 s after SIGTERM"
wait $R 2>/dev/null || rc=$?
[ $rc = 0 ] || { tail -20 "$TMP/relay.log"; fail "relay exited $rc"; }
wait $LOAD 2>/dev/null
grep -q "^alive 0$" "$TMP/acks" || { tail "$TMP/acks"; fail "a client hung"; }
grep -q "draining" "$TMP/relay.log" || grep -qi "drain" "$TMP/relay.log" || fail "no drain in the log"

"$BUILD/tools/mxspool/mxspool" "$TMP/spool" list | awk '{print $1}' | sort >"$TMP/spooled"
grep '^ack' "$TMP/acks" | awk '{print $2}' | sort >"$TMP/acked"
acked=$(wc -l <"$TMP/acked")
lost=$(comm -23 "$TMP/acked" "$TMP/spooled" | wc -l)
echo "$acked acknowledged, $(wc -l <"$TMP/spooled") in the spool, $lost lost"
[ "$lost" = 0 ] || { comm -23 "$TMP/acked" "$TMP/spooled" | head; fail "acknowledged messages lost"; }
# No 250 after the relay started refusing: every ack is before the last
# client's end (a 421 or a refused/closed connection after the signal).
late=$(awk -v s="$sig" '$1 == "ack" && $3 > s + 11 {n++} END {print n + 0}' "$TMP/acks")
[ "$late" = 0 ] || fail "$late messages acknowledged after the shutdown timeout"
ends=$(grep -c '^end' "$TMP/acks")
[ "$ends" = 12 ] || fail "$ends of 12 clients ended with an answer"
grep '^end' "$TMP/acks" | awk '{print $3}' | sort | uniq -c
# New connections after the signal are refused with 421 4.3.2 (no new accepts).
grep -q "SMTPConnectError(421, b'4.3.2" "$TMP/acks" || fail "no 421 4.3.2 to a new connection while draining"
grep "^end" "$TMP/acks" | cut -d" " -f5- | sort | uniq -c | head -5
echo "SIGTERM under load: ok"
