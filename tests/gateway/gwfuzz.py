#!/usr/bin/python3
"""gwfuzz: a stateful fuzzer of agentbus-gateway's HTTP side.

A real broker, ollama-sim, an Ollama worker and three gateways (HTTP on
the bus thread, --threads 0; an epoll pool, --threads 2; and one with
--api-keys, whose keys file is rewritten and re-read with SIGHUP now and
then) on free loopback ports. Eight fuzzing threads play random moves at the gateways, each from a
PRNG of its own seeded from the run's seed: valid Ollama and OpenAI calls,
streamed and not, read whole or dropped mid-stream (a plain close or a
reset); bodies cut short, with a Content-Length that lies, chunked, broken
JSON, wrong types, deep nesting, invalid UTF-8 and NUL bytes; bad request
lines, huge and many headers, pipelined requests, a request sent a few bytes
at a time; odd X-Agentbus-* and Authorization headers (the keys in use,
old ones, made-up ones); GETs of every route and of unknown and escaped
paths; bodies past --max-body-bytes. Every 3-8 s there is a fault: the
worker killed and started again, the broker stopped (SIGSTOP) for 0.3-2 s
with calls in flight, the broker killed and started again, or the keys
file rewritten and the gateway told (SIGHUP).

Oracle: the gateways stay alive (a sanitizer report aborts one); a good
client's generate calls, through each gateway in turn (with a current key
where one is needed), answer 200 with the simulator's text and never
anything else in a 200, and at least one is answered every 30 s; at the end
every gateway answers /healthz and /metrics and exits with status 0 on
SIGTERM (under ASan a leak fails that).
Exit 0 when all held, 1 otherwise (with the seed and the command to replay
it), 2 on bad usage. A seed replays the same moves; what the gateway
answers, and so some later choices, depends on timing.

  gwfuzz.py BIN_DIR [--seed N] [--seconds S] [--verbose]

Standard library only.
"""
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import fuzzrun  # noqa: E402  (command line, stop, report)
import test_shed as ts  # noqa: E402  (processes, HTTP helpers)

ROUTES = ["/api/generate", "/api/chat", "/api/embed", "/api/embeddings", "/api/tags",
          "/api/ps", "/api/show", "/api/version", "/v1/chat/completions", "/v1/completions",
          "/v1/embeddings", "/v1/models", "/metrics", "/healthz", "/", "/api/pull",
          "/api/%67enerate", "/api/generate/", "/api//chat", "/v1/chat/completions?x=1",
          "/" + "a" * 3000, "/api/\xff", "*"]
MODELS = ["fast", "slow", "nosuch", "", "fast:latest", "x" * 300]
# The --api-keys gateway's tokens: each rewrite of its file (SIGHUP) keeps
# the first and swaps the others in or out.
TOKENS = ["gwfuzz-token-good-0001", "gwfuzz-token-spare-0002", "gwfuzz-token-spare-0003",
          "gwfuzz-token-gone-00004"]
KEYS = {"tokens": TOKENS[:2]}  # the tokens in the file now (read by every thread)


def write_keys(path, tokens):
    """The keys file with TOKENS (0600, as the gateway demands)."""
    tmp = path + ".new"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("# gwfuzz\n")
        for t in tokens:
            f.write(f"k{TOKENS.index(t)} {t}\n")
    os.rename(tmp, path)
BODY_MAX = 65536  # the gateways' --max-body-bytes here


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.moves = {}
        self.status = {}
        self.good_ok = 0
        self.good_err = 0
        self.good_wrong = 0
        self.first_wrong = ""
        self.last_ok = time.monotonic()

    def move(self, name):
        with self.lock:
            self.moves[name] = self.moves.get(name, 0) + 1

    def saw(self, status):
        with self.lock:
            self.status[status] = self.status.get(status, 0) + 1


def connect(port, timeout=5.0):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.settimeout(timeout)
    return s


def close(s, rst=False):
    try:
        if rst:  # a reset, not a FIN: the peer's next write fails
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    except OSError:
        pass


