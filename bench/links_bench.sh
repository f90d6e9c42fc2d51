#!/usr/bin/env bash
# bench/links_bench.sh: what a broker link costs (docs/bench.md, "Broker
# links"). In one run, on loopback:
#   one broker   agentbus-bench --broker B: B with --auth curve and two echo
#                workers (capacity 64 each)
#   link         agentbus-bench --broker A: A peers with B over CURVE, the
#                link going through ab-linkproxy-c with 0 ms added delay;
#                A has no worker, so every request crosses the link and its
#                reply comes back the same way
#   bare link    agentbus-link-echo: a bare ZeroMQ DEALER -> ROUTER echo
#                round trip through a second ab-linkproxy-c (same program,
#                same options): the link's own round trip
# Each figure: 64 B and 4 KiB requests/s with WINDOW in flight, lone 64 B
# round trip p50 and p99; RUNS runs, the three systems interleaved in each,
# medians printed with the ratios and the issue's targets.
#   bench/links_bench.sh [BUILD_DIR]
#   env: RUNS (3), SECS (2 per size), WINDOW (256), LAT (lone round trips, 2000),
#        PROXY (c: ab-linkproxy-c; py: the tests' python ab-linkproxy; none:
#        the link and the echo dialed directly), CAP (each echo worker's
#        capacity, 64), CREDIT (A's --link-credit-pct, the broker's default 200)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-build}
runs=${RUNS:-3}
secs=${SECS:-2}
window=${WINDOW:-256}
lat=${LAT:-2000}
proxy=${PROXY:-c}
# Five distinct ports for the bench's servers (tools/lib/ports.py).
read -r pa pb pp pe pq < <(python3 tools/lib/ports.py 5)
dir=$(mktemp -d /tmp/agentbus-links-bench.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT
# start_proxy LISTEN TARGET: the link's network; with PROXY=none LISTEN is TARGET
start_proxy() {
  : >"$dir/proxy-$1.log"
  case "$proxy" in
    c) "$bin/ab-linkproxy-c" "$1" "$2" 0 >"$dir/proxy-$1.log" 2>&1 & ;;
    py) /usr/bin/python3 tests/integration/linkproxy.py "$1" "$2" 0 >"$dir/proxy-$1.log" 2>&1 & ;;
    none) return 0 ;;
    *) echo "PROXY must be c, py or none" >&2; exit 2 ;;
  esac
  pids+=($!)
  for _ in $(seq 100); do grep -q ready "$dir/proxy-$1.log" && return 0; sleep 0.05; done
  echo "proxy on $1 did not start" >&2
  exit 1
}
[ "$proxy" = none ] && pp=$pb && pq=$pe
mkdir -p "$dir/certs" "$dir/ka" "$dir/kb"
for k in a b; do "$bin/brokerctl" keygen "$k" --role peer --out "$dir/certs" >/dev/null; done
"$bin/brokerctl" keygen admin --role admin --out "$dir/certs" >/dev/null
cp "$dir/certs/b.key" "$dir/certs/admin.key" "$dir/ka/"
cp "$dir/certs/a.key" "$dir/certs/admin.key" "$dir/kb/"
export AB_KEY="$dir/certs/admin.key_secret"
"$bin/agentbus-broker" --auth curve --name b --bind "tcp://127.0.0.1:$pb" --log-level warn \
  --broker-cert "$dir/certs/b.key" --keys-dir "$dir/kb" >"$dir/b.log" 2>&1 &
pids+=($!)
[ "$proxy" = none ] || start_proxy "$pp" "$pb"
"$bin/agentbus-broker" --auth curve --name a --bind "tcp://127.0.0.1:$pa" --log-level warn \
  --broker-cert "$dir/certs/a.key" --keys-dir "$dir/ka" \
  --peer "tcp://127.0.0.1:$pp#$dir/certs/b.key" --link-credit-pct "${CREDIT:-200}" \
  >"$dir/a.log" 2>&1 &
pids+=($!)
for n in 1 2; do
  AB_BROKER_KEY="$dir/certs/b.key" "$bin/agentbus-worker" --broker "tcp://127.0.0.1:$pb" \
    --backend echo --capacity "${CAP:-64}" --log-level warn >"$dir/w$n.log" 2>&1 &
  pids+=($!)
