#!/usr/bin/env bash
# deliver_postfix_mx.sh - Postfix 3.7 as the destination MX (issue 6, "Tests"):
# a private Postfix instance (its own config_directory, queue_directory and
# master, every service unchrooted, logging to its own maillog) listens on the
# host side of the TAP, 10.77.71.1:25, offers STARTTLS with a demo
# certificate for mx.pf.test and delivers pf.test mail into a maildir
# (virtual(8)).  unbound on 10.77.71.1:53 serves "pf.test MX 10 mx.pf.test".
# The relay takes K messages for u<i>@pf.test and delivers them with
# messages_per_connection = 5, so several connections are opened:
#   - every message lands once in the maildir, body byte-exact (SHA-256,
#     line ends compared as LF: the maildir stores LF);
#   - Postfix logs a TLS connection for every session of the relay, and
#     each message carries Postfix's "(using TLSv1.x ...)" Received header;
#   - the relay's counters show resumed TLS handshakes;
#   - pf.test is held while the messages come in and released after, so the
#     pooled sessions carry two transactions at once (pipeline_depth = 2:
#     Postfix offers PIPELINING and CHUNKING): queue_txns_pipelined > 0, and
#     still every message arrives once and byte-exact;
#   - one status=sent line per message, and the spool ends empty.
# Exit 0 pass, 77 skip.
. "$(dirname "$0")/common.bash"
. "$(dirname "$0")/peers.bash"
need_root_tap
[ -x "$PY" ] || skip "no $PY"
command -v postfix >/dev/null || skip "postfix not installed"
command -v unbound >/dev/null || skip "unbound not installed"
id postfix >/dev/null 2>&1 || skip "no postfix user"
N=71 IF=mxt71 H=10.77.71.2 S=10.77.71.1
K=${MX_PF_N:-40}
T0=$(date +%s)
PF_DOMAINS=pf.test
. "$ROOT/tests/integration/postfix.bash"
trap 'pf_stop; cleanup' EXIT

"$ROOT/lib/tls/gen-demo-cert.sh" "$TMP/tls" mx.pf.test >/dev/null 2>&1 ||
	fail "cannot make a demo certificate"

write_delivery_config "$TMP/r.conf" $IF $N "
[tls]
outbound = opportunistic
[dns]
resolvers = $S
[queue]
messages_per_connection = 5"
start_relay "$TMP/relay.log" "$TMP/r.conf"
start_unbound $S $N <<ZONE
	local-zone: "pf.test." static
	local-data: "pf.test. 60 IN MX 10 mx.pf.test."
	local-data: "mx.pf.test. 60 IN A $S"
ZONE

# ---- the private Postfix instance (postfix.bash) ----------------------------------------
pf_setup "$S:25     inet  n       -       n       -       20      smtpd" "
mydomain = pf.test
myorigin = \$myhostname
inet_interfaces = $S
mynetworks = 10.77.$N.0/24
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_tls_cert_file = $TMP/tls/relay.crt
smtpd_tls_key_file = $TMP/tls/relay.key
smtpd_tls_security_level = may
smtpd_tls_loglevel = 1
smtpd_tls_received_header = yes
smtpd_tls_session_cache_timeout = 3600s"
pf_start "$S:25"

# ---- K messages through the relay -------------------------------------------------------
CTL=$BUILD/tools/mxctl/mxctl
"$CTL" -s "$TMP/control.sock" suspend pf.test | grep -q suspended || fail "suspend pf.test"
timeout 60 $PY - "$H" "$K" >"$TMP/sent" <<'PYEOF' || { tail -20 "$TMP/relay.log"; fail "sending"; }
import hashlib, os, smtplib, sys
host, k = sys.argv[1], int(sys.argv[2])
c = smtplib.SMTP(host, 25, timeout=20)
for i in range(k):
    lines = [os.urandom(20 + (i * 11) % 60).hex() for _ in range(1 + i % 30)]
    if i % 3 == 0:
        lines.insert(1, ".a line that starts with a dot")
    body = "\r\n".join(lines) + "\r\n"
    c.sendmail("dev@fleet.test", [f"u{i}@pf.test"],
               (f"From: dev@fleet.test\r\nTo: u{i}@pf.test\r\nSubject: pf {i}\r\n"
                f"X-Probe: pf-{i}\r\n\r\n" + body).encode())
    print(f"pf-{i}", hashlib.sha256(body.replace("\r\n", "\n").encode()).hexdigest())
