#!/usr/bin/env bash
# dkim_opendkim.sh - messages signed by mxdkim (lib/dkim) verify with OpenDKIM.
#
# A second, independent verifier next to dkimpy (dkim_dkimpy.sh): OpenDKIM's
# own library (Debian's opendkim 2.11, which does rsa-sha256 and
# ed25519-sha256), run in its test mode (`opendkim -t FILE`), with the public
# keys given locally through opendkim.conf's TestPublicKeys file instead of
# DNS.  Its verdicts are read from the Authentication-Results field it would
# add ("dkim=pass ... header.s=SELECTOR").  Sample messages x rsa / ed25519 /
# dual x the four canonicalisation pairs must pass, every signature of them;
# x= and l= too; tampered copies (body, signed header, added From:) must fail.
# The relay's own signatures go through OpenDKIM in relay_dkim.sh.
# Exit 0 pass, 77 skip, other fail.  Runs from the repo root; no network.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${MX_BUILD:-$ROOT/build}
MXDKIM=${MXDKIM:-$BUILD/tools/mxdkim/mxdkim}
[ -x "$MXDKIM" ] || { echo "skip: $MXDKIM not built"; exit 77; }
command -v opendkim >/dev/null || [ -x /usr/sbin/opendkim ] ||
	{ echo "skip: opendkim not installed (Debian package opendkim)"; exit 77; }
OPENDKIM=$(command -v opendkim || echo /usr/sbin/opendkim)

tmp=$(mktemp -d /tmp/mx-dkim-od.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

"$MXDKIM" genkey --algorithm rsa-sha256 --bits 2048 --out "$tmp/rsa.pem" || exit 1
"$MXDKIM" genkey --algorithm ed25519-sha256 --out "$tmp/ed.pem" || exit 1
# TestPublicKeys: "name record" per line (the TXT strings joined)
for k in rsa:rsa1 ed:ed1; do
	"$MXDKIM" txt --key "$tmp/${k%%:*}.pem" --selector "${k#*:}" --domain fleet.example |
		sed -e 's/\. IN TXT / /' -e 's/" "//g' -e 's/"//g' >>"$tmp/keys"
done
grep -q '^rsa1._domainkey.fleet.example v=DKIM1; k=rsa; p=' "$tmp/keys" &&
	grep -q '^ed1._domainkey.fleet.example v=DKIM1; k=ed25519; p=' "$tmp/keys" ||
	{ cat "$tmp/keys"; echo "FAIL: key file"; exit 1; }
cat >"$tmp/opendkim.conf" <<EOF
Mode v
Syslog no
TestPublicKeys $tmp/keys
EOF

. "$(dirname "$0")/dkim_samples.bash"
dkim_samples "$tmp"
printf 'From: dev@fleet.example\nTo: x@example.net\nSubject: 8bit\nContent-Type: text/plain; charset=utf-8\n\nTemp\xc3\xa9rature \xe2\x82\xac\n' >"$tmp/8bit.eml"
# No "no final newline" sample here (dkim_dkimpy.sh has one): OpenDKIM's
# test mode reads the file by lines and mishandles an unterminated last line
# (it reports "message not signed" for one without trailing WSP, a failure
# for one with).  Mail taken by SMTP always ends in CRLF.

pass=0 fail=0
# verify FILE WANT_PASS WANT_FAIL what: OpenDKIM's dkim=pass / dkim=fail counts
verify() {
	local f=$1 want_pass=$2 want_fail=$3 what=$4 np nf
	timeout 30 "$OPENDKIM" -x "$tmp/opendkim.conf" -t "$f" -vv >"$tmp/od.out" 2>&1
	np=$(grep -o 'dkim=pass' "$tmp/od.out" | wc -l)
	nf=$(grep -oE 'dkim=(fail|neutral|permerror|temperror|policy)' "$tmp/od.out" | wc -l)
	if [ "$np" = "$want_pass" ] && [ "$nf" = "$want_fail" ]; then
		pass=$((pass + 1))
	else
		fail=$((fail + 1))
		echo "FAIL: $what: opendkim gave $np pass / $nf fail, wanted $want_pass / $want_fail"
		cat "$tmp/od.out"
	fi
}

for m in plain folded trailing 8bit empty big; do
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
			verify "$out" "$n" 0 "$m $alg $c"
		done
	done
done

for alg in rsa ed; do
	k=$([ $alg = rsa ] && echo "--key $tmp/rsa.pem --selector rsa1" || echo "--key $tmp/ed.pem --selector ed1")
	# shellcheck disable=SC2086
	"$MXDKIM" sign $k --domain fleet.example --expire 3600 --length <"$tmp/plain.eml" >"$tmp/xl.$alg" ||
		{ fail=$((fail + 1)); echo "FAIL: sign x= l="; }
	grep -q 'x=' "$tmp/xl.$alg" && grep -q 'l=' "$tmp/xl.$alg" || { fail=$((fail + 1)); echo "FAIL: no x=/l="; }
	verify "$tmp/xl.$alg" 1 0 "$alg x= and l="
	f="$tmp/folded.$alg.relaxed-relaxed.signed"
	sed 's/^Frame 1022\./Frame 1023./' "$f" >"$tmp/t1"
	cmp -s "$f" "$tmp/t1" && { fail=$((fail + 1)); echo "FAIL: tamper edit did nothing"; }
	verify "$tmp/t1" 0 1 "$alg body modified"
	sed 's/^Subject: second subject/Subject: forged subject/' "$f" >"$tmp/t2"
	verify "$tmp/t2" 0 1 "$alg duplicate (bottom) Subject modified"
	sed '0,/^From:/s//From: attacker@evil.example\r\nFrom:/' "$f" >"$tmp/t3"
	verify "$tmp/t3" 0 1 "$alg From: added above the signed one"
	sed 's/^subject: /SUBJECT: /I' "$f" >"$tmp/t4"
	verify "$tmp/t4" 1 0 "$alg relaxed header case change still verifies"
done
# a different key under the selector fails
"$MXDKIM" genkey --algorithm ed25519-sha256 --out "$tmp/other.pem" || exit 1
"$MXDKIM" sign --key "$tmp/other.pem" --selector ed1 --domain fleet.example <"$tmp/plain.eml" >"$tmp/other.signed" || exit 1
verify "$tmp/other.signed" 0 1 "signed with a key that is not the published one"

echo "dkim_opendkim: $pass passed, $fail failed ($($OPENDKIM -V 2>&1 | head -1))"
[ "$fail" = 0 ]
