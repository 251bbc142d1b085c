#!/usr/bin/env bash
# Queries per second for the real root zone with dnsperf (issue #5): NSD and Knot as imrs-init
# configures them (the init's own config generator, tests/examples/dnsconf.rs) side by side
# with the same daemon on its default configuration (only the paths, port and zone set), in
# the same run, on loopback. dnsperf shares the machine's cores with the daemon: compare the
# ratios, not the absolute numbers.
#
# With dnstap (issue #16): the imrs configurations again with dnstap on, written to the RSSAC002
# collector (tests/examples/telemetry_bench.rs) on a Unix socket; the collector reports its CPU
# per 100,000 queries, and frames the daemon dropped are what it did not count of the queries
# and responses dnsperf completed (a few readiness probes make it slightly negative).
#
# Query mix (from the zone itself): 80% referrals (`<tld>. NS` and `www.<tld>. A` for every
# delegated TLD), 20% NXDOMAIN (`<random>. A`), all with EDNS (dnsperf's default) and DO.
# Usage: bench/dns-qps.sh   (env: SECONDS_EACH (default 15), CLIENTS (default 8), RATE (the
# fixed-rate dnstap runs, default 20000 queries/s), PIN=1: dnsperf on CPU 0, the daemon and the
# collector on CPU 1, so the load generator does not take the server's cycles)
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
zone="$here/testdata/rootzone/root.zone.2026073102"
each="${SECONDS_EACH:-15}"
clients="${CLIENTS:-8}"
load=""; serve=""
if [ "${PIN:-0}" = 1 ]; then load="taskset -c 0"; serve="taskset -c 1"; fi
command -v dnsperf >/dev/null || { echo "dns-qps: dnsperf missing (apt-get install dnsperf)" >&2; exit 1; }

(cd "$here" && cargo build --release --locked -q -p imrs-tests --example dnsconf --example telemetry_bench)
target="${CARGO_TARGET_DIR:-$here/target}"
dnsconf="$target/release/examples/dnsconf"
collector="$target/release/examples/telemetry_bench"

