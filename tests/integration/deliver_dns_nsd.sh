#!/usr/bin/env bash
# deliver_dns_nsd.sh - mail routing through the relay's own resolver (lib/dns
# over lib/net UDP and TCP) against a real authoritative server: nsd serves
# the zone nsd.test on the host side of the TAP, unbound recurses for the
# relay (relay -> unbound:53 -> nsd:5300), Postfix smtp-sinks on two host
# addresses take the mail.  Two workers by default (MX_LCORES), so replies
# to the resolvers' source ports must steer back to the worker that asked.
#   multi.nsd.test  MX 10 (down: nothing listens) / MX 20 sink B: B takes it
#   imp.nsd.test    no MX, A = sink C: implicit MX (RFC 5321 5.1)
#   null.nsd.test   MX 0 . (RFC 7505): bounced 5.1.10, DSN to the sender
#   nx.nsd.test     NXDOMAIN: bounced, DSN to the sender
#   cn.nsd.test     MX 10 alias.nsd.test, a CNAME to the real host (sink C)
#   cdom.nsd.test   CNAME multi.nsd.test: multi's MX list (sink B)
#   dead.nsd.test   delegated to a server that never answers: deferred
#   big.nsd.test    an MX answer over 1232 octets: truncated over UDP, the
#                   relay asks again over TCP (dns_tcp_queries) and delivers
#   dN.many.nsd.test  eight more implicit-MX destinations (a wildcard A)
#   ttl.nsd.test    MX TTL 4 s: a second message within the TTL makes no
#                   upstream query, a third after it exactly one
# Exit 0 pass, 77 skip.
. "$(dirname "$0")/common.bash"
. "$(dirname "$0")/peers.bash"
need_root_tap
command -v smtp-sink >/dev/null || skip "smtp-sink (postfix) not installed"
command -v unbound >/dev/null || skip "unbound not installed"
command -v nsd >/dev/null || skip "nsd not installed"
N=67 IF=mxt67 H=10.77.67.2 S=10.77.67.1
B=10.77.67.11 C=10.77.67.12 DOWN=10.77.67.10 BLACKHOLE=10.77.67.99
CTL=$BUILD/tools/mxctl/mxctl
SOCK=$TMP/control.sock
Z=nsd.test
export MX_LCORES=${MX_LCORES:---lcores=0@0,1@1,2@0}

write_config "$TMP/r.conf" $IF $N "
[smtp]
hostname = relay.mxrelay.test
listen = 25
[relay]
allow_networks = 10.77.$N.0/24
[dns]
resolvers = $S
timeout = 1s
attempts = 2
[spool]
dir = $TMP/spool
[queue]
retry = 1h
route_ttl = 1s
idle_timeout = 1s
[control]
socket = $SOCK
http_listen ="
start_relay "$TMP/relay.log" "$TMP/r.conf"
for a in $DOWN $B $C; do ip addr add $a/32 dev $IF || fail "cannot add $a to $IF"; done

# ---- the zone, served by nsd ------------------------------------------------
{
	cat <<ZONE
\$TTL 300
@	SOA ns.$Z. hostmaster.$Z. 1 3600 600 86400 60
@	NS ns.$Z.
ns	A $S
mxdown	A $DOWN
mxb	A $B
mxc	A $C
multi	MX 10 mxdown.$Z.
multi	MX 20 mxb.$Z.
imp	A $C
null	MX 0 .
cn	MX 10 alias.$Z.
alias	CNAME mxc.$Z.
cdom	CNAME multi.$Z.
dead	NS ns.dead.$Z.
ns.dead	A $BLACKHOLE
ttl	4 MX 10 mxc.$Z.
big	MX 5 mxc.$Z.
*.many	A $C
ZONE
	# 40 more MX records with long names: the answer outgrows 1232 octets.
	for i in $(seq -w 1 40); do
		echo "big	MX 50 a-rather-long-mail-exchanger-name-number-$i.$Z."
		echo "a-rather-long-mail-exchanger-name-number-$i	A $C"
	done
} >"$TMP/$Z.zone"
nsd-checkzone $Z "$TMP/$Z.zone" >"$TMP/checkzone.log" 2>&1 || { cat "$TMP/checkzone.log"; fail "zone"; }
cat >"$TMP/nsd.conf" <<CONF
server:
	ip-address: $S
	port: 5300
	do-ip6: no
	username: ""
	chroot: ""
	zonesdir: "$TMP"
	database: ""
	zonelistfile: "$TMP/zone.list"
	xfrdfile: "$TMP/xfrd.state"
	xfrdir: "$TMP"
	pidfile: "$TMP/nsd.pid"
	logfile: "$TMP/nsd.log"
	server-count: 1
	verbosity: 1
remote-control:
	control-enable: no
zone:
	name: "$Z"
	zonefile: "$Z.zone"
CONF
start_bg "$TMP/nsd.out" nsd -d -c "$TMP/nsd.conf"
wait_listen $S:5300 udp || { cat "$TMP/nsd.out" "$TMP/nsd.log" 2>/dev/null; fail "nsd did not start"; }

