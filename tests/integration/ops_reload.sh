#!/usr/bin/env bash
# Reload under load (SIGHUP and mxctl reload), and the mxctl commands that
# reach the workers and the DNS cache.
#
# Clients hold sessions open and send mail over them the whole time (plain
# and STARTTLS, one relaying to an outside domain under the old policy);
# meanwhile the file changes three times:
#   1. SIGHUP: allow_networks shrinks (the host side, 10.77.60.1, may no
#      longer relay), a new users file (device2 appears), a new certificate,
#      a new DKIM selector and key.  New connections: 554 5.7.1 for an
#      outside recipient, AUTH device2 ok, openssl s_client sees the new
#      certificate's fingerprint, mail is signed s=s2 (s=s1 before).
#   2. mxctl reload: allow_networks back; relaying from 10.77.60.1 works again.
#   3. mxctl reload of a broken file: exit 1 with file:line, logged; the
#      running policy stays (relaying still works).  SIGHUP of it: the same.
#   4. a listener change: accepted, reported as "needs a restart".
#   5. max_connections_per_ip = 1 and max_message_size: a second connection
#      gets 421, EHLO advertises the new SIZE.
# At the end no client saw a failure or lost its session, and the counters
# say 3 reloads ok, 2 failed.  Then dns lookup / dns flush on the shared
# cache (unbound serves fleet.test), and queue / show / flush / suspend /
# resume answer clearly (an answer, or "not available yet").
. "$(dirname "$0")/common.bash"
. "$(dirname "$0")/peers.bash"
need_root_tap
command -v unbound >/dev/null || skip "unbound not installed"
command -v openssl >/dev/null || skip "openssl not installed"
# Two workers (two lcores share the second CPU) unless MX_LCORES says otherwise:
# every worker must switch, and the queue commands join their answers.
export MX_LCORES=${MX_LCORES:---lcores 0@0,1@1,2@1}
N=60 IF=mxt60 H=10.77.60.2 S=10.77.60.1
CTL=$BUILD/tools/mxctl/mxctl
SOCK=$TMP/control.sock

