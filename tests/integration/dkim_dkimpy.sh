#!/usr/bin/env bash
# dkim_dkimpy.sh - messages signed by mxdkim (lib/dkim) verify with dkimpy.
#
# For each sample message (plain, folded headers, trailing whitespace, 8-bit
# body, empty body, no final newline, 100 KiB body), each algorithm
# (rsa-sha256 2048, ed25519-sha256, dual) and each canonicalisation pair,
# sign with build/tools/mxdkim/mxdkim and verify with dkimpy (python3-dkim),
# whose DNS lookups are answered from the records `mxdkim txt` printed.  Then
# a modified message (body or signed header) must fail verification.
# Exit 0 pass, 77 skip, other fail.  Runs from the repo root; no network.
set -u
MXDKIM=${MXDKIM:-build/tools/mxdkim/mxdkim}
PY=/usr/bin/python3

[ -x "$MXDKIM" ] || { echo "skip: $MXDKIM not built"; exit 77; }
"$PY" -c 'import dkim, nacl' 2>/dev/null || { echo "skip: python3-dkim or python3-nacl missing"; exit 77; }

tmp=$(mktemp -d /tmp/mx-dkim-it.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

# keys and DNS records
"$MXDKIM" genkey --algorithm rsa-sha256 --bits 2048 --out "$tmp/rsa.pem" || exit 1
"$MXDKIM" genkey --algorithm ed25519-sha256 --out "$tmp/ed.pem" || exit 1
"$MXDKIM" txt --key "$tmp/rsa.pem" --selector rsa1 --domain fleet.example >"$tmp/dns.txt" || exit 1
"$MXDKIM" txt --key "$tmp/ed.pem" --selector ed1 --domain fleet.example >>"$tmp/dns.txt" || exit 1
cat "$tmp/dns.txt"
grep -q '^rsa1._domainkey.fleet.example. IN TXT "v=DKIM1; k=rsa; p=' "$tmp/dns.txt" || { echo "bad rsa TXT"; exit 1; }
grep -q '^ed1._domainkey.fleet.example. IN TXT "v=DKIM1; k=ed25519; p=' "$tmp/dns.txt" || { echo "bad ed25519 TXT"; exit 1; }
# every character-string at most 255 bytes
if grep -o '"[^"]*"' "$tmp/dns.txt" | awk 'length($0) > 257 { bad = 1 } END { exit !bad }'; then
	echo "TXT string longer than 255"; exit 1
fi

# sample messages (written with LF; mxdkim turns LF into CRLF)
. "$(dirname "$0")/dkim_samples.bash"
dkim_samples "$tmp"
printf 'From: dev@fleet.example\nTo: x@example.net\nSubject: 8bit\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\nTemp\xc3\xa9rature \xe2\x82\xac \xff\xfe\n' >"$tmp/8bit.eml"
printf 'From: dev@fleet.example\nTo: x@example.net\nSubject: nonl\n\nlast line without newline  ' >"$tmp/nonl.eml"
[ "$(stat -c %s "$tmp/big.eml")" -gt 100000 ] || { echo "big sample too small"; exit 1; }

# verify.py DNS [EXPECT NSIG FILE WHAT]... or, with one argument, one
# "EXPECT NSIG FILE WHAT" line per check on stdin: every message is verified
# in one Python process (importing dkimpy costs more than verifying).
cat >"$tmp/verify.py" <<'PY'
import re, sys, dkim
recs = {}
for line in open(sys.argv[1]):
    name = line.split()[0].encode()
    recs[name] = "".join(re.findall(r'"([^"]*)"', line)).encode()
def dnsfunc(name, timeout=5):
    return recs.get(name)
def verify(path, want):
    msg = open(path, "rb").read()
    head = msg.split(b"\r\n\r\n", 1)[0]
    count = len(re.findall(rb"(?im)^dkim-signature:", head))
    if count != want:
        return "expected %d signatures, found %d" % (want, count), 2
    d = dkim.DKIM(msg)
    try:  # dkimpy raises on some failures (a body hash mismatch) instead of returning False
        res = [d.verify(idx=i, dnsfunc=dnsfunc) for i in range(count)]
    except dkim.DKIMException as e:
        return repr(e), 1
    return str(res), 0 if all(res) else 1
ok = bad = 0
for line in sys.stdin:
    expect, nsig, path, what = line.rstrip("\n").split(" ", 3)
    out, rc = verify(path, int(nsig))
    if rc == int(expect):
        ok += 1
    else:
        bad += 1
        print("FAIL: %s (verify rc=%d, wanted %s): %s" % (what, rc, expect, out))
print("PASSED %d FAILED %d" % (ok, bad))
PY

pass=0 fail=0
: >"$tmp/checks"
check() { # expect(0|1) file nsig description: verified together at the end
	echo "$1 $3 $2 $4" >>"$tmp/checks"
}

for m in plain folded trailing 8bit empty nonl big; do
	for alg in rsa ed dual; do
		case $alg in
		rsa) keys=(--key "$tmp/rsa.pem" --selector rsa1); n=1 ;;
		ed) keys=(--key "$tmp/ed.pem" --selector ed1); n=1 ;;
		dual) keys=(--key "$tmp/rsa.pem" --key "$tmp/ed.pem" --selector rsa1 --selector ed1); n=2 ;;
		esac
		for c in relaxed/relaxed simple/simple relaxed/simple simple/relaxed; do
			out="$tmp/$m.$alg.${c/\//-}.signed"
			if ! "$MXDKIM" sign "${keys[@]}" --domain fleet.example --canon "$c" \
				<"$tmp/$m.eml" >"$out"; then
				fail=$((fail + 1)); echo "FAIL: mxdkim sign $m $alg $c"; continue
			fi
			check 0 "$out" "$n" "$m $alg $c"
		done
	done
