#!/usr/bin/env bash
# Fails when a file of the repository names a path outside the repository:
#   - the `shared` folder beside the checkout (`..` then `/shared`, at any depth);
#   - an absolute path of a build machine: one under a folder that holds people's and CI
#     runners' files (the roots listed in `machine_roots` below: home folders, root's home, work
#     and build folders, mount points, /var/tmp), or under a folder of the machine running the
#     check: the checkout's own location, `$HOME`, `$CARGO_HOME`, `$RUSTUP_HOME`.
# Paths of the appliance and of the host OS pass: `/etc/imrs`, `/usr/sbin`, `/run`, `/proc`, `/sys`,
# `/dev`, `/var/lib/imrs`, `/tmp`, `/init`, and those folders themselves (root's home in a
# passwd line or a list of image-owned paths): only a path below one of them names a file. A path counts only where it starts (after a space, quote, `=`, `(`,
# `:` ... or at the line start), so a URL path or a relative path naming such a folder passes.
# This file spells its examples in pieces, so that a plain grep of the repository for such paths
# finds nothing, this file included.
#
# Scans every tracked and every new, not ignored file (git ls-files), text files only.
# Usage: scripts/check-paths.sh [--self-test]   (exit 0: clean; 1: offending lines printed)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
self="scripts/check-paths.sh"

# Folders under which a build machine keeps checkouts, homes and CI work trees.
machine_roots='home|root|Users|work|mnt|media|srv|opt|scratch|builds|__w|github|var/tmp'
start='(^|[[:space:]"'"'"'`=(:,;[{<>|])'
re_machine="${start}/(${machine_roots})/"
re_sibling='(^|[^[:alnum:]_.-])(\.\./)+shared([/[:space:]"'"'"'`)]|$)'

# Prints offending lines of the repository at $1 ("file:line: text"); returns 1 if there are any.
check() {
    local root="$1" bad=0 out
    local -a fixed=()
    # The machine's own folders, literally (only absolute, and never `/` itself).
    local p
    for p in "$(cd "$root" && pwd -P)" "$(cd "$root" && pwd -L)" "${HOME:-}" "${CARGO_HOME:-}" "${RUSTUP_HOME:-}"; do
        case "$p" in /?*) fixed+=(-e "${p%/}/") ;; esac
    done
    local -a files=()
    while IFS= read -r -d '' f; do
        [ "$f" = "$self" ] && continue
        [ -f "$root/$f" ] && files+=("$f")
    done < <(git -C "$root" ls-files -z --cached --others --exclude-standard)
    [ ${#files[@]} -gt 0 ] || return 0
    if out="$(cd "$root" && grep -nIHE -e "$re_sibling" -e "$re_machine" -- "${files[@]}")"; then
        printf '%s\n' "$out" | sed 's/^/path outside the repository: /'
        bad=1
    fi
    if [ ${#fixed[@]} -gt 0 ] && out="$(cd "$root" && grep -nIHF "${fixed[@]}" -- "${files[@]}")"; then
        printf '%s\n' "$out" | sed 's/^/path of this machine: /'
        bad=1
    fi
    return $bad
}

# Plants good and bad lines in a scratch repository and checks the verdicts.
self_test() {
    local t fails=0
    t="$(mktemp -d)"
    trap 'rm -rf "$t"' RETURN
    git -C "$t" init -q
    mkdir -p "$t/scripts" "$t/src"
    cp "$here/$self" "$t/$self"
    # OS and appliance paths, URLs and relative paths: must pass.
    local S=shared W=work H=home R=root
    cat >"$t/src/good.rs" <<EOF
pub const ANCHORS: &str = "/etc/imrs/root-anchors.xml";
pub const NSD: &str = "/usr/sbin/nsd"; // reads /proc/self/stat, /sys/class/net, /dev/null
pub const STATE: &str = "/var/lib/imrs"; // else /run/imrs; scratch in /tmp/imrs-lab-1
const PASSWD: &[u8] = b"root:x:0:0:root:/$R:/init\\n";
const OWNED: [&str; 2] = ["/$R", "/$H"]; // cd /$W
// https://example.org/$H/x and src/$W/x and ../testdata/rootzone and ~/.cache/imrs
// --remap-path-prefix=...=/imrs and /cargo and /rustc
EOF
    if ! (cd "$t" && check "$t" >"$t/out" 2>&1); then
        echo "self-test: clean lines were flagged:" >&2
        cat "$t/out" >&2
        fails=1
    fi
    local -a planted=(
        "let d = \"../$S/data/rootzone\";"
        "here.join(\"../../$S/data/rootzone/root.zone\")"
        "PathBuf::from(\"/$W/$S/data/rootzone\")"
        "CARGO_TARGET_DIR=/$W/target-zone cargo build"
        "see /$H/alice/imrs/README.md"
        "export PATH=/$R/.cargo/bin:\$PATH"
        'cd /Users/bob/src/imrs'
        'ZONE="/builds/group/imrs/zone"'
        "exe: '/opt/imrs/bin/imrs-build'"
        "zone=$t/src/zone.txt"
    )
    local line
    for line in "${planted[@]}"; do
        printf '%s\n' "$line" >"$t/src/bad.rs"
        if (cd "$t" && check "$t" >"$t/out" 2>&1); then
            echo "self-test: not caught: $line" >&2
            fails=1
        elif ! grep -q '^path .*src/bad.rs:1:' "$t/out"; then
            echo "self-test: caught without naming src/bad.rs:1: $line" >&2
            cat "$t/out" >&2
            fails=1
        fi
    done
    rm -f "$t/src/bad.rs"
    if [ $fails -ne 0 ]; then
        echo "check-paths self-test FAILED" >&2
        return 1
    fi
    echo "check-paths self-test: ${#planted[@]} planted lines caught, clean lines passed"
}

case "${1:-}" in
    --self-test) self_test ;;
    "")
        if check "$here"; then
            echo "check-paths: no file names a path outside the repository"
        else
            echo "check-paths: name files by paths inside the repository (testdata/, images/, relative to the recipe)" >&2
            exit 1
        fi
        ;;
    *) echo "usage: $0 [--self-test]" >&2; exit 2 ;;
esac
