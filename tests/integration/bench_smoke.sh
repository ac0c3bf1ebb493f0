#!/usr/bin/env bash
# bench_smoke: every benchmark scenario of bench/scenarios/ end to end at a
# low rate for a few seconds, checking that the counts add up rather than
# measuring anything.  For every scenario:
#   offered = accepted + rejected, nothing unfinished, something offered;
#   where mxsink received mail: no digest mismatch, no missing tag, no duplicate;
#   direct path: mxsink verified every accepted message (unless faults are injected);
#   accept path: the relay's smtp_messages_accepted == mxgen's accepted;
#   deliver path (mxgen -> mxrelay -> mxsink): nothing rejected, and
#     accepted x rcpts = delivered + queued + bounced (the relay's counters),
#     mxsink received what the relay counts as delivered.
# And per scenario:
#   faults     mxgen's rejections by code == the sink's injected failures;
#   fleet-tls  TLS handshakes on the device side, full > 0 and resumed > 0,
#              and the relay saw as many;
#   batch      the relay's outbound TLS to mxsink: full > 0 and resumed > 0;
#   smarthost  everything went to mxsink's port 587, over TLS, each session with AUTH;
#   dkim       every message mxsink received carries a DKIM-Signature.
#   backlog-*  (delivery alone: a fill of 2000 messages held in the relay's queue,
#              then released; bench/run fails a run where anything left while
#              held) outbound sessions carried the mail; the TLS ones did full
#              handshakes, backlog-tls resumed too; the 100-domain ones used
#              at least one session per domain.
# Plus the old faults check with mxgen's --dns-check against mxsink's zone,
# STARTTLS + AUTH from mxgen to mxsink's submission port (right and wrong password),
# mxsink catching mxgen's deliberately corrupted messages (--corrupt) while devices
# reuse their few source ports (--device-ports) within TIME_WAIT, and fleet-plain
# with the load side as one process (--load-proc one: bench/mxload), with devices
# that do not pipeline (--no-pipelining) and with two workers a side (--cores 0-1:0-1), and bench/sweep at one rate far below saturation.
# DPDK processes over net_memif (10.77.110.0/24 and 10.77.111.0/24, private
# to the links).  Runs in about 2 minutes.  MX_BUILD: the build directory
# (default build/).
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT" || exit 1
B=${MX_BUILD:-build}
export MX_BUILD=$B
TMP=$(mktemp -d /tmp/mxit-bench.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
T_START=$(date +%s)

[ "$(id -u)" = 0 ] || { echo "skip: DPDK memif needs root here"; exit 77; }
for bin in bench/mxgen/mxgen bench/mxsink/mxsink bench/mxload/mxload app/mxrelay/mxrelay \
	tools/mxctl/mxctl tools/mxdkim/mxdkim; do
	[ -x "$B/$bin" ] || { echo "skip: $B/$bin not built"; exit 77; }
done
command -v openssl >/dev/null || { echo "skip: no openssl for the demo certificate"; exit 77; }

# field NAME: the value of NAME=... in the last RESULT line ($R)
field() { echo "$R" | tr ' ' '\n' | awk -F= -v k="$1" '$1 == k {print $2; f = 1; exit} END {if (!f) print "-1"}'; }

run() { # NAME ARGS...: runs bench/run, leaves its RESULT line in $R
	local name=$1
	shift
	timeout 120 bench/run "$@" --quiet --no-plot --out "$TMP/out-$name" >"$TMP/$name.out" 2>&1
	local rc=$?
	cat "$TMP/$name.out"
	[ $rc = 0 ] || fail "bench/run $* exited $rc"
	R=$(grep '^RESULT ' "$TMP/$name.out" | tail -1)
	[ -n "$R" ] || fail "bench/run $*: no RESULT line"
}

common_checks() { # NAME PATH
	local n=$1 path=$2
	off=$(field offered) acc=$(field accepted) rej=$(field rejected) unf=$(field unfinished)
	[ "$off" -gt 50 ] || fail "$n: only $off offered"
	[ "$off" = $((acc + rej + unf)) ] || fail "$n: offered $off != $acc + $rej + $unf"
	[ "$unf" = 0 ] || fail "$n: $unf unfinished"
	[ "$(field tls_failures)" = 0 ] || fail "$n: $(field tls_failures) TLS failures"
	if [ "$path" != accept ]; then
		for k in sink_corrupt sink_missing_tag sink_dup sink_tls_failures; do
			[ "$(field $k)" = 0 ] || fail "$n: $k = $(field $k)"
		done
	fi
	case $path in
	accept)
		[ "$rej" = 0 ] || fail "$n: $rej rejected"
		[ "$(field relay_accepted)" = "$acc" ] ||
			fail "$n: relay counted $(field relay_accepted), mxgen $acc"
		;;
	deliver)
		[ "$rej" = 0 ] || fail "$n: $rej rejected"
		[ "$(field relay_accepted)" = "$acc" ] ||
			fail "$n: relay counted $(field relay_accepted), mxgen $acc"
		local rc dl q bn
		rc=$(field rcpts) dl=$(field delivered) q=$(field queued) bn=$(field bounced)
		[ $((acc * rc)) = $((dl + q + bn)) ] ||
			fail "$n: accepted $acc x $rc rcpts != delivered $dl + queued $q + bounced $bn"
		[ "$dl" -gt 0 ] || fail "$n: nothing delivered"
		[ "$(field sink_received)" = "$dl" ] ||
			fail "$n: sink received $(field sink_received), relay delivered $dl"
		[ "$(field sink_ok)" = "$dl" ] || fail "$n: sink verified $(field sink_ok) of $dl"
		;;
	esac
}

