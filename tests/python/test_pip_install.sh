#!/usr/bin/env bash
# `pip install ./python` works offline from the checkout (no compiler, no
# index): installs into a fresh venv that sees Debian's setuptools, then
# imports the installed package from elsewhere and makes one call into the
# library named by $AGENTBUS_LIB.
set -euo pipefail
py=$1 src=$2 venv=$3
rm -rf "$venv"
"$py" -m venv --system-site-packages "$venv"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$src" "$work/python" # pip builds in place: keep the checkout clean
"$venv/bin/python" -m pip install -q --no-index --no-build-isolation "$work/python"
cd "$work"
"$venv/bin/python" - <<'PY'
import os, agentbus
assert "site-packages" in agentbus.__file__, agentbus.__file__
assert agentbus.library_version() == "0.1.0"
import importlib.resources as r
assert (r.files("agentbus") / "py.typed").is_file()
print("installed", agentbus.__file__, "with", agentbus.LIB_PATH)
PY
# Without $AGENTBUS_LIB, a libagentbus.so placed beside the installed package
# is the one loaded (the lookup order of python/agentbus/_lib.py).
pkg=$("$venv/bin/python" -c 'import os, agentbus; print(os.path.dirname(agentbus.__file__))')
cp "$AGENTBUS_LIB" "$pkg/libagentbus.so"
env -u AGENTBUS_LIB "$venv/bin/python" -c '
import os, agentbus
assert agentbus.LIB_PATH == os.path.join(os.path.dirname(agentbus.__file__), "libagentbus.so"), agentbus.LIB_PATH
print("beside the package:", agentbus.LIB_PATH)'
