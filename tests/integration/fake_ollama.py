#!/usr/bin/env python3
"""ab-fake-ollama: an Ollama that answers what ollama-sim never would, for
the Ollama worker's tests (test_ollama_backend.c).

usage: ab-fake-ollama PORT [options] (--help lists them)

Listens on 127.0.0.1:PORT. /api/version, /api/tags and /api/ps list the
model "fake:latest" (loaded). /api/generate and /api/chat stream "hello",
" world" and a final line. The options make it answer what a real Ollama
would not (or only when broken). Prints "ready" once listening.
"""
import argparse
import json
import os
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ARGS = None
STATS = {"calls": 0}  # POSTs to /api/generate and /api/chat (GET /fake/stats)


def models():
    m = [{"name": "fake:latest", "digest": "d" * 64, "size": 1 << 20, "size_vram": 1 << 20,
          "expires_at": "2099-01-01T00:00:00Z", "details": {"family": "fake"}}]
    if ARGS.long_name:
        m.append({"name": "n" * ARGS.long_name, "size": 1})
    m += [{"name": "extra-%d:latest" % i, "size": 1} for i in range(ARGS.extra_models)]
    return m


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send_json(self, obj):
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def send_raw(self, status, data):
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/api/version":
            self.send_json({"version": "0.0.0-fake"})
        elif self.path == "/fake/stats":
            self.send_json(dict(STATS))
        elif self.path in ("/api/tags", "/api/ps") and ARGS.list_status:
            self.send_raw(ARGS.list_status, b'{"error":"broken"}')
        elif self.path == "/api/tags" and ARGS.list_mib:
            pad = b" " * (ARGS.list_mib << 20)
            self.send_raw(200, b'{"models":' + json.dumps(models()).encode() + pad + b"}")
        elif self.path in ("/api/tags", "/api/ps"):
            self.send_json({"models": models()})
        else:
            self.send_error(404)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        req = json.loads(body or b"{}")
        if self.path not in ("/api/generate", "/api/chat"):
            return self.send_error(404)
        STATS["calls"] += 1
        if ARGS.error_hex:
            return self.send_raw(500, bytes.fromhex(ARGS.error_hex))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        body = self.answer(req.get("model"))
        if ARGS.cut_after >= 0:  # the connection drops: no final chunk
            body = body[:ARGS.cut_after]
        last = body.rfind(b"\n", 0, len(body) - 1) + 1  # where the final line starts
        i = 0
        while i < len(body):
            part = body[i:min(i + (1 << 16), last if i < last else len(body))]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            i += len(part)
            if ARGS.pause_ms and i == last:
                self.wfile.flush()
                time.sleep(ARGS.pause_ms / 1000)
        if ARGS.cut_after >= 0:
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(b"0\r\n\r\n")

    def answer(self, model):
        lines = [{"model": model, "response": w, "done": False} for w in ("hello", " world")]
        if ARGS.response_mib:  # one line of that many MiB before them
            lines.insert(0, {"model": model, "response": "x" * (ARGS.response_mib << 20),
                             "done": False})
        final = {"model": model, "response": "", "done": True, "done_reason": "stop",
                 "eval_count": 2}
        out = b"".join(json.dumps(o, separators=(",", ":")).encode() + b"\n" for o in lines)
        data = json.dumps(final, separators=(",", ":")).encode()
        if ARGS.context_ints:  # written directly: json.dumps of millions of ids is slow
            ids = b"[" + b"1," * (ARGS.context_ints - 1) + b"1]"
            data = data[:-1] + b',"context":' + ids + b"}"
        return out + data + b"\n"



def main():
    global ARGS
    p = argparse.ArgumentParser(prog="ab-fake-ollama", description=__doc__.split("\n\n")[2],
                                epilog="GET /fake/stats answers {\"calls\": N}: the generate "
                                "and chat calls taken.")
    p.add_argument("port", type=int, help="port on 127.0.0.1")
    p.add_argument("--long-name", type=int, default=0, metavar="BYTES",
                   help="/api/tags and /api/ps list one more model, its name BYTES long")
    p.add_argument("--extra-models", type=int, default=0, metavar="N",
                   help="/api/tags and /api/ps list N more models, extra-I:latest")
    p.add_argument("--context-ints", type=int, default=0, metavar="N",
                   help="the final generate/chat line has a \"context\" of N ids (1)")
    p.add_argument("--response-mib", type=int, default=0, metavar="N",
                   help="generate and chat stream one more line first, its response N MiB "
                   "of \"x\"")
    p.add_argument("--pause-ms", type=int, default=0, metavar="MS",
                   help="generate and chat: wait MS ms before the final line")
    p.add_argument("--error-hex", default="", metavar="HEX",
                   help="generate and chat answer HTTP 500 with these bytes as the body")
    p.add_argument("--cut-after", type=int, default=-1, metavar="BYTES",
                   help="generate and chat: the connection closes after BYTES bytes of the "
                   "answer's body (0: after the headers), without the end of the chunked body")
    p.add_argument("--list-status", type=int, default=0, metavar="CODE",
                   help="/api/tags and /api/ps answer HTTP CODE")
    p.add_argument("--list-mib", type=int, default=0, metavar="N",
                   help="/api/tags's answer is padded with N MiB of blanks")
    ARGS = p.parse_args()
    srv = ThreadingHTTPServer(("127.0.0.1", ARGS.port), Handler)
    srv.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    print("ready", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
