#!/usr/bin/env bash
# scenario_heap.sh [BUILD_DIR] [N]: heap bytes in use (glibc malloc_stats, read
# with gdb) of agentbus-broker and of a bare ZeroMQ ROUTER, each with 10 and
# with 10 + N connections (N libagentbus agents for the broker, N raw DEALERs
# for the ROUTER, from agentbus-scenario's scale children); prints both per
# connection. Where the scale part of agentbus-scenario reads RSS (pages:
# moved by allocator caching and the machine), this counts the bytes
# allocated, so a change of a few hundred bytes a connection shows.
# Needs gdb (attaches to the processes it started). BROKER=path overrides
# the broker binary (e.g. an older build to compare).
set -u
B=${1:-build}
N=${2:-1000}
PER=250
SC=$B/agentbus-scenario
TMP=$(mktemp -d /tmp/ab-heap-XXXXXX)
kids=()
fds=()
trap 'for k in "${kids[@]}"; do kill $k 2>/dev/null; done; rm -rf "$TMP"' EXIT

s_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

# mode ep count prefix: children of <= PER connections each, waited for.
s_kids() {
    local mode=$1 ep=$2 count=$3 prefix=$4 i=0 fd
    while [ "$count" -gt 0 ]; do
        local n=$((count < PER ? count : PER)) f=$TMP/kid.$prefix.$i
        mkfifo "$f.in"
        ("$SC" --scale-child "$mode" "$ep" "$n" "$prefix$i" <"$f.in" >"$f.out" 2>/dev/null) &
        kids+=($!)
        exec {fd}>"$f.in"
        fds+=("$fd")
        count=$((count - n))
        i=$((i + 1))
    done
    for j in $(seq 0 $((i - 1))); do
        for _ in $(seq 1 600); do
            grep -q "ready\|fail" "$TMP/kid.$prefix.$j.out" 2>/dev/null && break
            sleep 0.2
        done
    done
}

# pid log: "bytes_in_use_all_arenas"
s_inuse() {
    : >"$2"
    gdb -p "$1" -batch -ex 'call (void)malloc_stats()' >/dev/null 2>&1
    sleep 0.3
    awk '/in use bytes/{last=$NF} END{print last}' "$2"
}

s_run() {
    local what=$1 ep log=$TMP/$1.err srv mode=ab
    ep=tcp://127.0.0.1:$(s_port)
    if [ "$what" = broker ]; then
        "${BROKER:-$B/agentbus-broker}" --bind "$ep" --log-level error 2>"$log" &
    else
        "$SC" --bare-router "$ep" 2>"$log" &
        mode=raw
    fi
    srv=$!
    sleep 1
    s_kids $mode "$ep" 10 "${what}a"
    sleep 2
    local h10 hn
    h10=$(s_inuse $srv "$log")
    s_kids $mode "$ep" "$N" "${what}b"
    sleep 3
    hn=$(s_inuse $srv "$log")
    echo "$what: heap in use $h10 B with 10 connections, $hn B with $((N + 10)): $(((hn - h10) / N)) B per connection"
    echo "$(((hn - h10) / N))" >"$TMP/$what.per"
    for fd in "${fds[@]}"; do eval "exec $fd>&-"; done
    fds=()
    for k in "${kids[@]}"; do kill $k 2>/dev/null; done
    wait "${kids[@]}" 2>/dev/null
    kids=()
    kill $srv
    wait $srv 2>/dev/null
}

s_run bare
s_run broker
echo "broker above bare ROUTER: $(($(cat "$TMP/broker.per") - $(cat "$TMP/bare.per"))) B per connection (target <= 2048)"
