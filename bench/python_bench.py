#!/usr/bin/python3
"""Python binding overhead: request/reply msgs/s and lone latency of the
Python client against the C library and against pyzmq over a bare hop,
measured in the same run, interleaved round by round.

  agentbus C    build/agentbus-bench --only agentbus --broker EP (libagentbus
                from C), against the same broker and echo worker as Python
  agentbus Py   this package: lone latency with the sync Client.request,
                throughput with AsyncClient keeping WINDOW requests in flight
  pyzmq hop     pyzmq DEALER -> ROUTER/DEALER zmq.proxy -> ROUTER echo
                (zmq.proxy on one socket): libzmq only, no broker

The binding's own cost per lone request is taken from --pairs alternating
short slices (C, then Python), differences paired in time.

Usage: /usr/bin/python3 bench/python_bench.py [--rounds N] [--seconds S]
       [--count N] [--window N] [--size N] [--pairs N] [--pair-count N] [--json]
Needs a built tree (build/) and python3-zmq.
"""

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("AB_BIN_DIR", os.path.join(ROOT, "build"))
os.environ.setdefault("AGENTBUS_LIB", os.path.join(BIN, "libagentbus.so"))
sys.path.insert(0, os.path.join(ROOT, "python"))
sys.path.insert(0, os.path.join(ROOT, "tools", "lib"))

import agentbus  # noqa: E402
from ports import free_port  # noqa: E402  (tools/lib/ports.py)
import zmq  # noqa: E402

HOP = r"""
import sys, threading, zmq
ctx = zmq.Context()
front, back, echo = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER), ctx.socket(zmq.ROUTER)
for s in (front, back, echo):
    s.setsockopt(zmq.SNDHWM, 100000); s.setsockopt(zmq.RCVHWM, 100000)
front.bind("tcp://127.0.0.1:%s" % sys.argv[1])
echo.bind("tcp://127.0.0.1:%s" % sys.argv[2])
back.connect("tcp://127.0.0.1:%s" % sys.argv[2])
threading.Thread(target=zmq.proxy, args=(echo, echo), daemon=True).start()
print("ready", flush=True)
zmq.proxy(front, back)
"""


def pct(samples, p):
    s = sorted(samples)
    return s[min(len(s) - 1, int(len(s) * p))]


def bench_c(ep, a):
    out = subprocess.run([os.path.join(BIN, "agentbus-bench"), "--broker", ep, "--only",
                          "agentbus", "--json", "--runs", "1", "--seconds", str(a.seconds),
                          "--window", str(a.window), "--latency-count", str(a.count),
                          "--size-small", str(a.size)],
                         capture_output=True, text=True, timeout=600, check=True)
    r = json.loads(out.stdout)["agentbus"]
    return r["rr_small_msgs_s"], r["lone_p50_us"], r["lone_p99_us"]


def lone_c(ep, count):
    """The C library's lone round trip, p50 (agentbus-bench, short run)."""
    out = subprocess.run([os.path.join(BIN, "agentbus-bench"), "--broker", ep, "--only",
                          "agentbus", "--json", "--runs", "1", "--seconds", "0.05",
                          "--window", "16", "--latency-count", str(count)],
                         capture_output=True, text=True, timeout=600, check=True)
    return json.loads(out.stdout)["agentbus"]["lone_p50_us"]


def lone_py(client, count, payload):
    lat = []
    cpu0 = time.process_time()
    for _ in range(count):
        t0 = time.perf_counter_ns()
        client.request("echo", payload)
        lat.append((time.perf_counter_ns() - t0) / 1000.0)
    cpu = (time.process_time() - cpu0) / count * 1e6
    return pct(lat, 0.50), cpu


def lone_raw(client, count, payload):
    """CPU per request of the bare ctypes call (no wrapper code): the floor
    that the C library, libzmq's I/O thread and ctypes itself cost here."""
    from ctypes import byref, c_size_t, c_void_p
    lib = agentbus._lib.lib
    h, svc, n = client._h, b"echo", len(payload)
    reply, size = c_void_p(), c_size_t()
    cpu0 = time.process_time()
    for _ in range(count):
        lib.ab_client_request(h, svc, payload, n, -1, byref(reply), byref(size))
        lib.ab_free(reply)
    return (time.process_time() - cpu0) / count * 1e6


def paired(ep, a, payload):
    """Lone latency, C then Python, in short alternating slices: the
    difference of each pair is taken close in time, so the machine's noise
    (which moves p50 by 2-3x here) mostly cancels; the median of the
    differences is reported, and the CPU the wrapper adds over a bare ctypes call of
    ab_client_request (median of the slices)."""
    diffs, cpus = [], []
    with agentbus.Client(ep) as c:
        for _ in range(a.pairs):
            cp = lone_c(ep, a.pair_count)
            pp, cpu = lone_py(c, a.pair_count, payload)
            diffs.append(pp - cp)
            cpus.append(cpu - lone_raw(c, a.pair_count, payload))
    return statistics.median(diffs), statistics.median(cpus)


