#!/usr/bin/env bash
# Kernel boot benchmark (issue #15): boots an image folder directly under QEMU (TCG) and reads
# how long the kernel ran before starting the init (the init's own line, CLOCK_BOOTTIME), for
# each variant of extra kernel command-line words, the variants alternated round by round so
# that both see the same machine. The guest stops after the hardware stage and powers off.
# Usage: bench/kernel-boot.sh IMAGE-DIR [ROUNDS]
#   VARIANTS='|cryptomgr.notests=0'   variants separated by '|' (default: the image's own command
#                                      line, and the same with the kernel's crypto self-tests on)
#   ICOUNT=1                           count instructions (`imrs-build boot --icount`): the
#                                      guest's clock runs 1 ns per guest instruction, so the
#                                      times are the work done, identical run to run and the
#                                      same on a loaded machine (one round is enough)
#   IMRS_BUILD=PATH                    use this imrs-build instead of building it
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${1:?usage: bench/kernel-boot.sh IMAGE-DIR [ROUNDS]}
ROUNDS=${2:-5}
IFS='|' read -r -a VARS <<<"${VARIANTS-|cryptomgr.notests=0}"
if [ -n "${IMRS_BUILD:-}" ]; then B=$IMRS_BUILD; else
  cargo build --release --locked -p imrs-build >/dev/null
  B=${CARGO_TARGET_DIR:-$PWD/target}/release/imrs-build
fi
W=$(mktemp -d /tmp/imrs-kernel-bench.XXXXXX)
trap 'rm -rf "$W"' EXIT

CLOCK="wall time"; if [ "${ICOUNT:-0}" = 1 ]; then CLOCK="instructions (1 ns each)"; fi
echo "machine: $(nproc) cores, $(uname -r); $(date -u +%FT%RZ); image $IMAGE; TCG, 1 vCPU; $CLOCK"
for r in $(seq "$ROUNDS"); do
  for i in "${!VARS[@]}"; do
    args=(--append imrs.stop_after=hardware --append imrs.poweroff_after_boot=1)
    if [ "${ICOUNT:-0}" = 1 ]; then args+=(--icount); fi
    for w in ${VARS[$i]}; do args+=(--append "$w"); done
    "$B" boot "$IMAGE" --accel tcg "${args[@]}" >"$W/$i-$r.log" 2>&1 ||
      echo "variant '${VARS[$i]}' round $r: boot failed (see $W/$i-$r.log)" >&2
  done
done

python3 - "$W" "$ROUNDS" "${VARS[@]}" <<'PY'
import re, statistics, sys
w, rounds, variants = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
pat = re.compile(r"the kernel ran ([0-9.]+) s before starting the init")
mods = re.compile(r"kernel modules loaded in ([0-9.]+) s")
for i, v in enumerate(variants):
    ks, ms = [], []
    for r in range(1, rounds + 1):
        text = open(f"{w}/{i}-{r}.log", errors="replace").read()
        if m := pat.search(text):
            ks.append(float(m.group(1)))
        if m := mods.search(text):
            ms.append(float(m.group(1)))
    def stat(xs):
        if not xs:
            return "-"
        return f"{statistics.median(xs):.2f} s ({min(xs):.2f}-{max(xs):.2f}, n={len(xs)})"
    print(f"{v or '(the image as built)':28} kernel to /init {stat(ks)}; modules {stat(ms)}")
    print(f"{'':28} per round: {' '.join(f'{k:.2f}' for k in ks)}")
PY
