#!/usr/bin/env bash
# The clock stage's one update, as the init runs chronyd (`-u _chrony -F 1`, here `-Q` so the
# host's clock is never stepped), against a chronyd server in a second network namespace over
# a veth pair: plain NTP and NTS (the server's certificate from a throwaway CA, the name in a
# private /etc/hosts as the init writes it). Each protocol with chrony's defaults (`iburst`:
# four samples two seconds apart) and with the init's options (`SERVER_OPTIONS` in
# init/src/clock.rs: one sample, a retry after a second), alternated, RUNS times each.
# Prints the median and range of each and the ratio of the medians.
# Needs root, chrony, openssl, iproute2.
# Usage: sudo bench/clock.sh            (RUNS=5 by default)
set -euo pipefail

runs="${RUNS:-5}"
init_options="iburst maxsamples 1 minpoll 0"
default_options="iburst"
for tool in chronyd openssl ip unshare python3; do
    command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 1; }
done
[[ $(id -u) == 0 ]] || { echo "needs root (network namespaces)" >&2; exit 1; }
getent passwd _chrony >/dev/null || { echo "needs the _chrony account (Debian's chrony)" >&2; exit 1; }

work="$(mktemp -d)"
chmod 755 "$work"
ns_s="imrs-bench-ntss-$$"
ns_c="imrs-bench-ntsc-$$"
cleanup() {
    [[ -f "$work/server.pid" ]] && kill "$(cat "$work/server.pid")" 2>/dev/null || true
    ip netns del "$ns_s" 2>/dev/null || true
    ip netns del "$ns_c" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

ip netns add "$ns_s"
ip netns add "$ns_c"
ip link add v0 netns "$ns_s" type veth peer name v1 netns "$ns_c"
ip -n "$ns_s" addr add 192.0.2.123/24 dev v0
ip -n "$ns_c" addr add 192.0.2.10/24 dev v1
for ns in "$ns_s" "$ns_c"; do
    ip -n "$ns" link set lo up
done
ip -n "$ns_s" link set v0 up
ip -n "$ns_c" link set v1 up

cd "$work"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key \
    -out ca.pem -days 2 -subj "/CN=bench NTS CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=keyCertSign" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout srv.key -out srv.csr \
    -subj "/CN=nts.bench.test" 2>/dev/null
printf "subjectAltName=DNS:nts.bench.test\n" > ext
openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem -days 2 \
    -extfile ext 2>/dev/null
chmod 644 ./*.pem
printf "127.0.0.1 localhost\n192.0.2.123 nts.bench.test\n" > hosts
mkdir run && chown _chrony run
cat > server.conf <<EOF
local stratum 1
allow all
cmdport 0
pidfile $work/server.pid
ntsserverkey $work/srv.key
ntsservercert $work/srv.pem
EOF
ip netns exec "$ns_s" chronyd -x -u root -f "$work/server.conf" -l "$work/server.log"
sleep 1

# One update: seconds from start to exit, failing if no offset was measured.
one() { # PROTOCOL OPTIONS
    local config
    if [[ $1 == nts ]]; then
        config="'ntstrustedcerts $work/ca.pem' nosystemcert 'authselectmode require' \
            'server nts.bench.test $2 nts'"
    else
        config="'server 192.0.2.123 $2'"
    fi
    local t0 t1
    t0=$(date +%s.%N)
    ip netns exec "$ns_c" unshare -m sh -c "mount --bind $work/hosts /etc/hosts && exec chronyd \
        -Q -u _chrony -F 1 -t 30 'pidfile $work/run/c.pid' 'cmdport 0' $config" \
        > "$work/out" 2>&1
    t1=$(date +%s.%N)
    grep -q "System clock wrong by" "$work/out" || { cat "$work/out" "$work/server.log" >&2; exit 1; }
    echo "$t1 - $t0" | bc
}

declare -A times
for _ in $(seq "$runs"); do
    for proto in ntp nts; do
        times[$proto-default]+="$(one "$proto" "$default_options") "
        times[$proto-init]+="$(one "$proto" "$init_options") "
    done
done

echo "chronyd -Q, one update, $runs runs each (median, min-max), $(date -u +%FT%TZ), $(nproc) cores"
for proto in ntp nts; do
    python3 - "$proto" "${times[$proto-default]}" "${times[$proto-init]}" \
        "$default_options" "$init_options" <<'EOF'
import statistics, sys
proto, a, b, oa, ob = sys.argv[1:]
a = [float(x) for x in a.split()]
b = [float(x) for x in b.split()]
ma, mb = statistics.median(a), statistics.median(b)
print(f"{proto}: '{oa}' {ma:.2f} s ({min(a):.2f}-{max(a):.2f}), "
      f"'{ob}' {mb:.2f} s ({min(b):.2f}-{max(b):.2f}): {mb / ma:.2f}x")
EOF
done
