#!/usr/bin/env bash
# bench/spool/run.sh [BUILD_DIR] [quick] - the spool figures of bench/spool/README.md:
# the disk alone (write + fdatasync, appending / overwriting / O_DIRECT), then each load
# 3 times (median by msgs/s): 1 KiB and 16 KiB at 50k, 100k, 200k msgs/s offered and at max,
# the commit window and depth at 200k/s, a growing spool (nothing finished), durability=none,
# then recovery of 1M messages.  "quick" stops after the 1 KiB loads.
# The spool goes under /var/tmp (a real disk here; /tmp may be tmpfs elsewhere).
set -u
b=${1:-build}/bench/spool/spool_bench
quick=${2:-}
[ -x "$b" ] || { echo "no $b: build first"; exit 1; }
median() { sort -t: -k2 -n | awk '{l[NR]=$0} END{print l[int((NR+1)/2)]}'; }
run3() {
	for i in 1 2 3; do
		"$b" --probe-size 0 "$@" | awk '/^size=/{split($0,a,": "); split(a[2],m," "); print m[1] ": " $0}'
	done | median | cut -d' ' -f2-
}
echo "$(date -u '+%Y-%m-%d %H:%M UTC') load $(cut -d' ' -f1-3 /proc/loadavg)"
for s in 4096 65536 262144; do "$b" --probe-only --probe-size $s; done
for r in 50000 100000 200000; do run3 --seconds 5 --size 1024 --rate $r; done
run3 --seconds 5 --size 1024
for w in 100 500; do run3 --seconds 5 --size 1024 --rate 200000 --window $w; done
for d in 1 2 4; do run3 --seconds 5 --size 1024 --rate 200000 --depth $d; done
echo "load $(cut -d' ' -f1-3 /proc/loadavg)"
[ "$quick" = quick ] && exit 0
for r in 50000 100000 200000; do run3 --seconds 5 --size 16384 --rate $r; done
run3 --seconds 5 --size 16384
run3 --seconds 5 --size 1024 --finish 0
run3 --seconds 5 --size 1024 --durability none
"$b" --recover 1000000 --size 1024
echo "load $(cut -d' ' -f1-3 /proc/loadavg)"
