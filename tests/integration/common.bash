# tests/integration/common.bash - shared helpers for integration scripts (sourced).
#
# Each script picks its own TAP name and 10.77.N.0/24 subnet, writes a
# config for it, starts the program under test in the background and
# cleans up on exit.  Nothing here talks to any address outside the
# script's own TAP subnet.
#
#   write_config / write_relay_config / write_delivery_config   relay configs
#   start_relay LOG CONF, stop_relay, wait_log REGEX SECONDS [COUNT]
#   start_bg, stop_pid, wait_iface, wait_listen, wait_files    processes, waits
#   mxstat FILE NAME, spool_expect SPOOL N                      counters, spool
# peers.bash adds the peer servers (unbound, smtp-sink), postfix.bash Postfix.

set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${MX_BUILD:-$ROOT/build}
PY=/usr/bin/python3
TMP=$(mktemp -d /tmp/mxit.XXXXXX)
PIDS=()

cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
	for p in "${PIDS[@]}"; do
		for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$p" 2>/dev/null
	done
	rm -rf "$TMP" /var/run/dpdk/mxit*-$$
}
trap cleanup EXIT

skip() { echo "skip: $*"; exit 77; }
fail() { echo "FAIL: $*"; exit 1; }

need_root_tap() {
	[ "$(id -u)" = 0 ] || skip "needs root for TAP"
	[ -c /dev/net/tun ] || skip "no /dev/net/tun"
}

# write_config FILE IFACE SUBNET_OCTET [extra ini text]
write_config() {
	local f=$1 ifc=$2 n=$3 extra=${4:-}
	cat >"$f" <<CONF
[eal]
args = ${MX_LCORES:--l 0-1} --no-huge -m 256 --no-pci --file-prefix=mxit$n-$$ --vdev=net_tap$n,iface=$ifc
mbufs = 8191

[port.0]
addr = 10.77.$n.2/24
gateway = 10.77.$n.1
host_addr = 10.77.$n.1/24
$extra
CONF
}

# wait_iface IFACE ADDR: until the TAP exists with its host address.
wait_iface() {
	for _ in $(seq 300); do
		ip -4 addr show dev "$1" 2>/dev/null | grep -q "inet $2/" && return 0
		sleep 0.1
	done
	return 1
}

# start_bg LOG CMD...: run in the background, remember the pid.
start_bg() {
	local log=$1
	shift
	"$@" >"$log" 2>&1 &
	PIDS+=($!)
	LAST_PID=$!
}

# stop_pid PID: SIGTERM and wait (bounded); returns the exit status.
stop_pid() {
	kill -TERM "$1" 2>/dev/null
	local rc=0
	for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
	wait "$1" 2>/dev/null || rc=$?
	return $rc
}

# wait_listen ADDR:PORT [tcp|udp] [SECONDS]: until something listens there
# (bounded, 5 s unless told); returns 1 if nothing does.
wait_listen() {
	local o=-ltn
	[ "${2:-tcp}" = udp ] && o=-lun
	for _ in $(seq $((${3:-5} * 10))); do
		ss $o | grep -q "$1 " && return 0
		sleep 0.1
	done
	return 1
}

# wait_files DIR COUNT SECONDS: until DIR (made or not yet) holds at least COUNT
# files (bounded); returns 1 if it does not.
wait_files() {
	for _ in $(seq $(($3 * 10))); do
		[ "$(find "$1" -type f 2>/dev/null | wc -l)" -ge "$2" ] && return 0
		sleep 0.1
	done
	return 1
}

# mxstat FILE NAME: the value of a "name value" counter line, as written by
# mxctl stats / status and by netsvc's stats dump.
mxstat() { awk -v k="$2" '$1 == k { print $2; exit }' "$1"; }

