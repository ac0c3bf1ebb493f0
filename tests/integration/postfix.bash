# tests/integration/postfix.bash - a private Postfix instance for integration
# tests (sourced after common.bash).  Its own config_directory, queue, data
# and maillog under $PF, every service unchrooted, nothing shared with a
# system Postfix; pf_stop (or the EXIT trap the caller sets) takes it down.
#
#   PF=$TMP/pf
#   pf_setup LISTEN_LINES MAIN_EXTRA     write main.cf and master.cf
#   pf_start ADDR:PORT ...               start, wait until each listens
#   pf_stop
#
# main.cf delivers the domains in $PF_DOMAINS (default "pf.test") with
# virtual(8) into the maildir $PF/mail/box/ as nobody; MAIN_EXTRA is appended
# (later lines win).  LISTEN_LINES are master.cf service lines (smtpd on the
# test's addresses, with -o overrides).
PF=${PF:-$TMP/pf}
PF_UP=0

pf_setup() {
	local listen=$1 extra=${2:-}
	id postfix >/dev/null 2>&1 || skip "no postfix user"
	chmod 755 "$TMP" # postfix and nobody reach the queue and the maildir below
	mkdir -p "$PF/etc" "$PF/queue" "$PF/data" "$PF/mail"
	chown postfix "$PF/data"
	chown nobody:nogroup "$PF/mail"
	cat >"$PF/etc/main.cf" <<CONF
# Private test instance (tests/integration/postfix.bash), removed at exit.
compatibility_level = 3.6
queue_directory = $PF/queue
data_directory = $PF/data
maillog_file = $PF/maillog
maillog_file_prefixes = $PF
myhostname = mx.${PF_DOMAINS%% *}
inet_interfaces = all
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
biff = no
smtpd_peername_lookup = no
virtual_mailbox_domains = ${PF_DOMAINS:-pf.test}
virtual_mailbox_base = $PF/mail
virtual_mailbox_maps = static:box/
virtual_uid_maps = static:65534
virtual_gid_maps = static:65534
virtual_minimum_uid = 100
in_flow_delay = 0
$extra
CONF
	cat >"$PF/etc/master.cf" <<CONF
$listen
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
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
virtual   unix  -       n       n       -       -       virtual
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
CONF
}

pf_start() {
	timeout 60 postfix -c "$PF/etc" check >"$PF/check.log" 2>&1 ||
		{ cat "$PF/check.log"; fail "postfix check"; }
	timeout 60 postfix -c "$PF/etc" start >"$PF/start.log" 2>&1 ||
		{ cat "$PF/start.log" "$PF/maillog" 2>/dev/null | tail -20; fail "postfix start"; }
	PF_UP=1
	local a
	for a in "$@"; do
		wait_listen "$a" tcp 10 || { cat "$PF/start.log" "$PF/maillog"; fail "postfix not on $a"; }
	done
}

pf_stop() {
	[ "$PF_UP" = 1 ] || return 0
	PF_UP=0
	timeout 30 postfix -c "$PF/etc" stop >/dev/null 2>&1 ||
		timeout 30 postfix -c "$PF/etc" abort >/dev/null 2>&1
	local pid
	pid=$(awk '{print $1}' "$PF/queue/pid/master.pid" 2>/dev/null)
	for _ in $(seq 100); do
		[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	[ -n "$pid" ] && kill -9 "$pid" 2>/dev/null
	return 0
}
