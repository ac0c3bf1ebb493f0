#!/usr/bin/env bash
# compare_smoke: bench/compare's machinery at a small size, measuring nothing:
# 300 messages from smtp-source (20 sessions) through mxrelay on its TAP
# (mxt65, 10.77.65.0/24), through a private Postfix instance on loopback,
# and straight into smtp-sink (direct), one run each.  bench/compare itself
# fails a run whose sink did not get exactly the messages sent or whose
# relay kept any; here the summary must name every relay with a rate above
# zero, print mxrelay's ratio to Postfix and its share of direct, and write a
# results JSON that says the same.  Haraka (npm) is left to bench/compare's
# own runs.  Exit 0 pass, 77 skip.
. "$(dirname "$0")/common.bash"
need_root_tap
for c in smtp-source smtp-sink postfix postconf bc; do
	command -v $c >/dev/null || skip "$c not installed"
done
[ -x "$BUILD/app/mxrelay/mxrelay" ] || skip "$BUILD/app/mxrelay/mxrelay not built"

out=$TMP/compare.out
MX_BUILD=$BUILD timeout 600 "$ROOT/bench/compare" -o mxrelay,postfix,direct -m 300 -s 20 -r 1 \
	>"$out" 2>&1
rc=$?
cat "$out"
[ $rc = 0 ] || fail "bench/compare exited $rc"
for r in mxrelay postfix direct; do
	line=$(grep -E "^$r +delivered +[0-9]+/s" "$out") || fail "no summary line for $r"
	rate=$(echo "$line" | sed -E 's|^[a-z]+ +delivered +([0-9]+)/s.*|\1|')
	[ "${rate:-0}" -gt 0 ] || fail "$r: delivered rate '$rate'"
done
grep -qE '^relay 1KiB x 20 sessions: mxrelay [0-9]+/s delivered, postfix [0-9]+/s: ratio [0-9.]+x delivered .*; relay CPU per message [0-9]+ against [0-9]+ us: [0-9.]+x$' "$out" ||
	fail "no mxrelay/postfix ratio line"
grep -qE '^the load side alone \(direct: .*\) [0-9]+/s: with mxrelay in the path the rate was [0-9]+% of that$' "$out" ||
	fail "no line for direct"
json=$(sed -n 's/^results: //p' "$out")
[ -s "$json" ] || fail "no results JSON"
$PY - "$json" <<'PY' || fail "results JSON incomplete"
import json, sys
j = json.load(open(sys.argv[1]))
assert j["messages"] == 300 and j["sessions"] == 20, j
for r in ("mxrelay", "postfix", "direct"):
    assert j["median"][r]["delivered_per_s"] > 0, r
assert j["mxrelay_to_postfix"]["delivered"] > 0 and j["mxrelay_to_postfix"]["cpu_per_msg"] > 0
assert j["mxrelay_to_direct"]["delivered"] > 0
assert len(j["runs"]) == 3
PY
rm -f "$json"
echo "compare_smoke: ok"
