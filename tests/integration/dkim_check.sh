#!/usr/bin/env bash
# dkim_check.sh - `mxdkim check` against real DNS: nsd serves test zones on a
# loopback address of this test (127.77.77.1, port 5377) and mxdkim asks it
# through lib/dns's codec.
#  - fleet.example: good DKIM (RSA and Ed25519, dual), SPF that authorises the
#    relay through mx + include: + a:, DMARC p=reject adkim=s: exit 0, OK lines.
#  - badkey.example: the published key is another key: FAIL dkim line whose
#    fix is the record of the configured key.
#  - nodmarc.example: no _dmarc record: FAIL dmarc line.
#  - nospf.example: SPF without the relay's address: FAIL spf line whose fix
#    adds ip4:RELAY to the record.
#  - unsigned.example: no key in the configuration: FAIL dkim.
#  - revoked.example (p= empty), loop.example (include: of itself: over the
#    10-lookup limit), two.example (two SPF records), redir.example (redirect=
#    to a record that authorises the relay), all.example (+all: WARN).
# Exit 0 pass, 77 skip, other fail.  Runs from the repo root; no network.
. "$(dirname "$0")/common.bash"
D=$BUILD/tools/mxdkim/mxdkim
[ -x "$D" ] || skip "$D not built"
command -v nsd >/dev/null || skip "nsd not installed"
[ "$(id -u)" = 0 ] || skip "needs root to run nsd"
NS=127.77.77.1 PORT=5377 RELAY=10.77.77.2

