#!/usr/bin/env python3
"""Ports for the servers that tests, benches and scripts/demo-* start on
loopback: the Python twin of tools/lib/tl_port.c (same rule, change both
together). Standard library only.

A port is picked at random below the kernel's ephemeral range (10000 up to
the low end of /proc/sys/net/ipv4/ip_local_port_range, 32768 if unreadable;
the kernel's pick by a bind to port 0 if that leaves fewer than 1024), must
bind on 127.0.0.1 at the pick, is never one this process gave before, and
never one any process of this user picked in the last 120 s: picks are
shared, under flock(2), in ${TMPDIR:-/tmp}/agentbus-ports-UID ("PORT
UNIX_SECONDS" lines, the last 1024), as parallel tests picking the same
port before either bound it collided.
From the ephemeral range, where connect(2) takes its local ports and a bind
to port 0 its ports, a port just closed came back twice (two servers of one
test got the same one) and a parallel test's outgoing connection could take
it between the pick and the server's bind.

In Python (the tests add this folder to sys.path):
    import ports
    port = ports.free_port()
    a, b, c = ports.free_ports(3)
From a shell script, N distinct ports on one line:
    read -r a b c < <(python3 "$src/tools/lib/ports.py" 3)
"""
import fcntl
import os
import random
import socket
import sys
import time

_GIVEN = set()
_TRIES = 1000
_KEEP = 1024
_HOLD_S = 120


def _ephemeral_low():
    """The low end of the kernel's ephemeral port range."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _shared_path():
    return os.path.join(os.environ.get("TMPDIR") or "/tmp",
                        "agentbus-ports-%d" % os.getuid())


def _read_picks(f):
    """The shared picks, as (port, unix seconds) pairs, from open file F."""
    picks = []
    f.seek(0)
    for line in f.read().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit() and parts[1].lstrip("-").isdigit():
            picks.append((int(parts[0]), int(parts[1])))
    return picks[-_KEEP:]


def _pick(lo, rng, held):
    """One port by the rule, not in HELD, or None after 1000 tries."""
    for _ in range(_TRIES):
        want = rng.randrange(10000, lo) if lo > 11024 else 0
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", want))
            except OSError:
                continue
            port = s.getsockname()[1]
        if port not in _GIVEN and port not in held:
            return port
    return None


def free_port():
    """A port bindable on 127.0.0.1 a moment ago, never returned before in
    this process nor picked by another in the last 120 s. A process that
    picks without this rule may still take it before the caller binds.
    RuntimeError when none is found in 1000 tries."""
    lo = _ephemeral_low()
    rng = random.SystemRandom()
    now = int(time.time())
    try:
        f = os.fdopen(os.open(_shared_path(), os.O_RDWR | os.O_CREAT, 0o600), "r+")
    except OSError:
        f = None
    try:
        picks = []
        if f is not None:
            fcntl.flock(f, fcntl.LOCK_EX)
            picks = _read_picks(f)
        held = {p for p, at in picks if 0 <= now - at < _HOLD_S}
        port = _pick(lo, rng, held)
        if port is None:
            raise RuntimeError("no free port in %d tries" % _TRIES)
        _GIVEN.add(port)
        if f is not None:
            picks = (picks + [(port, now)])[-_KEEP:]
            f.seek(0)
            f.truncate()
            f.write("".join("%d %d\n" % pick for pick in picks))
            f.flush()
        return port
    finally:
        if f is not None:
            f.close()  # releases the lock


def free_ports(n):
    """N distinct free_port()s."""
    return [free_port() for _ in range(n)]


def main(argv):
    """`ports.py [N]`: prints N (default 1) distinct ports on one line."""
    try:
        n = int(argv[1]) if len(argv) > 1 else 1
        if n < 1 or len(argv) > 2:
            raise ValueError
    except ValueError:
        sys.stderr.write("usage: ports.py [N]  (N distinct free loopback ports, N >= 1)\n")
        return 2
    try:
        print(" ".join(str(p) for p in free_ports(n)))
    except RuntimeError as e:
        sys.stderr.write("ports.py: %s\n" % e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
