#!/usr/bin/env bash
# deliver_dns.sh - MX delivery through the relay's own resolver (lib/dns over
# lib/net UDP) to an unbound on the host side of the TAP serving fleet.test:
#   user@fleet.test      MX 10 mx1.fleet.test -> A 10.77.52.1: delivered
#   user@imp.fleet.test  no MX, A 10.77.52.1 (implicit MX, RFC 5321 5.1): delivered
#   user@nx.fleet.test   NXDOMAIN: bounced at once, and the DSN to the sender
#                        (dev@fleet.test, through the MX) is delivered too.
# smtp-sink on 10.77.52.1:25 takes the mail; every message arrives exactly
# once and the spool ends empty.  Exit 0 pass, 77 skip.
. "$(dirname "$0")/common.bash"
. "$(dirname "$0")/peers.bash"
need_root_tap
command -v smtp-sink >/dev/null || skip "smtp-sink (postfix) not installed"
command -v unbound >/dev/null || skip "unbound not installed"
N=52 IF=mxt52 H=10.77.52.2 S=10.77.52.1
K=5

write_delivery_config "$TMP/r.conf" $IF $N "
[dns]
resolvers = $S"
start_relay "$TMP/relay.log" "$TMP/r.conf"
start_unbound $S $N <<ZONE
	local-zone: "fleet.test." static
	local-data: "fleet.test. 60 IN MX 10 mx1.fleet.test."
	local-data: "mx1.fleet.test. 60 IN A $S"
	local-data: "imp.fleet.test. 60 IN A $S"
ZONE
start_smtp_sink $S:25 "$TMP/d"

timeout 30 $PY - "$H" "$K" <<'PYEOF' || fail "sending"
import smtplib, sys
host, k = sys.argv[1], int(sys.argv[2])
c = smtplib.SMTP(host, 25, timeout=20)
for dom in ("fleet.test", "imp.fleet.test", "nx.fleet.test"):
    for i in range(k):
        c.sendmail("dev@fleet.test", [f"u{i}@{dom}"],
                   f"From: dev@fleet.test\r\nSubject: {dom} {i}\r\nX-Probe: {dom}-{i}\r\n\r\nbody\r\n".encode())
c.quit()
PYEOF

wait_files "$TMP/d" $((3 * K)) 20
sleep 0.5
grep -m1 "u0@fleet.test.*status=sent" "$TMP/relay.log" || { tail -20 "$TMP/relay.log"; fail "no MX delivery"; }
grep -m1 "u0@imp.fleet.test.*status=sent" "$TMP/relay.log" || fail "no implicit-MX delivery"
grep -m1 "u0@nx.fleet.test.*status=bounced" "$TMP/relay.log" || fail "no NXDOMAIN bounce"
timeout 30 $PY - "$TMP/d" "$K" <<'PYEOF' || fail "delivered messages"
import os, re, sys
d, k = sys.argv[1], int(sys.argv[2])
probes, dsns = [], 0
for f in os.listdir(d):
    raw = open(os.path.join(d, f), "rb").read()
    m = re.search(rb"^X-Probe: (\S+)", raw, re.M)
    if b"X-Mail-Args: <>" in raw:
        dsns += 1
        assert b"Action: failed" in raw and re.search(rb"u\d@nx\.fleet\.test", raw), f
    elif m:
        probes.append(m.group(1).decode())
want = sorted(f"{dom}-{i}" for dom in ("fleet.test", "imp.fleet.test") for i in range(k))
assert sorted(probes) == want, f"probes {sorted(probes)}"
assert dsns == k, f"{dsns} DSNs, expected {k}"
print(f"{len(probes)} messages delivered once each through MX and implicit MX, {dsns} DSNs")
PYEOF
stop_relay
spool_expect "$TMP/spool" 0
echo "DNS delivery: ok"
