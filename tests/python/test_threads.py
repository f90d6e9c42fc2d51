"""A client used from several threads: the C contract is one thread at a
time per handle (close, stop and collection from other threads included),
against real brokers and workers (tests/python/conftest.py)."""

import time

import pytest

import agentbus


class _HandleUse:
    """Wraps every ab_client_* function of the loaded library (ab_client_stop,
    safe from any thread, excepted) to record a call entering a handle while
    another thread is inside it: the C contract's one thread at a time."""

    def __init__(self, monkeypatch) -> None:
        import threading
        self.lock = threading.Lock()
        self.inside = {}  # handle -> {thread ident: depth}
        self.overlaps = []
        self.threads = {}  # function name -> names of the threads that called it
        self.calling = {}  # thread ident -> the function it is inside now
        lib = agentbus._lib.lib
        for name in _CLIENT_FUNCS:
            monkeypatch.setattr(lib, name, self._wrap(name, getattr(lib, name)))

    @staticmethod
    def _key(arg):
        obj = getattr(arg, "_obj", arg)  # byref(c_void_p) for destroy
        return getattr(obj, "value", obj)

    def _wrap(self, name, fn):
        import threading

        def call(*args):
            me = threading.get_ident()
            h = self._key(args[0]) if args else None
            with self.lock:
                self.threads.setdefault(name, set()).add(threading.current_thread().name)
                users = self.inside.setdefault(h, {})
                others = [t for t in users if t != me]
                if h and others:
                    self.overlaps.append((name, me, others))
                users[me] = users.get(me, 0) + 1
                outer = self.calling.get(me)
                self.calling[me] = name
            try:
                return fn(*args)
            finally:
                with self.lock:
                    users[me] -= 1
                    if not users[me]:
                        del users[me]
                    if outer:
                        self.calling[me] = outer
                    else:
                        del self.calling[me]
        return call

    def wait_inside(self, t, names=("ab_client_poll", "ab_client_recv", "ab_client_request")):
        """Waits until thread T is inside one of the library's waits
        (NAMES): a state, where a fixed sleep found a thread the machine
        was slow to run not there yet."""
        end = time.monotonic() + 30
        while True:
            with self.lock:
                if self.calling.get(t.ident) in names:
                    return
            assert t.is_alive() and time.monotonic() < end, "the thread never waited inside"
            time.sleep(0.005)


_CLIENT_FUNCS = (
    "ab_client_destroy", "ab_client_last_error", "ab_client_connected", "ab_client_refused",
    "ab_client_poll", "ab_client_flush", "ab_client_pending", "ab_client_request",
    "ab_client_request_start", "ab_client_cancel", "ab_client_recv", "ab_client_send",
    "ab_client_send_wait", "ab_client_reply", "ab_client_subscribe", "ab_client_unsubscribe",
    "ab_client_publish", "ab_discover", "ab_client_control")


def _blocked_in(c, call, use):
    """Runs CALL(c) on a thread and waits until it is inside the library's
    wait (USE, a _HandleUse, sees it); returns (thread, box) where box[0] is
    what it raised (or returned) once it ends."""
    import threading
    box = []

    def run():
        try:
            box.append(call(c))
        except BaseException as e:  # noqa: B902 (the test looks at it)
            box.append(e)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    use.wait_inside(t)
    assert t.is_alive() and not box, box
    return t, box


def _poll_forever(c):
    while True:
        c.poll(None)


def test_close_from_another_thread_interrupts_the_blocking_call(bus, monkeypatch):
    # close() from another thread while request(), recv(), a stream, get()
    # or run() waited in a thread freed the handle under that wait:
    # ab_client_destroy overlapped ab_client_poll/recv/request (ASan:
    # heap-use-after-free; plain build: a crash, or a hang). Now close()
    # stops the handle, waits for the call to leave the library (it raises
    # StoppedError), then frees it.
    bus.echo_worker("slow", "--delay-ms", "600000")
    bus.wait_workers("slow")
    use = _HandleUse(monkeypatch)
    calls = {
        "request": lambda c: c.request("slow", b"x", timeout=60),
        "request with options": lambda c: c.request("slow", b"x", timeout=60, priority=1),
        "stream": lambda c: next(c.stream("slow", b"x", timeout=60)),
        "recv": lambda c: c.recv(),
        "subscription get": lambda c: c.subscribe("news").get(),
        "run": lambda c: c.run(),
        "poll": _poll_forever,
    }
    for what, call in calls.items():
        c = bus.client()
        t, box = _blocked_in(c, call, use)
        c.close()
        assert not t.is_alive(), "%s: close() returned while the call was inside" % what
        assert isinstance(box[0], agentbus.StoppedError), "%s: %r" % (what, box[0])
        with pytest.raises(agentbus.StoppedError):
            c.request("slow", b"x")
        c.close()  # idempotent
    assert not use.overlaps, use.overlaps[:3]


