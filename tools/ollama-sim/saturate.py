#!/usr/bin/env python3
"""Drives a running ollama-sim with CLIENTS concurrent clients for SECONDS
and prints the GPU-slot utilisation it recorded (GET /sim/stats):
utilisation = sum of slot busy time / (elapsed * slots of the model).

usage: saturate.py PORT [--model M] [--clients N] [--seconds S] [--stream]
"""
import argparse
import http.client
import json
import threading
import time


def call(port, method, path, body=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request(method, path, body=json.dumps(body) if body is not None else None)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("--model", default="sim-small")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--stream", action="store_true")
    a = ap.parse_args()

    call(a.port, "POST", "/api/generate", {"model": a.model})  # load it first
    call(a.port, "POST", "/sim/stats/reset")
    stop = time.monotonic() + a.seconds
    counts = {"ok": 0, "busy": 0, "other": 0}
    lock = threading.Lock()

    def client(i):
        # One keep-alive connection per client, as a worker slot would use.
        c = http.client.HTTPConnection("127.0.0.1", a.port, timeout=60)
        while time.monotonic() < stop:
            body = {"model": a.model, "prompt": "client %d asks something" % i,
                    "stream": a.stream}
            c.request("POST", "/api/generate", json.dumps(body))
            r = c.getresponse()
            r.read()
            key = "ok" if r.status == 200 else "busy" if r.status == 503 else "other"
            with lock:
                counts[key] += 1
        c.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(a.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _, raw = call(a.port, "GET", "/sim/stats")
    st = json.loads(raw)
    m = next(x for x in st["models"] if x["name"].split(":")[0] == a.model.split(":")[0])
    busy = sum(s["busy_ns"] for s in m["slots"])
    util = busy / (st["uptime_ns"] * len(m["slots"]))
    print("model %s slots %d clients %d seconds %.1f: %d ok, %d 503, %d other; "
          "%.1f requests/s; slot utilisation %.1f%%; per slot %s" % (
              m["name"], len(m["slots"]), a.clients, st["uptime_ns"] / 1e9, counts["ok"],
              counts["busy"], counts["other"], counts["ok"] / (st["uptime_ns"] / 1e9),
              100 * util, ", ".join("%.1f%%" % (100 * s["busy_ns"] / st["uptime_ns"])
                                   for s in m["slots"])))


if __name__ == "__main__":
    main()
