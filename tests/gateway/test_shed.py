#!/usr/bin/python3
"""agentbus-gateway under overload (issue 20): bounded intake and shedding,
against a real broker, ollama-sim, an Ollama worker and the gateway on free
loopback ports.

Usage: test_shed.py BIN_DIR CASE, CASE one of:
  busy    --max-in-flight 2: two slow streams are held, the next requests
          get 503 "server busy" at once (Ollama and OpenAI shapes,
          Retry-After), counted in /metrics, never reach the simulator;
          the two complete, and then a request is served again.
  intake  the gateway stopped (SIGSTOP) while requests wait in its listen
          backlog: on SIGCONT a request older than --max-queue-ms gets 503,
          one older than its own X-Agentbus-Timeout-Ms 504, one whose client
          already closed is dropped; /healthz, as old, is answered; none
          reaches the simulator; each counted by reason.
  hangup  a client that hangs up mid-stream has its bus call cancelled:
          counted, and the simulator sees the abort; one that hangs up
          while a stream: false call waits is counted as cancelled, not as
          a 5xx response or a bus error.
  pipeline  requests sent back to back on one connection, the first slow:
          the later ones waited for their connection, not for the gateway,
          and are served (no 503 queue, no 504 deadline).
Waits are bounded polls for states; nothing asserts a speed. Standard
library only."""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "tools", "lib"))
from ports import free_port  # noqa: E402  (tools/lib/ports.py)
import sanitizer  # noqa: E402  (tools/lib/sanitizer.py)

BIN = sys.argv[1] if len(sys.argv) > 1 else "build"
CASE = sys.argv[2] if len(sys.argv) > 2 else "busy"
PROCS = []


def fail(msg):
    print(f"FAIL ({CASE}): {msg}", file=sys.stderr)
    for p, log in PROCS:
        try:
            with open(log) as f:
                tail = f.read()[-1500:]
            print(f"--- {log}\n{tail}", file=sys.stderr)
        except OSError:
            pass
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)
    print(f"ok - {msg}")


def spawn(tmp, name, argv):
    log = os.path.join(tmp, name + ".log")
    p = subprocess.Popen(argv, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    PROCS.append((p, log))
    return p


def wait_for(what, pred, seconds=20.0, quiet=False):
    """PRED's first true value, polled for at most SECONDS; else fails (or,
    QUIET, returns None)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            v = pred()
            if v:
                return v
        except (OSError, ValueError, urllib.error.URLError):
            pass
        time.sleep(0.02)
    if not quiet:
        fail(f"timed out waiting for {what}")
    return None


def get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode()


def post(url, body, headers=None, timeout=30):
    """(status, headers, text): HTTP errors are answers too."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


def metrics(gw):
    """The gateway's /metrics samples as {"name{labels}": value}."""
    out = {}
    for line in get(gw + "/metrics")[1].splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def shed(gw, reason):
    return metrics(gw).get(f'agentbus_gateway_shed_total{{reason="{reason}"}}', -1)


def sim_stats(sim):
    return json.loads(get(sim + "/sim/stats")[1])


def stopped(pid):
    """Whether every thread of PID is stopped (state T in /proc)."""
    tasks = os.listdir(f"/proc/{pid}/task")
    for t in tasks:
        with open(f"/proc/{pid}/task/{t}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] != "T":
                return False
    return bool(tasks)


def waiting_at(port):
    """Connections to PORT whose received bytes wait to be read (ss)."""
    out = subprocess.run(["ss", "-tnH", f"sport = :{port}"], capture_output=True, text=True,
                         check=False).stdout
    return sum(1 for line in out.splitlines() if line.split() and int(line.split()[1]) > 0)


def raw_request(port, path, body, headers=(), close_after=False):
    """Sends one HTTP/1.1 POST on a new connection; returns the socket.
    CLOSE_AFTER half-closes it at once (the client has gone)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    data = json.dumps(body).encode()
    head = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json",
            f"Content-Length: {len(data)}", *headers]
    s.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + data)
    if close_after:
        s.shutdown(socket.SHUT_WR)
    return s


def pipelined(port, reqs):
    """Sends REQS, (path, body, headers) each, in one write on one new
    connection; returns the socket."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    out = b""
    for path, body, headers in reqs:
        data = json.dumps(body).encode()
        head = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json",
                f"Content-Length: {len(data)}", *headers]
        out += ("\r\n".join(head) + "\r\n\r\n").encode() + data
    s.sendall(out)
    return s


def read_responses(s, n):
    """N responses with a Content-Length from S, in order: [(status, body)]
    (fewer if the peer closes first; at most 30 s)."""
    buf, got = b"", []
    s.settimeout(30)
    while len(got) < n:
        head, sep, rest = buf.partition(b"\r\n\r\n")
        if sep:
            lines = head.split(b"\r\n")
            cl = [int(x.split(b":")[1]) for x in lines if x.lower().startswith(b"content-length:")]
            if cl and len(rest) >= cl[0]:
                got.append((int(lines[0][9:12]), rest[:cl[0]].decode(errors="replace")))
                buf = rest[cl[0]:]
                continue
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, socket.timeout):
            break
        if not chunk:
            break
        buf += chunk
    return got


