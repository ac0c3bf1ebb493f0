# tools/deps.sh - sourced by tools/run and tools/test: install what is missing.
#
# Every package comes from Debian 12.  Nothing is downloaded from anywhere
# else.  Set MX_NO_INSTALL=1 to skip the check (offline developer machines).

MX_BUILD_PKGS="meson ninja-build pkg-config gcc libdpdk-dev dpdk dpdk-dev libssl-dev openssl
	libjemalloc-dev libcunit1-dev liburing-dev iproute2 iputils-ping procps"
MX_DEMO_PKGS="swaks libnet-ssleay-perl libio-socket-inet6-perl postfix unbound"
MX_TEST_PKGS="clang libclang-rt-14-dev swaks libnet-ssleay-perl libio-socket-inet6-perl python3 python3-dkim postfix
	nsd unbound ldnsutils dnsutils tcpdump curl bc sasl2-bin libsasl2-modules opendkim gnuplot-nox"

mx_install() {
	[ "${MX_NO_INSTALL:-0}" = 1 ] && return 0
	local missing=() p
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
			missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	echo "installing: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	# postfix asks questions at install; answer them so the install never blocks.
	echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
	apt-get update -qq || return 1
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || return 1
	# The Debian packages start their daemons; tests start their own instances.
	for svc in postfix nsd unbound saslauthd opendkim; do
		systemctl stop "$svc" 2>/dev/null || service "$svc" stop 2>/dev/null || true
	done
}

# mx_build DIR [meson options...]: configure (once) and build.
mx_build() {
	local dir=$1
	shift
	if [ ! -f "$dir/build.ninja" ]; then
		meson setup "$dir" "$@" >"$dir.setup.log" 2>&1 || { cat "$dir.setup.log"; return 1; }
	fi
	ninja -C "$dir" >"$dir.ninja.log" 2>&1 || { tail -50 "$dir.ninja.log"; return 1; }
	if grep -q 'warning:' "$dir.ninja.log"; then
		echo "build warnings in $dir:"
		grep -A3 'warning:' "$dir.ninja.log" | head -40
		return 1
	fi
}
