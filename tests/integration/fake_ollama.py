#!/usr/bin/env python3
"""ab-fake-ollama: an Ollama that answers what ollama-sim never would, for
the Ollama worker's tests (test_ollama_backend.c).

usage: ab-fake-ollama PORT [--long-name BYTES] [--extra-models N]
                           [--context-ints N] [--error-hex HEX]

Listens on 127.0.0.1:PORT. /api/version, /api/tags and /api/ps list the
model "fake:latest" (loaded); --long-name adds one more whose name is
BYTES long, --extra-models N more models named extra-I. /api/generate
and /api/chat stream "hello", " world" and a final line (whose "context"
holds N ids with --context-ints); with --error-hex they answer HTTP 500
with those bytes as the body instead. Prints "ready" once listening.
"""
import argparse
import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ARGS = None


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

    def do_GET(self):
        if self.path == "/api/version":
            self.send_json({"version": "0.0.0-fake"})
        elif self.path in ("/api/tags", "/api/ps"):
            self.send_json({"models": models()})
        else:
            self.send_error(404)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        req = json.loads(body or b"{}")
        if self.path not in ("/api/generate", "/api/chat"):
            return self.send_error(404)
        if ARGS.error_hex:
            data = bytes.fromhex(ARGS.error_hex)
            self.send_response(500)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            return self.wfile.write(data)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        lines = [{"model": req.get("model"), "response": w, "done": False}
                 for w in ("hello", " world")]
        final = {"model": req.get("model"), "response": "", "done": True, "done_reason": "stop",
                 "eval_count": 2}
        if ARGS.context_ints:
            final["context"] = [1] * ARGS.context_ints
        for obj in lines + [final]:
            data = json.dumps(obj, separators=(",", ":")).encode() + b"\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.write(b"0\r\n\r\n")


def main():
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("port", type=int)
    p.add_argument("--long-name", type=int, default=0)
    p.add_argument("--extra-models", type=int, default=0)
    p.add_argument("--context-ints", type=int, default=0)
    p.add_argument("--error-hex", default="")
    ARGS = p.parse_args()
    srv = ThreadingHTTPServer(("127.0.0.1", ARGS.port), Handler)
    srv.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    print("ready", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