for k in fleet-rsa fleet-ed:ed25519-sha256 bad bad-published:rsa-sha256 nodmarc nospf; do
	name=${k%%:*} alg=${k#*:}
	[ "$alg" = "$k" ] && alg=rsa-sha256
	"$D" genkey --algorithm "$alg" --out "$TMP/$name.pem" >/dev/null || fail "genkey $name"
done
txt() { "$D" txt --key "$TMP/$1.pem" --selector "$2" --domain "$3" || fail "mxdkim txt $1"; }

cat >"$TMP/relay.conf" <<EOF
[port.0]
addr = $RELAY/24
[dkim "fleet.example"]
selector = s1
key = $TMP/fleet-rsa.pem
algorithm = rsa-sha256+ed25519-sha256
ed25519_selector = ed1
ed25519_key = $TMP/fleet-ed.pem
[dkim "badkey.example"]
selector = s1
key = $TMP/bad.pem
[dkim "nodmarc.example"]
selector = s1
key = $TMP/nodmarc.pem
[dkim "revoked.example"]
selector = s1
key = $TMP/nodmarc.pem
[dkim "nospf.example"]
selector = sel2
key = $TMP/nospf.pem
EOF

soa() { printf '$TTL 300\n@ IN SOA ns.%s. hostmaster.%s. 1 3600 600 86400 300\n@ IN NS ns.%s.\nns IN A %s\n' "$1" "$1" "$1" "$NS"; }
{
	soa fleet.example
	txt fleet-rsa s1 fleet.example
	txt fleet-ed ed1 fleet.example
	echo '@ IN MX 10 mx.fleet.example.'
	echo 'mx IN A 192.0.2.10'
	echo '@ IN TXT "v=spf1 mx include:_spf.fleet.example -all"'
	echo '@ IN TXT "a TXT record that is not SPF"'
	echo '_spf IN TXT "v=spf1 ip4:198.51.100.0/24 a:relay.fleet.example -all"'
	echo "relay IN A $RELAY"
	echo '_dmarc IN TXT "v=DMARC1; p=reject; adkim=s; aspf=r; rua=mailto:d@fleet.example"'
} >"$TMP/fleet.example.zone"
{
	soa badkey.example
	txt bad-published s1 badkey.example
	echo "@ IN TXT \"v=spf1 ip4:$RELAY -all\""
	echo '_dmarc IN TXT "v=DMARC1; p=quarantine"'
} >"$TMP/badkey.example.zone"
{
	soa nodmarc.example
	txt nodmarc s1 nodmarc.example
	echo '@ IN TXT "v=spf1 ip4:10.77.77.0/24 ~all"'
} >"$TMP/nodmarc.example.zone"
{
	soa nospf.example
	txt nospf sel2 nospf.example
	echo '@ IN TXT "v=spf1 ip4:192.0.2.0/24 -all"'
	echo '_dmarc IN TXT "v=DMARC1; p=reject"'
} >"$TMP/nospf.example.zone"
{
	soa unsigned.example
	echo "@ IN TXT \"v=spf1 ip4:$RELAY -all\""
	echo '_dmarc IN TXT "v=DMARC1; p=none"'
} >"$TMP/unsigned.example.zone"

{
	soa revoked.example
	echo 's1._domainkey IN TXT "v=DKIM1; k=rsa; p="'
	echo "@ IN TXT \"v=spf1 ip4:$RELAY -all\""
	echo '_dmarc IN TXT "v=DMARC1; p=reject"'
} >"$TMP/revoked.example.zone"
{ soa loop.example; echo '@ IN TXT "v=spf1 include:loop.example -all"'; } >"$TMP/loop.example.zone"
{ soa two.example; echo "@ IN TXT \"v=spf1 ip4:$RELAY -all\""; echo '@ IN TXT "v=spf1 -all"'; } >"$TMP/two.example.zone"
{ soa redir.example; echo '@ IN TXT "v=spf1 redirect=_spf.fleet.example"'; } >"$TMP/redir.example.zone"
{ soa all.example; echo '@ IN TXT "v=spf1 +all"'; } >"$TMP/all.example.zone"

cat >"$TMP/nsd.conf" <<EOF
server:
	ip-address: $NS@$PORT
	do-ip6: no
	username: ""
	chroot: ""
	zonesdir: "$TMP"
	pidfile: "$TMP/nsd.pid"
	xfrdfile: "$TMP/xfrd.state"
	zonelistfile: "$TMP/zone.list"
	xfrdir: "$TMP"
	database: ""
	server-count: 1
	verbosity: 1
	hide-version: yes
remote-control:
	control-enable: no
EOF
for z in fleet badkey nodmarc nospf unsigned revoked loop two redir all; do
	printf 'zone:\n\tname: %s.example\n\tzonefile: %s.example.zone\n' $z $z >>"$TMP/nsd.conf"
done
nsd-checkconf "$TMP/nsd.conf" || fail "nsd.conf"
start_bg "$TMP/nsd.log" nsd -d -c "$TMP/nsd.conf"
for _ in $(seq 50); do
	dig +short +time=1 +tries=1 -p $PORT @$NS fleet.example SOA 2>/dev/null | grep -q hostmaster && break
	sleep 0.2
done
dig +short -p $PORT @$NS s1._domainkey.fleet.example TXT | grep -q 'v=DKIM1' ||
	{ cat "$TMP/nsd.log"; fail "nsd does not serve the test zones"; }

pass=0
# check DOMAIN WANT_RC [extra args]: runs mxdkim check, output in $TMP/DOMAIN.out
check() {
	local dom=$1 want=$2 rc
	shift 2
	timeout 60 "$D" check --config "$TMP/relay.conf" --resolver $NS:$PORT "$@" "$dom" >"$TMP/$dom.out" 2>&1
	rc=$?
	echo "--- $dom (exit $rc)"; cat "$TMP/$dom.out"
	[ $rc = "$want" ] || fail "$dom: exit $rc, wanted $want"
	pass=$((pass + 1))
}
has() { # has DOMAIN LINE-PREFIX: a line starts with it
	grep -qF -- "$2" <(grep -F -- "$2" "$TMP/$1.out" | cut -c1-${#2}) || fail "$1: no line '$2'"
	pass=$((pass + 1))
}
hasnt() { ! grep -q "^$2" "$TMP/$1.out" || fail "$1: unexpected $2 line"; }

check fleet.example 0
has fleet.example "OK   dkim s1._domainkey.fleet.example: publishes the configured rsa-sha256 key (2048 bits)"
has fleet.example "OK   dkim ed1._domainkey.fleet.example: publishes the configured ed25519-sha256 key"
has fleet.example "OK   spf fleet.example: $RELAY is authorised (+include:_spf.fleet.example in fleet.example -> +a:relay.fleet.example in _spf.fleet.example)"
has fleet.example "OK   dmarc _dmarc.fleet.example: p=reject; passes by DKIM (d=fleet.example) and SPF"
hasnt fleet.example FAIL
hasnt fleet.example WARN

check badkey.example 1
has badkey.example "FAIL dkim s1._domainkey.badkey.example: p= is another rsa key than the configured one; fix: publish $(txt bad s1 badkey.example)"
has badkey.example "OK   spf badkey.example"
has badkey.example "OK   dmarc _dmarc.badkey.example: p=quarantine; passes by SPF"
[ "$(grep -c '^FAIL' "$TMP/badkey.example.out")" = 1 ] || fail "badkey: exactly one FAIL expected"

check nodmarc.example 1
has nodmarc.example "OK   dkim s1._domainkey.nodmarc.example"
has nodmarc.example "OK   spf nodmarc.example"
has nodmarc.example "FAIL dmarc _dmarc.nodmarc.example: no DMARC record; fix: publish _dmarc.nodmarc.example. IN TXT \"v=DMARC1; p=none;"

check nospf.example 1
has nospf.example "OK   dkim sel2._domainkey.nospf.example"
has nospf.example "FAIL spf nospf.example: $RELAY is not authorised (result fail by -all in nospf.example); fix: publish nospf.example. IN TXT \"v=spf1 ip4:$RELAY ip4:192.0.2.0/24 -all\""
has nospf.example "OK   dmarc _dmarc.nospf.example: p=reject; passes by DKIM (d=nospf.example)"
# --relay-ip overrides the configuration: an authorised address passes
check nospf.example 0 --relay-ip 192.0.2.77
has nospf.example "OK   spf nospf.example: 192.0.2.77 is authorised (+ip4:192.0.2.0/24 in nospf.example)"

check unsigned.example 1
has unsigned.example "FAIL dkim unsigned.example: the relay has no key for it"
has unsigned.example "WARN dmarc _dmarc.unsigned.example: p=none only monitors"

check revoked.example 1
has revoked.example "FAIL dkim s1._domainkey.revoked.example: p= is empty: the key is revoked; fix: publish s1._domainkey.revoked.example. IN TXT \"v=DKIM1; k=rsa; p="
has revoked.example "OK   dmarc _dmarc.revoked.example: p=reject; passes by SPF"
check loop.example 1
has loop.example "FAIL spf loop.example: permerror: more than 10 DNS-querying terms (RFC 7208 4.6.4)"
check two.example 1
has two.example "FAIL spf two.example: permerror: two.example has 2 SPF records (RFC 7208 3.2)"
check redir.example 1
has redir.example "OK   spf redir.example: $RELAY is authorised (+a:relay.fleet.example in _spf.fleet.example)"
check all.example 1
has all.example "OK   spf all.example: $RELAY is authorised (+all in all.example)"
has all.example "WARN spf all.example: +all authorises every host on the Internet; fix: replace it with ip4:$RELAY -all"

# usage and configuration errors exit 2
"$D" check --config "$TMP/relay.conf" >/dev/null 2>&1; [ $? = 2 ] || fail "no DOMAIN: exit 2 expected"
"$D" check --config /nonexistent.conf --resolver $NS:$PORT fleet.example >/dev/null 2>&1
[ $? = 2 ] || fail "missing config: exit 2 expected"
pass=$((pass + 2))
echo "dkim_check: $pass checks passed"
