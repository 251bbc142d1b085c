#!/usr/bin/env bash
# Queries per second with the appliance's hardening on, against the build before it (issue
# #18), in the same run: NSD and Knot as imrs-init configures them (tests/examples/dnsconf.rs),
# each run twice per round, alternating:
#   plain     the daemon as root, no chroot, no packet filter (the build before issue #18);
#   hardened  the daemon under its own account (NSD also in its chroot) behind the init's
#             exact nftables ruleset (tests/examples/filterconf.rs: DNS untracked, policy drop);
#   privileges, filter   each of the two alone, to tell their costs apart.
# Every run has no_new_privs, as the init's supervisor sets it (through setpriv).
# The daemon runs in a network namespace answering on a service address (198.51.100.42) and a
# management address (192.0.2.10); dnsperf queries the service address from a second namespace
# over a veth pair, so every packet crosses the filter's hooks. Documentation addresses only,
# inside the two namespaces: the host's own network is never touched and nothing leaves it.
# Usage (root): bench/hardening-qps.sh   (env: SECONDS_EACH (default 15), CLIENTS (default 8),
# ROUNDS (default 3), DAEMONS (default "nsd knot"), PIN=1: dnsperf on CPU 0, the daemon on CPU 1)
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
zone_src="$here/testdata/rootzone/root.zone.2026073102"
each="${SECONDS_EACH:-15}"
clients="${CLIENTS:-8}"
rounds="${ROUNDS:-3}"
load=""; serve=""
if [ "${PIN:-0}" = 1 ]; then load="taskset -c 0"; serve="taskset -c 1"; fi
for t in dnsperf nft setpriv ip; do
  command -v "$t" >/dev/null || { echo "hardening-qps: $t missing (scripts/install-deps.sh)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "hardening-qps: needs root (network namespaces, port 53)" >&2; exit 1; }

(cd "$here" && cargo build --release --locked -q -p imrs-tests --example dnsconf --example filterconf)
target="${CARGO_TARGET_DIR:-$here/target}"
dnsconf="$target/release/examples/dnsconf"
filterconf="$target/release/examples/filterconf"

svc=198.51.100.42; mgmt=192.0.2.10; client=192.0.2.1
ns="imrsq-s-$$"; cns="imrsq-c-$$"
work="$(mktemp -d)"
chmod 755 "$work"
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
  ip netns del "$cns" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

ip netns add "$ns"; ip netns add "$cns"
ip -n "$cns" link add eth0 type veth peer name eth0 netns "$ns"
for n in "$ns" "$cns"; do ip -n "$n" link set lo up; done
ip -n "$cns" addr add "$client/24" dev eth0; ip -n "$cns" link set eth0 up
ip -n "$ns" addr add "$mgmt/24" dev eth0; ip -n "$ns" link set eth0 up
ip -n "$ns" addr add "$svc/32" dev lo
ip -n "$cns" route add "$svc/32" via "$mgmt"
in_ns() { ip netns exec "$ns" "$@"; }
in_client() { ip netns exec "$cns" "$@"; }

# Queries (bench/dns-queries.sh).
. "$here/bench/dns-queries.sh"
dns_queries "$zone_src" "$work/queries"
echo "queries: $(wc -l < "$work/queries"), $each s per run, $clients clients, $rounds rounds"
echo "machine: $(nproc) cores, $(uname -r), $(date -u +%Y-%m-%dT%H:%MZ)"

wait_up() { # log
  for _ in $(seq 1 300); do
    if in_client dig +time=1 +tries=1 @"$svc" . SOA +norec 2>/dev/null | grep -q "status: NOERROR"; then return 0; fi
    sleep 0.1
  done
  echo "hardening-qps: the daemon did not answer on $svc; its log:" >&2; tail -20 "$1" >&2; return 1
}

one() { # label daemon(nsd|knot) plain|privileges|filter|hardened
  local dir="$work/$1" opts=() account
  rm -rf "$dir"; mkdir -p "$dir/zone"
  cp "$zone_src" "$dir/zone/root.zone"; chmod 644 "$dir/zone/root.zone"
  if [ "$3" = privileges ] || [ "$3" = hardened ]; then
    account=$([ "$2" = nsd ] && echo nsd || echo knot)
    opts=(--account "$account")
    [ "$2" = nsd ] && opts+=(--chroot)
  fi
  in_ns nft flush ruleset
  if [ "$3" = filter ] || [ "$3" = hardened ]; then
    "$filterconf" "$svc" "$svc,$mgmt" "$client" > "$work/filter.nft"
    in_ns nft -f "$work/filter.nft"
  fi
  cmd="$("$dnsconf" --listen "$svc,$mgmt" "${opts[@]}" "$2" "$dir/zone/root.zone" "$dir" 53)"
  # shellcheck disable=SC2086
  ip netns exec "$ns" $serve setpriv --no-new-privs $cmd > "$dir.log" 2>&1 &
  pid=$!
  wait_up "$dir.log"
  out="$(in_client $load dnsperf -s "$svc" -p 53 -d "$work/queries" -l "$each" -c "$clients" -T "$clients" -D -q 500 2>&1)"
  qps="$(echo "$out" | awk '/Queries per second/ { print $4 }')"
  printf '%-18s %12s qps   lost %s\n' "$1" "$qps" "$(echo "$out" | awk '/Queries lost/ { print $3 }')"
  echo "$qps" >> "$work/qps.$2.$3"
  if ! kill "$pid" 2>/dev/null; then
    echo "hardening-qps: $1 ended during the run; its log:" >&2; tail -20 "$dir.log" >&2; exit 1
  fi
  wait "$pid" 2>/dev/null || true; pid=""
  stop_all
}

# Nothing of a run may outlive it (the next binds the same port).
stop_all() {
  for _ in $(seq 1 100); do
    [ -z "$(ip netns pids "$ns")" ] && return 0
    ip netns pids "$ns" | xargs -r kill 2>/dev/null || true
    sleep 0.1
  done
  echo "hardening-qps: processes left in $ns: $(ip netns pids "$ns" | tr '\n' ' ')" >&2; exit 1
}

daemons="${DAEMONS:-nsd knot}"
# Each alone too (MODES="plain hardened" for the comparison only).
modes="${MODES:-plain privileges filter hardened}"
for r in $(seq 1 "$rounds"); do
  # Every other round in the reverse order: neither configuration always runs first.
  order="$modes"
  if [ $((r % 2)) -eq 0 ]; then order="$(echo "$modes" | tr ' ' '\n' | tac | tr '\n' ' ')"; fi
  for d in $daemons; do
    for m in $order; do one "$d-$m-$r" "$d" "$m"; done
  done
done
in_ns nft list counter inet imrs dropped 2>/dev/null | grep -o 'packets [0-9]*' | sed 's/^/filter dropped: /' || true

median() { sort -n "$1" | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
for d in $daemons; do
  p="$(median "$work/qps.$d.plain")"
  for m in $modes; do
    [ "$m" = plain ] && continue
    h="$(median "$work/qps.$d.$m")"
    printf '%-5s median plain %s, %s %s: %s x\n' "$d" "$p" "$m" "$h" "$(echo "scale=3; $h / $p" | bc)"
    # Rounds are interleaved, so each round's pair ran under the same machine load: the
    # median of the per-round ratios is not moved by the load drifting between rounds.
    paste "$work/qps.$d.plain" "$work/qps.$d.$m" | awk '{ printf "%.4f\n", $2 / $1 }' > "$work/ratio.$d.$m"
    printf '%-5s per-round %s/plain ratios: %s; median %s x\n' "$d" "$m" \
      "$(tr '\n' ' ' < "$work/ratio.$d.$m")" "$(median "$work/ratio.$d.$m")"
  done
done
