#!/usr/bin/env bash
# Observability of a running relay: after 20 messages from swaks, the
# control socket (mxctl status / stats / stats json), the Prometheus
# endpoint (GET /metrics, 404 for anything else) and DPDK telemetry
# (dpdk-telemetry.py /mxrelay/stats) all report the same counts, and bad
# or not-yet-available commands answer "error:" with exit status 1.
. "$(dirname "$0")/common.bash"
need_root_tap
command -v swaks >/dev/null || skip "swaks not installed"
command -v curl >/dev/null || skip "curl not installed"
TEL=/usr/bin/dpdk-telemetry.py
[ -x $TEL ] || skip "dpdk-telemetry.py not installed (Debian package dpdk-dev)"
N=40 IF=mxt40 H=10.77.40.2 HTTP=127.0.0.1:19125
SOCK=$TMP/ctl/control.sock
CTL=$BUILD/tools/mxctl/mxctl
write_relay_config "$TMP/r.conf" $IF $N "
[control]
socket = $SOCK
http_listen = $HTTP"
# A bad [control] key is a file:line error of --check-config.
write_relay_config "$TMP/bad.conf" $IF $N "
[control]
http_listen = localhost:80x"
"$BUILD/app/mxrelay/mxrelay" --check-config "$TMP/bad.conf" >"$TMP/bad.out" 2>&1 &&
	fail "http_listen = localhost:80x accepted"
grep -q "bad.conf:[0-9]*: http_listen = localhost:80x: expected A.B.C.D:port" "$TMP/bad.out" ||
	{ cat "$TMP/bad.out"; fail "bad http_listen: no file:line error"; }
"$BUILD/app/mxrelay/mxrelay" --check-config "$TMP/r.conf" >"$TMP/ok.out" 2>&1 ||
	{ cat "$TMP/ok.out"; fail "[control] config rejected"; }

start_relay "$TMP/relay.log" "$TMP/r.conf"
[ -S "$SOCK" ] || { cat "$TMP/relay.log"; fail "no control socket at $SOCK"; }
mode=$(stat -c %a "$SOCK")
[ "$mode" = 660 ] || fail "control socket mode $mode, expected 660"

for i in $(seq 20); do
	swaks --server $H --from dev@fleet.test --to ops@fleet.test --h-Subject "ops $i" \
		--timeout 20 >"$TMP/sw.log" 2>&1 || { cat "$TMP/sw.log"; fail "swaks $i"; }
	grep -q "250 2.0.0 Ok: queued as" "$TMP/sw.log" || { cat "$TMP/sw.log"; fail "swaks $i: not queued"; }
done
echo "swaks: 20 messages queued"

"$CTL" -s "$SOCK" status >"$TMP/status" || { cat "$TMP/status"; fail "mxctl status"; }
cat "$TMP/status"
[ "$(mxstat "$TMP/status" workers)" = 1 ] || fail "status: workers is not 1"
grep -q "^worker 0 lcore 1$" "$TMP/status" || fail "status: no line for worker 0"
grep -q "^port 0 addr $H/24 steering " "$TMP/status" || fail "status: no port 0 line"
grep -q "^listeners 25,465,587$" "$TMP/status" || fail "status: listeners"
[ "$(mxstat "$TMP/status" spool_messages_queued)" = 20 ] || fail "status: spool does not hold 20"
[ "$(mxstat "$TMP/status" smtp_messages_accepted)" = 20 ] || fail "status: accepted is not 20"
[ -n "$(mxstat "$TMP/status" smtp_open)" ] || fail "status: no smtp_open"

"$CTL" -s "$SOCK" stats >"$TMP/stats" || fail "mxctl stats"
acc=$(mxstat "$TMP/stats" smtp_messages_accepted)
[ "$acc" = 20 ] || fail "stats: smtp_messages_accepted = '$acc', expected 20"
[ "$(mxstat "$TMP/stats" worker.0.smtp_messages_accepted)" = 20 ] || fail "stats: worker 0 count"
for k in tcp_passive_opens tcp_segs_in tcp_segs_out tcp_bytes_in rx_pkts; do
	v=$(mxstat "$TMP/stats" $k)
	[ -n "$v" ] && [ "$v" -gt 0 ] || fail "stats: $k = '$v', expected > 0"
done
[ "$(mxstat "$TMP/stats" tcp_passive_opens)" -ge 20 ] || fail "stats: fewer than 20 passive opens"
bad=$(grep -cvE '^[a-z0-9_.]+ [0-9]+$' "$TMP/stats")
[ "$bad" = 0 ] || fail "stats: $bad lines are not 'name value'"
echo "mxctl stats: $(wc -l <"$TMP/stats") lines, smtp_messages_accepted $acc"

