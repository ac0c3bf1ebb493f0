#!/usr/bin/env bash
# net_tap without a signal per packet (lib/net/port.c, tap_signal_off): the
# relay turns off the real-time signal DPDK's net_tap raises for every frame
# the kernel queues on the TAP, and moves the PMD's Rx trigger itself.
#
# Three relays in turn on TAP mxt90 (10.77.90.0/24), each sent mail from
# Python smtplib in parallel (one message per connection, as device firmware
# does), each message checked byte-exact in the spool:
#   1. one worker, signal off: 200 messages; port_tap_signal_off is 1, no tun
#      fd of the relay has O_ASYNC, and the relay's threads took (almost) no
#      signals during the load;
#   2. two workers (two TAP queues), signal off: 200 messages, the same checks;
#   3. MX_NET_TAP_SIGNAL=keep: DPDK's scheme, 100 messages; the same count
#      must now show a signal per packet or so: the check can fail.
# Signals are counted with perf's signal:signal_deliver tracepoint when perf
# can use it, else by the context switches of the relay's threads other than
# its workers (the main lcore and EAL's threads: what the signals woke).
. "$(dirname "$0")/common.bash"
need_root_tap
N=90 IF=mxt90 H=10.77.90.2

# send COUNT OUT: COUNT messages, 20 client threads, each message on a new
# connection; "queue_id sha256" lines to OUT.  Every socket has a timeout.
send() {
	timeout 120 $PY - "$H" "$1" "$2" <<'PY'
import hashlib, os, random, re, smtplib, sys, threading
host, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
id_re = re.compile(rb"queued as ([0-9A-Z]+)")
res, errs, lock = [], [], threading.Lock()
def body(i):
    rnd = random.Random(i)
    lines = [b"Subject: nosignal %d" % i, b"From: dev%d@fleet.test" % i, b"To: ops@fleet.test", b""]
    for _ in range(rnd.randint(1, 40)):
        k = rnd.random()
        lines.append(b"." + os.urandom(6).hex().encode() if k < 0.2 else
                     os.urandom(rnd.randint(0, 200)).hex().encode())
    return b"\r\n".join(lines) + b"\r\n"
def client(t):
    for i in range(t, n, 20):
        msg = body(i)
        try:
            s = smtplib.SMTP(host, 25, timeout=20)
            s.ehlo("dev%d.fleet.test" % i)
            s.mail("dev%d@fleet.test" % i)
            code, _ = s.rcpt("ops@fleet.test")
            assert code == 250, code
            code, resp = s.data(msg)
            assert code == 250, (code, resp)
            s.quit()
            with lock:
                res.append("%s %s" % (id_re.search(resp).group(1).decode(),
                                      hashlib.sha256(msg).hexdigest()))
        except Exception as e:
            with lock:
                errs.append("message %d: %r" % (i, e))
ts = [threading.Thread(target=client, args=(t,)) for t in range(20)]
for t in ts: t.start()
for t in ts: t.join(100)
open(out, "w").write("".join(r + "\n" for r in res))
print("sent %d of %d messages" % (len(res), n))
for e in errs[:5]: print(e)
sys.exit(0 if len(res) == n and not errs else 1)
PY
}

