//! CLI tests that need no network: config validation errors name the file, key, value and rule;
//! key handling.

mod common;

use common::*;

#[test]
fn check_shipped_recipes_and_sites() {
    for r in ["qemu", "qemu-knot", "calypso", "pandora"] {
        let o = run(bin()
            .arg("check")
            .arg(repo().join(format!("images/{r}.toml"))));
        assert!(o.status.success(), "{r}: {}", text(&o));
        assert!(text(&o).contains(&format!("imrs-{r}")), "{}", text(&o));
    }
    for s in ["lab", "example"] {
        let o = run(bin()
            .args(["site", "check"])
            .arg(repo().join(format!("images/sites/{s}.toml"))));
        assert!(o.status.success(), "{s}: {}", text(&o));
    }
}

#[test]
fn bad_configs_are_refused_with_names() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("profiles")).unwrap();
    std::fs::copy(
        repo().join("images/profiles/qemu.toml"),
        tmp.path().join("profiles/qemu.toml"),
    )
    .unwrap();
    let base = std::fs::read_to_string(repo().join("images/qemu.toml")).unwrap();
    for (what, text_r, expect) in [
        (
            "unknown key",
            base.replace("[kernel]", "[kernel]\nflavour = \"rt\""),
            "unknown field `flavour`",
        ),
        (
            "missing profile",
            base.replace("profile = \"qemu\"", "profile = \"calypso\""),
            "no such hardware profile",
        ),
    ] {
        let p = tmp.path().join("r.toml");
        std::fs::write(&p, text_r).unwrap();
        let o = run(bin().arg("check").arg(&p));
        assert_eq!(o.status.code(), Some(1), "{what}");
        assert!(
            text(&o).contains(expect) && text(&o).contains("r.toml"),
            "{what}: {}",
            text(&o)
        );
    }
    let site = std::fs::read_to_string(repo().join("images/sites/lab.toml")).unwrap();
    let p = tmp.path().join("s.toml");
    std::fs::write(
        &p,
        site.replace("[bgp]\n", "[bgp]\nannounce = [\"192.0.2.0/24\"]\n"),
    )
    .unwrap();
    let o = run(bin().args(["site", "check"]).arg(&p));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("bgp.announce[0] = 192.0.2.0/24"),
        "{}",
        text(&o)
    );
}

#[test]
fn keygen_refuses_overwrite_and_site_signing_roundtrips() {
    let tmp = tempfile::tempdir().unwrap();
    let key = keygen(tmp.path(), "k");
    let o = run(bin().args(["keygen", "--out"]).arg(&key));
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("refusing to overwrite"), "{}", text(&o));
    let site = tmp.path().join("lab.toml");
    std::fs::copy(repo().join("images/sites/lab.toml"), &site).unwrap();
    let o = run(bin()
        .args(["site", "sign"])
        .arg(&site)
        .arg("--key")
        .arg(&key));
    assert!(o.status.success(), "{}", text(&o));
    assert!(tmp.path().join("lab.toml.sig").exists());
}
