#!/usr/bin/env bash
# Flashing benchmark: `imrs-build flash` (verify, per-appliance disk, mapped ranges written, every
# range read back with O_DIRECT) side by side with `dd bs=4M conv=fsync` (whole image, no
# verification), `dd` then a second `dd iflag=direct` reading the target back ("dd+read": the
# I/O flash does, without any checking) and `bmaptool copy` (mapped ranges, checked while
# reading the source, no read-back), onto a loop device and onto a file, for the sparse appliance disk and the same disk
# with every block allocated ("full"). Prints a table for BENCHMARKS.md.
# Usage: bench/flash.sh IMAGE-DIR PUBKEY SITE KEY [RUNS]   (root: loop devices; bmap-tools)
set -euo pipefail
cd "$(dirname "$0")/.."
IMG=$1 PUB=$2 SITE=$3 KEY=$4 RUNS=${5:-3}
cargo build --release --locked -p imrs-build >/dev/null
B=$PWD/target/release/imrs-build
W=$(mktemp -d /tmp/imrs-bench.XXXXXX)
LO=
trap '[ -n "$LO" ] && losetup -d "$LO"; rm -rf "$W"' EXIT
"$B" --quiet disk "$IMG" --pubkey "$PUB" --out "$W/sparse.img" --bmap
cp --sparse=never "$W/sparse.img" "$W/full.img"
python3 - "$W/full.img" "$W/full.img.bmap" <<'PY'
# A bmap of the full copy: every block mapped, with its checksum (what bmaptool copy reads).
import hashlib,os,sys
p,out=sys.argv[1],sys.argv[2]; size=os.path.getsize(p); bs=4096; blocks=(size+bs-1)//bs
h=hashlib.sha256(open(p,'rb').read()).hexdigest()
t=lambda c:f'<?xml version="1.0" ?>\n<bmap version="2.0">\n    <ImageSize> {size} </ImageSize>\n    <BlockSize> {bs} </BlockSize>\n    <BlocksCount> {blocks} </BlocksCount>\n    <MappedBlocksCount> {blocks} </MappedBlocksCount>\n    <ChecksumType> sha256 </ChecksumType>\n    <BmapFileChecksum> {c} </BmapFileChecksum>\n    <BlockMap>\n        <Range chksum="{h}"> 0-{blocks-1} </Range>\n    </BlockMap>\n</bmap>\n'
s=hashlib.sha256(t('0'*64).encode()).hexdigest(); open(out,'w').write(t(s))
PY
SIZE=$(stat -c %s "$W/sparse.img")
truncate -s "$SIZE" "$W/lo.img"
LO=$(losetup -f --show "$W/lo.img")
echo "machine: $(nproc) cores, $(free -g | awk '/Mem/{print $2}') GiB, $(uname -r); $(date -u +%F); disk $((SIZE >> 20)) MiB, $(du -m "$W/sparse.img" | cut -f1) MiB mapped"
for kind in sparse full; do
  for dst in loop file; do
    T=$LO; [ $dst = file ] && T=$W/out.img
    prep="rm -f $W/out.img"
    hyperfine --runs "$RUNS" --style basic --export-json "$W/$kind-$dst.json" --prepare "$prep" \
      -n flash "$B --quiet flash $W/$kind.img $T --pubkey $PUB --site $SITE --key $KEY --yes" \
      -n dd "dd if=$W/$kind.img of=$T bs=4M conv=fsync,notrunc status=none" \
      -n dd+read "sh -c 'dd if=$W/$kind.img of=$T bs=4M conv=fsync,notrunc status=none && dd if=$T of=/dev/null bs=4M iflag=direct status=none'" \
      -n bmaptool "bmaptool -q copy --bmap $W/$kind.img.bmap $W/$kind.img $T" >/dev/null
    python3 - "$W/$kind-$dst.json" "$kind" "$dst" <<'PY'
import json,sys
r={x["command"]:x for x in json.load(open(sys.argv[1]))["results"]}
dd=r["dd"]["median"]
for n in ["flash","dd","dd+read","bmaptool"]:
    m=r[n]["median"]
    print(f"{sys.argv[2]:6} -> {sys.argv[3]:4}  {n:9} median {m:6.2f} s  (n={len(r[n]['times'])})  dd/this = {dd/m:4.2f}x")
PY
  done
done
