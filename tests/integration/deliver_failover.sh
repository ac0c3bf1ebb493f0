#!/usr/bin/env bash
# deliver_failover.sh - MX preference failover and 4xx retry (issue 6, "Tests"),
# with DNS from an unbound test zone on the host side of the TAP:
#   fo.test  MX 10 mx1.fo.test (10.77.74.3: a host address where nothing
#                               listens, so the kernel answers RST)
#            MX 20 mx2.fo.test (10.77.74.1: smtp-sink)
#     -> every message is delivered through mx2, after a refused connection
#        to mx1 (counted in deliver_tcp_refused);
#   fo2.test MX 10 10.77.74.5 (smtp-sink -Q CONNECT: 421 greeting), MX 20 mx2
#     -> delivered through mx2 (RFC 5321 3.8: 421 at the greeting, next MX);
#   fo3.test MX 10 10.77.74.9 (no such host: the SYN goes unanswered), MX 20 mx2
#     -> delivered through mx2 after the connect timeout;
#   tf.test  MX 10 mx.tf.test  (10.77.74.4: smtp-sink -r RCPT, a 4xx to RCPT)
#     -> status=deferred with the sink's 4xx reply, nothing delivered; the
#        sink is restarted answering normally, and the retry ([queue] retry =
#        2s) delivers each message once, byte-exact.
# The spool ends empty.  Exit 0 pass, 77 skip.
. "$(dirname "$0")/common.bash"
. "$(dirname "$0")/peers.bash"
need_root_tap
[ -x "$PY" ] || skip "no $PY"
command -v smtp-sink >/dev/null || skip "smtp-sink (postfix) not installed"
command -v unbound >/dev/null || skip "unbound not installed"
N=74 IF=mxt74 H=10.77.74.2 S=10.77.74.1 DOWN=10.77.74.3 T=10.77.74.4 G421=10.77.74.5
GONE=10.77.74.9 # no host: nothing answers ARP
K=5
T0=$(date +%s)

write_delivery_config "$TMP/r.conf" $IF $N "
[tls]
outbound = opportunistic
[dns]
resolvers = $S
[queue]
idle_timeout = 1s"
start_relay "$TMP/relay.log" "$TMP/r.conf"
ip addr add $DOWN/24 dev $IF || fail "cannot add $DOWN"
ip addr add $T/24 dev $IF || fail "cannot add $T"
ip addr add $G421/24 dev $IF || fail "cannot add $G421"

start_unbound $S $N <<ZONE
	local-zone: "fo.test." static
	local-data: "fo.test. 60 IN MX 10 mx1.fo.test."
	local-data: "fo.test. 60 IN MX 20 mx2.fo.test."
	local-data: "mx1.fo.test. 60 IN A $DOWN"
	local-data: "mx2.fo.test. 60 IN A $S"
	local-zone: "fo2.test." static
	local-data: "fo2.test. 60 IN MX 10 mx1.fo2.test."
	local-data: "fo2.test. 60 IN MX 20 mx2.fo.test."
	local-data: "mx1.fo2.test. 60 IN A $G421"
	local-zone: "fo3.test." static
	local-data: "fo3.test. 60 IN MX 10 mx1.fo3.test."
	local-data: "fo3.test. 60 IN MX 20 mx2.fo.test."
	local-data: "mx1.fo3.test. 60 IN A $GONE"
	local-zone: "tf.test." static
	local-data: "tf.test. 60 IN MX 10 mx.tf.test."
	local-data: "mx.tf.test. 60 IN A $T"
ZONE

start_smtp_sink $S:25 "$TMP/mx2"
ss -ltn | grep -q "$DOWN:25 " && fail "something listens on $DOWN:25"

# send DOMAIN FIRST COUNT: "probe sha256" lines to $TMP/sent-DOMAIN
send() {
	timeout 30 $PY - "$H" "$@" >>"$TMP/sent-$1" <<'PYEOF' || { tail -20 "$TMP/relay.log"; fail "sending to $1"; }
import hashlib, smtplib, sys
host, dom, first, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
c = smtplib.SMTP(host, 25, timeout=20)
for i in range(first, first + count):
    body = f"failover test {dom} {i}\r\n" + "0123456789" * (i * 13 % 97) + "\r\n"
    c.sendmail("dev@fleet.test", [f"u{i}@{dom}"],
               (f"From: dev@fleet.test\r\nTo: u{i}@{dom}\r\nX-Probe: {dom}-{i}\r\n\r\n"
                + body).encode())
    print(f"{dom}-{i}", hashlib.sha256(body.replace("\r\n", "\n").encode()).hexdigest())
c.quit()
PYEOF
}

