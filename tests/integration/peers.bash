# tests/integration/peers.bash - peer servers on the host side of a test's TAP
# (sourced after common.bash): an unbound serving the test's names, Postfix's
# smtp-sink dumping every message it takes, and the check of those dumps
# against what the test sent.  Each starts under start_bg's bookkeeping (the
# EXIT trap of common.bash stops it) and is waited for, bounded.
#
#   start_unbound ADDR N <<ZONE            unbound on ADDR:53 for 10.77.N.0/24
#   start_smtp_sink ADDR:PORT DIR [opts]   sets SINK_PID
#   check_dumps SENT DIR...                each probe in SENT arrived once, byte-exact

# start_unbound ADDR N: unbound on ADDR:53, answering 10.77.N.0/24, logs in
# $TMP/unbound.log; stdin holds more server: lines (local-zone, local-data...)
# and may open further clauses (stub-zone:).  Fails if it does not listen.
# Feed it with a here-document or < <(...), not a pipe: a piped function runs
# in a subshell, and the EXIT trap would not know the pid.
start_unbound() {
	local addr=$1 n=$2
	{
		cat <<CONF
server:
	interface: $addr
	port: 53
	access-control: 10.77.$n.0/24 allow
	do-daemonize: no
	username: ""
	chroot: ""
	directory: "$TMP"
	pidfile: ""
	use-syslog: no
	logfile: ""
	do-ip6: no
CONF
		cat
		printf 'remote-control:\n\tcontrol-enable: no\n'
	} >"$TMP/unbound.conf"
	start_bg "$TMP/unbound.log" unbound -c "$TMP/unbound.conf"
	wait_listen "$addr:53" udp || { cat "$TMP/unbound.log"; fail "unbound did not start"; }
}

# start_smtp_sink ADDR:PORT DIR [smtp-sink options]: smtp-sink running as nobody,
# one dump per message in DIR (made world-writable), output appended to
# $TMP/sink-ADDR:PORT.log; fails if it does not listen.  Sets SINK_PID.
start_smtp_sink() {
	chmod o+x "$TMP" # smtp-sink writes as nobody
	mkdir -p "$2" && chmod 777 "$2"
	smtp-sink -u nobody -d "$2/%H%M%S." "${@:3}" "$1" 100 >>"$TMP/sink-$1.log" 2>&1 &
	PIDS+=($!)
	SINK_PID=$!
	wait_listen "$1" || { cat "$TMP/sink-$1.log"; fail "smtp-sink on $1 did not start"; }
}

# check_dumps SENT DIR...: SENT has a "probe sha256" line per message sent (the
# SHA-256 of its body with LF line ends); each probe is in exactly one smtp-sink
# dump in the DIRs, its body byte-exact, and no dump is unexpected.  Returns 1
# otherwise, naming what is wrong.  MX_DEBUG_KEEP=DIR keeps a copy.
check_dumps() {
	[ -n "${MX_DEBUG_KEEP:-}" ] && cp -r "$@" "$MX_DEBUG_KEEP/"
	$PY - "$@" <<'PYEOF'
import hashlib, os, re, sys
want = dict(l.split() for l in open(sys.argv[1]))
got = {}
for d in sys.argv[2:]:
    for f in os.listdir(d):
        raw = open(os.path.join(d, f), "rb").read().replace(b"\r\n", b"\n")
        head, _, body = raw.partition(b"\n\n")
        if body.endswith(b"\n\n"):
            body = body[:-1]  # smtp-sink ends each dump with an empty line
        m = re.search(rb"^X-Probe: (\S+)$", head, re.M)
        probe = m.group(1).decode() if m else f"no probe in {d}/{f}"
        got.setdefault(probe, []).append(hashlib.sha256(body).hexdigest())
bad = 0
for k, v in want.items():
    g = got.get(k, [])
    if len(g) != 1:
        bad += 1
        print(f"{k}: arrived {len(g)} times")
    elif g[0] != v:
        bad += 1
        print(f"{k}: body differs")
for k in got:
    if k not in want:
        bad += 1
        print(f"{k}: unexpected")
print(f"{len(want)} sent, {sum(len(v) for v in got.values())} received, {bad} bad")
sys.exit(1 if bad else 0)
PYEOF
}
