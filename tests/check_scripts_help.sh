#!/bin/sh
# scripts_help: the scripts a user runs by hand (scripts/build, setup and
# the three demos scripts/demo runs) answer --help with their head comment
# (exit 0) and refuse an argument they do not take (exit 2, why on stderr),
# in both cases before they build, install or start anything. --help was
# ignored by the demos and setup, which then built and ran it all, and
# taken by scripts/build for its BUILD_DIR. cmake, apt-get and sudo on
# PATH are stubs that leave a mark if anything called them.
s=${1:?usage: check_scripts_help.sh SCRIPTS_DIR}
d=$(mktemp -d) || exit 1
trap 'rm -rf "$d"' EXIT
for tool in cmake apt-get sudo dpkg; do
  printf '#!/bin/sh\ntouch %s/ran-%s; exit 1\n' "$d" "$tool" >"$d/$tool"
  chmod +x "$d/$tool"
done
bad=0
for name in build setup demo-gateway demo-links demo-ollama; do
  out=$(PATH=$d:$PATH timeout 20 bash "$s/$name" --help 2>"$d/err"); st=$?
  if [ $st != 0 ] || [ -z "$out" ] || [ -s "$d/err" ]; then
    echo "$name --help: exit $st, stdout '$(echo "$out" | head -1)', stderr '$(head -1 "$d/err")'"
    bad=1
  fi
  PATH=$d:$PATH timeout 20 bash "$s/$name" --bogus >/dev/null 2>"$d/err"; st=$?
  if [ $st != 2 ] || [ ! -s "$d/err" ]; then
    echo "$name --bogus: exit $st, stderr '$(head -1 "$d/err")'"
    bad=1
  fi
done
if ls "$d"/ran-* >/dev/null 2>&1; then
  echo "something ran: $(cd "$d" && ls ran-*)"
  bad=1
fi
[ $bad = 0 ] && echo "scripts_help: ok"
exit $bad
