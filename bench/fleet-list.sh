#!/usr/bin/env bash
# The receiver's fleet view (`home list`, issue #14) over a simulated fleet: DEVICES devices
# (default 1000), each with an install report and a day of heartbeats every 5 minutes (288, the
# most the receiver keeps per device), stored through the receiver's writer; then the fleet
# query timed (median of 5), and `home list` and `fleet status` run end to end. Target:
# `fleet status` <= 200 ms for 1,000 devices.
# Usage: bench/fleet-list.sh   (env: DEVICES, HEARTBEATS)
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
devices="${DEVICES:-1000}"
beats="${HEARTBEATS:-288}"
(cd "$here" && cargo build --release --locked -p imrs-build --example fleet_db --bin imrs-build)
target="${CARGO_TARGET_DIR:-$here/target}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$target/release/examples/fleet_db" "$work/fleet.sqlite" "$devices" "$beats"
start=$(date +%s%N)
"$target/release/imrs-build" home list --db "$work/fleet.sqlite" --stale 600 > /dev/null || true
end=$(date +%s%N)
echo "home list --stale 600 end to end: $(( (end - start) / 1000000 )) ms"
for i in 1 2 3; do
  start=$(date +%s%N)
  "$target/release/imrs-build" fleet status --db "$work/fleet.sqlite" > /dev/null
  end=$(date +%s%N)
  echo "fleet status end to end (run $i): $(( (end - start) / 1000000 )) ms"
done
