#!/usr/bin/env bash
# Per-client limits: a client address may hold at most max_connections_per_ip
# connections (the next one gets 421 4.3.2), and after auth_failures_per_ip
# failed AUTH attempts its AUTH is refused with 454 4.7.0 for
# auth_block_time, even with the right password.
. "$(dirname "$0")/common.bash"
need_root_tap
N=${MX_NET:-37} IF=mxt${MX_NET:-37} H=10.77.${MX_NET:-37}.2
write_relay_config "$TMP/r.conf" $IF $N "[smtp]
max_connections_per_ip = 3
auth_failures_per_ip = 3
auth_block_time = 60s"
start_relay "$TMP/relay.log" "$TMP/r.conf"
timeout 60 $PY - "$H" <<'PYEOF' || fail "per-client limits"
import smtplib, socket, ssl, sys, time
host = sys.argv[1]
def greeting():
    s = socket.create_connection((host, 25), timeout=10)
    return s, s.makefile("rb").readline()
held = []
for i in range(3):
    s, g = greeting()
    assert g.startswith(b"220"), g
    held.append(s)
s, g = greeting()
assert g.startswith(b"421 4.3.2"), ("4th connection", g)
s.close()
held.pop().close()
time.sleep(0.5)
s, g = greeting()
assert g.startswith(b"220"), ("after one closed", g)
s.close()
for h in held:
    h.close()
time.sleep(0.5)
ctx = ssl._create_unverified_context()
def auth(password):
    c = smtplib.SMTP(host, 587, timeout=10)
    c.ehlo("probe")
    c.starttls(context=ctx)
    c.ehlo("probe")
    c.user, c.password = "device1", password
    try:
        code, _ = c.auth("PLAIN", c.auth_plain)   # one mechanism, one attempt
    except smtplib.SMTPAuthenticationError as e:
        code = e.smtp_code
    try:
        c.quit()
    except Exception:
        pass
    return code
assert auth("s3cret-pass") == 235
codes = [auth("wrong") for _ in range(3)]
assert codes == [535, 535, 535], codes
blocked = auth("s3cret-pass")
assert blocked == 454, ("right password while blocked", blocked)
print("limits ok")
PYEOF
stop_pid $R || fail "relay did not stop cleanly"
grep -q "failed AUTH attempts; AUTH refused" "$TMP/relay.log" || fail "no log line for the AUTH block"
echo "per-client limits ok"
