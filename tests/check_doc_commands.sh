#!/usr/bin/env bash
# Every brokerctl, agentbus-worker, agentbus-broker, agentbus-gateway and
# ollama-sim command line in the code blocks of README.md and docs/*.md is
# taken as written by the current programs (ctest doc_commands): run against
# a live broker and echo worker, none may exit 2 (bad usage), so a flag that
# was renamed fails here. Lines continued with '\' are joined first, a
# trailing '&' dropped; a synopsis ("--port N [--config FILE] [options]")
# is no command and is skipped. Servers get free loopback ports
# (tools/lib/ports.py) for the ones the docs name.
# Commands that wait (listen, sub, watch, a worker, a broker) are ended by
# timeout; their exit then says nothing but "not a usage error". A program
# still running 10 s after its SIGINT is killed and fails the test, except in
# a sanitizer build: LeakSanitizer's exit-time stop-the-world sometimes hangs
# a process that was stopping normally (seen under load in CI).
#   check_doc_commands.sh BIN_DIR SOURCE_DIR
set -uo pipefail
bin=$1
src=$2
tmp=$(mktemp -d)
pids=()
asan=0
case "$(ldd "$bin/brokerctl" 2>/dev/null)" in *libasan*) asan=1 ;; esac
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT

# A broker on a port of its own choosing: its log names the one it bound.
"$bin/agentbus-broker" --bind 'tcp://127.0.0.1:*' --startup-grace-ms 0 >"$tmp/broker.log" 2>&1 &
pids+=($!)
ep=
for _ in $(seq 100); do
  ep=$(sed -n 's/.*listening on \(tcp:[^ ]*\).*/\1/p' "$tmp/broker.log" | head -1)
  [[ -n $ep ]] && break
  sleep 0.1
done
[[ -n $ep ]] || { echo "doc_commands: the broker did not start"; cat "$tmp/broker.log"; exit 1; }
export AB_BROKER=$ep
"$bin/agentbus-worker" >"$tmp/worker.log" 2>&1 &
pids+=($!)
sleep 0.5

# Command lines inside ``` blocks, continuation lines joined, comments cut.
awk '/^[ \t]*```/ { inblock = !inblock; next }
     inblock {
       line = (held != "" ? held " " : "") $0
       if (line ~ /\\[ \t]*$/) { sub(/\\[ \t]*$/, "", line); held = line; next }
       held = ""
       sub(/^[ \t]*(\$ )?/, "", line)
       if (line ~ /^([A-Z_]+=[^ ]+ )*(build\/)?(brokerctl|agentbus-worker|agentbus-broker|agentbus-gateway|ollama-sim)( |$)/)
         print FILENAME "\t" line
     }' "$src/README.md" "$src"/docs/*.md >"$tmp/lines"

# A free loopback port for a server the docs start on a fixed one.
port() { python3 "$src/tools/lib/ports.py"; }