"$CTL" -s "$SOCK" stats json >"$TMP/stats.json" || fail "mxctl stats json"
$PY - "$TMP/stats.json" "$TMP/stats" <<'PYEOF' || fail "stats json does not agree"
import json, sys
j = json.load(open(sys.argv[1]))
text = dict(l.split() for l in open(sys.argv[2]))
assert set(j) == {"total", "workers"}, j.keys()
assert len(j["workers"]) == 1, len(j["workers"])
assert j["total"]["smtp_messages_accepted"] == 20, j["total"]["smtp_messages_accepted"]
assert j["workers"][0]["smtp_messages_accepted"] == 20
for k, v in j["total"].items():
    assert k in text, k
    # The SMTP side does not move while nobody sends mail: it must agree exactly.
    # Packet-level counters may (the host's kernel sends to the TAP on its own,
    # e.g. IPv6 router solicitations), and so may delivery retries.
    if k.startswith(("smtp_commands", "smtp_replies", "smtp_rejects", "smtp_messages",
                     "smtp_sessions", "smtpd_", "tls_")):
        assert int(text[k]) == v, (k, text[k], v)
print("stats json: %d counters, agrees with stats" % len(j["total"]))
PYEOF

curl -sS -o "$TMP/metrics" -w '%{http_code} %{content_type}\n' "http://$HTTP/metrics" >"$TMP/code" ||
	fail "GET /metrics"
read -r code ctype <"$TMP/code"
[ "$code" = 200 ] || fail "GET /metrics: HTTP $code"
case "$ctype" in text/plain*version=0.0.4*) ;; *) fail "GET /metrics: content type '$ctype'" ;; esac
$PY - "$TMP/metrics" <<'PYEOF' || fail "/metrics is not valid Prometheus text"
import re, sys
sample = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[a-zA-Z_][a-zA-Z0-9_]*="[^"\\\n]*"'
                    r'(,[a-zA-Z_][a-zA-Z0-9_]*="[^"\\\n]*")*\})? (-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?)$')
typed, values, n = {}, {}, 0
for line in open(sys.argv[1]):
    line = line.rstrip("\n")
    if line.startswith("# TYPE "):
        _, _, name, t = line.split(" ", 3)
        assert t in ("counter", "gauge"), line
        assert name not in typed, "TYPE twice: " + name
        typed[name] = t
        continue
    if line.startswith("# HELP "):
        continue
    m = sample.match(line)
    assert m, "bad line: %r" % line
    name = m.group(1)
    assert name in typed, "no TYPE for " + name
    assert (typed[name] == "counter") == name.endswith("_total"), "counter naming: " + name
    values[line.rsplit(" ", 1)[0]] = float(m.group(4))
    n += 1
assert values.get("mxrelay_smtp_messages_accepted_total") == 20, values.get("mxrelay_smtp_messages_accepted_total")
assert values.get('mxrelay_worker_smtp_messages_accepted_total{worker="0"}') == 20
assert values.get("mxrelay_spool_live_messages") == 20
assert values.get("mxrelay_workers") == 1
assert values.get("mxrelay_tcp_passive_opens_total", 0) >= 20
# Queue depth per destination: fleet.test has no route (no [dns]): its 20 wait.
dest = {k: v for k, v in values.items() if 'destination="fleet.test"' in k}
held = sum(v for k, v in dest.items() if k.startswith(("mxrelay_destination_queued", "mxrelay_destination_waiting")))
assert held == 20, dest
print("/metrics: %d samples, %d families, mxrelay_smtp_messages_accepted_total 20" % (n, len(typed)))
PYEOF
code=$(curl -s -o /dev/null -w '%{http_code}' "http://$HTTP/nothing-here")
[ "$code" = 404 ] || fail "GET /nothing-here: HTTP $code, expected 404"
# A request head larger than the bound is refused, not buffered.
big=$(head -c 6000 /dev/zero | tr '\0' a)
code=$(curl -s -o /dev/null -w '%{http_code}' -H "X-Big: $big" "http://$HTTP/metrics")
[ "$code" = 431 ] || fail "oversized request: HTTP $code, expected 431"

echo /mxrelay/stats | timeout 20 $TEL -f "mxit$N-$$" >"$TMP/tel.out" 2>&1 || { cat "$TMP/tel.out"; fail "dpdk-telemetry.py"; }
echo /mxrelay/status | timeout 20 $TEL -f "mxit$N-$$" >"$TMP/tel-status.out" 2>&1 || fail "dpdk-telemetry.py status"
$PY - "$TMP/tel.out" "$TMP/tel-status.out" <<'PYEOF' || { cat "$TMP/tel.out"; fail "telemetry /mxrelay/stats"; }
import json, sys
def last_json(path):
    # dpdk-telemetry.py prints its banner, then one JSON reply per command.
    out = None
    for line in open(path):
        line = line.strip().lstrip("-> ").strip()
        if line.startswith("{"):
            out = json.loads(line)
    assert out is not None, "no JSON reply in " + path
    return out
