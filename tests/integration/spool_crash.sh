#!/usr/bin/env bash
# Nothing acknowledged is lost: 16 sessions send mail while the relay is
# killed with SIGKILL at a random moment, three times, and restarted on the
# same spool.  Every message that got "250 queued as ID" must be in the
# spool after recovery (checked with mxspool).  Messages without a 250 may
# be lost; delivery-side exactly-once is checked once delivery exists.
. "$(dirname "$0")/common.bash"
need_root_tap
N=31 IF=mxt31 H=10.77.31.2
write_relay_config "$TMP/r.conf" $IF $N
: >"$TMP/acked"
start_relay() {
	start_bg "$TMP/relay.$1.log" "$BUILD/app/mxrelay/mxrelay" --config "$TMP/r.conf"
	R=$LAST_PID
	wait_iface $IF 10.77.$N.1 || { cat "$TMP/relay.$1.log"; fail "TAP did not come up"; }
	for _ in $(seq 100); do grep -q "mxrelay running" "$TMP/relay.$1.log" && break; sleep 0.1; done
}
start_bg "$TMP/client.log" $PY "$(dirname "$0")/spool_crash.py" $H "$TMP/acked" 25
C=$LAST_PID
for round in 1 2 3; do
	start_relay $round
	sleep "$(awk -v r=$RANDOM 'BEGIN { printf "%.1f", 1.5 + (r % 30) / 10 }')"
	kill -9 $R
	wait $R 2>/dev/null
	echo "round $round: killed after $(wc -l <"$TMP/acked") acknowledgements so far"
	grep -E "torn|quarantin" "$TMP/relay.$round.log" | head -3
done
start_relay final
wait $C
cat "$TMP/client.log"
stop_pid $R || fail "relay did not stop cleanly"
grep "spool recovered" "$TMP"/relay.*.log | sed 's/.*info: //'
"$BUILD/tools/mxspool/mxspool" "$TMP/spool" list | awk '{print $1}' | sort >"$TMP/spooled"
sort -u "$TMP/acked" >"$TMP/acked.sorted"
total=$(wc -l <"$TMP/acked.sorted")
[ "$total" -gt 100 ] || fail "only $total messages acknowledged: the load did not run"
missing=$(comm -23 "$TMP/acked.sorted" "$TMP/spooled" | wc -l)
dups=$(($(wc -l <"$TMP/acked") - total))
echo "acknowledged $total (duplicate ids $dups), in spool $(wc -l <"$TMP/spooled"), missing $missing"
[ "$missing" = 0 ] || { comm -23 "$TMP/acked.sorted" "$TMP/spooled" | head; fail "$missing acknowledged messages lost"; }
[ "$dups" = 0 ] || fail "a queue id was given twice"
