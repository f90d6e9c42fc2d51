"""asyncio client: requests and streams as awaitables and async iterators.

One AsyncClient is driven by its event loop: the library's file
descriptor (ab_client_fd) is watched with ``loop.add_reader`` and its
timers (deadlines, heartbeats) with ``loop.call_later`` at
ab_client_next_timeout_ms(); no thread is started. Any number of requests
may be in flight at once; each costs a future, not a thread.

Thread safety: an AsyncClient belongs to the loop it was first used on and
is used only from that loop's thread (the C rule: one thread per handle).
Cancelling the task that awaits a request or iterates a stream cancels
the request at the broker (the worker holding it is told to stop).
"""

from __future__ import annotations

import asyncio
import time
from ctypes import byref, c_int, c_uint64
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

from . import _common as C
from ._lib import AB_SEND_RECEIPT, POINTER, Directory, b, data_bytes, lib
from .client import Subscription, _Base, _Call
from .errors import TimeoutError, check, error

_MAX_SLEEP_MS = 1000


class AsyncClient(_Base):
    """The asyncio twin of :class:`agentbus.Client` (same constructor).

    ``async with AsyncClient(endpoint) as bus: reply = await
    bus.request("echo", b"hi")``. Methods that only send (``send``,
    ``publish``) return at once; ``discover``, ``subscribe`` (its
    confirmation; ``timeout=0`` does not wait) and ``send(wait=True)`` wait
    for one broker round trip inside the C library and block the loop for
    that long (loopback: well under a millisecond)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._fd = -1
        self._timer: Optional[asyncio.TimerHandle] = None
        self._timer_at = 0.0
        self._kicked = False
        self._recv_waiter: Optional[asyncio.Future] = None

    # -- loop wiring ------------------------------------------------------
    def _attach(self) -> asyncio.AbstractEventLoop:
        h = self._handle()  # closed: StoppedError from every call, not a wait
        if self._loop is None:
            fd = c_int()
            check(lib.ab_client_fd(h, byref(fd)), self.last_error)
            self._loop = asyncio.get_running_loop()
            self._fd = fd.value
            self._loop.add_reader(self._fd, self._drain)
            self._arm()
        return self._loop

    def _drain(self) -> None:
        """Runs what the handle has (callbacks set futures), then re-arms
        the timer. Called by the fd watch, the timer and after sends."""
        self._kicked = False
        if not self._h:
            return
        for _ in range(1000):  # bounded: let the loop breathe under load
            n = lib.ab_client_poll(self._h, 0)
            if n <= 0:
                break
        self._messages_in()
        self._arm()

    def _arm(self) -> None:
        if not self._h or self._loop is None:
            return
        t = min(max(lib.ab_client_next_timeout_ms(self._h), 1), _MAX_SLEEP_MS) / 1000.0
        at = self._loop.time() + t
        if self._timer is not None:
            if self._timer_at <= at:
                return
            self._timer.cancel()
        self._timer_at = at
        self._timer = self._loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._drain()

    def _kick(self) -> None:
        """After a send: poll once this loop iteration is done (ends the
        batching turn, and the edge-triggered fd may have been consumed)."""
        if not self._kicked and self._loop is not None:
            self._kicked = True
            self._loop.call_soon(self._drain)

    def _cancel_on_loop(self, call: _Call) -> None:
        """Cancels CALL on the loop's thread: at once when this is it, else
        handed to it. A stream collected on another thread (a collection
        runs on any) cancelled inside the handle while the loop polled it,
        and its call_soon did not wake the loop."""
        loop = self._loop
        try:
            here = asyncio.get_running_loop() is loop
        except RuntimeError:
            here = False
        if loop is None or here:
            self._cancel(call)
            self._kick()
        else:
            loop.call_soon_threadsafe(self._cancel_on_loop, call)

    async def close(self) -> None:
        """Closes the connection; requests in flight end with STOPPED. On
        the client's loop (or after that loop was closed): from another
        loop it raises RuntimeError and closes nothing, as the handle may
        be in use there (before 2026-12-06 it was freed under that loop's
        poll)."""
        loop = self._loop
        if loop is not None and not loop.is_closed() and asyncio.get_running_loop() is not loop:
            raise RuntimeError("agentbus: this AsyncClient belongs to another event loop: close "
                               "it there (asyncio.run_coroutine_threadsafe(client.close(), loop))")
        self._detach()
        self._close_handle()

    def _detach(self) -> None:
        if self._loop is not None:
            if self._fd >= 0:
                self._loop.remove_reader(self._fd)
            if self._timer is not None:
                self._timer.cancel()
            self._loop = None

    def __del__(self) -> None:
        try:
            self._detach()
        except Exception:
            pass
        super().__del__()

    async def __aenter__(self) -> "AsyncClient":
        self._attach()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # -- requests ---------------------------------------------------------
    async def _next_event(self, call: _Call, limit: Optional[float]) -> None:
        """Waits for CALL's next event; cancels it if the task is cancelled."""
        loop = self._attach()
        call.waiter = loop.create_future()
        try:
            if limit is None:
                await call.waiter
            else:
                await asyncio.wait_for(call.waiter, max(0.0, limit - time.monotonic()))
        except asyncio.TimeoutError:
            self._cancel(call)
            self._kick()
            raise TimeoutError("no answer within the request's timeout") from None
        except asyncio.CancelledError:
            self._cancel(call)
            self._kick()
            raise
        finally:
            call.waiter = None

    def _astart(self, service: str, data: C.Data, timeout: Optional[float],
                **opts: Any) -> _Call:
        self._attach()
        call = self._start(service, data, timeout, **opts)
        self._kick()
        return call

    @staticmethod
    def _limit(timeout: Optional[float]) -> Optional[float]:
        # The library ends a request at its deadline; this guard only
        # catches a deadline that never fires.
        return None if C.seconds(timeout) is None else time.monotonic() + timeout + 5.0

    async def request(self, service: str, data: C.Data = b"", *,
                      timeout: Optional[float] = None, **opts: Any) -> bytes:
        """As :meth:`Client.request`, awaitable. Cancelling the awaiting
        task cancels the request."""
        call = self._astart(service, data, timeout, **opts)
        limit = self._limit(timeout)
        while not call.final:
            await self._next_event(call, limit)
        call.raise_if_failed()
        return b"".join(call.events)

    def stream(self, service: str, data: C.Data = b"", *, timeout: Optional[float] = None,
               **opts: Any) -> "AsyncStream":
        """Starts a request; its chunks as an async iterator (``async
        for``). ``await stream.aclose()`` or cancelling the task cancels
        it."""
        call = self._astart(service, data, timeout, **opts)
        return AsyncStream(self, call, timeout, None)

    async def generate(self, model: str, prompt: str = "", *, stream: bool = False,
                       service: str = "ollama", timeout: Optional[float] = None,
                       **kw: Any) -> Any:
        """As :meth:`Client.generate`; with STREAM=True an async iterator."""
        gen_keys = ("system", "format", "options", "keep_alive", "raw", "suffix", "images",
                    "think", "truncate", "shift", "logprobs", "top_logprobs", "context")
        payload = C.generate_payload(model, prompt, stream=stream,
                                     **{k: kw.pop(k) for k in gen_keys if k in kw})
        return await self._infer(service, payload, model, stream, timeout, C.generate_result, kw)

    async def chat(self, model: str, messages: Sequence[Mapping[str, Any]], *,
                   stream: bool = False, service: str = "ollama",
                   timeout: Optional[float] = None, **kw: Any) -> Any:
        """As :meth:`Client.chat`; with STREAM=True an async iterator."""
        payload = C.chat_payload(model, messages, stream=stream,
                                 **{k: kw.pop(k) for k in ("format", "options", "keep_alive",
                                                           "tools", "think", "truncate",
                                                           "shift", "logprobs",
                                                           "top_logprobs") if k in kw})
        return await self._infer(service, payload, model, stream, timeout, C.chat_result, kw)

    async def embed(self, model: str, input: Union[str, Sequence[str]], *,
                    service: str = "ollama", timeout: Optional[float] = None,
                    **kw: Any) -> Dict[str, Any]:
        """As :meth:`Client.embed`."""
        payload = C.embed_payload(model, input,
                                  **{k: kw.pop(k) for k in ("truncate", "options", "keep_alive",
                                                      "dimensions")
                                     if k in kw})
        return await self._infer(service, payload, model, False, timeout, C.embed_result, kw)

    async def _infer(self, service: str, payload: bytes, model: str, stream: bool,
                     timeout: Optional[float], decode: Callable[[bytes], Any],
                     req: Dict[str, Any]) -> Any:
        call = self._astart(service, payload, timeout, model=model, **req)
        s = AsyncStream(self, call, timeout, decode)
        if stream:
            return s
        last = None
        async for last in s:
            pass
        if last is None:
            raise error(-9, "empty inference reply")
        return last

    # -- directory, messages, topics --------------------------------------
    async def discover(self, service: Optional[str] = None,
                       timeout: Optional[float] = None) -> Dict[str, List[Dict[str, Any]]]:
        """As :meth:`Client.discover` (one round trip, see the class note)."""
        self._attach()
        d = POINTER(Directory)()
        rc = lib.ab_discover(self._handle(), b(service) if service else None,
                             C.ms(timeout, -1), byref(d))
        self._kick()
        check(rc, self.last_error)
        try:
            return C.directory_from_c(d.contents)
        finally:
            lib.ab_directory_destroy(byref(d))

    async def send(self, name: str, data: C.Data, *, receipt: bool = False, wait: bool = False,
                   timeout: Optional[float] = None) -> Union[int, bool]:
        """As :meth:`Client.send`."""
        self._attach()
        payload = data_bytes(data)
        flags = AB_SEND_RECEIPT if receipt else 0
        if wait:
            queued = c_int()
            rc = lib.ab_client_send_wait(self._handle(), b(name), payload, len(payload), flags,
                                         C.ms(timeout, -1), byref(queued))
            self._kick()
            check(rc, self.last_error)
            return bool(queued.value)
        mid = c_uint64()
        check(lib.ab_client_send(self._handle(), b(name), payload, len(payload), flags,
                                 byref(mid)), self.last_error)
        self._kick()
        return mid.value

    async def reply(self, message: C.Message, data: C.Data) -> None:
        """As :meth:`Client.reply`."""
        C.check_message(message)
        if message._c is None:  # None went to the library as NULL: INVALID
            raise error(-1, "not a received direct message")
        payload = data_bytes(data)
        check(lib.ab_client_reply(self._handle(), message._c, payload, len(payload)),
              self.last_error)
        self._kick()

    def _on_direct(self) -> None:
        w = self._recv_waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def recv(self, timeout: Optional[float] = None) -> C.Message:
        """The next direct message; TimeoutError after TIMEOUT seconds."""
        C.seconds(timeout)
        loop = self._attach()
        self._drain()
        while not self._direct:
            self._recv_waiter = loop.create_future()
            try:
                await asyncio.wait_for(self._recv_waiter, timeout)
            except asyncio.TimeoutError:
                raise TimeoutError("no message within %s s" % timeout) from None
            finally:
                self._recv_waiter = None
        return self._direct.popleft()

    async def publish(self, topic: str, data: C.Data) -> int:
        """As :meth:`Client.publish`."""
        self._attach()
        payload = data_bytes(data)
        mid = c_uint64()
        check(lib.ab_client_publish(self._handle(), b(topic), payload, len(payload),
                                    byref(mid)), self.last_error)
        self._kick()
        return mid.value

    async def subscribe(self, pattern: str,
                        callback: Optional[Callable[[C.Message], Any]] = None, *,
                        timeout: Optional[float] = 5.0) -> "AsyncSubscription":
        """As :meth:`Client.subscribe`; iterate with ``async for``. With
        CALLBACK, it runs on the loop for each message."""
        C.check_callable(callback, "callback")
        self._attach()
        rc = lib.ab_client_subscribe(self._handle(), b(pattern), self._confirm_ms(timeout))
        self._kick()
        check(rc, self.last_error)
        s = AsyncSubscription(self, pattern, callback)
        self._subs.append(s)
        return s