done
"$bin/agentbus-link-echo" serve "$pe" >"$dir/echo.log" 2>&1 &
pids+=($!)
[ "$proxy" = none ] || start_proxy "$pq" "$pe"
for _ in $(seq 100); do
  AB_BROKER_KEY="$dir/certs/a.key" "$bin/brokerctl" --broker "tcp://127.0.0.1:$pa" \
    --timeout-ms 500 request echo x >/dev/null 2>&1 && break
  sleep 0.1
done
# ab_bench a|b -> "rr64 rr4096 p50 p99" of agentbus-bench against that broker
ab_bench() {
  local port=$pa
  [ "$1" = b ] && port=$pb
  AB_BROKER_KEY="$dir/certs/$1.key" "$bin/agentbus-bench" --broker "tcp://127.0.0.1:$port" \
    --only agentbus --runs 1 --seconds "$secs" --window "$window" --latency-count "$lat" \
    --targets off --csv 2>/dev/null |
    awk -F, '$2 == "figure" { v[$3] = $7 }
      END { printf "%.0f %.0f %.0f %.0f\n", v["rr_small_msgs_s"], v["rr_large_msgs_s"],
                   v["lone_p50_us"], v["lone_p99_us"] }'
}
: >"$dir/results"
for run in $(seq "$runs"); do
  echo "one $(ab_bench b)" >>"$dir/results"
  echo "link $(ab_bench a)" >>"$dir/results"
  "$bin/agentbus-link-echo" rr "$pq" "$secs" "$window" "$lat" |
    awk '{ print "bare", $3, $5, $7, $9 }' >>"$dir/results"
  echo "run $run/$runs: $(tail -3 "$dir/results" | tr '\n' ' ')"
done
echo "proxy: $proxy, $runs runs x $secs s per size, window $window, $lat lone round trips," \
  "worker capacity ${CAP:-64} x 2, link-credit-pct ${CREDIT:-200}" \
  "(columns: 64 B req/s, 4 KiB req/s, lone p50 us, lone p99 us)"
cat "$dir/results"
awk -v runs="$runs" '
  function med(sys, c,   n, i, j, t, a) {
    n = 0
    for (i = 1; i <= NR; i++) if (s[i] == sys) a[++n] = v[i, c]
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  { s[NR] = $1; for (c = 2; c <= 5; c++) v[NR, c] = $c }
  END {
    split("one link bare", names, " ")
    printf "medians of %d runs:\n%-10s %12s %12s %10s %10s\n", runs, "", "64B req/s", "4KiB req/s", "p50 us", "p99 us"
    for (k = 1; k <= 3; k++) {
      for (c = 2; c <= 5; c++) m[names[k], c] = med(names[k], c)
      printf "%-10s %12d %12d %10d %10d\n", names[k], m[names[k], 2], m[names[k], 3], m[names[k], 4], m[names[k], 5]
    }
    # the ratios of each run (one, link and bare lines follow each other), and their medians
    n = 0
    for (i = 1; i + 2 <= NR; i += 3) { n++; r64[n] = v[i + 1, 2] / v[i, 2]; r4k[n] = v[i + 1, 3] / v[i, 3] }
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) {
      if (r64[j] < r64[i]) { t = r64[i]; r64[i] = r64[j]; r64[j] = t }
      if (r4k[j] < r4k[i]) { t = r4k[i]; r4k[i] = r4k[j]; r4k[j] = t }
    }
    printf "link/one broker per run, median: 64 B %.2fx, 4 KiB %.2fx\n",
      n % 2 ? r64[(n + 1) / 2] : (r64[n / 2] + r64[n / 2 + 1]) / 2,
      n % 2 ? r4k[(n + 1) / 2] : (r4k[n / 2] + r4k[n / 2 + 1]) / 2
    t64 = m["link", 2] / m["one", 2]; t4k = m["link", 3] / m["one", 3]
    add = m["link", 4] - m["bare", 4]; add1 = m["link", 4] - m["one", 4]
    printf "medians, link/one broker: 64 B %.2fx, 4 KiB %.2fx (target >= 0.5x: %s)\n", t64, t4k,
      (t64 >= 0.5 && t4k >= 0.5) ? "met" : "MISSED"
    printf "lone p50: link - bare link +%d us (target < 500 us: %s); link - one broker +%d us\n",
      add, add < 500 ? "met" : "MISSED", add1
  }' "$dir/results"
