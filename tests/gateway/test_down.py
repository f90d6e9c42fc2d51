#!/usr/bin/python3
"""agentbus-gateway with its broker stopped or gone, against a real broker,
ollama-sim, an Ollama worker and the gateway on free loopback ports.

Usage: test_down.py BIN_DIR CASE, CASE one of:
  lookups  the broker stopped (SIGSTOP): /api/tags waits for it (at most
           5 s) without stalling the gateway: /healthz and /api/version
           answer meanwhile, and the lookup ends with a 5xx; on SIGCONT
           /api/tags lists the models again.
  stopped  the broker stopped (SIGSTOP), its TCP connection still up:
           /healthz turns 503 "broker unresponsive" (broker_connected
           true) within a few heartbeats, and 200 again on SIGCONT.
  down     the broker killed: a stream in flight ends (not hangs); once
           /healthz says 503, new requests (Ollama, OpenAI, /api/tags) get
           503 with Retry-After at once instead of waiting for their
           deadline; a broker started again on the same port serves.
Waits are bounded polls for states; the only timings asserted are
generous bounds (answered within 3 s rather than 5 s or minutes).
Standard library only; helpers shared with test_shed.py."""
import json
import os
import signal
import sys
import tempfile
import threading
import time
import subprocess

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_shed as t  # noqa: E402

t.BIN = sys.argv[1] if len(sys.argv) > 1 else "build"
t.CASE = sys.argv[2] if len(sys.argv) > 2 else "lookups"
check, fail, get, post, wait_for = t.check, t.fail, t.get, t.post, t.wait_for


def broker():
    return t.PROCS[0][0]


def status_of(url, timeout=10):
    """(status, text), HTTP errors too."""
    try:
        return get(url, timeout=timeout)
    except t.urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def timed(fn):
    t0 = time.monotonic()
    v = fn()
    return v, time.monotonic() - t0


def case_lookups(tmp):
    _, [(gw, _, _)] = t.start_stack(tmp, [[]])
    os.kill(broker().pid, signal.SIGSTOP)
    wait_for("the broker stopped", lambda: t.stopped(broker().pid))
    out = {}
    th = threading.Thread(target=lambda: out.update(r=timed(lambda: status_of(gw + "/api/tags"))))
    th.start()
    time.sleep(0.5)  # the lookup is waiting for the broker now
    try:
        (st, _), took = timed(lambda: status_of(gw + "/healthz", timeout=3))
    except OSError as e:
        fail(f"/healthz not answered within 3 s while /api/tags waits ({e})")
    check(took < 3, f"/healthz answered ({st}) in {took:.2f} s while /api/tags waits")
    (st, _), took = timed(lambda: status_of(gw + "/api/version", timeout=3))
    check(st == 200, f"/api/version answered in {took:.2f} s while /api/tags waits")
    th.join(20)
    (st, text), took = out["r"]
    check(500 <= st < 600 and took < 9, f"/api/tags ended with {st} after {took:.1f} s: {text[:100]}")
    os.kill(broker().pid, signal.SIGCONT)
    wait_for("the models again", lambda: "fast" in status_of(gw + "/api/tags")[1])
    check(status_of(gw + "/healthz")[0] == 200, "/healthz 200 again")


def case_stopped(tmp):
    _, [(gw, _, _)] = t.start_stack(tmp, [[]])
    os.kill(broker().pid, signal.SIGSTOP)

    def unresponsive():
        st, text = status_of(gw + "/healthz", timeout=3)
        j = json.loads(text)
        return st == 503 and j["status"] == "broker unresponsive" and j["broker_connected"] and j
    j = wait_for("/healthz to say the broker is unresponsive, its connection up",
                 unresponsive, seconds=5)
    check(not j["broker_responsive"], f"/healthz: {j}")
    m = t.metrics(gw)
    check(m["agentbus_gateway_broker_responsive"] == 0, "/metrics: broker_responsive 0")
    os.kill(broker().pid, signal.SIGCONT)
    wait_for("/healthz 200 again", lambda: status_of(gw + "/healthz")[0] == 200, seconds=15)
    j = json.loads(status_of(gw + "/healthz")[1])
    check(j["broker_responsive"] and j["broker_connected"], f"/healthz: {j}")
    check(t.metrics(gw)["agentbus_gateway_broker_responsive"] == 1,
          "/metrics: broker_responsive 1")


def case_down(tmp):
    _, [(gw, port, _)] = t.start_stack(tmp, [[]])
    held = t.raw_request(port, "/api/generate", dict(t.SLOW, prompt="a story"),
                         ["X-Agentbus-Cache: off"])
    st, text = t.read_response(held, until=b'"response"')
    check(st == 200, f"a stream in flight ({st})")
    argv = broker().args
    broker().kill()
    broker().wait()
    wait_for("/healthz 503", lambda: status_of(gw + "/healthz")[0] == 503)
    st, text = t.read_response(held, until=b'"error"')
    check('"error"' in text, f"the stream in flight ended with an error: {text[-160:]}")
    held.close()
    for path, body in (("/api/generate", {"model": "fast", "prompt": "hi", "stream": False}),
                       ("/api/generate", {"model": "fast", "prompt": "hi"}),
                       ("/v1/chat/completions",
                        {"model": "fast", "messages": [{"role": "user", "content": "hi"}]})):
        try:
            (st, hd, text), took = timed(lambda: post(gw + path, body, timeout=10))
        except OSError as e:
            fail(f"{path} with the broker gone: no answer within 10 s ({e})")
        check(st == 503 and took < 3 and hd.get("Retry-After") == "1",
              f"{path} with the broker gone: {st} in {took:.2f} s, Retry-After "
              f"{hd.get('Retry-After')}: {text[:120]}")
    (st, text), took = timed(lambda: status_of(gw + "/api/tags"))
    check(st == 503 and took < 3, f"/api/tags with the broker gone: {st} in {took:.2f} s")
    t.PROCS[0] = (t.spawn(tmp, "broker2", argv), t.PROCS[0][1])
    wait_for("/healthz 200 with the broker back", lambda: status_of(gw + "/healthz")[0] == 200)
    wait_for("a request served again",
             lambda: post(gw + "/api/generate", {"model": "fast", "prompt": "back",
                                                 "stream": False})[0] == 200)
    check(True, "served again after the broker came back")


def main():
    tmp = tempfile.mkdtemp(prefix="ab-gw-down.")
    try:
        {"lookups": case_lookups, "stopped": case_stopped, "down": case_down}[t.CASE](tmp)
    finally:
        t.stop_all()
        subprocess.run(["rm", "-rf", tmp], check=False)


if __name__ == "__main__":
    main()
