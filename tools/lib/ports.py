#!/usr/bin/env python3
"""Ports for the servers that tests, benches and scripts/demo-* start on
loopback: the Python twin of tools/lib/tl_port.c (same rule, change both
together). Standard library only.

A port is picked at random below the kernel's ephemeral range (10000 up to
the low end of /proc/sys/net/ipv4/ip_local_port_range, 32768 if unreadable;
the kernel's pick by a bind to port 0 if that leaves fewer than 1024), must
bind on 127.0.0.1 at the pick, and is never one this process gave before.
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
import random
import socket
import sys

_GIVEN = set()
_TRIES = 1000


def _ephemeral_low():
    """The low end of the kernel's ephemeral port range."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port():
    """A port bindable on 127.0.0.1 a moment ago and never returned before
    in this process. Another process may still take it before the caller
    binds. RuntimeError when none is found in 1000 tries."""
    lo = _ephemeral_low()
    rng = random.SystemRandom()
    for _ in range(_TRIES):
        want = rng.randrange(10000, lo) if lo > 11024 else 0
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", want))
            except OSError:
                continue
            port = s.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port
    raise RuntimeError("no free port in %d tries" % _TRIES)


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
