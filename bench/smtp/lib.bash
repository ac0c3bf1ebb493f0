# bench/smtp/lib.bash - shared pieces of the SMTP acceptance benchmarks (sourced by
# accept-mxrelay and accept-compare; not run on its own).
#
# mx_run starts mxrelay on its own TAP (mxb0, 10.77.200.0/24) with a fresh spool under
# /var/tmp, drives it with Postfix's smtp-source, stops it and counts what the spool holds.
# pf_setup/pf_run/pf_teardown do the same for a private Postfix instance on 127.0.0.1:2525.
# Every command has a timeout, only loopback and our own TAP addresses are used, and
# bench_cleanup (trap EXIT) stops whatever was started and removes every directory made.

set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${MX_BUILD:-$ROOT/build}
HZ=$(getconf CLK_TCK)
WORK=$(mktemp -d /var/tmp/mxbench.XXXXXX) # a real disk (ext4), not tmpfs
chmod 755 "$WORK"                          # the postfix user must reach its queue below
MX_IF=mxb0
MX_NET=10.77.200
MX_PID=
PF_CONF=''
PF_UP=0
PF_CG=''
SMTP_TIMEOUT=${SMTP_TIMEOUT:-600} # seconds for one smtp-source load

bench_cleanup() {
	if [ -n "$MX_PID" ]; then
		kill -TERM "$MX_PID" 2>/dev/null
		for _ in $(seq 100); do kill -0 "$MX_PID" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$MX_PID" 2>/dev/null
		MX_PID=
	fi
	pf_teardown
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

# ctl_stat SOCKET NAME: a counter summed over workers from `mxctl stats` (0 if absent).
ctl_stat() {
	timeout 10 "$BUILD/tools/mxctl/mxctl" -s "$1" -t 5 stats 2>/dev/null |
		awk -v k="$2" '$0 ~ k { for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+$/) { s += $i; break } }
			END { print s + 0 }'
}

# source_load HOST:PORT SESSIONS MESSAGES SIZE: one smtp-source load.  Each message is
# its own connection (smtp-source's default, the way most device firmware sends), from
# dev@fleet.test to ops@fleet.test.  Prints the wall seconds it took.
source_load() {
	local t0 t1 rc=0
	t0=$(now)
	timeout "$SMTP_TIMEOUT" smtp-source -s "$2" -m "$3" -l "$4" -f dev@fleet.test \
		-t ops@fleet.test "$1" >"$WORK/source.log" 2>&1 || rc=$?
	t1=$(now)
	if [ $rc != 0 ]; then
		tail -5 "$WORK/source.log" >&2
		return 1
	fi
	echo "$t1 - $t0" | bc -l
}

# mx_run SESSIONS MESSAGES SIZE DURABILITY: one measured mxrelay run.  Writes
# "msgs_per_s accepted wall_s cpu_s worker_busy idle_sleeps worker_sys_share" to
# $WORK/result.  Runs in
# the main shell (never in $(...)) so that the EXIT trap knows what to stop.
mx_run() {
	local s=$1 m=$2 size=$3 dur=$4
	local dir=$WORK/mx spool
	rm -f "$WORK/result"
	[ -x "$BUILD/app/mxrelay/mxrelay" ] || die "no $BUILD/app/mxrelay/mxrelay (ninja -C $BUILD)"
	rm -rf "$dir"
	mkdir -p "$dir"
	spool=$dir/spool
	# 10.77.200.1 (the host side of the TAP, where smtp-source connects from) may relay;
	# the recipient's domain is local too, so either rule accepts it.
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
local_domains = fleet.test

[relay]
allow_networks = $MX_NET.0/24

[spool]
dir = $spool
durability = $dur

[control]
socket = $dir/ctl.sock
http_listen =

[log]
level = warning
CONF
	timeout 20 "$BUILD/app/mxrelay/mxrelay" --check-config "$dir/r.conf" >"$dir/check.log" 2>&1 ||
		{ cat "$dir/check.log" >&2; die "mxrelay rejects the bench config"; }
	"$BUILD/app/mxrelay/mxrelay" --config "$dir/r.conf" >"$dir/relay.log" 2>&1 &
	MX_PID=$!
	local up=0
	for _ in $(seq 300); do
		kill -0 "$MX_PID" 2>/dev/null || break
		if ip -4 addr show dev $MX_IF 2>/dev/null | grep -q "inet $MX_NET.1/" &&
			[ -S "$dir/ctl.sock" ]; then
			up=1
			break
		fi
		sleep 0.1
	done
	[ $up = 1 ] || { tail -20 "$dir/relay.log" >&2; die "mxrelay did not come up"; }
	# The first SYN needs ARP; one probe session so the load starts warm.
	timeout 30 smtp-source -s 1 -m 1 -l 100 -f dev@fleet.test -t ops@fleet.test \
		$MX_NET.2:25 >/dev/null 2>&1 || { tail -20 "$dir/relay.log" >&2; die "mxrelay does not answer"; }
	local tid c0 c1 w0 w1 k0=0 k1=0 sl0 sl1 wall
	tid=$(worker_tid "$MX_PID") || tid=
	sl0=$(ctl_stat "$dir/ctl.sock" idle_sleeps)
	c0=$(ticks "$MX_PID")
	w0=0
	[ -n "$tid" ] && w0=$(tticks "$MX_PID" "$tid") && k0=$(tsys "$MX_PID" "$tid")
	wall=$(source_load $MX_NET.2:25 "$s" "$m" "$size") ||
		{ tail -20 "$dir/relay.log" >&2; die "smtp-source against mxrelay failed"; }
	c1=$(ticks "$MX_PID")
	w1=0
	[ -n "$tid" ] && w1=$(tticks "$MX_PID" "$tid") && k1=$(tsys "$MX_PID" "$tid")
	sl1=$(ctl_stat "$dir/ctl.sock" idle_sleeps)
	kill -TERM "$MX_PID"
	for _ in $(seq 100); do kill -0 "$MX_PID" 2>/dev/null || break; sleep 0.1; done
	kill -0 "$MX_PID" 2>/dev/null && die "mxrelay did not stop on SIGTERM"
	wait "$MX_PID" 2>/dev/null
	MX_PID=
	local accepted
	accepted=$(timeout 120 "$BUILD/tools/mxspool/mxspool" "$spool" count 2>/dev/null |
		awk '$1 == "messages" { print $2 }')
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

# pf_setup: a private Postfix instance under $WORK/pf (config, queue, data), smtpd on
# 127.0.0.1:2525, every message put on hold (see README.md), logs to a file of its own.
pf_setup() {
	command -v postfix >/dev/null || die "postfix not installed"
	local d=$WORK/pf
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
relay_domains = fleet.test
local_recipient_maps =
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
# Accept, fsync, and keep: every message goes to the hold queue, never delivered.
smtpd_recipient_restrictions = check_recipient_access static:HOLD
smtpd_peername_lookup = no
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
# in_flow_delay throttles smtpd when qmgr delivers more slowly than mail arrives;
# nothing is delivered here (held), so it would only measure the throttle.
in_flow_delay = 0
default_process_limit = 200
biff = no
alias_maps =
alias_database =
CONF
	# Only the services an accepting instance needs; chroot off (the queue is ours).
	cat >"$PF_CONF/master.cf" <<'CONF'
127.0.0.1:2525 inet n  -  n  -  150 smtpd
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
		timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/2525' 2>/dev/null && return 0
		sleep 0.1
	done
	die "postfix smtpd does not listen on 127.0.0.1:2525"
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
		127.0.0.1:2525 >/dev/null 2>&1 || die "postfix does not accept the warm-up message"
	local c0 c1 wall
	c0=$(pf_cpu)
	wall=$(source_load 127.0.0.1:2525 "$s" "$m" "$size") || die "smtp-source against postfix failed"
	c1=$(pf_cpu)
	pf_stop
	local held
	held=$(find "$q/hold" -type f 2>/dev/null | wc -l)
	held=$((held - 1))
	[ "$held" = "$m" ] || { tail -5 "$WORK/pf/maillog" >&2; die "postfix holds $held of $m messages"; }
	printf '%.1f %d %.3f %.3f\n' "$(echo "$m / $wall" | bc -l)" "$held" "$wall" \
		"$(echo "$c1 - $c0" | bc -l)" >"$WORK/result"
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
