#!/usr/bin/env bash
# The relay accepts mail from real clients over net_tap: swaks (plain,
# STARTTLS, port 465, AUTH on 587, pipelining), Python smtplib and a
# scripted BDAT client, Postfix's smtp-source with 100 concurrent sessions;
# the safety cases (relay tricks, smuggling, STARTTLS injection) from the
# wire; and every message sent with a known body is in the spool byte-exact.
. "$(dirname "$0")/common.bash"
need_root_tap
command -v swaks >/dev/null || skip "swaks not installed"
command -v smtp-source >/dev/null || skip "smtp-source (postfix) not installed"
N=${MX_NET:-30} IF=mxt${MX_NET:-30} H=10.77.${MX_NET:-30}.2
write_relay_config "$TMP/r.conf" $IF $N
start_relay "$TMP/relay.log" "$TMP/r.conf"

sw() { swaks --server $H --from dev@fleet.test --h-Subject "swaks $1" --timeout 20 "${@:2}" >"$TMP/sw.log" 2>&1 ||
	{ cat "$TMP/sw.log"; fail "swaks $1"; }; grep -q "250 2.0.0 Ok: queued as" "$TMP/sw.log" || fail "swaks $1: no queue id"; }
sw plain --to ops@fleet.test
sw starttls --to ops@fleet.test --tls
sw 465 --to ops@fleet.test --port 465 --tlsc
sw pipelining --to ops@fleet.test --pipeline
sw auth-plain --to anyone@other.example --port 587 --tls --auth PLAIN --auth-user device1 --auth-password s3cret-pass
sw auth-login --to anyone@other.example --port 587 --tls --auth LOGIN --auth-user device1 --auth-password s3cret-pass
swaks --server $H --port 587 --from dev@fleet.test --to ops@fleet.test --timeout 20 >"$TMP/sw.log" 2>&1
grep -q "530 5.7.0" "$TMP/sw.log" || { cat "$TMP/sw.log"; fail "587 without AUTH was not refused with 530 5.7.0"; }
swaks --server $H --from dev@fleet.test --to ops@other.example --timeout 20 >"$TMP/sw.log" 2>&1
grep -q "554 5.7.1" "$TMP/sw.log" || { cat "$TMP/sw.log"; fail "open relay: outside domain accepted"; }
echo "swaks: ok"

for m in bdat smuggle starttls-inject relay; do
	timeout 60 $PY "$(dirname "$0")/smtp_probe.py" $H $m || fail "probe $m"
done
timeout 120 $PY "$(dirname "$0")/smtp_probe.py" $H exact 50 "$TMP/exact.txt" || fail "probe exact"

timeout 120 smtp-source -s 100 -m 2000 -l 1024 -f dev@fleet.test -t ops@fleet.test $H:25 ||
	fail "smtp-source"
echo "smtp-source: 2000 messages, 100 sessions: ok"

stop_relay
tail -5 "$TMP/relay.log"
M=$BUILD/tools/mxspool/mxspool
# 6 swaks + 2 BDAT + 1 AUTH'd smtplib + 50 exact + 2000 smtp-source
spool_expect "$TMP/spool" 2059
bad=0
while read -r id sum; do
	"$M" "$TMP/spool" show "$id" | grep -q "with ESMTP id $id" ||
		{ bad=$((bad + 1)); echo "message $id: Received: does not carry the queue id"; }
	# Body after the show header's blank line, minus our Received: header.
	"$M" "$TMP/spool" show "$id" | awk 'f; /^$/ && !f {f=1}' |
		awk 'BEGIN{skip=1} skip && /^(Received:|\t)/ {next} {skip=0; print}' ORS='\n' >"$TMP/body"
	got=$($PY -c "import hashlib,sys; d=open('$TMP/body','rb').read(); print(hashlib.sha256(d).hexdigest())")
	[ "$got" = "$sum" ] || { bad=$((bad + 1)); echo "message $id differs"; }
done <"$TMP/exact.txt"
[ $bad = 0 ] || fail "$bad messages not byte-exact in the spool"
echo "50 bodies byte-exact in the spool"
