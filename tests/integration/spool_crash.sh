#!/usr/bin/env bash
# Nothing acknowledged is lost: 16 sessions send mail (delivered by the
# relay through a smarthost, Postfix's smtp-sink on the TAP's host side) while the relay is killed with SIGKILL at a random moment, three
# times, and restarted on the same spool.  Every message that got "250
# queued as ID" must reach the sink at least once (its Received: header
# carries the ID); duplicates (delivered, but killed before the spool
# recorded it) are counted and reported.  Messages without a 250 may be
# lost: the client still holds them.
. "$(dirname "$0")/common.bash"
need_root_tap
command -v smtp-sink >/dev/null || skip "smtp-sink (postfix) not installed"
N=${MX_NET:-31} IF=mxt${MX_NET:-31} H=10.77.${MX_NET:-31}.2 S=10.77.${MX_NET:-31}.1
write_relay_config "$TMP/r.conf" $IF $N "[queue]
retry = 1s
backoff_initial = 1s
backoff_max = 2s
[relay]
smarthost = [$S]:25"
chmod o+x "$TMP"
mkdir -p "$TMP/sink" && chmod 777 "$TMP/sink"
SINK=""
: >"$TMP/acked"
start_relay() {
	start_bg "$TMP/relay.$1.log" "$BUILD/app/mxrelay/mxrelay" --config "$TMP/r.conf"
	R=$LAST_PID
	wait_iface $IF 10.77.$N.1 || { cat "$TMP/relay.$1.log"; fail "TAP did not come up"; }
	for _ in $(seq 100); do grep -q "mxrelay running" "$TMP/relay.$1.log" && break; sleep 0.1; done
	# The sink lives on the TAP's host address, which exists while the relay runs.
	if [ -z "$SINK" ] || ! kill -0 "$SINK" 2>/dev/null; then
		start_bg "$TMP/sink.log" smtp-sink -u nobody -d "$TMP/sink/%M%S." $S:25 200
		SINK=$LAST_PID
	fi
}
start_bg "$TMP/client.log" $PY "$(dirname "$0")/spool_crash.py" $H "$TMP/acked" 25 "ops@fleet.test"
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
# Let the relay deliver everything it holds (bounded), then stop it.
M=$BUILD/tools/mxspool/mxspool
for _ in $(seq 600); do
	"$BUILD/tools/mxctl/mxctl" -s "$TMP/control.sock" status 2>/dev/null |
		grep -qE '^spool_messages_queued 0$' && break
	sleep 0.2
done
stop_pid $R || fail "relay did not stop cleanly"
grep "spool recovered" "$TMP"/relay.*.log | sed 's/.*info: //'
left=$("$M" "$TMP/spool" count | awk '$1 == "messages" {print $2}')
# Queue ids the sink received, from our Received: header.
grep -rhoE 'with ESMTP id [0-9A-Z]{12}' "$TMP/sink" | awk '{print $4}' | sort >"$TMP/delivered.all"
sort -u "$TMP/delivered.all" >"$TMP/delivered"
"$M" "$TMP/spool" list | awk '{print $1}' | sort >"$TMP/spooled"
sort -u "$TMP/acked" >"$TMP/acked.sorted"
total=$(wc -l <"$TMP/acked.sorted")
[ "$total" -gt 100 ] || fail "only $total messages acknowledged: the load did not run"
[ "$(($(wc -l <"$TMP/acked") - total))" = 0 ] || fail "a queue id was given twice"
# Acknowledged and neither delivered nor still queued: lost.
missing=$(comm -23 "$TMP/acked.sorted" "$TMP/delivered" | comm -23 - "$TMP/spooled" | wc -l)
undelivered=$(comm -23 "$TMP/acked.sorted" "$TMP/delivered" | wc -l)
dups=$(($(wc -l <"$TMP/delivered.all") - $(wc -l <"$TMP/delivered")))
echo "acknowledged $total; delivered $(wc -l <"$TMP/delivered") distinct, $dups duplicate deliveries;" \
	"still queued $left; acknowledged but undelivered $undelivered; lost $missing"
[ "$missing" = 0 ] || { comm -23 "$TMP/acked.sorted" "$TMP/delivered" | comm -23 - "$TMP/spooled" | head; fail "$missing acknowledged messages lost"; }
[ "$undelivered" = 0 ] || fail "$undelivered acknowledged messages not delivered (still queued: $left)"
