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
. "$(dirname "$0")/peers.bash"
need_root_tap
command -v smtp-sink >/dev/null || skip "smtp-sink (postfix) not installed"
N=50 IF=mxt50 H=10.77.50.2 S=10.77.50.1
T0=$(date +%s)

relay_conf() { # FILE EXTRA: more [relay] keys
	write_delivery_config "$1" $IF $N "
[relay]
$2
[tls]
outbound = opportunistic
[queue]
idle_timeout = 2s"
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

# ---- 1. literal, sink down: deferred, then delivered --------------------------------
relay_conf "$TMP/r.conf" ""
start_relay "$TMP/relay.log" "$TMP/r.conf"
: >"$TMP/sent"
send 0 5 "user%d@[$S]"
wait_log "status=deferred" 10
grep "status=deferred" "$TMP/relay.log" | head -2
grep -q "status=deferred.*[Cc]onnection refused" "$TMP/relay.log" ||
	{ tail -20 "$TMP/relay.log"; fail "no deferral for the refused connection"; }
[ "$(find "$TMP" -maxdepth 1 -name 'd25*' | wc -l)" = 0 ] || fail "dump before the sink ran"
# Stop with the mail deferred: it is in the spool, and the next start recovers it.
stop_relay
spool_expect "$TMP/spool" 5
grep -q "^delivered 0$" "$TMP/count" || fail "the spool does not hold the 5 undelivered messages"
start_relay "$TMP/relay.log" "$TMP/r.conf"
grep -q "recovered 5 message" "$TMP/relay.log" || { head -20 "$TMP/relay.log"; fail "not recovered"; }
start_smtp_sink $S:25 "$TMP/d25"
wait_files "$TMP/d25" 5 20 || { tail -20 "$TMP/relay.log"; cat "$TMP/sink-$S:25.log"; ss -ltnp | grep -E ":25 "; fail "deferred mail not delivered after the sink started"; }
echo "defer, restart, recover, deliver: ok"

# ---- 2. more literal mail, pooled sessions ---------------------------------------------
send 5 40 "user%d@[$S]"
wait_files "$TMP/d25" 45 20 || { tail -20 "$TMP/relay.log"; fail "literal mail not delivered"; }
sleep 0.5
check_dumps "$TMP/sent" "$TMP/d25" || fail "delivered messages do not match"
sent=$(grep -c "status=sent" "$TMP/relay.log")
[ "$sent" = 45 ] || fail "$sent status=sent lines, expected 45"
grep -m1 "status=sent" "$TMP/relay.log"
"$BUILD/tools/mxctl/mxctl" -s "$TMP/control.sock" stats >"$TMP/stats" || fail "mxctl stats"
opened=$(mxstat "$TMP/stats" queue_conns_opened) reused=$(mxstat "$TMP/stats" queue_sessions_reused)
echo "sessions: $opened opened, $reused reuses for 40 messages"
[ -n "$reused" ] && [ "$reused" -gt 0 ] && [ "$opened" -lt 40 ] || fail "sessions were not pooled"
stop_relay
spool_expect "$TMP/spool" 0
echo "literal delivery: ok"

# ---- 3. smarthost ------------------------------------------------------------------------
relay_conf "$TMP/r.conf" "smarthost = [$S]:2525"
start_relay "$TMP/relay.log" "$TMP/r.conf" # it creates the TAP the sink binds to
start_smtp_sink $S:2525 "$TMP/d2525"
: >"$TMP/sent"
send 100 30 "dev%d@example.com"
wait_files "$TMP/d2525" 30 20 || { tail -20 "$TMP/relay.log"; fail "smarthost mail not delivered"; }
sleep 0.5
check_dumps "$TMP/sent" "$TMP/d2525" || fail "delivered messages do not match"
grep -q "relay=.*:2525, .*status=sent" "$TMP/relay.log" || fail "no smarthost log line"
stop_relay
spool_expect "$TMP/spool" 0
echo "smarthost delivery: ok ($(($(date +%s) - T0)) s)"
