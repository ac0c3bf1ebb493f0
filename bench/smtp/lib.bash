# bench/smtp/lib.bash - shared pieces of the SMTP acceptance benchmarks (sourced by
# accept-mxrelay and accept-compare; not run on its own).
#
# mx_run starts mxrelay on its own TAP (mxb0, 10.77.200.0/24) with a fresh spool under
# /var/tmp, drives it with Postfix's smtp-source, stops it and counts what the spool holds.
# pf_setup/pf_run/pf_teardown do the same for a private Postfix instance on 127.0.0.1:2525
# ($PF_PORT).  bench/compare (relaying to smtp-sink, with Haraka too) uses the pieces below
# that start with mx_, pf_, hk_, cg_ and sink_.
# Every command has a timeout, only loopback and our own TAP addresses are used, and
# bench_cleanup (trap EXIT) stops whatever was started and removes every directory made.

set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${MX_BUILD:-$ROOT/build}
HZ=$(getconf CLK_TCK)
WORK=$(mktemp -d /var/tmp/mxbench.XXXXXX) # a real disk (ext4), not tmpfs
chmod 755 "$WORK"                          # the postfix user must reach its queue below
MX_IF=${MX_IF:-mxb0}      # overridable so parallel runs do not collide
MX_NET=${MX_NET:-10.77.200}
MX_PID=
PF_CONF=''
PF_UP=0
PF_CG=''
SINK_PID='' SINK_CG='' HK_PID='' HK_CG='' SRC_CG=''
SRC_PROCS=1 # smtp-source processes per load (source_load splits sessions and messages)
SMTP_TIMEOUT=${SMTP_TIMEOUT:-600} # seconds for one smtp-source load
PF_PORT=2525                      # the private Postfix's smtpd on 127.0.0.1

bench_cleanup() {
	sink_stop
	hk_stop
	src_stop
	if [ -n "$MX_PID" ]; then
		kill -TERM "$MX_PID" 2>/dev/null
		for _ in $(seq 100); do kill -0 "$MX_PID" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$MX_PID" 2>/dev/null
		MX_PID=
	fi
	pf_teardown
	local cg
	for cg in /sys/fs/cgroup/cpuacct/mxbench-$$-*; do cg_remove "$cg"; done
	rm -rf "$WORK" /var/run/dpdk/mxbench-$$
}
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

die() {
	echo "accept bench: $*" >&2
	exit 1
}

# now: wall clock in seconds with nanoseconds.
now() { date +%s.%N; }

# ticks PID: user+system CPU of a whole process (all its threads), in clock ticks.
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }

