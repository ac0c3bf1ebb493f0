#!/usr/bin/env bash
# mxrelay --check-config: every file in config/ passes; every file in
# tests/config/bad/ fails with the file:line message its first line expects.
. "$(dirname "$0")/common.bash"
M=$BUILD/app/mxrelay/mxrelay
cd "$ROOT"
n=0
for f in config/*.conf config/examples/*.conf; do
	[ -e "$f" ] || continue
	"$M" --check-config "$f" >"$TMP/out" 2>&1 || { cat "$TMP/out"; fail "$f should pass"; }
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
