"""Client against real brokers and workers (tests/python/conftest.py)."""

import asyncio
import os
import re
import threading
import time

import pytest

import agentbus
from conftest import ROOT


def test_status_table_matches_header():
    # errors.STATUS_CODES must be AB_STATUS_LIST exactly (minus OK).
    with open(os.path.join(ROOT, "include", "agentbus.h")) as f:
        rows = re.findall(r'X\((AB_\w+), (-?\d+), "(\w+)"', f.read())
    header = [(name, int(v)) for _, v, name in rows if name != "OK"]
    assert header == list(agentbus.STATUS_CODES)
    for name, code in header:
        cls = agentbus.BY_CODE[code]
        assert cls.__name__ == agentbus.errors.class_name(name)
        assert getattr(agentbus, cls.__name__) is cls
        assert agentbus._lib.lib.ab_status_name(code).decode() == name


def test_library_version():
    assert agentbus.library_version() == "0.1.0"


def test_request_reply(bus):
    bus.echo_worker()
    bus.wait_workers("echo")
    with bus.client() as c:
        assert c.request("echo", b"hello") == b"hello"
        assert c.request("echo", "text is UTF-8 \u00e9") == "text is UTF-8 \u00e9".encode()
        big = os.urandom(1 << 20)
        assert c.request("echo", big, timeout=10) == big
        # options force the asynchronous path: same answer
        assert c.request("echo", b"opts", timeout=5, priority=7, cache_ttl=30) == b"opts"
        assert c.request("echo", b"x", cache=False, idempotent=False) == b"x"
        # lanes by name (docs/lanes.md); a bad name is the caller's error
        assert c.request("echo", b"i", priority="interactive") == b"i"
        assert c.request("echo", b"b", priority="batch") == b"b"
        with pytest.raises(ValueError):
            c.request("echo", b"?", priority="urgent")
        assert c.pending == 0


def test_stream_chunks(bus):
    bus.echo_worker("echo", "--chunks", "4")
    bus.wait_workers("echo")
    with bus.client() as c:
        chunks = list(c.stream("echo", b"abcdefgh", timeout=5))
        assert len(chunks) == 4 and b"".join(chunks) == b"abcdefgh"
        assert c.request("echo", b"abcdefgh") == b"abcdefgh"  # concatenated


def test_no_service(bus):
    with bus.client() as c:
        with pytest.raises(agentbus.NoServiceError) as e:
            c.request("nobody-here", b"x", timeout=2)
        assert e.value.code == -4 and e.value.name == "NO_SERVICE"
        assert "nobody-here" in e.value.text  # the broker's text
        with pytest.raises(agentbus.NoServiceError):
            list(c.stream("nobody-here", b"x", timeout=2))
        # With a subscription the text was "no message in time": the drain
        # of topic messages after the call overwrote the handle's error.
        c.subscribe("news")
        with pytest.raises(agentbus.NoServiceError) as e:
            c.request("nobody-here", b"x", timeout=2)
        assert "nobody-here" in e.value.text, e.value.text


def _hwm_kib(pid: int) -> int:
    with open("/proc/%d/status" % pid) as f:
        return next(int(x.split()[1]) for x in f if x.startswith("VmHWM:"))


def test_request_of_many_empty_messages(bus):
    # A typed request (a model named) is decoded by the broker for its cache
    # key. One of 10 Mi empty chat messages (20 MB) took a protobuf-c
    # record each: +1.3 GB in the broker, on its one thread. Now it is
    # decoded within 4x its size and keyed as bytes (or not at all).
    n = 10 << 20
    inner = b"\x12\x00" * n  # ChatRequest.messages, each empty
    size = len(inner)
    length = b""
    while True:
        length += bytes([(size & 0x7F) | (0x80 if size >> 7 else 0)])
        size >>= 7
        if not size:
            break
    payload = b"\x12" + length + inner  # InferenceRequest.chat
    bus.echo_worker("many")
    bus.wait_workers("many")
    before = _hwm_kib(bus.pid)
    with bus.client() as c:
        assert c.request("many", payload, model="m", timeout=60) == payload  # echoed
    grown = _hwm_kib(bus.pid) - before
    print("broker peak RSS grew %d KiB for a %d KiB request" % (grown, len(payload) >> 10))
    if "libasan" not in os.environ.get("LD_PRELOAD", ""):
        assert grown < 6 * len(payload) >> 10, "%d KiB" % grown


def test_deadline(bus):
    # The reply would take 60 s: only the request's deadline can end it
    # (no wall-clock bound here; a busy host may be slow to say DEADLINE).
    bus.echo_worker("slow", "--capacity", "1", "--delay-ms", "60000")
    bus.wait_workers("slow")
    with bus.client() as c:
        with pytest.raises(agentbus.DeadlineError) as e:
            c.request("slow", b"x", timeout=0.2)
        assert isinstance(e.value, TimeoutError)  # also a built-in TimeoutError


def test_busy(procs):
    from conftest import Bus
    bus = Bus(procs).start("--queue-max", "1")
    bus.echo_worker("held", "--capacity", "1", "--delay-ms", "600000")
    bus.wait_workers("held")
    with bus.client() as c:
        held = [c.stream("held", b"x", timeout=600) for _ in range(2)]  # 1 held + 1 queued
        c.poll(0.3)
        with pytest.raises(agentbus.BusyError) as e:
            c.request("held", b"one too many", timeout=5)
        assert e.value.code == -5 and e.value.text
        for s in held:
            s.close()
        assert c.pending == 0