def test_calls_from_another_thread_while_one_waits_are_refused(bus, monkeypatch):
    # One thread at a time per handle: publish(), pending or last_error()
    # from a second thread while the first waits in recv() ran inside the
    # handle at the same time (a data race on its sockets and queues). Now
    # they raise RuntimeError and touch nothing; stop() still works.
    use = _HandleUse(monkeypatch)
    with bus.client() as c:
        t, box = _blocked_in(c, lambda c: c.recv(), use)
        for call in (lambda: c.publish("news", b"x"), lambda: c.pending,
                     lambda: c.last_error(), lambda: c.connected,
                     lambda: c.request("echo", b"x")):
            with pytest.raises(RuntimeError, match="another thread"):
                call()
        c.stop()
        t.join(10)
        assert isinstance(box[0], agentbus.StoppedError), box
    assert not use.overlaps, use.overlaps[:3]


def test_close_from_a_callback(bus, monkeypatch):
    # close() from a subscription callback, while run() holds the client:
    # run() raises StoppedError and the handle is freed as it leaves (the
    # path close() takes when the call inside is its own thread's).
    use = _HandleUse(monkeypatch)
    with bus.client() as c, bus.client() as pub:
        c.subscribe("news", lambda m: c.close())
        pub.publish("news", b"x")
        with pytest.raises(agentbus.StoppedError):
            c.run(10)
        assert not c._h
    assert not use.overlaps, use.overlaps[:3]
    assert "ab_client_destroy" in use.threads


def test_stream_collected_on_another_thread(bus, monkeypatch):
    # A Stream dropped (or closed) on another thread cancelled its request
    # from that thread, inside the handle while its owner waited in it.
    # Now the cancel is handed to the thread using the client: done in
    # its current wait or next call, and the worker is told all the same.
    import threading
    bus.echo_worker("slow", "--capacity", "1", "--delay-ms", "600000")
    bus.wait_workers("slow")
    use = _HandleUse(monkeypatch)
    droppers = set()
    with bus.client() as c:
        for drop in ("del", "close"):
            s = c.stream("slow", b"x", timeout=600)
            assert c.pending == 1
            holder = [s]
            del s
            t = threading.Thread(target=holder.clear if drop == "del" else holder[0].close,
                                 name="dropper-" + drop, daemon=True)
            droppers.add(t.name)
            box, dropped = [], threading.Event()

            def wait():  # in the handle until the drop is done, however late
                while not dropped.is_set():
                    c.poll(1.0)
                box.append(True)
            waiter = threading.Thread(target=wait, daemon=True)
            waiter.start()
            use.wait_inside(waiter, ("ab_client_poll",))  # a state, not 0.2 s
            t.start()
            t.join(10)
            dropped.set()
            waiter.join(10)
            assert box, "the waiter did not return"
            holder.clear()
            assert c.pending == 0, drop
            # the worker's one slot is free again: nothing waits in the queue
            assert c.discover("slow")["services"][0]["queue_depth"] == 0
    assert not use.overlaps, use.overlaps[:3]
    assert not use.threads["ab_client_cancel"] & droppers, use.threads["ab_client_cancel"]


def _stop_during_destroy(monkeypatch, handle, destroy_name, stop_name):
    """Makes DESTROY_NAME slow, calls HANDLE.close() and, on another thread
    while the destroy runs, HANDLE.stop(); returns the names of the calls
    that came during the destroy."""
    import threading
    lib = agentbus._lib.lib
    inside = threading.Event()
    during = []
    destroy, stop = getattr(lib, destroy_name), getattr(lib, stop_name)

    def slow_destroy(*args):
        inside.set()
        time.sleep(0.3)
        destroy(*args)
        inside.clear()

    def spy_stop(*args):
        if inside.is_set():
            during.append(stop_name)
        stop(*args)
    monkeypatch.setattr(lib, destroy_name, slow_destroy)
    monkeypatch.setattr(lib, stop_name, spy_stop)
    t = threading.Thread(target=lambda: (inside.wait(5), handle.stop()), daemon=True)
    t.start()
    handle.close()
    t.join(5)
    return during


def test_stop_from_another_thread_while_close_frees(bus, monkeypatch):
    # stop() looked at the handle, then called ab_*_stop on it: a close()
    # on another thread could free it in between (use after free). Now
    # stop() waits for the free and then does nothing.
    assert _stop_during_destroy(monkeypatch, bus.client(), "ab_client_destroy",
                                "ab_client_stop") == []
    w = agentbus.Worker("idle", lambda job: b"", endpoint=bus.endpoint)
    assert _stop_during_destroy(monkeypatch, w, "ab_worker_destroy", "ab_worker_stop") == []


def test_stream_closed_from_another_thread_while_iterated(bus, monkeypatch):
    # The owner waits in next(stream); another thread closes the stream: the
    # owner's next() sends the cancel within a second and raises
    # CancelledError, and no two threads were inside the handle.
    import threading
    bus.echo_worker("slow", "--capacity", "1", "--delay-ms", "600000")
    bus.wait_workers("slow")
    use = _HandleUse(monkeypatch)
    with bus.client() as c:
        s = c.stream("slow", b"x", timeout=600)
        threading.Timer(0.3, s.close).start()
        t0 = time.monotonic()
        with pytest.raises(agentbus.CancelledError):
            next(s)
        assert time.monotonic() - t0 < 5
        assert c.pending == 0
    assert not use.overlaps, use.overlaps[:3]