# A key file the docs make with a shell line (not run here) is missing: the
# gateway and the worker refuse it as a bad value (exit 2, "'PATH' cannot
# be used" / "'PATH': not a readable secret certificate"). That is no usage
# error when PATH names a file (a '/' in it, or a .key or .key_secret name)
# that does not exist; a malformed key given inline, or an unknown option,
# still is.
missing_key() {
  local f found=0
  while IFS= read -r f; do
    [[ $f == */* || $f == *.key || $f == *.key_secret ]] || return 1
    [[ -e $f ]] && return 1
    found=1
  done < <(grep -E "key.*'[^']*'(:)? (cannot be used|not a readable)" "$tmp/out" |
           sed -n "s/^[^']*'\([^']*\)'.*/\1/p")
  [[ $found -eq 1 ]]
}

bad=0
n=0
while IFS=$'\t' read -r file line; do
  # A comment starts at '#' after a blank (a --peer's KEY follows '#').
  line=${line%%[[:space:]]#*}
  [[ $line == \#* ]] && continue
  line=${line%"${line##*[! ]}"}
  line=${line%&}
  [[ $line == *" [--"* || $line == *"[options]"* ]] && continue
  # Paths the docs put under /tmp (and /tmp itself, as in --out /tmp) go
  # under this run's own temp dir, removed at exit.
  line=${line//\/tmp\//$tmp\/}
  line=${line//\/tmp /$tmp }
  [[ $line == */tmp ]] && line=${line%/tmp}$tmp
  # An installed tree's config files are the source tree's etc/agentbus
  # (what `cmake --install` copies there): checked without installing.
  line=${line//\/usr\/local\/etc\/agentbus\//$src\/etc\/agentbus\/}
  # Words as the shell would split them; env assignments dropped.
  eval "set -- $line" 2>/dev/null || { echo "doc_commands: $file: cannot split: $line"; bad=1; continue; }
  while [[ $# -gt 0 && $1 == *=* && $1 != -* ]]; do shift; done
  prog=${1##*/}
  shift
  case $prog in
  brokerctl) timeout --foreground -k 10 -s INT 3 "$bin/brokerctl" --timeout-ms 2000 "$@" </dev/null >"$tmp/out" 2>&1 ;;
  agentbus-worker)
    timeout --foreground -k 10 -s INT 2 "$bin/agentbus-worker" "$@" --drain-ms 0 >"$tmp/out" 2>&1
    rc=$?
    [[ $rc -eq 2 ]] && missing_key && rc=0
    (exit $rc) ;;
  agentbus-broker)
    # Its own ports: a documented 5555 to bind becomes "any free port" (a
    # peer's 5555 stays: a peer's port is 1..65535).
    args=()
    prev=
    for a in "$@"; do
      [[ $prev == --bind || $a == --bind=* ]] && a=${a//:5555/:*}
      args+=("$a")
      prev=$a
    done
    # Without a --bind of its own, the default (5555 and ipc:///tmp/agentbus.ipc)
    # or a config file's (the shipped one says 5555) becomes any free port.
    [[ " ${args[*]} " != *" --bind"* ]] && args+=(--bind 'tcp://127.0.0.1:*')
    timeout --foreground -k 10 -s INT 1 "$bin/agentbus-broker" "${args[@]}" --drain-ms 0 >"$tmp/out" 2>&1
    rc=$?
    # A peer's certificate the docs copy with a shell line (not run here)
    # is missing: no usage error. A malformed KEY still is.
    [[ $rc -eq 2 ]] && grep -q "the key '$tmp/[^']*' is not a Z85 public key .*: No such file" \
      "$tmp/out" && rc=0
    (exit $rc) ;;
  agentbus-gateway | ollama-sim)
    # The HTTP port is one of its own (the gateway's default, 11434, is
    # Ollama's). A file the docs make with a shell line (not run here) is
    # missing: "cannot read" it is no usage error (options are all read
    # first, so an unknown one is still found).
    args=()
    prev=
    for a in "$@"; do
      [[ $prev == --listen ]] && a=127.0.0.1:$(port)
      [[ $a == --listen=* ]] && a=--listen=127.0.0.1:$(port)
      [[ $prev == --port ]] && a=$(port)
      [[ $a == --port=* ]] && a=--port=$(port)
      args+=("$a")
      prev=$a
    done
    if [[ $prog == agentbus-gateway ]]; then
      [[ " ${args[*]} " != *" --listen"* ]] && args+=(--listen "127.0.0.1:$(port)")
    else
      [[ " ${args[*]} " != *" --port"* ]] && args+=(--port "$(port)")
    fi
    timeout --foreground -k 10 -s INT 1 "$bin/$prog" "${args[@]}" >"$tmp/out" 2>&1
    rc=$?
    [[ $rc -eq 2 ]] && grep -q "cannot read $tmp/.*: No such file or directory" "$tmp/out" && rc=0
    [[ $rc -eq 2 ]] && missing_key && rc=0
    (exit $rc) ;;
  *)
    echo "doc_commands: $file: no rule for $prog: $line"
    bad=1 ;;
  esac
  rc=$?
  n=$((n + 1))
  if [[ $rc -eq 137 && $asan -eq 0 ]]; then
    echo "doc_commands: $file: still running 10 s after SIGINT, killed: $line"
    bad=1
  fi
  if [[ $rc -eq 2 ]]; then
    echo "doc_commands: $file: usage error (exit 2): $line"
    sed 's/^/    /' "$tmp/out" | head -5
    bad=1
  fi
done <"$tmp/lines"
echo "doc_commands: $n command lines checked"
[[ $n -gt 20 ]] || { echo "doc_commands: too few command lines found"; bad=1; }
exit $bad
