#!/usr/bin/python3
"""The broker's monitoring endpoint (issue 13): --http HOST:PORT serving
/metrics, /healthz and /readyz, against a real broker, worker and brokerctl
on free loopback ports.

Usage: test_metrics.py BIN_DIR CASE. The exposition is read by a strict
parser of the Prometheus text format (0.0.4) written here, so a malformed
line, a family written twice, a sample before its TYPE or a histogram whose
buckets do not add up fails the test. Standard library only."""
import math
import os
import re
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
NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
LABEL_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
TYPES = ("counter", "gauge", "histogram", "summary", "untyped")


class ParseError(Exception):
    pass


def parse_value(text, where):
    if text in ("+Inf", "Inf"):
        return math.inf
    if text == "-Inf":
        return -math.inf
    if text == "NaN":
        return math.nan
    if not re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", text):
        raise ParseError(f"{where}: bad value {text!r}")
    return float(text)


def parse_labels(s, pos, where):
    """Labels from s[pos] == '{' to the matching '}'; returns (dict, next pos)."""
    labels = {}
    pos += 1
    while True:
        if s.startswith("}", pos):
            return labels, pos + 1
        m = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*").match(s, pos)
        if not m:
            raise ParseError(f"{where}: bad label name at {s[pos:]!r}")
        key = m.group(0)
        if key.startswith("__"):
            raise ParseError(f"{where}: reserved label name {key}")
        pos = m.end()
        if not s.startswith('="', pos):
            raise ParseError(f"{where}: expected =\" after label {key}")
        pos += 2
        val = []
        while True:
            if pos >= len(s):
                raise ParseError(f"{where}: unterminated label value")
            c = s[pos]
            if c == "\\":
                nxt = s[pos + 1:pos + 2]
                if nxt not in ("\\", '"', "n"):
                    raise ParseError(f"{where}: bad escape \\{nxt} in label value")
                val.append("\n" if nxt == "n" else nxt)
                pos += 2
            elif c == '"':
                pos += 1
                break
            else:
                val.append(c)
                pos += 1
        if key in labels:
            raise ParseError(f"{where}: label {key} twice")
        labels[key] = "".join(val)
        if s.startswith(",", pos):
            pos += 1
            if s.startswith("}", pos):  # a trailing comma is allowed by the format
                return labels, pos + 1
        elif not s.startswith("}", pos):
            raise ParseError(f"{where}: expected , or }} after a label")


def family_of(sample, types):
    """The family a sample name belongs to, given the TYPEs seen so far."""
    for suffix in ("_bucket", "_sum", "_count"):
        base = sample[:-len(suffix)]
        if sample.endswith(suffix) and types.get(base) == "histogram":
            return base
    return sample


def parse(text):
    """Parses an exposition strictly. Returns {family: {"type", "help",
    "samples": [(name, labels, value)]}}."""
    if not text.endswith("\n"):
        raise ParseError("exposition does not end with a newline")
    fams, types, done, current = {}, {}, set(), None
    seen_series = set()
    for n, line in enumerate(text[:-1].split("\n"), 1):
        where = f"line {n}"
        if line == "":
            raise ParseError(f"{where}: empty line")
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                name = parts[2]
                if not NAME_RE.match(name):
                    raise ParseError(f"{where}: bad metric name {name!r}")
                if name in done:
                    raise ParseError(f"{where}: family {name} written again after others")
                if current != name:
                    if current is not None:
                        done.add(current)
                    current = name
                f = fams.setdefault(name, {"type": None, "help": None, "samples": []})
                if f["samples"]:
                    raise ParseError(f"{where}: {parts[1]} of {name} after its samples")
                key = parts[1].lower()
                if f[key] is not None:
                    raise ParseError(f"{where}: second {parts[1]} for {name}")
                arg = parts[3] if len(parts) == 4 else ""
                if key == "type":
                    if arg not in TYPES:
                        raise ParseError(f"{where}: unknown type {arg!r}")
                    types[name] = arg
                elif re.search(r"\\[^\\n]", arg.replace("\\\\", "")):
                    raise ParseError(f"{where}: bad escape in HELP")
                f[key] = arg
            continue
        m = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*").match(line)
        if not m:
            raise ParseError(f"{where}: bad sample line {line!r}")
        sample = m.group(0)
        pos = m.end()
        labels = {}
        if line.startswith("{", pos):
            labels, pos = parse_labels(line, pos, where)
        rest = line[pos:]
        if not rest.startswith(" "):
            raise ParseError(f"{where}: expected a space before the value")
        fields = rest[1:].split(" ")
        if len(fields) not in (1, 2) or (len(fields) == 2 and not re.fullmatch(r"-?\d+", fields[1])):
            raise ParseError(f"{where}: expected VALUE [TIMESTAMP], got {rest!r}")
        value = parse_value(fields[0], where)
        fam = family_of(sample, types)
        if fam not in types:
            raise ParseError(f"{where}: sample {sample} before (or without) the TYPE of its family")
        if fam != current:
            raise ParseError(f"{where}: sample of {fam} outside its family's block")
        series = (sample, tuple(sorted(labels.items())))
        if series in seen_series:
            raise ParseError(f"{where}: series {series} twice")
        seen_series.add(series)
        if types[fam] == "counter" and value < 0:
            raise ParseError(f"{where}: negative counter")
        fams[fam]["samples"].append((sample, labels, value))
    for name, f in fams.items():
        if f["type"] is None:
            raise ParseError(f"family {name} has no TYPE")
        if f["type"] == "histogram":
            check_histogram(name, f["samples"])
    return fams


