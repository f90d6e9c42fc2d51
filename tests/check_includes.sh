#!/usr/bin/env bash
# The include graph of issue 12, checked on the sources (ctest include_graph):
#   - nothing outside broker/ includes a broker/ header;
#   - nothing outside client/ and broker/ includes common/ (or client/'s
#     private headers): tools/, worker/ and bench/ see the public agentbus.h
#     and its generated companion agentbus.pb-c.h only;
#   - common/ includes nothing from broker/ or client/;
#   - base/ (built into both common/ and tools/lib) includes only its own
#     headers and the C library's: no czmq, libzmq, protobuf or other
#     dependency, nothing of the layers above; anyone may include it;
#   - no header outside broker/ and common/ shares a name with one of
#     theirs, and none outside base/ with one of base/'s (a local cache.h
#     would shadow the broker's for a reader).
# tests/ may use internals and is not checked. Exit 1 listing every breach.
#   check_includes.sh SOURCE_DIR
set -euo pipefail
cd "$1"

names_in() { find "$@" -name '*.h' -printf '%f\n' 2>/dev/null | sort -u; }
broker_h=$(names_in broker)
common_h=$(names_in common)
client_h=$(names_in client)
base_h=$(names_in base)
# What base/ may include in <...>: the C library and POSIX, nothing else
# (malloc.h: glibc's mallopt, heap_tune.c).
libc_h=$'assert.h\nctype.h\nerrno.h\ninttypes.h\nlimits.h\nmalloc.h\nstdarg.h\nstdbool.h\nstddef.h
stdint.h\nstdio.h\nstdlib.h\nstring.h\nstrings.h\ntime.h\nunistd.h'
has() { grep -qxF -- "$2" <<<"$1"; }

bad=0
breach() { echo "include_graph: $1"; bad=1; }

while IFS= read -r -d '' f; do
  top=${f%%/*}
  dir=$(dirname "$f")
  while IFS= read -r inc; do
    [[ -n $inc ]] || continue
    [[ -f $dir/$inc ]] && continue # the file's own folder: local header
    base=${inc##*/}
    if [[ $top != broker ]] && { [[ $inc == broker/* ]] || has "$broker_h" "$base"; }; then
      breach "$f includes broker header \"$inc\""
    fi
    if [[ $top != broker && $top != client && $top != common ]] &&
       { [[ $inc == common/* ]] || has "$common_h" "$base"; }; then
      breach "$f includes common/ header \"$inc\" (use agentbus.h or tools/lib)"
    fi
    if [[ $top != client ]] && { [[ $inc == client/* ]] || has "$client_h" "$base"; }; then
      breach "$f includes client/ internal header \"$inc\""
    fi
    if [[ $top == base ]]; then
      breach "$f includes \"$inc\" from outside base/ (base/ uses the C library only)"
    fi
  done < <(sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"\([^"]*\)".*/\1/p' "$f")
  if [[ $top == base ]]; then
    while IFS= read -r sys; do
      [[ -n $sys ]] || continue
      has "$libc_h" "$sys" || breach "$f includes <$sys> (base/ uses the C library only)"
    done < <(sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*<\([^>]*\)>.*/\1/p' "$f")
  fi
done < <(find include client common broker base tools worker bench gateway -type f \
           \( -name '*.c' -o -name '*.h' \) -print0 2>/dev/null)

# Header names outside broker/ and common/ that shadow theirs, and outside
# base/ that shadow base/'s.
while IFS= read -r -d '' h; do
  base=${h##*/}
  if has "$broker_h" "$base" || has "$common_h" "$base"; then
    breach "$h has the name of a broker/ or common/ header"
  fi
done < <(find include client base tools worker bench gateway -type f -name '*.h' -print0 2>/dev/null)
while IFS= read -r -d '' h; do
  base=${h##*/}
  if has "$base_h" "$base"; then
    breach "$h has the name of a base/ header"
  fi
done < <(find include client common broker tools worker bench gateway -type f -name '*.h' \
           -print0 2>/dev/null)

if [[ $bad != 0 ]]; then
  exit 1
fi
echo "include_graph: ok"
