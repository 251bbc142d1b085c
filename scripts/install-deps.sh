#!/usr/bin/env bash
# Installs the Debian 12 packages imrs needs on a build/test machine (run as root).
#   build-essential   C compiler, headers and make: aws-lc (cc builder, no cmake), ring and the
#                     bundled SQLite are compiled from C by their build scripts
#   pkg-config git curl ca-certificates   build scripts, the checkout, rustup's installer (Rust
#                     itself comes from rustup; rust-toolchain.toml pins the version)
#   qemu-system-x86   boots images in tests and the lab
#   bird2 frr gobgpd  BGP: the appliance's daemon and the host router in tests and the lab
#                     (two independent implementations: FRR and GoBGP)
#   nsd knot          DNS daemons (transfer servers in tests, reference behaviour)
#   knot-module-dnstap   Knot's dnstap writer (the RSSAC002 collector's tests)
#   dnscap dnsperf    the independent RSSAC002 collector (dnscap's rssm plugin) and query load
#   knot-dnsutils bind9-dnsutils   kdig / dig for queries
#   ldnsutils bind9-utils knot-dnssecutils   reference zone verifiers (ldns-verify-zone,
#                     dnssec-verify, kzonecheck)
#   iproute2          network namespaces for tests
#   nftables          nft: checks the appliance's generated packet filter (the image has its own)
#   chrony            chronyd: the clock stage's NTP run as the appliance runs it (own account,
#                     seccomp filter) against a chronyd server, in namespaces
#   cpio zstd         cross-checking our archives with the standard tools
#   hyperfine time    benchmarks
#   fdisk dosfstools mtools e2fsprogs   the lab's disk (sfdisk GPT, vfat config, ext4 data);
#                     mke2fs makes the appliance disk's IMRS-DATA, fsck.vfat/sfdisk cross-check it
#   ovmf              UEFI firmware: appliance disks boot under QEMU as on the appliance
#   bmap-tools        bmaptool, cross-checking the disk's block map
#   python3-aiosmtpd  a real SMTP server (STARTTLS) receiving the receiver's e-mail notices in tests
#   chromium chromium-driver   the operators' fleet page in a headless browser (WebDriver)
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
pkgs=(build-essential pkg-config git curl
      qemu-system-x86 bird2 frr gobgpd nsd knot knot-dnsutils bind9-dnsutils ldnsutils bind9-utils knot-dnssecutils
      knot-module-dnstap dnscap dnsperf iproute2 nftables chrony cpio zstd xz-utils hyperfine time bc ca-certificates
      fdisk dosfstools mtools e2fsprogs ovmf bmap-tools python3-aiosmtpd
      chromium chromium-driver)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# The package lists are needed by `imrs-build lock` (apt-cache) even when nothing is missing.
if [ ! -e /var/lib/apt/lists/lock ] || [ -z "$(ls /var/lib/apt/lists/*_Packages* 2>/dev/null)" ] || [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The daemons are run by the tests themselves, never as system services.
for s in bird frr gobgpd nsd knot; do
  systemctl disable --now "$s" >/dev/null 2>&1 || service "$s" stop >/dev/null 2>&1 || true
done
