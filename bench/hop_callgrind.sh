#!/usr/bin/env bash
# hop_callgrind.sh BUILD_DIR on|off broker|worker|client [OUT_DIR]: the
# instructions per request of one of the three processes of a 64 B hop
# (docs/bench.md, issue 17, "the cross-thread frees"). That process runs
# under callgrind (all its threads: libzmq's I/O thread too), the other two
# natively: broker, echo worker, agentbus-bench (3 s, window 1,000,
# batching on or off). Requests are the broker's count (brokerctl stats).
# The broker's and the worker's counters are zeroed once the worker
# answers, so start-up is not counted; the client's start-up is taken out
# by a second run of 0.01 s. SIZE (env, default 64) sets the payload.
# For the broker it also prints its main thread alone (ab_broker_run,
# inclusive). OUT_DIR keeps the callgrind files for callgrind_annotate.
# Needs valgrind and python3; listens on 127.0.0.1.
set -uo pipefail
usage="usage: hop_callgrind.sh BUILD_DIR on|off broker|worker|client [OUT_DIR]"
dir=${1:?$usage}
mode=${2:?$usage}
who=${3:?$usage}
size=${SIZE:-64}
case $mode in on) batch=1 ;; off) batch=0 ;; *) echo "$usage" >&2; exit 2 ;; esac
case $who in broker|worker|client) ;; *) echo "$usage" >&2; exit 2 ;; esac
command -v valgrind >/dev/null || { echo "hop_callgrind.sh: valgrind not found" >&2; exit 2; }
tmp=$(mktemp -d)
out=${4:-$tmp}
mkdir -p "$out"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"' EXIT
port=
for _ in $(seq 50); do
  p=$((20000 + RANDOM % 20000))
  ss -ltn "sport = :$p" | grep -q ":$p " || { port=$p; break; }
done
[ -n "$port" ] || { echo "hop_callgrind.sh: no free port" >&2; exit 1; }
ep=tcp://127.0.0.1:$port
export AB_BATCH=$batch
[ $batch = 0 ] && export AB_COMPRESS_THRESHOLD_BYTES=0
# exec: $! is valgrind's pid, which callgrind_control and kill need.
vg() { exec valgrind --tool=callgrind --callgrind-out-file="$out/cg.$1" "${@:2}"; }
if [ $who = broker ]; then
  vg broker "$dir/agentbus-broker" --bind "$ep" --log-level warn 2>"$out/valgrind.log" &
else
  "$dir/agentbus-broker" --bind "$ep" --log-level warn &
fi
bpid=$!
pids+=($bpid)
wargs=(--broker "$ep" --backend echo --service echo --capacity 100000 --log-level warn)
if [ $who = worker ]; then
  vg worker "$dir/agentbus-worker" "${wargs[@]}" 2>"$out/valgrind.log" &
else
  "$dir/agentbus-worker" "${wargs[@]}" &
fi
wpid=$!
pids+=($wpid)
ready=
for _ in $(seq 300); do
  "$dir/brokerctl" --broker "$ep" --timeout-ms 1000 request echo x >/dev/null 2>&1 && { ready=1; break; }
  sleep 0.1
done
[ -n "$ready" ] && kill -0 $bpid 2>/dev/null ||
  { echo "hop_callgrind.sh: the echo worker never answered" >&2; exit 1; }
requests() {
  "$dir/brokerctl" --broker "$ep" stats --json |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["requests"])'
}
nb=(); [ $batch = 0 ] && nb=(--batching off)
bench() { # SECONDS [wrapper...]
  local s=$1; shift
  timeout 300 "$@" "$dir/agentbus-bench" --broker "$ep" "${nb[@]}" --only agentbus --runs 1 \
    --seconds "$s" --latency-count 10 --size-small "$size" --size-large "$size" --targets off \
    --nats off >/dev/null 2>&1
}
case $who in
  broker) callgrind_control -z $bpid >/dev/null 2>&1 ;;
  worker) callgrind_control -z $wpid >/dev/null 2>&1 ;;
esac
r0=$(requests)
if [ $who = client ]; then
  bench 0.01 valgrind --tool=callgrind --callgrind-out-file="$out/cg.short"
  r1=$(requests)
  bench 3 valgrind --tool=callgrind --callgrind-out-file="$out/cg.client"
else
  bench 3
  r1=$r0
fi
r2=$(requests)
kill $wpid; wait $wpid 2>/dev/null
kill $bpid; wait $bpid 2>/dev/null
total() { callgrind_annotate "$1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}'; }
all=$(total "$out/cg.$who")
n=$((r2 - r1))
if [ $who = client ]; then
  all=$((all - $(total "$out/cg.short")))
  n=$((n - (r1 - r0)))
fi
[ -n "$all" ] && [ "$n" -gt 0 ] || { echo "hop_callgrind.sh: no profile" >&2; exit 1; }
main=
if [ $who = broker ]; then
  main=$(callgrind_annotate --inclusive=yes "$out/cg.broker" 2>/dev/null |
         awk '/broker.c:ab_broker_run/ {gsub(",", "", $1); print $1; exit}')
  main=${main:+, main thread $((main / n))}
fi
echo "$who, batching $mode, $size B: $n requests; per request: $((all / n)) instructions (all threads)$main"
