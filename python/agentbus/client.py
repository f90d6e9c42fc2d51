"""The synchronous client: requests, streams, inference, messages, topics.

Thread safety (as the C API states it): a Client, and the streams and
subscriptions that come from it, is used by one thread at a time;
different Clients may be used from different threads at once. Callbacks
(subscription callbacks) run on the thread that is inside a call of the
client (a request's wait, ``poll``, ``listen``, iterating a stream).
:meth:`Client.stop` may be called from any thread (or a signal handler),
:meth:`Client.close` and :meth:`Stream.close` from any thread; another
call while a thread is inside one raises RuntimeError (see _Base._hold).
Blocking calls release the GIL while they wait in the C library.
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
import time
from collections import deque
from ctypes import byref, c_int, c_size_t, c_uint64, c_void_p
from typing import (Any, Callable, Deque, Dict, Iterator, List, Mapping, Optional, Sequence,
                    Union)

from . import _common as C
from . import _pb
from ._lib import (AB_SEND_RECEIPT, POINTER, REPLY_FN, Directory, Message as _CMessage, b,
                   data_bytes, lib, text, weak_method)
from .errors import AgentbusError, CancelledError, TimeoutError, check, error

Data = C.Data
Message = C.Message


_EPAYLOADSIZE = -23  # AB_EPAYLOADSIZE


class _Call:
    """One request in flight: its events as the C callback delivered them,
    at most QUEUE_MAX_BYTES of them waiting (see _Base._on_reply)."""

    __slots__ = ("id", "events", "held", "cut", "final", "status", "error_text", "key",
                 "waiter")

    def __init__(self, key: int) -> None:
        self.key = key
        self.id = 0
        self.events: Deque[bytes] = deque()
        self.held = 0  # bytes of EVENTS, each with its record
        self.cut = False  # past the bound: failed here, to be cancelled at the broker
        self.final = False
        self.status = 0
        self.error_text = ""
        self.waiter: Any = None  # AsyncClient: a future set on the next event

    def take(self) -> bytes:
        """The oldest event (EVENTS is not empty)."""
        chunk = self.events.popleft()
        self.held -= len(chunk) + C.MESSAGE_RECORD_BYTES
        return chunk

    def raise_if_failed(self) -> None:
        if self.final and self.status != 0:
            raise error(self.status, self.error_text)


_CLOSED = object()  # _holding(): raise StoppedError on a closed client


def _holding(closed: Any = _CLOSED) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorates a method of a client (or of a Stream or Subscription, by
    their ``_client``) that calls into the C handle: the calling thread holds
    the handle for the length of the call (_Base._hold). On a closed client
    the method (or in a fork()ed child) returns CLOSED instead, when given."""
    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def call(self: Any, *args: Any, **kw: Any) -> Any:
            client = getattr(self, "_client", self)
            if closed is not _CLOSED and (not client._h or client._pid != os.getpid()):
                return closed  # closed, or a fork()ed child's copy
            client._hold()
            try:
                return fn(self, *args, **kw)
            finally:
                client._release()
        return call
    return wrap


