#!/usr/bin/env python3
"""ab-linkproxy: a userspace TCP proxy standing for the network between two
brokers in the link tests (this kernel has no netem).

usage: ab-linkproxy LISTEN_PORT [TARGET_HOST:]TARGET_PORT [DELAY_MS]

Listens on 127.0.0.1:LISTEN_PORT and joins each connection to
TARGET_HOST (default 127.0.0.1):TARGET_PORT, holding every chunk DELAY_MS
(default 0) each way.
Controlled by signals, so a test needs nothing but the proxy's PID:
  SIGUSR1  cut: close every connection, and each new one at once
  SIGUSR2  stall: keep the connections, deliver nothing either way
  SIGWINCH stall one way: deliver nothing toward the target (the dialing
           side still hears the target)
  SIGHUP   restore: deliver again (held bytes go on, in order), accept again
Prints "ready" once listening.
"""
import asyncio
import signal
import sys
import time


class Proxy:
    def __init__(self, host, target, delay_ms):
        self.host = host
        self.target = target
        self.delay = delay_ms / 1000.0
        self.cut = False
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.forward = asyncio.Event()  # toward the target: SIGWINCH clears it
        self.forward.set()
        self.writers = set()

    async def pump(self, reader, writer, queue):
        """Reads one direction into QUEUE with arrival times."""
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                await queue.put((time.monotonic(), data))
        except (ConnectionError, OSError):
            pass
        await queue.put((0, b""))

    async def deliver(self, queue, writer, forward=False):
        """Writes what QUEUE holds once its delay passed, unless stalled
        (FORWARD: toward the target, also stalled by SIGWINCH)."""
        try:
            while True:
                t, data = await queue.get()
                if not data:
                    break
                wait = t + self.delay - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self.flowing.wait()
                if forward:
                    await self.forward.wait()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        writer.close()

    async def handle(self, cr, cw):
        if self.cut:
            cw.close()
            return
        try:
            sr, sw = await asyncio.open_connection(self.host, self.target)
        except OSError:
            cw.close()
            return
        self.writers.update((cw, sw))
        q1, q2 = asyncio.Queue(), asyncio.Queue()
        await asyncio.gather(self.pump(cr, cw, q1), self.deliver(q1, sw, True),
                             self.pump(sr, sw, q2), self.deliver(q2, cw))
        self.writers.discard(cw)
        self.writers.discard(sw)

    def on_cut(self):
        self.cut = True
        for w in list(self.writers):
            w.transport.abort()
        self.writers.clear()

    def on_stall(self):
        self.flowing.clear()

    def on_stall_forward(self):
        self.forward.clear()

    def on_restore(self):
        self.cut = False
        self.flowing.set()
        self.forward.set()


async def main():
    if len(sys.argv) < 3:
        sys.stderr.write(__doc__)
        sys.exit(2)
    listen = int(sys.argv[1])
    host, _, port = sys.argv[2].rpartition(":")
    delay = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    p = Proxy(host or "127.0.0.1", int(port), delay)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, p.on_cut)
    loop.add_signal_handler(signal.SIGUSR2, p.on_stall)
    loop.add_signal_handler(signal.SIGWINCH, p.on_stall_forward)
    loop.add_signal_handler(signal.SIGHUP, p.on_restore)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    server = await asyncio.start_server(p.handle, "127.0.0.1", listen)
    print("ready", flush=True)
    async with server:
        await stop.wait()
    p.on_cut()


if __name__ == "__main__":
    asyncio.run(main())