def test_cancelled_requests_leave_the_client_quota(procs):
    # A worker that never answers a CANCEL (its handler holds the job
    # whatever comes) kept the slot, and so the request: it still counted
    # against the client's max-client-inflight, which then refused the
    # client BUSY for requests it had given up, and the client's record
    # stayed after it left. Now a cancelled request leaves the client's
    # count and record at once, as one past its deadline does.
    from conftest import Bus, Running
    # cancel-grace-ms 0: the held worker answers nothing, and on a slow
    # machine it could be judged hung and its orphans taken back before
    # the last check (test_worker.py, test_a_worker_that_never_answers_a_cancel)
    bus = Bus(procs).start("--max-client-inflight", "2", "--cancel-grace-ms", "0")
    release, started = threading.Event(), threading.Semaphore(0)

    def hold(job):
        started.release()
        release.wait(60)  # never looks at job.cancelled
        return job.data

    r = Running(bus, "held", hold, capacity=4)
    bus.echo_worker("echo")
    bus.wait_workers("echo")
    try:
        with bus.client(name="watcher") as w:
            with bus.client(name="giver-up") as c:
                held = [c.stream("held", b"x", timeout=600) for _ in range(2)]
                # Both in the handler before the CANCELs: a job still in
                # the worker's ready queue is answered CANCELLED by the
                # library, and its orphan goes (as it did here under load).
                for _ in held:
                    assert started.acquire(timeout=30)
                assert w.control("stats")["pending"] == 2  # both at the worker
                for s in held:
                    s.close()  # CANCEL: the worker keeps both slots
                assert c.request("echo", b"still mine", timeout=10) == b"still mine"
                assert c.request("echo", b"and again", timeout=10) == b"and again"
            deadline = time.monotonic() + 30
            while w.control("stats")["clients"] > 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            st = w.control("stats")
            assert st["clients"] == 0, st["clients"]  # records of clients with requests
            assert st["pending"] == 2  # the worker still holds the two orphans
    finally:
        release.set()
        r.stop()


def test_departed_clients_leave_nothing(procs):
    # 600 clients come and go, each doing a little of everything: named or
    # not, a request, a subscription, a publication, a direct message, a
    # stream left in flight at a worker that never answers it. Once they
    # are gone the broker holds nothing of theirs but the orphans the worker
    # still holds (at most its capacity): no client record, name, flow,
    # subscription, topic or mailbox.
    from conftest import Bus
    bus = Bus(procs).start()
    bus.echo_worker("held", "--capacity", "4", "--delay-ms", "600000")
    bus.echo_worker("echo")
    bus.wait_workers("held")
    bus.wait_workers("echo")
    with bus.client(name="watcher") as w:
        for n in range(600):
            with bus.client(name=("gone-%d" % n) if n % 2 else None) as c:
                assert c.request("echo", b"x" * (n * 37 % 5000), timeout=10) is not None
                if n % 3 == 0:
                    c.subscribe("t.%d." % (n % 40))
                if n % 5 == 0:
                    c.publish("t.%d.x" % (n % 40), b"hello")
                if n % 7 == 0:
                    c.send("watcher", b"hi")
                if n % 4 == 0:
                    c.stream("held", b"y", timeout=600)
                    c.poll(0.01)
            while w.poll(0):
                pass
        keys = ("clients", "named_agents", "offline_names", "subscribers", "topics",
                "mailbox_msgs", "mailbox_bytes", "held_bytes")
        want = {"clients": 0, "named_agents": 1, "offline_names": 0, "subscribers": 0,
                "topics": 0, "mailbox_msgs": 0, "mailbox_bytes": 0, "held_bytes": 0}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            while w.poll(0):
                pass
            st = w.control("stats")
            if {k: st[k] for k in keys} == want:
                break
            time.sleep(0.1)
        assert {k: st[k] for k in keys} == want
        assert st["pending"] <= 4  # orphans at the held worker, each taking a slot


def test_stream_close_cancels(bus):
    bus.echo_worker("slow", "--capacity", "1", "--delay-ms", "600000")
    bus.wait_workers("slow")
    with bus.client() as c:
        with c.stream("slow", b"x", timeout=600) as s:
            assert c.pending == 1
        assert c.pending == 0
        with pytest.raises(agentbus.CancelledError):
            next(s)
        # the worker's slot came back: the broker re-dispatches nothing to it
        d = c.discover("slow")
        assert d["services"][0]["queue_depth"] == 0


def test_discover_labels(bus):
    bus.echo_worker("echo", "--label", "gpu=0", "--name", "w1")
    bus.wait_workers("echo")
    with bus.client() as c:
        d = c.discover("echo")
        assert d["services"][0]["name"] == "echo"
        (w,) = d["workers"]
        assert w["name"] == "w1" and w["labels"] == {"gpu": "0"} and w["capacity"] == 16
        assert c.discover("none")["workers"] == []


