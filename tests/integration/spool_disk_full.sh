#!/usr/bin/env bash
# Disk full: the spool lives on a 4 MiB tmpfs that a filler file almost
# fills.  The relay must answer 452/451 (never 250 for a message it could
# not store, never a crash), and accept mail again once space returns.
. "$(dirname "$0")/common.bash"
need_root_tap
N=${MX_NET:-32} IF=mxt${MX_NET:-32} H=10.77.${MX_NET:-32}.2
mkdir -p "$TMP/fs"
mount -t tmpfs -o size=4m mxrelay-test "$TMP/fs" || skip "cannot mount a tmpfs here"
trap 'for p in "${PIDS[@]}"; do kill -9 $p 2>/dev/null; done; sleep 0.5; umount "$TMP/fs" 2>/dev/null; cleanup' EXIT
# Leave about 600 KiB free.
dd if=/dev/zero of="$TMP/fs/filler" bs=1k count=3500 status=none || true
write_relay_config "$TMP/r.conf" $IF $N "[spool]
segment_size = 256K"
sed -i "s|^dir = .*|dir = $TMP/fs/spool|" "$TMP/r.conf"
start_bg "$TMP/relay.log" "$BUILD/app/mxrelay/mxrelay" --config "$TMP/r.conf"
R=$LAST_PID
wait_iface $IF 10.77.$N.1 || { cat "$TMP/relay.log"; fail "TAP did not come up"; }
for _ in $(seq 100); do grep -q "mxrelay running" "$TMP/relay.log" && break; sleep 0.1; done
cat >"$TMP/fill.py" <<PYEOF
import smtplib, sys
s = smtplib.SMTP("$H", 25, timeout=10)
s.ehlo("probe")
codes = {}
for i in range(int(sys.argv[1])):
    try:
        code, resp = s.mail("dev@fleet.test")
        if code != 250:
            codes[code] = codes.get(code, 0) + 1
            print("refusal:", code, resp.decode(errors="replace"))
            continue
        s.rcpt("ops@fleet.test")
        code, resp = s.data(b"Subject: fill %d\r\n\r\n" % i + (b"y" * 98 + b"\r\n") * 160)
    except smtplib.SMTPResponseException as e:
        code, resp = e.smtp_code, e.smtp_error
        s.rset()
    codes[code] = codes.get(code, 0) + 1
    if code != 250:
        print("refusal:", code, resp.decode(errors="replace"))
s.quit()
print("codes", sorted(codes.items()))
ok = codes.get(250, 0)
bad = sum(v for k, v in codes.items() if k not in (250, 451, 452))
sys.exit(0 if bad == 0 and ((sys.argv[2] == "full" and len(codes) > 1) or (sys.argv[2] == "room" and ok == int(sys.argv[1]))) else 1)
PYEOF
timeout 60 $PY "$TMP/fill.py" 80 full >"$TMP/full.log" 2>&1 || { cat "$TMP/full.log"; kill -0 $R || echo "RELAY DIED"; grep -vE "EAL|tap|qdisc" "$TMP/relay.log" | tail -8; fail "no clean 452/451 when the disk filled"; }
tail -3 "$TMP/full.log"
grep -qE "refusal: 45[12]" "$TMP/full.log" || fail "no 451/452 refusal"
accepted=$("$BUILD/tools/mxspool/mxspool" "$TMP/fs/spool" count | awk '$1=="messages"{print $2}')
before=$(grep -c "disk has room again" "$TMP/relay.log")
rm -f "$TMP/fs/filler"
# The spool probes for space every 100 ms while full; wait for a probe that
# ran after the removal (bounded), then expect 250 again.
for _ in $(seq 100); do
	[ "$(grep -c "disk has room again" "$TMP/relay.log")" -gt "$before" ] && break
	sleep 0.1
done
[ "$(grep -c "disk has room again" "$TMP/relay.log")" -gt "$before" ] ||
	fail "the spool did not notice the space that returned"
timeout 60 $PY "$TMP/fill.py" 20 room >"$TMP/room.log" 2>&1 || { cat "$TMP/room.log"; fail "mail not accepted after space returned"; }
tail -1 "$TMP/room.log"
stop_pid $R || fail "relay did not stop cleanly"
grep -iE "enospc|no space|full" "$TMP/relay.log" | head -3
echo "disk full: refused cleanly, recovered"
