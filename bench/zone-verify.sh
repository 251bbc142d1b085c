#!/usr/bin/env bash
# Full verification of the real root zone (ZONEMD + every RRSIG + anchor
# chain) by imrs-zone, side by side with kzonecheck and ldns-verify-zone;
# also AXFR-plus-verify from a local Knot (loopback, high port) and BIND's
# dnssec-verify where it can verify as of the window.
# Prints mean times, ratios, and peak RSS. Targets (issue #4):
#   imrs <= 0.6 x kzonecheck, imrs <= 0.2 x ldns-verify-zone, peak RSS <= 64 MiB.
# Usage: bench/zone-verify.sh [ZONE] [ANCHORS]
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
data="${DATA:-$here/testdata/rootzone}"
zone="${1:-$data/root.zone.2026073102}"
anchors="${2:-$data/root-anchors.xml}"
at_unix=1785542400          # 2026-08-01T00:00:00Z, inside the signature windows
at_ldns=20260801000000
runs="${RUNS:-30}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$here/target}"

for tool in hyperfine kzonecheck ldns-verify-zone /usr/bin/time python3; do
    command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 1; }
done

(cd "$here" && cargo build --release --locked -p imrs-build -p imrs-zone --example axfr-verify)
imrs_axfr="$CARGO_TARGET_DIR/release/examples/axfr-verify"

# The command the issue names: the CLI, clap parsing and report printing included.
cmd_imrs="$CARGO_TARGET_DIR/release/imrs-build zone verify $zone --anchors $anchors --at 2026-08-01T00:00:00Z"
cmd_knot="kzonecheck -o . -d on -t $at_unix $zone"
cmd_ldns="ldns-verify-zone -ZZ -t $at_ldns $zone"

# Every tool must say "verified" before its time means anything.
$cmd_imrs >/dev/null
$cmd_knot >/dev/null
$cmd_ldns >/dev/null

work="$(mktemp -d)"
knot_pid=""
cleanup() {
    [[ -n "$knot_pid" ]] && kill "$knot_pid" 2>/dev/null && wait "$knot_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
json="$work/hyperfine.json"
extra=()

# AXFR plus full verification from a local knotd serving the zone file.
if [[ -x /usr/sbin/knotd ]] && command -v kdig >/dev/null; then
    port=$(python3 -c 'import socket
while True:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]
    t = socket.socket(socket.AF_INET6); 
    try: t.bind(("::1", p)); print(p); break
    except OSError: pass')
    mkdir -p "$work/knot/db"
    cp "$zone" "$work/knot/root.zone"
    cat >"$work/knot/knot.conf" <<CONF
server:
    rundir: "$work/knot"
    user: root:root
    pidfile: "$work/knot/knot.pid"
    listen: [ "127.0.0.1@$port", "::1@$port" ]
database:
    storage: "$work/knot/db"
control:
    listen: "$work/knot/knot.sock"
log:
  - target: "$work/knot/knot.log"
    any: info
acl:
  - id: local-transfer
    address: [ "127.0.0.1", "::1" ]
    action: transfer
zone:
  - domain: "."
    storage: "$work/knot"
    file: "root.zone"
    acl: local-transfer
    zonefile-sync: -1
    journal-content: none
CONF
    /usr/sbin/knotd -c "$work/knot/knot.conf" >/dev/null 2>&1 &
    knot_pid=$!
    serial=$(awk '$4 == "SOA" { print $7; exit }' "$zone")
    # Ready = NOERROR + AA + the zone's serial (Knot says SERVFAIL while loading).
    for _ in $(seq 1 300); do
        out=$(kdig +norec +time=1 +retry=0 -p "$port" @127.0.0.1 . SOA 2>/dev/null || true)
        if grep -q "status: NOERROR" <<<"$out" && grep -qi "flags: qr aa" <<<"$out" &&
            grep -q "SOA.* $serial " <<<"$out"; then
            ready=1
            break
        fi
        sleep 0.1
    done
    if [[ -n "${ready:-}" ]]; then
        cmd_axfr="$imrs_axfr 127.0.0.1:$port $anchors $at_unix"
        $cmd_axfr >/dev/null
        extra+=(-n "imrs AXFR from knotd" "$cmd_axfr")
    else
        echo "knotd did not serve serial $serial: AXFR benchmark skipped" >&2
        cat "$work/knot/knot.log" >&2
    fi
else
    echo "knotd or kdig missing: AXFR benchmark skipped" >&2
fi

# BIND 9.18's dnssec-verify has no option to verify as of a given time and
# faketime hangs it: it is timed only when it verifies the zone as of now.
if command -v dnssec-verify >/dev/null; then
    cmd_bind="dnssec-verify -q -o . $zone"
    if $cmd_bind >/dev/null 2>&1; then
        extra+=(-n "dnssec-verify" "$cmd_bind")
    else
        echo "dnssec-verify: skipped: it cannot verify as of $at_ldns (no time option;" \
            "faketime hangs it) and the signatures are not valid now" >&2
    fi
fi

hyperfine -N -w 2 -r "$runs" --export-json "$json" \
    -n imrs "$cmd_imrs" -n kzonecheck "$cmd_knot" -n ldns "$cmd_ldns" "${extra[@]}"

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

python3 - "$json" "$rss_imrs" "$rss_knot" "$rss_ldns" <<'PY'
import json, sys
res = {r["command"]: r for r in json.load(open(sys.argv[1]))["results"]}
rss = dict(zip(["imrs", "kzonecheck", "ldns"], map(int, sys.argv[2:5])))
print()
print(f"{'tool':<22}{'mean ms':>10}{'median ms':>11}{'user ms':>10}{'peak RSS MiB':>14}")
for name, r in res.items():
    peak = f"{rss[name]/1024:>14.1f}" if name in rss else f"{'':>14}"
    print(f"{name:<22}{r['mean']*1000:>10.1f}{r['median']*1000:>11.1f}{r['user']*1000:>10.1f}{peak}")
ok = lambda b: "ok" if b else "MISSED"
# Ratios of medians: on these shared machines a neighbour's burst moves a mean by more than
# the differences measured here; means are printed above.
i, k, l = (res[n]["median"] for n in ["imrs", "kzonecheck", "ldns"])
print(f"\nimrs / kzonecheck = {i/k:.2f}  (medians; target <= 0.60: {ok(i/k <= 0.6)})")
print(f"imrs / ldns       = {i/l:.2f}  (medians; target <= 0.20: {ok(i/l <= 0.2)})")
print(f"imrs peak RSS     = {rss['imrs']/1024:.1f} MiB (target <= 64: {ok(rss['imrs'] <= 64*1024)})")
PY
