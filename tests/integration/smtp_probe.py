"""smtp_probe.py - scripted SMTP clients for the relay's integration tests.

  smtp_probe.py HOST exact N OUT     send N messages with random bodies (dot
                                     lines, long lines, 8-bit) via smtplib;
                                     write "queue_id sha256" lines to OUT
  smtp_probe.py HOST bdat            BDAT/CHUNKING by hand (smtplib has none)
  smtp_probe.py HOST smuggle         CVE-2023-51764 payloads are refused
  smtp_probe.py HOST starttls-inject CVE-2011-0411: pipelined plain text after
                                     STARTTLS is never answered inside TLS
  smtp_probe.py HOST relay           the classic relay tricks all get 554 5.7.1
Exit 0 when every check holds.  Every socket has a timeout.
"""
import hashlib, os, random, re, smtplib, socket, ssl, sys

HOST = sys.argv[1]
ID_RE = re.compile(rb"queued as ([0-9A-Z]+)")

def body(rnd, i):
    lines = [b"Subject: exact %d" % i, b"From: dev%d@fleet.test" % i, b"To: ops@fleet.test", b""]
    for _ in range(rnd.randint(1, 60)):
        kind = rnd.random()
        if kind < 0.15:
            lines.append(b"." + os.urandom(8).hex().encode())   # needs dot-stuffing
        elif kind < 0.2:
            lines.append(b".")                                 # a lone dot line
        elif kind < 0.3:
            lines.append(bytes(rnd.randint(0x80, 0xfe) for _ in range(40)))  # 8-bit
        else:
            lines.append(os.urandom(rnd.randint(0, 300)).hex().encode())
    return b"\r\n".join(lines) + b"\r\n"

def exact(n, out):
    rnd = random.Random(1234)
    s = smtplib.SMTP(HOST, 25, timeout=20)
    s.ehlo("probe.fleet.test")
    with open(out, "w") as f:
        for i in range(n):
            msg = body(rnd, i)
            s.mail("dev@fleet.test", ["BODY=8BITMIME"])
            code, _ = s.rcpt("ops@fleet.test")
            assert code == 250, code
            code, resp = s.data(msg)
            assert code == 250, (code, resp)
            qid = ID_RE.search(resp).group(1).decode()
            f.write("%s %s\n" % (qid, hashlib.sha256(msg).hexdigest()))
    s.quit()

def converse(sock, lines, expect):
    """Send lines, read one reply per line; check codes."""
    f = sock.makefile("rb")
    replies = []
    for line, code in zip(lines, expect):
        if line is not None:
            sock.sendall(line)
        while True:
            r = f.readline()
            assert r, "connection closed"
            if r[3:4] != b"-":
                break
        replies.append(r)
        assert r.startswith(code), (line, r)
    return replies

def bdat():
    sock = socket.create_connection((HOST, 25), timeout=20)
    payload = b"Subject: bdat\r\n\r\nchunk one\r\n.line with dot\r\n"
    tail = b"last chunk\r\n"
    converse(sock, [None, b"EHLO probe\r\n", b"MAIL FROM:<dev@fleet.test>\r\n",
                    b"RCPT TO:<ops@fleet.test>\r\n",
                    b"BDAT %d\r\n" % len(payload) + payload,
                    b"BDAT %d LAST\r\n" % len(tail) + tail, b"QUIT\r\n"],
             [b"220", b"250", b"250", b"250", b"250", b"250 2.0.0", b"221"])
    # BDAT 0 LAST after a chunk, pipelined in one write
    sock = socket.create_connection((HOST, 25), timeout=20)
    converse(sock, [None, b"EHLO probe\r\n"], [b"220", b"250"])
    sock.sendall(b"MAIL FROM:<dev@fleet.test>\r\nRCPT TO:<ops@fleet.test>\r\nBDAT 6\r\nhi\r\n\r\nBDAT 0 LAST\r\nQUIT\r\n")
    converse(sock, [None] * 5, [b"250", b"250", b"250", b"250 2.0.0", b"221"])

def smuggle():
    payloads = [b"\n.\n", b"\r.\r", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n"]
    for p in payloads:
        sock = socket.create_connection((HOST, 25), timeout=20)
        converse(sock, [None, b"EHLO probe\r\n", b"MAIL FROM:<dev@fleet.test>\r\n",
                        b"RCPT TO:<ops@fleet.test>\r\n", b"DATA\r\n"],
                 [b"220", b"250", b"250", b"250", b"354"])
        smuggled = (b"Subject: s\r\n\r\nhello" + p +
                    b"MAIL FROM:<evil@fleet.test>\r\nRCPT TO:<victim@fleet.test>\r\nDATA\r\nevil\r\n")
        sock.sendall(smuggled + b"\r\n.\r\n")
        r = converse(sock, [None], [b"550 5.6.2"])
        sock.close()

def starttls_inject():
    sock = socket.create_connection((HOST, 25), timeout=20)
    converse(sock, [None, b"EHLO probe\r\n"], [b"220", b"250"])
    sock.sendall(b"STARTTLS\r\nRSET\r\n")   # RSET pipelined in plain text
    f = sock.makefile("rb")
    r = f.readline()
    assert r.startswith(b"220"), r
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    tls = ctx.wrap_socket(sock, server_hostname="relay.mxrelay.test")
    tls.sendall(b"EHLO probe\r\n")
    tf = tls.makefile("rb")
    first = tf.readline()
    # The first reply inside TLS must answer our EHLO, not the injected RSET.
    assert first.startswith(b"250-"), first
    tls.sendall(b"QUIT\r\n")

def relay():
    tricks = ["user%other.com@fleet.test", "other.com!user@fleet.test",
              "\"user@other.com\"@fleet.test", "@fleet.test:user@other.com",
              "user@other.com", "user@[192.0.2.10]"]
    sock = socket.create_connection((HOST, 25), timeout=20)
    converse(sock, [None, b"EHLO probe\r\n", b"MAIL FROM:<dev@fleet.test>\r\n"],
             [b"220", b"250", b"250"])
    for t in tricks:
        converse(sock, [b"RCPT TO:<" + t.encode() + b">\r\n"], [b"554 5.7.1"])
    converse(sock, [b"RCPT TO:<ops@fleet.test>\r\n", b"QUIT\r\n"], [b"250", b"221"])
    # After AUTH on the submission port the same client may relay anywhere.
    s = smtplib.SMTP(HOST, 587, timeout=20)
    s.ehlo("probe")
    s.starttls(context=ssl._create_unverified_context())
    s.ehlo("probe")
    try:
        s.login("device1", "wrong")
        raise SystemExit("wrong password accepted")
    except smtplib.SMTPAuthenticationError:
        pass
    s.login("device1", "s3cret-pass")
    s.sendmail("dev@fleet.test", ["user@other.com", "user@[192.0.2.10]"], b"Subject: auth\r\n\r\nok\r\n")
    s.quit()

mode = sys.argv[2]
{"exact": lambda: exact(int(sys.argv[3]), sys.argv[4]), "bdat": bdat, "smuggle": smuggle,
 "starttls-inject": starttls_inject, "relay": relay}[mode]()
print(mode, "ok")
