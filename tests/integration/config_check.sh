#!/usr/bin/env bash
# mxrelay --check-config: every file in config/ passes; every file in
# tests/config/bad/ fails with the file:line message its first line expects.
. "$(dirname "$0")/common.bash"
M=$BUILD/app/mxrelay/mxrelay
cd "$ROOT"
n=0
# Examples that name DKIM keys under /etc/mxrelay/dkim are checked against
# keys made here (the keys are loaded by --check-config).
D=$BUILD/tools/mxdkim/mxdkim
"$D" genkey --algorithm rsa-sha256 --bits 2048 --out "$TMP/rsa.pem" >/dev/null &&
	"$D" genkey --algorithm ed25519-sha256 --out "$TMP/ed.pem" >/dev/null || fail "mxdkim genkey"
for f in config/*.conf config/examples/*.conf; do
	[ -e "$f" ] || continue
	sed -e "s|/etc/mxrelay/dkim/[^ ]*\.rsa\.pem|$TMP/rsa.pem|" \
		-e "s|/etc/mxrelay/dkim/[^ ]*\.ed25519\.pem|$TMP/ed.pem|" "$f" >"$TMP/$(basename "$f")"
	"$M" --check-config "$TMP/$(basename "$f")" >"$TMP/out" 2>&1 || { cat "$TMP/out"; fail "$f should pass"; }
	n=$((n + 1))
done
for f in tests/config/bad/*.conf; do
	want=$(sed -n '1s/^# expect: //p' "$f")
	[ -n "$want" ] || fail "$f has no '# expect:' line"
	if "$M" --check-config "$f" >"$TMP/out" 2>&1; then
		fail "$f should fail"
	fi
	grep -qF -- "$want" <(sed "s|^tests/config/bad/||" "$TMP/out") ||
		{ cat "$TMP/out"; fail "$f: expected '$want'"; }
	n=$((n + 1))
done
"$M" --check-config /nonexistent.conf >"$TMP/out" 2>&1 && fail "missing file should fail"
grep -q "No such file" "$TMP/out" || fail "missing file: no clear message"
echo "$n config files checked"
