#!/usr/bin/env bash
# deliver_handoff.sh - two workers: each destination is delivered by its owner
# worker, whatever worker accepted (and spooled) the message.
#
# 12 domains d0..d11.fleet.test (MX -> smtp-sink on the host side) and
# nx.fleet.test (NXDOMAIN).  16 concurrent clients (spread over both workers
# by the flow hash) send messages with recipients in three domains and one
# in nx.fleet.test.  Checked: every recipient arrives exactly once, one DSN
# per message reaches the sender (the bounce happens on nx's owner, the DSN
# is written by the message's spool core), both workers handed descriptors
# to the other and received some, marks went back, and after a clean stop
# the spools of both workers are empty (every finish record was written).
. "$(dirname "$0")/common.bash"
. "$(dirname "$0")/peers.bash"
need_root_tap
command -v smtp-sink >/dev/null || skip "smtp-sink (postfix) not installed"
command -v unbound >/dev/null || skip "unbound not installed"
N=80 IF=mxt80 H=10.77.80.2 S=10.77.80.1
CTL=$BUILD/tools/mxctl/mxctl
C=16 K=15 # clients, messages each

MX_LCORES="--lcores=0@0,1@1,2@0" write_delivery_config "$TMP/r.conf" $IF $N "
[dns]
resolvers = $S"
start_relay "$TMP/relay.log" "$TMP/r.conf"
start_unbound $S $N <<ZONE
	local-zone: "fleet.test." static
	local-data: "fleet.test. 60 IN MX 10 mx.fleet.test."
	local-data: "mx.fleet.test. 60 IN A $S"
$(for d in $(seq 0 11); do printf '\tlocal-data: "d%s.fleet.test. 60 IN MX 10 mx.fleet.test."\n' "$d"; done)
ZONE
start_smtp_sink $S:25 "$TMP/d"

timeout 60 $PY - "$H" "$C" "$K" <<'PYEOF' || fail "sending"
import smtplib, sys, threading
host, c, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
errors = []
def client(n):
    try:
        s = smtplib.SMTP(host, 25, timeout=30)
        for i in range(k):
            doms = [f"d{(n + i + j * 4) % 12}.fleet.test" for j in range(3)]
            rcpts = [f"u{n}x{i}@{d}" for d in doms] + [f"u{n}x{i}@nx.fleet.test"]
            s.sendmail(f"dev{n}@fleet.test", rcpts,
                       f"From: dev{n}@fleet.test\r\nSubject: {n} {i}\r\nX-Probe: {n}-{i}\r\n\r\nbody {n} {i}\r\n".encode())
        s.quit()
    except Exception as e:
        errors.append(f"client {n}: {e!r}")
ts = [threading.Thread(target=client, args=(n,)) for n in range(c)]
[t.start() for t in ts]
[t.join() for t in ts]
if errors:
    print("\n".join(errors)); sys.exit(1)
PYEOF

want=$((C * K * 4)) # 3 recipients in 3 SMTP transactions (one per domain) + 1 DSN per message
wait_files "$TMP/d" $want 30
sleep 1
timeout 30 $PY - "$TMP/d" "$C" "$K" <<'PYEOF' || { tail -30 "$TMP/relay.log"; fail "delivered messages"; }
import os, re, sys, collections
d, c, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
got, dsns = collections.Counter(), collections.Counter()
for f in os.listdir(d):
    raw = open(os.path.join(d, f), "rb").read()
    if b"X-Mail-Args: <>" in raw:
        m = re.search(rb"u(\d+)x(\d+)@nx\.fleet\.test", raw)
        assert m and b"Action: failed" in raw, f
        dsns[(int(m.group(1)), int(m.group(2)))] += 1
        continue
    probe = re.search(rb"^X-Probe: (\d+)-(\d+)", raw, re.M)
    rc = re.findall(rb"^X-Rcpt-Args: <([^>]+)>", raw, re.M)
    assert probe and rc, f
    for r in rc:
        got[r.decode()] += 1
want = {f"u{n}x{i}@d{(n + i + j * 4) % 12}.fleet.test" for n in range(c) for i in range(k) for j in range(3)}
dup = [r for r, v in got.items() if v > 1]
assert not dup, f"duplicates: {dup[:5]}"
missing = want - set(got)
assert not missing, f"{len(missing)} missing, e.g. {sorted(missing)[:5]}"
assert set(got) == want, f"unexpected: {sorted(set(got) - want)[:5]}"
assert len(dsns) == c * k and max(dsns.values()) == 1, f"{len(dsns)} DSNs (want {c * k}), max {max(dsns.values() or [0])}"
print(f"{len(got)} recipients delivered once each, {len(dsns)} DSNs")
PYEOF

"$CTL" -s "$TMP/control.sock" stats >"$TMP/stats" || fail "mxctl stats"
for w in 0 1; do
	for k in deliver_handoff_out deliver_handoff_in deliver_remote_marks smtp_messages_accepted; do
		v=$(mxstat "$TMP/stats" worker.$w.$k)
		echo "worker $w $k = $v"
		[ -n "$v" ] && [ "$v" -gt 0 ] || fail "worker $w: $k = '$v', expected > 0"
	done
done
[ "$(mxstat "$TMP/stats" deliver_mark_failures)" = 0 ] || { grep -E "deliver_|spool_" "$TMP/stats" | grep -v " 0$"; grep -iE "warn|error" "$TMP/relay.log" | head; fail "mark failures"; }
[ "$(mxstat "$TMP/stats" deliver_outbox)" = 0 ] || fail "outbox not empty"

stop_relay
spool_expect "$TMP/spool" 0
echo "hand-off between workers: ok"