def test_pubsub_iterator_and_callback(bus):
    with bus.client() as sub, bus.client() as pub:
        s = sub.subscribe("alerts.")
        got = []
        sub.subscribe("news.today", got.append)
        pub.publish("alerts.gpu.temp", b"hot")
        pub.publish("alerts", b"not matched by 'alerts.'")
        pub.publish("news.today", "paper")
        m = s.get(timeout=5)
        assert (m.type, m.topic, m.data) == ("topic", "alerts.gpu.temp", b"hot")
        sub.run(0.5)
        assert [g.data for g in got] == [b"paper"]
        with pytest.raises(agentbus.TimeoutError):
            s.get(timeout=0.3)  # "alerts" did not match
        s.close()
        pub.publish("alerts.x", b"after unsubscribe")
        sub.run(0.3)
        assert not s._queue
        with pytest.raises(agentbus.BadNameError):
            sub.subscribe("bad topic!")


def _arrived(c, n, queue):
    """Polls C until QUEUE holds or dropped N messages (10 s): one message
    at a time, so that the broker never has a backlog for C to drop."""
    end = time.monotonic() + 10
    while len(queue._q) + queue._gap < n and time.monotonic() < end:
        c.poll(0.01)
    assert len(queue._q) + queue._gap == n, (len(queue._q), queue._gap)


def _take(get, n):
    """The N messages of a queue whose oldest were dropped: a gap first,
    then the newest, in order. Returns how many the gap said."""
    gap = get()
    assert gap.type == "gap" and 0 < gap.dropped < n, gap
    kept = [int(get().data[-8:]) for _ in range(n - gap.dropped)]
    assert kept == list(range(gap.dropped, n))
    return gap


def test_queues_are_bounded_in_bytes(bus):
    """A client that does not take its messages holds at most 64 MiB of them
    (its direct messages and its subscriptions' together), as the C
    library's receive queue: the oldest go, and a "gap" message says how
    many. Before 2026-12-06 the Python queues had no bound."""
    one, n = b"m" * 999992, 80  # 80 messages of a million bytes
    with bus.client(name="sink") as sink, bus.client() as src:
        s = sink.subscribe("big.")
        for i in range(n):
            src.send("sink", one + b"%08d" % i, wait=True)
            _arrived(sink, i + 1, sink._direct)
        assert sink._held.bytes <= agentbus._common.QUEUE_MAX_BYTES
        _take(lambda: sink.recv(timeout=5), n)
        assert sink._held.count == 0 and sink._held.bytes == 0
        for i in range(n):
            src.publish("big.x", one + b"%08d" % i)
            _arrived(sink, i + 1, s._queue)
        assert sink._held.bytes <= agentbus._common.QUEUE_MAX_BYTES
        assert _take(lambda: s.get(timeout=5), n).target == "big."
        s.close()
        assert sink._held.count == 0


def test_queues_drop_the_oldest_of_all(bus):
    """The newest message is kept when the client's other queues hold the
    whole budget: the oldest message of them all goes (as in the C
    library's one receive queue), and its queue reports the gap. Before, a
    direct message behind an unread subscription was dropped itself, and
    recv() returned a gap instead of it."""
    one, n = b"m" * 999992, 80
    with bus.client(name="sink2") as sink, bus.client() as src:
        s = sink.subscribe("big.")
        for i in range(n):
            src.publish("big.x", one + b"%08d" % i)
            _arrived(sink, i + 1, s._queue)
        src.send("sink2", one + b"%08d" % n, wait=True)
        _arrived(sink, 1, sink._direct)
        assert sink._held.bytes <= agentbus._common.QUEUE_MAX_BYTES
        m = sink.recv(timeout=5)
        assert (m.type, m.data[-8:]) == ("direct", b"%08d" % n), (m.type, m.dropped)
        gap = _take(lambda: s.get(timeout=5), n)
        assert gap.target == "big."
        assert sink._held.count == 0 and sink._held.bytes == 0


def test_queues_drop_in_arrival_order(monkeypatch):
    """MessageQueue alone: room is made from the oldest message of all the
    client's queues, each queue counting its own gap, whatever was taken
    from the others meanwhile."""
    common = agentbus._common
    monkeypatch.setattr(common, "QUEUE_MAX_MESSAGES", 4)
    held = common.Held()
    a, b, c = (common.MessageQueue(held, t) for t in "abc")

    def msg(i):
        return agentbus.Message(type="topic", data=b"%d" % i)

    for i, q in enumerate((a, b, a, c)):  # a0 b1 a2 c3
        q.append(msg(i))
    assert b.popleft().data == b"1"       # taken: no longer held
    c.append(msg(4))                      # a0 a2 c3 c4: full
    c.append(msg(5))                      # a0 goes
    b.append(msg(6))                      # a2 goes
    c.append(msg(7))                      # c3 goes
    assert held.count == 4 and len(held.order) == 4
    assert [(m.type, m.dropped) for m in (a.popleft(),)] == [("gap", 2)] and not a
    assert [b.popleft().data] == [b"6"]
    got = [c.popleft() for _ in range(4)]
    assert [(m.type, m.dropped, m.target) for m in got[:1]] == [("gap", 1, "c")]
    assert [m.data for m in got[1:]] == [b"4", b"5", b"7"]
    assert held.count == 0 and not held.order and held.bytes == 0


