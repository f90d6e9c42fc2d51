#!/usr/bin/env python3
"""tools/lib/ports.py, the Python twin of tl_free_port (unit_tools_lib checks
that one): 256 picks are distinct, bindable and below the kernel's ephemeral
range, where no outgoing connection takes them; the script form prints N
distinct ones and refuses a bad N. Standard library only."""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
LIB = os.path.join(HERE, "..", "..", "tools", "lib")
sys.path.insert(0, LIB)
import ports  # noqa: E402

FAILED = []


def check(cond, msg):
    print(("ok - " if cond else "FAIL - ") + msg)
    if not cond:
        FAILED.append(msg)


def ephemeral_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except OSError:
        return 32768


def main():
    lo = ephemeral_low()
    got = [ports.free_port() for _ in range(256)]
    check(len(set(got)) == 256, "256 picks distinct (%d distinct)" % len(set(got)))
    bad = [p for p in got if not 1 <= p <= 65535]
    check(not bad, "every pick a port (%s)" % bad[:5])
    if lo > 11024:
        out = [p for p in got if not 10000 <= p < lo]
        check(not out, "every pick in [10000, %d) (outside: %s)" % (lo, out[:5]))
    more = ports.free_ports(8)
    check(len(set(more)) == 8 and not set(more) & set(got),
          "free_ports(8): 8 distinct, none given before (%s)" % more)

    script = os.path.join(LIB, "ports.py")
    r = subprocess.run([sys.executable, script, "5"], capture_output=True, text=True)
    words = r.stdout.split()
    check(r.returncode == 0 and len(words) == 5 and len(set(words)) == 5 and
          all(w.isdigit() for w in words), "ports.py 5 prints 5 distinct ports (%r)" % r.stdout)
    r = subprocess.run([sys.executable, script], capture_output=True, text=True)
    check(r.returncode == 0 and r.stdout.strip().isdigit(), "ports.py prints one (%r)" % r.stdout)
    for arg in ("0", "x", "-1"):
        r = subprocess.run([sys.executable, script, arg], capture_output=True, text=True)
        check(r.returncode == 2 and not r.stdout and "usage" in r.stderr,
              "ports.py %s is a usage error (%d, %r)" % (arg, r.returncode, r.stderr))
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
