"""AsyncClient: driven by the library's fd in the event loop, no threads."""

import asyncio
import threading
import time

import pytest

import agentbus


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


def test_request_stream_and_errors(bus):
    bus.echo_worker("echo", "--chunks", "3")
    bus.echo_worker("slow", "--capacity", "1", "--delay-ms", "60000")  # only DEADLINE ends it
    bus.wait_workers("echo")
    bus.wait_workers("slow")

    async def main():
        async with agentbus.AsyncClient(bus.endpoint) as c:
            assert await c.request("echo", b"abcdef") == b"abcdef"
            assert [x async for x in c.stream("echo", b"abcdef")] == [b"ab", b"cd", b"ef"]
            with pytest.raises(agentbus.NoServiceError) as e:
                await c.request("missing", b"x", timeout=2)
            assert "missing" in e.value.text
            with pytest.raises(agentbus.DeadlineError):
                await c.request("slow", b"x", timeout=0.2)
            d = await c.discover("echo")
            assert d["services"][0]["workers"] == 1

    run(main())


def test_thousand_concurrent_requests_one_thread(bus):
    bus.echo_worker("echo", "--capacity", "64")
    bus.wait_workers("echo")

    async def main():
        async with agentbus.AsyncClient(bus.endpoint) as c:
            threads = threading.active_count()
            t0 = time.monotonic()
            replies = await asyncio.gather(*(c.request("echo", b"%d" % i, timeout=30)
                                             for i in range(1000)))
            elapsed = time.monotonic() - t0
            assert replies == [b"%d" % i for i in range(1000)]
            assert threading.active_count() == threads  # no thread per request
            assert c.pending == 0
            return elapsed

    elapsed = run(main())
    print("1000 concurrent asyncio requests: %.3f s" % elapsed)