# quiet_switches PID: context switches of the relay's threads other than its
# workers (main lcore, eal-intr-thread, rte_mp_handle, ...) so far.
quiet_switches() {
	local t s=0 n
	for t in /proc/"$1"/task/*; do
		case "$(cat "$t/comm" 2>/dev/null)" in rte-worker-* | dpdk-worker* | iou-*) continue ;; esac
		n=$(awk '/^(voluntary|nonvoluntary)_ctxt_switches/ { s += $2 } END { print s + 0 }' \
			"$t/status" 2>/dev/null)
		s=$((s + ${n:-0}))
	done
	echo $s
}

PERF=0
if command -v perf >/dev/null &&
	timeout 10 perf stat -e signal:signal_deliver -x, -- true >/dev/null 2>&1; then
	PERF=1
fi

# phase NAME COUNT LCORES MODE: start a relay, load it, check; sets SIGNALS
# (signals its threads took during the load) and MODE_STAT (port_tap_signal_off).
phase() {
	local name=$1 count=$2 lcores=$3 mode=$4 fd fl bad=0 c0 c1 ppid=
	rm -rf "$TMP/spool"
	MX_LCORES=$lcores write_relay_config "$TMP/r.conf" $IF $N
	if [ "$mode" = keep ]; then
		MX_NET_TAP_SIGNAL=keep start_relay "$TMP/relay.log" "$TMP/r.conf"
	else
		start_relay "$TMP/relay.log" "$TMP/r.conf"
	fi
	timeout 10 "$BUILD/tools/mxctl/mxctl" -s "$TMP/control.sock" -t 5 stats >"$TMP/stats" ||
		fail "$name: mxctl stats"
	MODE_STAT=$(awk '$0 ~ /port_tap_signal_off/ { for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+$/) { print $i; exit } }' \
		"$TMP/stats")
	grep -h "net_tap" "$TMP/relay.log" | head -3
	# The TAP's queue fds: /dev/net/tun, O_ASYNC is 020000 in fdinfo's octal flags.
	local tun=0 async=0
	for fd in /proc/$R/fd/*; do
		[ "$(readlink "$fd")" = /dev/net/tun ] || continue
		tun=$((tun + 1))
		fl=$(awk '/^flags:/ { print $2 }' "/proc/$R/fdinfo/${fd##*/}")
		[ $((0$fl & 020000)) = 0 ] || async=$((async + 1))
	done
	echo "$name: $tun tun fds, $async with O_ASYNC, port_tap_signal_off=${MODE_STAT:-absent}"
	ASYNC=$async
	c0=$(quiet_switches $R)
	if [ $PERF = 1 ]; then
		timeout 200 perf stat -e signal:signal_deliver -x, -o "$TMP/perf.txt" -p $R -- \
			sleep 150 >/dev/null 2>&1 &
		ppid=$!
		sleep 0.5 # perf attaches
	fi
	send "$count" "$TMP/sent.txt" || fail "$name: smtplib load"
	c1=$(quiet_switches $R)
	if [ -n "$ppid" ]; then
		kill -INT $ppid 2>/dev/null
		wait $ppid 2>/dev/null
		SIGNALS=$(awk -F, '/signal_deliver/ { print $1 + 0 }' "$TMP/perf.txt")
		echo "$name: $SIGNALS signals delivered to the relay during the load (perf)"
	else
		SIGNALS=$((c1 - c0))
		echo "$name: $SIGNALS context switches of the relay's non-worker threads during the load"
	fi
	timeout 10 "$BUILD/tools/mxctl/mxctl" -s "$TMP/control.sock" -t 5 stats >"$TMP/stats2"
	RXPKTS=$(awk '$0 ~ /(^| )rx_pkts/ { for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+$/) { s += $i; break } } END { print s + 0 }' \
		"$TMP/stats2")
	echo "$name: the relay received $RXPKTS packets"
	stop_relay
	spool_expect "$TMP/spool" "$count" >/dev/null || fail "$name: spool does not hold $count"
	local M=$BUILD/tools/mxspool/mxspool id sum got
	while read -r id sum; do
		"$M" "$TMP/spool" show "$id" | awk 'f; /^$/ && !f {f=1}' |
			awk 'BEGIN{skip=1} skip && /^(Received:|\t)/ {next} {skip=0; print}' ORS='\n' >"$TMP/body"
		got=$(sha256sum <"$TMP/body" | cut -d' ' -f1)
		[ "$got" = "$sum" ] || { bad=$((bad + 1)); echo "$name: message $id differs"; }
	done <"$TMP/sent.txt"
	[ $bad = 0 ] || fail "$name: $bad messages not byte-exact in the spool"
	echo "$name: $count messages byte-exact in the spool"
}

# A load this size raises thousands of signals with DPDK's scheme (phase 3);
# without it the relay's quiet threads wake only for their own timers.
phase "one worker" 200 "-l 0-1" off
[ "$MODE_STAT" = 1 ] || fail "one worker: port_tap_signal_off is ${MODE_STAT:-absent}, not 1"
[ "$ASYNC" = 0 ] || fail "one worker: $ASYNC tun fds still have O_ASYNC"
[ "$SIGNALS" -lt 200 ] || fail "one worker: $SIGNALS signals/wake-ups during the load"
off1=$SIGNALS

phase "two workers" 200 "--lcores=0@0,1@1,2@1" off
[ "$MODE_STAT" -ge 1 ] || fail "two workers: port_tap_signal_off is ${MODE_STAT:-absent}"
[ "$ASYNC" = 0 ] || fail "two workers: $ASYNC tun fds still have O_ASYNC"
[ "$SIGNALS" -lt 200 ] || fail "two workers: $SIGNALS signals/wake-ups during the load"

phase "signal kept" 100 "-l 0-1" keep
[ "$MODE_STAT" = 0 ] || fail "signal kept: port_tap_signal_off is ${MODE_STAT:-absent}, not 0"
[ "$ASYNC" -ge 1 ] || fail "signal kept: no tun fd has O_ASYNC"
# DPDK's scheme: about one signal per packet received; the check above must see them.
[ "$SIGNALS" -gt $((RXPKTS / 4)) ] && [ "$SIGNALS" -gt $((off1 * 3)) ] ||
	fail "signal kept: only $SIGNALS signals for $RXPKTS packets: the count cannot tell the modes apart"
echo "ok: no per-packet signals with the trigger moved by the stack ($off1 vs $SIGNALS with DPDK's)"
