"""Python workers beside C ones: served to Python and C clients (brokerctl)."""

import asyncio
import json
import subprocess
import threading
import time
import os

import pytest

import agentbus
from agentbus import _pb
from conftest import BIN, Running


@pytest.fixture
def serve(bus):
    running = []

    def start(service, handler, **kw):
        r = Running(bus, service, handler, **kw)
        running.append(r)
        return r.worker

    yield start
    for r in running:
        r.stop()


def brokerctl(bus, *args):
    return subprocess.run([os.path.join(BIN, "brokerctl"), "--broker", bus.endpoint, *args],
                          capture_output=True, text=True, timeout=60)


def test_sync_handler_python_and_c_clients(bus, serve):
    serve("upper", lambda job: job.data.upper())
    with bus.client() as c:
        assert c.request("upper", b"hello") == b"HELLO"
    out = brokerctl(bus, "request", "upper", "from c")
    assert out.returncode == 0, out.stderr
    assert "FROM C" in out.stdout


class Overlap:
    """Counts how many handlers run at the same time (concurrency proof that
    does not depend on the machine's speed)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.now = self.max = 0

    def __enter__(self):
        with self.lock:
            self.now += 1
            self.max = max(self.max, self.now)

    def __exit__(self, *exc):
        with self.lock:
            self.now -= 1


def test_async_handler_capacity(bus, serve):
    overlap = Overlap()

    async def slow(job):
        with overlap:
            await asyncio.sleep(0.4)
        return b"done " + job.data

    serve("slow", slow, capacity=8, labels={"lang": "python"}, name="py1")
    with bus.client() as c:
        d = c.discover("slow")
        assert d["workers"][0]["labels"] == {"lang": "python"}
        assert d["workers"][0]["capacity"] == 8 and d["workers"][0]["name"] == "py1"
        streams = [c.stream("slow", str(i), timeout=10) for i in range(8)]
        replies = [b"".join(s) for s in streams]
        assert replies == [b"done %d" % i for i in range(8)]
        assert overlap.max >= 4, "at capacity 8 at most %d ran at once" % overlap.max


def test_sync_handlers_run_concurrently(bus, serve):
    overlap = Overlap()

    def slow(job):
        with overlap:
            time.sleep(0.4)
        return job.data

    serve("tslow", slow, capacity=4)
    with bus.client() as c:
        streams = [c.stream("tslow", b"x", timeout=10) for _ in range(4)]
        assert [b"".join(s) for s in streams] == [b"x"] * 4
        assert overlap.max >= 2, "sync handlers ran one at a time"


def test_streamed_parts(bus, serve):
    def gen(job):
        for word in job.text().split():
            yield word

    async def agen(job):
        for word in job.text().split():
            await asyncio.sleep(0)
            yield word.upper()

    serve("words", gen)
    serve("awords", agen)
    with bus.client() as c:
        assert list(c.stream("words", "a bb ccc", timeout=5)) == [b"a", b"bb", b"ccc"]
        assert list(c.stream("awords", "a bb", timeout=5)) == [b"A", b"BB"]


def test_errors_reach_the_client(bus, serve):
    def fail(job):
        if job.data == b"model":
            raise agentbus.ModelNotFoundError("no model %s here" % job.text())
        raise ValueError("bad input")

    serve("fail", fail)
    with bus.client() as c:
        with pytest.raises(agentbus.ApplicationError) as e:
            c.request("fail", b"x", timeout=5)
        assert "ValueError: bad input" in e.value.text
        with pytest.raises(agentbus.ModelNotFoundError) as e:
            c.request("fail", b"model", timeout=5)
        assert "no model model here" in e.value.text
    out = brokerctl(bus, "--json", "request", "fail", "x")
    assert out.returncode != 0 and "APPLICATION" in out.stdout + out.stderr


def test_requests_at_fault_do_not_eject_the_worker(bus, serve):
    # Five failed requests in a row eject a worker (eject-failures). A
    # worker's MODEL_NOT_FOUND or BAD_REQUEST blames the request, not the
    # worker: any client could eject every worker of a service with five
    # requests for a model that does not exist, then again at each probe.
    # The worker's own failures (APPLICATION here) still eject it.
    def handler(job):
        if job.data.startswith(b"model"):
            raise agentbus.ModelNotFoundError("no model %s" % job.text())
        if job.data.startswith(b"bad"):
            job.inference()  # not an InferenceRequest: BAD_REQUEST
        if job.data.startswith(b"broken"):
            raise RuntimeError("my database is down")
        return b"ok"

    serve("judged", handler)
    with bus.client() as c:
        for i in range(12):
            with pytest.raises(agentbus.ModelNotFoundError):
                c.request("judged", b"model-%d" % i, timeout=10)
            with pytest.raises(agentbus.BadRequestError):  # job.inference()'s, unhandled
                c.request("judged", b"bad\xff\xff\xff", timeout=10)
        assert c.control("stats")["workers_ejected"] == 0
        assert c.request("judged", b"fine", timeout=10) == b"ok"
        for i in range(5):
            with pytest.raises(agentbus.ApplicationError):
                c.request("judged", b"broken", timeout=10)
        assert c.control("stats")["workers_ejected"] == 1


def test_a_worker_that_never_answers_a_cancel(procs):
    # A worker whose heartbeats go on but which never answers a CANCEL (a
    # handler stuck for good: a backend call that never returns) kept the
    # slot forever, and stayed "healthy": a deadline is judged at the
    # worker's answer, and none came. Now cancel-grace-ms after the CANCEL
    # a worker that answered nothing at all since counts a failure, once
    # per period, and is ejected after eject-failures: what it held is
    # taken back. One that answers others meanwhile is busy, not hung.
    from conftest import Bus
    bus = Bus(procs).start("--cancel-grace-ms", "300", "--eject-failures", "3")
    release, started = threading.Event(), threading.Event()

    def handler(job):
        if job.data == b"hang":
            started.set()
            release.wait(60)  # never looks at job.cancelled
        return job.data

    r = Running(bus, "stuck", handler, capacity=4)
    try:
        with bus.client() as c:
            # Its handler has the job before the CANCEL: one still in the
            # worker's ready queue is answered CANCELLED by the library.
            s = c.stream("stuck", b"hang", timeout=600)
            assert started.wait(30)
            s.close()  # CANCEL
            # Busy, not hung: it answers others for several periods, and no
            # period counts. The broker counts a period in which no answer
            # came, and a process the machine does not run for a period
            # answers nothing (this one, worker and all, SIGSTOPped for
            # 0.5 s failed here): judged over a window in which it did
            # answer, answers seen here under half a period apart, the one
            # before the window included (they reached the broker under a
            # period apart).
            last, step = time.monotonic(), 0.0  # the CANCEL; the last spacing
            for _ in range(5):
                before = c.control("stats")["cancels_unanswered"]
                end, gap = time.monotonic() + 1.5, step
                while time.monotonic() < end:
                    assert c.request("stuck", b"other", timeout=10) == b"other"
                    now = time.monotonic()
                    step, last = now - last, now
                    gap = max(gap, step)
                    time.sleep(0.05)
                st = c.control("stats")
                gap = max(gap, time.monotonic() - last)  # until the broker read its count
                if gap < 0.15:
                    break
                print("answers %.2f s apart: not a busy window, again" % gap)
            assert gap < 0.15, "no window in which it answered every %.2f s" % gap
            assert st["cancels_unanswered"] == before and st["workers_ejected"] == 0, st
            assert st["pending"] == 1  # the orphan, holding its slot
            # Hung: nothing answered for three periods -> ejected, taken back.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                st = c.control("stats")
                if st["workers_ejected"] >= 1 and st["pending"] == 0:
                    break
                time.sleep(0.05)
            assert st["workers_ejected"] == 1 and st["pending"] == 0, st
            assert st["cancels_unanswered"] >= 3, st
            release.set()  # its late answer is dropped; a probe brings it back
            assert c.request("stuck", b"back", timeout=30) == b"back"
            out = brokerctl(bus, "stats", "--json")
            assert out.returncode == 0, out.stderr
            assert json.loads(out.stdout)["health"]["cancels_unanswered"] >= 3
    finally:
        release.set()
        r.stop()


def test_cancellation_async_and_sync(bus, serve):
    seen = {"async": threading.Event(), "sync": threading.Event()}
    started = {"async": threading.Event(), "sync": threading.Event()}

    async def forever(job):
        started["async"].set()
        try:
            await asyncio.sleep(600)
        except asyncio.CancelledError:
            seen["async"].set()
            raise

    def polling(job):
        started["sync"].set()
        end = time.monotonic() + 60
        while not job.cancelled and time.monotonic() < end:
            time.sleep(0.01)
        if job.cancelled:
            seen["sync"].set()
        return b"late"

    serve("aforever", forever)
    serve("sforever", polling)
    with bus.client() as c:
        for svc, key in (("aforever", "async"), ("sforever", "sync")):
            s = c.stream(svc, b"x", timeout=600)
            for _ in range(100):  # until the handler runs (a queued job is
                c.poll(0.05)      # cancelled by the library, unseen)
                if started[key].is_set():
                    break
            assert started[key].is_set()
            s.close()
            assert seen[key].wait(5), "%s handler was not cancelled" % key
            # its slot is free again (capacity 1)
            d = c.discover(svc)
            for _ in range(50):
                if d["workers"][0]["in_flight"] == 0:
                    break
                time.sleep(0.1)
                d = c.discover(svc)
            assert d["workers"][0]["in_flight"] == 0


def test_python_worker_serves_inference(bus, serve):
    def llm(job):
        req = job.inference()["generate"]
        words = ("echo: " + req["prompt"]).split()
        for w in words:
            yield agentbus.inference_reply("generate", model=req["model"], response=w + " ",
                                           worker="py-llm")
        yield agentbus.inference_reply("generate", model=req["model"], done=True,
                                       done_reason="stop", eval_count=len(words),
                                       worker="py-llm")

    serve("pyllm", llm)
    with bus.client() as c:
        chunks = list(c.generate("tiny", "hi there", stream=True, service="pyllm", timeout=10))
        assert "".join(ch["response"] for ch in chunks) == "echo: hi there "
        assert chunks[-1]["done"] and chunks[-1]["eval_count"] == 3
    out = brokerctl(bus, "generate", "tiny", "from brokerctl", "--service", "pyllm")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "echo: from brokerctl" in out.stdout


def _hwm_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(x.split()[1]) for x in f if x.startswith("VmHWM:"))


def test_inference_of_many_empty_messages(bus, serve):
    # job.inference() decodes a client's request with protobuf-c, which
    # takes a record for each entry: 4 Mi empty chat messages (8 MiB) grew
    # this process by hundreds of MiB. Now it is decoded within 4x its size
    # plus 1 MiB (ab_pb_unpack) and refused past that, as bytes that do not
    # decode.
    inner = b"\x12\x00" * (4 << 20)  # ChatRequest.messages, each empty
    payload = b"\x12\x80\x80\x80\x04" + inner  # InferenceRequest.chat, 8 MiB long
    seen = []

    def handler(job):
        try:
            job.inference()
        except ValueError as e:  # agentbus.PayloadError
            seen.append(str(e))
            raise
        return b"decoded"

    serve("pyinf", handler)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM back to the RSS of now
    before = _hwm_kib()
    with bus.client() as c:
        with pytest.raises(agentbus.BadRequestError) as e:
            c.request("pyinf", payload, model="m", timeout=60)
        assert "decodes to more than 4x its size" in e.value.text
        chat = _pb.pack("inference_request",
                        {"chat": {"model": "m", "messages": [{"role": "user"}] * 1000}})
        assert c.request("pyinf", chat, timeout=10) == b"decoded"  # an honest one still decodes
    grown = _hwm_kib() - before
    print("peak RSS grew %d KiB for a %d KiB request" % (grown, len(payload) >> 10))
    assert len(seen) == 1
    if "libasan" not in os.environ.get("LD_PRELOAD", ""):
        assert grown < 12 * len(payload) >> 10, "%d KiB" % grown


def test_brokerctl_embed_of_many_empty_embeddings(bus, serve):
    # A worker's reply passes the broker as bytes; brokerctl decoded it
    # with protobuf-c, a record for each of 4 Mi empty embeddings (8 MiB):
    # ~800 MiB, then 12 MB of "[]". Now within 4x its size: MALFORMED.
    reply = b"\x12\x00" * (4 << 20)  # EmbedResponse.embeddings, each empty
    serve("pyemb", lambda job: reply)
    out = brokerctl(bus, "embed", "m", "x", "--service", "pyemb")
    print("brokerctl: exit %d, %d bytes out: %s" % (out.returncode, len(out.stdout),
                                                   out.stderr[-120:]))
    assert out.returncode == 1
    assert "MALFORMED: reply is not an EmbedResponse" in out.stderr
    assert len(out.stdout) < 4096


def test_python_worker_relays_ollama_lists(bus, serve):
    """inference_reply takes Ollama's logprobs and a message's tool_calls
    under Ollama's names (a worker relaying Ollama's chunks passes them as
    they come) and they reach the client: they were unknown keys, dropped."""
    lp = [{"token": "hi", "logprob": -0.25, "bytes": [104, 105], "top_logprobs": []}]
    calls = [{"function": {"name": "get_time", "arguments": {"zone": "Lima"}}}]

    def llm(job):
        req = job.inference()
        if "chat" in req:
            return agentbus.inference_reply(
                "chat", model="tiny", done=True, done_reason="stop", logprobs=lp,
                message={"role": "assistant", "content": "", "tool_calls": calls})
        return agentbus.inference_reply("generate", model="tiny", response="hi", done=True,
                                        done_reason="stop", logprobs=lp, context=[7, 8])

    serve("pylists", llm)
    with bus.client() as c:
        g = c.generate("tiny", "x", service="pylists", timeout=10)
        assert g["logprobs"] == lp and g["context"] == [7, 8]
        r = c.chat("tiny", [{"role": "user", "content": "time?"}], service="pylists", timeout=10)
        assert r["logprobs"] == lp and r["message"]["tool_calls"] == calls


def test_python_client_to_c_worker_and_back(bus, serve):
    # C worker (echo) serving the Python client, and a Python worker that
    # itself calls the C worker while serving a C client.
    bus.echo_worker()
    bus.wait_workers("echo")

    async def relay(job):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, lambda: _relay(bus, job.data))

    serve("relay", relay)
    out = brokerctl(bus, "request", "relay", "round trip")
    assert out.returncode == 0, out.stderr
    assert "relayed: round trip" in out.stdout


def _relay(bus, data):
    with bus.client() as c:
        return b"relayed: " + c.request("echo", data, timeout=5)


def test_shutdown_finishes_held_jobs(bus):
    started = threading.Event()

    def slow(job):
        started.set()
        time.sleep(0.5)
        return b"finished"

    w = agentbus.Worker("drain", slow, endpoint=bus.endpoint, capacity=2)
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    try:
        bus.wait_workers("drain")
        with bus.client() as c:
            s = c.stream("drain", b"x", timeout=10)
            assert started.wait(5)
            w.shutdown(grace=5)  # from another thread, as from a signal handler
            assert b"".join(s) == b"finished"
            t.join(10)
            assert not t.is_alive(), "run() did not return after a drained shutdown"
    finally:
        w.stop()
        t.join(10)
        w.close()


def test_broker_restart(procs):
    # A request in flight when the broker dies ends with DisconnectedError;
    # the Python worker registers again with the restarted broker by itself.
    from conftest import Bus
    import signal
    bus = Bus(procs).start("--heartbeat-ms", "200")
    hold, held = threading.Event(), threading.Event()

    def handler(job):
        if job.data == b"hold":
            held.set()
            hold.wait(20)
        return b"ok " + job.data

    w = agentbus.Worker("svc", handler, endpoint=bus.endpoint, capacity=2, heartbeat_ms=200)
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    try:
        bus.wait_workers("svc")
        with bus.client(heartbeat_ms=200) as c:
            s = c.stream("svc", b"hold", timeout=30)
            deadline = time.monotonic() + 10  # the worker holds it: a state, not 0.3 s
            while not held.is_set() and time.monotonic() < deadline:
                c.poll(0.05)
            assert held.is_set()
            os.kill(bus.pid, signal.SIGKILL)
            with pytest.raises(agentbus.DisconnectedError) as e:
                list(s)
            assert isinstance(e.value, ConnectionError)
            hold.set()
            port = bus.port
            p = procs.spawn("agentbus-broker", "--bind", bus.endpoint, "--heartbeat-ms", "200")
            assert bus.port == port and p.poll() is None
            bus.wait_workers("svc", timeout=20)
            assert c.request("svc", b"again", timeout=10) == b"ok again"
    finally:
        hold.set()
        w.stop()
        t.join(10)
        w.close()


def test_handler_result_of_another_type_fails_the_request(bus, serve):
    # docs/python.md: a handler returns bytes or str (None = empty). Any
    # other result went as its str(): 5 as b"5", a dict as its repr, a
    # streamed item 7 as b"7". Now the request fails with the TypeError.
    def handler(job):
        if job.data == b"int":
            return 5
        if job.data == b"dict":
            return {"a": 1}
        if job.data == b"none":
            return None
        return job.data

    def streamed(job):
        yield b"one"
        yield 7
        yield b"three"

    serve("typed", handler)
    serve("typed-stream", streamed)
    with bus.client() as c:
        for bad in (b"int", b"dict"):
            with pytest.raises(agentbus.ApplicationError) as e:
                c.request("typed", bad, timeout=10)
            assert "TypeError" in e.value.text, e.value.text
        assert c.request("typed", b"none", timeout=10) == b""
        assert c.request("typed", bytearray(b"ok"), timeout=10) == b"ok"
        s = c.stream("typed-stream", b"", timeout=10)
        assert next(s) == b"one"
        with pytest.raises(agentbus.ApplicationError) as e:
            list(s)
        assert "TypeError" in e.value.text, e.value.text


def test_setters_from_another_thread_while_serving(bus, serve):
    # docs/python.md: every call on the C handle happens on the worker's
    # loop thread. worker.capacity = n and set_backend_state() from the
    # thread that started it ran on the handle at once, racing the loop's
    # replies: INTERNAL "gathered message does not decode", NOMEM "out of
    # memory sending a batch", or libzmq aborting the process.
    def parts(job):  # many sends on the loop's side
        for _ in range(5):
            yield job.data

    w = serve("tcap", parts, capacity=4)
    done = threading.Event()
    errors = []

    def load():
        try:
            with bus.client() as c:
                for _ in range(100):
                    streams = [c.stream("tcap", b"x", timeout=60) for _ in range(20)]
                    assert [b"".join(s) for s in streams] == [b"xxxxx"] * 20
        except BaseException as e:  # reported below
            errors.append(e)
        finally:
            done.set()

    t = threading.Thread(target=load, daemon=True)
    t.start()
    i = 0
    while not done.is_set() and i < 20000:
        w.capacity = 1 + i % 8
        w.set_backend_state("s%d" % (i % 3))
        i += 1
    t.join(120)
    assert not t.is_alive() and not errors, errors
    w.capacity = 3  # sent at once (the backend state waits for a heartbeat,
    with bus.client() as c:  # which the broker spaces out to minutes)
        for _ in range(600):
            (info,) = c.discover("tcap")["workers"]
            if info["capacity"] == 3:
                break
            time.sleep(0.1)
        assert info["capacity"] == 3, info


def test_closed_worker_raises_stopped(bus):
    # As a closed Client does: run(), capacity = n and set_backend_state()
    # on a closed Worker said INVALID "invalid argument".
    w = agentbus.Worker("closed", lambda job: b"", endpoint=bus.endpoint)
    w.close()
    w.close()  # idempotent
    for call in (w.run, lambda: setattr(w, "capacity", 2),
                 lambda: w.set_backend_state("ok")):
        with pytest.raises(agentbus.StoppedError) as e:
            call()
        assert e.value.text == "worker is closed", e.value.text
    assert not w.connected and w.capacity == 0 and w.refused is None
    w.stop()
    w.shutdown()


def test_with_block_around_a_running_worker(bus):
    # `with Worker(...) as w:` around a thread running w.run(): __exit__'s
    # close() freed the handle while the loop's thread was inside
    # ab_worker_poll or answering a job (heap-use-after-free under ASan,
    # "member access within null pointer" in ab_worker_reply). close() now
    # stops the worker and waits for run() to return first.
    stop = threading.Event()

    def load():
        with bus.client() as c:
            while not stop.is_set():
                try:
                    c.request("wx", b"x" * 1000, timeout=2, priority=1)
                except agentbus.AgentbusError:
                    time.sleep(0.01)

    clients = [threading.Thread(target=load, daemon=True) for _ in range(2)]
    for t in clients:
        t.start()
    try:
        for _ in range(40):
            with agentbus.Worker("wx", lambda job: job.data, endpoint=bus.endpoint,
                                 capacity=8) as w:
                t = threading.Thread(target=w.run, daemon=True)
                t.start()
                for _ in range(100):  # until it serves
                    if w.connected:
                        break
                    time.sleep(0.01)
            assert not w._h  # closed by the with block
            t.join(30)
            assert not t.is_alive()
    finally:
        stop.set()
        for t in clients:
            t.join(30)


def test_getters_from_another_thread_while_serving(bus, serve, monkeypatch):
    # worker.capacity, connected and last_error() read the C handle on the
    # calling thread while the loop's thread sent and polled on it (the
    # one-thread-at-a-time rule; a close() there freed it under the read).
    # Now, while the worker runs, they are answered on the loop's thread.
    lib = agentbus._lib.lib
    callers = {}
    for name in ("ab_worker_capacity", "ab_worker_connected", "ab_worker_last_error",
                 "ab_worker_refused"):
        fn = getattr(lib, name)

        def spy(*args, _fn=fn, _name=name):
            callers.setdefault(_name, set()).add(threading.current_thread().name)
            return _fn(*args)
        monkeypatch.setattr(lib, name, spy)
    w = serve("tget", lambda job: job.data, capacity=3)
    got = []

    def read():
        got.append((w.capacity, w.connected, w.last_error(), w.refused))
    t = threading.Thread(target=read, name="reader", daemon=True)
    t.start()
    t.join(30)
    assert got == [(3, True, got[0][2], None)], got
    assert all("reader" not in names for names in callers.values()), callers


def test_close_waits_for_a_getter_on_another_thread(bus, monkeypatch):
    # A worker not served: capacity, connected, last_error() and the
    # setters run on the calling thread. A close() on another thread freed
    # the handle while such a call was inside the C library (ctypes lets go
    # of the GIL): a use-after-free. close() now waits for it.
    lib = agentbus._lib.lib
    order = []
    inside = threading.Event()
    real_connected, real_destroy = lib.ab_worker_connected, lib.ab_worker_destroy

    def slow_connected(h):
        inside.set()
        time.sleep(0.3)  # the C call still running when close() is called
        r = real_connected(h)
        order.append("read")
        return r

    def destroy(ph):
        order.append("destroy")
        return real_destroy(ph)
    monkeypatch.setattr(lib, "ab_worker_connected", slow_connected)
    monkeypatch.setattr(lib, "ab_worker_destroy", destroy)
    w = agentbus.Worker("tclose", lambda job: job.data, endpoint=bus.endpoint)
    got = []
    t = threading.Thread(target=lambda: got.append(w.connected), daemon=True)
    t.start()
    assert inside.wait(30)
    w.close()
    t.join(30)
    assert order == ["read", "destroy"], order
    assert len(got) == 1
    assert w.connected is False and w.capacity == 0  # closed: the values of a closed worker


def test_unread_answer_is_bounded(bus, serve):
    """A stream the application does not read while its client polls, and
    an answer gathered whole (request() with options), hold at most 64 MiB
    of chunks: past it the call fails PAYLOAD_SIZE, as the C library's
    synchronous request does, and the request is cancelled. Before
    2026-12-06 every chunk was kept until the request ended (here, the
    flood worker's cap of 1,000 chunks of 1 MiB)."""
    seen = []

    def flood(job):
        n = 0
        while not job.cancelled and n < 1000:
            job.send(b"z" * (1 << 20))
            n += 1
            time.sleep(0.002)
        seen.append((job.cancelled, n))
        return b""

    serve("flood", flood, capacity=2)
    with bus.client() as c:
        s = c.stream("flood", b"x", timeout=120)
        end = time.monotonic() + 60
        while not s._call.final and time.monotonic() < end:
            c.poll(0.1)  # the application does other things, never next(s)
        with pytest.raises(agentbus.PayloadSizeError):
            next(s)
        with pytest.raises(agentbus.PayloadSizeError):
            c.request("flood", b"x", timeout=120, priority="batch")
        end = time.monotonic() + 30
        while len(seen) < 2 and time.monotonic() < end:
            c.poll(0.1)
    assert len(seen) == 2 and all(cancelled and 64 <= n < 1000 for cancelled, n in seen), seen


def _capacity_call(w, call, got):
    """A call of worker W's capacity from another thread: read ("get") or
    set to 3; appends what it returned (None for a set) or raised to GOT."""
    def caller():
        try:
            if call == "get":
                got.append(w.capacity)
            else:
                w.capacity = 3
                got.append(None)
        except BaseException as e:  # asserted by the test
            got.append(e)
    return caller


class _HoldingLoop(asyncio.SelectorEventLoop):
    """An event loop that holds the "caller" thread's hand-over until the
    test says so (the worker's loop has ended by then)."""

    release = None

    def call_soon_threadsafe(self, *args, **kw):
        if threading.current_thread().name == "caller":
            self.entered.set()
            self.release.wait(30)
        return super().call_soon_threadsafe(*args, **kw)


@pytest.mark.parametrize("closed", [False, True])
@pytest.mark.parametrize("call", ["get", "set"])
def test_call_handed_to_an_ending_loop(bus, closed, call):
    # A getter or setter from another thread is handed to the worker's loop.
    # Handed to it in its last turn, the call never ran: its caller waited
    # 60 s (serve() in a loop that stays open), or got RuntimeError "Event
    # loop is closed" (run()'s). Now it is answered as the loop ends and
    # runs on the caller's thread, as when the worker is not running.
    w = agentbus.Worker("tend", lambda job: b"", endpoint=bus.endpoint, capacity=2)
    loop = _HoldingLoop()
    loop.entered, loop.release = threading.Event(), threading.Event()

    def run():
        try:
            loop.run_until_complete(w.serve())
        finally:
            if closed:
                loop.close()
            loop.release.set()

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    for _ in range(500):
        if w._loop is not None:
            break
        time.sleep(0.01)
    got = []
    caller = _capacity_call(w, call, got)
    t = threading.Thread(target=caller, name="caller", daemon=True)
    t.start()
    assert loop.entered.wait(10)
    w.stop()
    runner.join(10)
    assert not runner.is_alive()
    t.join(20)  # 60 s before
    try:
        assert not t.is_alive(), "the call waited for a loop that had ended"
        assert got == [2 if call == "get" else None], got
    finally:
        w.close()
        if not closed:
            loop.close()


@pytest.mark.parametrize("call", ["get", "set"])
def test_call_to_a_loop_stopped_outside_serve(bus, call):
    # loop.stop() while serve() is suspended in it: the loop runs nothing
    # until it runs again. A getter or setter from another thread, handed
    # to it, waited 60 s; now it fails StoppedError once the loop has not
    # been running for a second. Once the loop runs again, calls work.
    w = agentbus.Worker("tstopped", lambda job: b"", endpoint=bus.endpoint, capacity=2)
    loop = asyncio.new_event_loop()
    task = loop.create_task(w.serve())
    loop.call_later(0.3, loop.stop)
    loop.run_forever()  # returns with serve() suspended, the worker still "running"
    assert not task.done() and w._loop is loop
    got = []
    caller = _capacity_call(w, call, got)
    t = threading.Thread(target=caller, daemon=True)
    t.start()
    t.join(30)  # 60 s before
    try:
        assert not t.is_alive(), "the call waited for a loop that was stopped"
        assert len(got) == 1 and isinstance(got[0], agentbus.StoppedError), got
        assert "event loop is not running" in str(got[0])
        # The loop runs again: a call from another thread is answered there.
        again = []
        t = threading.Thread(target=lambda: again.append(w.capacity), daemon=True)
        loop.call_soon(t.start)
        loop.run_until_complete(asyncio.sleep(0.3))
        for _ in range(100):
            if again or not t.is_alive():
                break
            loop.run_until_complete(asyncio.sleep(0.1))
        assert again == [2], again
    finally:
        w.stop()
        loop.run_until_complete(asyncio.wait_for(task, 10))
        w.close()
        loop.close()


def test_calls_while_the_worker_stops(bus):
    # Getters and setters from one thread while another stops the worker:
    # each returns or raises StoppedError, none waits for a loop that ended.
    for i in range(10):
        w = agentbus.Worker("tstop", lambda job: b"", endpoint=bus.endpoint)
        runner = threading.Thread(target=w.run, daemon=True)
        runner.start()
        bad, stop = [], threading.Event()

        def calls():
            n = 0
            while not stop.is_set():
                n += 1
                began = time.monotonic()
                try:
                    w.capacity = 1 + n % 4
                    w.set_backend_state("s%d" % (n % 2))
                    assert w.capacity in (1, 2, 3, 4)
                except agentbus.StoppedError:
                    pass
                except BaseException as e:  # asserted below
                    bad.append(e)
                if time.monotonic() - began > 30:
                    bad.append("a call waited %.0f s" % (time.monotonic() - began))

        t = threading.Thread(target=calls, daemon=True)
        t.start()
        time.sleep(0.05 + 0.01 * i)
        if i % 2:
            w.shutdown(0)
        else:
            w.stop()
        runner.join(10)
        time.sleep(0.02)
        stop.set()
        t.join(40)
        assert not runner.is_alive() and not t.is_alive() and not bad, bad
        w.close()


def test_failure_after_work_began_is_not_redispatched(bus, serve, monkeypatch):
    # The broker hands a request its worker failed with BACKEND or
    # BACKEND_BUSY to another capable worker (docs/placement.md), unless
    # something streamed or the worker says the work had begun
    # (ab_worker_fail_begun). A Python handler could not say so: a
    # failure after job.begun = True ran the request a second time.
    tried, begun = [], []
    lib = agentbus._lib.lib
    fail_begun = lib.ab_worker_fail_begun

    def spy(*args):
        begun.append(args[3])
        return fail_begun(*args)
    monkeypatch.setattr(lib, "ab_worker_fail_begun", spy)

    def handler(job):
        tried.append(job.data)
        if len(tried) > 1:
            return b"again"
        if job.data == b"part":
            job.send(b"p1")
            assert job.begun  # set by the part sent
        elif job.data == b"begun":
            job.begun = True
        raise agentbus.BackendError("backend cut")

    serve("tbegun", handler, name="b1")
    serve("tbegun", handler, name="b2")
    bus.wait_workers("tbegun", 2)
    with bus.client() as c:
        # not begun: re-dispatched, as before
        assert c.request("tbegun", b"plain", model="m", timeout=10) == b"again"
        assert tried == [b"plain", b"plain"]
        for data in (b"part", b"begun"):
            del tried[:]
            chunks = []
            with pytest.raises(agentbus.BackendError) as e:
                for chunk in c.stream("tbegun", data, model="m", timeout=10):
                    chunks.append(chunk)
            assert e.value.text == "backend cut"
            assert tried == [data], tried
            assert chunks == ([b"p1"] if data == b"part" else []), chunks
    assert begun == [b"backend cut"] * 2, begun  # "part" too, though the broker knew


def test_second_run_while_serving_is_refused(bus):
    """A second run() on another thread while the first serves raised
    nothing: it took over the worker's loop and pool and drained the same
    C handle from a second thread (the handle is one thread's at a time),
    and it was still running after shutdown() and close()."""
    w = agentbus.Worker("twice", lambda job: job.data, endpoint=bus.endpoint)
    first = threading.Thread(target=w.run, daemon=True)
    first.start()
    bus.wait_workers("twice")
    got = {}

    def second():
        try:
            w.run()
            got["second"] = "returned"
        except RuntimeError as e:
            got["second"] = str(e)
    t = threading.Thread(target=second, daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive() and "already serving" in got.get("second", ""), got
    with bus.client() as c:
        assert c.request("twice", b"ok", timeout=5) == b"ok"
    w.stop()
    first.join(5)
    assert not first.is_alive()
    w.close()
