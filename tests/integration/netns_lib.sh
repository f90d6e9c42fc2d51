# netns_lib.sh: sourced by the tests that need two hosts (links_netns.sh,
# hop_lz4_netns.sh). `ns_pair NAME TAG NET` makes namespaces $na and $nb
# joined by a veth pair, NET.1 in $na and NET.2 in $nb (NET: three octets),
# loopback up in both; a temp dir $tmp; the array pids, whose processes are
# stopped (by PID) with the namespaces removed on exit; and fail MSG, which
# prints MSG and the tails of $tmp/*.log and exits 1. Where namespaces
# cannot be made (no ip, no CAP_SYS_ADMIN) it exits 77: ctest's skip.
ns_pair() {
  ns_name=$1
  local tag=$2 net=$3 id=$$
  na=ab${tag}a$id nb=ab${tag}b$id va=ab${tag}va$id vb=ab${tag}vb$id
  if ! command -v ip >/dev/null || ! ip netns add "$na" 2>/dev/null; then
    echo "$ns_name: SKIPPED: cannot create network namespaces here (needs ip and CAP_SYS_ADMIN)"
    exit 77
  fi
  tmp=$(mktemp -d "/tmp/agentbus-$ns_name.XXXXXX")
  pids=()
  trap ns_cleanup EXIT
  ip netns add "$nb" || fail "netns $nb"
  ip link add "$va" type veth peer name "$vb" || fail "veth"
  ip link set "$va" netns "$na" && ip link set "$vb" netns "$nb" || fail "veth into namespaces"
  ip -n "$na" addr add "$net.1/24" dev "$va" && ip -n "$nb" addr add "$net.2/24" dev "$vb" ||
    fail "addresses"
  for n in "$na" "$nb"; do ip -n "$n" link set lo up; done
  ip -n "$na" link set "$va" up && ip -n "$nb" link set "$vb" up || fail "links up"
}

ns_cleanup() {
  local rc=$?
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  ip netns del "$na" 2>/dev/null
  ip netns del "$nb" 2>/dev/null
  # A sanitizer report in a log (the programs' exits included) fails the test.
  python3 "$(dirname "${BASH_SOURCE[0]}")/../../tools/lib/sanitizer.py" "$tmp"/*.log || rc=1
  rm -rf "$tmp"
  exit $rc
}

fail() {
  echo "$ns_name: FAILED: $*"
  for f in "$tmp"/*.log; do echo "--- $f"; tail -20 "$f"; done
  exit 1
}