def test_task_cancel_cancels_request(bus):
    cancelled = threading.Event()
    started = threading.Event()

    async def held(job):
        started.set()
        try:
            await asyncio.sleep(600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    w = agentbus.Worker("held", held, endpoint=bus.endpoint)
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    try:
        bus.wait_workers("held")

        async def main():
            async with agentbus.AsyncClient(bus.endpoint) as c:
                task = asyncio.create_task(c.request("held", b"x", timeout=600))
                for _ in range(250):  # until the worker's handler holds it
                    await asyncio.sleep(0.02)
                    if started.is_set():
                        break
                assert started.is_set() and c.pending == 1
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                assert c.pending == 0
                # asyncio.wait_for's timeout cancels the same way
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(c.request("held", b"y", timeout=600), 0.3)
                assert c.pending == 0

        run(main())
        assert cancelled.wait(5), "the worker's task was not cancelled"
    finally:
        w.stop()
        t.join(10)
        w.close()


def test_pubsub_and_direct(bus):
    async def main():
        async with agentbus.AsyncClient(bus.endpoint, name="a1") as a, \
                agentbus.AsyncClient(bus.endpoint, name="a2") as b:
            sub = await b.subscribe("jobs.")
            await a.publish("jobs.new", b"j1")
            m = await sub.get(timeout=5)
            assert (m.topic, m.data) == ("jobs.new", b"j1")
            await a.send("a2", b"ping")
            m = await b.recv(timeout=5)
            assert (m.sender, m.data) == ("a1", b"ping")
            await b.reply(m, b"pong")
            r = await a.recv(timeout=5)
            assert (r.data, r.reply_to) == (b"pong", m.id)
            with pytest.raises(agentbus.TimeoutError):
                await a.recv(timeout=0.2)

    run(main())


def test_async_generate_stream(bus, sim):
    port = sim("--time-scale", "20", "--quiet")
    bus.procs.spawn("agentbus-worker", "--broker", bus.endpoint, "--backend", "ollama",
                    "--ollama-url", "http://127.0.0.1:%d" % port, "--heartbeat-ms", "200")
    bus.wait_workers("ollama")

    async def main():
        async with agentbus.AsyncClient(bus.endpoint) as c:
            chunks = [ch async for ch in await c.generate("sim-small", "hi", stream=True,
                                                          timeout=20)]
            assert chunks[-1]["done"] and len(chunks) > 2
            r = await c.chat("sim-small", [{"role": "user", "content": "hi"}], timeout=20)
            assert r["message"]["content"]
            e = await c.embed("sim-embed", "x", timeout=20)
            assert len(e["embeddings"]) == 1

    run(main())


def test_abandoned_stream_is_cancelled(bus):
    bus.echo_worker("slow", "--capacity", "1", "--delay-ms", "600000")
    bus.wait_workers("slow")

    async def main():
        async with agentbus.AsyncClient(bus.endpoint) as c:
            s = c.stream("slow", b"x", timeout=600)
            assert c.pending == 1
            del s  # dropped without aclose(): cancelled at the broker
            await asyncio.sleep(0.1)
            assert c.pending == 0

    run(main())


def test_closed_async_client_raises_stopped(bus):
    # The first call after close() raised StoppedError but left the client
    # attached to the loop; recv() and a subscription's get() then waited on
    # a closed handle: TimeoutError after their timeout, or forever.
    async def main():
        a = agentbus.AsyncClient(bus.endpoint)
        sub = await a.subscribe("news")
        await a.close()
        await a.close()  # idempotent
        for _ in range(2):
            for call in (lambda: a.request("echo", b"x", timeout=5),
                         lambda: a.recv(timeout=None),
                         lambda: sub.get(timeout=None),
                         lambda: a.send("someone", b"x")):
                with pytest.raises(agentbus.StoppedError):
                    await asyncio.wait_for(call(), 30)
    asyncio.run(main())


def test_stream_collected_on_another_thread(bus, monkeypatch):
    # An AsyncStream dropped on another thread (a collection runs on any
    # thread) cancelled its request there, inside the handle its loop
    # polls, and called the loop's call_soon from outside the loop (not
    # thread-safe: the loop was not woken). Now the cancel is handed to the
    # loop's thread.
    bus.echo_worker("slow", "--capacity", "1", "--delay-ms", "600000")
    bus.wait_workers("slow")
    lib = agentbus._lib.lib
    cancel = lib.ab_client_cancel
    callers = []

    def spy(*args):
        callers.append(threading.current_thread().name)
        return cancel(*args)
    monkeypatch.setattr(lib, "ab_client_cancel", spy)

    async def main():
        async with agentbus.AsyncClient(bus.endpoint) as c:
            asyncio.get_running_loop().set_debug(True)  # call_soon checks its thread
            holder = [c.stream("slow", b"x", timeout=600)]
            assert c.pending == 1
            t = threading.Thread(target=holder.clear, name="dropper", daemon=True)
            t.start()
            while t.is_alive():
                await asyncio.sleep(0.01)
            for _ in range(100):
                if c.pending == 0:
                    break
                await asyncio.sleep(0.01)
            assert c.pending == 0
            assert callers == [threading.current_thread().name], callers
            assert (await c.discover("slow"))["services"][0]["queue_depth"] == 0

    run(main())


def test_close_from_another_loop_is_refused(bus):
    """close() from another thread's loop raised nothing and freed the
    handle while its own loop polled it; now it is a RuntimeError, the
    client serves on, and a close handed to its loop works."""
    bus.echo_worker("echo")
    bus.wait_workers("echo")

    async def main():
        async with agentbus.AsyncClient(bus.endpoint) as c:
            assert await c.request("echo", b"a") == b"a"
            err = []
            t = threading.Thread(target=lambda: err.append(_close_elsewhere(c)))
            t.start()
            while t.is_alive():
                await asyncio.sleep(0.01)
            assert err and isinstance(err[0], RuntimeError), err
            assert await c.request("echo", b"b") == b"b"
            loop = asyncio.get_running_loop()
            t = threading.Thread(target=lambda: asyncio.run_coroutine_threadsafe(
                c.close(), loop).result(10))
            t.start()
            while t.is_alive():
                await asyncio.sleep(0.01)
            with pytest.raises(agentbus.StoppedError):
                await c.request("echo", b"c")

    run(main())


def _close_elsewhere(c):
    try:
        asyncio.run(c.close())
    except Exception as e:  # the error, or None when it closed
        return e
    return None
