#!/usr/bin/python3
# deliver_tls_sink.py - a small SMTP sink with STARTTLS for the delivery tests
# (deliver_pool10k.sh).  smtp-sink cannot speak TLS; this one does, and it
# watches what the relay's client does from the server side:
#
#   deliver_tls_sink.py ADDR PORT CERT KEY OUT STATS [MAX_SECONDS]
#
# Offers PIPELINING and STARTTLS (RFC 3207), takes DATA with dot-unstuffing
# (RFC 5321 4.5.2), and appends one line per message to OUT:
#   "<X-Probe value> <sha256 of the body after the header> <TLS version|-> <conn no.>"
# STATS (JSON, rewritten whenever a connection ends and every 0.2 s) holds the connections
# accepted, the peak number open at once, TLS handshakes and how many of them
# resumed a session, the message count and the SNI names the client sent.  Exits after MAX_SECONDS (300).
import asyncio
import hashlib
import json
import os
import re
import ssl
import sys

addr, port, crt, key, out_path, stats_path = sys.argv[1:7]
max_s = float(sys.argv[7]) if len(sys.argv) > 7 else 300.0
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(crt, key)
st = {"conns": 0, "open": 0, "peak": 0, "tls": 0, "resumed": 0, "messages": 0, "errors": 0,
      "sni": []}


def sni_seen(sslobj, name, sslctx):
    # RFC 6066 3: HostName is a DNS name; an address literal must not be sent.
    if name is not None and name not in st["sni"] and len(st["sni"]) < 16:
        st["sni"].append(name)
    return None


ctx.sni_callback = sni_seen
out = open(out_path, "a", buffering=1)
PROBE = re.compile(rb"^X-Probe: *(\S+)", re.M)


def dump_stats():
    tmp = stats_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(st, f)
    os.replace(tmp, stats_path)


async def session(r, w):
    st["conns"] += 1
    st["open"] += 1
    st["peak"] = max(st["peak"], st["open"])
    no = st["conns"]
    tls = None
    try:
        w.write(b"220 tls-sink.test ESMTP\r\n")
        await w.drain()
        while True:
            line = await asyncio.wait_for(r.readline(), 60)
            if not line:
                return
            cmd = line.strip().upper()
            if cmd.startswith(b"EHLO"):
                caps = [b"tls-sink.test", b"PIPELINING", b"SIZE 10485760", b"8BITMIME"]
                if tls is None:
                    caps.append(b"STARTTLS")
                w.write(b"".join(b"250-" + c + b"\r\n" for c in caps[:-1]) +
                        b"250 " + caps[-1] + b"\r\n")
            elif cmd == b"STARTTLS" and tls is None:
                w.write(b"220 2.0.0 ready to start TLS\r\n")
                await w.drain()
                await w.start_tls(ctx)
                so = w.get_extra_info("ssl_object")
                tls = so.version()
                st["tls"] += 1
                if so.session_reused:
                    st["resumed"] += 1
                continue
            elif cmd == b"DATA":
                w.write(b"354 go ahead\r\n")
                await w.drain()
                parts = []
                while True:
                    l = await asyncio.wait_for(r.readline(), 60)
                    if not l:
                        return
                    if l == b".\r\n":
                        break
                    parts.append(l[1:] if l.startswith(b".") else l)
                data = b"".join(parts)
                head, sep, body = data.partition(b"\r\n\r\n")
                m = PROBE.search(head)
                probe = m.group(1).decode() if m else "none"
                out.write(f"{probe} {hashlib.sha256(body).hexdigest()} {tls or '-'} {no}\n")
                st["messages"] += 1
                w.write(b"250 2.0.0 Ok: queued\r\n")
            elif cmd == b"QUIT":
                w.write(b"221 2.0.0 Bye\r\n")
                await w.drain()
                return
            elif cmd.startswith((b"MAIL", b"RCPT", b"RSET", b"NOOP", b"HELO")):
                w.write(b"250 2.0.0 Ok\r\n")
            else:
                w.write(b"502 5.5.2 command not recognized\r\n")
            await w.drain()
    except (asyncio.TimeoutError, ConnectionError, ssl.SSLError, OSError):
        st["errors"] += 1
    finally:
        st["open"] -= 1
        try:
            w.close()
        except Exception:
            pass
        dump_stats()


async def ticker():
    while True:
        await asyncio.sleep(0.2)
        dump_stats()


async def main():
    srv = await asyncio.start_server(session, addr, int(port), backlog=64, limit=1 << 20)
    dump_stats()
    asyncio.get_running_loop().create_task(ticker())
    async with srv:
        try:
            await asyncio.wait_for(srv.serve_forever(), max_s)
        except asyncio.TimeoutError:
            pass
    dump_stats()


asyncio.run(main())
