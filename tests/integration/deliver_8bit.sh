#!/usr/bin/env bash
# deliver_8bit.sh - MAIL parameters that must survive the relay (RFC 6152,
# RFC 6531): a message received with BODY=8BITMIME leaves with BODY=8BITMIME,
# one received with SMTPUTF8 (a non-ASCII mailbox) leaves with SMTPUTF8, and a
# destination that does not announce 8BITMIME gets nothing: the message
# bounces with 5.6.3 (the relay does not downgrade) and the DSN reaches the
# sender.  Postfix smtp-sinks on the host side of the TAP: 10.77.81.1
# (announces 8BITMIME, not SMTPUTF8: a UTF-8 message to it bounces with 5.6.7)
# and 10.77.81.3 (started with -8); Python's smtpd with SMTPUTF8 on
# 10.77.81.4 records the MAIL parameters it gets.  Then the flags survive a
# restart: an 8-bit message for 10.77.81.5 (nothing there yet) waits in the
# spool while the relay stops and starts again, and leaves the recovered
# spool with BODY=8BITMIME (spool format 3 keeps it).  Exit 0 pass, 77 skip.
. "$(dirname "$0")/common.bash"
. "$(dirname "$0")/peers.bash"
need_root_tap
command -v smtp-sink >/dev/null || skip "smtp-sink (postfix) not installed"
N=81 IF=mxt81 H=10.77.81.2 S=10.77.81.1 S2=10.77.81.3 S3=10.77.81.4 S4=10.77.81.5

write_delivery_config "$TMP/r.conf" $IF $N
start_relay "$TMP/relay.log" "$TMP/r.conf"
ip addr add $S2/24 dev $IF || fail "second host address"
ip addr add $S3/24 dev $IF || fail "third host address"

start_smtp_sink $S:25 "$TMP/d1"
start_smtp_sink $S2:25 "$TMP/d2" -8
cat >"$TMP/u8sink.py" <<'PYEOF'
import asyncore, smtpd, sys, warnings
warnings.simplefilter("ignore")
out = sys.argv[2]
class Sink(smtpd.SMTPServer):
    def process_message(self, peer, mailfrom, rcpttos, data, **kw):
        with open(out, "ab") as f:
            f.write(f"MAIL {mailfrom!r} {kw.get('mail_options')!r} RCPT {rcpttos!r}\n".encode())
Sink((sys.argv[1], 25), None, decode_data=False, enable_SMTPUTF8=True)
asyncore.loop(timeout=0.5)
PYEOF
start_bg "$TMP/u8sink.log" $PY "$TMP/u8sink.py" $S3 "$TMP/u8.txt"
wait_listen $S3:25 || { cat "$TMP/u8sink.log"; fail "the SMTPUTF8 sink did not start"; }

timeout 30 $PY - "$H" "$S" "$S2" "$S3" <<'PYEOF' || fail "sending"
import smtplib, sys
host, s1, s2, s3 = sys.argv[1:5]
c = smtplib.SMTP(host, 25, timeout=20)
c.ehlo("dev.test")
body8 = "From: dev@[{0}]\r\nSubject: 8bit\r\nX-Probe: eight\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nTemp\u00e9rature \u00e9lev\u00e9e\r\n".format(s1).encode()
c.sendmail(f"dev@[{s1}]", [f"ops@[{s1}]"], body8, mail_options=["BODY=8BITMIME"])
c.sendmail(f"dev@[{s1}]", [f"ops@[{s2}]"], body8.replace(b"eight", b"refused"), mail_options=["BODY=8BITMIME"])
utf = "From: d\u00e9v@[{0}]\r\nSubject: utf8\r\nX-Probe: utf8\r\n\r\nbody\r\n".format(s1).encode()
c.sendmail(f"d\u00e9v@[{s1}]", [f"op\u00e9@[{s3}]"], utf, mail_options=["SMTPUTF8", "BODY=8BITMIME"])
c.sendmail(f"dev@[{s1}]", [f"op\u00e9@[{s1}]"], utf.replace(b"utf8", b"nosupport"), mail_options=["SMTPUTF8"])
c.quit()
PYEOF

