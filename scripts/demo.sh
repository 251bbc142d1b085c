#!/usr/bin/env bash
# The main job (README): on a fresh Debian 12 machine, build the default image (images/qemu.toml),
# verify its signature and contents, then run the lab's normal pass (`imrs-build lab`): the image
# boots under QEMU in a network namespace playing the host organisation (FRR router, NSD transfer
# server with the real root zone, phone-home receiver), passes every stage, serves `.`, announces
# the IMRS prefixes and phones home. Exit status 0 only when the pass held.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${IMRS_OUT:-out}
RECIPE=images/qemu.toml
LOCK=images/qemu.lock.json

bash scripts/install-deps.sh
cargo build --release --locked -p imrs-build
B=target/release/imrs-build
mkdir -p "$OUT"
[ -f "$OUT/image-key" ] || "$B" keygen --out "$OUT/image-key"

# Fetch exactly the locked packages, directly from each package's mirror, else the Debian snapshot
# archive at the lock's time (no apt involved). Exit code 4: no source has a locked version;
# re-lock with the host's apt into a scratch lock (the committed one stays as it is) and carry on.
set +e
"$B" fetch "$RECIPE" --lock "$LOCK"
rc=$?
set -e
if [ "$rc" -eq 4 ]; then
  echo "demo: no source has a version the committed lock names; re-locking into $OUT/qemu.lock.json" >&2
  LOCK="$OUT/qemu.lock.json"
  "$B" lock "$RECIPE" --lock "$LOCK"
  "$B" fetch "$RECIPE" --lock "$LOCK"
elif [ "$rc" -ne 0 ]; then
  exit "$rc"
fi

"$B" build "$RECIPE" --lock "$LOCK" --key "$OUT/image-key" --out "$OUT/imrs-qemu"
"$B" verify "$OUT/imrs-qemu" --pubkey "$OUT/image-key.pub"

# The lab signs its site config (with a CA of its own for phone home) with the image's key and
# hands it to the appliance on the config partition of the lab disk.
rm -rf "$OUT/lab"
"$B" lab "$OUT/imrs-qemu" --key "$OUT/image-key" --keep "$OUT/lab" "$@"
