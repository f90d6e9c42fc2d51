#!/usr/bin/env bash
# Drives agentbus-gateway with the official npm clients (issue 18).
#   run.sh BUILD_DIR MODE
# MODE: ollama-sim      the ollama client script against ollama-sim directly
#       ollama-gateway  the same script, unchanged, against the gateway
#       extra           gateway-only routes (show, ps, embeddings, /metrics, ...);
#                       --version says the version the other programs say
#       openai          the openai client script against the gateway's /v1
#       cache           one prompt through brokerctl, then the gateway's Ollama
#                       and OpenAI routes: one cache entry, the simulator sees
#                       one request; X-Agentbus-Cache: no-read goes through
#       apikeys         a broker with --auth curve, the gateway with --api-keys:
#                       tokens mapped to bus keys (apikeys.mjs), the broker sees
#                       each token's key; bad key files are refused at start
# Real processes on free loopback ports: broker, ollama-sim, two Ollama
# workers, the gateway; all killed by PID on exit. The npm packages are
# installed into a temp dir from the registry: if that fails, the test fails.
set -euo pipefail
build=$(cd "$1" && pwd)
mode=$2
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d /tmp/ab-gw-test.XXXXXX)
pids=()
cleanup() {
  local rc=$?
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  # A sanitizer report in a log (the programs' exits included) fails the test.
  python3 "$here/../../tools/lib/sanitizer.py" "$tmp"/*.log || rc=1
  if [[ ${AB_KEEP_TMP:-0} != 1 ]]; then rm -rf "$tmp"; fi
  exit $rc
}
trap cleanup EXIT
die() { echo "run.sh: $*" >&2; for f in "$tmp"/*.log; do echo "--- $f"; tail -20 "$f"; done; exit 1; }

command -v node >/dev/null || die "node is not installed (scripts/setup)"
command -v npm >/dev/null || die "npm is not installed (scripts/setup)"
(cd "$tmp" && npm init -y >/dev/null &&
  timeout 180 npm install --no-audit --no-fund --loglevel=error --fetch-retries=1 \
    --fetch-retry-mintimeout=1000 --fetch-retry-maxtimeout=5000 ollama@0.6 openai@6 >npm.log 2>&1) ||
  die "npm install of ollama and openai failed (registry unreachable?): $(tail -5 "$tmp/npm.log")"
cp "$here"/*.mjs "$tmp/"

wait_http() { # URL SECONDS
  for _ in $(seq 1 $(($2 * 20))); do
    curl -sf -o /dev/null "$1" && return 0
    sleep 0.05
  done
  return 1
}

# Three distinct ports for the test's servers (tools/lib/ports.py).
read -r bport sport gport < <(python3 "$here/../../tools/lib/ports.py" 3)
ep=tcp://127.0.0.1:$bport
wkey=(); gwopt=()
if [[ $mode == apikeys ]]; then
  # Keys: the gateway's own (agent), alice (agent, every service), bob (agent,
  # not the inference service), the workers', and an admin for brokerctl.
  kc() { "$build/brokerctl" keygen "$@" --out "$tmp" >/dev/null || die "keygen $*"; }
  kc gw; kc alice; kc bob --services 'embed-only'; kc ops --role admin
  kc mallory # never trusted by the broker
  kc gpu --role worker --services ollama --capacity 8
  mkdir -p "$tmp/data/keys" && chmod 700 "$tmp/data"
  cp "$tmp"/{gw,alice,bob,ops,gpu}.key "$tmp/data/keys/"
  "$build/agentbus-broker" --bind "$ep" --auth curve --data-dir "$tmp/data" \
    >"$tmp/broker.log" 2>&1 & pids+=($!)
  for _ in $(seq 1 200); do [[ -s $tmp/data/broker.key ]] && break; sleep 0.05; done
  [[ -s $tmp/data/broker.key ]] || die "the broker made no keypair"
  export AB_BROKER_KEY=$tmp/data/broker.key
  wkey=(--key "$tmp/gpu.key_secret")
  tok_full=tok-alice-$RANDOM$RANDOM$RANDOM; tok_lim=tok-bob-$RANDOM$RANDOM$RANDOM$RANDOM
  tok_own=tok-own-$RANDOM$RANDOM$RANDOM$RANDOM; tok_untrusted=tok-mallory-$RANDOM$RANDOM$RANDOM
  printf '# name token [key file]\nalice %s alice.key_secret\nbob %s %s/bob.key_secret\n\nown %s\nmallory %s mallory.key_secret\n' \
    "$tok_full" "$tok_lim" "$tmp" "$tok_own" "$tok_untrusted" >"$tmp/tokens"
  chmod 600 "$tmp/tokens"
  gwopt=(--key "$tmp/gw.key_secret" --api-keys "$tmp/tokens")
else
  "$build/agentbus-broker" --bind "$ep" >"$tmp/broker.log" 2>&1 & pids+=($!)
fi
# Eight slots, a fast clock: 174 clients finish in seconds.
"$build/ollama-sim" --port "$sport" --time-scale 20 --num-parallel 8 --quiet >"$tmp/sim.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$sport/api/version" 10 || die "ollama-sim did not come up"
for w in w1 w2; do
  "$build/agentbus-worker" --broker "$ep" --backend ollama --name "$w" --capacity 8 \
    --ollama-url "http://127.0.0.1:$sport" --heartbeat-ms 200 "${wkey[@]}" >"$tmp/$w.log" 2>&1 &
  pids+=($!)
done
"$build/agentbus-gateway" --listen "127.0.0.1:$gport" --broker "$ep" --max-body-bytes 65536 \
  --timeout-ms 60000 "${gwopt[@]}" >"$tmp/gateway.log" 2>&1 & gwpid=$!
pids+=($gwpid)
gw=http://127.0.0.1:$gport
wait_http "$gw/healthz" 10 || die "the gateway did not come up"
# Both workers registered with their models.
auth=()
[[ $mode == apikeys ]] && auth=(-H "Authorization: Bearer $tok_own")
for _ in $(seq 1 200); do
  n=$(curl -sf "${auth[@]}" "$gw/api/tags" | grep -o '"sim-small:latest"' | wc -l || true)
  [[ $n -ge 1 ]] && break
  sleep 0.05
done
[[ $n -ge 1 ]] || die "no worker registered sim-small"

sim_requests() {
  curl -sf "http://127.0.0.1:$sport/sim/stats" | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).requests))'
}
# The text of an Ollama NDJSON stream or an OpenAI SSE stream on stdin.
stream_text() {
  node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{let t="";for(let l of s.split("\n")){l=l.replace(/^data: /,"");if(!l||l==="[DONE]")continue;const o=JSON.parse(l);t+=o.response??(o.choices?o.choices[0]?.text??"":"")}console.log(t)})'
}
cache_check() {
  local prompt="the same prompt, three ways" r0 r1 r2 a b c
  r0=$(sim_requests)
  a=$("$build/brokerctl" --broker "$ep" generate sim-small "$prompt" --seed 7)
  r1=$(sim_requests)
  [[ $r1 == $((r0 + 1)) ]] || die "brokerctl: expected one simulator request, $r0 -> $r1"
  b=$(curl -sfN "$gw/api/generate" -d "{\"model\":\"sim-small\",\"prompt\":\"$prompt\",\"options\":{\"seed\":7}}" | stream_text)
  c=$(curl -sfN "$gw/v1/completions" -d "{\"model\":\"sim-small\",\"prompt\":\"$prompt\",\"seed\":7,\"stream\":true}" | stream_text)
  r2=$(sim_requests)
  [[ $r2 == "$r1" ]] || die "gateway: the cached prompt reached the simulator ($r1 -> $r2)"
  [[ -n $a && $a == "$b" && $a == "$c" ]] || die "texts differ: '$a' / '$b' / '$c'"
  echo "ok - brokerctl, /api/generate and /v1/completions share one cache entry"
  curl -sfN "$gw/api/generate" -H 'X-Agentbus-Cache: no-read' \
    -d "{\"model\":\"sim-small\",\"prompt\":\"$prompt\",\"options\":{\"seed\":7}}" >/dev/null
  [[ $(sim_requests) == $((r2 + 1)) ]] || die "X-Agentbus-Cache: no-read did not reach the simulator"
  echo "ok - X-Agentbus-Cache: no-read bypasses the cache"
}

# The logprobs of an Ollama NDJSON stream or one answer on stdin, in order,
# as JSON text (with their count first).
stream_logprobs() {
  node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{let a=[];for(const l of s.split("\n")){if(l)a=a.concat(JSON.parse(l).logprobs||[])}console.log(a.length+" "+JSON.stringify(a))})'
}
# logprobs, top_logprobs and context are in the cache key: a request with
# them never gets an answer cached without them (nor with other ones), and a
# hit answers the logprobs the first answer had, whole and streamed.
lp_cache_check() {
  local body='{"model":"sim-small","prompt":"cache my logprobs","options":{"seed":5,"num_predict":4}' lp r0 r1 a b c d
  lp=',"logprobs":true,"top_logprobs":2'
  r0=$(sim_requests)
  curl -sf "$gw/api/generate" -d "$body,\"stream\":false}" >/dev/null
  a=$(curl -sf "$gw/api/generate" -d "$body,\"stream\":false$lp}" | stream_logprobs)
  curl -sf "$gw/api/generate" -d "$body,\"stream\":false,\"logprobs\":true,\"top_logprobs\":3}" >/dev/null
  curl -sf "$gw/api/generate" -d "$body,\"stream\":false,\"context\":[1,2,3]}" >/dev/null
  r1=$(sim_requests)
  [[ $r1 == $((r0 + 4)) ]] || die "logprobs/top_logprobs/context not in the cache key: $r0 -> $r1 simulator requests (4 expected)"
  [[ ${a%% *} == 4 ]] || die "no logprobs in the answer: '$a'"
  b=$(curl -sf "$gw/api/generate" -d "$body,\"stream\":false$lp}" | stream_logprobs)
  [[ $(sim_requests) == "$r1" ]] || die "the same logprobs request was not answered from the cache"
  [[ $a == "$b" ]] || die "the cache hit's logprobs differ: '$a' / '$b'"
  c=$(curl -sfN "$gw/api/generate" -d "$body$lp}" | stream_logprobs)
  d=$(curl -sfN "$gw/api/generate" -d "$body$lp}" | stream_logprobs)
  [[ $(sim_requests) == $((r1 + 1)) && $c == "$d" && ${c%% *} == 4 ]] ||
    die "streamed: $r1 -> $(sim_requests) requests, '$c' / '$d'"
  echo "ok - logprobs, top_logprobs and context are in the cache key; a hit returns the logprobs, whole and streamed"
}

# The broker saw each token's own key: KEY's field FIELD in `brokerctl keys`.
key_field() {
  AB_KEY=$tmp/ops.key_secret "$build/brokerctl" --broker "$ep" keys --json |
    node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const j=JSON.parse(s);const k=(j.keys||[]).find(k=>k.name===process.argv[1]);console.log(k?k[process.argv[2]]:-1)})' "$1" "$2"
}
# A bad --api-keys file stops the gateway at start with a clear error.
bad_keys() { # WHAT EXPECTED-EXIT PATTERN FILE-CONTENT [MODE]
  local f=$tmp/bad-keys out st=0
  printf '%b' "$4" >"$f"; chmod "${5:-600}" "$f"
  out=$("$build/agentbus-gateway" --listen 127.0.0.1:0 --broker "$ep" --key "$tmp/gw.key_secret" \
    --api-keys "$f" --quiet 2>&1) || st=$?
  [[ $st == "$2" && $out =~ $3 ]] || die "$1: exit $st, '$out'"
  echo "ok - $1 refused: $out"
}
# HTTP status of GET /api/tags with token $1.
tags_status() { curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $1" "$gw/api/tags"; }
# Waits (up to 10 s) until the gateway's log holds pattern $1 $2 times.
wait_log() {
  for _ in $(seq 1 200); do
    [[ $(grep -c -- "$1" "$tmp/gateway.log" || true) -ge $2 ]] && return 0
    sleep 0.05
  done
  die "the gateway's log never said '$1' $2 times"
}
key_count() { curl -sf "$gw/metrics" | sed -n "s/^agentbus_gateway_key_requests_total{key=\"$1\"} //p"; }
# SIGHUP reloads the keys file: new tokens work and removed ones stop at
# once; counts carry over by name; a file that fails a check, or names a key
# file the gateway did not open at start, leaves the keys in use.
reload_check() {
  local tok_new=tok-carol-$RANDOM$RANDOM$RANDOM$RANDOM a0 a1
  [[ $(tags_status "$tok_new") == 401 ]] || die "a token not yet in the file was accepted"
  a0=$(key_count alice)
  printf 'alice %s alice.key_secret\ncarol %s\n' "$tok_full" "$tok_new" >"$tmp/tokens.next"
  chmod 600 "$tmp/tokens.next" && mv "$tmp/tokens.next" "$tmp/tokens"
  kill -HUP "$gwpid"
  wait_log "SIGHUP: 2 API keys loaded from" 1
  [[ $(tags_status "$tok_new") == 200 ]] || die "the reloaded token: $(tags_status "$tok_new")"
  [[ $(tags_status "$tok_own") == 401 ]] || die "a removed token still works"
  [[ $(tags_status "$tok_full") == 200 ]] || die "alice's token after the reload"
  a1=$(key_count alice)
  [[ -n $a0 && $a1 -eq $((a0 + 1)) && $(key_count carol) == 1 && -z $(key_count own) ]] ||
    die "metrics after the reload: alice $a0 -> $a1, carol '$(key_count carol)', own '$(key_count own)'"
  echo "ok - SIGHUP: a new token works, a removed one gets 401, alice's count carried over ($a0 -> $a1)"
  chmod 644 "$tmp/tokens"; kill -HUP "$gwpid"
  wait_log "reload refused, the keys in use stay: .*chmod 600" 1
  chmod 600 "$tmp/tokens"
  printf 'carol %s\nops %s ops.key_secret\n' "$tok_new" "$tok_full" >"$tmp/tokens"
  kill -HUP "$gwpid"
  wait_log "needs a restart" 1
  [[ $(tags_status "$tok_new") == 200 && $(tags_status "$tok_full") == 200 ]] ||
    die "the keys in use changed after refused reloads"
  kill -0 "$gwpid" || die "the gateway died on SIGHUP"
  echo "ok - SIGHUP with a file open to others, or a new key file: refused, the keys in use stay"
}
apikeys_check() {
  GW_URL=$gw TOKEN_FULL=$tok_full TOKEN_LIMITED=$tok_lim TOKEN_OWN=$tok_own \
    TOKEN_UNTRUSTED=$tok_untrusted node apikeys.mjs ||
    return 1
  local c d
  c=$(key_field alice connections); d=$(key_field bob denied)
  [[ $c -ge 1 && $d -ge 2 ]] || die "brokerctl keys: alice connections $c, bob denied $d"
  echo "ok - the broker sees alice's key connected and bob's key refused $d times"
  local out st=0
  out=$(AB_KEY=$tmp/mallory.key_secret "$build/brokerctl" --broker "$ep" stats 2>&1) || st=$?
  [[ $st == 1 && $out == *"DENIED: the broker refused the connection's handshake"* ]] ||
    die "brokerctl with an untrusted key: exit $st, '$out'"
  echo "ok - brokerctl with an untrusted key: $out"
  reload_check
  bad_keys "a keys file open to others" 2 'chmod 600' "a $tok_full\n" 644
  bad_keys "a short token" 2 'bad-keys:2: token' "# c\nshort abc\n"
  bad_keys "a repeated token" 2 'repeats' "a $tok_full\nb $tok_full\n"
  bad_keys "a missing key file" 2 'bad-keys:1: cannot use the key file' \
    "a $tok_full /nonexistent.key_secret\n"
}

# --version: "agentbus-gateway VERSION" on stdout, exit 0, the version
# brokerctl and agentbus-broker report (README: every program has it).
version_check() {
  local out st=0 want
  out=$("$build/agentbus-gateway" --version 2>&1) || st=$?
  want=$("$build/brokerctl" --version)
  [[ $st == 0 && $out == "agentbus-gateway ${want#brokerctl }" &&
    $("$build/agentbus-broker" --version) == "agentbus-broker ${want#brokerctl }" ]] ||
    die "agentbus-gateway --version: exit $st, '$out' (brokerctl says '$want')"
  "$build/agentbus-gateway" --help | grep -q -- '--version' || die "--help does not list --version"
  echo "ok - $out"
}

cd "$tmp"
case $mode in
  ollama-sim) OLLAMA_URL=http://127.0.0.1:$sport SIM_URL=http://127.0.0.1:$sport node ollama_client.mjs ;;
  ollama-gateway) OLLAMA_URL=$gw SIM_URL=http://127.0.0.1:$sport node ollama_client.mjs ;;
  extra) version_check && OLLAMA_URL=$gw SIM_URL=http://127.0.0.1:$sport node gateway_extra.mjs ;;
  openai) OPENAI_BASE_URL=$gw/v1 SIM_URL=http://127.0.0.1:$sport node openai_client.mjs ;;
  cache) cache_check && lp_cache_check ;;
  apikeys) apikeys_check ;;
  *) die "unknown mode $mode" ;;
esac || die "$mode: the client script failed"
# Every process is still up (nothing crashed under the clients).
for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null || die "process $p died"; done
# The gateway stops cleanly on SIGTERM, with every call ended (under ASan:
# no leak, no error, or its exit status says so).
kill -TERM "$gwpid"
st=0
wait "$gwpid" || st=$?
[[ $st == 0 ]] || die "the gateway exited with status $st after SIGTERM"