done

# x= and l= tags verify too
"$MXDKIM" sign --key "$tmp/ed.pem" --selector ed1 --domain fleet.example --expire 3600 --length \
	<"$tmp/plain.eml" >"$tmp/xl.signed" || fail=$((fail + 1))
grep -q 'x=' "$tmp/xl.signed" && grep -q 'l=' "$tmp/xl.signed" || { fail=$((fail + 1)); echo "FAIL: no x=/l="; }
check 0 "$tmp/xl.signed" 1 "x= and l="

# tampering must fail: body changed, signed header changed, (relaxed) header re-cased is fine
for alg in rsa ed; do
	f="$tmp/folded.$alg.relaxed-relaxed.signed"
	sed 's/^Frame 1022\./Frame 1023./' "$f" >"$tmp/t1"
	cmp -s "$f" "$tmp/t1" && { fail=$((fail + 1)); echo "FAIL: tamper edit did nothing"; }
	check 1 "$tmp/t1" 1 "$alg body modified"
	sed 's/^Subject: second subject/Subject: forged subject/' "$f" >"$tmp/t2"
	check 1 "$tmp/t2" 1 "$alg duplicate (bottom) Subject modified"
	# a second From: added above is caught by the oversigned From
	sed '0,/^From:/s//From: attacker@evil.example\r\nFrom:/' "$f" >"$tmp/t3"
	check 1 "$tmp/t3" 1 "$alg From: added"
	sed 's/^subject: /SUBJECT: /I' "$f" >"$tmp/t4"
	check 0 "$tmp/t4" 1 "$alg relaxed header case change still verifies"
	f="$tmp/trailing.$alg.simple-simple.signed"
	sed 's/^tabs\t\t/tabs\t/' "$f" >"$tmp/t5"
	check 1 "$tmp/t5" 1 "$alg simple body whitespace modified"
done
# a wrong key in DNS fails: change one base64 character inside the RSA modulus
"$PY" - "$tmp/dns.txt" "$tmp/dns-bad.txt" <<'PY'
import sys
lines = open(sys.argv[1]).read().splitlines()
i = lines[0].index("p=") + 120
lines[0] = lines[0][:i] + ("A" if lines[0][i] != "A" else "B") + lines[0][i + 1:]
open(sys.argv[2], "w").write("\n".join(lines) + "\n")
PY
echo "0 1 $tmp/plain.rsa.relaxed-relaxed.signed corrupted DNS key" |
	"$PY" "$tmp/verify.py" "$tmp/dns-bad.txt" >"$tmp/bad.out" 2>&1
if grep -q "^PASSED 0 FAILED 1$" "$tmp/bad.out"; then pass=$((pass + 1)); else
	fail=$((fail + 1)); echo "FAIL: verified against a corrupted DNS key"; cat "$tmp/bad.out"; fi
# unsignable message: no From
printf 'To: x@example.net\n\nbody\n' | "$MXDKIM" sign --key "$tmp/ed.pem" --selector ed1 \
	--domain fleet.example >/dev/null 2>"$tmp/err"
if [ $? = 1 ] && grep -q "From" "$tmp/err"; then pass=$((pass + 1)); else
	fail=$((fail + 1)); echo "FAIL: no-From message not refused"; cat "$tmp/err"; fi

"$PY" "$tmp/verify.py" "$tmp/dns.txt" <"$tmp/checks" >"$tmp/verified" 2>&1
grep "^FAIL" "$tmp/verified"
read -r ok bad < <(awk '/^PASSED/ {print $2, $4}' "$tmp/verified")
[ -n "${ok:-}" ] || { cat "$tmp/verified"; echo "verify.py did not finish"; exit 1; }
[ "$((ok + bad))" = "$(wc -l <"$tmp/checks")" ] || { echo "verify.py skipped checks"; exit 1; }
pass=$((pass + ok)) fail=$((fail + bad))
echo "dkim_dkimpy: $pass passed, $fail failed"
[ "$fail" = 0 ]