# ---- 1. the preferred MX is down: delivered through the second ------------------------
send fo.test 0 $K
wait_files "$TMP/mx2" $K 30 || { tail -20 "$TMP/relay.log"; fail "fo.test mail not delivered"; }
sleep 0.5
check_dumps "$TMP/sent-fo.test" "$TMP/mx2" || fail "messages in $TMP/mx2 do not match"
grep "u0@fo.test" "$TMP/relay.log" | head -3
n=$(grep -c "to=<u[0-9]*@fo.test>.*relay=mx2.fo.test\[$S\]:25.*status=sent" "$TMP/relay.log")
[ "$n" = $K ] || { grep "fo.test" "$TMP/relay.log" | tail; fail "$n status=sent via mx2, expected $K"; }
grep -q "fo.test.*status=deferred" "$TMP/relay.log" && fail "fo.test deferred although mx2 was up"
"$BUILD/tools/mxctl/mxctl" -s "$TMP/control.sock" stats >"$TMP/stats" || fail "mxctl stats"
refused=$(mxstat "$TMP/stats" deliver_tcp_refused)
echo "connections refused by mx1: $refused"
[ -n "$refused" ] && [ "$refused" -ge 1 ] || fail "mx1 was never tried"
echo "MX failover: ok"

# ---- 1b. the preferred MX greets with 421 (RFC 5321 3.8): the next MX takes it --------------
start_smtp_sink $G421:25 "$TMP/g421" -Q CONNECT
send fo2.test 0 $K
wait_files "$TMP/mx2" $((2 * K)) 30 || { grep fo2.test "$TMP/relay.log" | tail; fail "fo2.test mail not delivered"; }
sleep 0.5
[ "$(find "$TMP/g421" -type f | wc -l)" = 0 ] || fail "the 421 sink took a message"
n=$(grep -c "to=<u[0-9]*@fo2.test>.*relay=mx2.fo.test\[$S\]:25.*status=sent" "$TMP/relay.log")
[ "$n" = $K ] || { grep "fo2.test" "$TMP/relay.log" | tail; fail "$n fo2.test status=sent via mx2, expected $K"; }
echo "MX failover after a 421 greeting: ok"

# ---- 1c. the preferred MX's host is gone (no ARP reply): the next MX after the timeout -------
send fo3.test 0 2
wait_files "$TMP/mx2" $((2 * K + 2)) 60 || { grep fo3.test "$TMP/relay.log" | tail; fail "fo3.test mail not delivered"; }
n=$(grep -c "to=<u[0-9]*@fo3.test>.*relay=mx2.fo.test\[$S\]:25.*status=sent" "$TMP/relay.log")
[ "$n" = 2 ] || { grep "fo3.test" "$TMP/relay.log" | tail; fail "$n fo3.test status=sent via mx2, expected 2"; }
echo "MX failover after a connect timeout: ok ($(($(date +%s) - T0)) s)"
cat "$TMP"/sent-fo.test "$TMP"/sent-fo2.test "$TMP"/sent-fo3.test >"$TMP/sent-mx2"
check_dumps "$TMP/sent-mx2" "$TMP/mx2" || fail "messages in $TMP/mx2 do not match"

# ---- 2. a 4xx defers, the retry delivers ------------------------------------------------
start_smtp_sink $T:25 "$TMP/tf" -r RCPT
TF=$SINK_PID
send tf.test 0 $K
wait_log "tf.test.*status=deferred" 10 $K
grep -m1 "tf.test.*status=deferred" "$TMP/relay.log"
d=$(grep "to=<u[0-9]*@tf.test>.*relay=mx.tf.test\[$T\]:25.*status=deferred" "$TMP/relay.log" |
	grep -c "(.*4[0-9][0-9]")
[ "$d" -ge $K ] || { grep "tf.test" "$TMP/relay.log" | tail; fail "$d deferrals with a 4xx reply, expected $K"; }
[ "$(find "$TMP/tf" -type f | wc -l)" = 0 ] || fail "the 4xx sink took a message"
kill $TF
for _ in $(seq 50); do ss -ltn | grep -q "$T:25 " || break; sleep 0.1; done
start_smtp_sink $T:25 "$TMP/tf"
wait_files "$TMP/tf" $K 30 || { grep "tf.test" "$TMP/relay.log" | tail; fail "deferred mail not delivered on retry"; }
sleep 0.5
check_dumps "$TMP/sent-tf.test" "$TMP/tf" || fail "messages in $TMP/tf do not match"
n=$(grep -c "to=<u[0-9]*@tf.test>.*status=sent" "$TMP/relay.log")
[ "$n" = $K ] || fail "$n status=sent for tf.test, expected $K"
grep -m1 "tf.test.*status=sent" "$TMP/relay.log"
echo "4xx deferral and retry: ok"

stop_relay
spool_expect "$TMP/spool" 0
echo "failover: ok ($(($(date +%s) - T0)) s)"
