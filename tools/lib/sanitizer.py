#!/usr/bin/env python3
"""Sanitizer reports in the logs of programs a test started. Standard
library only.

Under -DAB_SANITIZE=ON every program of the project is built with ASan and
UBSan, with abort_on_error=1 and -fno-sanitize-recover=undefined: an error
aborts the program, and LeakSanitizer reports at exit. A test that reads
only its replies misses both when they come from a program it stops at its
end (a leak, a use after free on the way out) or from one whose crash the
test's outcome does not depend on. So harnesses pass every log they kept
through here once their programs are stopped.

In Python (the tests add this folder to sys.path):
    import sanitizer
    found = sanitizer.reports(["broker.log", "worker.log"])  # [(path, tail)]
From a shell script (exits 1 and prints each report, 0 if none):
    python3 "$src/tools/lib/sanitizer.py" "$tmp"/*.log || status=1
"""
import re
import sys

# ASan and LSan: "==PID==ERROR: AddressSanitizer: ..." and
# "==PID==ERROR: LeakSanitizer: ..."; UBSan: "file.c:LINE:COL: runtime
# error: ...". Anchored on the shapes the runtimes print, so that a log
# quoting a client's text ("runtime error:") is not taken for one.
MARK = re.compile(r"==\d+==ERROR: (Address|Leak)Sanitizer|"
                  r"\.(c|h|cc|cpp):\d+:\d+: runtime error: ")


def reports(paths, tail=6000):
    """(path, the log from its first report on, at most TAIL characters)
    for each log in PATHS that has a sanitizer report; a log that cannot be
    read is skipped."""
    found = []
    for path in paths:
        try:
            with open(path, errors="replace") as f:
                text = f.read()
        except OSError:
            continue
        m = MARK.search(text)
        if m:
            found.append((path, text[m.start():m.start() + tail]))
    return found


def describe(found):
    """One text for an assertion or stderr."""
    return "\n".join("--- sanitizer report in %s:\n%s" % (p, t) for p, t in found)


def main(argv):
    found = reports(argv[1:])
    if found:
        print(describe(found), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
