"""Workers: serve a service from a Python function (ab_worker_t).

The worker's event loop is asyncio, woken by the library's file descriptor
(ab_worker_fd) and a short timer for heartbeats. Every call on the C handle
happens on that loop's thread, as the C API requires (one thread at a time
per handle): synchronous handlers run in a thread pool of ``capacity``
threads, and what they send (``job.send``, their result) is handed back to
the loop thread. Async handlers run as tasks on the loop itself.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import inspect
import numbers
import os
import threading
import time
from ctypes import byref, c_int, c_size_t, c_void_p
from typing import Any, Callable, Dict, Mapping, Optional

from . import _common as C
from . import _pb
from ._lib import CANCEL_FN, JOB_FN, b, data_bytes, lib, text, weak_method
from .errors import AgentbusError, BadRequestError, StoppedError, check, error

Handler = Callable[["Job"], Any]
_ECANCELLED = -44
_EAPPLICATION = -12
_ESTOPPED = -15
_TICK = 0.05  # s: the longest the loop sleeps without polling the handle
_IDLE_LOOP_S = 1.0  # s: a call handed to a loop not running this long fails (_wait_call)


class _LoopEnded(StoppedError):
    """A call handed to the worker's loop that ended before running it."""


class PayloadError(BadRequestError, ValueError):  # type: ignore[misc, valid-type]
    """``job.inference()`` of a payload that is not an InferenceRequest (or
    would decode to more than 4x its size): a ``ValueError``, and
    ``BAD_REQUEST`` to the client when the handler lets it go, which blames
    the request, not the worker (the broker's failure budget)."""


class Job:
    """One request a worker received.

    ``data`` (bytes), ``id``, ``service``, ``timeout_ms`` (the budget left
    when it arrived, 0 = none); ``cancelled`` turns True when the broker
    cancels it (client gave up, or its deadline passed): a synchronous
    handler should check it and return; an async handler's task is
    cancelled. ``send(part)`` streams a partial reply.

    ``begun`` says the work has begun in a way that must not be repeated
    elsewhere: True once a part was sent, or set by the handler (a
    backend's answer cut after its first bytes, a side effect done). A
    begun job's failure goes as ab_worker_fail_begun, and the broker hands
    the request to no other worker (a BACKEND or BACKEND_BUSY failure of a
    request naming a model is otherwise re-dispatched to another capable
    worker, docs/placement.md)."""

    def __init__(self, worker: "Worker", ptr: int) -> None:
        self._worker = worker
        self._p = c_void_p(ptr)
        size = c_size_t()
        data = lib.ab_job_data(self._p, byref(size))
        self.data: bytes = ctypes.string_at(data, size.value) if size.value else b""
        self.id: int = int(lib.ab_job_id(self._p))
        self.service: str = text(lib.ab_job_service(self._p))
        self.timeout_ms: int = int(lib.ab_job_timeout_ms(self._p))
        self.cancelled = False
        self.begun = False
        self._task: Optional[asyncio.Future] = None

    def text(self) -> str:
        """The payload decoded as UTF-8."""
        return self.data.decode("utf-8", "replace")

    def inference(self) -> Dict[str, Any]:
        """The payload decoded as an agentbus.InferenceRequest (what an
        "ollama" service receives): ``{"generate": {...}}``, ``{"chat":
        {...}}`` or ``{"embed": {...}}`` with Ollama's field names. Raises
        :class:`PayloadError` (a ``ValueError``) if the payload is not one."""
        try:
            return _pb.unpack("inference_request", self.data)
        except ValueError as e:
            raise PayloadError(str(e)) from None

    def send(self, part: C.Data) -> None:
        """Sends one chunk of a streamed reply (from any handler thread):
        bytes, bytearray, memoryview or str, as a reply."""
        self._worker._call_on_loop(self._part, data_bytes(part))

    def _part(self, data: bytes) -> None:
        if self._p and not self.cancelled:
            check(lib.ab_worker_reply_part(self._worker._h, self._p, data, len(data)),
                  self._worker.last_error)
            self.begun = True  # the client may have it: running it again would repeat it

    def _finish(self, data: Optional[bytes], exc: Optional[BaseException]) -> None:
        w = self._worker
        if not self._p:
            return
        if self.cancelled or isinstance(exc, (asyncio.CancelledError,)):
            lib.ab_worker_fail(w._h, byref(self._p), _ECANCELLED, b"cancelled")
        elif exc is not None:
            code = exc.code if isinstance(exc, AgentbusError) else _EAPPLICATION
            detail = exc.text if isinstance(exc, AgentbusError) else (
                "%s: %s" % (type(exc).__name__, exc))
            fail = lib.ab_worker_fail_begun if self.begun else lib.ab_worker_fail
            fail(w._h, byref(self._p), code, b(detail.replace("\0", "\\0")))
        else:
            payload = data or b""
            lib.ab_worker_reply(w._h, byref(self._p), payload, len(payload))
        w._jobs.pop(self.id, None)
        w._kick()