def raw_get(port, path):
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    return s


def s_complete(buf, until):
    """Whether BUF holds what is wanted: UNTIL, else a whole response
    (Content-Length's body, or a chunked body's last chunk)."""
    if until is not None:
        return until in buf
    head, sep, body = buf.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return body.endswith(b"0\r\n\r\n")


def read_response(s, until=None):
    """Reads until UNTIL appears in the bytes, else until a whole response
    (or the peer closes; at most 30 s); returns (status, text). Status 0
    when nothing came."""
    buf = b""
    s.settimeout(30)
    while not s_complete(buf, until):
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, socket.timeout):
            break
        if not chunk:
            break
        buf += chunk
    text = buf.decode(errors="replace")
    if not text.startswith("HTTP/1.1 "):
        return 0, text
    return int(text[9:12]), text


def start_stack(tmp, gw_args_list):
    """Broker, simulator (models fast, with no prefill time even for
    thousands of images, and slow; real time), one worker and
    one gateway per entry of GW_ARGS_LIST; returns (sim URL, [(url, port,
    Popen)])."""
    bport, sport = free_port(), free_port()
    ep = f"tcp://127.0.0.1:{bport}"
    spawn(tmp, "broker", [f"{BIN}/agentbus-broker", "--bind", ep, "--data-dir", tmp])
    spawn(tmp, "sim", [f"{BIN}/ollama-sim", "--port", str(sport), "--quiet", "--num-parallel", "8",
                       "--model", "fast,token_ms=1,load_ms=0,reply_tokens=3,prefill_tps=100000000",
                       "--model", "slow,token_ms=100,load_ms=0,reply_tokens=1000"])
    sim = f"http://127.0.0.1:{sport}"
    wait_for("ollama-sim", lambda: get(sim + "/api/version")[0] == 200)
    spawn(tmp, "worker", [f"{BIN}/agentbus-worker", "--broker", ep, "--backend", "ollama",
                          "--name", "w1", "--capacity", "8", "--ollama-url", sim,
                          "--heartbeat-ms", "200"])
    gws = []
    for i, extra in enumerate(gw_args_list):
        gport = free_port()
        p = spawn(tmp, f"gateway{i}", [f"{BIN}/agentbus-gateway", "--listen",
                                       f"127.0.0.1:{gport}", "--broker", ep, "--quiet", *extra])
        gw = f"http://127.0.0.1:{gport}"
        wait_for("the gateway's /healthz", lambda: get(gw + "/healthz")[0] == 200)
        wait_for("the worker's models at the gateway",
                 lambda: "slow" in get(gw + "/api/tags")[1] and "fast" in get(gw + "/api/tags")[1])
        gws.append((gw, gport, p))
    return sim, gws


SLOW = {"model": "slow", "prompt": "tell a long story", "stream": True,
        "options": {"num_predict": 20}}


