#!/usr/bin/python3
"""agentbus-gateway and clients that take their answers one after another
as fast as they can; a real broker, ollama-sim, an
Ollama worker and two gateways (--threads 0 and --threads 2) on free
loopback ports. Split from test_harden.py (its helpers are used here).

Usage: test_readers.py BIN_DIR CASE, CASE one of:
  sequential  --max-in-flight 1: 660 requests in a tight loop, each on a
              new connection and sent once the one before is read whole
              (generates, stream false and true, and a 404 for an unknown
              model): none is shed (503 server busy). An answer could reach
              its client before libmicrohttpd's completion hook freed the
              slot, so the next request was refused.
Waits are bounded polls for states; no speed is asserted."""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_harden as h  # noqa: E402  (sets BIN and CASE from argv)

t = h.t
check, wait_for, post = t.check, t.wait_for, t.post


BODIES = [{"model": "fast", "prompt": "one", "stream": False},
          {"model": "fast", "prompt": "two", "stream": True},
          {"model": "nosuchmodel", "prompt": "three", "stream": False}]


def sequential_raw(port, n):
    """N requests (BODIES in turn), each on a new connection, each sent the
    moment the answer before it is read whole (its connection is made
    while that answer comes): [(i, status, text)] of those not answered as
    expected (200, or 404 for the unknown model)."""
    reqs = []
    for b in BODIES:
        data = json.dumps(b).encode()
        reqs.append(("POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     "X-Agentbus-Cache: off\r\nConnection: close\r\n"
                     "Content-Type: application/json\r\n"
                     f"Content-Length: {len(data)}\r\n\r\n").encode() + data)
    bad = []
    nxt = socket.create_connection(("127.0.0.1", port), timeout=30)
    for i in range(n):
        s = nxt
        s.sendall(reqs[i % 3])
        nxt = socket.create_connection(("127.0.0.1", port), timeout=30) if i + 1 < n else None
        st, text = t.read_response(s)
        s.close()
        if st != (404 if i % 3 == 2 else 200):
            bad.append((i, st, text[-100:]))
    return bad


def case_sequential(tmp):
    gws = h.both_modes(tmp, ["--max-in-flight", "1"])
    for gw, port, _ in gws:
        shed, other = 0, []
        for i in range(60):  # urllib's way: connect, send, read, close
            st, _, text = post(gw + "/api/generate", BODIES[i % 3],
                               headers={"X-Agentbus-Cache": "off"})
            if st == 503:
                shed += 1
            elif st != (404 if i % 3 == 2 else 200):
                other.append((i, st, text[:80]))
        bad = sequential_raw(port, 600)
        shed += sum(1 for b in bad if b[1] == 503)
        other += [b for b in bad if b[1] != 503]
        check(shed == 0 and not other,
              f"{gw}: 660 sequential requests at --max-in-flight 1: none shed ({shed} got 503; "
              f"unexpected: {other[:3]})")
        n = t.shed(gw, "busy")
        check(n == 0, f"{gw}: agentbus_gateway_shed_total{{reason=\"busy\"}} is 0 ({n:.0f})")


def main():
    tmp = tempfile.mkdtemp(prefix="ab-gw-readers.")
    try:
        {"sequential": case_sequential}[t.CASE](tmp)
        t.stop_all()
        h.s_gateways_clean()
        check(True, "every gateway exited 0 on SIGTERM, no sanitizer report")
    finally:
        t.stop_all()
        subprocess.run(["rm", "-rf", tmp], check=False)


if __name__ == "__main__":
    main()
