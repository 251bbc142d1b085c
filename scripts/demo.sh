#!/usr/bin/env bash
# The main job (README): on a fresh Debian 12 machine, build the default image (images/qemu.toml),
# verify its signature and contents, and boot it under QEMU until the init has printed its boot
# summary and powered the VM off.
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

# Fetch exactly the locked packages. Exit code 4: a locked version has left the Debian mirror;
# re-lock into a scratch lock (the committed one stays as it is) and carry on.
set +e
"$B" fetch "$RECIPE" --lock "$LOCK"
rc=$?
set -e
if [ "$rc" -eq 4 ]; then
  echo "demo: the committed lock names a version the mirror no longer has; re-locking into $OUT/qemu.lock.json" >&2
  LOCK="$OUT/qemu.lock.json"
  "$B" lock "$RECIPE" --lock "$LOCK"
  "$B" fetch "$RECIPE" --lock "$LOCK"
elif [ "$rc" -ne 0 ]; then
  exit "$rc"
fi

# The lab site config, signed with the demo key (the image's default site-signing key) and
# embedded, so the boot gets past the site and hardware stages.
cp images/sites/lab.toml "$OUT/site.toml"
"$B" site sign "$OUT/site.toml" --key "$OUT/image-key"
"$B" build "$RECIPE" --lock "$LOCK" --key "$OUT/image-key" --out "$OUT/imrs-qemu" --site "$OUT/site.toml"
"$B" verify "$OUT/imrs-qemu" --pubkey "$OUT/image-key.pub"
"$B" boot "$OUT/imrs-qemu" --append imrs.poweroff_after_boot=1 --append imrs.stop_after=hardware --expect "imrs-init" --expect "hardware    PASSED" --timeout 300