# conf ALLOW USERS CERTDIR: the relay's config file, rewritten in place;
# DKIM signs fleet.test with selector $DSEL.
conf() {
	write_relay_config "$TMP/r.conf" $IF $N "
[dns]
resolvers = $S
[queue]
retry = 1m
[dkim \"fleet.test\"]
selector = $DSEL
key = $TMP/$DSEL.pem
algorithm = ed25519-sha256"
	sed -i -e "s|^allow_networks = .*|allow_networks = $1|" -e "s|^users = .*|users = $2|" \
		-e "s|^cert = .*|cert = $3/relay.crt|" -e "s|^key = .*relay\.key$|key = $3/relay.key|" "$TMP/r.conf"
}
"$ROOT/lib/tls/gen-demo-cert.sh" "$TMP/tls2" >/dev/null 2>&1 || fail "second certificate"
for k in s1 s2; do
	"$BUILD/tools/mxdkim/mxdkim" genkey --algorithm ed25519-sha256 --out "$TMP/$k.pem" >/dev/null ||
		fail "DKIM key $k"
done
DSEL=s1
conf 10.77.$N.0/24 "$TMP/users" "$TMP/tls"
cp "$TMP/users" "$TMP/users2"
echo "second-pass" | "$BUILD/tools/mxpasswd/mxpasswd" "$TMP/users2" device2 || fail "mxpasswd"
"$BUILD/app/mxrelay/mxrelay" --check-config "$TMP/r.conf" >"$TMP/check.out" 2>&1 ||
	{ cat "$TMP/check.out"; fail "config rejected"; }

start_relay "$TMP/relay.log" "$TMP/r.conf"
start_unbound $S $N <<ZONE
	local-zone: "fleet.test." static
	local-data: "fleet.test. 300 IN MX 10 mx1.fleet.test."
	local-data: "mx1.fleet.test. 300 IN A $S"
	local-zone: "example.org." static
ZONE

# probe.py WHAT: one new connection.  relay: RCPT to an outside domain, prints the
# reply code; auth USER PASS: AUTH PLAIN over STARTTLS on 587, prints the code.
cat >"$TMP/probe.py" <<PYEOF
import smtplib, ssl, sys
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
if sys.argv[1] == "relay":
    c = smtplib.SMTP("$H", 25, timeout=20); c.ehlo("probe")
    c.mail("dev@fleet.test"); code, msg = c.rcpt("someone@example.org")
    print(code, msg.decode()); c.quit()
elif sys.argv[1] == "send":
    c = smtplib.SMTP("$H", 25, timeout=20); c.ehlo("probe"); c.mail("dev@fleet.test")
    c.rcpt("ops@fleet.test")
    code, msg = c.data(b"From: dev@fleet.test\r\nSubject: signed\r\n\r\nbody\r\n")
    print(msg.decode().split()[-1]); c.quit()
else:
    c = smtplib.SMTP("$H", 587, timeout=20); c.ehlo("probe"); c.starttls(context=ctx); c.ehlo("probe")
    try:
        code, msg = c.login(sys.argv[2], sys.argv[3])
    except smtplib.SMTPAuthenticationError as e:
        code, msg = e.smtp_code, e.smtp_error
    print(code, msg.decode()); c.quit()
PYEOF
probe() { timeout 30 $PY "$TMP/probe.py" "$@" 2>&1; }
# in_force GEN: every worker runs configuration generation GEN (bounded wait).
in_force() {
	for _ in $(seq 100); do
		[ "$("$CTL" -s "$SOCK" status | awk '$1 == "config_generation_workers" { print $2 }')" = "$1" ] && return 0
		sleep 0.1
	done
	"$CTL" -s "$SOCK" status
	tail -20 "$TMP/relay.log"
	fail "the workers did not switch to configuration generation $1"
}
fingerprint() {
	timeout 20 openssl s_client -connect $H:465 -servername relay.mxrelay.test </dev/null 2>/dev/null |
		openssl x509 -noout -fingerprint -sha256 2>/dev/null
}
fp_file() { openssl x509 -in "$1" -noout -fingerprint -sha256; }

r=$(probe relay); case "$r" in 250*) ;; *) fail "before reload: relay from $S: $r" ;; esac
r=$(probe auth device2 second-pass); case "$r" in 535*) ;; *) fail "before reload: device2: $r" ;; esac
[ "$(fingerprint)" = "$(fp_file "$TMP/tls/relay.crt")" ] || fail "before reload: not the first certificate"
id1=$(probe send) || fail "before reload: send: $id1"
echo "before reload: relaying allowed, device2 unknown, first certificate"

# Load: sessions held open across every reload, each sending mail in a loop.
cat >"$TMP/load.py" <<PYEOF
import smtplib, ssl, sys, threading, time, os, json
H, stop = "$H", "$TMP/stop"
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
res = {}
def run(name, tls, rcpt):
    ok = fail = 0; err = ""
    end = time.time() + 120
    try:
        c = smtplib.SMTP(H, 25, timeout=30); c.ehlo(name)
        if tls:
            c.starttls(context=ctx); c.ehlo(name)
        while not os.path.exists(stop) and time.time() < end:
            try:
                c.sendmail("dev@fleet.test", [rcpt],
                           ("From: dev@fleet.test\r\nSubject: %s %d\r\n\r\nbody\r\n" % (name, ok)).encode())
                ok += 1
            except smtplib.SMTPResponseException as e:
                fail += 1; err = "%d %s" % (e.smtp_code, e.smtp_error); c.rset()
            time.sleep(0.05)
        c.quit()
    except Exception as e:
        fail += 1; err = repr(e)
    res[name] = {"ok": ok, "fail": fail, "err": err}
ts = [threading.Thread(target=run, args=a) for a in
      (("plain1", False, "ops@fleet.test"), ("plain2", False, "ops@fleet.test"),
       ("tls1", True, "ops@fleet.test"), ("tls2", True, "ops@fleet.test"),
       ("relayer", False, "far@example.org"))]
for t in ts: t.start()
for t in ts: t.join()
print(json.dumps(res))
bad = [k for k, v in res.items() if v["fail"] or v["ok"] < 5]
sys.exit(1 if bad else 0)
PYEOF
start_bg "$TMP/load.log" $PY "$TMP/load.py"
L=$LAST_PID
sleep 2

