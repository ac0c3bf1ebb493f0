#!/usr/bin/python3
# deliver_s_server.py - puts `openssl s_server` in front of the relay's TLS
# client for deliver_s_server.sh.  s_server terminates TLS; this script plays
# the SMTP server through s_server's stdin/stdout:
#
#   deliver_s_server.py MODE ADDR PORT CERT KEY OUTDIR [SECONDS]
#
# MODE starttls: on ADDR:PORT it greets in plain text, offers STARTTLS
#   (RFC 3207) and, after "220 ready", splices the connection to a fresh
#   `openssl s_server -naccept 1` on 127.0.0.1 (the TLS handshake is
#   s_server's, with CERT and KEY), then speaks SMTP inside TLS.
# MODE implicit: the connection goes to s_server at once (port 465 style,
#   RFC 8314 3.3); the greeting is sent inside TLS.
# Each message is written to OUTDIR/msg-<n> (the DATA content, unstuffed);
# OUTDIR/events gets one line per connection event ("<n> connect",
# "<n> tls-ehlo", "<n> message", "<n> end <why>"), s_server's stderr goes to
# OUTDIR/s_server-<n>.err.  Exits after SECONDS (default 120).
import os
import socket
import subprocess
import sys
import threading
import time

mode, addr, port, crt, key, out = sys.argv[1:7]
max_s = float(sys.argv[7]) if len(sys.argv) > 7 else 120.0
lock = threading.Lock()
counter = [0]


def event(no, what):
    with lock:
        with open(os.path.join(out, "events"), "a") as f:
            f.write(f"{no} {what}\n")


def listening(p):
    """Is something listening on 127.0.0.1:p?  (/proc/net/tcp, state 0A)"""
    want = f"0100007F:{p:04X}"
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            cols = line.split()
            if cols[1] == want and cols[3] == "0A":
                return True
    return False


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def pump(src, dst):
    try:
        while True:
            b = src.recv(65536)
            if not b:
                break
            dst.sendall(b)
    except OSError:
        pass
    for s in (src, dst):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def smtp_over(no, proc, greet):
    """The SMTP server dialogue over s_server's stdio; returns why it ended."""
    w = proc.stdin
    r = proc.stdout

    def reply(s):
        w.write(s.encode())
        w.flush()

    if greet:
        reply("220 s-server.test ESMTP\r\n")
    seen_ehlo = False
    while True:
        line = r.readline()
        if not line:
            return "eof"
        cmd = line.strip().upper()
        if cmd.startswith(b"EHLO"):
            if not seen_ehlo:
                event(no, "tls-ehlo")
                seen_ehlo = True
            reply("250-s-server.test\r\n250-SIZE 10485760\r\n250 8BITMIME\r\n")
        elif cmd.startswith(b"HELO"):
            reply("250 s-server.test\r\n")
        elif cmd == b"DATA":
            reply("354 go ahead\r\n")
            body = []
            while True:
                l = r.readline()
                if not l:
                    return "eof in DATA"
                if l == b".\r\n":
                    break
                body.append(l[1:] if l.startswith(b".") else l)
            with lock:
                counter[0] += 1
                m = counter[0]
            with open(os.path.join(out, f"msg-{m}"), "wb") as f:
                f.write(b"".join(body))
            event(no, "message")
            reply("250 2.0.0 Ok: queued\r\n")
        elif cmd == b"QUIT":
            reply("221 2.0.0 Bye\r\n")
            return "quit"
        else:
            reply("250 2.0.0 Ok\r\n")


def serve(conn, no):
    event(no, "connect")
    why = "?"
    proc = None
    try:
        conn.settimeout(30)
        if mode == "starttls":
            f = conn.makefile("rb")
            conn.sendall(b"220 s-server.test ESMTP (plain)\r\n")
            while True:
                line = f.readline(1000)
                if not line:
                    event(no, "end eof before STARTTLS")
                    return
                cmd = line.strip().upper()
                if cmd.startswith(b"EHLO"):
                    conn.sendall(b"250-s-server.test\r\n250-STARTTLS\r\n250 8BITMIME\r\n")
                elif cmd == b"STARTTLS":
                    conn.sendall(b"220 2.0.0 Ready to start TLS\r\n")
                    break
                elif cmd == b"QUIT":
                    conn.sendall(b"221 2.0.0 Bye\r\n")
                    event(no, "end quit before STARTTLS")
                    return
                else:
                    conn.sendall(b"503 5.5.1 STARTTLS first\r\n")
        conn.settimeout(None)
        p = free_port()
        err = open(os.path.join(out, f"s_server-{no}.err"), "wb")
        proc = subprocess.Popen(
            ["openssl", "s_server", "-accept", f"127.0.0.1:{p}", "-naccept", "1", "-quiet",
             "-cert", crt, "-key", key],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
        for _ in range(100):
            if listening(p) or proc.poll() is not None:
                break
            time.sleep(0.05)
        back = socket.create_connection(("127.0.0.1", p), timeout=10)
        back.settimeout(None)
        t1 = threading.Thread(target=pump, args=(conn, back), daemon=True)
        t2 = threading.Thread(target=pump, args=(back, conn), daemon=True)
        t1.start()
        t2.start()
        why = smtp_over(no, proc, True if mode == "implicit" else False)
        time.sleep(0.2)
    except OSError as e:
        why = f"error {e}"
    finally:
        if proc is not None:
            try:
                proc.stdin.close()
            except OSError:
                pass
            try:
                proc.wait(2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        try:
            conn.close()
        except OSError:
            pass
        event(no, f"end {why}")


ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind((addr, int(port)))
ls.listen(16)
end = time.time() + max_s
n = 0
while time.time() < end:
    ls.settimeout(max(0.1, end - time.time()))
    try:
        c, _ = ls.accept()
    except socket.timeout:
        break
    n += 1
    threading.Thread(target=serve, args=(c, n), daemon=True).start()