def read_some(s, limit, deadline):
    """Reads until a whole response, LIMIT bytes, the peer's close or
    DEADLINE (monotonic)."""
    buf = b""
    while len(buf) < limit and time.monotonic() < deadline and not ts.s_complete(buf, None):
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = s.recv(min(65536, limit - len(buf)))
        except (OSError, socket.timeout):
            break
        if not chunk:
            break
        buf += chunk
    return buf


def status_of(buf):
    if buf.startswith(b"HTTP/1.") and len(buf) >= 12 and buf[9:12].isdigit():
        return int(buf[9:12])
    return 0


def request_bytes(method, path, body=b"", headers=(), length=None, version="HTTP/1.1"):
    head = [f"{method} {path} {version}", "Host: 127.0.0.1"]
    if body or length is not None:
        head.append(f"Content-Length: {len(body) if length is None else length}")
    head += list(headers)
    return ("\r\n".join(head) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body


def valid_body(rng, route):
    model = rng.choice(MODELS[:3]) if rng.random() < 0.9 else rng.choice(MODELS)
    stream = rng.random() < 0.5
    n = rng.choice([1, 3, 20])
    if route in ("/api/chat", "/v1/chat/completions"):
        b = {"model": model, "messages": [{"role": "user", "content": f"hi {rng.random()}"}],
             "stream": stream}
    elif route in ("/api/embed", "/api/embeddings", "/v1/embeddings"):
        b = {"model": model, "input": "some text", "prompt": "some text"}
    else:
        b = {"model": model, "prompt": f"p{rng.randrange(50)}", "stream": stream}
    if route.startswith("/api/"):
        b["options"] = {"num_predict": n}
    else:
        b["max_tokens"] = n
    return b


def corrupt(rng, data):
    """DATA with a random kind of damage."""
    k = rng.randrange(8)
    if k == 0 and data:
        return data[:rng.randrange(len(data))]
    if k == 1:
        b = bytearray(data)
        for _ in range(rng.randrange(1, 6)):
            if b:
                b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b)
    if k == 2:
        return b'{"model":"fast","prompt":' + b"[" * 5000 + b"]" * 5000 + b"}"
    if k == 3:
        return b'{"model":"fast","prompt":"\xff\xfe\xc0\x80","stream":false}'
    if k == 4:
        return b'{"model":"fast","prompt":"a\x00b","stream":false}'
    if k == 5:
        return json.dumps({"model": 5, "prompt": ["x"], "stream": "yes",
                           "options": {"num_predict": "many"}, "messages": "hi"}).encode()
    if k == 6:
        return json.dumps({"model": "fast", "prompt": "x" * rng.randrange(1, 3 * BODY_MAX)}).encode()
    return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))


def odd_headers(rng):
    h = []
    if rng.random() < 0.5:
        h.append("X-Agentbus-Timeout-Ms: " + rng.choice(
            ["0", "1", "-5", "abc", "99999999999999999999", "300", "2147483648", ""]))
    if rng.random() < 0.3:
        h.append("X-Agentbus-Cache: " + rng.choice(["off", "no-read", "no-store", "zz", ""]))
    if rng.random() < 0.6:
        h.append("Authorization: " + rng.choice(
            ["Bearer x", "Bearer", "Basic Zm9v", "x" * 5000] +
            [f"Bearer {t}" for t in TOKENS] * 3))
    if rng.random() < 0.1:
        h.append("X-Junk: " + "y" * rng.choice([100, 9000, 70000]))
    if rng.random() < 0.1:
        h += [f"X-Many-{i}: v" for i in range(rng.choice([50, 500]))]
    return h