# 1. SIGHUP: new policy, users, certificate.
DSEL=s2
conf 10.77.$N.128/25 "$TMP/users2" "$TMP/tls2"
kill -HUP $R
wait_log "configuration generation 2 in force" 10 || { tail -20 "$TMP/relay.log"; fail "SIGHUP: no reload"; }
in_force 2
r=$(probe relay); case "$r" in "554 5.7.1"*) ;; *) fail "after SIGHUP: relay from $S: $r, expected 554 5.7.1" ;; esac
r=$(probe auth device2 second-pass); case "$r" in 235*) ;; *) fail "after SIGHUP: device2: $r" ;; esac
r=$(probe auth device1 s3cret-pass); case "$r" in 235*) ;; *) fail "after SIGHUP: device1: $r" ;; esac
[ "$(fingerprint)" = "$(fp_file "$TMP/tls2/relay.crt")" ] || fail "after SIGHUP: not the new certificate"
id2=$(probe send) || fail "after SIGHUP: send: $id2"
echo "after SIGHUP: relaying refused (554 5.7.1), device2 authenticates, new certificate served"

# 2. mxctl reload: relaying allowed again.
conf 10.77.$N.0/24 "$TMP/users2" "$TMP/tls2"
t0=$(date +%s%N)
"$CTL" -s "$SOCK" reload >"$TMP/reload2" 2>&1 || { cat "$TMP/reload2"; fail "mxctl reload"; }
t1=$(date +%s%N)
grep -q "^reloaded: configuration generation 3" "$TMP/reload2" || { cat "$TMP/reload2"; fail "mxctl reload reply"; }
in_force 3
echo "mxctl reload: answered in $(((t1 - t0) / 1000000)) ms, every worker switched within $((($(date +%s%N) - t0) / 1000000)) ms (under load)"
r=$(probe relay); case "$r" in 250*) ;; *) fail "after mxctl reload: relay from $S: $r" ;; esac
echo "mxctl reload: relaying allowed again"

# 3. A broken file is refused with file:line; the old configuration stays.
cp "$TMP/r.conf" "$TMP/good.conf"
sed -i "s|^allow_networks = .*|allow_networks = 10.77.$N.300/24|" "$TMP/r.conf"
sed -i "s|^\[smtp\]$|[smtp]\nmax_connections = lots|" "$TMP/r.conf"
line=$(grep -n "^allow_networks" "$TMP/r.conf" | cut -d: -f1)
line2=$(grep -n "^max_connections = lots" "$TMP/r.conf" | cut -d: -f1)
rc=0
"$CTL" -s "$SOCK" reload >"$TMP/reload3" 2>&1 || rc=$?
cat "$TMP/reload3"
[ $rc = 1 ] || fail "broken file: mxctl exit $rc, expected 1"
grep -q "^error: reload refused: .*generation 3) stays in force" "$TMP/reload3" || fail "broken file: no refusal"
grep -q "r.conf:$line: " "$TMP/reload3" || fail "broken file: no r.conf:$line: error"
grep -q "r.conf:$line2: max_connections = lots" "$TMP/reload3" || fail "broken file: second error not reported"
grep -q "reload: .*r.conf:$line: " "$TMP/relay.log" || fail "broken file: error not logged"
kill -HUP $R
wait_log "reload \(SIGHUP\) refused" 10 || fail "broken file: SIGHUP not refused"
r=$(probe relay); case "$r" in 250*) ;; *) fail "after a refused reload: relay from $S: $r" ;; esac
echo "broken file: refused with r.conf:$line, generation 3 still in force"

# 4. Keys that need a restart are reported and ignored.
cp "$TMP/good.conf" "$TMP/r.conf"
sed -i "s|^listen = .*|listen = 25,465,587,2525|" "$TMP/r.conf"
"$CTL" -s "$SOCK" reload >"$TMP/reload4" 2>&1 || { cat "$TMP/reload4"; fail "reload with a listener change"; }
grep -q "r.conf:[0-9]*: \[smtp\] listen changed: needs a restart (ignored)" "$TMP/reload4" ||
	{ cat "$TMP/reload4"; fail "listen change not reported as needing a restart"; }
