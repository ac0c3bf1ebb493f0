#!/usr/bin/env bash
# bench/spool/run.sh [BUILD_DIR] - the spool figures of bench/spool/README.md:
# each load 3 times (median by msgs/s), then recovery of 1M messages.
# The spool goes under /var/tmp (a real disk here; /tmp may be tmpfs elsewhere).
set -u
b=${1:-build}/bench/spool/spool_bench
[ -x "$b" ] || { echo "no $b: build first"; exit 1; }
median() { sort -t: -k2 -n | awk '{l[NR]=$0} END{print l[int((NR+1)/2)]}'; }
run3() {
	for i in 1 2 3; do
		"$b" "$@" | awk '/^size=/{split($0,a,": "); split(a[2],m," "); print m[1] ": " $0}'
	done | median | cut -d' ' -f2-
}
echo "load $(cut -d' ' -f1-3 /proc/loadavg)"
"$b" --seconds 1 --rate 1000 | head -1
run3 --seconds 5 --size 1024
run3 --seconds 5 --size 1024 --rate 200000
run3 --seconds 5 --size 1024 --rate 50000
run3 --seconds 5 --size 16384
run3 --seconds 5 --size 16384 --rate 10000
run3 --seconds 5 --size 1024 --durability none
"$b" --recover 1000000 --size 1024