# --- the moves: each on a connection of its own -------------------------------------
def mv_valid(rng, port, st):
    """A valid call, read whole, or dropped after some bytes."""
    route = rng.choice(["/api/generate", "/api/chat", "/v1/chat/completions",
                        "/v1/completions", "/api/embed", "/api/embeddings", "/v1/embeddings"])
    body = json.dumps(valid_body(rng, route)).encode()
    s = connect(port)
    try:
        auth = [f"Authorization: Bearer {rng.choice(KEYS['tokens'])}"] if rng.random() < 0.5 \
            else []
        s.sendall(request_bytes("POST", route, body, ["Content-Type: application/json"]
                                + (odd_headers(rng) if rng.random() < 0.3 else auth)))
        if rng.random() < 0.6:
            buf = read_some(s, 1 << 20, time.monotonic() + 5)
            st.saw(status_of(buf))
        else:
            read_some(s, rng.randrange(1, 400), time.monotonic() + 2)
    finally:
        close(s, rst=rng.random() < 0.5)


def mv_cut(rng, port, st):
    """Headers and part of the body (Content-Length says more), then gone."""
    body = json.dumps(valid_body(rng, "/api/generate")).encode()
    s = connect(port)
    try:
        s.sendall(request_bytes("POST", "/api/generate", body[:rng.randrange(len(body))], [],
                                length=len(body) + rng.randrange(0, 100)))
        if rng.random() < 0.5:
            time.sleep(rng.random() * 0.3)
    finally:
        close(s, rst=rng.random() < 0.5)


def mv_badbody(rng, port, st):
    route = rng.choice(ROUTES[:12])
    body = corrupt(rng, json.dumps(valid_body(rng, route)).encode())
    s = connect(port)
    try:
        s.sendall(request_bytes("POST", route, body, ["Content-Type: application/json"]))
        st.saw(status_of(read_some(s, 1 << 16, time.monotonic() + 3)))
    finally:
        close(s)


def mv_badhttp(rng, port, st):
    k = rng.randrange(9)
    body = json.dumps(valid_body(rng, "/api/generate")).encode()
    if k == 0:
        raw = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 500)))
    elif k == 1:
        raw = request_bytes(rng.choice(["PUT", "DELETE", "BREW", "G ET", ""]), "/api/generate",
                            body)
    elif k == 2:
        raw = request_bytes("POST", "/api/generate", body, version=rng.choice(
            ["HTTP/1.0", "HTTP/2.0", "HTTP/9", "FOO"]))
    elif k == 3:
        raw = request_bytes("POST", "/api/generate", body, length=rng.choice(
            ["-1", "abc", "99999999999999999999", "1, 2"]))
    elif k == 4:  # chunked, valid or not
        chunks = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        if rng.random() < 0.5:
            chunks = rng.choice([b"zz\r\n", b"ffffffffffff\r\nab", chunks[:-3], b"5\r\nab\r\n"])
        raw = request_bytes("POST", "/api/generate", b"", ["Transfer-Encoding: chunked"]) + chunks
    elif k == 5:
        raw = b"POST /api/generate HTTP/1.1\r\n" + b"X: " + b"z" * 200000 + b"\r\n\r\n"
    elif k == 6:
        raw = request_bytes("POST", "/api/generate", b"x" * (BODY_MAX + 1))
    elif k == 7:
        raw = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"\r\n" * 3 + b"\x00\x01"
    else:
        raw = request_bytes("GET", rng.choice(ROUTES), b"", odd_headers(rng))
    s = connect(port)
    try:
        s.sendall(raw)
        if rng.random() < 0.7:
            st.saw(status_of(read_some(s, 1 << 16, time.monotonic() + 2)))
    except OSError:
        pass
    finally:
        close(s, rst=rng.random() < 0.3)


def mv_pipeline(rng, port, st):
    """Two to four requests in one write on a kept-alive connection."""
    raw = b""
    for _ in range(rng.randrange(2, 5)):
        route = rng.choice(["/api/generate", "/api/tags", "/healthz", "/api/version",
                            "/v1/models"])
        if route == "/api/generate":
            b = valid_body(rng, route)
            b["stream"] = False
            raw += request_bytes("POST", route, json.dumps(b).encode())
        else:
            raw += request_bytes("GET", route)
    s = connect(port)
    try:
        s.sendall(raw)
        st.saw(status_of(read_some(s, 1 << 18, time.monotonic() + rng.choice([0.2, 3]))))
    finally:
        close(s, rst=rng.random() < 0.3)