class _Base:
    """What Client and AsyncClient share: the handle, request bookkeeping.

    Which thread is inside the handle: ``_user`` (0: none), ``_depth`` (a
    callback calling in nests). Another thread's call raises instead of
    running in the handle at the same time; close() from another thread
    stops the handle, waits for the user to leave, then frees it."""

    def __init__(self, endpoint: Optional[str] = None, *, name: Optional[str] = None,
                 timeout: Optional[float] = None, heartbeat_ms: Optional[int] = None,
                 takeover: bool = False, batching: Optional[bool] = None,
                 key: Optional[str] = None, broker_key: Optional[str] = None) -> None:
        self._lock = threading.Condition(threading.RLock())  # reentrant: stop() in a signal handler
        self._h = c_void_p()
        self._user = 0
        self._depth = 0
        self._closing = False
        self._orphans: Deque[_Call] = deque()  # to cancel, from another thread (Stream.close)
        self._pid = os.getpid()  # the process whose handle it is (see _handle)
        self._timeout = timeout  # the default wait (None: the library's 30 s)
        self._calls: Dict[int, _Call] = {}
        self._next_key = 1
        self._reply_cb = REPLY_FN(weak_method(self._on_reply))  # kept alive with the client
        self._held = C.Held()  # what _direct and the subscriptions' queues hold
        self._direct = C.MessageQueue(self._held)
        self._subs: List["Subscription"] = []
        o = C.make_options(endpoint, name, timeout, heartbeat_ms, takeover, batching, key,
                           broker_key)
        try:
            check(lib.ab_client_new(byref(self._h), o),
                  lambda: text(lib.ab_client_last_error(None)) or "cannot create client")
        finally:
            lib.ab_options_destroy(byref(c_void_p(o)))

    # -- lifecycle --------------------------------------------------------
    def _hold(self) -> None:
        """Enters the handle for this thread, or raises: StoppedError when it
        is closed (or closing), RuntimeError while another thread is inside
        (the C library's one thread at a time: a second thread's publish()
        ran in the handle during the first one's recv())."""
        self._handle()
        me = threading.get_ident()
        with self._lock:
            if self._user not in (0, me):
                raise RuntimeError("agentbus client in use by another thread (one thread at a "
                                   "time; stop() and close() may come from any)")
            if self._user != me and self._closing:
                raise error(-15, "client is closed")
            self._user = me
            self._depth += 1
        if self._depth == 1 and self._orphans:
            self._cancel_orphans()

    def _release(self) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth:
                return
            self._user = 0
            if self._closing:  # close() came during the call: free it now
                self._destroy()
                self._lock.notify_all()

    def _destroy(self) -> None:
        """Frees the handle; the caller holds _lock and no thread is inside."""
        self._closing = True  # callbacks run by ab_client_destroy cancel nothing
        if self._h:
            lib.ab_client_destroy(byref(self._h))
        self._h = c_void_p()
        self._orphans.clear()

    def _close_handle(self) -> None:
        if self._pid != os.getpid():  # a fork()ed child only forgets its parent's
            self._h = c_void_p()
            return
        with self._lock:
            if not self._h:
                return
            self._closing = True
            if self._user != 0:
                # A call is inside: it returns STOPPED soon, and its thread
                # frees the handle on its way out (_release). Another
                # thread's close() waits for that; one from inside (a
                # callback) cannot.
                lib.ab_client_stop(self._h)
                if self._user != threading.get_ident():
                    self._lock.wait_for(lambda: not self._h, 30)
                return
            self._destroy()

    def stop(self) -> None:
        """Makes blocking calls return StoppedError soon, now and from then
        on. Safe from any thread and from signal handlers."""
        if self._pid != os.getpid():
            return
        with self._lock:  # not while another thread's close() frees it
            if self._h:
                lib.ab_client_stop(self._h)

    def __del__(self) -> None:
        try:
            self._close_handle()
        except Exception:
            pass

    @property
    @_holding(closed=False)
    def connected(self) -> bool:
        """True while the connection to a broker is up."""
        return bool(lib.ab_client_connected(self._h))

    @property
    @_holding(closed=False)
    def refused(self) -> bool:
        """True once the broker refused this handle's CURVE handshake (its
        key is not trusted there, or the broker requires CURVE and it has
        none), until a later handshake succeeds. Read after a call failed
        with DeniedError, or after polling; ``last_error`` says why."""
        return bool(lib.ab_client_refused(self._h))

    @property
    @_holding(closed=0)
    def pending(self) -> int:
        """Requests (and other calls awaiting an answer) in flight."""
        return int(lib.ab_client_pending(self._h))

    @_holding(closed="")
    def last_error(self) -> str:
        """Detailed text of the handle's last error."""
        return text(lib.ab_client_last_error(self._h))

    def _confirm_ms(self, timeout: Optional[float]) -> int:
        """How long subscribe() waits for the broker: TIMEOUT seconds (0: not
        at all), None the client's default. The C call does not wait for a
        negative time, so None was no wait at all."""
        if C.seconds(timeout) is None:
            return C.ms(self._timeout, 30000)
        return C.ms(timeout)

    def _handle(self) -> c_void_p:
        if not self._h:
            raise error(-15, "client is closed")
        if self._pid != os.getpid():  # its ZeroMQ socket lives in the parent
            raise error(-15, "client was made by process %d before fork(): make a new one in "
                        "this process" % self._pid)
        return self._h

    # -- requests ---------------------------------------------------------
    def _on_reply(self, _client, evp, arg) -> None:
        call = self._calls.get(arg or 0)
        if call is None:
            return
        ev = evp.contents
        if call.cut:  # failed here, its events dropped: the cancel is on its way
            if ev.final:
                self._calls.pop(call.key, None)
            return
        if ev.size:
            call.events.append(ctypes.string_at(ev.data, ev.size))
            call.held += ev.size + C.MESSAGE_RECORD_BYTES
        if call.held > C.QUEUE_MAX_BYTES:
            self._cut(call, ev.final)
        elif ev.final:
            call.final = True
            call.status = ev.status
            call.error_text = text(ev.error_text)
            self._calls.pop(call.key, None)
        w = call.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _start(self, service: str, data: Data, timeout: Optional[float],
               model: Optional[str] = None, worker: Optional[str] = None,
               cache: Optional[bool] = None, cache_ttl: Optional[float] = None,
               priority: Optional[int] = None, idempotent: bool = True) -> _Call:
        keep: List[bytes] = []
        opts = C.request_opts(timeout, model, worker, cache, cache_ttl, priority, idempotent,
                              keep)
        payload = data_bytes(data)
        key = self._next_key
        self._next_key += 1
        call = _Call(key)
        self._calls[key] = call
        rid = c_uint64()
        rc = lib.ab_client_request_start(self._handle(), b(service), payload, len(payload),
                                         byref(opts), self._reply_cb, key, byref(rid))
        if rc < 0:
            self._calls.pop(key, None)
            check(rc, self.last_error)
        call.id = rid.value
        return call

    def _cut(self, call: _Call, final: bool) -> None:
        """CALL's chunks waiting passed QUEUE_MAX_BYTES (a stream not read
        while the client polls, or an answer gathered whole from a worker
        that streams without end): it fails PAYLOAD_SIZE now, as the C
        library's synchronous request does past its max payload, and is
        cancelled after this callback (the library holds it meanwhile).
        Before 2026-12-06 every chunk was kept until the request ended."""
        call.events.clear()
        call.held = 0
        call.final = True
        call.status = _EPAYLOADSIZE
        call.error_text = ("the answer's chunks waiting in this client passed %d bytes: read a "
                           "stream as it comes" % C.QUEUE_MAX_BYTES)
        if final:
            self._calls.pop(call.key, None)
        else:
            call.cut = True
            self._orphans.append(call)

    def _cancel(self, call: _Call) -> None:
        if (not call.final or call.cut) and self._h:
            lib.ab_client_cancel(self._h, call.id)  # its final event may come in here
            call.cut = False  # cancelled once: its later events find no call
            self._calls.pop(call.key, None)

    def _cancel_from_any_thread(self, call: _Call) -> None:
        """Cancels CALL now if no other thread is inside the handle, else
        hands it to the one that is (_cancel_orphans). A Stream closed or
        collected on another thread cancelled inside the handle while its
        owner waited in it."""
        if call.final or self._pid != os.getpid():
            return
        with self._lock:  # a thread coming in waits for this, it is not refused
            if self._user in (0, threading.get_ident()) and not self._closing:
                self._cancel(call)
            else:
                self._orphans.append(call)

    def _cancel_orphans(self) -> None:
        """On the thread inside the handle: cancels what other threads left."""
        while self._orphans:
            self._cancel(self._orphans.popleft())

    def _messages_in(self) -> None:
        """Moves queued messages from the C receive queue to Python (and
        cancels what other threads asked meanwhile)."""
        if self._orphans:
            self._cancel_orphans()
        p = POINTER(_CMessage)()
        while self._h and lib.ab_client_recv(self._h, byref(p), 0) == 0:
            self._dispatch(C.message_from_c(p))
            p = POINTER(_CMessage)()

    def _dispatch(self, m: C.Message) -> None:
        if m.type == "topic":
            for s in list(self._subs):
                if C.topic_matches(s.pattern, m.target):
                    s._deliver(m)
            return
        self._direct.append(m)
        self._on_direct()

    def _on_direct(self) -> None:
        """AsyncClient wakes its receivers here."""


