# scripts/lib/demo_stop.sh - sourced by scripts/demo and scripts/demo-*: how
# a demo stops the programs it started and judges what they left.
#
# A demo ran its programs, printed stats and said it was done whatever had
# happened to them: a worker that crashed or aborted, or a sanitizer report
# in a log (with binaries built by -DAB_SANITIZE=ON: AB_BUILD_DIR=build-asan)
# went unseen. demo_stop, the demo's EXIT trap, stops each PID in pids
# (SIGTERM, SIGKILL after 5 s), then fails the demo (status 1, saying which
# program and which log) when one of them had exited on its own with a
# non-zero status or died of a signal other than the SIGTERM it was sent,
# or when tools/lib/sanitizer.py finds a report in "$logs"/*.log.
#
# The caller sets pids (PIDs, in start order) and logs (the logs' folder),
# and may define demo_after_stop (run once they are stopped: demo-links
# deletes its network namespaces there).
# A PID the script waited for itself (its status is the script's business)
# is skipped.
demo_stop() {
  local rc=$? bad=0 pid st
  declare -A late=() what=()
  for pid in "${pids[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      late[$pid]=1
      what[$pid]=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-100 || true)
      kill -TERM "$pid" 2>/dev/null || true
    fi
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    st=0
    wait "$pid" 2>/dev/null || st=$?
    # 127: not a child any more (the script waited for it); 143: our SIGTERM.
    if [ "$st" = 127 ] || [ "$st" = 0 ] || { [ "$st" = 143 ] && [ -n "${late[$pid]:-}" ]; }; then
      continue
    fi
    if [ "$st" -gt 128 ]; then
      st="died of signal $((st - 128)) ($(kill -l "$((st - 128))" 2>/dev/null || echo '?'))"
    else
      st="exited with status $st"
    fi
    echo "demo: pid $pid (${what[$pid]:-gone before the end}) $st; logs in $logs" >&2
    bad=1
  done
  if [ -n "${logs:-}" ] && ! python3 tools/lib/sanitizer.py "$logs"/*.log >&2; then
    echo "demo: a sanitizer report in the logs in $logs (above)" >&2
    bad=1
  fi
  if declare -F demo_after_stop >/dev/null; then demo_after_stop; fi
  if [ "$bad" = 1 ] && [ "$rc" = 0 ]; then rc=1; fi
  exit "$rc"
}
