#!/usr/bin/env bash
# An idle relay uses well under 10% of a core (idle-aware polling: pause,
# then sleep on RX interrupts), and still answers at once when traffic comes.
. "$(dirname "$0")/common.bash"
need_root_tap
N=18 IF=mxt18
write_config "$TMP/c.conf" $IF $N
start_bg "$TMP/relay.log" "$BUILD/app/mxrelay/mxrelay" --config "$TMP/c.conf"
R=$LAST_PID
wait_iface $IF 10.77.$N.1 || { cat "$TMP/relay.log"; fail "TAP did not come up"; }
sleep 1
ticks() { awk '{print $14 + $15}' /proc/$R/stat; }
t0=$(ticks); s0=$(date +%s.%N)
sleep 5
t1=$(ticks); s1=$(date +%s.%N)
hz=$(getconf CLK_TCK)
pct=$(echo "scale=2; ($t1 - $t0) * 100 / $hz / ($s1 - $s0)" | bc)
echo "idle relay CPU: $pct% of one core over 5 s"
ping -c 3 -i 0.2 -W 2 10.77.$N.2 >"$TMP/ping.log" || { cat "$TMP/ping.log"; fail "no answer after idling"; }
grep -E 'rtt|round-trip' "$TMP/ping.log"
stop_pid $R || fail "relay did not exit cleanly on SIGTERM"
cat "$TMP/relay.log"
[ "$(echo "$pct < 10" | bc)" = 1 ] || fail "idle CPU $pct% is not under 10%"
