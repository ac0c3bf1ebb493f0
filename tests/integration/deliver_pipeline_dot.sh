#!/usr/bin/env bash
# deliver_pipeline_dot.sh - delivery pipelined behind "." (RFC 2920 3.1, RFC
# 5321 4.1.1.4) to a server offering PIPELINING without CHUNKING (Postfix's
# smtp-sink): the next message's MAIL, RCPT and DATA go in the segment that ends
# the previous message's content, so a session with a backlog costs about one
# segment each way per message.
#  1. 200 messages are taken while the sink is down (deferred: connection
#     refused); the TAP's frame counters are read, the sink starts, and the
#     retry delivers them over at most 2 sessions ([queue] max_connections);
#  2. every message arrives exactly once, byte-exact (check_dumps), the spool
#     ends empty, smtpc_txns_pipelined counts follow-on transactions, and the
#     frames of the delivery are under 1.5 per message each way (lock-step
#     delivery, the reply to "." before the next MAIL, needs 2);
#  3. when Postfix is installed: the same backlog to a Postfix smtpd with
#     CHUNKING hidden (smtpd_discard_ehlo_keywords) and
#     smtpd_forbid_unauth_pipelining = yes, which drops a client that breaks
#     RFC 2920's rules: every message in its maildir once, byte-exact, and no
#     pipelining complaint in its log.
# TAP mxt91, 10.77.91.0/24.  Exit 0 pass, 77 skip.
. "$(dirname "$0")/common.bash"
. "$(dirname "$0")/peers.bash"
need_root_tap
[ -x "$PY" ] || skip "no $PY"
command -v smtp-sink >/dev/null || skip "smtp-sink (postfix) not installed"
N=91 IF=mxt91 H=10.77.91.2 S=10.77.91.1
M=200 K=60
T0=$(date +%s)
PF_DOMAINS=pf.test
. "$ROOT/tests/integration/postfix.bash"
trap 'pf_stop; cleanup' EXIT

write_delivery_config "$TMP/r.conf" $IF $N "
[relay]
smarthost = [$S]:2525
[tls]
outbound = none
[queue]
max_connections = 2
idle_timeout = 2s"
start_relay "$TMP/relay.log" "$TMP/r.conf"

# ---- 1. accept with the sink down ------------------------------------------------------
: >"$TMP/sent"
timeout 120 $PY - "$H" "$M" >>"$TMP/sent" <<'PYEOF' || { tail -20 "$TMP/relay.log"; fail "sending"; }
import hashlib, smtplib, sys
host, count = sys.argv[1], int(sys.argv[2])
s = smtplib.SMTP(host, 25, timeout=20)
for i in range(count):
    # small bodies: content, "." and the next envelope fit in one segment
    body = f"pipelined after dot {i}\r\n" + "x" * (i * 7 % 300) + "\r\n.leading dot\r\n"
    msg = (f"From: dev@fleet.test\r\nTo: d{i}@example.com\r\nSubject: dot {i}\r\n"
           f"X-Probe: p{i}\r\n\r\n{body}")
    s.sendmail("dev@fleet.test", [f"d{i}@example.com"], msg.encode())
    print(f"p{i}", hashlib.sha256(body.replace("\r\n", "\n").encode()).hexdigest())
s.quit()
PYEOF
[ "$(wc -l <"$TMP/sent")" = $M ] || fail "sent $(wc -l <"$TMP/sent") of $M"
wait_log "status=deferred" 10 || { tail -20 "$TMP/relay.log"; fail "no deferral with the sink down"; }

# ---- 2. deliver, counting the TAP's frames ---------------------------------------------
stat() { cat "/sys/class/net/$IF/statistics/$1"; }
# the kernel's rx is what the relay sent, its tx what the relay received
out0=$(stat rx_packets) in0=$(stat tx_packets)
start_smtp_sink $S:2525 "$TMP/dump"
wait_files "$TMP/dump" $M 60 || {
	tail -20 "$TMP/relay.log"
	fail "$(find "$TMP/dump" -type f | wc -l) of $M delivered"
}
out1=$(stat rx_packets) in1=$(stat tx_packets)
sleep 0.5
check_dumps "$TMP/sent" "$TMP/dump" || fail "delivered messages do not match"
"$BUILD/tools/mxctl/mxctl" -s "$TMP/control.sock" stats >"$TMP/stats" || fail "mxctl stats"
piped=$(mxstat "$TMP/stats" smtpc_txns_pipelined) sess=$(mxstat "$TMP/stats" smtpc_sessions_ready)
sent=$(grep -c "status=sent" "$TMP/relay.log")
[ "$sent" = $M ] || fail "$sent status=sent lines, expected $M"
out=$((out1 - out0)) in=$((in1 - in0))
# hundredths of a frame per message
printf 'delivery: %d frames out, %d in for %d messages (%d.%02d / %d.%02d per message), ' \
	$out $in $M $((out / M)) $((out * 100 / M % 100)) $((in / M)) $((in * 100 / M % 100))