def bench_py(ep, a, payload):
    with agentbus.Client(ep) as c:
        for _ in range(200):
            c.request("echo", payload)
        lat = []
        for _ in range(a.count):
            t0 = time.perf_counter_ns()
            c.request("echo", payload)
            lat.append((time.perf_counter_ns() - t0) / 1000.0)

    async def window():
        async with agentbus.AsyncClient(ep) as c:
            done = 0
            end = time.monotonic() + a.seconds

            async def one():
                nonlocal done
                while time.monotonic() < end:
                    await c.request("echo", payload)
                    done += 1

            t0 = time.monotonic()
            await asyncio.gather(*(one() for _ in range(a.window)))
            return done / (time.monotonic() - t0)

    rate = asyncio.run(window())
    return rate, pct(lat, 0.50), pct(lat, 0.99)


def bench_zmq(port, a, payload):
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.SNDHWM, 100000)
    s.setsockopt(zmq.RCVHWM, 100000)
    s.connect("tcp://127.0.0.1:%d" % port)
    for _ in range(200):
        s.send(payload)
        s.recv()
    lat = []
    for _ in range(a.count):
        t0 = time.perf_counter_ns()
        s.send(payload)
        s.recv()
        lat.append((time.perf_counter_ns() - t0) / 1000.0)
    for _ in range(a.window):
        s.send(payload)
    done = 0
    t0 = time.monotonic()
    end = t0 + a.seconds
    while time.monotonic() < end:
        s.recv()
        s.send(payload)
        done += 1
    for _ in range(a.window):
        s.recv()
    rate = done / (time.monotonic() - t0)
    s.close(0)
    return rate, pct(lat, 0.50), pct(lat, 0.99)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--count", type=int, default=3000)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--pairs", type=int, default=15,
                    help="alternating C/Python lone-latency slices for the overhead figure")
    ap.add_argument("--pair-count", type=int, default=500)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    payload = (b"lorem ipsum dolor sit amet " * ((a.size // 27) + 1))[:a.size]
    port, hop_front, hop_echo = free_port(), free_port(), free_port()
    ep = "tcp://127.0.0.1:%d" % port
    procs = [subprocess.Popen([os.path.join(BIN, "agentbus-broker"), "--bind", ep,
                               "--log-level", "warn"], stdout=subprocess.DEVNULL),
             subprocess.Popen([os.path.join(BIN, "agentbus-worker"), "--broker", ep,
                               "--service", "echo", "--capacity", "1000"],
                              stdout=subprocess.DEVNULL),
             subprocess.Popen([sys.executable, "-c", HOP, str(hop_front), str(hop_echo)],
                              stdout=subprocess.PIPE, text=True)]
    try:
        procs[2].stdout.readline()
        with agentbus.Client(ep) as c:  # wait for the worker
            for _ in range(100):
                try:
                    c.request("echo", b"x", timeout=0.5)
                    break
                except agentbus.AgentbusError:
                    time.sleep(0.1)
        res = {"c": [], "py": [], "pyzmq": []}
        for _ in range(a.rounds):  # interleaved, so noise hits all three
            res["c"].append(bench_c(ep, a))
            res["py"].append(bench_py(ep, a, payload))
            res["pyzmq"].append(bench_zmq(hop_front, a, payload))
        over, cpu = paired(ep, a, payload)
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
    med = {k: tuple(statistics.median(r[i] for r in v) for i in range(3))
           for k, v in res.items()}
    if a.json:
        print(json.dumps({"args": vars(a), "median": med, "rounds": res,
                          "python_over_c_p50_us": over,
                          "python_wrapper_cpu_us": cpu}))
        return
    print("%d B payload, window %d, %d rounds of %.1f s / %d lone requests (medians)"
          % (a.size, a.window, a.rounds, a.seconds, a.count))
    print("%-28s %12s %12s %12s" % ("", "msgs/s", "lone p50 us", "lone p99 us"))
    names = {"c": "agentbus, C library", "py": "agentbus, Python binding",
             "pyzmq": "pyzmq, bare hop"}
    for k in ("c", "py", "pyzmq"):
        r, p50, p99 = med[k]
        print("%-28s %12.0f %12.1f %12.1f" % (names[k], r, p50, p99))
    print("Python over C, lone request p50, median of %d paired slices: %+.1f us "
          "(wrapper CPU over a bare ctypes call: %.1f us); throughput %.2fx of C"
          % (a.pairs, over, cpu, med["py"][0] / med["c"][0]))


if __name__ == "__main__":
    main()