class AsyncStream:
    """Chunks of one streamed reply as an async iterator (bytes, or dicts
    for generate/chat). ``aclose()`` or task cancellation cancels it."""

    def __init__(self, client: AsyncClient, call: _Call, timeout: Optional[float],
                 decode: Optional[Callable[[bytes], Any]]) -> None:
        self._client = client
        self._call = call
        self._limit = client._limit(timeout)
        self._decode = decode

    @property
    def request_id(self) -> int:
        return self._call.id

    def __aiter__(self) -> "AsyncStream":
        return self

    async def __anext__(self) -> Any:
        call = self._call
        while not call.events:
            if call.final:
                call.raise_if_failed()
                raise StopAsyncIteration
            await self._client._next_event(call, self._limit)
        chunk = call.take()
        return self._decode(chunk) if self._decode else chunk

    async def aclose(self) -> None:
        """Cancels the request if it is still running."""
        self._client._cancel(self._call)
        self._client._kick()

    async def __aenter__(self) -> "AsyncStream":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    def __del__(self) -> None:
        # Abandoned mid-stream (a `break` out of `async for`): cancel it.
        try:
            if self._client._h and not self._call.final:
                self._client._cancel_on_loop(self._call)
        except Exception:  # a closed loop: the client is gone with it
            pass


class AsyncSubscription(Subscription):
    """Topic messages for one pattern as an async iterator."""

    async def get(self, timeout: Optional[float] = None) -> C.Message:  # type: ignore[override]
        client = self._client
        assert isinstance(client, AsyncClient)
        C.seconds(timeout)
        loop = client._attach()
        client._drain()
        while not self._queue:
            self._waiter = loop.create_future()
            try:
                await asyncio.wait_for(self._waiter, timeout)
            except asyncio.TimeoutError:
                raise TimeoutError("no message on %s within %s s" % (self.pattern, timeout)) \
                    from None
            finally:
                self._waiter = None
        return self._queue.popleft()

    def __aiter__(self) -> "AsyncSubscription":
        return self

    async def __anext__(self) -> C.Message:
        return await self.get()
