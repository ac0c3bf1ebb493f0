#!/usr/bin/env bash
# deliver_starttls.sh - opportunistic STARTTLS on outbound sessions: the
# smarthost [10.77.53.1]:2526 is a small Python SMTP server (written below)
# that offers STARTTLS with a demo certificate and records, per message,
# whether it came over TLS.  The relay must upgrade every session, deliver
# every message once over TLS, resume TLS sessions on later connections
# (messages_per_connection = 2 forces several), and end with an empty spool.
# Exit 0 pass, 77 skip.
. "$(dirname "$0")/common.bash"
need_root_tap
N=53 IF=mxt53 H=10.77.53.2 S=10.77.53.1
K=8

"$ROOT/lib/tls/gen-demo-cert.sh" "$TMP/tls" >/dev/null 2>&1 || fail "cannot make a demo certificate"
write_delivery_config "$TMP/r.conf" $IF $N "
[relay]
smarthost = [$S]:2526
[tls]
outbound = opportunistic
[queue]
messages_per_connection = 2"
start_relay "$TMP/relay.log" "$TMP/r.conf"

cat >"$TMP/sink.py" <<'PYEOF'
import os, socket, ssl, sys, threading
addr, port, out, crt, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(crt, key)
seq = [0]
lock = threading.Lock()

def serve(conn):
    conn.settimeout(30)
    tls = None
    r = conn.makefile("rb")
    out_ = lambda s: conn.sendall(s.encode())
    out_("220 tls-sink ESMTP\r\n")
    while True:
        line = r.readline(1000)
        if not line:
            return
        cmd = line.strip().upper()
        if cmd.startswith(b"EHLO"):
            out_("250-tls-sink\r\n250-PIPELINING\r\n" + ("" if tls else "250-STARTTLS\r\n") +
                 "250 8BITMIME\r\n")
        elif cmd == b"STARTTLS" and not tls:
            out_("220 2.0.0 go ahead\r\n")
            conn = ctx.wrap_socket(conn, server_side=True)
            tls = conn.version()
            r = conn.makefile("rb")
            out_ = lambda s, c=conn: c.sendall(s.encode())
        elif cmd == b"DATA":
            out_("354 go\r\n")
            body = []
            while True:
                l = r.readline(100000)
                if not l or l == b".\r\n":
                    break
                body.append(l[1:] if l.startswith(b"..") else l)
            with lock:
                seq[0] += 1
                n = seq[0]
            with open(os.path.join(out, f"m{n}"), "wb") as f:
                f.write(f"TLS: {tls}\r\n".encode() + b"".join(body))
            out_("250 2.0.0 Ok\r\n")
        elif cmd == b"QUIT":
            out_("221 2.0.0 bye\r\n")
            return
        else:
            out_("250 2.0.0 Ok\r\n")

ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind((addr, port))
ls.listen(16)
ls.settimeout(60)
while True:
    try:
        c, _ = ls.accept()
    except socket.timeout:
        break
    threading.Thread(target=serve, args=(c,), daemon=True).start()
PYEOF
mkdir -p "$TMP/m"
start_bg "$TMP/sink.log" $PY "$TMP/sink.py" $S 2526 "$TMP/m" "$TMP/tls/relay.crt" "$TMP/tls/relay.key"
wait_listen $S:2526 || { cat "$TMP/sink.log"; fail "TLS sink did not start"; }

timeout 30 $PY - "$H" "$K" <<'PYEOF' || fail "sending"
import smtplib, sys
host, k = sys.argv[1], int(sys.argv[2])
c = smtplib.SMTP(host, 25, timeout=20)
for i in range(k):
    c.sendmail("dev@fleet.test", [f"ops{i}@example.com"],
               f"From: dev@fleet.test\r\nSubject: tls {i}\r\nX-Probe: t{i}\r\n\r\nbody {i}\r\n".encode())
c.quit()
PYEOF
wait_files "$TMP/m" $K 20
sleep 0.5
n=$(find "$TMP/m" -type f | wc -l)
[ "$n" = $K ] || { tail -20 "$TMP/relay.log"; cat "$TMP/sink.log"; fail "$n messages arrived, expected $K"; }
plain=$(grep -L "^TLS: TLSv1" "$TMP"/m/* | wc -l)
[ "$plain" = 0 ] || fail "$plain messages arrived without TLS"
probes=$(grep -h "^X-Probe:" "$TMP"/m/* | sort -u | wc -l)
[ "$probes" = $K ] || fail "$probes distinct messages, expected $K"
"$BUILD/tools/mxctl/mxctl" -s "$TMP/control.sock" stats >"$TMP/stats" || fail "mxctl stats"
full=$(mxstat "$TMP/stats" tls_client_handshakes_full) res=$(mxstat "$TMP/stats" tls_client_handshakes_resumed)
echo "$K messages over TLS ($(grep -h "^TLS:" "$TMP"/m/* | sort -u | tr -d '\r')), handshakes: $full full, $res resumed"
[ -n "$full" ] && [ "$full" -ge 1 ] || fail "no TLS handshake counted"
[ -n "$res" ] && [ "$res" -ge 1 ] || fail "no TLS session resumed"
stop_relay
spool_expect "$TMP/spool" 0
echo "STARTTLS delivery: ok"
