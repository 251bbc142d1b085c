#!/usr/bin/env bash
# Phone-home receiver under concurrent load on loopback (issue #6): signed reports per second
# verified (Ed25519 over the exact bytes, schema, canonical form) and committed to SQLite
# (WAL, synchronous=FULL, group commit), over TLS from concurrent clients on 127.0.0.1.
# Three runs: clients keeping their connection; a new connection per report with TLS session
# resumption (one device's periodic reports); a new client with a full handshake per report
# (first contact). Client and receiver share the machine's cores. Target: >= 1,000 reports/s.
# Then the fleet's heartbeats (issue #14): 1,000 devices heartbeating every 5 minutes, 50x
# compressed (170 heartbeats/s offered open-loop for a minute, a new TLS connection per
# heartbeat with session resumption), with its latency; the same with 20 devices, whose
# histories are full so every heartbeat also prunes one; and heartbeats as fast as answered.
# Target: >= 170 heartbeats/s with p99 <= 100 ms.
# Bounded: REPORTS reports per run (default 5000), at most TIME_LIMIT seconds each (default 120).
# Usage: bench/home-receiver.sh   (env: REPORTS, CLIENTS, DEVICES, TIME_LIMIT)
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
reports="${REPORTS:-5000}"
clients="${CLIENTS:-16}"
devices="${DEVICES:-100}"
seconds="${TIME_LIMIT:-120}"   # (not SECONDS: bash sets that)

(cd "$here" && cargo build --release --locked -p imrs-build --example home_load)
target="${CARGO_TARGET_DIR:-$here/target}"
load="$target/release/examples/home_load"

common=(--reports "$reports" --clients "$clients" --devices "$devices" --seconds "$seconds")
echo "keep-alive connections:"
"$load" "${common[@]}"
echo "new TLS connection per report, session resumed (a device's periodic reports):"
"$load" "${common[@]}" --reconnect
echo "new client and full TLS handshake per report (a device's first report):"
"$load" "${common[@]}" --fresh
echo "heartbeats from 1,000 devices at 170/s (5-minute period, 50x), connection per heartbeat:"
"$load" --reports 10200 --clients 32 --devices 1000 --seconds "$seconds" --heartbeats --rate 170 --reconnect
echo "heartbeats from 20 devices at 170/s (histories full: each one prunes one):"
"$load" --reports 10200 --clients 32 --devices 20 --seconds "$seconds" --heartbeats --rate 170 --reconnect
echo "heartbeats from 1,000 devices as fast as answered, connection per heartbeat:"
"$load" --reports "$reports" --clients "$clients" --devices 1000 --seconds "$seconds" --heartbeats --reconnect
