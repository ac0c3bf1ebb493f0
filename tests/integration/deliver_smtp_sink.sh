#!/usr/bin/env bash
# deliver_smtp_sink.sh - the relay delivers what it accepted, over its own
# TCP stack, to Postfix's smtp-sink on the host side of the TAP:
#  1. address literal user@[10.77.50.1] with the sink down: connection
#     refused -> deferred (retry 2s); the relay is restarted (the spool
#     recovery hands the deferred mail back to delivery), then the sink
#     starts and every message is delivered;
#  2. more literal mail on pooled sessions;
#  3. a second relay run with [relay] smarthost = [10.77.50.1]:2525 takes
#     mail for any domain there.
# Each message arrives exactly once with the body byte-exact (SHA-256, line
# ends normalised), the spool ends with no message left, and a Postfix-style
# "status=sent" line is logged per recipient.  Exit 0 pass, 77 skip.
. "$(dirname "$0")/common.bash"
need_root_tap
command -v smtp-sink >/dev/null || skip "smtp-sink (postfix) not installed"
N=50 IF=mxt50 H=10.77.50.2 S=10.77.50.1
M=$BUILD/tools/mxspool/mxspool
SINKS=()
T0=$(date +%s)

relay_conf() { # FILE EXTRA
	write_config "$1" $IF $N "
[smtp]
hostname = relay.mxrelay.test
listen = 25
[relay]
allow_networks = 10.77.$N.0/24
$2
[tls]
outbound = opportunistic
[spool]
dir = $TMP/spool
[queue]
retry = 2s
backoff_initial = 1s
backoff_max = 2s
idle_timeout = 2s
[control]
socket = $TMP/control.sock
http_listen ="
}
val() { awk -v k="$2" '$1 == k { print $2; exit }' "$1"; }

start_relay() {
	: >"$TMP/relay.log"
	start_bg "$TMP/relay.log" "$BUILD/app/mxrelay/mxrelay" --config "$TMP/r.conf"
	R=$LAST_PID
	wait_iface $IF $S || { cat "$TMP/relay.log"; fail "TAP did not come up"; }
	for _ in $(seq 50); do grep -q "mxrelay running" "$TMP/relay.log" && break; sleep 0.2; done
	grep -q "mxrelay running" "$TMP/relay.log" || { cat "$TMP/relay.log"; fail "relay not running"; }
}

start_sink() { # PORT DIR
	chmod o+x "$TMP" && mkdir -p "$2" && chmod 777 "$2" # smtp-sink writes as nobody
	smtp-sink -u nobody -d "$2/%H%M%S." $S:$1 100 >"$TMP/sink$1.log" 2>&1 &
	PIDS+=($!)
	SINKS+=($!)
	for _ in $(seq 50); do ss -ltn | grep -q "$S:$1 " && return 0; sleep 0.1; done
	fail "smtp-sink on $1 did not start"
}

# send FIRST COUNT RCPT_TEMPLATE: messages with a random body each, "id sha256" to $TMP/sent.
send() {
	timeout 60 $PY - "$H" "$1" "$2" "$3" >>"$TMP/sent" <<'PYEOF' || fail "sending"
import hashlib, os, smtplib, sys
host, first, count, tmpl = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
s = smtplib.SMTP(host, 25, timeout=20)
for i in range(first, first + count):
    lines = [os.urandom(30 + (i * 7) % 200).hex() for _ in range(1 + i % 40)]
    body = "\r\n".join(lines) + "\r\n"
    msg = (f"From: dev@fleet.test\r\nTo: {tmpl % i}\r\nSubject: deliver {i}\r\n"
           f"X-Probe: p{i}\r\n\r\n{body}")
    s.sendmail("dev@fleet.test", [tmpl % i], msg.encode())
    print(f"p{i}", hashlib.sha256(body.replace("\r\n", "\n").encode()).hexdigest())
s.quit()
PYEOF
}

# check DIR...: every sent probe arrived exactly once, byte-exact.
check_dumps() {
	[ -n "${MX_DEBUG_KEEP:-}" ] && cp -r "$@" "$TMP/sent" "$MX_DEBUG_KEEP/"
	$PY - "$TMP/sent" "$@" <<'PYEOF' || fail "delivered messages do not match"
import hashlib, os, re, sys
want = dict(l.split() for l in open(sys.argv[1]))
got = {}
for d in sys.argv[2:]:
    for f in os.listdir(d):
        raw = open(os.path.join(d, f), "rb").read().replace(b"\r\n", b"\n")
        head, _, body = raw.partition(b"\n\n")
        if body.endswith(b"\n\n"):
            body = body[:-1]  # smtp-sink ends each dump with an empty line
        m = re.search(rb"^X-Probe: (p\d+)$", head, re.M)
        if not m:
            print("no probe in", f); sys.exit(1)
        got.setdefault(m.group(1).decode(), []).append(hashlib.sha256(body).hexdigest())
bad = 0
for k, v in want.items():
    g = got.get(k, [])
    if len(g) != 1:
        print(f"{k}: arrived {len(g)} times"); bad += 1
    elif g[0] != v:
        print(f"{k}: body differs"); bad += 1
for k in got:
    if k not in want:
        print(f"{k}: unexpected"); bad += 1
print(f"{len(want)} sent, {sum(len(v) for v in got.values())} received, {bad} bad")
sys.exit(1 if bad else 0)
PYEOF
}