s = last_json(sys.argv[1])["/mxrelay/stats"]
assert s["smtp_messages_accepted"] == 20, s["smtp_messages_accepted"]
assert s["tcp_passive_opens"] >= 20
st = last_json(sys.argv[2])["/mxrelay/status"]
assert st["workers"] == 1 and st["spool_messages_queued"] == 20, st
print("telemetry: /mxrelay/stats smtp_messages_accepted 20, /mxrelay/status ok")
PYEOF

rc=0
"$CTL" -s "$SOCK" frobnicate >"$TMP/unk" 2>&1 || rc=$?
[ $rc = 1 ] || fail "unknown command: exit $rc, expected 1"
grep -q "^error: unknown command 'frobnicate' (try help)$" "$TMP/unk" || fail "unknown command reply: $(cat "$TMP/unk")"
rc=0
"$CTL" -s "$SOCK" flush >"$TMP/later" 2>&1 || rc=$?
# flush reaches the workers: an answer, or a clear "not available yet".
[ $rc = 0 ] || { [ $rc = 1 ] && grep -q "^error: flush is not available yet$" "$TMP/later"; } ||
	fail "flush: exit $rc, $(cat "$TMP/later")"
"$CTL" -s "$SOCK" help | grep -q "^stats json" || fail "help"
# An over-long request line is refused with an error.
rc=0
head -c 3000 /dev/zero | tr '\0' x | $PY -c "
import socket, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect(sys.argv[1])
s.sendall(sys.stdin.buffer.read()); r = b''
while True:
    d = s.recv(4096)
    if not d: break
    r += d
sys.exit(0 if r.startswith(b'error: request too long') else 1)" "$SOCK" || fail "over-long request not refused"
# Clients are bounded (max_clients 16): the 17th gets "busy" at once, idle
# ones are closed after 5 s, and then the socket answers again.
timeout 30 $PY - "$SOCK" <<'PYEOF' || fail "client bound"
import socket, sys
held = []
for i in range(16):
    s = socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect(sys.argv[1]); held.append(s)
extra = socket.socket(socket.AF_UNIX); extra.settimeout(10); extra.connect(sys.argv[1])
r = extra.recv(100)
assert r.startswith(b"error: control busy"), r
for s in held:  # the relay closes idle clients after 5 s
    assert s.recv(100) == b"", "idle client not closed"
print("client bound: 17th refused, idle clients closed")
PYEOF
"$CTL" -s "$SOCK" status >"$TMP/status2" || fail "status after the client bound"
[ "$(mxstat "$TMP/status2" control_refused_full)" -ge 1 ] || fail "control_refused_full not counted"
[ "$(mxstat "$TMP/status2" control_timeouts)" -ge 16 ] || fail "control_timeouts not counted"
# Hostile bytes get an error, never a crash.
printf 'stats \x01\xff\x00json\n' | timeout 10 $PY -c "
import socket, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect(sys.argv[1])
s.sendall(sys.stdin.buffer.read()); s.shutdown(socket.SHUT_WR); r = b''
while True:
    d = s.recv(4096)
    if not d: break
    r += d
sys.exit(0 if r.startswith(b'error: ') else 1)" "$SOCK" || fail "binary request not refused"
printf 'GARBAGE\r\n\r\n' | timeout 10 $PY -c "
import socket, sys
s = socket.create_connection(('127.0.0.1', 19125), timeout=10)
s.sendall(sys.stdin.buffer.read()); r = b''
while True:
    d = s.recv(4096)
    if not d: break
    r += d
sys.exit(0 if r.startswith(b'HTTP/1.0 400 ') else 1)" || fail "bad HTTP request not answered 400"

rc=0
"$CTL" -s "$TMP/nope.sock" status >"$TMP/nope" 2>&1 || rc=$?
[ $rc = 2 ] || fail "no relay: exit $rc, expected 2"
grep -q "cannot connect" "$TMP/nope" || fail "no relay: message: $(cat "$TMP/nope")"
echo "mxctl errors: ok"

stop_pid $R || { cat "$TMP/relay.log"; fail "relay did not stop cleanly"; }
! grep -E "runtime error|AddressSanitizer" "$TMP/relay.log" || fail "sanitizer report"
[ ! -e "$SOCK" ] || fail "control socket left behind after stop"
grep "control:" "$TMP/relay.log"
echo "ops observability: ok"
