#!/usr/bin/env bash
# cpu_share.sh DELAY SECONDS REGEX: after DELAY seconds, for SECONDS seconds,
# how much of the time each running process whose command line matches
# REGEX (grep -E) was on a CPU and how much it was runnable but waiting for
# one (the kernel's per-thread schedstat: run time, run-queue wait), in per
# cent of one CPU, per process and for its busiest thread. A thread that
# waits about as long as it runs needed a CPU the machine did not have:
# what throughput figures alone cannot tell from a slow program.
# Run it in the background next to the load, e.g. (docs/bench.md):
#   bench/cpu_share.sh 5.5 4 'agentbus-|ollama-sim' &
#   build/agentbus-scenario --systems gateway --rates 500 ...
# Processes that start or end inside the window are left out.
set -u
usage="usage: cpu_share.sh DELAY SECONDS REGEX"
case ${1:-} in -h|--help) sed -n '2,12s/^# \{0,1\}//p' "$0"; exit 0 ;; esac
[ $# -eq 3 ] || { echo "$usage" >&2; exit 2; }
delay=$1 secs=$2 re=$3
case $delay$secs in *[!0-9.]*) echo "$usage" >&2; exit 2 ;; esac
snap() {
  for p in $(ps -eo pid=,args= | grep -E -- "$re" | grep -v -E 'grep|cpu_share' |
             awk '{print $1}'); do
    local comm
    comm=$(cat /proc/"$p"/comm 2>/dev/null) || continue
    for t in /proc/"$p"/task/*; do
      read -r run wait _ < "$t"/schedstat 2>/dev/null || continue
      echo "$p $comm ${t##*/} $run $wait"
    done
  done | sort -k1,1n -k3,3n
}
sleep "$delay"
a=$(snap)
sleep "$secs"
b=$(snap)
printf "%-8s %-18s %8s %8s   %s\n" pid process run% wait% "busiest thread run% / wait%"
join -j1 <(echo "$a" | awk '{print $1"/"$3, $2, $4, $5}' | sort) \
         <(echo "$b" | awk '{print $1"/"$3, $4, $5}' | sort) |
awk -v s="$secs" '
  NF == 6 { split($1, id, "/"); p = id[1]; run = ($5 - $3) / (s * 1e7); wt = ($6 - $4) / (s * 1e7)
    name[p] = $2; r[p] += run; w[p] += wt
    if (run > top[p]) { top[p] = run; topw[p] = wt } }
  END {
    for (p in r)
      printf "%-8s %-18s %8.1f %8.1f   %.1f / %.1f\n", p, name[p], r[p], w[p], top[p], topw[p]
  }' | sort -k3,3nr