wait_count() { # DIR... COUNT: bounded wait until the dumps hold COUNT files
	local want=${*: -1} dirs=("${@:1:$#-1}")
	for _ in $(seq 200); do
		[ "$(find "${dirs[@]}" -type f 2>/dev/null | wc -l)" -ge "$want" ] && return 0
		sleep 0.1
	done
	return 1
}

spool_empty() {
	"$M" "$TMP/spool" count | tee "$TMP/count"
	local left
	left=$(awk '$1 == "messages" {print $2}' "$TMP/count")
	[ "$left" = 0 ] || fail "spool still holds $left message(s)"
}

# ---- 1. literal, sink down: deferred, then delivered --------------------------------
relay_conf "$TMP/r.conf" ""
start_relay
: >"$TMP/sent"
send 0 5 "user%d@[$S]"
for _ in $(seq 100); do grep -q "status=deferred" "$TMP/relay.log" && break; sleep 0.1; done
grep "status=deferred" "$TMP/relay.log" | head -2
grep -q "status=deferred.*[Cc]onnection refused" "$TMP/relay.log" ||
	{ tail -20 "$TMP/relay.log"; fail "no deferral for the refused connection"; }
[ "$(find "$TMP" -maxdepth 1 -name 'd25*' | wc -l)" = 0 ] || fail "dump before the sink ran"
# Stop with the mail deferred: it is in the spool, and the next start recovers it.
stop_pid $R || fail "relay did not stop cleanly"
"$M" "$TMP/spool" count >"$TMP/count"
grep -q "^messages 5$" "$TMP/count" && grep -q "^delivered 0$" "$TMP/count" ||
	{ cat "$TMP/count"; fail "the spool does not hold the 5 undelivered messages"; }
start_relay
grep -q "recovered 5 message" "$TMP/relay.log" || { head -20 "$TMP/relay.log"; fail "not recovered"; }
start_sink 25 "$TMP/d25"
wait_count "$TMP/d25" 5 || { tail -20 "$TMP/relay.log"; cat "$TMP/sink25.log"; ss -ltnp | grep -E ":25 "; fail "deferred mail not delivered after the sink started"; }
echo "defer, restart, recover, deliver: ok"

# ---- 2. more literal mail, pooled sessions ---------------------------------------------
send 5 40 "user%d@[$S]"
wait_count "$TMP/d25" 45 || { tail -20 "$TMP/relay.log"; fail "literal mail not delivered"; }
sleep 0.5
check_dumps "$TMP/d25"
sent=$(grep -c "status=sent" "$TMP/relay.log")
[ "$sent" = 45 ] || fail "$sent status=sent lines, expected 45"
grep -m1 "status=sent" "$TMP/relay.log"
"$BUILD/tools/mxctl/mxctl" -s "$TMP/control.sock" stats >"$TMP/stats" || fail "mxctl stats"
opened=$(val "$TMP/stats" queue_conns_opened) reused=$(val "$TMP/stats" queue_sessions_reused)
echo "sessions: $opened opened, $reused reuses for 40 messages"
[ -n "$reused" ] && [ "$reused" -gt 0 ] && [ "$opened" -lt 40 ] || fail "sessions were not pooled"
stop_pid $R || fail "relay did not stop cleanly"
spool_empty
echo "literal delivery: ok"

# ---- 3. smarthost ------------------------------------------------------------------------
relay_conf "$TMP/r.conf" "smarthost = [$S]:2525"
start_relay # it creates the TAP the sink binds to
start_sink 2525 "$TMP/d2525"
: >"$TMP/sent"
send 100 30 "dev%d@example.com"
wait_count "$TMP/d2525" 30 || { tail -20 "$TMP/relay.log"; fail "smarthost mail not delivered"; }
sleep 0.5
check_dumps "$TMP/d2525"
grep -q "relay=.*:2525, .*status=sent" "$TMP/relay.log" || fail "no smarthost log line"
stop_pid $R || fail "relay did not stop cleanly"
spool_empty
echo "smarthost delivery: ok ($(($(date +%s) - T0)) s)"