path_of() { awk -F= '$1 ~ /^[ \t]*path[ \t]*$/ {gsub(/[ \t]/, "", $2); print $2; exit}' "$1"; }

n_scen=0
for f in bench/scenarios/*.conf; do
	name=$(basename "$f" .conf)
	path=$(path_of "$f")
	load=(--rate 200)
	grep -q -- '--concurrency' "$f" && load=(--concurrency 8)
	extra=()
	# resumption needs a device to come back: 50 devices at 200/s reconnect every 0.25 s
	[ "$name" = fleet-tls ] && extra=(--gen "--devices 50")
	# 600 messages over 10 domains: 60 each, so every destination reconnects (20 messages
	# per session in batch.conf) and resumes its TLS session
	[ "$name" = batch ] && extra=(--gen "--domains 10")
	# a small backlog: 2000 messages held, then delivered
	case $name in backlog-*) extra=(--gen "--max-messages 2000") ;; esac
	run "$name" "$f" --seconds 3 "${load[@]}" "${extra[@]}"
	common_checks "$name" "${path:-direct}"
	case $name in
	faults)
		r450=$(field rejected_450) r550=$(field rejected_550) r451=$(field rejected_451)
		s4=$(field sink_rcpt_4xx) s5=$(field sink_rcpt_5xx) st=$(field sink_tempfailed)
		[ "${r450/-1/0}" = "$s4" ] && [ "${r550/-1/0}" = "$s5" ] && [ "${r451/-1/0}" = "$st" ] ||
			fail "faults: mxgen saw 450/550/451 $r450/$r550/$r451, sink injected $s4/$s5/$st"
		[ "$rej" = $((s4 + s5 + st)) ] || fail "faults: rejected $rej != injected"
		;;
	direct | closed)
		[ "$rej" = 0 ] || fail "$name: $rej rejected"
		[ "$(field sink_ok)" = "$acc" ] || fail "$name: sink ok $(field sink_ok) != $acc"
		;;
	fleet-tls)
		[ "$(field tls_full)" -gt 0 ] && [ "$(field tls_resumed)" -gt 0 ] ||
			fail "fleet-tls: handshakes full $(field tls_full) resumed $(field tls_resumed)"
		[ $(($(field tls_full) + $(field tls_resumed))) = "$off" ] ||
			fail "fleet-tls: $off connections but $(field tls_full)+$(field tls_resumed) handshakes"
		[ "$(field relay_tls_server_handshakes_resumed)" = "$(field tls_resumed)" ] ||
			fail "fleet-tls: relay resumed $(field relay_tls_server_handshakes_resumed)"
		;;
	batch)
		[ "$(field relay_tls_client_handshakes_full)" -gt 0 ] &&
			[ "$(field relay_tls_client_handshakes_resumed)" -gt 0 ] ||
			fail "batch: relay outbound TLS full $(field relay_tls_client_handshakes_full)" \
				"resumed $(field relay_tls_client_handshakes_resumed)"
		[ "$(field sink_tls_resumed)" -gt 0 ] || fail "batch: sink saw no resumed session"
		[ "$(field relay_queue_sessions_reused)" -gt 0 ] || fail "batch: no session reused"
		;;
	smarthost)
		[ "$(field sink_conns_587)" -gt 0 ] || fail "smarthost: nothing came to 587"
		[ "$(field sink_tls_sessions)" -gt 0 ] || fail "smarthost: no TLS to the smarthost"
		# every session to 587 logged in (a session without AUTH delivers nothing there)
		[ "$(field sink_auth_ok)" = "$(field sink_conns_587)" ] &&
			[ "$(field sink_auth_failures)" = 0 ] ||
			fail "smarthost: AUTH ok $(field sink_auth_ok), failed $(field sink_auth_failures)," \
				"sessions $(field sink_conns_587)"
		;;
	backlog-*)
		[ "$acc" = 2000 ] || fail "$name: $acc accepted, 2000 expected"
		[ "$(field sessions)" -gt 0 ] && [ "$(field delivered_per_s)" -gt 0 ] ||
			fail "$name: sessions $(field sessions), delivered/s $(field delivered_per_s)"
		case $name in *-100) [ "$(field sessions)" -ge 100 ] ||
			fail "$name: $(field sessions) sessions for 100 domains" ;; esac
		case $name in backlog-tls*) [ "$(field out_tls_full)" -gt 0 ] ||
			fail "$name: no outbound TLS handshake" ;; esac
		[ "$name" != backlog-tls ] || [ "$(field out_tls_resumed)" -gt 0 ] ||
			fail "backlog-tls: no outbound TLS session resumed"
		;;
	dkim)
		[ "$(field sink_dkim_signed)" = "$(field sink_received)" ] ||
			fail "dkim: $(field sink_dkim_signed) of $(field sink_received) signed"
		[ "$(field relay_dkim_signed)" = "$acc" ] ||
			fail "dkim: relay signed $(field relay_dkim_signed) of $acc"
		;;
	esac
	n_scen=$((n_scen + 1))
done
[ "$n_scen" -ge 9 ] || fail "only $n_scen scenarios in bench/scenarios"

# faults with every fault kind at a high rate, and mxsink's DNS zone checked by mxgen
cat >"$TMP/faults2.conf" <<CONF
path = direct
gen = --rate 200 --devices 100 --size 200-3000 --rcpts 1 --literal-share 300 --dns-check 60
sink = --rcpt-4xx 50 --rcpt-5xx 50 --tempfail 100 --slow 50 --slow-ms 20
CONF
run faults2 "$TMP/faults2.conf" --seconds 3
common_checks faults2 direct
s4=$(field sink_rcpt_4xx) s5=$(field sink_rcpt_5xx) st=$(field sink_tempfailed)
[ "$s4" -gt 0 ] && [ "$s5" -gt 0 ] && [ "$st" -gt 0 ] || fail "faults2: some fault never fired"
[ "$rej" = $((s4 + s5 + st)) ] || fail "faults2: rejected $rej != injected $((s4 + s5 + st))"
[ "$(field sink_ok)" = $((off - s4 - s5)) ] ||
	fail "faults2: sink ok $(field sink_ok) != offered $off - RCPT rejections"
# every answer right; UDP over memif may lose a datagram when a CPU is taken away for a
# moment (nothing retransmits a query here), so up to 2 of 60 may go unanswered
[ "$(field dns_ok)" -ge 58 ] && [ "$(field dns_bad)" = 0 ] ||
	fail "faults2: DNS check: $(field dns_ok) of 60 ok, $(field dns_bad) bad"
# STARTTLS + AUTH on mxsink's 587 (a submission port with --auth): the right password
# delivers everything, a wrong one nothing (every session fails at AUTH, before MAIL)
for pw in s3cret wrong; do
	cat >"$TMP/auth-$pw.conf" <<CONF
path = direct
sink_tls = yes
sink = --auth dev:s3cret
gen = --rate 100 --devices 20 --size 1024 --rcpts 1 --tls starttls --tls-resume --auth dev:$pw --target 10.77.110.1:587
CONF
	run "auth-$pw" "$TMP/auth-$pw.conf" --seconds 2
	off=$(field offered) acc=$(field accepted) rej=$(field rejected)
	[ "$off" -gt 50 ] && [ "$(field unfinished)" = 0 ] || fail "auth-$pw: $off offered, $(field unfinished) unfinished"
	[ "$(field sink_conns_587)" = "$off" ] || fail "auth-$pw: $(field sink_conns_587) of $off on 587"
	if [ $pw = s3cret ]; then
		[ "$acc" = "$off" ] && [ "$(field sink_ok)" = "$off" ] || fail "auth: $acc of $off accepted"
		[ "$(field tls_resumed)" -gt 0 ] || fail "auth: no TLS session resumed"
	else
		[ "$rej" = "$off" ] && [ "$(field sink_received)" = 0 ] ||
			fail "auth with a wrong password: $acc accepted, $(field sink_received) received"
		[ "$(field sink_auth_failures)" = "$off" ] && [ "$(field sink_auth_ok)" = 0 ] ||
			fail "auth-wrong: sink counted $(field sink_auth_failures) failures"
	fi
done
# mxsink's verification catches corruption: mxgen changes the first body byte of ~10% of
# the messages after taking their digest (--corrupt); 50 devices with 2 source ports
# each (--device-ports) reuse every port within TIME_WAIT (1 s in bench/run's configs),
# so lib/net takes the old connection's place on both sides, and nothing may fail for it
run corrupt direct --seconds 3 --rate 200 --gen "--devices 50 --device-ports 2 --corrupt 100"
off=$(field offered) acc=$(field accepted) cor=$(field gen_corrupted)
[ "$off" -gt 300 ] && [ "$acc" = "$off" ] && [ "$(field unfinished)" = 0 ] ||
	fail "corrupt: $acc of $off accepted, $(field unfinished) unfinished"
[ "$cor" -gt 0 ] && [ "$(field sink_corrupt)" = "$cor" ] ||
	fail "corrupt: mxgen corrupted $cor, sink counted $(field sink_corrupt)"
[ "$(field sink_ok)" = $((acc - cor)) ] || fail "corrupt: sink ok $(field sink_ok) != $acc - $cor"
[ "$(field gen_device_ports_busy)" = 0 ] || fail "corrupt: device ports ran out"
# the load side as one process (bench/mxload: mxgen's and mxsink's roles in one loop)
run fleet-one fleet-plain --seconds 3 --rate 200 --load-proc one
common_checks fleet-one deliver
# devices without PIPELINING (--no-pipelining: one command a reply): mxgen wrote no
# pipelined flight, where fleet-plain (the relay offers PIPELINING) wrote one a message
run fleet-nopipe fleet-plain --seconds 3 --rate 200 --gen "--no-pipelining"
common_checks fleet-nopipe deliver
[ "$(field gen_pipelined_flights)" = 0 ] ||
	fail "fleet-nopipe: $(field gen_pipelined_flights) pipelined flights"
R=$(grep '^RESULT ' "$TMP/fleet-plain.out" | tail -1)
[ "$(field gen_pipelined_flights)" -ge "$(field accepted)" ] ||
	fail "fleet-plain: $(field gen_pipelined_flights) pipelined flights for $(field accepted) messages"
# --cores with two CPUs on each side: two worker lcores per process, memif with two
# queue pairs, lib/net's software flow dispatch; both relay workers accept and deliver
run fleet-2w fleet-plain --seconds 3 --rate 400 --cores 0-1:0-1
common_checks fleet-2w deliver
st=$TMP/out-fleet-2w/relay-stats.txt
for w in 0 1; do
	for k in smtp_messages_accepted queue_sent; do
		v=$(awk -v k="worker.$w.$k" '$1 == k {print $2}' "$st")
		[ "${v:-0}" -gt 0 ] || fail "fleet-2w: worker $w: $k = ${v:-none}"
	done
done
# bench/sweep: one rate far below saturation is sustained, and the summary line says so
# (--p99-ms 5000: this checks the sweep's machinery, not a latency a loaded CI machine keeps)
bench/sweep fleet-plain --from 300 --to 300 --seconds 4 --p99-ms 5000 >"$TMP/sweep.out" 2>&1 ||
	{ cat "$TMP/sweep.out"; fail "bench/sweep failed"; }
grep -q '^RATE r=300 run 1: .* ok$' "$TMP/sweep.out" || { cat "$TMP/sweep.out"; fail "sweep: 300/s not sustained"; }
grep -q '^SWEEP scenario=fleet-plain sustained_rate=300 first_failed=0 runs=1 p99_ms=5000$' "$TMP/sweep.out" ||
	{ cat "$TMP/sweep.out"; fail "sweep: no summary"; }
echo "bench_smoke: ok ($n_scen scenarios + faults2 + auth + corrupt + fleet-one + fleet-nopipe + fleet-2w + sweep in $(($(date +%s) - T_START)) s)"