class Client(_Base):
    """A connection to an agentbus broker (libagentbus's ab_client_t).

    ``Client(endpoint="tcp://127.0.0.1:5555", name="planner")``: the
    endpoint defaults to ``$AB_BROKER``, then ``tcp://127.0.0.1:5555``;
    NAME makes this client the agent of that name (direct messages,
    mailbox). TIMEOUT (seconds) is the default of every request and wait.
    Use it as a context manager, or call :meth:`close`.

    Timeouts are in seconds throughout (``None``: the client's default).
    Errors raise :class:`agentbus.AgentbusError` subclasses named after
    the bus's status codes (:class:`NoServiceError`, :class:`BusyError`,
    :class:`DeadlineError`, ...), carrying the broker's text.
    """

    def __enter__(self) -> "Client":
        return self

    def close(self) -> None:
        """Closes the connection; requests in flight end with STOPPED.
        Idempotent. From another thread while a call waits in this one, it
        makes that call raise StoppedError and returns once it has left
        the library (before 2026-12-06 it freed the handle under it)."""
        self._close_handle()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- event loop -------------------------------------------------------
    def _flush(self) -> None:
        # A synchronous client has no loop that would end the batching turn:
        # what it sends without waiting goes out now.
        check(lib.ab_client_flush(self._handle()), self.last_error)

    @_holding()
    def poll(self, timeout: Optional[float] = 0) -> int:
        """Processes traffic for up to TIMEOUT seconds (0: what is there;
        None: until something arrives), running subscription callbacks.
        Returns the number of events handled."""
        n = check(lib.ab_client_poll(self._handle(), C.ms(timeout, -1)), self.last_error)
        self._messages_in()
        return n

    def _wait(self, call: _Call, timeout: Optional[float]) -> None:
        """Polls until CALL's final event. The library ends the request at
        its deadline; GRACE guards against a lost deadline all the same."""
        limit = None if C.seconds(timeout) is None else time.monotonic() + timeout + 5.0
        try:
            while not call.final:
                rc = lib.ab_client_poll(self._handle(), 1000)
                err = self.last_error() if rc < 0 else ""  # before _messages_in's recv
                self._messages_in()
                if rc < 0 and not call.final:
                    check(rc, lambda: err)
                if limit is not None and time.monotonic() > limit and not call.final:
                    raise TimeoutError("no answer from the library within the request's timeout")
        except BaseException:
            # Also a subscription callback's exception, or Ctrl-C: the request
            # ends with the call instead of running on, its answer unread.
            self._cancel(call)
            raise

    @_holding()
    def request(self, service: str, data: Data = b"", *, timeout: Optional[float] = None,
                cache_ttl: Optional[float] = None, priority: Optional[int] = None,
                model: Optional[str] = None, worker: Optional[str] = None,
                cache: Optional[bool] = None, idempotent: bool = True) -> bytes:
        """Sends DATA to SERVICE and returns the reply (a streamed reply's
        chunks concatenated).

        TIMEOUT: the request's budget in seconds (it travels with the
        request; the broker answers DEADLINE when it passes). CACHE_TTL:
        seconds the broker may cache the reply (marks it cacheable);
        CACHE=False bypasses the cache. PRIORITY is carried to the worker.
        MODEL places the request on a worker that has the model; WORKER
        sends it to that worker only. IDEMPOTENT=False: never run twice
        (WORKER_LOST instead of re-dispatch).
        """
        if (cache_ttl is None and priority is None and model is None and worker is None
                and cache is None and idempotent is True):
            return self._request_sync(service, data, timeout)
        call = self._start(service, data, timeout, model, worker, cache, cache_ttl, priority,
                           idempotent)
        self._wait(call, timeout)
        call.raise_if_failed()
        return b"".join(call.events)

    def _request_sync(self, service: str, data: Data, timeout: Optional[float]) -> bytes:
        payload = data_bytes(data)
        reply = c_void_p()
        size = c_size_t()
        rc = lib.ab_client_request(self._handle(), b(service), payload, len(payload),
                                   C.budget_ms(timeout, -1), byref(reply), byref(size))
        # The error's text before the drain of topic messages, whose last
        # ab_client_recv leaves "no message in time" as the handle's error.
        err = self.last_error() if rc < 0 else ""
        try:  # the reply is freed also when a subscription callback raises
            if self._subs:  # topic messages that came during the wait
                self._messages_in()
            check(rc, lambda: err)
            return ctypes.string_at(reply, size.value) if size.value else b""
        finally:
            lib.ab_free(reply)

    @_holding()
    def stream(self, service: str, data: Data = b"", *, timeout: Optional[float] = None,
               **opts: Any) -> "Stream":
        """Starts a request and returns its reply as an iterator of chunks
        (bytes): each streamed part, then the final reply if not empty.
        Options as :meth:`request`. Closing the stream early (``close()``,
        ``with``, ``break`` then garbage collection) cancels the request."""
        call = self._start(service, data, timeout, **opts)
        return Stream(self, call, timeout, None)

    # -- inference (Ollama-shaped) ----------------------------------------
    @_holding()
    def generate(self, model: str, prompt: str = "", *, stream: bool = False,
                 system: str = "", format: Union[str, Mapping[str, Any], None] = "",
                 options: Optional[Mapping[str, Any]] = None,
                 keep_alive: Optional[Union[str, int]] = None, raw: bool = False,
                 suffix: str = "", images: Optional[Sequence[bytes]] = None,
                 think: Optional[Union[bool, str]] = None,
                 truncate: Optional[bool] = None, shift: Optional[bool] = None,
                 logprobs: bool = False, top_logprobs: int = 0,
                 context: Optional[Sequence[int]] = None,
                 service: str = "ollama", timeout: Optional[float] = None,
                 **req: Any) -> Any:
        """Ollama's /api/generate over the bus. Returns the response dict
        (``response``, ``done``, ``done_reason``, durations, ``worker``;
        ``thinking`` when THINK made a reasoning model think; ``logprobs``
        with LOGPROBS, TOP_LOGPROBS alternatives each; the final one's
        ``context``, to pass as CONTEXT with a next prompt),
        or with STREAM=True an iterator of such dicts, one per chunk, the
        last with ``done`` True. REQ: options of :meth:`request`."""
        payload = C.generate_payload(model, prompt, system=system, format=format,
                                     options=options, stream=stream, keep_alive=keep_alive,
                                     raw=raw, suffix=suffix, images=images, think=think,
                                     truncate=truncate, shift=shift, logprobs=logprobs,
                                     top_logprobs=top_logprobs, context=context)
        return self._infer(service, payload, model, stream, timeout, C.generate_result, req)

    @_holding()
    def chat(self, model: str, messages: Sequence[Mapping[str, Any]], *, stream: bool = False,
             format: Union[str, Mapping[str, Any], None] = "",
             options: Optional[Mapping[str, Any]] = None,
             keep_alive: Optional[Union[str, int]] = None, service: str = "ollama",
             timeout: Optional[float] = None,
             tools: Optional[Sequence[Mapping[str, Any]]] = None,
             think: Optional[Union[bool, str]] = None, truncate: Optional[bool] = None,
             shift: Optional[bool] = None, logprobs: bool = False, top_logprobs: int = 0,
             **req: Any) -> Any:
        """Ollama's /api/chat over the bus: MESSAGES are dicts with
        ``role`` and ``content`` (an assistant's ``tool_calls``, a tool
        result's ``tool_name``, as Ollama has them); TOOLS as Ollama's
        ``tools``. Returns the response dict (``message``, with
        ``tool_calls`` when the model calls tools, ``done``, ``logprobs``
        with LOGPROBS, ...) or, with STREAM=True, an iterator of them."""
        payload = C.chat_payload(model, messages, format=format, options=options,
                                 stream=stream, keep_alive=keep_alive, tools=tools,
                                 think=think, truncate=truncate, shift=shift,
                                 logprobs=logprobs, top_logprobs=top_logprobs)
        return self._infer(service, payload, model, stream, timeout, C.chat_result, req)

    @_holding()
    def embed(self, model: str, input: Union[str, Sequence[str]], *,
              truncate: Optional[bool] = None, options: Optional[Mapping[str, Any]] = None,
              keep_alive: Optional[Union[str, int]] = None, service: str = "ollama",
              timeout: Optional[float] = None, dimensions: Optional[int] = None,
              **req: Any) -> Dict[str, Any]:
        """Ollama's /api/embed over the bus: returns ``{"model",
        "embeddings": [[float, ...], ...], durations, "worker"}``."""
        payload = C.embed_payload(model, input, truncate=truncate, options=options,
                                  keep_alive=keep_alive, dimensions=dimensions)
        return self._infer(service, payload, model, False, timeout, C.embed_result, req)

    def _infer(self, service: str, payload: bytes, model: str, stream: bool,
               timeout: Optional[float], decode: Callable[[bytes], Any],
               req: Dict[str, Any]) -> Any:
        call = self._start(service, payload, timeout, model=model, **req)
        s = Stream(self, call, timeout, decode)
        if stream:
            return s
        last = None
        with s:
            for last in s:
                pass
        if last is None:
            raise error(-9, "empty inference reply")
        return last

    # -- discovery --------------------------------------------------------
    @_holding()
    def discover(self, service: Optional[str] = None,
                 timeout: Optional[float] = None) -> Dict[str, List[Dict[str, Any]]]:
        """The broker's directory for SERVICE (None: all):
        ``{"services": [{name, workers, capacity, queue_depth, ...}],
        "workers": [{id, name, service, health, capacity, labels, ...}]}``."""
        d = POINTER(Directory)()
        check(lib.ab_discover(self._handle(), b(service) if service else None,
                              C.ms(timeout, -1), byref(d)), self.last_error)
        try:
            return C.directory_from_c(d.contents)
        finally:
            lib.ab_directory_destroy(byref(d))

    _CONTROL = {"stats": "stats", "services": "service_list", "workers": "worker_list",
                "agents": "agent_list"}

    @_holding()
    def control(self, what: str = "stats", timeout: Optional[float] = None) -> Dict[str, Any]:
        """Operator query (as brokerctl): WHAT is "stats", "services",
        "workers" or "agents"; the broker's answer decoded to a dict."""
        if what not in self._CONTROL:
            raise error(-11, "unknown control query %r" % what)
        reply = c_void_p()
        size = c_size_t()
        check(lib.ab_client_control(self._handle(), b(what), C.ms(timeout, -1), byref(reply),
                                    byref(size)), self.last_error)
        try:
            data = ctypes.string_at(reply, size.value) if size.value else b""
        finally:
            lib.ab_free(reply)
        return _pb.unpack(self._CONTROL[what], data)

    # -- direct messages --------------------------------------------------
    @_holding()
    def send(self, name: str, data: Data, *, receipt: bool = False, wait: bool = False,
             timeout: Optional[float] = None) -> Union[int, bool]:
        """Sends DATA to the agent NAME (kept in its mailbox when it is
        offline). Returns the message id; with WAIT=True waits for the
        broker to accept it and returns True if it went to the mailbox,
        False if it was handed over at once. RECEIPT asks for a "receipt"
        message when the recipient's application has it."""
        payload = data_bytes(data)
        flags = AB_SEND_RECEIPT if receipt else 0
        if wait:
            queued = c_int()
            check(lib.ab_client_send_wait(self._handle(), b(name), payload, len(payload), flags,
                                          C.ms(timeout, -1), byref(queued)), self.last_error)
            return bool(queued.value)
        mid = c_uint64()
        check(lib.ab_client_send(self._handle(), b(name), payload, len(payload), flags,
                                 byref(mid)), self.last_error)
        self._flush()
        return mid.value

    @_holding()
    def reply(self, message: C.Message, data: Data) -> None:
        """Answers direct MESSAGE (received by this client) with DATA."""
        C.check_message(message)
        if message._c is None:
            raise error(-1, "not a received direct message")
        payload = data_bytes(data)
        check(lib.ab_client_reply(self._handle(), message._c, payload, len(payload)),
              self.last_error)
        self._flush()

    @_holding()
    def recv(self, timeout: Optional[float] = None) -> C.Message:
        """The next direct message (or receipt, gap, error notice); waits up
        to TIMEOUT seconds (None: forever). Raises TimeoutError."""
        deadline = None if C.seconds(timeout) is None else time.monotonic() + timeout
        while not self._direct:
            # At most 1 s a call, the deadline checked between (a far one, or
            # inf, overflowed the C int: OverflowError, or a wrapped wait).
            left = 1000 if deadline is None else int(
                min(1000.0, max(0.0, (deadline - time.monotonic()) * 1000)))
            p = POINTER(_CMessage)()
            rc = lib.ab_client_recv(self._handle(), byref(p), left)
            if self._orphans:
                self._cancel_orphans()
            if rc == 0:
                self._dispatch(C.message_from_c(p))
                continue
            if rc != -3:
                check(rc, self.last_error)
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError("no message within %.3f s" % timeout)
        return self._direct.popleft()

    def listen(self, timeout: Optional[float] = None) -> Iterator[C.Message]:
        """Iterates over direct messages as they arrive; stops after
        TIMEOUT seconds without one (None: never)."""
        while True:
            try:
                yield self.recv(timeout)
            except TimeoutError:
                return

    # -- topics -----------------------------------------------------------
    @_holding()
    def publish(self, topic: str, data: Data) -> int:
        """Publishes DATA on TOPIC; returns its id."""
        payload = data_bytes(data)
        mid = c_uint64()
        check(lib.ab_client_publish(self._handle(), b(topic), payload, len(payload),
                                    byref(mid)), self.last_error)
        self._flush()
        return mid.value

    @_holding()
    def subscribe(self, pattern: Union[str, bytes],
                  callback: Optional[Callable[[C.Message], Any]] = None, *,
                  timeout: Optional[float] = 5.0) -> "Subscription":
        """Subscribes to PATTERN ("a.b" exact, "a." prefix; str, or bytes
        in UTF-8, kept as str in ``Subscription.pattern``) and waits up to
        TIMEOUT seconds for the broker to confirm. With CALLBACK, each topic
        message is passed to it from within the client's calls (``poll``,
        request waits); without, iterate the returned Subscription."""
        C.check_callable(callback, "callback")
        check(lib.ab_client_subscribe(self._handle(), b(pattern), self._confirm_ms(timeout)),
              self.last_error)
        s = Subscription(self, pattern, callback)
        self._subs.append(s)
        return s

    @_holding()
    def run(self, timeout: Optional[float] = None) -> None:
        """Runs subscription callbacks for TIMEOUT seconds (None: until
        :meth:`stop`, which then raises StoppedError)."""
        deadline = None if C.seconds(timeout) is None else time.monotonic() + timeout
        while deadline is None or time.monotonic() < deadline:
            left = 1.0 if deadline is None else min(1.0, max(0.0, deadline - time.monotonic()))
            self.poll(left)