def check_histogram(name, samples):
    groups = {}
    for sample, labels, value in samples:
        rest = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
        g = groups.setdefault(rest, {"buckets": [], "sum": None, "count": None})
        if sample == name + "_bucket":
            if "le" not in labels:
                raise ParseError(f"{name}: bucket without le")
            g["buckets"].append((parse_value(labels["le"], name), value))
        elif sample == name + "_sum":
            g["sum"] = value
        elif sample == name + "_count":
            g["count"] = value
        else:
            raise ParseError(f"{name}: stray sample {sample}")
    for rest, g in groups.items():
        b = g["buckets"]
        if not b or g["sum"] is None or g["count"] is None:
            raise ParseError(f"{name}{rest}: needs buckets, _sum and _count")
        for (le0, c0), (le1, c1) in zip(b, b[1:]):
            if not le1 > le0:
                raise ParseError(f"{name}{rest}: le not increasing ({le0} then {le1})")
            if c1 < c0:
                raise ParseError(f"{name}{rest}: bucket counts not cumulative")
        if b[-1][0] != math.inf:
            raise ParseError(f"{name}{rest}: last bucket is not le=\"+Inf\"")
        if b[-1][1] != g["count"]:
            raise ParseError(f"{name}{rest}: +Inf bucket {b[-1][1]} != _count {g['count']}")


# --- the parser refuses what it should ------------------------------------
def self_test():
    good = ('# HELP a_total x\n# TYPE a_total counter\na_total{k="v\\"\\\\\\n"} 1\n'
            '# TYPE h histogram\nh_bucket{le="1"} 1\nh_bucket{le="+Inf"} 2\nh_sum 3\nh_count 2\n')
    parse(good)
    bad = [
        "a 1\n",                                                    # no TYPE
        "# TYPE a gauge\na 1",                                      # no final newline
        "# TYPE a gauge\na{k=\"v\\x\"} 1\n",                        # bad escape
        "# TYPE a gauge\na{1k=\"v\"} 1\n",                          # bad label name
        "# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\na 2\n",          # family split
        "# TYPE a gauge\n# TYPE a gauge\na 1\n",                    # TYPE twice
        "# TYPE a gauge\na 1\n# HELP a x\n",                        # HELP after samples
        "# TYPE a gauge\na one\n",                                  # bad value
        "# TYPE a gauge\na 1\na 2\n",                               # same series twice
        "# TYPE 1a gauge\n",                                        # bad name
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",      # no +Inf
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n",  # +Inf != count
        "# TYPE a gauge\n\na 1\n",                                  # empty line
    ]
    for text in bad:
        try:
            parse(text)
        except ParseError:
            continue
        raise AssertionError(f"parser accepted {text!r}")


