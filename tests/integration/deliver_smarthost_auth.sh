#!/usr/bin/env bash
# deliver_smarthost_auth.sh - the relay delivering through a smarthost that
# wants AUTH (issue 6: "on 587 with STARTTLS and AUTH, or 465"): a private
# Postfix 3.7 on the host side of the TAP with Cyrus SASL (sasldb) offers
# submission on 10.77.82.1:587 (STARTTLS required, AUTH only after it) and
# smtps on :465 (implicit TLS); both take mail only from authenticated
# clients and deliver sh.test into a maildir.
#   1. smarthost [10.77.82.1]:587 + smarthost_user/password_file: K messages
#      delivered, Postfix logs TLS and sasl_username for every session;
#   2. smarthost [10.77.82.1]:465: delivered over implicit TLS, with AUTH;
#   3. a wrong password: Postfix answers 535, the relay defers (never
#      bounces) and nothing is delivered.
# Exit 0 pass, 77 skip.
. "$(dirname "$0")/common.bash"
need_root_tap
command -v postfix >/dev/null || skip "postfix not installed"
command -v saslpasswd2 >/dev/null || skip "saslpasswd2 (sasl2-bin) not installed"
N=82 IF=mxt82 H=10.77.82.2 S=10.77.82.1
K=5
PF_DOMAINS=sh.test
. "$ROOT/tests/integration/postfix.bash"
trap 'pf_stop; cleanup' EXIT

"$ROOT/lib/tls/gen-demo-cert.sh" "$TMP/tls" mx.sh.test >/dev/null 2>&1 ||
	fail "cannot make a demo certificate"
mkdir -p "$TMP/sasl"
cat >"$TMP/sasl/smtpd.conf" <<CONF
pwcheck_method: auxprop
auxprop_plugin: sasldb
mech_list: PLAIN LOGIN
sasldb_path: $TMP/sasl/sasldb2
CONF
echo "fleet-s3cret" | saslpasswd2 -p -c -f "$TMP/sasl/sasldb2" -u sh.test fleet ||
	fail "saslpasswd2"
chown -R postfix "$TMP/sasl"
echo "fleet-s3cret" >"$TMP/pass.good"
echo "not-the-password" >"$TMP/pass.bad"

pf_setup "$S:587 inet n - n - 20 smtpd -o smtpd_tls_security_level=encrypt -o smtpd_sasl_auth_enable=yes
$S:465 inet n - n - 20 smtpd -o smtpd_tls_wrappermode=yes -o smtpd_sasl_auth_enable=yes" "
smtpd_sasl_type = cyrus
cyrus_sasl_config_path = $TMP/sasl
smtpd_sasl_path = smtpd
smtpd_sasl_local_domain = sh.test
smtpd_tls_auth_only = yes
smtpd_tls_cert_file = $TMP/tls/relay.crt
smtpd_tls_key_file = $TMP/tls/relay.key
smtpd_tls_loglevel = 1
smtpd_relay_restrictions = permit_sasl_authenticated, reject
smtpd_recipient_restrictions = permit_sasl_authenticated, reject"
# Debian's Postfix reads $config_directory/sasl/smtpd.conf (cyrus_sasl_config_path is
# not consulted there): put a copy where it looks.
mkdir -p "$PF/etc/sasl" && cp "$TMP/sasl/smtpd.conf" "$PF/etc/sasl/"

# run NAME SMARTHOST PASSFILE: a relay on the TAP sending K messages through it.
run() {
	local name=$1 smart=$2 pass=$3
	write_config "$TMP/$name.conf" $IF $N "
[smtp]
hostname = relay.mxrelay.test
listen = 25
[relay]
allow_networks = 10.77.$N.0/24
smarthost = $smart
smarthost_user = fleet
smarthost_password_file = $pass
[spool]
dir = $TMP/spool-$name
[queue]
retry = 1m
[control]
socket =
http_listen ="
	start_relay "$TMP/$name.log" "$TMP/$name.conf"
	# Postfix binds the TAP's host address: it starts once the first relay made it.  The
	# listeners outlive the TAP between runs and serve again when it comes back.
	[ "$PF_UP" = 1 ] || pf_start "$S:587" "$S:465"
	timeout 30 $PY - "$H" "$K" "$name" <<'PYEOF' || fail "$name: sending"
import smtplib, sys
host, k, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
c = smtplib.SMTP(host, 25, timeout=20)
for i in range(k):
    c.sendmail("dev@fleet.test", [f"u{i}@sh.test"],
               f"From: dev@fleet.test\r\nSubject: {name} {i}\r\nX-Probe: {name}-{i}\r\n\r\nbody {i}\r\n".encode())
c.quit()
PYEOF
}

delivered() { grep -l "^X-Probe: $1-" "$PF"/mail/box/new/* 2>/dev/null | wc -l; }

for case in 587 465; do
	run "s$case" "[$S]:$case" "$TMP/pass.good"
	for _ in $(seq 100); do [ "$(delivered s$case)" -ge $K ] && break; sleep 0.1; done
	n=$(delivered s$case)
	[ "$n" = $K ] || { tail -5 "$TMP/s$case.log"; tail -20 "$PF/maillog"; fail "$case: $n of $K delivered"; }
	sent=$(grep -c "relay=$S\[$S\]:$case, .*status=sent" "$TMP/s$case.log")
	[ "$sent" = $K ] || fail "$case: $sent status=sent lines"
	stop_relay
	echo "port $case: $K messages delivered through the smarthost"
done
auth=$(grep -c "sasl_method=PLAIN, sasl_username=fleet" "$PF/maillog")
tls587=$(grep -c "postfix/smtpd.*TLS connection established from .*\[$H\]" "$PF/maillog")
grep -m1 "sasl_username=fleet" "$PF/maillog"
[ "$auth" -ge 2 ] || fail "postfix logged $auth authenticated sessions"
[ "$tls587" -ge 2 ] || fail "postfix logged $tls587 TLS sessions"
grep -q "relay=$S\[$S\]:465" "$TMP/s465.log" || fail "no delivery over 465"

run bad "[$S]:587" "$TMP/pass.bad"
wait_log "status=deferred" 10
grep -m1 "status=deferred" "$TMP/bad.log" || { tail -10 "$TMP/bad.log"; fail "wrong password: not deferred"; }
grep -q "status=deferred.*535" "$TMP/bad.log" || fail "wrong password: no 535 in the deferral"
grep -q "status=bounced" "$TMP/bad.log" && fail "wrong password bounced mail"
[ "$(delivered bad)" = 0 ] || fail "delivered with a wrong password"
stop_relay
echo "smarthost with AUTH (587 STARTTLS, 465 implicit TLS, wrong password deferred): ok"
