#!/usr/bin/env bash
# ops_queue.sh - an operator working a stuck destination with mxctl, on a
# relay with two workers (the destination's owner answers; `show` goes to
# the message's spool worker):
#   1. 3 messages to u<i>@[10.77.83.1] while nothing listens there: the first
#      is deferred and the destination backs off (retry and backoff: 1 h);
#   2. `mxctl queue` lists the destination with its 3 recipients waiting and
#      `mxctl show ID` the recipient as deferred, with the reply;
#   3. `mxctl suspend [10.77.83.1]`: listed as suspended; smtp-sink starts and
#      `mxctl flush` retries, but nothing is delivered while it is held;
#   4. `mxctl resume [10.77.83.1]`: all 3 delivered at once (no waiting for
#      the 1 h retry); `mxctl queue` has nothing left for it, and /metrics
#      counts the destination's results: 3 sent, the first attempt deferred.
# Exit 0 pass, 77 skip.
. "$(dirname "$0")/common.bash"
. "$(dirname "$0")/peers.bash"
need_root_tap
command -v smtp-sink >/dev/null || skip "smtp-sink (postfix) not installed"
N=83 IF=mxt83 H=10.77.83.2 S=10.77.83.1 HTTP=127.0.0.1:19183
CTL=$BUILD/tools/mxctl/mxctl
D="[$S]"

MX_LCORES="${MX_LCORES:---lcores=0@0,1@1,2@0}" write_delivery_config "$TMP/r.conf" $IF $N "
[queue]
retry = 1h
backoff_initial = 1h
backoff_max = 1h
[control]
http_listen = $HTTP"
start_relay "$TMP/relay.log" "$TMP/r.conf"

timeout 30 $PY - "$H" "$S" <<'PYEOF' || fail "sending"
import smtplib, sys
host, s = sys.argv[1:3]
for i in range(3):  # one connection each: both workers may accept
    c = smtplib.SMTP(host, 25, timeout=20)
    c.sendmail("dev@fleet.test", [f"u{i}@[{s}]"],
               f"From: dev@fleet.test\r\nSubject: q {i}\r\nX-Probe: q-{i}\r\n\r\nbody {i}\r\n".encode())
    c.quit()
PYEOF
# The first attempt is refused and deferred; the destination then backs off
# and the other two wait in its queue (logged when they are tried).
wait_log "to=<u0@.*status=deferred" 10 || { tail "$TMP/relay.log"; fail "not deferred"; }

# field LINE KEY: the value of key=value in a `mxctl queue` line.
field() { tr ' ' '\n' <<<"$1" | awk -F= -v k="$2" '$1 == k { print $2 }'; }

"$CTL" -s "$TMP/control.sock" queue >"$TMP/q1" || { cat "$TMP/q1"; fail "mxctl queue"; }
cat "$TMP/q1"
line=$(grep -F "$D " "$TMP/q1") || fail "queue: $D not listed"
[ "$(( $(field "$line" queued) + $(field "$line" waiting) ))" = 3 ] || fail "queue: not 3 waiting: $line"
"$CTL" -s "$TMP/control.sock" queue "$D" | grep -qF "$D " || fail "queue $D"

id=$(grep -o "[0-9A-V]\{12\}: to=<u0@" "$TMP/relay.log" | head -1 | cut -c1-12)
[ -n "$id" ] || fail "no queue ID for u0"
"$CTL" -s "$TMP/control.sock" show "$id" >"$TMP/show" || { cat "$TMP/show"; fail "mxctl show $id"; }
cat "$TMP/show"
grep -qF "rcpt 0: <u0@$D> state=deferred" "$TMP/show" || fail "show: u0 not deferred"
grep -q "^sender: <dev@fleet.test>" "$TMP/show" || fail "show: sender"

"$CTL" -s "$TMP/control.sock" suspend "$D" | grep -q "suspended" || fail "suspend"
"$CTL" -s "$TMP/control.sock" queue "$D" | grep -q "state=suspended" || fail "queue: not suspended"
start_smtp_sink $S:25 "$TMP/d"
"$CTL" -s "$TMP/control.sock" flush >"$TMP/flush" || { cat "$TMP/flush"; fail "flush"; }
sleep 2
[ "$(find "$TMP/d" -type f | wc -l)" = 0 ] || fail "delivered while suspended"
"$CTL" -s "$TMP/control.sock" queue "$D" | grep -q "state=suspended" || fail "suspension lost"
echo "suspended: flush delivered nothing"

"$CTL" -s "$TMP/control.sock" resume "$D" | grep -q "resumed" || fail "resume"
wait_files "$TMP/d" 3 10
n=$(find "$TMP/d" -type f | wc -l)
[ "$n" = 3 ] || { tail "$TMP/relay.log"; fail "$n of 3 delivered after resume"; }
sleep 0.5
"$CTL" -s "$TMP/control.sock" queue >"$TMP/q2" || fail "mxctl queue after"
if line=$(grep -F "$D " "$TMP/q2"); then
	[ "$(( $(field "$line" queued) + $(field "$line" waiting) + $(field "$line" in_flight) ))" = 0 ] ||
		fail "queue after delivery: $line"
fi
# The destination's results as Prometheus counters (summed over the workers).
curl -sS "http://$HTTP/metrics" >"$TMP/metrics" || fail "GET /metrics"
$PY - "$TMP/metrics" "$D" <<'PYEOF' || { grep destination "$TMP/metrics"; fail "/metrics per destination"; }
import re, sys
dest, tot = sys.argv[2], {}
for line in open(sys.argv[1]):
    m = re.match(r'mxrelay_destination_(\w+)\{destination="([^"]*)",worker="\d+"\} (\d+)$', line)
    if m and m.group(2) == dest:
        tot[m.group(1)] = tot.get(m.group(1), 0) + int(m.group(3))
assert tot.get("sent_total") == 3 and tot.get("deferred_total", 0) >= 1, tot
assert tot.get("bounced_total") == 0 and tot.get("queued") == 0, tot
print("/metrics:", dest, tot)
PYEOF
stop_relay
echo "mxctl queue / show / suspend / flush / resume: ok"
