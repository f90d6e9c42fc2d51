#!/usr/bin/env bash
# Agents on ollama-sim directly vs through agentbus-gateway, same run, cache
# off and on (issue 18, docs/bench.md "Gateway"). Starts a broker, the
# simulator, one Ollama worker and the gateway on free loopback ports, runs
# agentbus-gateway-bench, kills them by PID.
#   bench/gateway_bench.sh [BUILD_DIR] [bench options...]
# Environment: AB_GW_SCALE (simulator --time-scale, default 100),
# AB_GW_SLOTS (simulator slots = worker capacity, default 64),
# AB_GW_INTERLEAVE=N: instead of agentbus-gateway-bench, N calls to each of
# the simulator and the gateway interleaved one at a time
# (bench/gateway_interleave.py; docs/bench.md).
set -euo pipefail
build=$(cd "${1:-build}" && pwd)
shift || true
scale=${AB_GW_SCALE:-100}
slots=${AB_GW_SLOTS:-64}
pids=()
tmp=$(mktemp -d /tmp/ab-gw-bench.XXXXXX)
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
wait_http() { for _ in $(seq 1 200); do curl -sf -o /dev/null "$1" && return 0; sleep 0.05; done; return 1; }
# Three distinct ports for the bench's servers (tools/lib/ports.py).
read -r bport sport gport < <(python3 "$(dirname "$0")/../tools/lib/ports.py" 3)
ep=tcp://127.0.0.1:$bport
"$build/agentbus-broker" --bind "$ep" >"$tmp/broker.log" 2>&1 & pids+=($!)
"$build/ollama-sim" --port "$sport" --time-scale "$scale" --num-parallel "$slots" \
  --max-queue 4096 --quiet >"$tmp/sim.log" 2>&1 & pids+=($!)
wait_http "http://127.0.0.1:$sport/api/version"
"$build/agentbus-worker" --broker "$ep" --backend ollama --name w1 --capacity "$slots" \
  --ollama-url "http://127.0.0.1:$sport" --preload sim-small >"$tmp/worker.log" 2>&1 & pids+=($!)
"$build/agentbus-gateway" --listen "127.0.0.1:$gport" --broker "$ep" --quiet \
  >"$tmp/gateway.log" 2>&1 & pids+=($!)
wait_http "http://127.0.0.1:$gport/healthz"
for _ in $(seq 1 200); do
  curl -sf "http://127.0.0.1:$gport/api/tags" | grep sim-small >/dev/null && break
  sleep 0.05
done
# Load the model once, so neither run pays for it.
curl -sf "http://127.0.0.1:$sport/api/generate" -d '{"model":"sim-small","prompt":"warm","stream":false}' >/dev/null
echo "simulator --time-scale $scale, $slots slots; $(nproc) cores"
if [[ -n ${AB_GW_INTERLEAVE:-} ]]; then
  /usr/bin/python3 "$(dirname "$0")/gateway_interleave.py" "$AB_GW_INTERLEAVE" \
    "direct=http://127.0.0.1:$sport" "gw=http://127.0.0.1:$gport"
  exit
fi
"$build/agentbus-gateway-bench" --direct "http://127.0.0.1:$sport" \
  --gateway "http://127.0.0.1:$gport" "$@"
