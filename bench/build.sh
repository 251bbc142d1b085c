#!/usr/bin/env bash
# Builder benchmark: cold build (empty package cache), warm rebuilds of the qemu recipe (NSD) and
# the qemu-knot recipe, and the compressed initramfs sizes. Prints a table for BENCHMARKS.md.
# Usage: bench/build.sh [RUNS]   (needs the Debian mirror for the cold build)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
cargo build --release --locked -p imrs-build >/dev/null
B=$PWD/target/release/imrs-build
W=$(mktemp -d /tmp/imrs-bench.XXXXXX)
trap 'rm -rf "$W"' EXIT
"$B" --quiet keygen --out "$W/key"
# IMRS_INIT=PATH: use a prebuilt static init instead of building it (`build --init`).
INIT_ARGS=()
if [ -n "${IMRS_INIT:-}" ]; then INIT_ARGS=(--init "$IMRS_INIT"); fi

lock_for() { # committed lock, or a fresh one if its versions have left the mirror
  local r=$1 l=images/$1.lock.json
  if "$B" --quiet fetch "images/$r.toml" --lock "$l" --cache "$W/warm" 2>/dev/null; then echo "$l"; else
    "$B" --quiet lock "images/$r.toml" --lock "$W/$r.lock.json"; echo "$W/$r.lock.json"; fi
}

echo "machine: $(nproc) cores, $(free -g | awk '/Mem/{print $2}') GiB, $(uname -r); $(date -u +%F)"
for r in qemu qemu-knot; do
  L=$(lock_for $r)
  # Cold: empty cache (downloads every .deb, extracts the kernel package, builds nothing else anew).
  rm -rf "$W/cold"
  s=$(date +%s.%N)
  "$B" --quiet build "images/$r.toml" --lock "$L" --cache "$W/cold" --key "$W/key" --out "$W/out-$r" "${INIT_ARGS[@]}"
  e=$(date +%s.%N)
  printf '%-10s cold build            %6.1f s\n' "$r" "$(echo "$e - $s" | bc)"
  "$B" --quiet build "images/$r.toml" --lock "$L" --cache "$W/warm" --key "$W/key" --out "$W/out-$r" "${INIT_ARGS[@]}"
  # Warm: everything cached, the init up to date.
  hyperfine --runs "$RUNS" --style basic --export-json "$W/$r.json" \
    "$B --quiet build images/$r.toml --lock $L --cache $W/warm --key $W/key --out $W/out-$r --offline ${INIT_ARGS[*]}" >/dev/null
  python3 - "$W/$r.json" "$r" <<'PY'
import json,sys
d=json.load(open(sys.argv[1]))["results"][0]
print(f"{sys.argv[2]:10} warm rebuild (n={len(d['times'])})  median {d['median']:.2f} s  min {d['min']:.2f} s  max {d['max']:.2f} s")
PY
  "$B" --json build "images/$r.toml" --lock "$L" --cache "$W/warm" --key "$W/key" --out "$W/out-$r" --offline "${INIT_ARGS[@]}" \
    | python3 -c 'import json,sys; d=json.load(sys.stdin); print("  stages:", ", ".join(f"{k} {v:.2f}s" for k,v in sorted(d["stages"].items())))'
  for f in "$W/out-$r"/*; do printf '  %-22s %8.2f MiB\n' "$(basename "$f")" "$(echo "$(stat -c %s "$f") / 1048576" | bc -l)"; done
done
