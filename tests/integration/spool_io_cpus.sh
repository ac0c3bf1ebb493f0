#!/usr/bin/env bash
# [spool] io_cpus: where io_uring's worker threads (iou-wrk-<tid>) run the
# spool's writes and fdatasyncs.  A relay on TAP mxt92 (10.77.92.0/24) with
# its main lcore on CPU 0 and its worker on CPU 1 (-l 0-1) takes 20 messages
# from Python smtplib, once per setting, and the io threads of its worker are
# read from /proc:
#   io_cpus = main    -> on CPU 0 (the main lcore's), not on the worker's;
#   (not set: worker) -> on CPU 1 (inherited from the worker);
#   io_cpus = 0       -> on CPU 0.
# (A list that holds the worker's own CPU ends up as that CPU alone: Linux
# >= 6.2 intersects a kernel-set affinity with the one the thread's parent
# asked for with sched_setaffinity, here DPDK's pinning of the worker.)
# And a CPU list that is not one is a config error with file:line.
. "$(dirname "$0")/common.bash"
need_root_tap
[ "$(nproc)" -ge 2 ] || skip "needs 2 CPUs (main lcore and worker apart)"
N=92 IF=mxt92 H=10.77.92.2

send() { # COUNT: messages to ops@fleet.test, one connection each
	timeout 60 $PY - "$H" "$1" <<'PY'
import smtplib, sys
host, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    s = smtplib.SMTP(host, 25, timeout=20)
    s.sendmail("dev%d@fleet.test" % i, ["ops@fleet.test"],
               b"Subject: io_cpus %d\r\n\r\nthreshold %d\r\n" % (i, i))
    s.quit()
print("sent %d" % n)
PY
}

# io_threads: "tid cpus" of each iou-wrk thread of the relay's worker (rte-worker-1)
io_threads() {
	local t wtid=''
	for t in /proc/"$R"/task/*; do
		[ "$(cat "$t/comm" 2>/dev/null)" = rte-worker-1 ] && wtid=${t##*/}
	done
	[ -n "$wtid" ] || fail "no rte-worker-1 thread in the relay"
	for t in /proc/"$R"/task/*; do
		[ "$(cat "$t/comm" 2>/dev/null)" = "iou-wrk-$wtid" ] || continue
		echo "${t##*/} $(awk '/^Cpus_allowed_list:/ {print $2}' "$t/status")"
	done
}

check() { # NAME EXTRA_SPOOL_LINE WANT_CPUS
	local name=$1 line=$2 want=$3
	rm -rf "$TMP/spool"
	write_relay_config "$TMP/$name.conf" $IF $N "
[spool]
$line"
	start_relay "$TMP/$name.log" "$TMP/$name.conf"
	send 20 || { tail -5 "$RLOG"; fail "$name: sending failed"; }
	io_threads >"$TMP/$name.io"
	echo "$name: io threads (tid cpus): $(tr '\n' ' ' <"$TMP/$name.io")"
	[ -s "$TMP/$name.io" ] || fail "$name: no io_uring worker thread after 20 commits"
	awk -v w="$want" '$2 != w {bad = 1} END {exit bad}' "$TMP/$name.io" ||
		fail "$name: io_uring workers not on CPUs $want"
	stop_relay
}

check main "io_cpus = main" 0
check worker "" 1
check list "io_cpus = 0" 0

write_relay_config "$TMP/bad.conf" $IF $N "
[spool]
io_cpus = 0,x"
line=$(grep -n '^io_cpus = 0,x' "$TMP/bad.conf" | cut -d: -f1)
if "$BUILD/app/mxrelay/mxrelay" --check-config "$TMP/bad.conf" >"$TMP/bad.out" 2>&1; then
	fail "io_cpus = 0,x accepted"
fi
grep -q "bad.conf:$line: \[spool\] io_cpus: expected main, worker or a CPU list" "$TMP/bad.out" ||
	{ cat "$TMP/bad.out"; fail "no file:line error for io_cpus = 0,x"; }
echo "spool_io_cpus: ok"
