#!/usr/bin/env bash
# deliver_dns_burst.sh - many destinations resolved at once over a cold path.
# The relay's resolver is an unbound on 10.77.89.3, an address the relay has
# never talked to (no ARP entry; the mail comes from 10.77.89.1).  The queue
# is held (mxctl suspend '*') while 40 messages to 40 domains arrive, then
# released: 40 MX lookups leave in one turn.  lib/net's ARP queue held only 16
# packets per unresolved address (128 since session 6), so without
# app/mxrelay/resolve.c's cold-path pacing most of those queries were dropped
# and each cost the resolver's 1 s timeout (dns_timeouts).  Here: every message delivered once,
# dns_timeouts = 0, arp_pending_drops = 0, and some queries were held back
# (dns_cold_held > 0) until the server's first answer.  Exit 0 pass, 77 skip.
. "$(dirname "$0")/common.bash"
. "$(dirname "$0")/peers.bash"
need_root_tap
command -v smtp-sink >/dev/null || skip "smtp-sink (postfix) not installed"
command -v unbound >/dev/null || skip "unbound not installed"
N=89 IF=mxt89 H=10.77.89.2 S=10.77.89.1 DNS=10.77.89.3
K=40
CTL=$BUILD/tools/mxctl/mxctl

write_delivery_config "$TMP/r.conf" $IF $N "
[dns]
resolvers = $DNS"
start_relay "$TMP/relay.log" "$TMP/r.conf"
ip addr add $DNS/24 dev $IF || fail "cannot add $DNS to $IF"
# The zone goes through a file: start_unbound on the right of a pipe would run in a
# subshell, and the cleanup trap would not know unbound's PID (it was left running).
{
	echo '	local-zone: "fleet.test." static'
	echo "	local-data: \"mx.fleet.test. 60 IN A $S\""
	for i in $(seq 0 $((K - 1))); do
		echo "	local-data: \"d$i.fleet.test. 60 IN MX 10 mx.fleet.test.\""
	done
} >"$TMP/zone"
start_unbound $DNS $N <"$TMP/zone"
start_smtp_sink $S:25 "$TMP/d"

"$CTL" -s "$TMP/control.sock" suspend '*' | grep -q "suspended" || fail "suspend '*'"
timeout 30 $PY - "$H" "$K" <<'PYEOF' || fail "sending"
import smtplib, sys
host, k = sys.argv[1], int(sys.argv[2])
c = smtplib.SMTP(host, 25, timeout=20)
for i in range(k):
    c.sendmail("dev@fleet.test", [f"u{i}@d{i}.fleet.test"],
               f"From: dev@fleet.test\r\nSubject: burst {i}\r\nX-Probe: d{i}\r\n\r\nbody\r\n".encode())
c.quit()
PYEOF
sleep 0.3
[ "$(find "$TMP/d" -type f | wc -l)" = 0 ] || fail "delivered while held"
t0=$(date +%s%N)
"$CTL" -s "$TMP/control.sock" resume '*' | grep -q "resumed" || fail "resume '*'"
wait_files "$TMP/d" $K 20 || { tail -20 "$TMP/relay.log"; fail "$(find "$TMP/d" -type f | wc -l) of $K delivered"; }
ms=$((($(date +%s%N) - t0) / 1000000))
"$CTL" -s "$TMP/control.sock" stats >"$TMP/stats" || fail "mxctl stats"
timeouts=$(mxstat "$TMP/stats" dns_timeouts)
drops=$(mxstat "$TMP/stats" arp_pending_drops)
held=$(mxstat "$TMP/stats" dns_cold_held)
echo "released: $K delivered in $ms ms; dns_timeouts=$timeouts arp_pending_drops=$drops dns_cold_held=$held"
[ "$timeouts" = 0 ] || fail "DNS queries timed out ($timeouts): the cold path lost them"
[ "$drops" = 0 ] || fail "ARP queue dropped $drops packets"
[ -n "$held" ] && [ "$held" -gt 0 ] || fail "no query was held back for the cold path"
timeout 30 $PY - "$TMP/d" "$K" <<'PYEOF' || fail "delivered messages"
import os, re, sys
d, k = sys.argv[1], int(sys.argv[2])
probes = []
for f in os.listdir(d):
    m = re.search(rb"^X-Probe: (\S+)", open(os.path.join(d, f), "rb").read(), re.M)
    assert m, f
    probes.append(m.group(1).decode())
assert sorted(probes) == sorted(f"d{i}" for i in range(k)), sorted(probes)
print(f"{len(probes)} messages to {k} domains delivered once each")
PYEOF
stop_relay
spool_expect "$TMP/spool" 0
echo "DNS burst over a cold path: ok"
