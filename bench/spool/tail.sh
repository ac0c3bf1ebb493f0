#!/usr/bin/env bash
# bench/spool/tail.sh [BUILD_DIR] [RUNS] [-- extra spool_bench options]
# The p99 group-commit latency matrix of bench/spool/README.md ("Tail"): 1 KiB and
# 16 KiB at 50k, 100k and 200k msgs/s offered, RUNS runs each (default 3), every run
# followed by the disk alone at the run's own batch size and commit count
# (--probe-same).  Prints one line per run and the median p99 per load.
set -u
b=${1:-build}/bench/spool/spool_bench
runs=${2:-3}
shift $(( $# >= 2 ? 2 : $# ))
[ "${1:-}" = "--" ] && shift
[ -x "$b" ] || { echo "no $b: build first"; exit 1; }
echo "$(date -u '+%Y-%m-%d %H:%M:%S UTC') load $(cut -d' ' -f1-3 /proc/loadavg) extra: $*"
for size in 1024 16384; do
	for rate in 50000 100000 200000; do
		p99s=() d99s=()
		for i in $(seq 1 "$runs"); do
			out=$("$b" --probe-size 0 --seconds 5 --size $size --rate $rate "$@")
			l=$(grep -m1 '^size=' <<<"$out")
			t=$(grep -m1 'tail:' <<<"$out")
			d=$(grep -m1 'disk alone after' <<<"$out")
			mps=$(sed -E 's/.*: ([0-9]+) msgs\/s.*/\1/' <<<"$l")
			p50=$(sed -E 's/.*p50 ([0-9]+) us.*/\1/' <<<"$l")
			p99=$(sed -E 's/.*p99 ([0-9]+) us.*/\1/' <<<"$l")
			mpc=$(sed -E 's/.*, ([0-9.]+) msgs\/commit.*/\1/' <<<"$l")
			d50=$(sed -E 's/.*: p50 ([0-9]+) us.*/\1/' <<<"$d")
			d99=$(sed -E 's/.*p99 ([0-9]+) us.*/\1/' <<<"$d")
			bs=$(sed -E 's/.*overwrite ([0-9]+) B.*/\1/' <<<"$d")
			slow=$(sed -E 's/.*tail: ([0-9]+) messages.*\(([0-9.]+)%\), ([0-9]+) of them.*\(([0-9]+) rolls\); slow completions in ([0-9]+) of ([0-9]+).*/\2% roll:\3\/\1 rolls:\4 win:\5\/\6/' <<<"$t")
			printf '%5s %6s run%d: %7s msgs/s p50 %5s p99 %6s us | %6s msgs/commit, batch %7s B | disk alone p50 %5s p99 %6s us | slow %s | load %s\n' \
				$size $rate $i "$mps" "$p50" "$p99" "$mpc" "$bs" "$d50" "$d99" "$slow" "$(cut -d' ' -f1 /proc/loadavg)"
			p99s+=("$p99") d99s+=("$d99")
		done
		m=$(printf '%s\n' "${p99s[@]}" | sort -n | awk '{l[NR]=$0} END{print l[int((NR+1)/2)]}')
		md=$(printf '%s\n' "${d99s[@]}" | sort -n | awk '{l[NR]=$0} END{print l[int((NR+1)/2)]}')
		echo "== $size B at $rate/s: median p99 $m us (runs: ${p99s[*]}); disk alone median p99 $md us"
	done
done
echo "$(date -u '+%H:%M:%S UTC') load $(cut -d' ' -f1-3 /proc/loadavg)"