def mv_slow(rng, port, st):
    """A request a few bytes at a time."""
    b = valid_body(rng, "/api/generate")
    b["model"] = "fast"
    raw = request_bytes("POST", "/api/generate", json.dumps(b).encode())
    s = connect(port)
    try:
        cuts = sorted(rng.sample(range(1, len(raw)), min(4, len(raw) - 1)))
        at = 0
        for c in cuts + [len(raw)]:
            s.sendall(raw[at:c])
            at = c
            time.sleep(rng.random() * 0.15)
        st.saw(status_of(read_some(s, 1 << 16, time.monotonic() + 3)))
    except OSError:
        pass
    finally:
        close(s)


def mv_get(rng, port, st):
    route = rng.choice(ROUTES)
    method = "POST" if route == "/api/show" else "GET"
    body = json.dumps({"model": rng.choice(MODELS), "name": rng.choice(MODELS)}).encode() \
        if method == "POST" else b""
    s = connect(port)
    try:
        s.sendall(request_bytes(method, route, body, odd_headers(rng)))
        st.saw(status_of(read_some(s, 1 << 18, time.monotonic() + 3)))
    except OSError:
        pass
    finally:
        close(s)


MOVES = [(mv_valid, 30), (mv_cut, 10), (mv_badbody, 15), (mv_badhttp, 15), (mv_pipeline, 8),
         (mv_slow, 5), (mv_get, 12)]


def fuzz_thread(idx, seed, ports, end, st, stop):
    rng = random.Random(seed * 1000 + idx)
    fns, weights = zip(*MOVES)
    while time.monotonic() < end and not stop.is_set():
        fn = rng.choices(fns, weights)[0]
        st.move(fn.__name__)
        try:
            fn(rng, ports[rng.randrange(len(ports))], st)
        except OSError:
            pass  # refused or reset: the gateway's answer, not a finding


def good_thread(ports, end, st, stop):
    """Generate calls through each gateway in turn, with the token that
    every rewrite of the keys file keeps; the simulator's reply to the fast
    model is 3 tokens of text."""
    n = 0
    while time.monotonic() < end and not stop.is_set():
        port = ports[n % len(ports)]
        n += 1
        body = {"model": "fast", "prompt": f"good {n}", "stream": False,
                "options": {"num_predict": 3}}
        try:
            code, _, text = ts.post(f"http://127.0.0.1:{port}/api/generate", body, timeout=20,
                                    headers={"Authorization": f"Bearer {TOKENS[0]}"})
        except OSError:
            code, text = 0, ""
        with st.lock:
            if code == 200:
                try:
                    r = json.loads(text)
                    good = isinstance(r.get("response"), str) and r["response"] and r.get("done")
                except ValueError:
                    good = False
                if good:
                    st.good_ok += 1
                    st.last_ok = time.monotonic()
                else:
                    st.good_wrong += 1
                    st.first_wrong = st.first_wrong or text[:300]
            else:
                st.good_err += 1
        time.sleep(0.05)


