#!/usr/bin/env bash
# The relay signs at acceptance and the signature travels with the message:
# mail relayed through a smarthost (Postfix's smtp-sink on the TAP's host
# side) carries DKIM-Signature fields (rsa-sha256 and ed25519-sha256, dual)
# that dkimpy verifies against the keys' published records; a message from
# another sender domain is signed with [dkim] default_domain; a tampered
# copy fails.
. "$(dirname "$0")/common.bash"
need_root_tap
command -v smtp-sink >/dev/null || skip "smtp-sink (postfix) not installed"
$PY -c 'import dkim, nacl' 2>/dev/null || skip "python3-dkim or python3-nacl missing"
N=36 IF=mxt36 H=10.77.36.2 S=10.77.36.1
D=$BUILD/tools/mxdkim/mxdkim
"$D" genkey --algorithm rsa-sha256 --bits 2048 --out "$TMP/rsa.pem" >/dev/null || fail "genkey rsa"
"$D" genkey --algorithm ed25519-sha256 --out "$TMP/ed.pem" >/dev/null || fail "genkey ed25519"
"$D" txt --key "$TMP/rsa.pem" --selector s1r --domain fleet.test >"$TMP/rsa.txt" || fail "txt rsa"
"$D" txt --key "$TMP/ed.pem" --selector s1e --domain fleet.test >"$TMP/ed.txt" || fail "txt ed25519"
write_relay_config "$TMP/r.conf" $IF $N "[relay]
smarthost = [$S]:25
[queue]
retry = 1s
backoff_initial = 1s
backoff_max = 2s
[dkim \"fleet.test\"]
selector = s1r
key = $TMP/rsa.pem
algorithm = rsa-sha256+ed25519-sha256
ed25519_selector = s1e
ed25519_key = $TMP/ed.pem
[dkim]
default_domain = fleet.test"
"$BUILD/app/mxrelay/mxrelay" --check-config "$TMP/r.conf" || fail "config"
start_bg "$TMP/relay.log" "$BUILD/app/mxrelay/mxrelay" --config "$TMP/r.conf"
R=$LAST_PID
wait_iface $IF $S || { cat "$TMP/relay.log"; fail "TAP did not come up"; }
for _ in $(seq 100); do grep -q "mxrelay running" "$TMP/relay.log" && break; sleep 0.1; done
chmod o+x "$TMP"
mkdir -p "$TMP/sink" && chmod 777 "$TMP/sink"
start_bg "$TMP/sink.log" smtp-sink -u nobody -d "$TMP/sink/%M%S." $S:25 50
for _ in $(seq 50); do ss -ltn | grep -q "$S:25 " && break; sleep 0.1; done

timeout 30 $PY - "$H" <<'PYEOF' || fail "sending"
import smtplib, sys
c = smtplib.SMTP(sys.argv[1], 25, timeout=20)
for i in range(4):
    c.sendmail("thermostat-%d@fleet.test" % i, ["ops@fleet.test"],
               ("From: Thermostat %d <thermostat-%d@fleet.test>\r\nTo: ops@fleet.test\r\n"
                "Subject: alert %d\r\nMessage-ID: <a%d@fleet.test>\r\n\r\n"
                "temperature above threshold\r\n.dot line\r\n\r\n" % (i, i, i, i)).encode())
c.sendmail("camera@elsewhere.test", ["ops@fleet.test"],
           b"From: camera@elsewhere.test\r\nTo: ops@fleet.test\r\nSubject: motion\r\n\r\nmotion\r\n")
c.quit()
PYEOF
for _ in $(seq 100); do [ "$(ls "$TMP/sink" | wc -l)" -ge 5 ] && break; sleep 0.1; done
[ "$(ls "$TMP/sink" | wc -l)" = 5 ] || { tail -5 "$TMP/relay.log"; fail "expected 5 messages at the sink"; }

$PY - "$TMP/sink" "$TMP/rsa.txt" "$TMP/ed.txt" <<'PYEOF' || fail "DKIM verification"
import dkim, os, re, sys
sink, rsa_txt, ed_txt = sys.argv[1:4]
def record(path):
    # mxdkim txt prints: name IN TXT "..." "..." ; join the quoted strings
    return "".join(re.findall(r'"([^"]*)"', open(path).read())).encode()
keys = {b"s1r._domainkey.fleet.test.": record(rsa_txt), b"s1e._domainkey.fleet.test.": record(ed_txt)}
def dnsfunc(name, timeout=5):
    return keys.get(name if name.endswith(b".") else name + b".")
ok = 0
for f in sorted(os.listdir(sink)):
    raw = open(os.path.join(sink, f), "rb").read().replace(b"\r\n", b"\n")
    lines = raw.split(b"\n")
    # smtp-sink's own lines: X-Client-* / X-*-Args, then its Received: field
    i = 0
    while lines[i].startswith(b"X-"):
        i += 1
    assert lines[i].startswith(b"Received: from"), lines[i]
    i += 1
    while lines[i].startswith((b"\t", b" ")):
        i += 1
    msg = b"\r\n".join(lines[i:])
    sigs = [l for l in lines[i:] if l.startswith(b"DKIM-Signature:")]
    assert len(sigs) == 2, (f, sigs)
    assert b"a=rsa-sha256" in msg and b"a=ed25519-sha256" in msg
    d = dkim.DKIM(msg)
    for n in range(2):
        assert d.verify(idx=n, dnsfunc=dnsfunc), (f, n, "does not verify")
    bad = msg.replace(b"motion", b"MOTION").replace(b"threshold", b"THRESHOLD")
    try:
        tampered_ok = dkim.DKIM(bad).verify(idx=0, dnsfunc=dnsfunc)
    except dkim.ValidationError:
        tampered_ok = False   # dkimpy raises on a body hash mismatch
    assert not tampered_ok, (f, "tampered copy verifies")
    ok += 1
print("verified", ok, "messages, both signatures each")
assert ok == 5
PYEOF
stop_pid $R || fail "relay did not stop cleanly"
signed=$(grep -c "DKIM signing" "$TMP/relay.log" || true)
[ "$signed" = 0 ] || { grep "DKIM" "$TMP/relay.log"; fail "signing failures logged"; }
echo "relay DKIM ok"
