#!/usr/bin/env bash
# dsn_python.sh - DSNs built by lib/queue (queue_dsn_build) parse cleanly with
# Python's email package (email.policy.default) as RFC 6522 multipart/report
# messages: report-type=delivery-status, a text part, a message/delivery-status
# part whose per-message and per-recipient fields (RFC 3464) are right, and the
# original's headers (text/rfc822-headers) or whole message (message/rfc822).
# Samples: failure with two recipients (RET=HDRS), failure with RET=FULL, a
# success notice and a delay notice, written by `test_queue --write-dsn DIR`.
# Exit 0 pass, 77 skip, other fail.  Runs from the repo root; no network.
set -u
TESTQ=${TESTQ:-build/tests/queue/test_queue}
PY=/usr/bin/python3

[ -x "$TESTQ" ] || { echo "skip: $TESTQ not built"; exit 77; }
[ -x "$PY" ] || { echo "skip: $PY missing"; exit 77; }

tmp=$(mktemp -d /tmp/mx-dsn-it.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

timeout 30 "$TESTQ" --write-dsn "$tmp" || { echo "test_queue --write-dsn failed"; exit 1; }

timeout 60 "$PY" - "$tmp" <<'PYEOF'
import sys, os, email, email.policy, email.utils

d = sys.argv[1]
fails = 0

def check(cond, what):
    global fails
    if not cond:
        print("FAIL:", what)
        fails += 1

def dsn(name):
    with open(os.path.join(d, name), "rb") as f:
        raw = f.read()
    for n, line in enumerate(raw.split(b"\r\n")):
        check(len(line) < 998, f"{name}: line {n} is {len(line)} octets")
        check(b"\n" not in line and b"\r" not in line, f"{name}: bare CR/LF in line {n}")
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    check(not msg.defects, f"{name}: defects {msg.defects}")
    check(msg.get_content_type() == "multipart/report", f"{name}: content type {msg.get_content_type()}")
    check(msg.get_param("report-type") == "delivery-status", f"{name}: report-type")
    check(msg["To"] == "dev@fleet.example" or msg["To"] == "<dev@fleet.example>", f"{name}: To {msg['To']}")
    check("MAILER-DAEMON@relay.test" in str(msg["From"]), f"{name}: From")
    check(email.utils.parsedate_to_datetime(str(msg["Date"])).year == 2023, f"{name}: Date")
    check(msg["Message-ID"] is not None and str(msg["Message-ID"]).startswith("<"), f"{name}: Message-ID")
    check(msg["Auto-Submitted"] == "auto-replied", f"{name}: Auto-Submitted")
    parts = list(msg.iter_parts())
    check(len(parts) == 3, f"{name}: {len(parts)} parts")
    for p in parts:
        check(not p.defects, f"{name}: part defects {p.defects}")
    check(parts[0].get_content_type() == "text/plain", f"{name}: part 1 type")
    check(parts[1].get_content_type() == "message/delivery-status", f"{name}: part 2 type")
    blocks = parts[1].get_payload()
    check(isinstance(blocks, list) and len(blocks) >= 2, f"{name}: delivery-status blocks")
    check(blocks[0]["Reporting-MTA"] == "dns; relay.test", f"{name}: Reporting-MTA {blocks[0]['Reporting-MTA']}")
    check(blocks[0]["Original-Envelope-Id"] == "ENV42", f"{name}: Original-Envelope-Id")
    check(email.utils.parsedate_to_datetime(str(blocks[0]["Arrival-Date"])).timestamp() == 1700000000,
          f"{name}: Arrival-Date")
    return msg, parts, blocks

def rcpt(block, final, action, status):
    check(block["Final-Recipient"] == "rfc822; " + final, f"Final-Recipient {block['Final-Recipient']}")
    check(block["Action"] == action, f"{final}: Action {block['Action']}")
    check(block["Status"] == status, f"{final}: Status {block['Status']}")

# failure, two recipients, headers only
msg, parts, blocks = dsn("failed_hdrs.eml")
check(len(blocks) == 3, "failed_hdrs: 1 + 2 blocks")
rcpt(blocks[1], "bad@example.com", "failed", "5.1.1")
check(blocks[1]["Original-Recipient"] == "rfc822;Bad+x@example.com", "Original-Recipient")
check(blocks[1]["Remote-MTA"] == "dns; mx.example.com", "Remote-MTA")
check(str(blocks[1]["Diagnostic-Code"]).startswith("smtp; 550 5.1.1"), "Diagnostic-Code")
check(email.utils.parsedate_to_datetime(str(blocks[1]["Last-Attempt-Date"])).timestamp() == 1700000005,
      "Last-Attempt-Date")
rcpt(blocks[2], "slow@example.org", "failed", "4.4.7")
check(parts[2].get_content_type() == "text/rfc822-headers", "failed_hdrs: headers part")
hdrs = parts[2].get_content()
check("Subject: temperature alarm" in hdrs, "failed_hdrs: original Subject")
check("sensor 7" not in hdrs, "failed_hdrs: no body")
check("bad@example.com" in parts[0].get_content(), "failed_hdrs: text names the recipient")
check("Undelivered" in str(msg["Subject"]), "failed_hdrs: Subject")

# failure, RET=FULL
msg, parts, blocks = dsn("failed_full.eml")
check(parts[2].get_content_type() == "message/rfc822", "failed_full: message/rfc822")
orig = parts[2].get_payload(0)
check(orig["Subject"] == "temperature alarm", "failed_full: original Subject")
check("sensor 7 is over 80C" in orig.get_content(), "failed_full: original body")

# success (NOTIFY=SUCCESS)
msg, parts, blocks = dsn("success.eml")
check(len(blocks) == 2, "success: 1 + 1 blocks")
rcpt(blocks[1], "bad@example.com", "delivered", "2.0.0")
check("Successful" in str(msg["Subject"]), "success: Subject")

# delay (NOTIFY=DELAY)
msg, parts, blocks = dsn("delayed.eml")
rcpt(blocks[1], "bad@example.com", "delayed", "4.2.2")
check(blocks[1]["Will-Retry-Until"] is not None, "delayed: Will-Retry-Until")

print("dsn_python:", "FAIL" if fails else "ok", f"({fails} failures)")
sys.exit(1 if fails else 0)
PYEOF