def case_busy(tmp):
    sim, [(gw, port, _)] = start_stack(tmp, [["--max-in-flight", "2"]])
    base = sim_stats(sim)["requests"]
    held = [raw_request(port, "/api/generate", dict(SLOW, prompt=f"story {i}"),
                        ["X-Agentbus-Cache: off"]) for i in range(2)]
    wait_for("two calls in flight", lambda: metrics(gw)["agentbus_gateway_in_flight"] == 2)
    st, hd, text = post(gw + "/api/generate", {"model": "fast", "prompt": "one more", "stream": False})
    check(st == 503, f"third request over --max-in-flight 2: 503 (got {st} {text[:120]})")
    check(json.loads(text)["error"].startswith("server busy"), f"Ollama shape: {text}")
    check(hd.get("Retry-After") == "1", f"Retry-After: 1 (got {hd.get('Retry-After')})")
    st, hd, text = post(gw + "/v1/chat/completions",
                        {"model": "fast", "messages": [{"role": "user", "content": "hi"}]})
    err = json.loads(text).get("error", {}) if st == 503 else {}
    check(st == 503 and err.get("message", "").startswith("server busy") and
          err.get("type") == "server_overloaded" and err.get("code") == "server_busy",
          f"OpenAI shape of the same refusal: {st} {text[:200]}")
    check(get(gw + "/healthz")[0] == 200, "/healthz answers at the cap")
    m = metrics(gw)
    check(m['agentbus_gateway_shed_total{reason="busy"}'] == 2, "both refusals counted as busy")
    check(m["agentbus_gateway_admitted"] == 2, "admitted gauge shows the two held")
    # The held calls may still be on their way to the simulator (a busy
    # machine): wait for them, then the count must be theirs alone.
    wait_for("the held calls at the simulator", lambda: sim_stats(sim)["requests"] >= base + 2)
    check(sim_stats(sim)["requests"] == base + 2, "the refused requests never reached the simulator")
    for s in held:
        st, text = read_response(s, until=b'"done":true')
        check(st == 200 and '"done":true' in text, "a request within the cap completed")
        s.close()
    wait_for("the held calls to end", lambda: metrics(gw)["agentbus_gateway_admitted"] == 0)
    check(sim_stats(sim)["requests"] == base + 2, "and none of them later either")
    st, _, text = post(gw + "/api/generate", {"model": "fast", "prompt": "after", "stream": False})
    check(st == 200 and json.loads(text)["done"], f"served again below the cap ({st})")