def test_mailbox_and_direct(bus):
    with bus.client(name="alice") as alice:
        assert alice.send("bob", b"one", wait=True) is True  # bob offline: mailbox
        alice.send("bob", b"two")
        time.sleep(0.2)
        with bus.client(name="bob") as bob:
            got = [m.data for m in bob.listen(timeout=2)]
            assert got == [b"one", b"two"]
            alice.send("bob", b"question", wait=True)
            m = bob.recv(timeout=5)
            assert m.sender == "alice" and m.type == "direct"
            bob.reply(m, b"answer")
            r = alice.recv(timeout=5)
            assert (r.data, r.reply_to, r.sender) == (b"answer", m.id, "bob")
        with pytest.raises(agentbus.TimeoutError):
            alice.recv(timeout=0.2)


def test_name_taken(bus):
    with bus.client(name="solo") as a:
        # The broker handles a peer's messages in order: once a's CONTROL is
        # answered, its HELLO (sent first) holds the name. Without this, b's
        # HELLO can win on a loaded machine and a gets NAME_TAKEN instead.
        a.control("agents", timeout=10)
        with bus.client(name="solo") as b:
            m = b.recv(timeout=5)
            assert m.type == "error" and m.status == agentbus.NameTakenError.code
            a.poll(0.3)
            assert a.connected


def test_closed_client_raises(bus):
    c = bus.client()
    c.close()
    c.close()  # idempotent
    with pytest.raises(agentbus.StoppedError):
        c.request("echo", b"x")


def test_refused_handle_says_why(bus):
    # The library's reason (ab_client_last_error(NULL), ab_worker_last_error
    # (NULL)), not "cannot create client" / "cannot create worker".
    with pytest.raises(agentbus.ZmqError) as e:
        agentbus.Client("nonsense")
    assert "cannot connect to 'nonsense'" in e.value.text, e.value.text
    with pytest.raises(agentbus.InvalidError) as e:
        agentbus.Worker("s" * 300, lambda job: b"", endpoint=bus.endpoint)
    assert e.value.text == "service name must be 1..255 bytes", e.value.text
    with pytest.raises(agentbus.InvalidError) as e:
        agentbus.Worker("ok", lambda job: b"", endpoint=bus.endpoint, capacity=0)
    assert e.value.text == "capacity must be 1..100000", e.value.text
    # Past 32 bits ctypes wrapped it: 2**32 + 1 made a worker of capacity 1.
    for capacity in (2**32 + 1, 2**64, -2**32 + 4):
        with pytest.raises(agentbus.InvalidError) as e:
            agentbus.Worker("ok", lambda job: b"", endpoint=bus.endpoint, capacity=capacity)
        assert e.value.text == "capacity must be 1..100000", e.value.text
    w = agentbus.Worker("ok", lambda job: b"", endpoint=bus.endpoint, capacity=2)
    with pytest.raises(agentbus.InvalidError):
        w.capacity = 2**32 + 5
    assert w.capacity == 2
    # Another type than an int is a TypeError: int() cut 1.7 to 1 and read
    # "3" as 3; labels=[...] raised AttributeError from inside __init__.
    for capacity in (1.7, "3", True, None):
        with pytest.raises(TypeError, match="capacity must be an int"):
            w.capacity = capacity
        with pytest.raises(TypeError, match="capacity must be an int"):
            agentbus.Worker("ok", lambda job: b"", endpoint=bus.endpoint, capacity=capacity)
    assert w.capacity == 2
    with pytest.raises(TypeError, match="labels must be a dict"):
        agentbus.Worker("ok", lambda job: b"", endpoint=bus.endpoint, labels=[("gpu", "0")])
    w.close()


def test_uncallable_handler_or_callback_is_a_type_error(bus):  # and reply to a non-Message
    # A handler or subscription callback that is no function failed only
    # once a job or message came, inside the call delivering it (a
    # subscription's TypeError out of poll(), after the broker had it).
    with pytest.raises(TypeError, match="handler must be callable"):
        agentbus.Worker("ok", b"reply", endpoint=bus.endpoint)
    w = agentbus.Worker("ok", endpoint=bus.endpoint)
    with pytest.raises(TypeError, match="handler must be callable"):
        w.handler("not a function")
    w.close()
    with bus.client() as c:
        with pytest.raises(TypeError, match="callback must be callable"):
            c.subscribe("alerts.", callback="print")
        got = []
        c.subscribe("alerts.", callback=got.append)
        c.publish("alerts.x", b"1")
        end = time.monotonic() + 30  # until it came (not 0.5 s: a busy broker is late)
        while not got and time.monotonic() < end:
            c.poll(0.05)
        assert [m.data for m in got] == [b"1"]
        # reply() to what is no Message raised AttributeError "'_c'"
        for bad in (None, "alerts.x", got[0].sender):
            with pytest.raises(TypeError, match="agentbus.Message"):
                c.reply(bad, b"x")

    async def areply():
        async with agentbus.AsyncClient(bus.endpoint) as a:
            with pytest.raises(TypeError, match="agentbus.Message"):
                await a.reply(None, b"x")
    asyncio.run(areply())


def test_data_of_another_type_is_a_type_error(bus):
    # docs/python.md: bytes, bytearray, memoryview or str. Anything else was
    # sent as its str(): request("echo", None) answered b"None".
    bus.echo_worker()
    bus.wait_workers("echo")
    with bus.client() as c:
        for bad in (None, 5, {"a": 1}):
            with pytest.raises(TypeError):
                c.request("echo", bad, timeout=5)
            with pytest.raises(TypeError):
                c.send("someone", bad)
            with pytest.raises(TypeError):
                c.publish("news", bad)
        assert c.request("echo", memoryview(b"ok"), timeout=5) == b"ok"