for _ in $(seq 100); do
	[ "$(find "$TMP/d1" -type f | wc -l)" -ge 3 ] && [ -s "$TMP/u8.txt" ] && break
	sleep 0.1
done
sleep 0.5
timeout 30 $PY - "$TMP/d1" "$TMP/d2" "$TMP/u8.txt" <<'PYEOF' || { tail -20 "$TMP/relay.log"; fail "delivered messages"; }
import os, re, sys
d1, d2, u8 = sys.argv[1:4]
seen, dsns = {}, []
for f in os.listdir(d1):
    raw = open(os.path.join(d1, f), "rb").read()
    args = re.search(rb"^X-Mail-Args: (.*)$", raw, re.M).group(1)
    if b"X-Mail-Args: <>" in raw:
        assert b"Action: failed" in raw, raw[:2000]
        dsns.append(b"5.6.3" if b"5.6.3" in raw else b"5.6.7" if b"5.6.7" in raw else b"?")
        continue
    probe = re.search(rb"^X-Probe: (\S+)", raw, re.M).group(1).decode()
    seen[probe] = args
    if probe == "eight":
        assert "Temp\u00e9rature".encode() in raw, "8-bit body changed"
assert "BODY=8BITMIME" in seen.get("eight", b"").decode(), f"eight: {seen.get('eight')}"
assert sorted(dsns) == [b"5.6.3", b"5.6.7"], f"DSNs: {dsns}"
log = open(u8, "rb").read().decode()
assert "SMTPUTF8" in log and "BODY=8BITMIME" in log and "d\u00e9v@" in log, log
assert not os.listdir(d2), "the sink without 8BITMIME got a message"
print("BODY=8BITMIME and SMTPUTF8 passed on; an MX without them -> 5.6.3 / 5.6.7 bounces with DSNs")
PYEOF
grep -q "status=bounced.*5.6.3" "$TMP/relay.log" || fail "no 5.6.3 bounce in the log"
grep -q "status=bounced.*5.6.7" "$TMP/relay.log" || fail "no 5.6.7 bounce in the log"

# Across a restart: accepted (250) for a host that is not there, deferred, recovered.
timeout 30 $PY - "$H" "$S4" <<'PYEOF' || fail "sending the message that waits"
import smtplib, sys
host, s4 = sys.argv[1:3]
c = smtplib.SMTP(host, 25, timeout=20)
c.ehlo("dev.test")
c.sendmail(f"dev@[{s4}]", [f"ops@[{s4}]"],
           "From: dev@fleet.test\r\nSubject: kept\r\nX-Probe: kept\r\n\r\n\u00e9t\u00e9\r\n".encode(),
           mail_options=["BODY=8BITMIME"])
c.quit()
PYEOF
wait_log "to=<ops@\\[$S4\\]>.*status=deferred" 30 || { tail "$TMP/relay.log"; fail "not deferred"; }
stop_relay
start_relay "$TMP/relay2.log" "$TMP/r.conf"
ip addr add $S4/24 dev $IF || fail "fourth host address"
start_bg "$TMP/u8sink2.log" $PY "$TMP/u8sink.py" $S4 "$TMP/u8-kept.txt"
wait_listen $S4:25 || { cat "$TMP/u8sink2.log"; fail "the sink on $S4 did not start"; }
for _ in $(seq 300); do [ -s "$TMP/u8-kept.txt" ] && break; sleep 0.1; done
[ -s "$TMP/u8-kept.txt" ] || { tail "$TMP/relay2.log"; fail "the recovered message was not delivered"; }
cat "$TMP/u8-kept.txt"
grep -q "BODY=8BITMIME" "$TMP/u8-kept.txt" || fail "recovered message left without BODY=8BITMIME"
stop_relay
echo "8BITMIME / SMTPUTF8 delivery: ok (BODY=8BITMIME kept across a restart)"
