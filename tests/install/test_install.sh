#!/usr/bin/env bash
# Installs the build into a temporary prefix and builds tests/install/consumer.c
# against the installed tree only, twice: with pkg-config and with CMake's
# find_package(agentbus). Runs both programs. Fails when a header, the library,
# the .pc file or the package config is missing or wrong.
#   test_install.sh BUILD_DIR SOURCE_DIR C_COMPILER [EXTRA_C_FLAGS]
set -euo pipefail
build=$1 src=$2 cc=$3 flags=${4:-}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
prefix=$tmp/prefix

cmake --install "$build" --prefix "$prefix" >"$tmp/install.log"
for f in include/agentbus.h include/agentbus.pb-c.h; do
  [[ -f $prefix/$f ]] || { echo "not installed: $f"; exit 1; }
done
pc=$(find "$prefix" -name agentbus.pc)
libdir=$(dirname "$(find "$prefix" -name 'libagentbus.so' | head -n1)")
[[ -n $pc && -n $libdir ]] || { echo "agentbus.pc or libagentbus.so not installed"; exit 1; }

# 1. pkg-config: nothing from the source or build tree on the command line.
export PKG_CONFIG_PATH=$(dirname "$pc")
# shellcheck disable=SC2046,SC2086
"$cc" $flags -o "$tmp/consumer_pc" "$src/tests/install/consumer.c" \
  $(pkg-config --cflags --libs agentbus) -Wl,-rpath,"$libdir"
"$tmp/consumer_pc"

# 2. find_package(agentbus) from a project of its own.
cmake -S "$src/tests/install" -B "$tmp/cmake" -DCMAKE_PREFIX_PATH="$prefix" \
  -DCMAKE_C_COMPILER="$cc" -DCMAKE_C_FLAGS="$flags" >"$tmp/configure.log" \
  || { cat "$tmp/configure.log"; exit 1; }
cmake --build "$tmp/cmake" >"$tmp/build.log" || { cat "$tmp/build.log"; exit 1; }
"$tmp/cmake/consumer"
"$tmp/cmake/consumer_static"
echo "install: pkg-config and find_package consumers built and ran"