def test_negative_durations_are_value_errors(bus):
    # docs/python.md: timeouts are seconds >= 0 or None. A negative one meant
    # the default in request(), "at once" in recv() and 1 s as a cache_ttl.
    bus.echo_worker()
    bus.wait_workers("echo")
    with bus.client() as c:
        for call in (lambda: c.request("echo", b"x", timeout=-1),
                     lambda: c.request("echo", b"x", timeout=float("nan")),
                     lambda: c.request("echo", b"x", cache_ttl=-5),
                     lambda: c.stream("echo", b"x", timeout=-0.5),
                     lambda: c.recv(timeout=-1),
                     lambda: c.poll(-1),
                     lambda: c.subscribe("news", timeout=-1),
                     lambda: c.discover("echo", timeout=-2)):
            with pytest.raises(ValueError) as e:
                call()
            assert ">= 0 seconds" in str(e.value), str(e.value)
        with pytest.raises(TypeError):
            c.request("echo", b"x", timeout="5")
        with pytest.raises(ValueError):
            bus.client(timeout=0)  # the default budget of every request
        for kw in ({}, {"priority": "batch"}):  # without options and with them
            with pytest.raises(ValueError) as e:  # 0 was 1 ms, and the default
                c.request("echo", b"x", timeout=0, **kw)
            assert "> 0 seconds" in str(e.value), str(e.value)
            assert c.request("echo", b"ok", timeout=5, **kw) == b"ok"
            assert c.request("echo", b"ok", timeout=None, **kw) == b"ok"

    async def aio():
        async with agentbus.AsyncClient(bus.endpoint) as a:
            with pytest.raises(ValueError):
                await a.recv(timeout=-1)
            with pytest.raises(ValueError):
                await a.request("echo", b"x", timeout=-1)
            assert await a.request("echo", b"ok", timeout=5) == b"ok"
    asyncio.run(aio())


