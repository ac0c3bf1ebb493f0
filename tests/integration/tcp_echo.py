"""tcp_echo.py - Linux-side peers for lib/net integration tests.

  tcp_echo.py clients HOST PORT N BYTES   N concurrent clients each send BYTES
                                          random bytes and read the echo back;
                                          SHA-256 of sent and received compared
  tcp_echo.py server HOST PORT SECONDS    an echo server (asyncio) for the
                                          stack's active opens
Exit status 0 only if every byte matched.  All loops are bounded in time.
"""
import asyncio, hashlib, os, sys, time

async def one_client(host, port, nbytes, idx, deadline):
    data = os.urandom(nbytes)
    want = hashlib.sha256(data).hexdigest()
    r, w = await asyncio.wait_for(asyncio.open_connection(host, port), 20)
    async def sender():
        view = memoryview(data)
        for off in range(0, nbytes, 65536):
            w.write(view[off:off + 65536])
            await w.drain()
    st = asyncio.create_task(sender())
    h = hashlib.sha256()
    got = 0
    while got < nbytes:
        chunk = await asyncio.wait_for(r.read(262144), max(1, deadline - time.monotonic()))
        if not chunk:
            break
        h.update(chunk)
        got += len(chunk)
    await st
    w.close()
    try:
        await asyncio.wait_for(w.wait_closed(), 5)
    except Exception:
        pass
    if got != nbytes or h.hexdigest() != want:
        print(f"client {idx}: got {got}/{nbytes} bytes, digest match={h.hexdigest() == want}")
        return False
    return True

async def clients(host, port, n, nbytes):
    deadline = time.monotonic() + 240
    sem = asyncio.Semaphore(n)
    async def guarded(i):
        async with sem:
            try:
                return await one_client(host, port, nbytes, i, deadline)
            except Exception as e:
                print(f"client {i}: {type(e).__name__}: {e}")
                return False
    res = await asyncio.gather(*(guarded(i) for i in range(n)))
    ok = sum(res)
    print(f"clients ok {ok} of {n}")
    return ok == n

async def echo(r, w):
    try:
        while True:
            d = await r.read(262144)
            if not d:
                break
            w.write(d)
            await w.drain()
    except Exception:
        pass
    w.close()

async def server(host, port, seconds):
    srv = await asyncio.start_server(echo, host, port, backlog=1024)
    print("listening", flush=True)
    async with srv:
        await asyncio.sleep(seconds)

def main():
    mode = sys.argv[1]
    if mode == "clients":
        ok = asyncio.run(clients(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])))
        sys.exit(0 if ok else 1)
    elif mode == "server":
        asyncio.run(server(sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
    else:
        sys.exit(2)

main()
