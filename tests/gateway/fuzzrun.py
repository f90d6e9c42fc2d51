"""What the gateway-side fuzzers (gwfuzz.py, backendfuzz.py) share: their
command line, stopping every process they started (by PID), and the
report of a run (the seed and the command that replays it, the processes'
log tails, the kept temp dir). Standard library only."""
import os
import subprocess
import sys
import time

import test_shed as ts


def parse(name, argv):
    """The command line of NAME.py: BIN_DIR [--seed N] [--seconds S] [--verbose].
    Returns (seed, seconds, verbose, replay) with ts.BIN set, after a line
    with the seed and REPLAY, the command that plays the run again; or None
    after the usage line (bad usage). Seed 0 or none: one from the clock."""
    usage = f"usage: {name}.py BIN_DIR [--seed N] [--seconds S] [--verbose]"
    args = list(argv)
    if not args or args[0].startswith("-"):
        print(usage, file=sys.stderr)
        return None
    ts.BIN = args.pop(0)
    seed, seconds, verbose = 0, 60.0, False
    try:
        while args:
            a = args.pop(0)
            if a == "--verbose":
                verbose = True
            elif a == "--seed":
                seed = int(args.pop(0))
            elif a == "--seconds":
                seconds = float(args.pop(0))
            else:
                raise ValueError(a)
    except (ValueError, IndexError):
        print(usage, file=sys.stderr)
        return None
    if not seed:
        seed = (time.time_ns() ^ (os.getpid() << 20)) % (1 << 31) or 1
    replay = f"{name}.py {ts.BIN} --seed {seed} --seconds {seconds:g}"
    ts.CASE = f"{name} seed {seed}"
    print(f"{name}: seed {seed} (replay: {replay})", flush=True)
    return seed, seconds, verbose, replay


def stop_all():
    """Stops every process the run started (ts.PROCS), a stopped one too."""
    ts.stop_all()


def report(name, fail, replay, tmp, seed):
    """Prints the outcome; returns the exit status. A failed run keeps TMP."""
    if fail:
        print(f"{name}: FAILED: {fail}\n{name}: replay: {replay}", file=sys.stderr)
        for _, log in ts.PROCS:
            try:
                with open(log) as f:
                    print(f"--- {log}\n{f.read()[-3000:]}", file=sys.stderr)
            except OSError:
                pass
        print(f"{name}: kept {tmp}", file=sys.stderr)
        return 1
    subprocess.run(["rm", "-rf", tmp], check=False)
    print(f"{name}: passed (seed {seed})")
    return 0