def test_readme_example_runs_as_written(bus, tmp_path):
    import subprocess
    import sys
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    section = readme.split("## From Python", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert len(code.strip().splitlines()) == 5
    bus.echo_worker()
    bus.wait_workers("echo")
    app = tmp_path / "app.py"
    app.write_text(code)
    env = dict(os.environ, AB_BROKER=bus.endpoint, PYTHONPATH=os.path.join(ROOT, "python"))
    out = subprocess.run([sys.executable, str(app)], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "hello\n['echo']\n"


def test_control_stats(bus):
    bus.echo_worker()
    bus.wait_workers("echo")
    with bus.client(name="ops") as c:
        c.request("echo", b"x")
        st = c.control("stats")
        assert any(s["name"] == "echo" for s in st["services"])
        names = [w["service"] for w in c.control("workers")["workers"]]
        assert names == ["echo"]
        assert "ops" in [a["name"] for a in c.control("agents")["agents"]]
        with pytest.raises(agentbus.UnsupportedError):
            c.control("nonsense")


def test_auth_curve(procs, tmp_path, monkeypatch):
    """A broker with --auth curve: a client proving a trusted key (key=,
    broker_key=) is served; one without a key gets DeniedError."""
    from conftest import Bus
    import subprocess
    data = tmp_path / "data"
    (data / "keys").mkdir(parents=True)
    from conftest import BIN
    ctl = os.path.join(BIN, "brokerctl")
    for args in (["broker", "--role", "peer", "--out", str(data)],
                 ["ops", "--role", "admin", "--out", str(tmp_path)],
                 ["ag", "--out", str(tmp_path)],
                 ["w", "--role", "worker", "--services", "echo", "--out", str(tmp_path)]):
        subprocess.run([ctl, "keygen"] + args, check=True, stdout=subprocess.DEVNULL)
    for name in ("ops", "ag", "w"):
        os.link(str(tmp_path / (name + ".key")), str(data / "keys" / (name + ".key")))
    broker_key = str(data / "broker.key")
    monkeypatch.setenv("AB_KEY", str(tmp_path / "ops.key_secret"))  # the fixture's own probes
    monkeypatch.setenv("AB_BROKER_KEY", broker_key)
    bus = Bus(procs).start("--auth", "curve", "--data-dir", str(data))
    bus.echo_worker("echo", "--key", str(tmp_path / "w.key_secret"), "--broker-key", broker_key)
    bus.wait_workers("echo")
    monkeypatch.delenv("AB_KEY")
    monkeypatch.delenv("AB_BROKER_KEY")
    with agentbus.Client(bus.endpoint, key=str(tmp_path / "ag.key_secret"),
                         broker_key=broker_key) as c:
        assert c.request("echo", b"hi", timeout=5) == b"hi"
        assert not c.refused
    with agentbus.Client(bus.endpoint) as c:
        with pytest.raises(agentbus.DeniedError):
            c.request("echo", b"hi", timeout=5)
        assert c.refused

    # A worker without a key: refused, and it says why (Worker.refused),
    # while it goes on trying; None for a registered one.
    import threading
    w = agentbus.Worker("echo2", lambda job: job.data, endpoint=bus.endpoint)
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 10
        while w.refused is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert isinstance(w.refused, agentbus.DeniedError)
        assert not w.connected
    finally:
        w.stop()
        t.join(10)
    assert not t.is_alive()
    why = w.refused
    assert isinstance(why, agentbus.DeniedError) and "requires CURVE" in str(why), str(why)
    w.close()


def _in_child(fn) -> str:
    """Runs FN in a fork()ed child; returns what it returned (or the error
    it raised) as text. The child is waited for by PID, killed if stuck."""
    import signal
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            out = fn()
        except BaseException as e:  # noqa: B902 (reported to the parent)
            out = "%s: %s" % (type(e).__name__, e)
        os.write(w, str(out).encode()[:4000])
        os._exit(0)
    os.close(w)
    chunks = []
    with os.fdopen(r, "rb") as f:
        chunks.append(f.read())  # EOF when the child exits
    for _ in range(600):
        if os.waitpid(pid, os.WNOHANG)[0]:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise AssertionError("the child did not exit")
    return b"".join(chunks).decode()


def test_fork_child_makes_its_own_client(bus):
    # A child of fork() inherited the parent's ZeroMQ context without its
    # I/O threads: a Client made in the child never connected (TIMEOUT), as
    # in a multiprocessing pool started after the parent made a Client.
    bus.echo_worker()
    bus.wait_workers("echo")
    with bus.client() as parent:
        assert parent.request("echo", b"before", timeout=10) == b"before"

        def child():
            with bus.client() as c:
                return c.request("echo", b"from the child", timeout=10)
        assert _in_child(child) == repr(b"from the child")
        assert parent.request("echo", b"after", timeout=10) == b"after"


def test_nul_in_a_name_is_a_value_error(bus):
    # ctypes passes a str with a NUL and the C library reads up to it: the
    # request for "echo\0other" was answered by "echo", a publish on
    # "news\0x" reached the subscribers of "news", Client(name="al\0ice")
    # became the agent "al". Each is now a ValueError, sent nowhere.
    bus.echo_worker()
    bus.wait_workers("echo")
    with bus.client() as c, bus.client() as sub:
        s = sub.subscribe("news")
        for call in (lambda: c.request("echo\0other", b"x", timeout=5),
                     lambda: c.request("echo\0other", b"x", timeout=5, priority=1),
                     lambda: c.request("echo", b"x", timeout=5, model="m\0x"),
                     lambda: c.stream("echo\0other", b"x", timeout=5),
                     lambda: c.publish("news\0x", b"x"),
                     lambda: c.send("bob\0x", b"x"),
                     lambda: c.subscribe("news\0.x"),
                     lambda: c.discover("echo\0x"),
                     lambda: bus.client(name="al\0ice"),
                     lambda: agentbus.Worker("echo\0x", lambda job: b"", endpoint=bus.endpoint),
                     lambda: agentbus.Worker("w", lambda job: b"", endpoint=bus.endpoint,
                                             labels={"gpu": "0\0x"})):
            with pytest.raises(ValueError) as e:
                call()
            assert "NUL" in str(e.value), str(e.value)
        with pytest.raises(agentbus.TimeoutError):
            s.get(timeout=0.3)  # nothing reached "news"
        assert c.request("echo", "payloads may hold \0", timeout=5) == b"payloads may hold \0"
        assert c.pending == 0


def test_name_of_another_type_is_a_type_error(bus):
    # Names went as their str(): send(None, ...) filled the mailbox of an
    # agent called "None", publish(5, ...) went out on the topic "5".
    bus.echo_worker()
    bus.wait_workers("echo")
    with bus.client() as c, bus.client(name="None") as none:
        for call in (lambda: c.send(None, b"x"),
                     lambda: c.send(None, b"x", wait=True, timeout=5),
                     lambda: c.publish(5, b"x"),
                     lambda: c.request(None, b"x", timeout=5),
                     lambda: c.request(["echo"], b"x", timeout=5, priority=1),
                     lambda: c.subscribe(None),
                     lambda: agentbus.Worker(None, lambda job: b"", endpoint=bus.endpoint)):
            with pytest.raises(TypeError):
                call()
        with pytest.raises(agentbus.TimeoutError):
            none.recv(timeout=0.3)  # nothing came to the agent "None"
        assert c.request(b"echo", b"bytes name", timeout=5) == b"bytes name"
    w = agentbus.Worker("labelled", lambda job: b"", endpoint=bus.endpoint,
                        labels={"gpu": 0})  # label values are free text
    w.close()


def test_fork_child_cannot_use_the_parents_client(bus):
    # The child's copy of a Client is its parent's socket: a request failed
    # with ZMQ "send failed: Interrupted system call" (libzmq's fork guard),
    # or waited out its timeout. Now a clear StoppedError; closing the copy
    # (or its collection) in the child leaves the parent's connection alone.
    bus.echo_worker()
    bus.wait_workers("echo")
    with bus.client() as parent:
        assert parent.request("echo", b"before", timeout=10) == b"before"

        def child():
            out = []
            for call in (lambda: parent.request("echo", b"x", timeout=5),
                         lambda: parent.request("echo", b"x", timeout=5, priority=1),
                         lambda: parent.send("someone", b"x")):
                try:
                    call()
                    out.append("no error")
                except agentbus.StoppedError as e:
                    out.append("fork()" in e.text)
            # what a closed client answers (they raised with the thread check)
            out.append((parent.connected, parent.pending, parent.last_error()))
            parent.close()
            return out
        assert _in_child(child) == "[True, True, True, (False, 0, '')]"
        assert parent.request("echo", b"after", timeout=10) == b"after"


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def test_raising_callback_ends_the_request_it_interrupted(bus):
    # A subscription callback's exception comes out of the call that ran it.
    # From request()'s wait it left the reply unfreed (1 MiB leaked per
    # request here), and with options the request ran on at the broker,
    # its answer unread. Now the reply is freed and the request cancelled.
    bus.echo_worker()
    bus.echo_worker("slow", "--delay-ms", "600000")
    bus.wait_workers("echo")
    bus.wait_workers("slow")
    big = b"x" * (1 << 20)
    with bus.client() as c, bus.client() as pub, bus.client() as probe:
        def bad(m):
            raise RuntimeError("callback failed")
        c.subscribe("news", callback=bad)
        seen = probe.subscribe("news")

        def news() -> None:  # on its way to c before c's next request
            pub.publish("news", b"x")
            seen.get(timeout=30)
        news()
        with pytest.raises(RuntimeError):
            c.request("echo", big, timeout=30)  # the library's sync request
        before = _rss_kib()
        for _ in range(100):
            news()
            with pytest.raises(RuntimeError):
                c.request("echo", big, timeout=30)
        grown = _rss_kib() - before
        if "libasan" not in os.environ.get("LD_PRELOAD", ""):  # its quarantine holds 256 MiB
            assert grown < 50 * 1024, "%d KiB more after 100 replies of 1 MiB" % grown
        news()
        with pytest.raises(RuntimeError):
            c.request("slow", b"x", timeout=600, priority=1)  # with options
        assert c.pending == 0


def test_huge_and_infinite_numbers(bus):
    # docs/python.md: timeouts are seconds >= 0. float("inf") (or 1e300 in
    # recv) raised OverflowError converting to milliseconds, as did an inf
    # cache_ttl; heartbeat_ms past 32 bits was wrapped by ctypes
    # (2**32 + 1000 ran at 1000 ms).
    bus.echo_worker()
    bus.wait_workers("echo")
    inf = float("inf")
    with bus.client(name="me", timeout=inf) as c:
        assert c.request("echo", b"a") == b"a"
        assert c.request("echo", b"b", timeout=inf) == b"b"
        assert c.request("echo", b"c", timeout=inf, priority=1) == b"c"
        assert c.request("echo", b"d", cache_ttl=inf) == b"d"
        assert b"".join(c.stream("echo", b"e", timeout=inf)) == b"e"
        c.send("me", b"to myself", wait=True, timeout=inf)
        assert c.recv(timeout=inf).data == b"to myself"
        c.send("me", b"again", wait=True)
        assert c.recv(timeout=1e300).data == b"again"
    with pytest.raises(agentbus.InvalidError):
        bus.client(heartbeat_ms=2**32 + 1000)


def test_dropped_client_and_worker_close_at_once(bus):
    # Each kept its ctypes callback as a bound method of itself: a cycle, so
    # a Client or Worker dropped without close() kept its handle and its
    # connection (its name, its registration) until the cycle collector ran.
    import gc
    import weakref
    bus.echo_worker("slow", "--delay-ms", "600000")
    bus.wait_workers("slow")
    gc.disable()
    try:
        c = bus.client(name="dropped")
        s = c.stream("slow", b"x", timeout=600)  # in flight when dropped
        c.poll(0.1)
        gone = weakref.ref(c)
        del c, s
        assert gone() is None
        w = agentbus.Worker("dropped", lambda job: b"", endpoint=bus.endpoint)
        gone = weakref.ref(w)
        del w
        assert gone() is None
    finally:
        gc.enable()
    with bus.client() as c:
        for _ in range(100):  # the broker saw it go: the name is free
            if "dropped" not in [a["name"] for a in c.control("agents")["agents"]]:
                break
            time.sleep(0.05)
        assert "dropped" not in [a["name"] for a in c.control("agents")["agents"]]
        assert c.discover("slow")["services"][0]["queue_depth"] == 0


def test_subscribe_timeout_none_waits_the_default():
    # docs/python.md: None is the client's default. subscribe() passed it to
    # the C call as 0, "do not wait": no confirmation, and a publish made
    # right after could miss the subscriber. Against a port nobody answers
    # the wait shows as TimeoutError once the client's default passes.
    from ports import free_port
    endpoint = "tcp://127.0.0.1:%d" % free_port()
    with agentbus.Client(endpoint, timeout=0.3) as c:
        with pytest.raises(agentbus.TimeoutError):
            c.subscribe("news", timeout=None)
        assert c.subscribe("other", timeout=0)  # 0 does not wait

    async def aio():
        async with agentbus.AsyncClient(endpoint, timeout=0.3) as a:
            with pytest.raises(agentbus.TimeoutError):
                await a.subscribe("news", timeout=None)
    asyncio.run(aio())


def test_fork_child_leaves_the_parents_worker_alone(bus):
    # A child's copy of a running Worker: a setter handed its call to the
    # parent's loop (not running in the child) and waited 60 s for it, and
    # close() waited 30 s for that loop's serve() to return.
    import threading
    w = agentbus.Worker("forked", lambda job: job.data, endpoint=bus.endpoint)
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    try:
        bus.wait_workers("forked")

        def child():
            out = []
            for call in (lambda: setattr(w, "capacity", 2), lambda: w.set_backend_state("x")):
                try:
                    call()
                    out.append("no error")
                except agentbus.StoppedError as e:
                    out.append("fork()" in e.text)
            w.close()
            return out + [w._close_when_served]
        assert _in_child(child) == "[True, True, False]"
        with bus.client() as c:
            assert c.request("forked", b"still served", timeout=10) == b"still served"
    finally:
        w.stop()
        t.join(30)
        w.close()
    assert not t.is_alive()


def test_bytes_pattern_matches_as_its_text(bus):
    # subscribe(b"news.", cb) subscribed at the broker, but the first topic
    # message raised TypeError ("endswith first arg must be bytes") from the
    # call that delivered it, and close() left the broker subscription.
    with bus.client() as sub, bus.client() as pub:
        got = []
        cb = sub.subscribe(b"news.", got.append)
        it = sub.subscribe(bytearray(b"alerts.gpu"))
        assert cb.pattern == "news." and it.pattern == "alerts.gpu"
        pub.publish("news.today", b"paper")
        pub.publish(b"alerts.gpu", b"hot")
        assert it.get(timeout=5).data == b"hot"
        sub.run(0.3)
        assert [g.data for g in got] == [b"paper"]
        cb.close()
        pub.publish("news.today", b"after close")
        sub.run(0.3)
        assert [g.data for g in got] == [b"paper"]


async def _bytes_pattern_async(endpoint):
    async with agentbus.AsyncClient(endpoint) as sub, agentbus.AsyncClient(endpoint) as pub:
        s = await sub.subscribe(b"jobs.")
        await pub.publish("jobs.1", b"one")
        return (await s.get(timeout=5)).data


def test_bytes_pattern_async(bus):
    assert asyncio.run(_bytes_pattern_async(bus.endpoint)) == b"one"


def test_priority_must_be_a_whole_number_or_a_lane(bus):
    # priority=1.7 went to the broker as 1 (int() truncated), True as 1, "3"
    # raised "unknown priority": only a lane name or an int 0..255 is one.
    bus.echo_worker()
    bus.wait_workers("echo")
    with bus.client() as c:
        for bad in (1.7, 2.0, True, b"batch", [1]):
            with pytest.raises(TypeError):
                c.request("echo", b"x", priority=bad, timeout=5)
        for bad in (-1, 256, "urgent"):
            with pytest.raises(ValueError):
                c.request("echo", b"x", priority=bad, timeout=5)
        assert c.pending == 0
        for good in (0, 255, "batch", "Interactive"):
            assert c.request("echo", b"ok", priority=good, timeout=5) == b"ok"
        # cache="off" went as the default (neither True nor False) and
        # idempotent="no" as idempotent (a non-empty str is true).
        for kw in ({"cache": "off"}, {"cache": 0}, {"idempotent": "no"}, {"idempotent": None}):
            with pytest.raises(TypeError, match=next(iter(kw))):
                c.request("echo", b"x", timeout=5, **kw)
            with pytest.raises(TypeError, match=next(iter(kw))):
                c.stream("echo", b"x", timeout=5, **kw)
        assert c.request("echo", b"ok", cache=False, idempotent=False, timeout=5) == b"ok"
    with pytest.raises(ValueError, match="kind must be"):
        agentbus.inference_reply("generat", response="x")


def test_stopped_wait_says_stopped(bus):
    # stop() sets a flag (any thread, a signal handler), which cannot write
    # the handle's text: the wait that saw it raised StoppedError with the
    # text of the call before it, "no message in time" (recv waits a second
    # at a time, each a TIMEOUT inside).
    c = bus.client()
    try:
        threading.Timer(1.3, c.stop).start()
        t0 = time.monotonic()
        with pytest.raises(agentbus.StoppedError) as e:
            c.recv(timeout=10)
        assert time.monotonic() - t0 < 5
        assert "stopped" in e.value.text and "no message" not in e.value.text, e.value.text
        with pytest.raises(agentbus.StoppedError) as e:
            c.request("echo", b"x", timeout=1)
        assert "stopped" in e.value.text, e.value.text
    finally:
        c.close()


def test_agentbus_lib_that_does_not_load_is_an_import_error(tmp_path):
    # A wrong $AGENTBUS_LIB (a typo, a build not made yet) fell through to
    # the checkout's build/ or the system's library without a word.
    import subprocess
    import sys
    bad = tmp_path / "libagentbus.so"
    bad.write_bytes(b"not a library")
    for path in (str(tmp_path / "missing.so"), str(bad)):
        env = dict(os.environ, AGENTBUS_LIB=path, PYTHONPATH=os.path.join(ROOT, "python"))
        r = subprocess.run([sys.executable, "-c", "import agentbus; print(agentbus.LIB_PATH)"],
                           env=env, capture_output=True, text=True, timeout=30)
        assert r.returncode != 0 and "cannot load $AGENTBUS_LIB" in r.stderr, (r.stdout, r.stderr)