# write_relay_config FILE IFACE N [extra ini]: a relay on 10.77.N.2 with TLS
# (a demo certificate made in $TMP/tls), AUTH users in $TMP/users, spool in
# $TMP/spool.  Clients from 10.77.N.128/25 may relay; the host side
# (10.77.N.1) is outside it, so it relays only to fleet.test or after AUTH.
write_relay_config() {
	local f=$1 ifc=$2 n=$3 extra=${4:-}
	[ -s "$TMP/tls/relay.crt" ] || "$ROOT/lib/tls/gen-demo-cert.sh" "$TMP/tls" >/dev/null 2>&1 ||
		fail "cannot make a demo certificate"
	[ -s "$TMP/users" ] || echo "s3cret-pass" | "$BUILD/tools/mxpasswd/mxpasswd" "$TMP/users" device1 ||
		fail "mxpasswd failed"
	write_config "$f" "$ifc" "$n" "
[smtp]
hostname = relay.mxrelay.test
listen = 25,465,587
local_domains = fleet.test
users = $TMP/users
[tls]
cert = $TMP/tls/relay.crt
key = $TMP/tls/relay.key
[relay]
allow_networks = 10.77.$n.128/25
[spool]
dir = $TMP/spool
[control]
socket = $TMP/control.sock
http_listen =
$extra"
}

# write_delivery_config FILE IFACE N [extra ini]: a relay on 10.77.N.2 taking
# mail on port 25 from 10.77.N.0/24 and delivering it: spool in $TMP/spool,
# control socket $TMP/control.sock, retry every 2 s with a 1-2 s backoff.
# The extra text follows; a section given again adds keys, a key given again
# wins (lib/core's reader takes the last one).
write_delivery_config() {
	local f=$1 ifc=$2 n=$3 extra=${4:-}
	write_config "$f" "$ifc" "$n" "
[smtp]
hostname = relay.mxrelay.test
listen = 25
[relay]
allow_networks = 10.77.$n.0/24
[spool]
dir = $TMP/spool
[queue]
retry = 2s
backoff_initial = 1s
backoff_max = 2s
[control]
socket = $TMP/control.sock
http_listen =
$extra"
}

# start_relay LOG CONF: mxrelay on CONF (from write_config) in the background;
# waits until its TAP carries the host address and it logs "mxrelay running"
# (bounded), and fails showing LOG if not.  Sets R (the pid) and RLOG (LOG).
start_relay() {
	local ifc host
	RLOG=$1
	ifc=$(sed -n 's/.*--vdev=net_tap[0-9]*,iface=\([^ ,]*\).*/\1/p' "$2" | head -1)
	host=$(sed -n 's|^host_addr = \([0-9.]*\)/.*|\1|p' "$2" | head -1)
	[ -n "$ifc" ] && [ -n "$host" ] || fail "start_relay: no TAP iface or host_addr in $2"
	: >"$RLOG" # start_bg truncates it in the child: no stale log read meanwhile
	start_bg "$RLOG" "$BUILD/app/mxrelay/mxrelay" --config "$2"
	R=$LAST_PID
	wait_iface "$ifc" "$host" || { cat "$RLOG"; fail "TAP did not come up"; }
	for _ in $(seq 100); do
		grep -q "mxrelay running" "$RLOG" && return 0
		sleep 0.1
	done
	cat "$RLOG"
	fail "relay not running"
}

# stop_relay: SIGTERM the relay of start_relay; fails (with the log's tail)
# unless it exits 0.
stop_relay() { stop_pid "$R" || { tail -20 "$RLOG"; fail "relay did not stop cleanly"; }; }

# wait_log REGEX SECONDS [COUNT]: until the relay's log (RLOG) has COUNT lines
# (default 1) matching the extended REGEX (bounded); returns 1 if not.
wait_log() {
	for _ in $(seq $(($2 * 10))); do
		[ "$(grep -cE "$1" "$RLOG")" -ge "${3:-1}" ] && return 0
		sleep 0.1
	done
	return 1
}

# spool_expect SPOOL N: the spool holds N messages (mxspool count, shown);
# fails otherwise.  The count stays in $TMP/count.
spool_expect() {
	"$BUILD/tools/mxspool/mxspool" "$1" count | tee "$TMP/count"
	local left
	left=$(awk '$1 == "messages" { print $2 }' "$TMP/count")
	[ "$left" = "$2" ] || fail "spool holds ${left:-no} message(s), expected $2"
}