echo "$sess sessions ready, $piped transactions pipelined"
[ -n "$piped" ] && [ "$piped" -ge $((M / 2)) ] ||
	fail "smtpc_txns_pipelined ${piped:-?}: the transactions were not pipelined after \".\""
[ $((out * 100 / M)) -lt 150 ] && [ $((in * 100 / M)) -lt 150 ] ||
	fail "more than 1.5 frames per message each way: not one flight per message"
stop_relay
spool_expect "$TMP/spool" 0
echo "smtp-sink: ok"

# ---- 3. Postfix smtpd without CHUNKING, strict about pipelining --------------------------
if ! command -v postfix >/dev/null || ! id postfix >/dev/null 2>&1; then
	echo "no postfix: step 3 not run"
	echo "pipelined after \".\": ok ($(($(date +%s) - T0)) s)"
	exit 0
fi
write_delivery_config "$TMP/r.conf" $IF $N "
[relay]
smarthost = [$S]:2526
[tls]
outbound = none
[queue]
max_connections = 1
idle_timeout = 2s"
start_relay "$TMP/relay.log" "$TMP/r.conf"
timeout 120 $PY - "$H" "$K" >"$TMP/sent-pf" <<'PYEOF' || { tail -20 "$TMP/relay.log"; fail "sending"; }
import hashlib, smtplib, sys
host, count = sys.argv[1], int(sys.argv[2])
s = smtplib.SMTP(host, 25, timeout=20)
for i in range(count):
    body = f"to postfix {i}\r\n" + "y" * (i * 11 % 400) + "\r\n.dot\r\n"
    s.sendmail("dev@fleet.test", [f"p{i}@pf.test"],
               (f"From: dev@fleet.test\r\nTo: p{i}@pf.test\r\nX-Probe: pf-{i}\r\n\r\n"
                + body).encode())
    print(f"pf-{i}", hashlib.sha256(body.replace("\r\n", "\n").encode()).hexdigest())
s.quit()
PYEOF
wait_log "status=deferred" 10 || { tail -20 "$TMP/relay.log"; fail "no deferral with Postfix down"; }
pf_setup "$S:2526   inet  n       -       n       -       20      smtpd" "
inet_interfaces = $S
mynetworks = 10.77.$N.0/24
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_discard_ehlo_keywords = chunking
smtpd_forbid_unauth_pipelining = yes"
pf_start "$S:2526"
wait_files "$PF/mail/box/new" $K 60 || {
	tail -10 "$TMP/relay.log"
	tail -20 "$PF/maillog"
	fail "$(find "$PF/mail/box/new" -type f | wc -l) of $K messages in Postfix's maildir"
}
sleep 1
$PY - "$TMP/sent-pf" "$PF/mail/box/new" <<'PYEOF' || fail "maildir contents"
import hashlib, os, re, sys
want = dict(l.split() for l in open(sys.argv[1]))
got = {}
for f in os.listdir(sys.argv[2]):
    raw = open(os.path.join(sys.argv[2], f), "rb").read().replace(b"\r\n", b"\n")
    head, _, body = raw.partition(b"\n\n")
    m = re.search(rb"^X-Probe: (\S+)$", head, re.M)
    got.setdefault(m.group(1).decode() if m else "none", []).append(hashlib.sha256(body).hexdigest())
bad = [k for k in want if got.get(k) != [want[k]]] + [k for k in got if k not in want]
print(f"{len(want)} sent, {sum(map(len, got.values()))} in the maildir, bad: {bad[:10]}")
sys.exit(1 if bad else 0)
PYEOF
grep -iE "pipelining|synchronization" "$PF/maillog" && fail "Postfix complained about pipelining"
# smtpd logs what it hides: the relay saw no CHUNKING, so this was DATA behind "."
grep -q "discarding EHLO keywords: CHUNKING" "$PF/maillog" || fail "CHUNKING was not hidden"
"$BUILD/tools/mxctl/mxctl" -s "$TMP/control.sock" stats >"$TMP/stats" || fail "mxctl stats"
piped=$(mxstat "$TMP/stats" smtpc_txns_pipelined)
echo "Postfix smtpd: $piped transactions pipelined after \".\""
[ -n "$piped" ] && [ "$piped" -ge $((K / 2)) ] || fail "not pipelined to Postfix (${piped:-?})"
stop_relay
spool_expect "$TMP/spool" 0
echo "pipelined after \".\": ok ($(($(date +%s) - T0)) s)"
