#!/usr/bin/env bash
# Lab benchmark (issue #7): boots the qemu image in the lab N times per scenario and prints
# boot-to-serving, boot-to-report and second-boot-to-serving (median, min-max), and each stage's
# share of boot-to-serving in the first boot, and what ran in parallel. Runs as root
# (namespaces, taps).
# Usage: bench/lab.sh [RUNS]
#   IMRS_LAB_IMAGE=DIR IMRS_LAB_KEY=KEY   use a built image folder and its site-signing key
#                                          (default: build images/qemu.toml once)
#   IMRS_INIT=PATH                         a prebuilt static init for that build
#   IMRS_LAB_ACCEL=auto|tcg|kvm            accelerator (default auto: KVM only if it works)
#   IMRS_BUILD=PATH                        use this imrs-build instead of building it
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
if [ -n "${IMRS_BUILD:-}" ]; then B=$IMRS_BUILD; else   # IMRS_BUILD=PATH: a built imrs-build
  cargo build --release --locked -p imrs-build >/dev/null
  B=${CARGO_TARGET_DIR:-$PWD/target}/release/imrs-build
fi
W=$(mktemp -d /tmp/imrs-lab-bench.XXXXXX)
trap 'rm -rf "$W"' EXIT
ACCEL=${IMRS_LAB_ACCEL:-auto}

if [ -n "${IMRS_LAB_IMAGE:-}" ]; then
  IMAGE=$IMRS_LAB_IMAGE KEY=${IMRS_LAB_KEY:?IMRS_LAB_KEY: the image site-signing key}
else
  INIT_ARGS=()
  if [ -n "${IMRS_INIT:-}" ]; then INIT_ARGS=(--init "$IMRS_INIT"); fi
  "$B" --quiet keygen --out "$W/key"
  LOCK=images/qemu.lock.json
  if ! "$B" --quiet fetch images/qemu.toml --lock "$LOCK"; then
    LOCK=$W/qemu.lock.json; "$B" --quiet lock images/qemu.toml --lock "$LOCK"; "$B" --quiet fetch images/qemu.toml --lock "$LOCK"
  fi
  "$B" --quiet build images/qemu.toml --lock "$LOCK" --key "$W/key" --out "$W/image" "${INIT_ARGS[@]}"
  IMAGE=$W/image KEY=$W/key
fi

echo "machine: $(nproc) cores, $(free -g | awk '/Mem/{print $2}') GiB, $(uname -r); $(date -u +%F); accel $ACCEL"
for s in normal second-boot; do
  for i in $(seq "$RUNS"); do
    "$B" --quiet --json lab "$IMAGE" --key "$KEY" --scenario "$s" --accel "$ACCEL" --timeout 600 \
      --keep "$W/run-$s-$i" >"$W/$s-$i.json" || echo "run $s #$i: expectation did not hold (see $W/$s-$i.json)" >&2
  done
done

python3 - "$W" "$RUNS" <<'PY'
import json, statistics, sys
w, runs = sys.argv[1], int(sys.argv[2])
def load(s):
    out = []
    for i in range(1, runs + 1):
        try:
            out.append(json.load(open(f"{w}/{s}-{i}.json")))
        except (OSError, ValueError):
            pass
    return out
def stat(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    return f"{statistics.median(xs):.1f} s ({min(xs):.1f}-{max(xs):.1f}, n={len(xs)})"
normal, second = load("normal"), load("second-boot")
print(f"| measure | median (min-max) |\n|---|---|")
print(f"| boot to serving (normal) | {stat([r['boot_to_serving_s'] for r in normal])} |")
print(f"| boot to report (normal) | {stat([r['boot_to_report_s'] for r in normal])} |")
print(f"| boot to serving (second-boot, first boot) | {stat([r['boot_to_serving_s'] for r in second])} |")
print(f"| second boot to serving | {stat([r['second_boot_to_serving_s'] for r in second])} |")
print(f"| runs passed | normal {sum(r['passed'] for r in normal)}/{runs}, second-boot {sum(r['passed'] for r in second)}/{runs} |")
# The kernel's share and the modules', as each boot's init says on the console.
import re
def console(s, pattern):
    per_boot = []
    for i in range(1, runs + 1):
        try:
            text = open(f"{w}/run-{s}-{i}/console.log", errors="replace").read()
        except OSError:
            continue
        per_boot.append([float(x) for x in re.findall(pattern, text)])
    return per_boot
kernel = r"the kernel ran ([0-9.]+) s before starting the init"
modules = r"kernel modules loaded in ([0-9.]+) s"
for what, pattern in (("kernel start to /init", kernel), ("kernel modules loaded by the init", modules)):
    first = [b[0] for b in console("normal", pattern) if b]
    again = [b[1] for b in console("second-boot", pattern) if len(b) > 1]
    print(f"| {what} (normal) | {stat(first)} |")
    print(f"| {what} (second boot) | {stat(again)} |")
# Stage shares of boot-to-serving (first boot of the normal runs): median seconds per stage.
print("\n| stage | seconds (median) | share of boot to serving |\n|---|---|---|")
serving = statistics.median([r["boot_to_serving_s"] for r in normal if r["boot_to_serving_s"]] or [0])
names = [s["name"] for s in normal[0]["stages"]] if normal else []
for n in names:
    secs = [s["seconds"] for r in normal for s in r["stages"] if s["name"] == n and s["seconds"] is not None]
    if not secs:
        continue
    m = statistics.median(secs)
    share = f"{100 * m / serving:.0f} %" if serving else "-"
    print(f"| {n} | {m:.3f} | {share} |")
if second:
    print("\n| stage (second boot) | seconds (median) |\n|---|---|")
    for n in names:
        secs = [s["seconds"] for r in second if len(r["boots"]) > 1
                for s in r["boots"][1]["stages"] if s["name"] == n and s["seconds"] is not None]
        if secs:
            print(f"| {n} | {statistics.median(secs):.3f} |")
# What ran alongside the stages, as the init's summary says (first run of each).
for label, rs, boot in (("normal", normal, 0), ("second boot", second, 1)):
    for r in rs[:1]:
        if len(r["boots"]) > boot:
            for p in r["boots"][boot].get("in_parallel", []):
                print(f"in parallel ({label}): {p}")
PY
