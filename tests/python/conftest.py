"""Fixtures: real brokers, workers and ollama-sim processes on free loopback
ports, each stopped by its PID when the test ends.

ctest (tests/python/CMakeLists.txt) sets AB_BIN_DIR (the programs) and
AGENTBUS_LIB (the libagentbus.so of that build); by hand they default to
the checkout's build/.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("AB_BIN_DIR", os.path.join(ROOT, "build"))
os.environ.setdefault("AGENTBUS_LIB", os.path.join(BIN, "libagentbus.so"))
sys.path.insert(0, os.path.join(ROOT, "python"))
sys.path.insert(0, os.path.join(ROOT, "tools", "lib"))

import agentbus  # noqa: E402
from ports import free_port  # noqa: E402  (tools/lib/ports.py)
import sanitizer  # noqa: E402  (tools/lib/sanitizer.py)


# Under the sanitizer build (tests/python/CMakeLists.txt) the interpreter runs
# with the ASan runtime preloaded, and its leak checks leave the
# interpreter's own allocations out (lsan.supp); the programs a test starts
# are ASan-built themselves and get the usual options, and a report in any
# of their logs fails the test (Procs.stop).
CHILD_ENV = {}
if "libasan" in os.environ.get("LD_PRELOAD", ""):
    CHILD_ENV = {"LD_PRELOAD": "", "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=1",
                 "LSAN_OPTIONS": ""}


def ep(port: int) -> str:
    return "tcp://127.0.0.1:%d" % port


class Procs:
    """Processes a test started; stop() ends them by PID (SIGTERM, then
    SIGKILL), shows their logs when the test failed, and fails the test if
    a log has a sanitizer report."""

    def __init__(self, tmp_path) -> None:
        self.tmp = tmp_path
        self.procs = []

    def spawn(self, prog: str, *args: str, env=None) -> subprocess.Popen:
        path = prog if os.sep in prog else os.path.join(BIN, prog)
        log = open(os.path.join(self.tmp, "%s-%d.log" % (os.path.basename(prog),
                                                          len(self.procs))), "w+")
        full_env = dict(os.environ)
        full_env.update(CHILD_ENV)
        full_env.update(env or {})
        p = subprocess.Popen([path, *args], stdout=log, stderr=subprocess.STDOUT, env=full_env)
        self.procs.append((p, log))
        return p

    def logs(self) -> str:
        out = []
        for p, log in self.procs:
            log.flush()
            log.seek(0)
            out.append("--- pid %d %s:\n%s" % (p.pid, p.args, log.read()[-4000:]))
        return "\n".join(out)

    def stop(self) -> None:
        for p, _ in reversed(self.procs):
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
        for p, _ in reversed(self.procs):
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(5)
        for _, log in self.procs:
            log.close()
        found = sanitizer.reports([log.name for _, log in self.procs])
        assert not found, sanitizer.describe(found)


@pytest.fixture
def procs(tmp_path, request):
    p = Procs(tmp_path)
    yield p
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        print(p.logs())
    p.stop()


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


class Bus:
    """A broker on a free port, and helpers to start workers against it."""

    def __init__(self, procs: Procs) -> None:
        self.procs = procs
        self.port = 0
        self.pid = 0

    @property
    def endpoint(self) -> str:
        return ep(self.port)

    def start(self, *args: str) -> "Bus":
        self.port = free_port()
        p = self.procs.spawn("agentbus-broker", "--bind", self.endpoint, "--startup-grace-ms",
                             "0", *args)
        self.pid = p.pid
        with agentbus.Client(self.endpoint) as c:
            for _ in range(100):
                try:
                    c.discover(timeout=0.1)
                    return self
                except agentbus.AgentbusError:
                    assert p.poll() is None, "broker exited\n" + self.procs.logs()
        raise AssertionError("broker did not come up\n" + self.procs.logs())

    def client(self, **kw) -> agentbus.Client:
        return agentbus.Client(self.endpoint, **kw)

    def echo_worker(self, service: str = "echo", *args: str) -> subprocess.Popen:
        return self.procs.spawn("agentbus-worker", "--broker", self.endpoint, "--backend",
                                "echo", "--service", service, *args)

    def wait_workers(self, service: str, n: int = 1, timeout: float = 10.0) -> None:
        end = time.monotonic() + timeout
        with self.client() as c:
            while time.monotonic() < end:
                try:
                    d = c.discover(service, timeout=1)
                except agentbus.TimeoutError:  # a broker the machine ran late: ask again
                    continue
                if sum(1 for w in d["workers"] if w["health"] == "healthy") >= n:
                    return
                time.sleep(0.05)
        raise AssertionError("%d worker(s) of %s did not register\n%s" %
                             (n, service, self.procs.logs()))


class Running:
    """A Worker running on its own thread for the length of a test."""

    def __init__(self, bus, service, handler, **kw):
        self.worker = agentbus.Worker(service, handler, endpoint=bus.endpoint, **kw)
        self.thread = threading.Thread(target=self.worker.run, daemon=True)
        self.thread.start()
        bus.wait_workers(service)

    def stop(self):
        self.worker.stop()
        self.thread.join(10)
        assert not self.thread.is_alive()
        self.worker.close()


@pytest.fixture
def bus(procs) -> Bus:
    return Bus(procs).start()


@pytest.fixture
def sim(procs):
    """Starts ollama-sim with the given flags; returns its port."""

    def start(*args: str) -> int:
        port = free_port()
        p = procs.spawn("ollama-sim", "--port", str(port), *args)
        for _ in range(200):
            try:
                urllib.request.urlopen("http://127.0.0.1:%d/api/version" % port, timeout=1)
                return port
            except OSError:
                assert p.poll() is None, "ollama-sim exited\n" + procs.logs()
                time.sleep(0.05)
        raise AssertionError("ollama-sim did not answer\n" + procs.logs())

    return start
