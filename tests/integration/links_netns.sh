#!/usr/bin/env bash
# links_netns.sh BIN_DIR: two brokers in two network namespaces joined by a
# veth pair (issue 15), the link through ab-linkproxy adding 50 ms each way.
# Agents (brokerctl, agentbus-load) on A's side, the echo worker on B's:
# requests complete over the link; the link is cut under load and restored:
# every request answered (agentbus-load checks each reply), the directory
# repaired. Exits 77 (ctest: skipped) with a message where namespaces cannot
# be made (no CAP_SYS_ADMIN, no ip).
set -uo pipefail
bin=$1
. "$(dirname "$0")/netns_lib.sh"
ns_pair links_netns n 10.77.0

mkdir -p "$tmp/certs" "$tmp/ka" "$tmp/kb"
for k in a b; do "$bin/brokerctl" keygen "$k" --role peer --names "${k^^}" --out "$tmp/certs" >/dev/null; done
"$bin/brokerctl" keygen admin --role admin --out "$tmp/certs" >/dev/null
cp "$tmp/certs/b.key" "$tmp/certs/admin.key" "$tmp/ka/"
cp "$tmp/certs/a.key" "$tmp/certs/admin.key" "$tmp/kb/"
export AB_KEY="$tmp/certs/admin.key_secret"

ip netns exec "$nb" "$bin/agentbus-broker" --auth curve --name B --bind tcp://10.77.0.2:5601 \
  --broker-cert "$tmp/certs/b.key" --keys-dir "$tmp/kb" --link-heartbeat-ms 100 >"$tmp/b.log" 2>&1 &
pids+=($!)
ip netns exec "$na" "$bin/ab-linkproxy" 5700 10.77.0.2:5601 50 >"$tmp/proxy.log" 2>&1 &
proxy=$!
pids+=($proxy)
ip netns exec "$na" "$bin/agentbus-broker" --auth curve --name A --bind tcp://127.0.0.1:5600 \
  --broker-cert "$tmp/certs/a.key" --keys-dir "$tmp/ka" --link-heartbeat-ms 100 \
  --peer "tcp://127.0.0.1:5700#$tmp/certs/b.key" >"$tmp/a.log" 2>&1 &
pids+=($!)
AB_BROKER_KEY="$tmp/certs/b.key" ip netns exec "$nb" "$bin/agentbus-worker" --broker tcp://10.77.0.2:5601 \
  --backend echo --capacity 16 >"$tmp/w.log" 2>&1 &
pids+=($!)
ctl() { AB_BROKER_KEY="$tmp/certs/a.key" ip netns exec "$na" "$bin/brokerctl" --broker tcp://127.0.0.1:5600 "$@"; }
state() { ctl --timeout-ms 1000 peers --json 2>/dev/null | grep -o '"state": *"[a-z]*"' | head -1; }
wait_for() { # wait_for SECONDS CMD...: until CMD succeeds
  local end=$((SECONDS + $1))
  shift
  until "$@"; do [ $SECONDS -lt $end ] || return 1; sleep 0.1; done
}
up() { state | grep '"up"' >/dev/null; }
down() { ! up; }
serves() { ctl --timeout-ms 3000 request echo across >/dev/null 2>&1; }

wait_for 60 serves || fail "A never reached B's echo over the link"
out=$(ctl request echo "across namespaces") || fail "request"
[ "$out" = "across namespaces" ] || fail "reply '$out'"
echo "links_netns: request across the veth pair and the proxy (50 ms) answered"

# (Processes are started by ip netns exec itself, which execs them: $! is
# their PID, so signals reach them.)
# Load from A's side; the link is cut under it and restored.
AB_BROKER_KEY="$tmp/certs/a.key" ip netns exec "$na" "$bin/agentbus-load" --broker tcp://127.0.0.1:5600 \
  --agents 4 --window 4 --seconds 8 >"$tmp/load.log" 2>&1 &
load=$!
sleep 2
kill -USR1 "$proxy"
wait_for 30 down || fail "A did not see the link down"
kill -HUP "$proxy"
wait_for 30 up || fail "the link did not come back"
wait "$load"
rc=$?
cat "$tmp/load.log"
[ $rc -eq 0 ] || fail "agentbus-load: failed or mismatched requests"
wait_for 30 serves || fail "directory not repaired"
ctl peers
echo "links_netns: cut under load and restored: every request answered, directory repaired"
