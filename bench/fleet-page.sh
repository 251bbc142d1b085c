#!/usr/bin/env bash
# The operators' pages of the receiver (issue #17) over a simulated fleet: DEVICES devices
# (default 1000), each with an install report and a day of heartbeats every 5 minutes (288, the
# most the receiver keeps per device), then `GET /fleet`, `GET /metrics` and one device's page
# timed over HTTPS against the receiver (median of ROUNDS). Targets: the fleet page for 1,000
# devices <= 100 ms at the receiver, /metrics <= 20 ms.
# Usage: bench/fleet-page.sh   (env: DEVICES, HEARTBEATS, ROUNDS)
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
devices="${DEVICES:-1000}"
beats="${HEARTBEATS:-288}"
rounds="${ROUNDS:-11}"
(cd "$here" && cargo build --release --locked -p imrs-build --example fleet_db --example fleet_page)
target="${CARGO_TARGET_DIR:-$here/target}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$target/release/examples/fleet_db" "$work/fleet.sqlite" "$devices" "$beats"
"$target/release/examples/fleet_page" "$work/fleet.sqlite" "$rounds"
