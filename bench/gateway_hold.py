#!/usr/bin/python3
"""Holds N streaming /api/generate calls open through a gateway (or Ollama),
reading and dropping their chunks, each re-issued when it ends, for SECONDS;
prints the counts every 2 s. docs/bench.md, "Thousands of waiting calls":
run it against a gateway in front of a slow simulator and measure one more
client's calls beside it (bench/gateway_interleave.py).

  bench/gateway_hold.py http://H:P N SECONDS [NUM_PREDICT]

Needs N file descriptors (ulimit -n) here and --max-connections >= N + 1
at the gateway.
"""
import asyncio
import json
import sys
import time
import urllib.parse


async def hold(url, req, end, stats):
    while time.monotonic() < end:
        try:
            r, w = await asyncio.open_connection(url.hostname, url.port)
        except OSError:
            stats["err"] += 1
            await asyncio.sleep(0.1)
            continue
        stats["open"] += 1
        w.write(req)
        while time.monotonic() < end:
            try:
                got = await asyncio.wait_for(r.read(65536), max(0.01, end - time.monotonic()))
            except asyncio.TimeoutError:
                break
            except OSError:
                stats["err"] += 1
                break
            if not got:
                break
            stats["lines"] += got.count(b"\n")
        stats["open"] -= 1
        stats["done"] += 1
        w.close()


async def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    url = urllib.parse.urlparse(sys.argv[1])
    n, secs = int(sys.argv[2]), float(sys.argv[3])
    predict = int(sys.argv[4]) if len(sys.argv) > 4 else 3000
    body = json.dumps({"model": "sim-small", "prompt": "hold", "stream": True,
                       "options": {"num_predict": predict}}).encode()
    req = (f"POST /api/generate HTTP/1.1\r\nHost: {url.hostname}\r\n"
           f"Content-Type: application/json\r\nX-Agentbus-Cache: off\r\n"
           f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    stats = {"open": 0, "lines": 0, "done": 0, "err": 0}
    end = time.monotonic() + secs
    tasks = [asyncio.create_task(hold(url, req, end, stats)) for _ in range(n)]
    while time.monotonic() < end:
        await asyncio.sleep(2)
        print(json.dumps(stats), flush=True)
    await asyncio.gather(*tasks)


if __name__ == "__main__":
    asyncio.run(main())
