//! Recipe and profile tests: the shipped recipes load; each bad input names file, key and rule.

use std::path::{Path, PathBuf};

use super::*;

fn images() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../images")
}

/// Copies the shipped qemu recipe and profiles into a temp dir, applying `edit` to the recipe text.
fn variant(edit: impl Fn(String) -> String) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("profiles")).unwrap();
    for p in ["qemu", "calypso", "pandora"] {
        std::fs::copy(
            images().join(format!("profiles/{p}.toml")),
            dir.path().join(format!("profiles/{p}.toml")),
        )
        .unwrap();
    }
    let text = std::fs::read_to_string(images().join("qemu.toml")).unwrap();
    let path = dir.path().join("qemu.toml");
    std::fs::write(&path, edit(text)).unwrap();
    (dir, path)
}

#[test]
fn shipped_recipes_load() {
    for (name, dns, profile) in [
        ("qemu", DnsImpl::Nsd, "qemu"),
        ("qemu-knot", DnsImpl::Knot, "qemu"),
        ("calypso", DnsImpl::Nsd, "calypso"),
        ("pandora", DnsImpl::Knot, "pandora"),
    ] {
        let r = load(&images().join(format!("{name}.toml"))).unwrap();
        assert_eq!(r.recipe.dns, dns, "{name}");
        assert_eq!(r.profile.name, profile);
        assert!(r.modules.iter().all(|m| !m.contains('-')));
        assert_eq!(r.sha256.len(), 64);
    }
}

#[test]
fn bad_recipes_name_key_and_rule() {
    type Edit = dyn Fn(String) -> String;
    let cases: &[(&str, &Edit, &str)] = &[
        (
            "unknown key",
            &|t| t.replace("dns = \"nsd\"", "dns = \"nsd\"\ncolour = \"blue\""),
            "unknown field `colour`",
        ),
        (
            "missing profile",
            &|t| t.replace("profile = \"qemu\"", "profile = \"toaster\""),
            "no such hardware profile",
        ),
        (
            "bad dns",
            &|t| t.replace("dns = \"nsd\"", "dns = \"bind\""),
            "unknown variant `bind`",
        ),
        (
            "dns without package",
            &|t| t.replace("dns = \"nsd\"", "dns = \"knot\""),
            "needs the package knot",
        ),
        (
            "version",
            &|t| t.replace("version = 1", "version = 7"),
            "version = 7",
        ),
        (
            "bad module",
            &|t| t.replace("\"dummy\"", "\"dum my\""),
            "kernel.modules[1]",
        ),
        (
            "not a kernel",
            &|t| t.replace("linux-image-amd64", "bash"),
            "kernel.package = bash",
        ),
        (
            "bad sha",
            &|t| t.replace("sha256 = \"fa2d", "sha256 = \"zz2d"),
            "files[0].sha256",
        ),
        (
            "relative dest",
            &|t| t.replace("dest = \"/etc", "dest = \"etc"),
            "files[0].dest",
        ),
        (
            "bad mirror",
            &|t| t.replace("\"http://deb.debian.org/debian\",", "\"ftp://x/debian\","),
            "apt.mirrors[0] = ftp://x/debian",
        ),
        (
            "bad suite",
            &|t| t.replace("\"bookworm-updates\"", "\"book worm\""),
            "apt.suites[1]",
        ),
        (
            "no bird",
            &|t| t.replace("\"bird2\", \"nsd\"", "\"nsd\""),
            "BGP needs bird2",
        ),
    ];
    for (what, edit, expect) in cases {
        let (_d, path) = variant(edit);
        let err = load(&path).expect_err(what).to_string();
        assert!(err.contains(expect), "{what}: {err}");
        assert!(
            err.contains("qemu.toml") || err.contains("toaster"),
            "{what}: names the file: {err}"
        );
    }
}

#[test]
fn bad_profile_is_named() {
    let (dir, path) = variant(|t| t);
    let prof = dir.path().join("profiles/qemu.toml");
    let text = std::fs::read_to_string(&prof).unwrap();
    std::fs::write(&prof, text.replace("min_mib = 512", "min_mib = 12")).unwrap();
    let err = load(&path).unwrap_err().to_string();
    assert!(err.contains("memory.min_mib = 12"), "{err}");
    std::fs::write(&prof, text.replace("name = \"qemu\"", "name = \"kvm\"")).unwrap();
    let err = load(&path).unwrap_err().to_string();
    assert!(err.contains("must match the file name"), "{err}");
}
