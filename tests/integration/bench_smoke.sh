#!/usr/bin/env bash
# bench_smoke: the benchmark harness end to end at a low rate, a few seconds
# each, checking that the counts add up rather than measuring anything:
#   direct  mxgen -> mxsink: offered = accepted + rejected (+ unfinished = 0),
#           mxsink verified every message (ok == accepted, no digest mismatch,
#           no missing tag, no duplicate), nothing rejected;
#   faults  the same with injected failures (5% 450 and 5% 550 at RCPT, 10% 451
#           at the end of data): mxgen's rejections by code == the sink's
#           injected failures, and accepted + rejected == offered; mxgen's
#           --dns-check gets the right MX, A and NXDOMAIN answers from the
#           sink's synthetic zone;
#   accept  mxgen -> mxrelay: everything accepted and the relay's own
#           smtp_messages_accepted counter agrees.
# Two DPDK processes over net_memif (10.77.110.0/24, private to the link).
# Runs in about 30 s.  MX_BUILD: the build directory (default build/).
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT" || exit 1
B=${MX_BUILD:-build}
export MX_BUILD=$B
TMP=$(mktemp -d /tmp/mxit-bench.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

[ "$(id -u)" = 0 ] || { echo "skip: DPDK memif needs root here"; exit 77; }
for bin in bench/mxgen/mxgen bench/mxsink/mxsink app/mxrelay/mxrelay tools/mxctl/mxctl; do
	[ -x "$B/$bin" ] || { echo "skip: $B/$bin not built"; exit 77; }
done

# field LINE NAME: the value of NAME=... in a RESULT line
field() { echo "$1" | tr ' ' '\n' | awk -F= -v k="$2" '$1 == k {print $2; exit}'; }

run() { # NAME ARGS...: runs bench/run, prints its output, leaves RESULT in $R
	local name=$1
	shift
	timeout 50 bench/run "$@" --quiet >"$TMP/$name.out" 2>&1
	local rc=$?
	cat "$TMP/$name.out"
	[ $rc = 0 ] || fail "bench/run $* exited $rc"
	R=$(grep '^RESULT ' "$TMP/$name.out" | tail -1)
	[ -n "$R" ] || fail "bench/run $*: no RESULT line"
}

# 1. direct
run direct direct --seconds 3 --rate 200
off=$(field "$R" offered) acc=$(field "$R" accepted) rej=$(field "$R" rejected)
unf=$(field "$R" unfinished)
[ "$off" -gt 200 ] || fail "direct: only $off offered"
[ "$off" = $((acc + rej + unf)) ] || fail "direct: offered $off != $acc + $rej + $unf"
[ "$rej" = 0 ] && [ "$unf" = 0 ] || fail "direct: $rej rejected, $unf unfinished"
[ "$(field "$R" sink_ok)" = "$acc" ] ||
	fail "direct: sink ok $(field "$R" sink_ok) != accepted $acc"
[ "$(field "$R" sink_received)" = "$acc" ] || fail "direct: sink received != accepted"
for k in sink_corrupt sink_missing_tag sink_dup; do
	[ "$(field "$R" $k)" = 0 ] || fail "direct: $k = $(field "$R" $k)"
done

# 2. direct with injected failures
cat >"$TMP/faults.conf" <<CONF
path = direct
gen = --rate 200 --devices 100 --size 200-3000 --rcpts 1 --literal-share 300 --dns-check 60
sink = --rcpt-4xx 50 --rcpt-5xx 50 --tempfail 100 --slow 50 --slow-ms 20
CONF
run faults "$TMP/faults.conf" --seconds 3
off=$(field "$R" offered) acc=$(field "$R" accepted) rej=$(field "$R" rejected)
unf=$(field "$R" unfinished)
[ "$off" = $((acc + rej + unf)) ] || fail "faults: offered $off != $acc + $rej + $unf"
[ "$unf" = 0 ] || fail "faults: $unf unfinished"
[ "$rej" -gt 0 ] || fail "faults: no rejection seen"
r450=$(field "$R" rejected_450) r550=$(field "$R" rejected_550) r451=$(field "$R" rejected_451)
s4=$(field "$R" sink_rcpt_4xx) s5=$(field "$R" sink_rcpt_5xx) st=$(field "$R" sink_tempfailed)
[ "${r450:-0}" = "$s4" ] && [ "${r550:-0}" = "$s5" ] && [ "${r451:-0}" = "$st" ] ||
	fail "faults: mxgen saw 450/550/451 ${r450:-0}/${r550:-0}/${r451:-0}, sink injected $s4/$s5/$st"
[ "$rej" = $((s4 + s5 + st)) ] || fail "faults: rejected $rej != injected $((s4 + s5 + st))"
[ "$s4" -gt 0 ] && [ "$s5" -gt 0 ] && [ "$st" -gt 0 ] || fail "faults: some fault never fired"
[ "$(field "$R" sink_accepted)" = "$acc" ] || fail "faults: sink accepted != mxgen accepted"
[ "$(field "$R" sink_ok)" = $((off - s4 - s5)) ] ||
	fail "faults: sink ok $(field "$R" sink_ok) != offered $off - RCPT rejections"
for k in sink_corrupt sink_missing_tag sink_dup; do
	[ "$(field "$R" $k)" = 0 ] || fail "faults: $k = $(field "$R" $k)"
done
# mxsink's DNS zone: MX, A and NXDOMAIN answers, each checked by mxgen
[ "$(field "$R" dns_ok)" = 60 ] && [ "$(field "$R" dns_bad)" = 0 ] ||
	fail "faults: DNS check: $(field "$R" dns_ok) of 60 ok, $(field "$R" dns_bad) bad"

# 3. accept through the relay
run accept accept --seconds 3 --rate 200
off=$(field "$R" offered) acc=$(field "$R" accepted) rej=$(field "$R" rejected)
unf=$(field "$R" unfinished)
[ "$off" -gt 200 ] || fail "accept: only $off offered"
[ "$off" = $((acc + rej + unf)) ] || fail "accept: offered $off != $acc + $rej + $unf"
[ "$rej" = 0 ] && [ "$unf" = 0 ] || fail "accept: $rej rejected, $unf unfinished"
[ "$(field "$R" relay_accepted)" = "$acc" ] ||
	fail "accept: relay counted $(field "$R" relay_accepted), mxgen $acc"
echo "bench_smoke: ok"