# --- processes ------------------------------------------------------------
class Broker:
    def __init__(self, *args, http=True):
        self.port = free_port()
        self.http = free_port() if http else None
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        cmd = [os.path.join(BIN, "agentbus-broker"), "--bind", self.endpoint, *args]
        if http:
            cmd += ["--http", f"127.0.0.1:{self.http}"]
        self.log = tempfile.NamedTemporaryFile(prefix="ab-metrics-broker.")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        self.procs = []
        self.logs = [self.log]
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("broker did not start")

    def worker(self, *args):
        log = tempfile.NamedTemporaryFile(prefix="ab-metrics-worker.")
        p = subprocess.Popen([os.path.join(BIN, "agentbus-worker"), "--broker", self.endpoint,
                              "--backend", "echo", *args],
                             stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(p)
        self.logs.append(log)
        return p

    def ctl(self, *args, check=True):
        r = subprocess.run([os.path.join(BIN, "brokerctl"), "--broker", self.endpoint, *args],
                           capture_output=True, text=True, timeout=30)
        if check and r.returncode != 0:
            raise AssertionError(f"brokerctl {args}: {r.returncode} {r.stderr}")
        return r

    def get(self, path):
        """(status, body) of GET http://127.0.0.1:HTTP/PATH."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http}{path}", timeout=5) as r:
                return r.status, r.read().decode(), r.headers.get("Content-Type")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(), e.headers.get("Content-Type")

    def scrape(self):
        status, body, ctype = self.get("/metrics")  # rendered for this scrape
        assert status == 200, (status, body)
        assert ctype.startswith("text/plain; version=0.0.4"), ctype
        return parse(body)

    def close(self):
        """Stops the broker and its workers (SIGTERM, SIGKILL after 10 s);
        fails if a log has a sanitizer report (tools/lib/sanitizer.py)."""
        for p in self.procs + [self.proc]:
            if p.poll() is None:
                p.terminate()
        for p in self.procs + [self.proc]:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        found = sanitizer.reports([log.name for log in self.logs])
        for log in self.logs:
            log.close()
        assert not found, sanitizer.describe(found)


def value(fams, family, sample=None, **labels):
    for name, lab, v in fams[family]["samples"]:
        if name == (sample or family) and all(lab.get(k) == w for k, w in labels.items()):
            return v
    raise AssertionError(f"no sample {sample or family} {labels}")


def wait_until(fn, what, timeout=5.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = fn()
        if r:
            return r
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def wait_service(b, name):
    wait_until(lambda: b.ctl("services", check=False).stdout.find(name) >= 0, "the worker")


# --- cases ----------------------------------------------------------------
def case_exposition():
    self_test()
    b = Broker("--startup-grace-ms", "0")
    try:
        b.worker()
        wait_service(b, "echo")
        before = b.scrape()
        for fam in before:
            assert fam.startswith("agentbus_"), fam
            if before[fam]["type"] == "counter":
                assert fam.endswith("_total"), fam
            assert before[fam]["help"], fam
        for i in range(5):
            assert b.ctl("request", "echo", f"hello {i}").stdout.strip() == f"hello {i}"
        b.ctl("request", "--cache=600", "echo", "cached")
        b.ctl("request", "--cache=600", "echo", "cached")
        r = b.ctl("request", "nosuchservice", "x", check=False)
        assert r.returncode != 0
        want = before["agentbus_requests_total"]["samples"][0][2] + 8
        after = wait_until(lambda: (lambda f: f if value(f, "agentbus_requests_total") >= want
                                    else None)(b.scrape()), "the counters to move")
        lat = "agentbus_service_latency_seconds"
        assert after[lat]["type"] == "histogram"
        assert value(after, "agentbus_service_requests_total", service="echo") >= 6
        assert value(after, "agentbus_service_replies_total", service="echo") >= 6
        assert value(after, lat, lat + "_count", service="echo") >= 6
        assert value(after, lat, lat + "_sum", service="echo") > 0
        assert value(after, "agentbus_service_workers", service="echo") == 1
        assert value(after, "agentbus_service_queue_depth", service="echo") == 0
        assert value(after, "agentbus_cache_hits_total", tier="l1") >= 1
        assert value(after, "agentbus_cache_bytes", tier="l1") > 0
        assert value(after, "agentbus_errors_total", code="NO_SERVICE") >= 1
        assert value(after, "agentbus_workers", state="healthy") == 1
        assert value(after, "agentbus_peers", role="worker") == 1
        assert value(after, "agentbus_connections") >= 1
        for fam in ("agentbus_messages_received_total", "agentbus_received_bytes_total",
                    "agentbus_replies_total", "agentbus_uptime_seconds"):
            assert value(after, fam) > value(before, fam), fam
        for fam in ("agentbus_batches_sent_total", "agentbus_lz4_messages_total",
                    "agentbus_health_transitions_total", "agentbus_workers_ejected_total",
                    "agentbus_workers_suspected_total"):
            assert fam in after, fam
    finally:
        b.close()


def case_probes():
    b = Broker("--drain-ms", "4000")
    try:
        assert b.get("/healthz")[0] in (200, 503)  # 503 only before the first render
        wait_until(lambda: b.get("/healthz")[0] == 200, "/healthz 200")
        wait_until(lambda: b.get("/readyz")[0] == 200, "/readyz 200")
        assert b.get("/nope")[0] == 404
        req = urllib.request.Request(f"http://127.0.0.1:{b.http}/metrics", method="POST",
                                     data=b"x")
        try:
            urllib.request.urlopen(req, timeout=5)
            raise AssertionError("POST accepted")
        except urllib.error.HTTPError as e:
            assert e.code == 405, e.code
        # A request held by a slow worker keeps a draining broker alive.
        b.worker("--delay-ms", "3000")
        wait_service(b, "echo")
        held = subprocess.Popen([os.path.join(BIN, "brokerctl"), "--broker", b.endpoint,
                                 "request", "echo", "slow"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        b.procs.append(held)
        wait_until(lambda: value(b.scrape(), "agentbus_pending_requests") == 1, "a held request")
        b.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: b.get("/readyz")[0] == 503, "/readyz 503 while draining", 3)
        assert b.get("/healthz")[0] == 200  # draining is alive
        assert value(b.scrape(), "agentbus_draining") == 1
        assert b.proc.wait(timeout=10) == 0
    finally:
        b.close()


def case_slow_clients():
    """Slowloris: as many connections as the endpoint takes (32), each
    sending one byte of a header line every second and never ending it,
    would keep /healthz out for good (libmicrohttpd's idle timeout restarts
    at each byte). Each is closed 5 s after it started without a complete
    request, so the probe answers again, and they are counted."""
    b = Broker()
    socks = []
    try:
        wait_until(lambda: b.get("/healthz")[0] == 200, "/healthz 200")
        # 40 for the 32 slots: those past the limit are closed at once,
        # and every slot is held even if an earlier probe's connection
        # still held one when these came.
        for _ in range(40):
            s = socket.create_connection(("127.0.0.1", b.http), 5)
            try:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            except OSError:
                pass
            socks.append(s)
        closed = set()

        def dribble():
            for i, s in enumerate(socks):
                if i in closed:
                    continue
                try:
                    s.sendall(b"a")
                except OSError:
                    closed.add(i)

        def probe():
            dribble()
            try:
                return b.get("/healthz")[0] == 200
            except OSError:  # refused at the connection limit, or reset
                return False

        wait_until(probe, "/healthz answered beside 32 dribbling connections", 30)
        # Every dribbler is cut (a send fails, or the server's FIN is read).
        def all_cut():
            dribble()
            for i, s in enumerate(socks):
                if i in closed:
                    continue
                s.setblocking(False)
                try:
                    if s.recv(4096) == b"":
                        closed.add(i)
                except BlockingIOError:
                    pass
                except OSError:
                    closed.add(i)
            return len(closed) == len(socks)
        wait_until(all_cut, "all 40 slow connections closed", 30)
        cut = value(b.scrape(), "agentbus_http_slow_closed_total")
        assert 30 <= cut <= 32, cut  # each slot's dribbler, once
        # A client that is quick enough is unaffected, also on keep-alive.
        assert b.get("/readyz")[0] == 200
    finally:
        for s in socks:
            s.close()
        b.close()


def listening_ports(pid):
    """TCP ports PID listens on (from /proc: its socket inodes in LISTEN)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            t = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if t.startswith("socket:["):
            inodes.add(t[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for row in f:
                cols = row.split()
                if cols[3] == "0A" and cols[9] in inodes:
                    ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def case_off_by_default():
    b = Broker(http=False)
    try:
        time.sleep(0.3)
        assert listening_ports(b.proc.pid) == {b.port}, listening_ports(b.proc.pid)
    finally:
        b.close()
    b = Broker()
    try:  # and with --http, exactly one more
        assert listening_ports(b.proc.pid) == {b.port, b.http}
    finally:
        b.close()


def case_config():
    """The config-file key, and values refused at start-up (exit 2, named)."""
    http = free_port()
    with tempfile.NamedTemporaryFile("w", suffix=".conf") as f:
        f.write(f"broker\n    http = 127.0.0.1:{http}\n")
        f.flush()
        b = Broker("--config", f.name, http=False)
        try:
            b.http = http
            wait_until(lambda: b.get("/healthz")[0] == 200, "/healthz from the config key")
        finally:
            b.close()
    for bad in ("127.0.0.1", "127.0.0.1:99999", "127.0.0.1:", ":80", "::1:80", "[::1:80",
                "no-such-host.invalid:9100", "127.0.0.1:80x"):
        r = subprocess.run([os.path.join(BIN, "agentbus-broker"), "--bind",
                            f"tcp://127.0.0.1:{free_port()}", "--http", bad],
                           capture_output=True, text=True, timeout=20)
        assert r.returncode == 2, (bad, r.returncode, r.stderr)
        assert f"'{bad}'" in r.stderr, (bad, r.stderr)


CASES = {"exposition": case_exposition, "probes": case_probes, "slow_clients": case_slow_clients,
         "off_by_default": case_off_by_default, "config": case_config}

if __name__ == "__main__":
    CASES[sys.argv[2]]()
    print(f"metrics_{sys.argv[2]}: ok")