"$CTL" -s "$SOCK" status | grep -q "^listeners 25,465,587$" || fail "listeners changed at run time"

# The load clients never saw a failure, on sessions opened before any reload.
sleep 1
touch "$TMP/stop"
for _ in $(seq 150); do kill -0 $L 2>/dev/null || break; sleep 0.2; done
wait $L || { cat "$TMP/load.log"; fail "a client under load saw a failure or lost its session"; }
echo "load: $(cat "$TMP/load.log")"

# Every replaced configuration is freed once its sessions ended (epoch + references).
for _ in $(seq 50); do
	held=$("$CTL" -s "$SOCK" status | awk '$1 == "config_generations_held" { print $2 }')
	[ "$held" = 0 ] && break
	sleep 0.2
done
[ "$held" = 0 ] || fail "$held replaced configuration(s) still held after the sessions ended"
"$CTL" -s "$SOCK" stats >"$TMP/stats" || fail "mxctl stats"
st() { mxstat "$TMP/stats" "$1"; }
[ "$(st reloads_ok)" = 3 ] || fail "reloads_ok = $(st reloads_ok), expected 3"
[ "$(st reloads_failed)" = 2 ] || fail "reloads_failed = $(st reloads_failed), expected 2"
[ "$(st config_generation)" = 4 ] || fail "config_generation = $(st config_generation), expected 4"
echo "counters: reloads_ok 3, reloads_failed 2, generation 4"

# 5. Per-client and per-session limits: one connection per client, 1 MB messages.
cp "$TMP/good.conf" "$TMP/r.conf"
sed -i "s|^\[smtp\]$|[smtp]\nmax_connections_per_ip = 1\nmax_message_size = 1000000|" "$TMP/r.conf"
"$CTL" -s "$SOCK" reload >"$TMP/reload5" 2>&1 || { cat "$TMP/reload5"; fail "reload of limits"; }
in_force 5
# Each worker enforces its share of the per-client limit: with W workers,
# W + 1 connections from one client put two on one worker.
W=$("$CTL" -s "$SOCK" status | awk '$1 == "workers" { print $2 }')
timeout 30 $PY - <<PYEOF || fail "limits after reload"
import socket
conns = []
for i in range($W + 1):
    s = socket.create_connection(("$H", 25), timeout=10); f = s.makefile("rb")
    conns.append((s, f, f.readline()))
ok = [c for c in conns if c[2].startswith(b"220")]
busy = [c for c in conns if c[2].startswith(b"421")]
assert len(ok) >= 1 and len(busy) >= 1 and len(ok) + len(busy) == len(conns), [c[2] for c in conns]
g2 = busy[0][2]
a, fa = ok[0][0], ok[0][1]
a.sendall(b"EHLO probe\r\n")
ext = []
while True:
    l = fa.readline(); ext.append(l)
    if l[3:4] != b"-": break
assert any(l[4:].strip() == b"SIZE 1000000" for l in ext), ext
print("limits: second connection:", g2.decode().strip(), "| EHLO advertises SIZE 1000000")
PYEOF

# DNS cache: the relay looked up fleet.test (delivery of the load's mail).
for _ in $(seq 50); do
	"$CTL" -s "$SOCK" dns lookup fleet.test MX >"$TMP/dns1" 2>&1 && grep -q "records 1" "$TMP/dns1" && break
	sleep 0.2
done
cat "$TMP/dns1"
grep -q "^fleet.test MX ok ttl [0-9]* left [0-9]* s" "$TMP/dns1" || fail "dns lookup: no fresh MX entry"
grep -q "^  fleet.test MX 10 mx1.fleet.test$" "$TMP/dns1" || fail "dns lookup: MX record"
"$CTL" -s "$SOCK" dns lookup mx1.fleet.test A | grep -q "^  mx1.fleet.test A $S$" || fail "dns lookup A"
"$CTL" -s "$SOCK" dns lookup example.org | grep -q "^example.org MX nxdomain (negative)" ||
	fail "dns lookup: no negative entry for example.org"
