# tests/integration/common.bash - shared helpers for integration scripts (sourced).
#
# Each script picks its own TAP name and 10.77.N.0/24 subnet, writes a
# config for it, starts the program under test in the background and
# cleans up on exit.  Nothing here talks to any address outside the
# script's own TAP subnet.

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

# stat FILE NAME: a "name value" counter from a netsvc stats dump.
stat() { awk -v k="$2" '$1 == k { print $2 }' "$1"; }

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
