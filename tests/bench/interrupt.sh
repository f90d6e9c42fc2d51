#!/bin/sh
# agentbus-bench interrupted: SIGTERM or SIGINT in the middle of a run is
# exit 130 with "interrupted", every process it started is gone, and
# nothing it says blames the systems (before, the thread that took the
# signal stopped the children while the main thread went on measuring and
# printed "agentbus lost replies" or "requests failed"). Waits for states:
# a progress line of the measurement, then the children listed.
# Usage: interrupt.sh AGENTBUS-BENCH
bench=$1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail=0
for i in 1 2 3 4; do
    sig=TERM
    [ $((i % 2)) = 0 ] && sig=INT
    rm -f "$dir/out" "$dir/err" # not the last round's, before this one's opens
    "$bench" --seconds 0.5 --runs 16 --window 32 --targets off >"$dir/out" 2>"$dir/err" &
    pid=$!
    n=0 # until it measures: its children are all up then
    while ! grep -qs "run 1/" "$dir/err" && kill -0 $pid 2>/dev/null && [ $n -lt 600 ]; do
        sleep 0.1; n=$((n + 1))
    done
    kids=$(cat /proc/$pid/task/*/children 2>/dev/null)
    sleep 0.$i # into a measurement, at a different point each time
    kill -$sig $pid
    wait $pid
    st=$?
    echo "round $i: SIG$sig, exit $st, children: $(echo $kids | wc -w)"
    sed 's/^/  | /' "$dir/err" | tail -3
    [ $st = 130 ] || { echo "FAIL: exit $st, not 130"; fail=1; }
    grep -q "^agentbus-bench: interrupted" "$dir/err" || { echo "FAIL: no 'interrupted'"; fail=1; }
    if grep -q "lost\|failed" "$dir/err"; then echo "FAIL: blames the systems"; fail=1; fi
    [ -n "$kids" ] || { echo "FAIL: no children seen"; fail=1; }
    for k in $kids; do
        m=0 # reaped by the bench before it exits; PDEATHSIG at worst
        while kill -0 "$k" 2>/dev/null && [ $m -lt 50 ]; do sleep 0.1; m=$((m + 1)); done
        if kill -0 "$k" 2>/dev/null; then echo "FAIL: child $k still runs"; kill -9 "$k"; fail=1; fi
    done
done
exit $fail