class Stream:
    """The chunks of one streamed reply, in order, as an iterator.

    Chunks are bytes, or dicts for generate/chat streams. ``close()``
    (or leaving a ``with`` block) before the end cancels the request at
    the broker, and the worker holding it is told to stop."""

    def __init__(self, client: Client, call: _Call, timeout: Optional[float],
                 decode: Optional[Callable[[bytes], Any]]) -> None:
        self._client = client
        self._call = call
        self._timeout = C.seconds(timeout)
        self._decode = decode

    @property
    def request_id(self) -> int:
        return self._call.id

    def __iter__(self) -> "Stream":
        return self

    @_holding()
    def __next__(self) -> Any:
        call = self._call
        limit = None if self._timeout is None else time.monotonic() + self._timeout + 5.0
        while not call.events:
            if call.final:
                call.raise_if_failed()
                raise StopIteration
            rc = lib.ab_client_poll(self._client._handle(), 1000)
            err = self._client.last_error() if rc < 0 else ""  # before _messages_in's recv
            self._client._messages_in()
            if rc < 0 and not call.final:
                self.close()
                check(rc, lambda: err)
            if limit is not None and time.monotonic() > limit and not call.final:
                self.close()
                raise TimeoutError("stream: no answer within the request's timeout")
        chunk = call.take()
        return self._decode(chunk) if self._decode else chunk

    def close(self) -> None:
        """Cancels the request if it is still running. From any thread
        (the thread inside the client then sends the cancel)."""
        self._client._cancel_from_any_thread(self._call)

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # on whichever thread collects it
        try:
            if self._client._h:
                self.close()
        except Exception:
            pass


