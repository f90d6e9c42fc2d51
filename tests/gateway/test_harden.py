#!/usr/bin/python3
"""agentbus-gateway against hostile or sloppy clients, with a real broker,
ollama-sim, an Ollama worker and the gateway on free loopback ports.

Usage: test_harden.py BIN_DIR CASE, CASE one of:
  slowloris  --max-connections 16 (--threads 0 and --threads 2): 16
             sockets that send a header byte a second and never finish
             hold every connection; within the default header deadline
             (10 s) plus a generous margin they are closed, /healthz and a
             generate are served again, and /metrics counts them
             (header_timeouts_total{reason="partial"}).
  idle       --header-timeout-ms 1500: a keep-alive connection left idle
             after its answer is closed and counted as idle; a request
             whose headers come in pieces within the deadline is served.
Waits are bounded polls for states; no speed is asserted (only that a
deadline of seconds is kept within tens of seconds). Standard library
only; helpers shared with test_shed.py."""
import os
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_shed as t  # noqa: E402

t.BIN = sys.argv[1] if len(sys.argv) > 1 else "build"
t.CASE = sys.argv[2] if len(sys.argv) > 2 else "slowloris"
check, fail, get, post, wait_for = t.check, t.fail, t.get, t.post, t.wait_for


def status_of(url, timeout=5):
    """(status, text); HTTP errors are answers too."""
    try:
        return get(url, timeout=timeout)
    except t.urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class Dribbler:
    """Sockets that each send one byte of a request's headers a second and
    never finish them; CLOSED[i] is set when the server closed socket i."""

    HEAD = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 4000

    def __init__(self, port, n):
        self.socks = [socket.create_connection(("127.0.0.1", port), timeout=10)
                      for _ in range(n)]
        for s in self.socks:
            s.setblocking(False)
        self.closed = [False] * n
        self.stop = False
        self.th = threading.Thread(target=self.run, daemon=True)
        self.th.start()

    def run(self):
        pos = 0
        while not self.stop and pos < len(self.HEAD):
            for i, s in enumerate(self.socks):
                if self.closed[i]:
                    continue
                try:
                    r, _, _ = select.select([s], [], [], 0)
                    if r and not s.recv(4096):
                        self.closed[i] = True
                        continue
                    s.send(self.HEAD[pos:pos + 1])
                except OSError:  # reset, broken pipe: closed by the server
                    self.closed[i] = True
            pos += 1
            time.sleep(1.0)

    def close(self):
        self.stop = True
        self.th.join(timeout=5)
        for s in self.socks:
            s.close()


def header_timeouts(gw, reason):
    return t.metrics(gw).get(f'agentbus_gateway_header_timeouts_total{{reason="{reason}"}}', -1)


def case_slowloris(tmp):
    _, gws = t.start_stack(tmp, [["--max-connections", "16"],
                                 ["--max-connections", "16", "--threads", "2"]])
    drib = [Dribbler(port, 16) for _, port, _ in gws]
    try:
        t0 = time.monotonic()
        # Every slot is held now: /healthz waits in the backlog or is
        # refused at accept until the header deadline (10 s) frees them.
        for (gw, _, _), d in zip(gws, drib):
            wait_for(f"{gw}: /healthz answered while 16 sockets dribble headers",
                     lambda: status_of(gw + "/healthz")[0] == 200, 40)
            check(True, f"{gw}: /healthz answered after {time.monotonic() - t0:.1f} s "
                        f"(header deadline 10 s)")
            wait_for(f"{gw}: the slow sockets closed by the gateway", lambda: all(d.closed), 20)
            check(True, f"{gw}: all 16 slow sockets closed by the gateway while still sending")
            st, _, text = post(gw + "/api/generate", {"model": "fast", "prompt": "hi",
                                                      "stream": False})
            check(st == 200, f"{gw}: a real client served ({st} {text[:100]})")
            n = header_timeouts(gw, "partial")
            check(n >= 16, f"{gw}: header_timeouts_total{{reason=\"partial\"}} counts them ({n})")
    finally:
        for d in drib:
            d.close()


def case_idle(tmp):
    _, [(gw, port, _)] = t.start_stack(tmp, [["--header-timeout-ms", "1500"]])
    # A request sent in pieces, each well within the deadline, is served.
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    for piece in (b"GET /healthz HTTP/1.1\r\n", b"Host: 127.0.0.1\r\n", b"\r\n"):
        s.sendall(piece)
        time.sleep(0.2)
    st, text = t.read_response(s)
    check(st == 200, f"headers sent in pieces within the deadline: served ({st})")
    # The connection stays open for the next request; left idle, it is
    # closed once the deadline passes, counted as idle.
    before = header_timeouts(gw, "idle")
    s.settimeout(30)
    t0 = time.monotonic()
    try:
        data = s.recv(100)
    except (ConnectionResetError, socket.timeout) as e:
        data = repr(e).encode()
    waited = time.monotonic() - t0
    s.close()
    check(data == b"" and waited < 25,
          f"an idle keep-alive connection closed by the gateway after {waited:.1f} s ({data!r})")
    n = wait_for("the idle close counted", lambda: header_timeouts(gw, "idle") >= before + 1 and
                 header_timeouts(gw, "idle"))
    check(header_timeouts(gw, "partial") == 0, f"counted as idle ({n}), not partial")
    check(status_of(gw + "/healthz")[0] == 200, "and the gateway serves on")


def main():
    tmp = tempfile.mkdtemp(prefix="ab-gw-harden.")
    try:
        {"slowloris": case_slowloris, "idle": case_idle}[t.CASE](tmp)
    finally:
        t.stop_all()
        subprocess.run(["rm", "-rf", tmp], check=False)


if __name__ == "__main__":
    main()