work="$(mktemp -d)"
chmod 755 "$work"
pids=()
cleanup() { for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

# Queries (bench/dns-queries.sh).
. "$here/bench/dns-queries.sh"
dns_queries "$zone" "$work/queries"
echo "queries: $(wc -l < "$work/queries") ($(grep -c ' NS$' "$work/queries") TLDs), $each s per run, $clients clients"
echo "machine: $(nproc) cores, $(uname -r), $(date -u +%Y-%m-%dT%H:%MZ)"

wait_up() { # port
  for _ in $(seq 1 200); do
    if dig +time=1 +tries=1 @127.0.0.1 -p "$1" . SOA +norec 2>/dev/null | grep -q "status: NOERROR"; then return 0; fi
    sleep 0.1
  done
  echo "dns-qps: daemon on port $1 did not answer" >&2; return 1
}

run() { # label port
  local out qps
  out="$($load dnsperf -s 127.0.0.1 -p "$2" -d "$work/queries" -l "$each" -c "$clients" -T "$clients" -D -q 500 2>&1)"
  qps="$(echo "$out" | awk '/Queries per second/ { print $4 }')"
  lost="$(echo "$out" | awk '/Queries lost/ { print $3 }')"
  completed="$(echo "$out" | awk '/Queries completed/ { print $3 }')"
  printf '%-22s %12s qps   lost %s\n' "$1" "$qps" "$lost"
  echo "$qps" > "$work/qps.$1"
  echo "$completed" > "$work/completed.$1"
}

# At a fixed offered rate (dnsperf -Q): whether every frame arrives when the daemon is not
# saturated.
run_rate() { # label port rate
  local out
  out="$($load dnsperf -s 127.0.0.1 -p "$2" -d "$work/queries" -l "$each" -c "$clients" -T "$clients" -D -q 500 -Q "$3" 2>&1)"
  printf '%-22s %12s qps   lost %s (offered %s/s)\n' "$1" "$(echo "$out" | awk '/Queries per second/ { print $4 }')" \
    "$(echo "$out" | awk '/Queries lost/ { print $3 }')" "$3"
  echo "$out" | awk '/Queries completed/ { print $3 }' > "$work/completed.$1"
}

# The collector, reading until its standard input (a fifo held open here) closes.
collector_start() { # label [collect|discard]
  mkfifo "$work/$1.hold"
  $serve "$collector" "${2:-collect}" "$work/$1.sock" < "$work/$1.hold" > "$work/$1.stats" 2>&1 &
  cpid=$!
  exec 9> "$work/$1.hold"
  for _ in $(seq 1 50); do [ -S "$work/$1.sock" ] && return 0; sleep 0.1; done
  echo "dns-qps: the collector did not start" >&2; return 1
}
collector_stop() { # label
  exec 9>&-
  wait "$cpid" || true
  local counted
  counted="$(awk '{ for (i = 1; i < NF; i++) if ($i == "counted") print $(i + 1) }' "$work/$1.stats")"
  printf '%-22s collector: %s; frames not counted: %s\n' "$1" "$(cat "$work/$1.stats")" \
    "$(( 2 * $(cat "$work/completed.$1") - counted ))"
}

start() { # label program args...
  local label="$1"; shift
  $serve "$@" > "$work/$label.log" 2>&1 &
  pids+=($!)
}

stop_last() { kill "${pids[-1]}" 2>/dev/null || true; wait "${pids[-1]}" 2>/dev/null || true; }

# One dnstap run: the imrs configuration writing dnstap to the collector (counting, or only
# reading the frames), at full speed or at a fixed offered rate.
dnstap_run() { # label nsd|knot port collect|discard [rate]
  mkdir -p "$work/$1"
  collector_start "$1" "$4"
  cmd="$("$dnsconf" "$2" "$zone" "$work/$1" "$3" "$work/$1.sock")"
  start "$1" $cmd; wait_up "$3"
  if [ -n "${5:-}" ]; then run_rate "$1" "$3" "$5"; else run "$1" "$3"; fi
  sleep 3; stop_last
  collector_stop "$1"
}

# NSD, imrs configuration.
mkdir -p "$work/nsd-imrs"
cmd="$("$dnsconf" nsd "$zone" "$work/nsd-imrs" 5301)"
start nsd-imrs $cmd; wait_up 5301; run nsd-imrs 5301; stop_last

# NSD, imrs configuration with dnstap to the collector.
dnstap_run nsd-dnstap nsd 5306 collect

# NSD with dnstap at a fixed rate.
rate="${RATE:-20000}"
dnstap_run nsd-dnstap-rate nsd 5310 collect "$rate"

# NSD with dnstap read but not counted: the daemon's and the transport's share.
dnstap_run nsd-dnstap-read nsd 5308 discard

# NSD, default configuration.
mkdir -p "$work/nsd-default"
cat > "$work/nsd-default/nsd.conf" <<CONF
server:
    ip-address: 127.0.0.1@5302
    port: 5302
    username: ""
    chroot: ""
    zonesdir: "$work/nsd-default"
    pidfile: "$work/nsd-default/nsd.pid"
    xfrdfile: "$work/nsd-default/xfrd.state"
    zonelistfile: "$work/nsd-default/zone.list"
    database: ""
remote-control:
    control-enable: no
zone:
    name: "."
    zonefile: "$zone"
CONF
start nsd-default /usr/sbin/nsd -d -c "$work/nsd-default/nsd.conf"; wait_up 5302; run nsd-default 5302; stop_last

# NSD, default configuration but response rate limiting off: Debian's NSD enables RRL by
# default (200 responses/s per /24), which a single load generator on loopback trips at once.
sed -e 's/5302/5305/g' -e 's/^server:$/server:\n    rrl-ratelimit: 0/' "$work/nsd-default/nsd.conf" > "$work/nsd-default/nsd-norrl.conf"
start nsd-default-norrl /usr/sbin/nsd -d -c "$work/nsd-default/nsd-norrl.conf"; wait_up 5305; run nsd-default-norrl 5305; stop_last

# Knot, imrs configuration.
mkdir -p "$work/knot-imrs"
cmd="$("$dnsconf" knot "$zone" "$work/knot-imrs" 5303)"
start knot-imrs $cmd; wait_up 5303; run knot-imrs 5303; stop_last

# Knot, imrs configuration with dnstap to the collector.
dnstap_run knot-dnstap knot 5307 collect

# Knot with dnstap at a fixed rate.
dnstap_run knot-dnstap-rate knot 5311 collect "$rate"

# Knot with dnstap read but not counted.
dnstap_run knot-dnstap-read knot 5309 discard

# Knot, default configuration.
mkdir -p "$work/knot-default"
cat > "$work/knot-default/knot.conf" <<CONF
server:
    listen: 127.0.0.1@5304
    rundir: "$work/knot-default"
database:
    storage: "$work/knot-default"
zone:
  - domain: "."
    file: "$zone"
    zonefile-sync: -1
CONF
start knot-default /usr/sbin/knotd -c "$work/knot-default/knot.conf"; wait_up 5304; run knot-default 5304; stop_last

ratio() { awk -v a="$(cat "$work/qps.$1")" -v b="$(cat "$work/qps.$2")" 'BEGIN { printf "%.2f", a / b }'; }
echo "NSD  imrs/default: $(ratio nsd-imrs nsd-default)x (RRL on by default); imrs/default-without-RRL: $(ratio nsd-imrs nsd-default-norrl)x"
echo "Knot imrs/default: $(ratio knot-imrs knot-default)x"
echo "dnstap on/off (imrs configuration): NSD $(ratio nsd-dnstap nsd-imrs)x, Knot $(ratio knot-dnstap knot-imrs)x"
echo "dnstap read but not counted / off: NSD $(ratio nsd-dnstap-read nsd-imrs)x, Knot $(ratio knot-dnstap-read knot-imrs)x"