def _unsigned(n: Any, what: str = "capacity") -> int:
    """N for a C unsigned argument. ctypes wraps one outside 0..2**32-1
    silently (capacity=2**32 + 1 made a worker of capacity 1): such a
    value is passed as the nearest bound, which the library then refuses
    with its own text ("capacity must be 1..100000"). Another type than an
    int (a bool, 1.5, "2") is a TypeError: int() cut 1.5 to 1 and read "2"."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError("%s must be an int, not %s" % (what, type(n).__name__))
    return min(max(int(n), 0), 2**32 - 1)


def _result_bytes(r: Any) -> bytes:
    """A handler's result (or streamed item) as the reply: None is empty;
    another type than bytes, bytearray, memoryview or str is a TypeError,
    which fails the request (b() sent str(r): 5 went as b"5", a dict as
    its repr)."""
    if r is None:
        return b""
    return data_bytes(r)


class Worker:
    """Serves SERVICE with HANDLER, up to CAPACITY requests at once.

    HANDLER(job) may be a plain function or a coroutine function. It
    returns the reply (bytes or str; None = empty), or raises (an
    :class:`AgentbusError` fails the request with its code and text, any
    other exception with APPLICATION and the exception's text). A
    generator / async generator streams: every item but the last is sent
    as a partial reply, the last as the final reply.

    ``Worker("echo", handler, endpoint=..., capacity=4, labels={"gpu": "0"},
    name="w1").run()`` blocks until :meth:`stop` or :meth:`shutdown`;
    ``await worker.serve()`` runs it inside a running event loop.
    Thread safety: ``stop``, ``shutdown``, ``capacity`` (read or set),
    ``connected``, ``refused``, ``last_error`` and ``set_backend_state``
    may be called from any thread; the rest from the thread that created
    or runs the worker."""

    def __init__(self, service: str, handler: Optional[Handler] = None, *,
                 endpoint: Optional[str] = None, capacity: int = 1,
                 labels: Optional[Mapping[str, str]] = None, name: Optional[str] = None,
                 heartbeat_ms: Optional[int] = None,
                 batching: Optional[bool] = None, key: Optional[str] = None,
                 broker_key: Optional[str] = None) -> None:
        C.check_callable(handler, "handler")
        self.service = service
        self._handler = handler
        # Held while the handle is freed: stop() from another thread (or a
        # signal handler: reentrant) waits instead of using it half freed.
        self._free_lock = threading.RLock()
        self._h = c_void_p()
        self._pid = os.getpid()  # the process whose handle it is (see _handle)
        self._jobs: Dict[int, Job] = {}
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        # Calls handed to the loop and not run yet (_call_on_loop), and the
        # lock that makes handing one and the loop's end (_end_calls) exclusive.
        self._calls: Dict[concurrent.futures.Future, bool] = {}
        self._calls_lock = threading.RLock()
        self._pool: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._stopped = threading.Event()
        self._served = threading.Event()  # set while serve() is not running
        self._served.set()
        self._close_when_served = False
        self._kicked = False
        self._refused: tuple = (0, None)  # (code, error) as the loop last read it
        self._job_cb = JOB_FN(weak_method(self._on_job))
        self._cancel_cb = CANCEL_FN(weak_method(self._on_cancel))
        if labels is not None and not isinstance(labels, Mapping):
            raise TypeError("labels must be a dict, not %s" % type(labels).__name__)
        o = C.make_options(endpoint, name, None, heartbeat_ms, False, batching, key, broker_key)
        try:
            check(lib.ab_worker_new(byref(self._h), o, b(service), _unsigned(capacity)),
                  lambda: text(lib.ab_worker_last_error(None)) or "cannot create worker")
        finally:
            lib.ab_options_destroy(byref(c_void_p(o)))
        for k, v in (labels or {}).items():  # values are free text: {"gpu": 0} is "0"
            check(lib.ab_worker_set_label(self._h, b(k), b(v if isinstance(v, (str, bytes))
                                                         else str(v))), self.last_error)
        check(lib.ab_worker_set_cancel_handler(self._h, self._cancel_cb, None), self.last_error)

    # -- configuration ----------------------------------------------------
    def handler(self, fn: Handler) -> Handler:
        """Decorator form: ``@worker.handler``."""
        C.check_callable(fn, "handler")
        self._handler = fn
        return fn

    @property
    def capacity(self) -> int:
        """Concurrent requests; settable (sent to the broker at once)."""
        return int(self._read(lib.ab_worker_capacity, 0))

    @capacity.setter
    def capacity(self, n: int) -> None:
        n = _unsigned(n)
        self._on_handle_thread(lambda: check(lib.ab_worker_set_capacity(self._handle(), n),
                                             self.last_error))
        if self._pool is not None:
            self._pool._max_workers = max(self._pool._max_workers, n)

    def set_backend_state(self, state: str) -> None:
        """Free-form backend state shown by ``brokerctl workers``."""
        s = b(state)
        self._on_handle_thread(lambda: check(lib.ab_worker_set_backend_state(self._handle(), s),
                                             self.last_error))

    def _read(self, fn: Callable[[c_void_p], Any], closed: Any) -> Any:
        """FN(handle), a query, on the handle's thread (CLOSED when closed).
        From another thread while the worker ran, capacity, connected and
        last_error() read the handle beside the loop's sends."""
        if not self._h or self._pid != os.getpid():
            return closed
        if self._on_loop_thread():
            return fn(self._h)
        if self._loop is None:  # not served: close() on another thread must wait for it
            with self._free_lock:
                return fn(self._h) if self._h else closed
        try:
            return self._call_on_loop(lambda: fn(self._h))
        except _LoopEnded:  # the loop is gone: read here (or CLOSED) after all
            return self._read(fn, closed)

    def _on_handle_thread(self, fn: Callable[[], Any]) -> Any:
        """Runs FN, a call on the C handle, on the loop's thread while the
        worker runs (and waits for it), else here. A setter called from
        another thread raced the loop's own sends on the handle: "gathered
        message does not decode", "out of memory sending a batch"."""
        self._handle()  # closed, or a fork()ed child's copy: raise here, not on a loop
        if self._loop is None:  # not served: close() on another thread must wait for it
            with self._free_lock:
                self._handle()
                return fn()
        try:
            return self._call_on_loop(fn)
        except _LoopEnded:  # ended meanwhile: as if it had not been running
            return self._on_handle_thread(fn)

    @property
    def connected(self) -> bool:
        return bool(self._read(lib.ab_worker_connected, 0))

    @property
    def refused(self) -> Optional[AgentbusError]:
        """Why the broker refuses this worker, or None: a DeniedError when
        the CURVE handshake was refused (no key or an untrusted one) or the
        key may not register the service; TooLargeError or BusyError when
        its REGISTER was over the broker's limits. The library keeps
        trying; None again once the worker is registered."""
        if self._loop is not None:  # running: as its loop last read it
            return self._refused[1]
        rc = lib.ab_worker_refused(self._h) if self._h else 0
        return error(rc, self.last_error()) if rc < 0 else None

    def _read_refused(self) -> None:
        """On the loop's thread: keeps the refusal for :attr:`refused`."""
        rc = lib.ab_worker_refused(self._h)
        if rc != self._refused[0]:
            self._refused = (rc, error(rc, self.last_error()) if rc < 0 else None)

    def last_error(self) -> str:
        return text(self._read(lib.ab_worker_last_error, None))

    def _handle(self) -> c_void_p:
        if not self._h:  # the C calls said INVALID "invalid argument"
            raise error(_ESTOPPED, "worker is closed")
        if self._pid != os.getpid():  # its ZeroMQ socket lives in the parent
            raise error(_ESTOPPED, "worker was made by process %d before fork(): make a new "
                        "one in this process" % self._pid)
        return self._h

    # -- running ----------------------------------------------------------
    def run(self) -> None:
        """Serves until :meth:`stop` or a drained :meth:`shutdown`."""
        asyncio.run(self.serve())

    async def serve(self) -> None:
        """Serves inside the running event loop until stopped."""
        if self._handler is None:
            raise error(-1, "worker has no handler")
        loop = asyncio.get_running_loop()
        fd = c_int()
        check(lib.ab_worker_fd(self._handle(), byref(fd)), self.last_error)
        # A second run()/serve() (another thread, another loop) took over
        # _loop and _pool and drained the same handle from a second thread
        # beside the first, against the one-thread rule; it then outlived
        # shutdown() and close().
        with self._calls_lock:
            if not self._served.is_set():
                raise RuntimeError("agentbus: this worker is already serving (run() or serve() "
                                   "on another thread or loop): one at a time")
            self._served.clear()
        self._loop = loop
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, self.capacity), thread_name_prefix="agentbus-worker")
        loop.add_reader(fd.value, self._drain)
        try:
            while not self._stopped.is_set():
                if not self._drain():
                    break
                await asyncio.sleep(_TICK)
        finally:
            loop.remove_reader(fd.value)
            for job in list(self._jobs.values()):
                if job._task is not None:
                    job._task.cancel()
            if self._jobs:
                await asyncio.gather(*(j._task for j in self._jobs.values() if j._task),
                                     return_exceptions=True)
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._end_calls()
            self._served.set()
            if self._close_when_served:
                self.close()

    def _drain(self) -> bool:
        """Processes what the handle has; False once it is stopped."""
        self._kicked = False
        if not self._h or self._loop is None:  # a _kick's call after serve() ended
            return False
        while True:
            n = lib.ab_worker_poll(self._h, 0, self._job_cb, None)
            if n < 0:  # STOPPED (stop, drained shutdown) or a ZeroMQ failure
                self._stopped.set()
                return False
            if n == 0 and not lib.ab_worker_has_input(self._h):
                self._read_refused()
                return True

    def _kick(self) -> None:
        """After sending: flush, and look at the handle again soon (the fd
        is edge-triggered; a send may have consumed the edge)."""
        if self._h:
            lib.ab_worker_flush(self._h)
        if not self._kicked and self._loop is not None:
            self._kicked = True
            self._loop.call_soon(self._drain)

    def _on_loop_thread(self) -> bool:
        """True when called from the running worker's loop."""
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def _call_on_loop(self, fn: Callable[..., Any], *args: Any) -> Any:
        """FN(*ARGS) on the loop's thread, waited for; StoppedError when the
        loop is not running, or ends before it ran FN (_LoopEnded). A call
        handed to a loop in its last turn was never run, and its caller
        waited the full 60 s (or got "Event loop is closed")."""
        if self._on_loop_thread():
            r = fn(*args)
            self._kick()
            return r
        fut: concurrent.futures.Future = concurrent.futures.Future()

        def call() -> None:
            with self._calls_lock:  # serve() may have failed it already
                if not self._calls.pop(fut, None):
                    return
            try:
                r = fn(*args)
                self._kick()
                fut.set_result(r)
            except BaseException as e:  # give it to the handler's thread
                fut.set_exception(e)

        with self._calls_lock:
            loop = self._loop
            if loop is None:
                raise _LoopEnded("worker is not running")
            self._calls[fut] = True
        try:
            loop.call_soon_threadsafe(call)
        except RuntimeError:  # closed since: serve() failed FUT on its way out
            pass
        return self._wait_call(loop, fut)

    def _wait_call(self, loop: asyncio.AbstractEventLoop, fut: concurrent.futures.Future) -> Any:
        """FUT's result, handed to LOOP. A loop stopped from outside
        (loop.stop()) while serve() is suspended in it runs nothing: once it
        has not been running for _IDLE_LOOP_S, the call is taken back and
        fails StoppedError (it waited 60 s before). A loop only between two
        run_forever() calls is not failed."""
        idle_since = None
        deadline = time.monotonic() + 60
        while True:
            try:
                return fut.result(timeout=0.05)
            except concurrent.futures.TimeoutError:
                pass
            now = time.monotonic()
            idle_since = None if loop.is_running() else idle_since or now
            stuck = idle_since is not None and now - idle_since >= _IDLE_LOOP_S
            if stuck or now >= deadline:
                with self._calls_lock:
                    if not self._calls.pop(fut, None):
                        continue  # run, or failed by serve(), meanwhile: its result is next
                why = "its event loop is not running" if stuck else "its loop did not run it"
                raise StoppedError("worker stopped: %s" % why) from None

    def _end_calls(self) -> None:
        """On serve()'s way out: no call is handed to the loop any more, and
        those handed to it but not run fail (_LoopEnded) at once."""
        with self._calls_lock:
            self._loop = None
            calls, self._calls = self._calls, {}
        for fut in calls:
            fut.set_exception(_LoopEnded("worker stopped"))

    def _on_job(self, _w, job_p, _arg) -> None:
        job = Job(self, job_p)
        self._jobs[job.id] = job
        assert self._loop is not None
        job._task = self._loop.create_task(self._serve_job(job))

    def _on_cancel(self, _w, job_id: int, why: int, _arg) -> None:
        job = self._jobs.get(job_id)
        if job is None:
            return
        job.cancelled = True
        # An async handler is interrupted; a synchronous one (in a pool
        # thread) cannot be, and is expected to look at job.cancelled.
        fn = self._handler
        if job._task is not None and (inspect.iscoroutinefunction(fn)
                                      or inspect.isasyncgenfunction(fn)):
            job._task.cancel()

    async def _serve_job(self, job: Job) -> None:
        fn = self._handler
        assert fn is not None
        try:
            if inspect.iscoroutinefunction(fn):
                result = await fn(job)
            elif inspect.isasyncgenfunction(fn):
                result = await self._stream_async(job, fn(job))
            else:
                result = await self._loop.run_in_executor(self._pool, self._run_sync, job, fn)
            job._finish(_result_bytes(result), None)
        except asyncio.CancelledError as e:
            job._finish(None, e)
        except BaseException as e:  # the request fails; the worker goes on
            job._finish(None, e)

    @staticmethod
    def _run_sync(job: Job, fn: Handler) -> Any:
        r = fn(job)
        if inspect.isgenerator(r):
            prev = None
            first = True
            for item in r:
                if job.cancelled:
                    r.close()
                    return None
                if not first:
                    job.send(_result_bytes(prev))
                prev, first = item, False
            return prev
        return r

    @staticmethod
    async def _stream_async(job: Job, agen: Any) -> Any:
        prev = None
        first = True
        async for item in agen:
            if not first:
                job.send(_result_bytes(prev))
            prev, first = item, False
        return prev

    def stop(self) -> None:
        """Stops :meth:`run` soon; jobs held are handed back to the broker
        by :meth:`close`. Any thread, signal handlers too."""
        self._stopped.set()
        if self._pid != os.getpid():  # the parent's lock may be held for good
            return
        with self._free_lock:
            if self._h:
                lib.ab_worker_stop(self._h)

    def shutdown(self, grace: float = 2.0) -> None:
        """Graceful stop: take nothing new, finish held jobs for up to GRACE
        seconds, then stop. Any thread."""
        ms = C.ms(grace, 0, "grace")
        if self._pid != os.getpid():
            return
        with self._free_lock:
            if self._h:
                lib.ab_worker_shutdown(self._h, ms)

    def close(self) -> None:
        """Says BYE and frees the handle (idempotent). While the worker runs
        on another thread (``with Worker(...) as w:`` around a thread running
        ``w.run``), it is stopped first and close() waits for run() to
        return: freeing the handle under the loop's poll was a
        use-after-free. From the loop's own thread (a handler) the handle
        is freed as serve() returns."""
        if self._pid != os.getpid():  # a fork()ed child: the parent's (its loop too)
            self._h = c_void_p()
            self._jobs.clear()
            return
        if self._loop is not None:
            self.stop()
            if self._on_loop_thread() or not self._served.wait(30):
                self._close_when_served = True
                return
        with self._free_lock:
            if self._h:
                for job in list(self._jobs.values()):
                    lib.ab_job_destroy(byref(job._p))
                self._jobs.clear()
                lib.ab_worker_destroy(byref(self._h))
                self._h = c_void_p()

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def inference_reply(kind: str, **fields: Any) -> bytes:
    """Encodes one chunk of an inference answer for a Python worker serving
    an "ollama"-typed service: KIND "generate", "chat" or "embed" and
    Ollama's field names (``response``, ``done``, ``message``, its
    ``tool_calls``, ``logprobs`` and ``context``, ``embeddings`` as lists of
    floats; durations in nanoseconds)."""
    if kind not in ("generate", "chat", "embed"):  # was "undefined symbol: agentbus__..."
        raise ValueError("kind must be 'generate', 'chat' or 'embed', not %r" % (kind,))
    f = dict(fields)
    timings = {k: f.pop(k) for k in list(f) if k in C._TIMINGS and kind != "embed"}
    if timings:
        f["timings"] = timings
    # Ollama's lists travel as JSON text (proto/agentbus.proto): given under
    # Ollama's names they were unknown keys, dropped silently.
    if "logprobs" in f:
        f["logprobs_json"] = C._json_text(f.pop("logprobs"))
    msg = f.get("message")
    if isinstance(msg, dict) and "tool_calls" in msg:
        msg = dict(msg)
        msg["tool_calls_json"] = C._json_text(msg.pop("tool_calls"))
        f["message"] = msg
    if kind == "embed":
        f["embeddings"] = [{"values": list(v)} for v in f.get("embeddings", [])]
    return _pb.pack("%s_response" % kind, f)

