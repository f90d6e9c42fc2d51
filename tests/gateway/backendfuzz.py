#!/usr/bin/python3
"""backendfuzz: a hostile Ollama server against agentbus-worker's Ollama
backend (and the gateway that renders what comes back).

A real broker, an Ollama worker and a gateway on free loopback ports; the
worker's Ollama is this program: an HTTP server on a loopback port that
answers each request in a way drawn from a PRNG seeded from the run's seed.
Model probes (/api/tags, /api/ps, /api/version) get valid lists mostly, and
else garbage, errors, 5,000 models, a hang. Inference calls (/api/generate,
/api/chat, /api/embed) get valid streams and answers, or: a garbage,
truncated, 2 MB, non-UTF-8 or wrongly typed line in the stream, a stream
that ends without its done line, a close or a reset mid-stream, an HTTP
error with or without a JSON body, a Content-Length that lies, broken
chunked framing, a drip of a byte every 20 ms, no answer at all. Six client
threads send generate, chat and embed calls (streamed and not, deadline
3 s via X-Agentbus-Timeout-Ms) through the gateway; now and then the worker
is killed and started again.

Oracle: the worker stays alive (but for the kills; a sanitizer report
aborts it); every call gets an HTTP answer within 20 s (its deadline is 3 s:
nothing may hang); a non-streamed 200 is valid JSON, and a streamed 200 is
lines of JSON; the broker's worker count comes back; at the end the worker
exits with status 0 on SIGTERM (under ASan a leak fails that).
Exit 0 when all held, 1 otherwise (with the seed and the command to replay
it), 2 on bad usage.

  backendfuzz.py BIN_DIR [--seed N] [--seconds S] [--verbose]

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

MODELS = ["fast", "slow"]


class Fake:
    """The hostile Ollama: one thread per connection, keep-alive."""

    def __init__(self, seed):
        self.seed = seed
        self.n = 0
        self.lock = threading.Lock()
        self.kinds = {}
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self.serve, args=(c,), daemon=True).start()

    def rng(self):
        with self.lock:
            self.n += 1
            return random.Random(self.seed * 1_000_003 + self.n)

    def count(self, kind):
        with self.lock:
            self.kinds[kind] = self.kinds.get(kind, 0) + 1

    def serve(self, c):
        c.settimeout(30)
        buf = b""
        try:
            while not self.stop.is_set():
                while b"\r\n\r\n" not in buf:
                    d = c.recv(65536)
                    if not d:
                        return
                    buf += d
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path = lines[0].split(" ")[:2]
                length = 0
                for h in lines[1:]:
                    if h.lower().startswith("content-length:"):
                        length = int(h.split(":", 1)[1])
                while len(buf) < length:
                    d = c.recv(65536)
                    if not d:
                        return
                    buf += d
                body, buf = buf[:length], buf[length:]
                if not self.answer(c, method, path, body):
                    return
        except (OSError, ValueError):
            pass
        finally:
            try:
                c.close()
            except OSError:
                pass

    # --- answers: True to keep the connection -------------------------------------
    def send(self, c, status, body, ctype="application/json", extra=""):
        c.sendall((f"HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\n"
                   f"Content-Length: {len(body)}\r\n{extra}\r\n").encode() + body)
        return True

    def answer(self, c, method, path, body):
        rng = self.rng()
        try:
            req = json.loads(body) if body else {}
        except ValueError:
            req = {}
        if not isinstance(req, dict):
            req = {}
        if path in ("/api/tags", "/api/ps", "/api/version"):
            return self.probe(c, rng, path)
        if path in ("/api/generate", "/api/chat"):
            return self.infer(c, rng, path, req)
        if path == "/api/embed":
            return self.embed(c, rng, req)
        self.count("404")
        return self.send(c, 404, b'{"error":"not found"}')

    def probe(self, c, rng, path):
        models = [{"name": m, "model": m, "size": 1 << 30, "size_vram": 1 << 29,
                   "details": {"parameter_size": "1B"}} for m in MODELS]
        good = {"/api/tags": {"models": models}, "/api/ps": {"models": models[:1]},
                "/api/version": {"version": "0.5.7"}}[path]
        r = rng.random()
        if r < 0.75:
            self.count("probe-ok")
            return self.send(c, 200, json.dumps(good).encode())
        self.count("probe-odd")
        k = rng.randrange(6)
        if k == 0:
            return self.send(c, 200, b'{"models":[{"name":5,"size":"x"},null,[]]}')
        if k == 1:
            many = [{"name": f"m{i}-" + "x" * 200, "size": -1} for i in range(5000)]
            return self.send(c, 200, json.dumps({"models": many}).encode())
        if k == 2:
            return self.send(c, 500, b"<html>oops</html>", "text/html")
        if k == 3:
            time.sleep(rng.random() * 6)  # past the probe's 5 s timeout, sometimes
            return False
        if k == 4:
            return self.send(c, 200, b'{"models":' + b"[" * 100000)
        return self.send(c, 200, b"\xff\xfe not json")

    def line(self, path, model, text, done, **extra):
        d = {"model": model, "created_at": "2026-12-04T00:00:00Z", "done": done}
        if path == "/api/chat":
            d["message"] = {"role": "assistant", "content": text}
        else:
            d["response"] = text
        if done:
            d.update({"done_reason": "stop", "eval_count": 3, "prompt_eval_count": 2,
                      "total_duration": 1000, "eval_duration": 500})
        d.update(extra)
        return json.dumps(d).encode() + b"\n"

    def infer(self, c, rng, path, req):
        model = req.get("model", "fast")
        stream = req.get("stream", True) is not False
        r = rng.random()
        if r < 0.45:  # well-behaved
            self.count("infer-ok")
            if not stream:
                return self.send(c, 200, self.line(path, model, "hello world", True)[:-1])
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n")
            for piece in [self.line(path, model, f"tok{i} ", False) for i in range(3)] + \
                    [self.line(path, model, "", True)]:
                c.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            c.sendall(b"0\r\n\r\n")
            return True
        k = rng.randrange(12)
        self.count(f"infer-odd{k}")
        if k == 0:  # a bad line in the stream, then more
            bad = rng.choice([b"{not json", b"\xff\xfe\xfd", b"[1,2,3]", b"null",
                              b'{"done":"yes","response":7}', b'{"response":"' + b"a" * (2 << 20)
                              + b'","done":false}', b'{"error":"model crashed"}',
                              b'{"done":true,"eval_count":"x","total_duration":-1e300}'])
            return self.stream_raw(c, [self.line(path, model, "a", False), bad + b"\n",
                                       self.line(path, model, "", True)])
        if k == 1:  # no done line
            return self.stream_raw(c, [self.line(path, model, "a", False)])
        if k in (2, 3):  # gone mid-stream
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n")
            piece = self.line(path, model, "partial", False)
            c.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            if k == 3:
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        if k == 4:
            st = rng.choice([400, 404, 500, 503, 429, 418])
            body = rng.choice([b'{"error":"model \\"x\\" not found"}', b"", b"plain text",
                               b'{"error":' + b"1" * 5000 + b"}"])
            return self.send(c, st, body)
        if k == 5:  # a Content-Length that lies
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 5000\r\n\r\n" + self.line(path, model, "short", True))
            return False
        if k == 6:  # broken chunked framing
            c.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n")
            return False
        if k == 7:  # a drip
            data = self.line(path, model, "slow", False) + self.line(path, model, "", True)
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(data))
            for i in range(min(len(data), 60)):
                c.sendall(data[i:i + 1])
                time.sleep(0.02)
            c.sendall(data[60:])
            return True
        if k == 8:  # no answer
            time.sleep(rng.random() * 8)
            return False
        if k == 9:  # a 200 with an empty body, or HTML
            return self.send(c, 200, rng.choice([b"", b"<html></html>"]), "text/html")
        if k == 10:  # many tiny chunks at once
            return self.stream_raw(c, [self.line(path, model, "x", False)] * 500
                                   + [self.line(path, model, "", True)])
        # an error line mid-stream
        return self.stream_raw(c, [self.line(path, model, "a", False),
                                   b'{"error":"CUDA error: out of memory"}\n'])

    def stream_raw(self, c, lines):
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n")
        for piece in lines:
            c.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        c.sendall(b"0\r\n\r\n")
        return True

    def embed(self, c, rng, req):
        if rng.random() < 0.6:
            self.count("embed-ok")
            return self.send(c, 200, json.dumps({"model": req.get("model", "fast"),
                                                 "embeddings": [[0.1, 0.2, 0.3]]}).encode())
        self.count("embed-odd")
        return self.send(c, 200, rng.choice([b'{"embeddings":[["a",null]]}', b'{"embeddings":5}',
                                             b'{"embeddings":[[1e999]]}', b"{}",
                                             b'{"embeddings":' + b"[" * 50000]))


def client_thread(idx, seed, port, end, st, stop):
    rng = random.Random(seed * 7919 + idx)
    while time.monotonic() < end and not stop.is_set():
        kind = rng.choice(["generate", "chat", "embed"])
        stream = rng.random() < 0.5
        model = rng.choice(MODELS)
        if kind == "generate":
            path, body = "/api/generate", {"model": model, "prompt": f"p{rng.random()}",
                                            "stream": stream}
        elif kind == "chat":
            path, body = "/api/chat", {"model": model, "stream": stream,
                                       "messages": [{"role": "user", "content": "hi"}]}
        else:
            path, body, stream = "/api/embed", {"model": model, "input": "text"}, False
        t0 = time.monotonic()
        try:
            code, _, text = ts.post(f"http://127.0.0.1:{port}{path}", body, timeout=20,
                                    headers={"X-Agentbus-Timeout-Ms": "3000",
                                             "X-Agentbus-Cache": "off"})
        except OSError as e:  # the gateway's answer must come
            with st["lock"]:
                if time.monotonic() - t0 >= 19:
                    st["hung"] = st["hung"] or f"{path} ({'stream' if stream else 'whole'}): {e}"
                else:
                    st["errors"] += 1
            continue
        with st["lock"]:
            st["status"][code] = st["status"].get(code, 0) + 1
            if code == 200:
                try:
                    if stream:
                        for ln in text.splitlines():
                            if ln.strip():
                                json.loads(ln)
                    else:
                        json.loads(text)
                except ValueError:
                    st["bad200"] = st["bad200"] or f"{path}: {text[:300]!r}"


def main():
    parsed = fuzzrun.parse("backendfuzz", sys.argv[1:])
    if not parsed:
        return 2
    seed, seconds, verbose, replay = parsed
    tmp = tempfile.mkdtemp(prefix="ab-backendfuzz.")
    fake = Fake(seed)
    st = {"lock": threading.Lock(), "status": {}, "errors": 0, "hung": None, "bad200": None}
    fail = None
    kills = 0
    try:
        bport, gport = ts.free_port(), ts.free_port()
        ep = f"tcp://127.0.0.1:{bport}"
        ts.spawn(tmp, "broker", [f"{ts.BIN}/agentbus-broker", "--bind", ep])
        worker_argv = [f"{ts.BIN}/agentbus-worker", "--broker", ep, "--backend", "ollama",
                       "--name", "wf", "--capacity", "8", "--ollama-url",
                       f"http://127.0.0.1:{fake.port}", "--heartbeat-ms", "200",
                       "--refresh-ms", "500", "--ollama-retries", "1", "--drain-ms", "500"]
        worker = ts.spawn(tmp, "worker", worker_argv)
        ts.spawn(tmp, "gateway", [f"{ts.BIN}/agentbus-gateway", "--listen",
                                  f"127.0.0.1:{gport}", "--broker", ep, "--quiet"])
        gw = f"http://127.0.0.1:{gport}"
        ts.wait_for("the gateway's /healthz", lambda: ts.get(gw + "/healthz")[0] == 200)
        start = time.monotonic()
        end = start + seconds
        stop = threading.Event()
        threads = [threading.Thread(target=client_thread, args=(i, seed, gport, end, st, stop))
                   for i in range(6)]
        for t in threads:
            t.start()
        frng = random.Random(seed ^ 0xBAC)
        next_kill = start + 5 + frng.random() * 10
        while time.monotonic() < end and not fail:
            time.sleep(0.1)
            if worker.poll() is not None:
                fail = f"the worker died (status {worker.returncode})"
            with st["lock"]:
                if st["hung"]:
                    fail = f"a call got no answer within 20 s (deadline 3 s): {st['hung']}"
                elif st["bad200"]:
                    fail = f"a 200 that is not JSON: {st['bad200']}"
            if not fail and time.monotonic() >= next_kill:
                worker.kill()
                worker.wait()
                kills += 1
                worker = ts.spawn(tmp, f"worker{kills}", worker_argv)
                if verbose:
                    print(f"backendfuzz: worker killed ({kills})", flush=True)
                next_kill = time.monotonic() + 5 + frng.random() * 10
        stop.set()
        for t in threads:
            t.join(timeout=30)
        with st["lock"]:
            print(f"backendfuzz: statuses {dict(sorted(st['status'].items()))}, "
                  f"{st['errors']} connection errors; worker killed {kills} times")
        print(f"backendfuzz: the fake Ollama answered {dict(sorted(fake.kinds.items()))}")
        if not fail and any(t.is_alive() for t in threads):
            fail = "a client thread did not finish"
        if not fail:  # the worker still registers, and leaves cleanly
            ts.wait_for("the worker at the broker", lambda: b"wf" in subprocess.run(
                [f"{ts.BIN}/brokerctl", "--broker", ep, "workers"], capture_output=True,
                timeout=10).stdout)
            worker.send_signal(signal.SIGTERM)
            try:
                rc = worker.wait(timeout=20)
                if rc != 0:
                    fail = f"the worker exited with status {rc} on SIGTERM"
            except subprocess.TimeoutExpired:
                fail = "the worker did not exit within 20 s of SIGTERM"
    finally:
        fake.stop.set()
        fuzzrun.stop_all()
    return fuzzrun.report("backendfuzz", fail, replay, tmp, seed)


if __name__ == "__main__":
    sys.exit(main())