def case_intake(tmp):
    # gateway 0: only deadlines (--max-queue-ms 0); gateway 1: --max-queue-ms 300.
    sim, gws = start_stack(tmp, [["--max-queue-ms", "0"], ["--max-queue-ms", "300"]])
    (gw0, port0, p0), (gw1, port1, p1) = gws
    base = sim_stats(sim)["requests"]
    fast = {"model": "fast", "prompt": "quick", "stream": False}
    os.kill(p0.pid, signal.SIGSTOP)
    os.kill(p1.pid, signal.SIGSTOP)
    try:
        # A stop takes effect as each thread is next scheduled: on a busy
        # machine a gateway could still read a request sent right after kill.
        wait_for("the gateways stopped", lambda: stopped(p0.pid) and stopped(p1.pid), 10)
        late = raw_request(port0, "/api/generate", fast, ["X-Agentbus-Timeout-Ms: 200"])
        gone = raw_request(port0, "/api/generate", fast, close_after=True)
        queued = raw_request(port1, "/api/generate", fast, ["X-Agentbus-Timeout-Ms: 60000"])
        queued_oai = raw_request(port1, "/v1/completions", {"model": "fast", "prompt": "q"})
        health = raw_get(port1, "/healthz")
        # The states wanted: every request is in the gateways' sockets (on a
        # busy machine loopback delivery can lag the send), and then older
        # than 300 ms (and 200).
        if not wait_for("", lambda: waiting_at(port0) >= 2 and waiting_at(port1) >= 3, 10,
                        quiet=True):
            fail("the requests did not reach the gateways' sockets: " + subprocess.run(
                ["ss", "-tn", f"sport = :{port0} or sport = :{port1}"], capture_output=True,
                text=True, check=False).stdout)
        t0 = time.monotonic()
        wait_for("the requests to age past 300 ms", lambda: time.monotonic() - t0 > 0.5, 5)
    finally:
        os.kill(p0.pid, signal.SIGCONT)
        os.kill(p1.pid, signal.SIGCONT)
    st, text = read_response(late)
    check(st == 504 and "deadline passed" in text,
          f"a request older than its deadline: 504 at once ({st} {text[-160:]})")
    st, text = read_response(gone)
    check(st == 0, f"a request whose client had closed: no answer, dropped ({text[:80]!r})")
    st, text = read_response(queued)
    check(st == 503 and "server busy" in text and "Retry-After: 1" in text,
          f"a request older than --max-queue-ms: 503 server busy ({st} {text[-200:]})")
    st, text = read_response(queued_oai)
    body = json.loads(text.split("\r\n\r\n", 1)[1]) if st else {}
    check(st == 503 and body.get("error", {}).get("code") == "server_busy",
          f"the same for an OpenAI route, in its shape ({st} {text[-200:]})")
    st, text = read_response(health)
    check(st == 200, f"/healthz as old is still answered ({st})")
    check(wait_for("the gone client counted", lambda: shed(gw0, "gone") == 1), "counted: gone")
    check(shed(gw0, "deadline") == 1, "counted: deadline")
    check(shed(gw1, "queue") == 2, "counted: queue")
    check(sim_stats(sim)["requests"] == base, "none of them reached the simulator")
    # On a machine busy enough to keep the gateway from reading a request
    # within 300 ms, a fresh one is refused too, rightly: try again, bounded.
    def fresh():
        st, _, text = post(gw1 + "/api/generate", fast)
        if st == 503 and "waited" in text:
            return None
        return (st, text)
    st, text = wait_for("a fresh request read within --max-queue-ms", fresh, 30)
    check(st == 200, f"a fresh request is served ({st} {text[:100]})")


def s_hangup_counted(gw, before, what):
    """After a hang-up: the call ended, counted once as cancelled, and not as
    a 5xx answer or a bus error (nothing was written to the gone client)."""
    c = "agentbus_gateway_cancelled_total"
    wait_for(f"{what}: the call to end", lambda: metrics(gw)["agentbus_gateway_in_flight"] == 0)
    wait_for(f"{what}: counted as cancelled", lambda: metrics(gw)[c] >= before[c] + 1)
    m = metrics(gw)
    fivexx = 'agentbus_gateway_responses_total{class="5xx"}'
    check(m[c] == before[c] + 1 and m[fivexx] == before[fivexx] and
          m["agentbus_gateway_bus_errors_total"] == before["agentbus_gateway_bus_errors_total"],
          f"{what}: cancelled {before[c]} -> {m[c]}, 5xx {before[fivexx]} -> {m[fivexx]}, bus "
          f"errors {before['agentbus_gateway_bus_errors_total']} -> "
          f"{m['agentbus_gateway_bus_errors_total']}")


def case_hangup(tmp):
    sim, [(gw, port, _)] = start_stack(tmp, [[]])
    s = raw_request(port, "/api/generate", dict(SLOW, options={"num_predict": 600}),
                    ["X-Agentbus-Cache: off"])
    st, text = read_response(s, until=b'"done":false')
    check(st == 200, "the stream started")
    before = metrics(gw)
    s.close()
    wait_for("the hang-up to cancel the call",
             lambda: metrics(gw)["agentbus_gateway_client_hangups_total"] >=
             before["agentbus_gateway_client_hangups_total"] + 1)
    wait_for("no call in flight", lambda: metrics(gw)["agentbus_gateway_in_flight"] == 0)
    wait_for("the simulator to see the abort", lambda: sim_stats(sim)["aborted"] >= 1)
    check(True, "a client that hung up: counted, its bus call cancelled, the backend aborted")
    s_hangup_counted(gw, before, "a hang-up mid-stream")
    # stream: false: nothing is written until the end, so only the watch of
    # the waiting connection sees the client go.
    before = metrics(gw)
    s = raw_request(port, "/api/generate", dict(SLOW, stream=False, options={"num_predict": 600}),
                    ["X-Agentbus-Cache: off"])
    wait_for("the stream: false call at the simulator", lambda: sim_stats(sim)["requests"] >= 2)
    s.close()
    wait_for("the simulator to see the second abort", lambda: sim_stats(sim)["aborted"] >= 2)
    s_hangup_counted(gw, before, "a hang-up while a stream: false call waits")


