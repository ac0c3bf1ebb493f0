"""spool_crash.py HOST OUT SECONDS RCPT - keep 16 SMTP sessions sending until
SECONDS pass or the server goes away; append "queue_id" to OUT for every
message that got "250 ... queued as ID" (flushed at once, so a SIGKILL of the
relay never loses an acknowledgement from this record)."""
import re, smtplib, sys, threading, time

HOST, OUT, SECS, RCPT = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
ID_RE = re.compile(rb"queued as ([0-9A-Z]+)")
lock = threading.Lock()
out = open(OUT, "a", buffering=1)
end = time.monotonic() + SECS
acked = 0

def worker(n):
    global acked
    i = 0
    while time.monotonic() < end:
        try:
            s = smtplib.SMTP(HOST, 25, timeout=5)
            s.ehlo("crash%d" % n)
            while time.monotonic() < end:
                i += 1
                s.mail("dev%d@fleet.test" % n)
                s.rcpt(RCPT)
                code, resp = s.data(b"Subject: crash %d %d\r\n\r\n" % (n, i) + b"x" * 900 + b"\r\n")
                if code == 250:
                    m = ID_RE.search(resp)
                    with lock:
                        out.write(m.group(1).decode() + "\n")
                        acked += 1
        except Exception:
            time.sleep(0.2)   # relay killed or restarting: try again

ts = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
for t in ts: t.start()
for t in ts: t.join()
print("acknowledged", acked)
