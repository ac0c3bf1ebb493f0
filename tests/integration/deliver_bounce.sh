#!/usr/bin/env bash
# deliver_bounce.sh - a 5xx to RCPT bounces at once, and the DSN is delivered:
# smtp-sink on 10.77.51.1:25 rejects every RCPT (-f RCPT: 5xx); the sender
# dev@[10.77.51.3] is served by a second smtp-sink on a second host address
# of the TAP.  Each bounced message logs status=bounced, lib/queue builds a
# DSN, the relay injects it into its spool from <> and delivers it to the
# sender's sink: one multipart/report per original, naming the recipient,
# and nothing is left in the spool.  Exit 0 pass, 77 skip.
. "$(dirname "$0")/common.bash"
. "$(dirname "$0")/peers.bash"
need_root_tap
command -v smtp-sink >/dev/null || skip "smtp-sink (postfix) not installed"
N=51 IF=mxt51 H=10.77.51.2 S=10.77.51.1 B=10.77.51.3
K=4

write_delivery_config "$TMP/r.conf" $IF $N
start_relay "$TMP/relay.log" "$TMP/r.conf"
ip addr add $B/24 dev $IF || fail "cannot add $B"

start_smtp_sink $S:25 "$TMP/rejects" -f RCPT
start_smtp_sink $B:25 "$TMP/dsn"

timeout 30 $PY - "$H" "$K" "$S" "$B" <<'PYEOF' || fail "sending"
import smtplib, sys
host, k, s_addr, b_addr = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
c = smtplib.SMTP(host, 25, timeout=20)
for i in range(k):
    c.sendmail(f"dev@[{b_addr}]", [f"gone{i}@[{s_addr}]"],
               f"From: dev@[{b_addr}]\r\nSubject: bounce {i}\r\n\r\nbody {i}\r\n".encode())
c.quit()
PYEOF

wait_files "$TMP/dsn" $K 20
sleep 0.5
grep -m1 "status=bounced" "$TMP/relay.log"
b=$(grep -c "status=bounced" "$TMP/relay.log")
[ "$b" = $K ] || { tail -20 "$TMP/relay.log"; fail "$b status=bounced lines, expected $K"; }
[ "$(find "$TMP/rejects" -type f | wc -l)" = 0 ] || fail "the rejecting sink took a message"
timeout 30 $PY - "$TMP/dsn" "$K" "$S" <<'PYEOF' || fail "DSNs"
import email, email.policy, os, sys
d, k, s_addr = sys.argv[1], int(sys.argv[2]), sys.argv[3]
seen = set()
for f in os.listdir(d):
    raw = open(os.path.join(d, f), "rb").read()
    assert b"X-Mail-Args: <>" in raw, f"{f}: DSN not from the null sender"
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/report", f"{f}: {msg.get_content_type()}"
    assert msg.get_param("report-type") == "delivery-status", f"{f}: report-type"
    ds = [p for p in msg.walk() if p.get_content_type() == "message/delivery-status"]
    assert len(ds) == 1, f"{f}: no delivery-status part"
    text = ds[0].as_string()
    assert "Action: failed" in text and "Status: 5." in text, f"{f}: {text}"
    for i in range(k):
        if f"gone{i}@[{s_addr}]" in text:
            seen.add(i)
assert len(os.listdir(d)) == k, f"{len(os.listdir(d))} DSNs, expected {k}"
assert seen == set(range(k)), f"DSNs name {sorted(seen)}"
print(f"{k} DSNs, multipart/report, Action: failed, one per bounced recipient")
PYEOF
stop_relay
spool_expect "$TMP/spool" 0
echo "bounce and DSN delivery: ok"