def case_pipeline(tmp):
    # gateway 0: --max-queue-ms 1000; gateway 1: only deadlines.
    sim, gws = start_stack(tmp, [["--max-queue-ms", "1000"], ["--max-queue-ms", "0"]])
    (gw0, port0, _), (gw1, port1, _) = gws
    # The slow one takes ~1.5 s (15 tokens of 100 ms): longer than
    # --max-queue-ms and than the later ones' own deadline.
    slow = ("/api/generate", dict(SLOW, stream=False, options={"num_predict": 15}),
            ["X-Agentbus-Cache: off"])
    fast = ("/api/generate", {"model": "fast", "prompt": "quick", "stream": False}, [])
    oai = ("/v1/completions", {"model": "fast", "prompt": "quick"}, ["X-Agentbus-Timeout-Ms: 1200"])
    # One fast answer first: the broker refuses a request whose deadline is
    # shorter than the service's fastest recent answer, and the slow ones
    # would otherwise be the only ones it has seen.
    st, _, text = post(gw0 + "/api/generate", fast[1])
    check(st == 200, f"a fast call first ({st} {text[:100]})")
    s0 = pipelined(port0, [slow, fast, oai])
    s1 = pipelined(port1, [slow, (fast[0], fast[1], ["X-Agentbus-Timeout-Ms: 1200"])])
    got0, got1 = read_responses(s0, 3), read_responses(s1, 2)
    s0.close()
    s1.close()
    got0 += [(0, "")] * (3 - len(got0)) # a refusal closes the connection
    got1 += [(0, "")] * (2 - len(got1))
    check(got0[0][0] == 200 and got1[0][0] == 200, f"the slow first requests: {got0[0]} {got1[0]}")
    check(got0[1][0] == 200 and json.loads(got0[1][1]).get("done") is True,
          f"the second, which waited for the first on its connection, not for the gateway: "
          f"served, not refused as queued ({got0[1]})")
    check(got0[2][0] == 200 and json.loads(got0[2][1]).get("object") == "text_completion",
          f"the third, an OpenAI call with a 1200 ms deadline: served ({got0[2]})")
    check(got1[1][0] == 200 and json.loads(got1[1][1]).get("done") is True,
          f"with --max-queue-ms 0, the second, deadline 1200 ms: served, not 504 ({got1[1]})")
    for gw in (gw0, gw1):
        m = metrics(gw)
        check(all(m[f'agentbus_gateway_shed_total{{reason="{r}"}}'] == 0 for r in
                  ("queue", "deadline", "busy", "gone")), f"{gw}: nothing shed")


def stop_all():
    """Stops every process started here (PROCS, by PID), a stopped one too;
    then fails if a log has a sanitizer report (tools/lib/sanitizer.py)."""
    for p, _ in PROCS:
        try:
            os.kill(p.pid, signal.SIGCONT)
            p.terminate()
        except ProcessLookupError:
            pass
    for p, _ in PROCS:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    found = sanitizer.reports([log for _, log in PROCS])
    if found:
        PROCS.clear()  # fail() would print the same logs again
        fail(sanitizer.describe(found))


def main():
    tmp = tempfile.mkdtemp(prefix="ab-gw-shed.")
    try:
        {"busy": case_busy, "intake": case_intake, "hangup": case_hangup,
         "pipeline": case_pipeline}[CASE](tmp)
    finally:
        stop_all()
        subprocess.run(["rm", "-rf", tmp], check=False)


if __name__ == "__main__":
    main()
