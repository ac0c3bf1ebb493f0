#!/usr/bin/env bash
# tools_run: README's first command.  tools/run runs the relay on its
# default configuration (net_tap, kernel side mx0 = 10.77.0.1, relay
# 10.77.0.2) with its demo DNS zone (unbound) and demo MX (smtp-sink) on
# the kernel side, and shows the sample notification delivered.  A Ctrl-C,
# which a terminal sends to the whole process group, must then stop the
# relay and both demo peers: the peers may be gone before tools/run's
# cleanup reaches them, and that cleanup must still finish ("stopped") and
# leave nothing running.  Exit 0 pass, 77 skip.
. "$(dirname "$0")/common.bash"
need_root_tap
for c in unbound smtp-sink swaks setsid; do
	command -v $c >/dev/null || skip "$c not installed"
done
[ -x "$ROOT/build/app/mxrelay/mxrelay" ] || skip "tools/run runs build/, not built"
ip link show mx0 >/dev/null 2>&1 && skip "mx0 exists: a relay from tools/run is running"
pgrep -x unbound >/dev/null && skip "an unbound is running; tools/run's would be confused with it"

log=$TMP/run.log
setsid bash "$ROOT/tools/run" >"$log" 2>&1 &
leader=$!
PIDS+=("$leader")
for _ in $(seq 600); do
	grep -q "Ctrl-C stops it" "$log" && break
	kill -0 "$leader" 2>/dev/null || break
	sleep 0.1
done
cat "$log"
grep -q "Ctrl-C stops it" "$log" || fail "tools/run did not come up"
grep -q "^== delivered by the relay" "$log" || fail "tools/run's sample was not delivered"
# the peers tools/run started (children of its shell)
peers=$(pgrep -P "$leader" -d ' ' -x 'unbound|smtp-sink|mxrelay')
echo "tools/run's processes: $peers"
PIDS+=($peers) # the EXIT cleanup stops whatever a failure below leaves
[ "$(echo "$peers" | wc -w)" = 3 ] || fail "expected the relay, unbound and smtp-sink, got '$peers'"
kill -INT -- "-$leader"
for _ in $(seq 200); do
	kill -0 "$leader" 2>/dev/null || break
	sleep 0.1
done
kill -0 "$leader" 2>/dev/null && fail "tools/run still running 20 s after Ctrl-C"
tail -3 "$log"
grep -qx "stopped" "$log" || fail "tools/run's cleanup did not finish"
sleep 0.5
for p in $peers; do
	if kill -0 "$p" 2>/dev/null && ! grep -q '^State:.*Z' "/proc/$p/status" 2>/dev/null; then
		fail "process $p ($(cat /proc/$p/comm 2>/dev/null)) left running after Ctrl-C"
	fi
done
echo "tools_run: ok"
