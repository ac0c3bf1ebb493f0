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
need_root_tap
command -v smtp-sink >/dev/null || skip "smtp-sink (postfix) not installed"
command -v unbound >/dev/null || skip "unbound not installed"
N=52 IF=mxt52 H=10.77.52.2 S=10.77.52.1
M=$BUILD/tools/mxspool/mxspool
K=5

write_config "$TMP/r.conf" $IF $N "
[smtp]
hostname = relay.mxrelay.test
listen = 25
[relay]
allow_networks = 10.77.$N.0/24
[dns]
resolvers = $S
[spool]
dir = $TMP/spool
[queue]
retry = 2s
backoff_initial = 1s
backoff_max = 2s
[control]
socket =
http_listen ="
start_bg "$TMP/relay.log" "$BUILD/app/mxrelay/mxrelay" --config "$TMP/r.conf"
R=$LAST_PID
wait_iface $IF $S || { cat "$TMP/relay.log"; fail "TAP did not come up"; }
for _ in $(seq 50); do grep -q "mxrelay running" "$TMP/relay.log" && break; sleep 0.2; done

cat >"$TMP/unbound.conf" <<CONF
server:
	interface: $S
	port: 53
	access-control: 10.77.$N.0/24 allow
	do-daemonize: no
	username: ""
	chroot: ""
	directory: "$TMP"
	pidfile: ""
	use-syslog: no
	logfile: ""
	do-ip6: no
	local-zone: "fleet.test." static
	local-data: "fleet.test. 60 IN MX 10 mx1.fleet.test."
	local-data: "mx1.fleet.test. 60 IN A $S"
	local-data: "imp.fleet.test. 60 IN A $S"
remote-control:
	control-enable: no
CONF
start_bg "$TMP/unbound.log" unbound -c "$TMP/unbound.conf"
for _ in $(seq 50); do ss -lun | grep -q "$S:53 " && break; sleep 0.1; done
ss -lun | grep -q "$S:53 " || { cat "$TMP/unbound.log"; fail "unbound did not start"; }

chmod o+x "$TMP" # smtp-sink writes as nobody
mkdir -p "$TMP/d" && chmod 777 "$TMP/d"
start_bg "$TMP/sink.log" smtp-sink -u nobody -d "$TMP/d/%H%M%S." $S:25 100
for _ in $(seq 50); do ss -ltn | grep -q "$S:25 " && break; sleep 0.1; done

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

for _ in $(seq 200); do
	[ "$(find "$TMP/d" -type f | wc -l)" -ge $((3 * K)) ] && break
	sleep 0.1
done
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
stop_pid $R || fail "relay did not stop cleanly"
"$M" "$TMP/spool" count | tee "$TMP/count"
left=$(awk '$1 == "messages" {print $2}' "$TMP/count")
[ "$left" = 0 ] || fail "spool still holds $left message(s)"
echo "DNS delivery: ok"