c.quit()
PYEOF
"$CTL" -s "$TMP/control.sock" resume pf.test | grep -q resumed || fail "resume pf.test"

wait_files "$PF/mail/box/new" "$K" 60
sleep 1
n=$(find "$PF/mail/box/new" -type f 2>/dev/null | wc -l)
[ "$n" -ge "$K" ] || {
	tail -10 "$TMP/relay.log"
	tail -20 "$PF/maillog"
	fail "$n of $K messages in Postfix's maildir"
}
$PY - "$TMP/sent" "$PF/mail/box/new" <<'PYEOF' || fail "maildir contents"
import hashlib, os, re, sys
want = dict(l.split() for l in open(sys.argv[1]))
got, notls = {}, 0
for f in os.listdir(sys.argv[2]):
    raw = open(os.path.join(sys.argv[2], f), "rb").read().replace(b"\r\n", b"\n")
    head, _, body = raw.partition(b"\n\n")
    m = re.search(rb"^X-Probe: (\S+)$", head, re.M)
    # Postfix's own Received header names the TLS the relay's session used.
    if not re.search(rb"^Received: from relay\.mxrelay\.test .*\n(\s.*\n)*?\s+\(using TLSv1\.[23] ",
                     head, re.M):
        notls += 1
    got.setdefault(m.group(1).decode() if m else "none", []).append(hashlib.sha256(body).hexdigest())
bad = [k for k in want if got.get(k) != [want[k]]] + [k for k in got if k not in want]
print(f"{len(want)} sent, {sum(map(len, got.values()))} in the maildir, {notls} without TLS, "
      f"bad: {bad[:10]}")
sys.exit(1 if bad or notls else 0)
PYEOF

"$BUILD/tools/mxctl/mxctl" -s "$TMP/control.sock" stats >"$TMP/stats" || fail "mxctl stats"
opened=$(mxstat "$TMP/stats" queue_conns_opened)
full=$(mxstat "$TMP/stats" tls_client_handshakes_full)
res=$(mxstat "$TMP/stats" tls_client_handshakes_resumed)
piped=$(mxstat "$TMP/stats" queue_txns_pipelined)
pf_tls=$(grep -c "TLS connection established from .*\[$H\]" "$PF/maillog")
pf_conn=$(grep -c "postfix/smtpd.*: connect from .*\[$H\]" "$PF/maillog")
grep -m1 "TLS connection established from" "$PF/maillog"
echo "relay: $opened connections, TLS $full full + $res resumed, $piped transactions pipelined behind another; postfix: $pf_conn connections, $pf_tls with TLS"
sent=$(grep -c "to=<u[0-9]*@pf.test>, relay=mx.pf.test\[$S\]:25, .*status=sent" "$TMP/relay.log")
[ "$sent" = "$K" ] || fail "$sent status=sent lines, expected $K"
[ "$pf_conn" -ge 2 ] || fail "postfix saw $pf_conn connections: messages_per_connection = 5 should force more"
[ "$pf_tls" = "$pf_conn" ] || fail "$pf_tls of $pf_conn connections used TLS"
[ -n "$res" ] && [ "$res" -ge 1 ] || fail "no resumed TLS handshake (full: $full)"
[ -n "$piped" ] && [ "$piped" -ge 1 ] || fail "no transaction pipelined behind another"
grep -q "nested MAIL\|improper command pipelining" "$PF/maillog" && fail "Postfix complained about the pipelining"
[ $((full + res)) -ge "$pf_tls" ] || fail "relay counted $((full + res)) handshakes, postfix $pf_tls"
stop_relay
spool_expect "$TMP/spool" 0
echo "Postfix MX: ok ($(($(date +%s) - T0)) s)"
