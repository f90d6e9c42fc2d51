#!/usr/bin/env bash
# bench/links_bench.sh: what a broker link costs (docs/bench.md, "Broker
# links"). Two brokers with --auth curve on loopback, two echo workers on
# the second; agentbus-load runs the same load against the second broker
# directly (one broker) and against the first (every request forwarded over
# the link), in the same run, and prints both and their ratio.
#   bench/links_bench.sh [BUILD_DIR]   env: SECS (default 5), AGENTS (8), WINDOW (16)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-build}
secs=${SECS:-5}
agents=${AGENTS:-8}
window=${WINDOW:-16}
free_port() { python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }
pa=$(free_port)
pb=$(free_port)
dir=$(mktemp -d /tmp/agentbus-links-bench.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT
mkdir -p "$dir/certs" "$dir/ka" "$dir/kb"
for k in a b; do "$bin/brokerctl" keygen "$k" --role peer --out "$dir/certs" >/dev/null; done
"$bin/brokerctl" keygen admin --role admin --out "$dir/certs" >/dev/null
cp "$dir/certs/b.key" "$dir/certs/admin.key" "$dir/ka/"
cp "$dir/certs/a.key" "$dir/certs/admin.key" "$dir/kb/"
export AB_KEY="$dir/certs/admin.key_secret"
"$bin/agentbus-broker" --auth curve --name b --bind "tcp://127.0.0.1:$pb" --log-level warn \
  --broker-cert "$dir/certs/b.key" --keys-dir "$dir/kb" >"$dir/b.log" 2>&1 &
pids+=($!)
"$bin/agentbus-broker" --auth curve --name a --bind "tcp://127.0.0.1:$pa" --log-level warn \
  --broker-cert "$dir/certs/a.key" --keys-dir "$dir/ka" \
  --peer "tcp://127.0.0.1:$pb#$dir/certs/b.key" >"$dir/a.log" 2>&1 &
pids+=($!)
for n in 1 2; do
  AB_BROKER_KEY="$dir/certs/b.key" "$bin/agentbus-worker" --broker "tcp://127.0.0.1:$pb" \
    --backend echo --capacity 64 --log-level warn >"$dir/w$n.log" 2>&1 &
  pids+=($!)
done
for _ in $(seq 100); do
  AB_BROKER_KEY="$dir/certs/a.key" "$bin/brokerctl" --broker "tcp://127.0.0.1:$pa" \
    --timeout-ms 500 request echo x >/dev/null 2>&1 && break
  sleep 0.1
done
run() { # run a|b AGENTS WINDOW -> "req/s p50 p99"
  local port=$pa
  [ "$1" = b ] && port=$pb
  AB_BROKER_KEY="$dir/certs/$1.key" "$bin/agentbus-load" --broker "tcp://127.0.0.1:$port" \
    --agents "$2" --window "$3" --seconds "$secs" --max-bytes 256 |
    awk '/req\/s/ { gsub(/[(]/, "", $0); for (i = 1; i <= NF; i++) if ($i == "req/s)") r = $(i - 1) }
         /latency/ { p50 = $4; p99 = $10 }
         END { print r, p50, p99 }'
}
read -r b_tput _ _ < <(run b "$agents" "$window")
read -r a_tput _ _ < <(run a "$agents" "$window")
read -r _ b_p50 b_p99 < <(run b 1 1)
read -r _ a_p50 a_p99 < <(run a 1 1)
echo "one broker:      $b_tput req/s ($agents agents x $window), lone request p50 $b_p50 us p99 $b_p99 us"
echo "through a link:  $a_tput req/s ($agents agents x $window), lone request p50 $a_p50 us p99 $a_p99 us"
if [ "${BARE:-1}" = 1 ]; then
  # agentbus-bench against each broker (its echo service) and the bare
  # ZeroMQ ROUTER->ROUTER hop over TCP loopback, in the same run.
  for who in b a; do
    port=$pa
    [ "$who" = b ] && port=$pb
    echo "--- agentbus-bench --broker ($([ $who = a ] && echo 'through the link' || echo 'one broker'))"
    AB_BROKER_KEY="$dir/certs/$who.key" "$bin/agentbus-bench" --broker "tcp://127.0.0.1:$port" \
      --only agentbus --runs 3 --seconds 1 --latency-count 2000 2>&1 | grep -E "msgs/s|lone"
  done
  echo "--- agentbus-bench --only bare (ZeroMQ hop over TCP loopback)"
  "$bin/agentbus-bench" --only bare --runs 3 --seconds 1 --latency-count 2000 2>&1 |
    grep -E "msgs/s|lone"
fi
awk -v a="$a_tput" -v b="$b_tput" -v ap="$a_p50" -v bp="$b_p50" 'BEGIN {
  printf "link/one broker: throughput %.2fx, lone p50 +%d us\n", a / b, ap - bp }'
