#!/usr/bin/python3
"""The interleaved latency method of docs/bench.md ("The HTTP gateway"): one
client, one call at a time, N calls to each target in shuffled order, so a
change in the machine's load hits every target alike; added = gw p50 minus
direct p50 from the same run.

  bench/gateway_interleave.py N direct=http://H:P gw=http://H:P [direct2=... gw2=...]

Each call is POST /api/generate (stream false, seed 7, num_predict 8) with
X-Agentbus-Cache: $CACHE (default off) on a keep-alive connection, the
request in one write (as libcurl and node send it: Python's http.client
writes headers and body apart, a second wake-up of the server per call).
A pause of $GAP seconds (default 0.002) between calls, as an agent thinks.
A target named gwX is compared with directX.

$TIMEOUT_MS (default: none, the gateway's --timeout-ms) is sent as
X-Agentbus-Timeout-Ms, so a call held somewhere ends in 504 after that long
instead of after the 5-minute default. A call that is not 200 stops the
run with its target, status, latency, index and UTC time (to find it in the
daemons' logs).
"""
import json
import os
import random
import socket
import statistics
import sys
import time
import urllib.parse


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    n = int(sys.argv[1])
    cache = os.environ.get("CACHE", "off")
    gap = float(os.environ.get("GAP", "0.002"))
    tmo = os.environ.get("TIMEOUT_MS")
    extra = f"X-Agentbus-Timeout-Ms: {int(tmo)}\r\n" if tmo else ""
    body = json.dumps({"model": "sim-small", "prompt": "Why is the sky blue?", "stream": False,
                       "options": {"seed": 7, "num_predict": 8}}).encode()
    targets = {}
    for arg in sys.argv[2:]:
        name, url = arg.split("=", 1)
        u = urllib.parse.urlparse(url)
        s = socket.create_connection((u.hostname, u.port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        req = (f"POST /api/generate HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\n"
               f"Content-Type: application/json\r\nX-Agentbus-Cache: {cache}\r\n{extra}"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        targets[name] = {"sock": s, "req": req, "buf": b"", "lat": []}
    order = list(targets) * n
    random.seed(1)
    random.shuffle(order)
    for i, name in enumerate(order):
        t = targets[name]
        t0 = time.perf_counter()
        status = call(t)
        ms = (time.perf_counter() - t0) * 1000
        if status != 200:
            when = time.strftime("%H:%M:%S", time.gmtime(time.time() - ms / 1000))
            sys.exit(f"{name}: HTTP {status} after {ms:.0f} ms (call {i + 1} of {len(order)}, "
                     f"sent at {when} UTC)")
        t["lat"].append(ms)
        if gap:
            time.sleep(gap)
    res = {}
    for name, t in targets.items():
        v = sorted(t["lat"])
        res[name] = (statistics.median(v), statistics.mean(v), v[int(len(v) * 0.9)])
        print(f"{name:12s} n={len(v)} p50={res[name][0]:.3f} mean={res[name][1]:.3f} "
              f"p90={res[name][2]:.3f} ms")
    for name in targets:
        base = name.replace("gw", "direct", 1)
        if name.startswith("gw") and base in res:
            print(f"added {name}: p50 {res[name][0] - res[base][0]:+.3f} "
                  f"mean {res[name][1] - res[base][1]:+.3f} ms")


def call(t):
    """One request, its response read whole (Content-Length); the status."""
    s = t["sock"]
    s.sendall(t["req"])
    buf = t["buf"]
    while b"\r\n\r\n" not in buf:
        got = s.recv(65536)
        if not got:
            sys.exit("connection closed")
        buf += got
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    length = [int(x.split(":")[1]) for x in lines if x.lower().startswith("content-length")]
    if not length:
        sys.exit("no Content-Length in the answer")
    while len(rest) < length[0]:
        rest += s.recv(65536)
    t["buf"] = rest[length[0]:]
    return int(lines[0].split()[1])


if __name__ == "__main__":
    main()
