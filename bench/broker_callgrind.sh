#!/usr/bin/env bash
# broker_callgrind.sh BUILD_DIR on|off [SIZE]: the broker's instructions per
# request (docs/bench.md, issue 17). The broker runs under callgrind, an echo
# worker and agentbus-bench natively (3 s at SIZE bytes, default 64, batching
# on or off); requests are counted by the broker's calls of ab_req_new.
# Prints the instructions of the main thread (ab_broker_run) and of all of
# the broker's threads, per request. Needs valgrind; listens on 127.0.0.1.
set -uo pipefail
dir=${1:?usage: broker_callgrind.sh BUILD_DIR on|off [SIZE]}
mode=${2:?usage: broker_callgrind.sh BUILD_DIR on|off [SIZE]}
size=${3:-64}
case $mode in on) batch=1 ;; off) batch=0 ;; *) echo "batching: on or off" >&2; exit 2 ;; esac
command -v valgrind >/dev/null || { echo "broker_callgrind.sh: valgrind not found" >&2; exit 2; }
out=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$out"' EXIT
port=
for _ in $(seq 50); do
  p=$((20000 + RANDOM % 20000))
  ss -ltn "sport = :$p" | grep -q ":$p " || { port=$p; break; }
done
[ -n "$port" ] || { echo "broker_callgrind.sh: no free port" >&2; exit 1; }
ep=tcp://127.0.0.1:$port
export AB_BATCH=$batch
[ $batch = 0 ] && export AB_COMPRESS_THRESHOLD_BYTES=0
valgrind --tool=callgrind --callgrind-out-file="$out/cg" "$dir/agentbus-broker" --bind "$ep" \
  --log-level warn 2>"$out/valgrind.log" &
bpid=$!
pids+=($bpid)
"$dir/agentbus-worker" --broker "$ep" --backend echo --service echo --capacity 100000 \
  --log-level warn &
pids+=($!)
ready=
for _ in $(seq 300); do
  "$dir/brokerctl" --broker "$ep" --timeout-ms 1000 request echo x >/dev/null 2>&1 && { ready=1; break; }
  sleep 0.1
done
[ -n "$ready" ] || { echo "broker_callgrind.sh: the echo worker never answered" >&2; exit 1; }
nb=(); [ $batch = 0 ] && nb=(--batching off)
timeout 120 "$dir/agentbus-bench" --broker "$ep" "${nb[@]}" --only agentbus --runs 1 --seconds 3 \
  --latency-count 10 --size-small "$size" --size-large "$size" --targets off >/dev/null 2>&1
kill "${pids[1]}"
kill "$bpid"
wait "$bpid" 2>/dev/null
n=$(callgrind_annotate --tree=caller "$out/cg" 2>/dev/null | grep -B1 '\*  .*:ab_req_new \[' |
    head -1 | sed 's/.*(\([0-9,]*\)x).*/\1/' | tr -d ,)
main=$(callgrind_annotate --inclusive=yes "$out/cg" 2>/dev/null | grep 'broker.c:ab_broker_run' |
       head -1 | awk '{print $1}' | tr -d ,)
all=$(callgrind_annotate "$out/cg" 2>/dev/null | grep 'PROGRAM TOTALS' | awk '{print $1}' | tr -d ,)
[ -n "$n" ] && [ "$n" -gt 0 ] && [ -n "$main" ] || { echo "broker_callgrind.sh: no profile" >&2; exit 1; }
echo "batching $mode, $size B: $n requests; per request: main thread $((main / n)), all threads $((all / n))"
