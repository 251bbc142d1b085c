#!/usr/bin/env bash
# Full verification of the real root zone (ZONEMD + every RRSIG + anchor
# chain) by imrs-zone, side by side with kzonecheck and ldns-verify-zone.
# Prints mean times, ratios, and peak RSS. Targets (issue #4):
#   imrs <= 0.6 x kzonecheck, imrs <= 0.2 x ldns-verify-zone, peak RSS <= 64 MiB.
# Usage: bench/zone-verify.sh [ZONE] [ANCHORS]
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
data="${DATA:-$here/../shared/data/rootzone}"
zone="${1:-$data/root.zone.2026073102}"
anchors="${2:-$data/root-anchors.xml}"
at_unix=1785542400          # 2026-08-01T00:00:00Z, inside the signature windows
at_ldns=20260801000000
runs="${RUNS:-10}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target-zone}"

for tool in hyperfine kzonecheck ldns-verify-zone /usr/bin/time python3; do
    command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 1; }
done

(cd "$here" && cargo build --release --locked -p imrs-zone --example zone-verify)
imrs="$CARGO_TARGET_DIR/release/examples/zone-verify"

cmd_imrs="$imrs $zone $anchors $at_unix"
cmd_knot="kzonecheck -o . -d on -t $at_unix $zone"
cmd_ldns="ldns-verify-zone -ZZ -t $at_ldns $zone"

# Every tool must say "verified" before its time means anything.
$cmd_imrs >/dev/null
$cmd_knot >/dev/null
$cmd_ldns >/dev/null

json="$(mktemp)"
trap 'rm -f "$json"' EXIT
hyperfine -N -w 2 -r "$runs" --export-json "$json" \
    -n imrs "$cmd_imrs" -n kzonecheck "$cmd_knot" -n ldns "$cmd_ldns"

peak_kib() {
    local max=0 kib
    for _ in 1 2 3; do
        kib=$(/usr/bin/time -f '%M' "$@" 2>&1 >/dev/null | tail -1)
        ((kib > max)) && max=$kib
    done
    echo "$max"
}
rss_imrs=$(peak_kib $cmd_imrs)
rss_knot=$(peak_kib $cmd_knot)
rss_ldns=$(peak_kib $cmd_ldns)

python3 - "$json" "$rss_imrs" "$rss_knot" "$rss_ldns" <<'EOF'
import json, sys
res = {r["command"]: r for r in json.load(open(sys.argv[1]))["results"]}
rss = dict(zip(["imrs", "kzonecheck", "ldns"], map(int, sys.argv[2:5])))
print()
print(f"{'tool':<12}{'mean ms':>10}{'user ms':>10}{'peak RSS MiB':>14}")
for name in ["imrs", "kzonecheck", "ldns"]:
    r = res[name]
    print(f"{name:<12}{r['mean']*1000:>10.1f}{r['user']*1000:>10.1f}{rss[name]/1024:>14.1f}")
i, k, l = (res[n]["mean"] for n in ["imrs", "kzonecheck", "ldns"])
ok = lambda b: "ok" if b else "MISSED"
print(f"\nimrs / kzonecheck = {i/k:.2f}  (target <= 0.60: {ok(i/k <= 0.6)})")
print(f"imrs / ldns       = {i/l:.2f}  (target <= 0.20: {ok(i/l <= 0.2)})")
print(f"imrs peak RSS     = {rss['imrs']/1024:.1f} MiB (target <= 64: {ok(rss['imrs'] <= 64*1024)})")
EOF
