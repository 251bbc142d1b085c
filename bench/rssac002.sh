#!/usr/bin/env bash
# RSSAC002 unique sources (issue #16): the memory one day's three source sets take, and their
# count's error, at 4,096 (the last exact count), 100,000 and 1,000,000 distinct sources (IPv4,
# IPv6, each IPv6 in its own /64), from tests/examples/telemetry_bench.rs. Sources are kept as
# keyed 64-bit hashes, exactly up to 4,096 per set, then as a HyperLogLog sketch of 2^14
# registers (16 KiB per set, 0.81% standard error), so a day holds at most 48 KiB of sources
# however many clients it sees. Collector CPU per 100,000 queries: bench/dns-qps.sh.
# Usage: bench/rssac002.sh
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
(cd "$here" && cargo build --release --locked -q -p imrs-tests --example telemetry_bench)
bin="${CARGO_TARGET_DIR:-$here/target}/release/examples/telemetry_bench"
echo "machine: $(nproc) cores, $(uname -r), $(date -u +%Y-%m-%dT%H:%MZ)"
for n in 4096 100000 1000000; do "$bin" sources "$n"; done
