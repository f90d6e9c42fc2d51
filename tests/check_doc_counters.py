#!/usr/bin/env python3
"""The counters docs/limits.md names for the broker's bounds, and those the
operator documents name in prose ("counted in `name`"), are the ones
`brokerctl --json stats` prints (ctest doc_counters).

limits.md says each row names its counter as `brokerctl --json stats` does;
it named some by their field in the protocol's Stats message instead
(`out_busy`, `slow_disconnects`, ...), which brokerctl prints as
`bounds.busy`, `bounds.disconnects`, ... A name here is a key at any depth
(`malformed`) or a dotted path from the top (`bounds.busy`), looked up in
the JSON of `brokerctl stats` and `brokerctl agents` from a live broker.

    check_doc_counters.py BIN_DIR SOURCE_DIR
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import time

# Named in the tables but not in those two documents, each for its reason.
ELSEWHERE = {
    "refused": "per client: brokerctl clients (a record only while a client is there)",
    "agentbus_clients": "a /metrics family",
    "dropped": "an L2/L3 tier's, present only with that tier configured",
    "skipped": "the L2 tier's, present only with --cache-redis",
}
# The broker's sections of limits.md (the library's, worker's and gateway's
# have counters of their own programs).
SECTIONS = ("One message", "One connection", "One client's requests", "Services and workers",
            "Direct messages and topics", "The inference cache")


def doc_names(path):
    """(section, name) for each backticked name in the last column of the
    tables under SECTIONS."""
    out, section = [], None
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("## "):
                section = line[3:].strip()
            if section not in SECTIONS or not line.startswith("|") or line.startswith("|---"):
                continue
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if cells[-1] == "counted as":
                continue
            for name in re.findall(r"`([^`]+)`", cells[-1]):
                if re.fullmatch(r"[a-z][a-z0-9_.]*", name):
                    out.append((section, name))
    return out


# Operator documents whose prose names counters: "counted in `name`",
# "counted as `name`" (an agentbus_* name is a /metrics family, not looked
# up here). links.md said `msgs_refused`, the protocol's field, which
# brokerctl prints as `direct.refused`.
PROSE_DOCS = ("operations.md", "links.md", "security.md", "cache.md", "health.md",
              "placement.md", "lanes.md")


def prose_names(path):
    """(where, name) for each counter named in PATH's prose."""
    with open(path, encoding="utf-8") as f:
        text = re.sub(r"\s+", " ", f.read())
    out = []
    for m in re.finditer(r"[Cc]ounted(?: [a-z]+){0,3}[ (]*(?:in|as) "
                         r"((?:`[a-z_.]+`(?:,? (?:and |or )?)?)+)", text):
        for name in re.findall(r"`([a-z_.]+)`", m.group(1)):
            if not name.startswith("agentbus_"):
                out.append(("'%s'" % m.group(0)[:60], name))
    return out


def paths(doc, prefix=""):
    """Every key of DOC as a leaf name and as a dotted path from the top."""
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield k
            yield prefix + k
            yield from paths(v, prefix + k + ".")
    elif isinstance(doc, list):
        for v in doc:
            yield from paths(v, prefix)


def main():
    bindir, src = sys.argv[1], sys.argv[2]
    ctl = os.path.join(bindir, "brokerctl")
    with tempfile.TemporaryDirectory() as tmp:
        log = open(os.path.join(tmp, "broker.log"), "w+")
        broker = subprocess.Popen([os.path.join(bindir, "agentbus-broker"), "--bind",
                                   "tcp://127.0.0.1:*", "--startup-grace-ms", "0"],
                                  stdout=log, stderr=subprocess.STDOUT)
        try:
            ep = None
            for _ in range(100):
                log.seek(0)
                m = re.search(r"listening on (tcp://\S+)", log.read())
                if m:
                    ep = m.group(1)
                    break
                time.sleep(0.1)
            if not ep:
                print("doc_counters: the broker did not start")
                return 1

            def run(*args):
                return subprocess.run([ctl, "--broker", ep, "--timeout-ms", "5000"] + list(args),
                                      capture_output=True, text=True, timeout=30, check=True)
            run("send", "doc-counters", "x")  # a mailbox: `brokerctl agents` has a row
            have = set(paths(json.loads(run("--json", "stats").stdout)))
            have |= set(paths(json.loads(run("--json", "agents").stdout)))
        finally:
            broker.terminate()
            broker.wait(timeout=30)
            log.close()
    names = [("docs/limits.md, " + s, n)
             for s, n in doc_names(os.path.join(src, "docs", "limits.md"))]
    for doc in PROSE_DOCS:
        names += [("docs/%s, %s" % (doc, w), n)
                  for w, n in prose_names(os.path.join(src, "docs", doc))]
    missing = [(s, n) for s, n in names if n not in have and n not in ELSEWHERE]
    for where, name in missing:
        print("%s: `%s` is not in brokerctl --json stats or agents" % (where, name))
    print("doc_counters: %d names checked, %d missing" % (len(names), len(missing)))
    return 1 if missing or not names else 0


if __name__ == "__main__":
    sys.exit(main())
