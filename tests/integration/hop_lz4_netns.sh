#!/usr/bin/env bash
# hop_lz4_netns.sh BIN_DIR: which hops lz4 compresses (issue 17). The broker
# and an echo worker run in namespace B; the worker connects through B's own
# veth address (the same address at both ends: this machine). A client in
# B over loopback sends 64 KiB of text: nothing is compressed. A client in
# namespace A, across the veth pair (another machine, as far as the broker
# can tell), sends the same: its request and the worker's reply both travel
# compressed. The clients use the Python binding (one connection each).
# Both replies must equal the text. Exits 77 (ctest: skipped) with a
# message where namespaces cannot be made (netns_lib.sh).
set -uo pipefail
bin=$1
src=$(cd "$(dirname "$0")/../.." && pwd)
# An ASan-built libagentbus loads into python only with the sanitizer
# runtimes first, leak checks as tests/python has them (lsan.supp there).
preload=()
if [[ "$(ldd "$bin/libagentbus.so" 2>/dev/null)" == *libasan* ]]; then
  preload=("LD_PRELOAD=$(cc -print-file-name=libasan.so):$(cc -print-file-name=libubsan.so)"
           "ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:malloc_context_size=6"
           "LSAN_OPTIONS=suppressions=$src/tests/python/lsan.supp")
fi
. "$(dirname "$0")/netns_lib.sh"
ns_pair hop_lz4_netns z 10.79.0

# (ip netns exec execs the program: $! is its PID, so signals reach it.)
ip netns exec "$nb" "$bin/agentbus-broker" --bind tcp://127.0.0.1:5610 --bind tcp://10.79.0.2:5611 \
  --insecure >"$tmp/broker.log" 2>&1 &
pids+=($!)
ip netns exec "$nb" "$bin/agentbus-worker" --broker tcp://10.79.0.2:5611 --backend echo \
  >"$tmp/worker.log" 2>&1 &
pids+=($!)
local_ctl() { ip netns exec "$nb" "$bin/brokerctl" --broker tcp://127.0.0.1:5610 "$@"; }
wait_for() { # wait_for SECONDS CMD...: until CMD succeeds
  local end=$((SECONDS + $1))
  shift
  until "$@"; do [ $SECONDS -lt $end ] || return 1; sleep 0.1; done
}
serves() { local_ctl --timeout-ms 3000 request echo ping >/dev/null 2>&1; }
wait_for 60 serves || fail "the echo worker never answered"

# Figures from the broker's stats: payloads lz4-compressed and their bytes.
compressed() {
  local_ctl --json stats | /usr/bin/python3 -c \
    'import json,sys; c=json.load(sys.stdin)["compression"]; print(c["compressed"], c["skipped"])'
}
text="$tmp/text"
for i in $(seq 1 2000); do echo "agent $i asks the planner about step $((i % 17)) of the plan"; done |
  head -c 65536 >"$text"
[ "$(stat -c %s "$text")" = 65536 ] || fail "could not write the text"

# Each client is one connection (the Python binding) that asks a small
# request first: a client learns what the broker reads from its HELLO
# answer, which reaches it before that reply, and sends plain until then (a
# fresh brokerctl may send its one request before the answer is in).
ask() { # ask NAMESPACE ENDPOINT: ping, then the text; both replies checked
  ip netns exec "$1" env AGENTBUS_LIB="$bin/libagentbus.so" PYTHONPATH="$src/python" \
    "${preload[@]}" /usr/bin/python3 - "$2" "$text" <<'PY'
import sys, agentbus
text = open(sys.argv[2], "rb").read()
with agentbus.Client(sys.argv[1], timeout=20) as c:
    assert c.request("echo", b"ping") == b"ping", "ping"
    assert c.request("echo", text) == text, "the reply differs from the text"
PY
}
before=$(compressed) || fail "stats"
ask "$nb" tcp://127.0.0.1:5610 || fail "local requests"
after=$(compressed) || fail "stats"
echo "hop_lz4_netns: loopback client: compressed/skipped before '$before', after '$after'"
[ "$before" = "$after" ] || fail "a loopback request or its reply was compressed ($before -> $after)"

ask "$na" tcp://10.79.0.2:5611 || fail "remote requests"
read -r c0 s0 <<<"$after"
read -r c1 s1 <<<"$(compressed)" || fail "stats"
echo "hop_lz4_netns: client across the veth pair: compressed $c0 -> $c1, skipped $s0 -> $s1"
[ $((c1 - c0)) -eq 2 ] || fail "expected its request and the reply compressed, saw $((c1 - c0))"
echo "hop_lz4_netns: lz4 only on the hop that leaves the machine"