"$CTL" -s "$SOCK" dns lookup nothing.invalid A >"$TMP/dns2" || fail "dns lookup of a miss: exit $?"
grep -q "^nothing.invalid A: not in the cache$" "$TMP/dns2" || fail "dns lookup miss: $(cat "$TMP/dns2")"
rc=0
"$CTL" -s "$SOCK" dns lookup fleet.test BOGUS >"$TMP/dns3" 2>&1 || rc=$?
[ $rc = 1 ] && grep -q "^error: dns lookup: unknown type 'BOGUS'" "$TMP/dns3" || fail "dns lookup bad type: $rc"
"$CTL" -s "$SOCK" dns flush fleet.test >"$TMP/dns4" || fail "dns flush NAME"
grep -q "^flushed 1 entry$" "$TMP/dns4" || fail "dns flush fleet.test: $(cat "$TMP/dns4")"
"$CTL" -s "$SOCK" dns lookup fleet.test MX | grep -q "not in the cache" || fail "flushed entry still there"
"$CTL" -s "$SOCK" dns flush | grep -q "^flushed [0-9]* entr" || fail "dns flush all"
"$CTL" -s "$SOCK" dns lookup mx1.fleet.test A | grep -q "not in the cache" || fail "dns flush all kept mx1"
echo "dns: lookup (hit, negative, miss, bad type) and flush (one name, all) answer"

# Queue commands reach the workers and answer clearly.
id=$(grep -o "[0-9A-Z]\{12\}: client=" "$TMP/relay.log" | head -1 | cut -c1-12)
[ -n "$id" ] || fail "no queue ID in the relay's log"
for cmd in "queue" "queue fleet.test" "show $id" "flush" "flush fleet.test" "suspend fleet.test" \
	"resume fleet.test"; do
	rc=0
	# shellcheck disable=SC2086
	"$CTL" -s "$SOCK" $cmd >"$TMP/q.out" 2>&1 || rc=$?
	case $rc in
	0) [ -s "$TMP/q.out" ] || fail "$cmd: empty answer" ;;
	1) grep -qE "^error: [a-z]+ is not available yet$|^error: [a-z]+: no (destination|message) " "$TMP/q.out" ||
		fail "$cmd: unclear error: $(cat "$TMP/q.out")" ;;
	*) fail "$cmd: exit $rc: $(cat "$TMP/q.out")" ;;
	esac
	echo "mxctl $cmd: exit $rc: $(head -1 "$TMP/q.out")"
done
rc=0
"$CTL" -s "$SOCK" show NOT-AN-ID >"$TMP/q.out" 2>&1 || rc=$?
[ $rc = 1 ] && grep -q "^error: show: 'NOT-AN-ID' is not a message ID" "$TMP/q.out" || fail "show of a bad ID: $rc"
rc=0
"$CTL" -s "$SOCK" suspend >"$TMP/q.out" 2>&1 || rc=$?
[ $rc = 1 ] && grep -q "^error: bad arguments to 'suspend'" "$TMP/q.out" || fail "suspend without DEST: $rc"

stop_pid $R || fail "relay exit status $?"
grep -q "all sessions finished" "$TMP/relay.log" || fail "no clean stop"
# The DKIM key of each message's time: s1 before the reload, s2 after.
# dkim_sel ID: the s= tag of the message's DKIM-Signature (unfolded).
dkim_sel() {
	"$BUILD/tools/mxspool/mxspool" "$TMP/spool" show "$1" |
		awk '/^DKIM-Signature:/ { d = 1; printf "%s", $0; next } d && /^[ \t]/ { printf "%s", $0; next } { d = 0 }' |
		tr -d ' \t\r' | grep -o ';s=[a-z0-9]*;' | head -1
}
[ "$(dkim_sel "$id1")" = ";s=s1;" ] || fail "message $id1 not signed s=s1: $(dkim_sel "$id1")"
[ "$(dkim_sel "$id2")" = ";s=s2;" ] || fail "message $id2 not signed s=s2: $(dkim_sel "$id2")"
echo "DKIM: $id1 signed s=s1 before the reload, $id2 s=s2 after"
! grep -E "AddressSanitizer|LeakSanitizer|runtime error:" "$TMP/relay.log" || fail "sanitizer report"
echo "ops_reload ok"