# worker_tid PID: the thread of the relay's first worker lcore (DPDK names it
# "rte-worker-1" in DPDK 22.11, "dpdk-worker1" in later versions).
worker_tid() {
	local t
	for t in /proc/"$1"/task/*; do
		grep -Eq 'worker-?1$' "$t/comm" 2>/dev/null && {
			basename "$t"
			return 0
		}
	done
	return 1
}

# tsys PID TID: system-mode CPU of one thread, in clock ticks (for the worker, mostly
# the TAP PMD's read/write system calls and the spool's io_uring submissions).
tsys() { awk '{ print $15 }' "/proc/$1/task/$2/stat" 2>/dev/null || echo 0; }

# tticks PID TID: CPU of one thread, in clock ticks.
tticks() { awk '{ print $14 + $15 }' "/proc/$1/task/$2/stat" 2>/dev/null || echo 0; }

# thread_ticks PID: "name ticks" per thread of PID, summed by thread name (io_uring
# workers come and go; their name is shared).
thread_ticks() {
	local t
	for t in /proc/"$1"/task/*; do
		printf '%s %s\n' "$(tr ' ' _ <"$t/comm" 2>/dev/null)" \
			"$(awk '{ print $14 + $15 }' "$t/stat" 2>/dev/null)"
	done | awk 'NF == 2 { s[$1] += $2 } END { for (k in s) print k, s[k] }' | sort
}

# thread_report BEFORE AFTER MESSAGES WALL: per-thread CPU (us per message, share of a
# CPU) between two thread_ticks snapshots, on stderr; the threads that used any.
thread_report() {
	join -a 2 -e 0 -o 0,1.2,2.2 "$1" "$2" | awk -v hz="$HZ" -v m="$3" -v w="$4" '
		{ d = $3 - $2; if (d > 0) printf "  thread %-18s %6.1f us/msg  %.2f CPU\n", $1, d / hz * 1e6 / m, d / hz / w }' >&2
}

# ctl_stat SOCKET NAME: a counter summed over workers from `mxctl stats` (0 if absent).
ctl_stat() {
	timeout 10 "$BUILD/tools/mxctl/mxctl" -s "$1" -t 5 stats 2>/dev/null |
		awk -v k="$2" '$1 == k { for (i = 2; i <= NF; i++) if ($i ~ /^[0-9]+$/) { s += $i; break } }
			END { print s + 0 }'
}

# source_load HOST:PORT SESSIONS MESSAGES SIZE: one smtp-source load.  Each message is
# its own connection (smtp-source's default, the way most device firmware sends), from
# dev@fleet.test to ops@fleet.test.  With SRC_PROCS=P > 1, P smtp-source processes run at
# once, sharing the sessions and messages (the first ones take the remainders).  In the
# cgroup $SRC_CG when set (so their CPU can be read).  Prints the wall seconds it took.
source_load() {
	local t0 t1 rc=0 p=${SRC_PROCS:-1} i s m pids=()
	[ "$p" -ge 1 ] && [ "$p" -le "$2" ] && [ "$p" -le "$3" ] || { echo "bad SRC_PROCS=$p" >&2; return 1; }
	t0=$(now)
	for i in $(seq 0 $((p - 1))); do
		s=$(($2 / p + (i < $2 % p ? 1 : 0)))
		m=$(($3 / p + (i < $3 % p ? 1 : 0)))
		sh -c '[ -z "$1" ] || echo $$ >"$1/cgroup.procs"; shift; exec "$@"' sh "${SRC_CG:-}" \
			timeout "$SMTP_TIMEOUT" smtp-source -s "$s" -m "$m" -l "$4" -f dev@fleet.test \
			-t ops@fleet.test "$1" >"$WORK/source.$i.log" 2>&1 &
		pids+=($!)
	done
	for i in "${!pids[@]}"; do
		wait "${pids[$i]}" || { rc=$?; tail -5 "$WORK/source.$i.log" >&2; }
	done
	t1=$(now)
	[ $rc = 0 ] || return 1
	echo "$t1 - $t0" | bc -l
}

# mx_start DURABILITY [SMTP_EXTRA [RELAY_EXTRA [MORE_SECTIONS]]]: start mxrelay on its TAP
# ($MX_IF, $MX_NET.2; the host side $MX_NET.1 may relay) with a fresh spool in $WORK/mx/spool
# and its control socket at $WORK/mx/ctl.sock; returns once the TAP and the socket are up.
# The extras are lines added to [smtp] and [relay], and whole sections appended.
# Main shell only (it sets MX_PID for the EXIT trap).
mx_start() {
	local dur=$1 smtp_extra=${2:-} relay_extra=${3:-} more=${4:-}
	local dir=$WORK/mx
	[ -x "$BUILD/app/mxrelay/mxrelay" ] || die "no $BUILD/app/mxrelay/mxrelay (ninja -C $BUILD)"
	rm -rf "$dir"
	mkdir -p "$dir"
	cat >"$dir/r.conf" <<CONF
[eal]
args = -l 0-1 --no-huge -m 512 --no-pci --no-telemetry --file-prefix=mxbench-$$ --vdev=net_tap0,iface=$MX_IF
mbufs = 16383

[port.0]
addr = $MX_NET.2/24
host_addr = $MX_NET.1/24

[smtp]
hostname = relay.mxrelay.test
listen = 25
$smtp_extra

[relay]
allow_networks = $MX_NET.0/24
$relay_extra

[spool]
dir = $dir/spool
durability = $dur

[control]
socket = $dir/ctl.sock
http_listen =

[log]
level = warning
$more
CONF
	timeout 20 "$BUILD/app/mxrelay/mxrelay" --check-config "$dir/r.conf" >"$dir/check.log" 2>&1 ||
		{ cat "$dir/check.log" >&2; die "mxrelay rejects the bench config"; }
	"$BUILD/app/mxrelay/mxrelay" --config "$dir/r.conf" >"$dir/relay.log" 2>&1 &
	MX_PID=$!
	local up=0
	for _ in $(seq 300); do
		kill -0 "$MX_PID" 2>/dev/null || break
		if ip -4 addr show dev "$MX_IF" 2>/dev/null | grep -q "inet $MX_NET.1/" &&
			[ -S "$dir/ctl.sock" ]; then
			up=1
			break
		fi
		sleep 0.1
	done
	[ $up = 1 ] || { tail -20 "$dir/relay.log" >&2; die "mxrelay did not come up"; }
}

# mx_stop: SIGTERM, bounded wait; dies if the relay does not stop.
mx_stop() {
	[ -n "$MX_PID" ] || return 0
	kill -TERM "$MX_PID"
	for _ in $(seq 100); do kill -0 "$MX_PID" 2>/dev/null || break; sleep 0.1; done
	kill -0 "$MX_PID" 2>/dev/null && die "mxrelay did not stop on SIGTERM"
	wait "$MX_PID" 2>/dev/null
	MX_PID=
}

# mx_spool_messages: messages the (stopped) relay's spool still holds.
mx_spool_messages() {
	timeout 120 "$BUILD/tools/mxspool/mxspool" "$WORK/mx/spool" count 2>/dev/null |
		awk '$1 == "messages" { print $2 }'
}

# mx_run SESSIONS MESSAGES SIZE DURABILITY: one measured mxrelay run.  Writes
# "msgs_per_s accepted wall_s cpu_s worker_busy idle_sleeps worker_sys_share" to
# $WORK/result.  Runs in
# the main shell (never in $(...)) so that the EXIT trap knows what to stop.
mx_run() {
	local s=$1 m=$2 size=$3 dur=$4
	local dir=$WORK/mx
	rm -f "$WORK/result"
	# 10.77.200.1 (the host side of the TAP, where smtp-source connects from) may relay;
	# the recipient's domain is local too, so either rule accepts it.
	mx_start "$dur" "local_domains = fleet.test"
	# The first SYN needs ARP; one probe session so the load starts warm.
	timeout 30 smtp-source -s 1 -m 1 -l 100 -f dev@fleet.test -t ops@fleet.test \
		$MX_NET.2:25 >/dev/null 2>&1 || { tail -20 "$dir/relay.log" >&2; die "mxrelay does not answer"; }
	local tid c0 c1 w0 w1 k0=0 k1=0 sl0 sl1 wall
	tid=$(worker_tid "$MX_PID") || tid=
	sl0=$(ctl_stat "$dir/ctl.sock" idle_sleeps)
	c0=$(ticks "$MX_PID")
	w0=0
	[ -n "$tid" ] && w0=$(tticks "$MX_PID" "$tid") && k0=$(tsys "$MX_PID" "$tid")
	[ -n "${MX_BENCH_THREADS:-}" ] && thread_ticks "$MX_PID" >"$WORK/thr0"
	wall=$(source_load $MX_NET.2:25 "$s" "$m" "$size") ||
		{ tail -20 "$dir/relay.log" >&2; die "smtp-source against mxrelay failed"; }
	c1=$(ticks "$MX_PID")
	w1=0
	[ -n "$tid" ] && w1=$(tticks "$MX_PID" "$tid") && k1=$(tsys "$MX_PID" "$tid")
	[ -n "${MX_BENCH_THREADS:-}" ] && thread_ticks "$MX_PID" >"$WORK/thr1"
	sl1=$(ctl_stat "$dir/ctl.sock" idle_sleeps)
	if [ -n "${MX_BENCH_THREADS:-}" ]; then
		thread_report "$WORK/thr0" "$WORK/thr1" "$m" "$wall"
		timeout 10 "$BUILD/tools/mxctl/mxctl" -s "$dir/ctl.sock" -t 5 stats 2>/dev/null |
			awk '$1 == "port_tap_signal_off" { print "  port_tap_signal_off (all workers)", $2 }' >&2
	fi
	mx_stop
	local accepted
	accepted=$(mx_spool_messages)
	accepted=$((${accepted:-0} - 1)) # less the warm-up message
	rm -rf "$dir"
	[ "$accepted" = "$m" ] || die "mxrelay spool holds $accepted of $m messages"
	local busy=0 ksh=0
	[ -n "$tid" ] || echo "accept bench: worker thread not found; worker figures are 0" >&2
	[ -n "$tid" ] && busy=$(echo "($w1 - $w0) / $HZ / $wall" | bc -l)
	[ -n "$tid" ] && [ "$w1" != "$w0" ] && ksh=$(echo "($k1 - $k0) / ($w1 - $w0)" | bc -l)
	printf '%.1f %d %.3f %.3f %.3f %d %.3f\n' "$(echo "$m / $wall" | bc -l)" "$accepted" "$wall" \
		"$(echo "($c1 - $c0) / $HZ" | bc -l)" "$busy" $((sl1 - sl0)) "$ksh" >"$WORK/result"
}

# pf_setup [hold | relay HOST:PORT]: a private Postfix instance under $WORK/pf (config,
# queue, data), smtpd on 127.0.0.1:$PF_PORT, logs to a file of its own.  hold (the
# default): every message is put on hold (see README.md); relay: every message is relayed
# to HOST:PORT (relayhost, Postfix's delivery defaults otherwise; see bench/compare).
pf_setup() {
	command -v postfix >/dev/null || die "postfix not installed"
	local d=$WORK/pf mode=${1:-hold} next=${2:-} relay_domains=fleet.test
	local policy='# Accept, fsync, and keep: every message goes to the hold queue, never delivered.
smtpd_recipient_restrictions = check_recipient_access static:HOLD
# in_flow_delay throttles smtpd when qmgr delivers more slowly than mail arrives;
# nothing is delivered here (held), so it would only measure the throttle.
in_flow_delay = 0'
	if [ "$mode" = relay ]; then
		policy="# Relay everything from mynetworks to one next hop; the rest are Postfix's defaults
# (default_destination_concurrency_limit 20, connection cache on demand).
relayhost = [${next%:*}]:${next##*:}
in_flow_delay = ${PF_IN_FLOW_DELAY:-1s}
smtp_tls_security_level = none"
		relay_domains= # fleet.test is then in the default class, which relayhost covers
	fi
	PF_CONF=$d/etc
	mkdir -p "$PF_CONF" "$d/queue" "$d/data"
	chown postfix "$d/data"
	cat >"$PF_CONF/main.cf" <<CONF
# Private benchmark instance made by bench/smtp (removed when the bench ends).
compatibility_level = 3.6
queue_directory = $d/queue
data_directory = $d/data
maillog_file = $d/maillog
myhostname = pfbench.mxrelay.test
mydomain = mxrelay.test
myorigin = \$myhostname
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
mydestination =
relay_domains = $relay_domains
local_recipient_maps =
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
$policy
smtpd_peername_lookup = no
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
default_process_limit = 200
biff = no
alias_maps =
alias_database =
CONF
	# Only the services an accepting instance needs; chroot off (the queue is ours).
	cat >"$PF_CONF/master.cf" <<CONF
127.0.0.1:$PF_PORT inet n  -  n  -  150 smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
relay     unix  -       -       n       -       -       smtp
smtp      unix  -       -       n       -       -       smtp
CONF
	timeout 60 postfix -c "$PF_CONF" check >"$d/check.log" 2>&1 ||
		{ cat "$d/check.log" >&2; die "postfix check failed"; }
}

# pf_start: start the instance, inside a cpuacct cgroup of its own when cgroup v1
# cpuacct is writable (so the CPU of short-lived smtpd processes is counted too).
pf_start() {
	local cg=/sys/fs/cgroup/cpuacct/mxbench-$$
	PF_CG=
	# `postfix check` also makes the queue's subdirectories (post-install create-missing).
	timeout 60 postfix -c "$PF_CONF" check >>"$WORK/pf/start.log" 2>&1 ||
		{ cat "$WORK/pf/start.log" >&2; die "postfix check failed"; }
	if mkdir "$cg" 2>/dev/null; then
		PF_CG=$cg
	fi
	if [ -n "$PF_CG" ]; then
		timeout 60 sh -c 'echo $$ > "$1/cgroup.procs" && exec postfix -c "$2" start' sh \
			"$PF_CG" "$PF_CONF" >>"$WORK/pf/start.log" 2>&1
	else
		timeout 60 postfix -c "$PF_CONF" start >>"$WORK/pf/start.log" 2>&1
	fi || { cat "$WORK/pf/start.log" >&2; die "postfix start failed"; }
	PF_UP=1
	for _ in $(seq 100); do
		timeout 5 bash -c "exec 3<>/dev/tcp/127.0.0.1/$PF_PORT" 2>/dev/null && return 0
		sleep 0.1
	done
	die "postfix smtpd does not listen on 127.0.0.1:$PF_PORT"
}

pf_stop() {
	[ "$PF_UP" = 1 ] || return 0
	timeout 60 postfix -c "$PF_CONF" stop >/dev/null 2>&1 ||
		timeout 30 postfix -c "$PF_CONF" abort >/dev/null 2>&1
	local pidf=$WORK/pf/queue/pid/master.pid pid
	pid=$(awk '{print $1}' "$pidf" 2>/dev/null)
	for _ in $(seq 100); do
		[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	PF_UP=0
	if [ -n "$PF_CG" ]; then
		# Wait (bounded) for the last processes to leave the cgroup, then remove it.
		for _ in $(seq 100); do
			[ -s "$PF_CG/cgroup.procs" ] || break
			sleep 0.1
		done
		for p in $(cat "$PF_CG/cgroup.procs" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
		sleep 0.2
		rmdir "$PF_CG" 2>/dev/null
		PF_CG=
	fi
}

pf_teardown() {
	pf_stop
	rm -rf "$WORK/pf"
}

# pf_cpu: CPU seconds used so far by the instance (cgroup), or by its live processes
# plus what the master has reaped (no cgroup).
pf_cpu() {
	if [ -n "$PF_CG" ]; then
		echo "$(cat "$PF_CG/cpuacct.usage") / 1000000000" | bc -l
		return
	fi
	local master t=0 p
	master=$(awk '{print $1}' "$WORK/pf/queue/pid/master.pid" 2>/dev/null)
	[ -n "$master" ] || { echo 0; return; }
	t=$(awk '{ print $14 + $15 + $16 + $17 }' "/proc/$master/stat")
	for p in $(pgrep -P "$master"); do
		t=$((t + $(ticks "$p")))
	done
	echo "$t / $HZ" | bc -l
}

# pf_run SESSIONS MESSAGES SIZE: one measured Postfix run on a fresh instance.  Writes
# "msgs_per_s accepted wall_s cpu_s" to $WORK/result (main shell only, as mx_run).
pf_run() {
	local s=$1 m=$2 size=$3 q=$WORK/pf/queue
	rm -f "$WORK/result"
	rm -rf "$q"
	mkdir -p "$q"
	pf_start
	timeout 30 smtp-source -s 1 -m 1 -l 100 -f dev@fleet.test -t ops@fleet.test \
		127.0.0.1:$PF_PORT >/dev/null 2>&1 || die "postfix does not accept the warm-up message"
	local c0 c1 wall
	c0=$(pf_cpu)
	wall=$(source_load 127.0.0.1:$PF_PORT "$s" "$m" "$size") || die "smtp-source against postfix failed"
	c1=$(pf_cpu)
	pf_stop
	local held
	held=$(find "$q/hold" -type f 2>/dev/null | wc -l)
	held=$((held - 1))
	[ "$held" = "$m" ] || { tail -5 "$WORK/pf/maillog" >&2; die "postfix holds $held of $m messages"; }
	printf '%.1f %d %.3f %.3f\n' "$(echo "$m / $wall" | bc -l)" "$held" "$wall" \
		"$(echo "$c1 - $c0" | bc -l)" >"$WORK/result"
}

# ---- cgroups, the sink and Haraka (bench/compare) -------------------------------------

# cg_new NAME: print a new cpuacct cgroup /sys/fs/cgroup/cpuacct/mxbench-$$-NAME, or
# nothing when cgroup v1 cpuacct is not writable.  bench_cleanup removes it.
cg_new() {
	local cg=/sys/fs/cgroup/cpuacct/mxbench-$$-$1
	[ -d "$cg" ] || mkdir "$cg" 2>/dev/null || return 0
	echo "$cg"
}

# cg_cpu CG: CPU seconds used in the cgroup so far (0 without one).
cg_cpu() {
	[ -n "$1" ] && [ -r "$1/cpuacct.usage" ] || { echo 0; return; }
	echo "$(cat "$1/cpuacct.usage") / 1000000000" | bc -l
}

# cg_remove CG: kill what is left in it (these are only our own processes), remove it.
cg_remove() {
	[ -d "$1" ] || return 0
	local p procs
	for _ in $(seq 50); do
		procs=$(cat "$1/cgroup.procs" 2>/dev/null) # (a cgroup file's size is always 0)
		[ -n "$procs" ] || break
		for p in $procs; do kill -9 "$p" 2>/dev/null; done
		sleep 0.1
	done
	rmdir "$1" 2>/dev/null
}

# src_stop: kill smtp-source processes left in $SRC_CG (after an interrupted load).
src_stop() {
	[ -n "$SRC_CG" ] || return 0
	cg_remove "$SRC_CG"
	SRC_CG=
}

# sink_start ADDR:PORT: Postfix's smtp-sink on ADDR:PORT, for at most SMTP_TIMEOUT + 300 s,
# in a cgroup of its own; -c keeps its running counters in $WORK/sink.out.  (Not -M: the
# sink exits on the count before its last 250 reaches the relay, which then defers that
# message and sends it again.)
sink_start() {
	rm -f "$WORK/sink.out"
	SINK_CG=$(cg_new sink)
	sh -c '[ -z "$1" ] || echo $$ >"$1/cgroup.procs"; shift; exec "$@"' sh "$SINK_CG" \
		timeout $((SMTP_TIMEOUT + 300)) smtp-sink -u nobody -c "$1" 256 >"$WORK/sink.out" 2>&1 &
	SINK_PID=$!
	for _ in $(seq 100); do
		ss -ltnH "( sport = :${1##*:} )" 2>/dev/null | grep -q " ${1} " && return 0
		kill -0 "$SINK_PID" 2>/dev/null || break
		sleep 0.1
	done
	cat "$WORK/sink.out" >&2
	die "smtp-sink did not listen on $1"
}

# sink_count: messages the sink has received so far (its last "mesg=" counter).
sink_count() {
	tail -c 200 "$WORK/sink.out" 2>/dev/null | tr '\r' '\n' | awk -F'mesg=' 'NF > 1 { n = $2 + 0 } END { print n + 0 }'
}

# sink_wait_count N SECONDS: until the sink has N messages, polled every 50 ms (one
# tail, tr and awk each time: a few ms of CPU a second); SINK_END = the time it was seen.
# 1 on timeout.
sink_wait_count() {
	SINK_END=
	for _ in $(seq $(($2 * 20))); do
		[ "$(sink_count)" -ge "$1" ] && SINK_END=$(now) && return 0
		sleep 0.05
	done
	return 1
}

# sink_stop: SIGTERM to the timeout process (it passes it on to smtp-sink), then whatever
# is left in the sink's cgroup is killed.
sink_stop() {
	[ -n "$SINK_PID" ] || return 0
	kill -TERM "$SINK_PID" 2>/dev/null
	for _ in $(seq 50); do kill -0 "$SINK_PID" 2>/dev/null || break; sleep 0.1; done
	kill -9 "$SINK_PID" 2>/dev/null
	wait "$SINK_PID" 2>/dev/null
	SINK_PID=
	cg_remove "$SINK_CG"
	SINK_CG=
}

# Haraka 3 from npm, installed once into a cache directory (a second run needs no network).
HK_CACHE=${MX_HARAKA_CACHE:-/var/cache/mxrelay-bench/haraka}
HK_VERSION=${MX_HARAKA_VERSION:-3.3.4}
HK_PORT=2566
HK_NODES=${HK_NODES:-0} # smtp.ini nodes: 0 = one process (Haraka's default); N = cluster of N

# hk_install: node (>= 20, Haraka 3.3's floor) and Haraka $HK_VERSION under $HK_CACHE.
hk_install() {
	command -v node >/dev/null && command -v npm >/dev/null ||
		{ timeout 600 apt-get install -y nodejs npm >"$WORK/apt.log" 2>&1 ||
			{ tail -5 "$WORK/apt.log" >&2; die "apt-get install nodejs npm failed"; }; }
	local major
	major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null)
	[ "${major:-0}" -ge 20 ] || die "node $(node --version) is too old for Haraka 3.3 (needs >= 20)"
	local have
	have=$(node -p "require('$HK_CACHE/node_modules/Haraka/package.json').version" 2>/dev/null)
	[ "$have" = "$HK_VERSION" ] && return 0
	mkdir -p "$HK_CACHE"
	echo "installing Haraka $HK_VERSION into $HK_CACHE (npm)"
	timeout 600 npm install --prefix "$HK_CACHE" --no-audit --no-fund --omit=optional \
		"Haraka@$HK_VERSION" >"$WORK/npm.log" 2>&1 ||
		{ tail -10 "$WORK/npm.log" >&2; die "npm install Haraka@$HK_VERSION failed"; }
}

# hk_setup SINK_HOST:PORT: a Haraka instance in $WORK/hk listening on 127.0.0.1:$HK_PORT.
# Loopback clients may relay; every message goes to Haraka's outbound queue (queue file
# written with an fsync before the 250, see bench/smtp/README.md) and is delivered from
# there to the one next hop the plugin returns from get_mx.  No rDNS lookup of clients
# (like Postfix's smtpd_peername_lookup = no), no TLS, log level warn.
hk_setup() {
	local d=$WORK/hk host=${1%:*} port=${1##*:}
	rm -rf "$d"
	mkdir -p "$d/config" "$d/plugins" "$d/queue"
	cp "$HK_CACHE/node_modules/Haraka/config/connection.ini" "$d/config/"
	printf '[main]\nlisten=127.0.0.1:%s\nnodes=%s\nforce_shutdown_timeout=5\n' "$HK_PORT" \
		"$HK_NODES" >"$d/config/smtp.ini"
	[ "$HK_NODES" = 0 ] && sed -i '/^nodes=/d' "$d/config/smtp.ini"
	printf 'mxbench_relay\n' >"$d/config/plugins"
	printf '[main]\nlevel=warn\ntimestamps=true\n' >"$d/config/log.ini"
	printf 'haraka.mxrelay.test\n' >"$d/config/me"
	# 20 deliveries in flight, as mxrelay's [queue] max_connections and Postfix's
	# default_destination_concurrency_limit here.
	printf '[main]\nconcurrency_max=20\nenable_tls=false\n' >"$d/config/outbound.ini"
	cat >"$d/plugins/mxbench_relay.js" <<JS
// mxbench_relay - made by bench/smtp/lib.bash for bench/compare (removed with the instance).
// Loopback clients may relay; every message goes to the outbound queue and from there to
// one fixed next hop, the benchmark's smtp-sink.
exports.hook_lookup_rdns = function (next, connection) {
    next(OK, 'localhost')
}
exports.hook_connect_init = function (next, connection) {
    if (connection.remote.ip === '127.0.0.1') connection.relaying = true
    next()
}
exports.hook_rcpt = function (next, connection) {
    next(connection.relaying ? OK : DENY)
}
exports.hook_get_mx = function (next, hmail, domain) {
    next(OK, { priority: 0, exchange: '$host', port: $port })
}
JS
}

# hk_start: start the instance (in a cgroup of its own), wait for it to listen.
hk_start() {
	local d=$WORK/hk
	HK_CG=$(cg_new haraka)
	sh -c '[ -z "$1" ] || echo $$ >"$1/cgroup.procs"; shift; exec "$@"' sh "$HK_CG" \
		node "$HK_CACHE/node_modules/Haraka/bin/haraka" -c "$d" >"$d/haraka.log" 2>&1 &
	HK_PID=$!
	for _ in $(seq 300); do
		kill -0 "$HK_PID" 2>/dev/null || break
		timeout 5 bash -c "exec 3<>/dev/tcp/127.0.0.1/$HK_PORT" 2>/dev/null && return 0
		sleep 0.1
	done
	tail -20 "$d/haraka.log" >&2
	die "haraka does not listen on 127.0.0.1:$HK_PORT"
}

# hk_stop: SIGTERM, bounded wait, then whatever is left in its cgroup is killed.
hk_stop() {
	[ -n "$HK_PID" ] || return 0
	kill -TERM "$HK_PID" 2>/dev/null
	for _ in $(seq 150); do kill -0 "$HK_PID" 2>/dev/null || break; sleep 0.1; done
	kill -9 "$HK_PID" 2>/dev/null
	wait "$HK_PID" 2>/dev/null
	HK_PID=
	cg_remove "$HK_CG"
	HK_CG=
}

# hk_queued: files left in Haraka's outbound queue.
hk_queued() { find "$WORK/hk/queue" -type f 2>/dev/null | wc -l; }

# pf_queued: files left in the private Postfix's queues.
pf_queued() {
	local q=$WORK/pf/queue
	find "$q/maildrop" "$q/incoming" "$q/active" "$q/deferred" "$q/hold" -type f 2>/dev/null | wc -l
}

# median of the numbers on stdin.
median() { sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

# bench_preflight: root, TAP, tools, a free interface name.
bench_preflight() {
	[ "$(id -u)" = 0 ] || die "needs root (TAP, postfix instance)"
	[ -c /dev/net/tun ] || die "no /dev/net/tun"
	command -v smtp-source >/dev/null || die "smtp-source not installed (apt-get install postfix)"
	command -v bc >/dev/null || die "bc not installed"
	ip link show $MX_IF >/dev/null 2>&1 && die "$MX_IF already exists (another bench running?)"
	return 0
}
