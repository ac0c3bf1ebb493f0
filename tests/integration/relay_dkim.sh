#!/usr/bin/env bash
# The relay signs at acceptance and the signature travels with the message:
# mail relayed through a smarthost (Postfix's smtp-sink on the TAP's host
# side) carries DKIM-Signature fields (rsa-sha256 and ed25519-sha256, dual)
# that dkimpy verifies against the keys' published records; a message from
# another sender domain is signed with [dkim] default_domain; a tampered
# copy fails.  The signing domain follows the From: header (domain_from =
# header, the default): mail whose From: is in brand.test is signed d=brand.test
# whatever its envelope sender, with brand.test's own key and canonicalization
# (simple.test canonicalizes bodies otherwise than fleet.test: the signers
# then hash the body both ways, so the From: domain can still take over).
# OpenDKIM (opendkim -t, keys from TestPublicKeys) verifies every message too
# when it is installed.  MX_DKIM_SIGN_LCORES=N: the signatures are made on N
# signer lcores ([dkim] sign_lcores; relay_dkim_lcores.sh runs it so).
. "$(dirname "$0")/common.bash"
need_root_tap
command -v smtp-sink >/dev/null || skip "smtp-sink (postfix) not installed"
$PY -c 'import dkim, nacl' 2>/dev/null || skip "python3-dkim or python3-nacl missing"
N=${MX_DKIM_NET:-78}
IF=mxt$N H=10.77.$N.2 S=10.77.$N.1
SIGN_LCORES=${MX_DKIM_SIGN_LCORES:-0}
D=$BUILD/tools/mxdkim/mxdkim
"$D" genkey --algorithm rsa-sha256 --bits 2048 --out "$TMP/rsa.pem" >/dev/null || fail "genkey rsa"
"$D" genkey --algorithm ed25519-sha256 --out "$TMP/ed.pem" >/dev/null || fail "genkey ed25519"
"$D" txt --key "$TMP/rsa.pem" --selector s1r --domain fleet.test >"$TMP/rsa.txt" || fail "txt rsa"
"$D" txt --key "$TMP/ed.pem" --selector s1e --domain fleet.test >"$TMP/ed.txt" || fail "txt ed25519"
"$D" genkey --algorithm ed25519-sha256 --out "$TMP/brand.pem" >/dev/null || fail "genkey brand"
"$D" txt --key "$TMP/brand.pem" --selector b1 --domain brand.test >"$TMP/brand.txt" || fail "txt brand"
"$D" txt --key "$TMP/brand.pem" --selector b1 --domain simple.test >"$TMP/simple.txt" || fail "txt simple"
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
[dkim \"brand.test\"]
selector = b1
key = $TMP/brand.pem
algorithm = ed25519-sha256
canonicalization = simple/relaxed
[dkim \"simple.test\"]
selector = b1
key = $TMP/brand.pem
algorithm = ed25519-sha256
canonicalization = simple/simple
[dkim]
default_domain = fleet.test
sign_lcores = $SIGN_LCORES"
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
# From: decides: envelope in fleet.test or elsewhere, From: (folded, display name) in brand.test
c.sendmail("thermostat-9@fleet.test", ["ops@fleet.test"],
           b"From: \"Brand, Inc. (alerts)\"\r\n\t<Alerts@Brand.TEST>\r\nTo: ops@fleet.test\r\n"
           b"X-Expect-D: brand.test\r\nSubject: brand 1\r\n\r\nbranded alert  \r\n")
c.sendmail("camera@elsewhere.test", ["ops@fleet.test"],
           b"From: Brand Devices: cam@brand.test, other@fleet.test;\r\nTo: ops@fleet.test\r\n"
           b"X-Expect-D: brand.test\r\nSubject: brand 2\r\n\r\nmotion\r\n")
# From: in simple.test, whose body canonicalization (simple) differs from the
# envelope domain's (relaxed): the signers hash the body both ways meanwhile
c.sendmail("thermostat-8@fleet.test", ["ops@fleet.test"],
           b"From: dev@simple.test\r\nTo: ops@fleet.test\r\n"
           b"X-Expect-D: simple.test\r\nSubject: simple\r\n\r\nmotion  \r\n\r\n")
c.quit()
PYEOF
for _ in $(seq 100); do [ "$(ls "$TMP/sink" | wc -l)" -ge 8 ] && break; sleep 0.1; done
[ "$(ls "$TMP/sink" | wc -l)" = 8 ] || { tail -5 "$TMP/relay.log"; fail "expected 8 messages at the sink"; }
mkdir -p "$TMP/signed"

$PY - "$TMP/sink" "$TMP/rsa.txt" "$TMP/ed.txt" "$TMP/brand.txt" "$TMP/simple.txt" "$TMP/signed" <<'PYEOF' || fail "DKIM verification"
import dkim, os, re, sys
sink, rsa_txt, ed_txt, brand_txt, simple_txt, signed = sys.argv[1:7]
def record(path):
    # mxdkim txt prints: name IN TXT "..." "..." ; join the quoted strings
    return "".join(re.findall(r'"([^"]*)"', open(path).read())).encode()
keys = {b"s1r._domainkey.fleet.test.": record(rsa_txt), b"s1e._domainkey.fleet.test.": record(ed_txt),
        b"b1._domainkey.brand.test.": record(brand_txt), b"b1._domainkey.simple.test.": record(simple_txt)}
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
    head = msg.split(b"\r\n\r\n", 1)[0]
    fields = re.findall(rb"(?ims)^DKIM-Signature:.*?(?=\r\n[^ \t])", head + b"\r\nX")
    m = re.search(rb"(?im)^X-Expect-D: *(\S+)", head)
    want_d = m.group(1) if m else b"fleet.test"
    ds = [re.search(rb"\bd=([^;]+);", re.sub(rb"\s", b"", fl)).group(1) for fl in fields]
    assert ds == [want_d] * len(ds), (f, "signed as", ds, "wanted", want_d)
    if want_d == b"fleet.test":
        assert len(fields) == 2, (f, fields)
        assert b"a=rsa-sha256" in msg and b"a=ed25519-sha256" in msg
    else:
        # the domain's own key (ed25519 only) and canonicalization
        assert len(fields) == 1 and b"a=ed25519-sha256" in fields[0], (f, fields)
        canon = {b"brand.test": b"c=simple/relaxed", b"simple.test": b"c=simple/simple"}[want_d]
        assert canon in fields[0], (f, fields)
    d = dkim.DKIM(msg)
    for n in range(len(fields)):
        assert d.verify(idx=n, dnsfunc=dnsfunc), (f, n, "does not verify")
    bad = msg.replace(b"motion", b"MOTION").replace(b"threshold", b"THRESHOLD").replace(b"branded", b"BRANDED")
    try:
        tampered_ok = dkim.DKIM(bad).verify(idx=0, dnsfunc=dnsfunc)
    except dkim.ValidationError:
        tampered_ok = False   # dkimpy raises on a body hash mismatch
    assert not tampered_ok, (f, "tampered copy verifies")
    open(os.path.join(signed, "%s.%d.eml" % (want_d.decode(), ok)), "wb").write(msg)
    ok += 1
print("verified", ok, "messages with dkimpy, every signature of each")
assert ok == 8
PYEOF
# OpenDKIM, a second verifier, on the same messages (keys given locally)
if command -v opendkim >/dev/null || [ -x /usr/sbin/opendkim ]; then
	OPENDKIM=$(command -v opendkim || echo /usr/sbin/opendkim)
	cat "$TMP/rsa.txt" "$TMP/ed.txt" "$TMP/brand.txt" "$TMP/simple.txt" |
		sed -e 's/\. IN TXT / /' -e 's/" "//g' -e 's/"//g' >"$TMP/od.keys"
	printf 'Mode v\nSyslog no\nTestPublicKeys %s\n' "$TMP/od.keys" >"$TMP/od.conf"
	for f in "$TMP"/signed/*.eml; do
		want=2
		case $f in */brand.test.* | */simple.test.*) want=1 ;; esac
		timeout 30 "$OPENDKIM" -x "$TMP/od.conf" -t "$f" -vv >"$TMP/od.out" 2>&1
		[ "$(grep -o 'dkim=pass' "$TMP/od.out" | wc -l)" = $want ] &&
			! grep -qE 'dkim=(fail|neutral|permerror)' "$TMP/od.out" ||
			{ cat "$TMP/od.out"; fail "OpenDKIM does not verify $(basename "$f")"; }
	done
	echo "OpenDKIM verified $(ls "$TMP"/signed/*.eml | wc -l) messages"
else
	echo "note: opendkim not installed; OpenDKIM cross-check not run"
fi
"$BUILD/tools/mxctl/mxctl" -s "$TMP/control.sock" stats >"$TMP/stats" || fail "mxctl stats"
off=$(mxstat "$TMP/stats" dkim_offloaded) jobs=$(mxstat "$TMP/stats" dkim_signer_jobs)
if [ "$SIGN_LCORES" -gt 0 ]; then
	# every message of the 8 went to a signer lcore (the queue never filled up)
	[ "$off" = 8 ] && [ "$jobs" = 8 ] &&
		[ "$(mxstat "$TMP/stats" dkim_signer_lcores)" = "$SIGN_LCORES" ] ||
		{ grep dkim "$TMP/stats"; fail "signatures not made on the signer lcores"; }
	grep -q "signer lcore(s) make the signatures" "$TMP/relay.log" || fail "no signer start-up line"
else
	[ "$off" = 0 ] && [ "$jobs" = 0 ] || { grep dkim "$TMP/stats"; fail "offloaded without sign_lcores"; }
fi
! grep -q "cannot sign as From: domain" "$TMP/relay.log" ||
	{ grep DKIM "$TMP/relay.log"; fail "a From: domain could not take over the message"; }
stop_pid $R || fail "relay did not stop cleanly"
signed=$(grep -c "DKIM signing" "$TMP/relay.log" || true)
[ "$signed" = 0 ] || { grep "DKIM" "$TMP/relay.log"; fail "signing failures logged"; }
echo "relay DKIM ok"