class Subscription:
    """Topic messages matching one pattern: an iterator (``next`` waits
    for the next one) unless a callback was given. ``close()`` or leaving
    a ``with`` block unsubscribes."""

    def __init__(self, client: _Base, pattern: str,
                 callback: Optional[Callable[[C.Message], Any]]) -> None:
        self._client = client
        # As text, whether given as str or bytes: a bytes pattern was
        # compared with each topic's str (TypeError on the first message)
        self.pattern = text(b(pattern))
        self.callback = callback
        self._queue = C.MessageQueue(client._held, self.pattern)
        self._waiter: Any = None  # AsyncClient: future woken on delivery

    def _deliver(self, m: C.Message) -> None:
        if self.callback is not None:
            self.callback(m)
            return
        self._queue.append(m)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    @_holding()
    def get(self, timeout: Optional[float] = None) -> C.Message:
        """The next message (a "gap" when the client's bound dropped some:
        C.MessageQueue); raises TimeoutError after TIMEOUT seconds."""
        client = self._client
        assert isinstance(client, Client), "use 'async for' with an AsyncClient"
        deadline = None if C.seconds(timeout) is None else time.monotonic() + timeout
        while not self._queue:
            left = 1.0 if deadline is None else max(0.0, deadline - time.monotonic())
            client.poll(min(left, 1.0))
            if deadline is not None and time.monotonic() >= deadline and not self._queue:
                raise TimeoutError("no message on %s within %.3f s" % (self.pattern, timeout))
        return self._queue.popleft()

    def __iter__(self) -> Iterator[C.Message]:
        while True:
            yield self.get()

    @_holding(closed=None)
    def close(self) -> None:
        """Unsubscribes (the client keeps other subscriptions)."""
        self._queue.clear()  # what it held no longer counts against the client's bound
        if self in self._client._subs:
            self._client._subs.remove(self)
            if self._client._h and not any(s.pattern == self.pattern
                                            for s in self._client._subs):
                lib.ab_client_unsubscribe(self._client._h, b(self.pattern), 2000)

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


__all__ = ["Client", "Stream", "Subscription", "Message", "AgentbusError", "CancelledError"]