def main():
    parsed = fuzzrun.parse("gwfuzz", sys.argv[1:])
    if not parsed:
        return 2
    seed, seconds, verbose, replay = parsed
    tmp = tempfile.mkdtemp(prefix="ab-gwfuzz.")
    fail = None
    st = Stats()
    try:
        gw_args = ["--max-body-bytes", str(BODY_MAX), "--idle-timeout-s", "2"]
        keys_file = os.path.join(tmp, "gw.keys")
        write_keys(keys_file, KEYS["tokens"])
        sim, gws = ts.start_stack(tmp, [gw_args + ["--threads", "0"],
                                        gw_args + ["--threads", "2"]])
        broker = ts.PROCS[0][0]
        broker_argv = broker.args
        # the third, with keys (start_stack's model check has none)
        kport = ts.free_port()
        kgw = ts.spawn(tmp, "gateway-keys", gws[1][2].args[:2] + [f"127.0.0.1:{kport}"] +
                       gws[1][2].args[3:] + ["--api-keys", keys_file])
        gws.append((f"http://127.0.0.1:{kport}", kport, kgw))
        ts.wait_for("the keyed gateway's /healthz",
                    lambda: ts.get(gws[2][0] + "/healthz")[0] == 200)
        ports = [port for _, port, _ in gws]
        worker = next(p for p, log in ts.PROCS if log.endswith("worker.log"))
        worker_argv = worker.args
        frng = random.Random(seed ^ 0x5EED)
        start = time.monotonic()
        end = start + seconds
        stop = threading.Event()
        threads = [threading.Thread(target=fuzz_thread, args=(i, seed, ports, end, st, stop))
                   for i in range(8)]
        threads.append(threading.Thread(target=good_thread, args=(ports, end, st, stop)))
        for t in threads:
            t.start()
        next_fault = start + 3 + frng.random() * 5
        faults = {"worker killed": 0, "broker stopped": 0, "broker killed": 0, "keys reloaded": 0}
        while time.monotonic() < end and not fail:
            time.sleep(0.1)
            for (gw, port, p) in gws:
                if p.poll() is not None:
                    fail = f"the gateway on port {port} died (status {p.returncode})"
            with st.lock:
                if st.good_wrong:
                    fail = f"a good call got a wrong 200: {st.first_wrong}"
                elif time.monotonic() - st.last_ok > 30:
                    fail = f"no good call answered for 30 s ({st.good_err} errors)"
            if time.monotonic() >= next_fault and not fail:
                r = frng.random()
                if r < 0.35:
                    worker.kill()
                    worker.wait()
                    faults["worker killed"] += 1
                    worker = ts.spawn(tmp, f"worker{faults['worker killed']}", worker_argv)
                elif r < 0.6:
                    os.kill(broker.pid, signal.SIGSTOP)
                    time.sleep(0.3 + frng.random() * 1.7)
                    os.kill(broker.pid, signal.SIGCONT)
                    faults["broker stopped"] += 1
                elif r < 0.75:
                    broker.kill()
                    broker.wait()
                    faults["broker killed"] += 1
                    broker = ts.spawn(tmp, f"broker{faults['broker killed']}", broker_argv)
                else:  # the first token stays, the others come and go
                    KEYS["tokens"] = [TOKENS[0]] + frng.sample(TOKENS[1:], frng.randrange(3))
                    write_keys(keys_file, KEYS["tokens"])
                    gws[2][2].send_signal(signal.SIGHUP)
                    faults["keys reloaded"] += 1
                if verbose:
                    print(f"gwfuzz: {faults}", flush=True)
                next_fault = time.monotonic() + 3 + frng.random() * 5
        stop.set()
        for t in threads:
            t.join(timeout=30)
        print(f"gwfuzz: moves {dict(sorted(st.moves.items()))}")
        print(f"gwfuzz: statuses {dict(sorted(st.status.items()))}")
        print(f"gwfuzz: good calls {st.good_ok} correct, {st.good_err} errors, "
              f"{st.good_wrong} wrong; faults {faults}")
        if not fail and any(t.is_alive() for t in threads):
            fail = "a fuzzing thread did not finish (a gateway stopped answering)"
        for (gw, port, p) in gws:
            if fail:
                break
            try:
                code, _ = ts.get(gw + "/healthz")
                ts.get(gw + "/metrics")
            except OSError as e:
                fail = f"the gateway on port {port} did not answer /healthz or /metrics: {e}"
                break
            if code != 200:
                fail = f"the gateway on port {port} answered /healthz with {code}"
        for (gw, port, p) in gws:
            if fail:
                break
            p.send_signal(signal.SIGTERM)
            try:
                rc = p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                fail = f"the gateway on port {port} did not exit within 15 s of SIGTERM"
                break
            if rc != 0:
                fail = f"the gateway on port {port} exited with status {rc} on SIGTERM"
    finally:
        fuzzrun.stop_all()
    return fuzzrun.report("gwfuzz", fail, replay, tmp, seed)


if __name__ == "__main__":
    sys.exit(main())
