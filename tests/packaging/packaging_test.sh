#!/usr/bin/env bash
# The files for running agentbus as a service (docs/operations.md), as an
# operator meets them: installed by `cmake --install`, loaded by systemd,
# read by the broker, rendered by man, sourced by bash.
#
# Usage: packaging_test.sh CASE BIN_DIR SOURCE_DIR BUILD_DIR
# One ctest entry per CASE (tests/packaging/CMakeLists.txt). A tool a case
# needs that is missing is a failure, never a pass: scripts/setup installs
# them all.
set -euo pipefail
case_name=$1 bin=$2 src=$3 build=$4
tmp=$(mktemp -d "${TMPDIR:-/tmp}/ab-pkg.XXXXXX")
broker_pid=""
cleanup()
{
    if [[ -n $broker_pid ]]; then
        kill "$broker_pid" 2>/dev/null || true
        wait "$broker_pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

fail()
{
    echo "FAIL ($case_name): $*" >&2
    exit 1
}

need()
{
    command -v "$1" >/dev/null || fail "$1 not found (scripts/setup installs it)"
}

# The install prefix the build was configured with (the units name it).
prefix=$(sed -n 's/^CMAKE_INSTALL_PREFIX:PATH=//p' "$build/CMakeCache.txt")
unit_dir=$prefix/lib/systemd/system
stage=$tmp/stage

stage_install()
{
    DESTDIR=$stage cmake --install "$build" >"$tmp/install.log" 2>&1 ||
        fail "cmake --install failed: $(cat "$tmp/install.log")"
}

# The shipped units with ExecStart pointing into the staged install, so that
# systemd-analyze finds the programs; nothing else is changed.
staged_units()
{
    stage_install
    mkdir -p "$tmp/units"
    local u
    for u in agentbus-broker.service agentbus-worker@.service; do
        sed "s#^ExecStart=/#ExecStart=$stage/#" "$stage$unit_dir/$u" >"$tmp/units/$u"
    done
    # A template is verified through an instance of it.
    ln -s agentbus-worker@.service "$tmp/units/agentbus-worker@echo.service"
    export MANPATH=$stage$prefix/share/man
}

case_install()
{
    stage_install
    local f
    for f in bin/agentbus-broker bin/agentbus-worker bin/brokerctl \
        lib/systemd/system/agentbus-broker.service \
        lib/systemd/system/agentbus-worker@.service \
        bin/agentbus-gateway bin/ollama-sim \
        share/man/man1/agentbus-broker.1 share/man/man1/agentbus-worker.1 \
        share/man/man1/agentbus-gateway.1 \
        share/man/man1/brokerctl.1 share/man/man1/ollama-sim.1 \
        share/man/man1/agentbus-load.1 share/man/man1/agentbus-infer-load.1 \
        share/bash-completion/completions/brokerctl; do
        [[ -s $stage$prefix/$f ]] || fail "not installed: $prefix/$f"
    done
    local conf_dir
    conf_dir=$(sed -n 's#^ExecStart=[^ ]* --config \([^ ]*\)/broker.conf .*#\1#p' \
        "$stage$unit_dir/agentbus-broker.service")
    [[ -n $conf_dir ]] || fail "agentbus-broker.service names no --config"
    cmp -s "$src/etc/agentbus/broker.conf" "$stage$conf_dir/broker.conf" ||
        fail "$conf_dir/broker.conf is not the shipped file"
    cmp -s "$src/etc/agentbus/broker.conf" "$stage$conf_dir/broker.conf.dist" ||
        fail "$conf_dir/broker.conf.dist is not the shipped file"
    # Every program a unit starts is one that was installed.
    local exe
    for exe in $(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "$stage$unit_dir"/*.service); do
        [[ -x $stage$exe ]] || fail "a unit starts $exe, which was not installed"
    done
    # An operator's edited config survives a re-install.
    echo "# edited" >>"$stage$conf_dir/broker.conf"
    stage_install
    grep -q '^# edited' "$stage$conf_dir/broker.conf" ||
        fail "re-install overwrote an edited broker.conf"
}

# The documented uninstall (docs/operations.md): everything installed goes,
# except a broker.conf the operator edited, which is kept and said. `xargs
# rm < install_manifest.txt` deleted it with the rest.
case_uninstall()
{
    stage_install
    local conf
    conf=$stage$(sed -n 's#^ExecStart=[^ ]* --config \([^ ]*\) .*#\1#p' \
        "$stage$unit_dir/agentbus-broker.service")
    [[ -f $conf ]] || fail "not installed: $conf"
    echo "    bind = tcp://127.0.0.1:5599 # edited" >>"$conf"
    DESTDIR=$stage cmake --build "$build" --target uninstall >"$tmp/un.log" 2>&1 ||
        fail "uninstall failed: $(cat "$tmp/un.log")"
    [[ -f $conf ]] || fail "uninstall removed the edited $conf"
    grep -q "Keeping: $conf" "$tmp/un.log" || fail "uninstall did not say it kept $conf"
    local left
    left=$(find "$stage" -type f ! -path "$conf")
    [[ -z $left ]] || fail "uninstall left: $left"
    # Not edited: removed with the rest.
    rm -f "$conf"
    stage_install
    DESTDIR=$stage cmake --build "$build" --target uninstall >"$tmp/un.log" 2>&1 ||
        fail "uninstall failed: $(cat "$tmp/un.log")"
    left=$(find "$stage" -type f)
    [[ -z $left ]] || fail "uninstall left: $left"
}

case_systemd_verify()
{
    need systemd-analyze
    staged_units
    local out rc=0
    out=$(cd "$tmp/units" && systemd-analyze verify agentbus-broker.service \
        agentbus-worker@echo.service 2>&1) || rc=$?
    # An unknown key or value is only a warning to systemd: any output fails.
    [[ $rc -eq 0 && -z $out ]] || fail "systemd-analyze verify (rc $rc): $out"
}

# Exit 2 is a bad flag or config value: restarting repeats it every
# RestartSec until the start limit, so each unit says not to restart on it
# (docs/operations.md). systemd-analyze verify has checked the line's syntax.
case_systemd_restart()
{
    staged_units
    local u
    for u in agentbus-broker.service agentbus-worker@.service; do
        grep -q '^Restart=on-failure$' "$tmp/units/$u" || fail "$u: no Restart=on-failure"
        grep -q '^RestartPreventExitStatus=2$' "$tmp/units/$u" ||
            fail "$u: no RestartPreventExitStatus=2 (a bad config would restart in a loop)"
    done
}

case_systemd_security()
{
    need systemd-analyze
    staged_units
    local u line
    for u in agentbus-broker.service agentbus-worker@echo.service; do
        line=$(cd "$tmp/units" && systemd-analyze security --offline=true "$u" 2>&1 |
            grep 'Overall exposure level') || fail "systemd-analyze security $u gave no level"
        echo "$line"
        # systemd's ratings: OK, MEDIUM, EXPOSED, UNSAFE.
        [[ $line == *" OK "* ]] || fail "$u is not rated OK: $line"
    done
}

case_worker_key()
{
    # operations.md's drop-in that hands a worker unit its key (the unit's
    # dynamic user cannot read root's 0600 secret certificate; the docs gave
    # no way to give it one) is one systemd takes as written.
    need systemd-analyze
    staged_units
    local d=$tmp/units/agentbus-worker@echo.service.d out rc=0
    mkdir -p "$d"
    awk '/^```ini/ { on = 1; next } /^```/ { on = 0 } on' "$src/docs/operations.md" >"$d/key.conf"
    grep -q '^LoadCredential=key:' "$d/key.conf" ||
        fail "operations.md has no LoadCredential drop-in"
    grep -q '^Environment=AB_KEY=%d/key$' "$d/key.conf" ||
        fail "operations.md's drop-in does not point AB_KEY at the credential"
    out=$(cd "$tmp/units" && systemd-analyze verify agentbus-worker@echo.service 2>&1) || rc=$?
    [[ $rc -eq 0 && -z $out ]] || fail "systemd-analyze verify with the drop-in (rc $rc): $out"
    grep -q 'AB_KEY' "$stage$unit_dir/agentbus-worker@.service" ||
        fail "agentbus-worker@.service does not say how it gets a key"
}

case_man_pages()
{
    need groff
    need man
    local p page err conf ver
    for p in agentbus-broker agentbus-worker agentbus-gateway brokerctl ollama-sim \
        agentbus-load agentbus-infer-load; do
        page=$build/man/$p.1
        [[ -s $page ]] || fail "$page not generated (help2man missing? scripts/setup installs it)"
        # --version says "NAME VERSION" and exits 0; help2man puts it in the page.
        ver=$("$bin/$p" --version) || fail "$p --version exited $?"
        [[ $ver =~ ^$p\ [0-9]+\.[0-9]+\.[0-9]+$ ]] || fail "$p --version printed '$ver'"
        grep -q -F "$ver" "$page" || fail "$page lacks '$ver'"
        err=$(groff -man -Tutf8 -ww -z "$page" 2>&1)
        [[ -z $err ]] || fail "groff warns on $page: $err"
        err=$(MANWIDTH=80 man --warnings -l "$page" 2>&1 >/dev/null)
        [[ -z $err ]] || fail "man -l warns on $page: $err"
        MANWIDTH=80 man -l "$page" 2>/dev/null >"$tmp/page.txt"
        grep -q "^NAME" "$tmp/page.txt" || fail "$page renders no NAME"
        grep -q -- '--help' "$tmp/page.txt" || fail "$page lists no options"
        grep -q '^SEE ALSO' "$tmp/page.txt" || fail "$page has no SEE ALSO (etc/man)"
    done
    # The broker's page names the config file the unit reads.
    conf=$(sed -n 's#^ExecStart=[^ ]* --config \([^ ]*\) .*#\1#p' \
        "$build/systemd/agentbus-broker.service")
    MANWIDTH=200 man -l "$build/man/agentbus-broker.1" 2>/dev/null | grep -F "$conf" >/dev/null ||
        fail "agentbus-broker.1 does not name $conf"
    # Exit statuses and the environment a stranger looks up (the worker's
    # page named AB_BROKER only; neither said what its exit status means).
    for p in agentbus-broker agentbus-worker; do
        MANWIDTH=200 man -l "$build/man/$p.1" 2>/dev/null >"$tmp/page.txt"
        grep -q '^EXIT STATUS' "$tmp/page.txt" || fail "$p.1 has no EXIT STATUS"
        grep -q '^SIGNALS' "$tmp/page.txt" || fail "$p.1 has no SIGNALS"
    done
    MANWIDTH=200 man -l "$build/man/agentbus-worker.1" 2>/dev/null >"$tmp/page.txt"
    for v in AB_KEY AB_BROKER_KEY AB_BATCH OLLAMA_NUM_PARALLEL; do
        grep -q "^ *$v" "$tmp/page.txt" || fail "agentbus-worker.1 does not name $v"
    done
}

case_broker_conf_ready()
{
    need python3
    local port i
    port=$(python3 "$src/tools/lib/ports.py")
    # The shipped file as is; only the port is overridden (a flag wins).
    "$bin/agentbus-broker" --config "$src/etc/agentbus/broker.conf" \
        --bind "tcp://127.0.0.1:$port" 2>"$tmp/broker.log" &
    broker_pid=$!
    for ((i = 0; i < 100; i++)); do
        grep -q ' ready ' "$tmp/broker.log" && break
        kill -0 "$broker_pid" 2>/dev/null || fail "broker exited: $(cat "$tmp/broker.log")"
        sleep 0.1
    done
    grep -q ' ready ' "$tmp/broker.log" || fail "broker not ready in 10 s: $(cat "$tmp/broker.log")"
    "$bin/brokerctl" --broker "tcp://127.0.0.1:$port" stats >/dev/null ||
        fail "brokerctl stats failed against the broker started with broker.conf"
    kill -TERM "$broker_pid"
    wait "$broker_pid" || fail "broker exited $? on SIGTERM"
    broker_pid=""
}

# Keys of the shipped file, set or commented out ("    # key = value").
conf_keys()
{
    sed -n 's/^    \(# \)\{0,1\}\([a-z][a-z0-9-]*\) = .*/\2/p' "$src/etc/agentbus/broker.conf"
}

case_broker_conf_keys()
{
    local help key n=0
    help=$("$bin/agentbus-broker" --help)
    for key in $(conf_keys); do
        n=$((n + 1))
        grep -q -- "^  --$key " <<<"$help" || fail "key '$key' is not an option of agentbus-broker"
        grep -q "^| \`$key\` |" "$src/docs/configuration.md" ||
            fail "key '$key' is not documented in docs/configuration.md"
    done
    [[ $n -ge 10 ]] || fail "only $n keys found in broker.conf"
    echo "$n keys, all documented"
}

case_broker_conf_tab()
{
    # The file indented with tabs, as an editor may save it: refused with
    # exit 2 and a message naming the line and the cause.
    local line rc=0
    sed 's/^    /\t/' "$src/etc/agentbus/broker.conf" >"$tmp/tab.conf"
    line=$(grep -n -m1 -P '^\t[a-z]' "$tmp/tab.conf" | cut -d: -f1)
    "$bin/agentbus-broker" --config "$tmp/tab.conf" 2>"$tmp/err" || rc=$?
    [[ $rc -eq 2 ]] || fail "exit $rc, not 2, for a tab-indented file"
    grep -q "tab.conf line $line: indented with a tab" "$tmp/err" ||
        fail "no clear message: $(cat "$tmp/err")"
    # Two spaces instead of four: named too.
    sed 's/^    /  /' "$src/etc/agentbus/broker.conf" >"$tmp/two.conf"
    rc=0
    "$bin/agentbus-broker" --config "$tmp/two.conf" 2>"$tmp/err" || rc=$?
    [[ $rc -eq 2 ]] && grep -q "two.conf line [0-9]*: indented by 2 spaces" "$tmp/err" ||
        fail "2-space file: exit $rc, $(cat "$tmp/err")"
    # A missing file: the reason, not just "cannot read".
    rc=0
    "$bin/agentbus-broker" --config "$tmp/none.conf" 2>"$tmp/err" || rc=$?
    [[ $rc -eq 2 ]] && grep -q "none.conf': No such file or directory" "$tmp/err" ||
        fail "missing file: exit $rc, $(cat "$tmp/err")"
}

case_bash_completion()
{
    need bash
    # One clean shell for every case, as one session pressing TAB again and
    # again: the completion reads brokerctl's help texts once per shell
    # (about 20 runs of brokerctl); a shell per case made this case cost
    # 400 runs and pass its 60 s on a busy machine. Each line below is the
    # completions wanted, '|', then the command line, whose last word is
    # the one being completed. After a command, words are its arguments
    # (no command names); a command's own options, and the values of
    # options that take one, are read from the help texts ("--opt VALUE").
    cat >"$tmp/cases" <<'EOF'
stats|brokerctl st
watch workers|brokerctl w
send services stats sub|brokerctl s
--timeout-ms|brokerctl --tim
--json|brokerctl --broker tcp://127.0.0.1:5555 --js
stats|brokerctl --broker=tcp://127.0.0.1:5555 --timeout-ms 100 st
clear|brokerctl cache cl
l1 l2 l3|brokerctl cache clear --tier ""
load|brokerctl models lo
reload|brokerctl keys r
--json|brokerctl keys --js
--watch|brokerctl peers --wat
|brokerctl stats s
--priority|brokerctl request svc data --pri
--watch|brokerctl stats --wa
batch interactive normal|brokerctl generate --priority ""
admin agent|brokerctl keygen bob --role a
stats|brokerctl --key /dev/null --broker-key /dev/null st
|brokerctl --timeout-ms ""
/dev/null|brokerctl --key /dev/nu
EOF
    # The shell prints a line for each case that differs, then how many
    # cases it completed.
    cat >"$tmp/complete.sh" <<'EOF'
source "$1"
n=0
while IFS='|' read -r want words; do
    eval "set -- $words"
    COMP_WORDS=("$@") COMP_CWORD=$(($# - 1)) COMP_LINE="$*" COMPREPLY=()
    COMP_POINT=${#COMP_LINE}
    _brokerctl
    got=$(printf '%s\n' "${COMPREPLY[@]}" | sort | tr '\n' ' ')
    [[ $got == "$want " ]] || echo "completing '$words': got '$got', want '$want'"
    n=$((n + 1))
done <"$2"
echo "completed $n"
EOF
    local out want
    out=$(PATH="$bin:$PATH" bash --norc --noprofile "$tmp/complete.sh" \
        "$src/etc/bash-completion/brokerctl" "$tmp/cases")
    want="completed $(wc -l <"$tmp/cases")"
    [[ $out == "$want" ]] || fail "$out (want only '$want')"
    # Registered for brokerctl.
    PATH="$bin:$PATH" bash --norc --noprofile -c 'source "$1"; complete -p brokerctl' \
        _ "$src/etc/bash-completion/brokerctl" | grep -- '-F _brokerctl' >/dev/null ||
        fail "no completion registered for brokerctl"
}

"case_$case_name"
echo "PASS ($case_name)"