# ---- unbound recursing for the relay ------------------------------------------
start_unbound $S $N <<CONF
	local-zone: "test." nodefault
	domain-insecure: "$Z"
	minimal-responses: yes
	infra-host-ttl: 60
stub-zone:
	name: "$Z"
	stub-addr: $S@5300
CONF
start_smtp_sink $B:25 "$TMP/B"
start_smtp_sink $C:25 "$TMP/C"

# val NAME: a total from mxctl stats.
val() { "$CTL" -s "$SOCK" stats | awk -v k="$1" '$1 == k { print $2; exit }'; }
# send DOMAIN TAG: one message to u@DOMAIN from dev@imp.nsd.test (DSNs go to sink C).
send() {
	timeout 30 $PY - "$H" "$1" "$2" <<'PYEOF' || fail "sending to $1"
import smtplib, sys
host, dom, tag = sys.argv[1:4]
c = smtplib.SMTP(host, 25, timeout=20)
c.sendmail("dev@imp.nsd.test", [f"u@{dom}"],
           f"From: dev@imp.nsd.test\r\nSubject: {tag}\r\nX-Probe: {tag}\r\n\r\nbody\r\n".encode())
c.quit()
PYEOF
}
# probe DIR TAG: does the sink in DIR hold the message tagged TAG?
probe() { grep -lq "^X-Probe: $2\$" "$TMP/$1"/* 2>/dev/null; }

# ---- the routing cases ----------------------------------------------------
for d in multi imp null nx cn cdom dead big; do send $d.$Z "$d"; done
# Eight more destinations (implicit MX by a wildcard), spread over the workers.
for i in 1 2 3 4 5 6 7 8; do send d$i.many.$Z "many$i"; done

wait_log "to=<u@multi\.$Z>.*status=sent" 15 || { grep -E "multi|u@|warn|err" "$TMP/relay.log"; fail "multi: not sent"; }
grep -E "to=<u@multi\.$Z>.*relay=mxb\.$Z\[$B\]:25.*status=sent" "$TMP/relay.log" >/dev/null ||
	fail "multi: not delivered by the MX 20 host after MX 10 was down"
echo "MX preferences: MX 10 down, MX 20 took it"
wait_log "to=<u@imp\.$Z>.*relay=imp\.$Z\[$C\]:25.*status=sent" 15 || fail "implicit MX: not sent to $C"
echo "implicit MX: delivered"
wait_log "to=<u@null\.$Z>.*dsn=5\.1\.10, status=bounced" 15 ||
	{ grep "null" "$TMP/relay.log"; fail "Null MX: no 5.1.10 bounce"; }
echo "Null MX: bounced 5.1.10"
wait_log "to=<u@nx\.$Z>.*status=bounced" 15 || fail "NXDOMAIN: not bounced"
echo "NXDOMAIN: bounced"
wait_log "to=<u@cn\.$Z>.*relay=[^ ]*\[$C\]:25.*status=sent" 15 || fail "CNAME'd MX target: not sent"
echo "MX target behind a CNAME: delivered"
wait_log "to=<u@cdom\.$Z>.*relay=mxb\.$Z\[$B\]:25.*status=sent" 15 ||
	fail "domain CNAME to multi: not delivered by multi's MX 20"
echo "domain CNAME: delivered through the target's MX"
wait_log "to=<u@big\.$Z>.*relay=[^ ]*\[$C\]:25.*status=sent" 15 || fail "big MX answer: not sent"
tcpq=$(val dns_tcp_queries)
tcpa=$(val dns_tcp_answers)
tr=$(val dns_truncated_retries)
[ "${tcpq:-0}" -ge 1 ] && [ "${tcpa:-0}" -ge 1 ] && [ "${tr:-0}" -ge 1 ] ||
	fail "big MX: dns_tcp_queries=$tcpq dns_tcp_answers=$tcpa dns_truncated_retries=$tr"
echo "truncated answer: asked again over TCP ($tcpq TCP queries), delivered"
wait_log "to=<u@dead\.$Z>.*status=deferred" 20 || { grep dead "$TMP/relay.log"; fail "dead: not deferred"; }
grep -E "to=<u@dead\.$Z>.*status=bounced" "$TMP/relay.log" && fail "dead: bounced, not deferred"
t=$(val dns_timeouts)
sf=$(val dns_servfail)
[ $((${t:-0} + ${sf:-0})) -ge 1 ] || fail "dead: no DNS timeout or SERVFAIL counted"
echo "silent authoritative server: deferred (dns_timeouts $t, dns_servfail $sf)"

for i in 1 2 3 4 5 6 7 8; do
	wait_log "to=<u@d$i\.many\.$Z>.*relay=[^ ]*\[$C\]:25.*status=sent" 15 || fail "d$i.many: not sent"
done
echo "eight more implicit-MX destinations: delivered"
# Both DSNs (Null MX, NXDOMAIN) reach the sender's domain (sink C), the
# deliveries their sinks, each once.
for _ in $(seq 100); do
	[ "$(grep -l "X-Mail-Args: <>" "$TMP/C"/* 2>/dev/null | wc -l)" -ge 2 ] && break
	sleep 0.1
done
timeout 30 $PY - "$TMP" <<'PYEOF' || fail "delivered messages"
import os, re, sys
t = sys.argv[1]
def msgs(d):
    out = []
    for f in os.listdir(os.path.join(t, d)):
        out.append(open(os.path.join(t, d, f), "rb").read())
    return out
def probes(d):
    return sorted(m.group(1).decode() for raw in msgs(d)
                  for m in [re.search(rb"^X-Probe: (\S+)", raw, re.M)] if m and b"X-Mail-Args: <>" not in raw)
assert probes("B") == ["cdom", "multi"], probes("B")
assert probes("C") == sorted(["big", "cn", "imp"] + [f"many{i}" for i in range(1, 9)]), probes("C")
dsns = [raw for raw in msgs("C") if b"X-Mail-Args: <>" in raw]
assert len(dsns) == 2, f"{len(dsns)} DSNs"
text = b"\n".join(dsns)
assert re.search(rb"Final-Recipient: rfc822; *u@null\.nsd\.test", text, re.I), "no DSN for null"
assert re.search(rb"Status: 5\.1\.10", text), "no 5.1.10 in the DSN"
assert re.search(rb"Final-Recipient: rfc822; *u@nx\.nsd\.test", text, re.I), "no DSN for nx"
print("sinks: B got multi, cdom; C got imp, cn, big, many1-8 and 2 DSNs (one with 5.1.10)")
PYEOF

# ---- TTL expiry seen as a new upstream query ----------------------------------
# route_ttl = 1s and idle_timeout = 1s above, messages 1.6 s apart:
# lib/queue's own route cache has expired and no idle session is reused, so
# the resolver is asked for every message and what is measured is its cache.
send ttl.$Z ttl1
wait_log "to=<u@ttl\.$Z>.*status=sent" 15 || fail "ttl: first message not sent"
q1=$(val dns_upstream_queries)
h1=$(val dns_hits)
sleep 1.6
send ttl.$Z ttl2
wait_log "to=<u@ttl\.$Z>.*status=sent" 10 2
q2=$(val dns_upstream_queries)
h2=$(val dns_hits)
[ "$q2" = "$q1" ] || fail "ttl: a message within the TTL made $((q2 - q1)) upstream queries"
[ "$h2" -gt "$h1" ] || fail "ttl: the second message was not answered from the DNS cache"
sleep 4.2 # the MX (TTL 4) expires; mxc's A (TTL 300) does not
send ttl.$Z ttl3
wait_log "to=<u@ttl\.$Z>.*status=sent" 10 3
[ "$(grep -cE "to=<u@ttl\.$Z>.*status=sent" "$TMP/relay.log")" = 3 ] || fail "ttl: not 3 sent"
q3=$(val dns_upstream_queries)
[ $((q3 - q2)) = 1 ] || fail "ttl: $((q3 - q2)) upstream queries after expiry, expected 1"
echo "TTL: a cache hit within the TTL, one upstream query after it (upstream $q1 -> $q2 -> $q3, hits $h1 -> $h2)"

"$CTL" -s "$SOCK" stats | grep -E "^dns_" >"$TMP/dns.stats"
for k in dns_hits dns_misses dns_upstream_queries dns_cache_entries; do
	v=$(mxstat "$TMP/dns.stats" $k)
	[ -n "$v" ] && [ "$v" -gt 0 ] || fail "stats: $k = '$v'"
done
for k in dns_coalesced dns_stale_served dns_evictions dns_tcp_timeouts dns_malformed; do
	grep -q "^$k " "$TMP/dns.stats" || fail "stats: no $k"
done
[ "$(mxstat "$TMP/dns.stats" dns_mismatched)" = 0 ] ||
	fail "replies dropped by RFC 5452 matching: a reply reached the wrong worker?"
tr '\n' ' ' <"$TMP/dns.stats" | fold -w 160
echo
# With two workers both resolved (destinations are spread over them), and
# no reply went astray (dns_mismatched 0 above): steering held on both.
workers=$("$CTL" -s "$SOCK" status | awk '$1 == "workers" {print $2}')
if [ "${workers:-1}" -ge 2 ]; then
	"$CTL" -s "$SOCK" stats >"$TMP/all.stats"
	for w in 0 1; do
		v=$(mxstat "$TMP/all.stats" worker.$w.dns_upstream_queries)
		t=$(mxstat "$TMP/all.stats" worker.$w.dns_timeouts)
		[ -n "$v" ] && [ "$v" -gt "${t:-0}" ] ||
			fail "worker $w: no upstream DNS query answered ($v queries, $t timeouts)"
		echo "worker $w: $v upstream queries, $t timeouts"
	done
fi

stop_relay
spool_expect "$TMP/spool" 1 # the deferred one only
grep -E "runtime error|Sanitizer" "$TMP/relay.log" && fail "sanitizer report in the relay's log"
echo "DNS with nsd: ok"
