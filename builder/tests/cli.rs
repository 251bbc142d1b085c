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

/// Writes `text` as `name` in `dir` and runs `site check` on it.
fn site_check(dir: &std::path::Path, name: &str, text: &str) -> std::process::Output {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    run(bin().args(["site", "check"]).arg(&p))
}

#[test]
fn site_check_refuses_what_the_appliance_would() {
    let tmp = tempfile::tempdir().unwrap();
    let lab = std::fs::read_to_string(repo().join("images/sites/lab.toml")).unwrap();
    for (what, site, expect) in [
        (
            "link-local neighbour without interface",
            lab.replace("address = \"2001:db8:1::1\"", "address = \"fe80::1\""),
            "bgp.neighbors[1].address = fe80::1: a link-local neighbour needs `interface`",
        ),
        (
            "password with a control character",
            lab.replace(
                "address = \"192.0.2.1\"",
                "address = \"192.0.2.1\"\npassword = \"a\\u0007b\"",
            ),
            "bgp.neighbors[0].password = (hidden)",
        ),
        (
            "IPv4-mapped IMRS space on an interface",
            lab.replace(
                "\"192.0.2.10/24\", ",
                "\"192.0.2.10/24\", \"::ffff:199.7.83.42/128\", ",
            ),
            "interfaces[0].addresses[1] = ::ffff:199.7.83.42/128: IMRS service space",
        ),
        (
            "URL with spaces",
            lab.replace("https://192.0.2.80:8443/v1/reports", "https://x y z"),
            "phone_home.url = https://x y z: not a URL",
        ),
        (
            "site_id forging a line",
            lab.replace(
                "site_id = \"lab-01\"",
                "site_id = \"lab\\nerror: forged\\u001b[2J\"",
            ),
            "site_id = lab\\nerror: forged\\u{1b}[2J: letters",
        ),
    ] {
        let o = site_check(tmp.path(), "s.toml", &site);
        assert_eq!(o.status.code(), Some(1), "{what}: {}", text(&o));
        let out = text(&o);
        assert!(out.contains(expect), "{what}: {out}");
        assert!(out.contains("s.toml"), "{what}: names the file: {out}");
        assert!(
            !out.contains('\u{1b}') && out.lines().count() == 1,
            "{what}: one escaped line: {out:?}"
        );
    }
    // Accepted, and what it is bound to is shown.
    let o = site_check(tmp.path(), "ok.toml", &lab);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("device any, sequence 1"), "{}", text(&o));
}

#[test]
fn bounded_reads_name_the_file_and_the_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let o = run(bin().args(["site", "check", "/dev/zero"]));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("/dev/zero: the site config is a character device, not a regular file"),
        "{}",
        text(&o)
    );
    let big = tmp.path().join("big.toml");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(50 << 20)
        .unwrap();
    let o = run(bin().args(["site", "check"]).arg(&big));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("big.toml: the site config is larger than the limit of 262144 bytes"),
        "{}",
        text(&o)
    );
    let o = run(bin().arg("check").arg(&big));
    assert!(
        text(&o).contains("the recipe is larger than the limit of 262144 bytes"),
        "{}",
        text(&o)
    );
    let o = run(bin()
        .args(["site", "sign"])
        .arg(&big)
        .arg("--key")
        .arg(&big));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("the secret key is larger than the limit of 16384 bytes"),
        "{}",
        text(&o)
    );
}

#[test]
fn site_sign_requires_device_and_sequence() {
    let tmp = tempfile::tempdir().unwrap();
    let key = keygen(tmp.path(), "k");
    let lab = std::fs::read_to_string(repo().join("images/sites/lab.toml")).unwrap();
    for (drop, field) in [
        ("device = \"any\"\n", "missing field `device`"),
        ("sequence = 1\n", "missing field `sequence`"),
    ] {
        let p = tmp.path().join("s.toml");
        std::fs::write(&p, lab.replace(drop, "")).unwrap();
        let o = run(bin().args(["site", "sign"]).arg(&p).arg("--key").arg(&key));
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(text(&o).contains(field), "{}", text(&o));
        assert!(!tmp.path().join("s.toml.sig").exists());
    }
}

#[test]
fn keys_from_keygen_are_readable_by_openssl_and_empty_keys_say_so() {
    let tmp = tempfile::tempdir().unwrap();
    let key = keygen(tmp.path(), "k");
    let have_openssl = std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if require(have_openssl, "openssl (to read the keys keygen writes)") {
        for args in [
            &["pkey", "-noout", "-in"][..],
            &["pkey", "-pubin", "-noout", "-in"][..],
        ] {
            let file = if args.contains(&"-pubin") {
                tmp.path().join("k.pub")
            } else {
                key.clone()
            };
            let o = run(std::process::Command::new("openssl").args(args).arg(&file));
            assert!(o.status.success(), "openssl {args:?}: {}", text(&o));
        }
    }
    let empty = tmp.path().join("empty.pub");
    std::fs::write(&empty, "").unwrap();
    let o = run(bin()
        .arg("verify")
        .arg(tmp.path())
        .arg("--pubkey")
        .arg(&empty));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("empty key file {}", empty.display())),
        "{}",
        text(&o)
    );
}

#[test]
fn check_refuses_unsafe_recipes() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("profiles")).unwrap();
    std::fs::create_dir(tmp.path().join("files")).unwrap();
    std::fs::copy(
        repo().join("images/profiles/qemu.toml"),
        tmp.path().join("profiles/qemu.toml"),
    )
    .unwrap();
    std::fs::copy(
        repo().join("images/files/root-anchors.xml"),
        tmp.path().join("files/root-anchors.xml"),
    )
    .unwrap();
    let base = std::fs::read_to_string(repo().join("images/qemu.toml")).unwrap();
    let file = |source: &str, dest: &str, mode: &str| {
        format!(
            "{base}\n[[files]]\nsource = \"{source}\"\ndest = \"{dest}\"\nsha256 = \"{}\"\nmode = {mode}\n",
            "0".repeat(64)
        )
    };
    for (what, text_r, expect) in [
        (
            "source outside the folder",
            file("../../etc/shadow", "/etc/x", "0o644"),
            "files[1].source = ../../etc/shadow: may not leave the recipe's folder",
        ),
        (
            "setuid",
            file("files/root-anchors.xml", "/etc/x", "0o4755"),
            "files[1].mode = 4755: no setuid",
        ),
        (
            "over the init",
            file("files/root-anchors.xml", "/init", "0o755"),
            "files[1].dest = /init: the image owns this path",
        ),
        (
            "a shell package",
            base.replace("\"bird2\", \"nsd\"", "\"bird2\", \"nsd\", \"busybox\""),
            "userland.packages[2] = busybox: gives the appliance a shell",
        ),
    ] {
        let p = tmp.path().join("r.toml");
        std::fs::write(&p, text_r).unwrap();
        let o = run(bin().arg("check").arg(&p));
        assert_eq!(o.status.code(), Some(1), "{what}: {}", text(&o));
        assert!(text(&o).contains(expect), "{what}: {}", text(&o));
    }
    // From another working directory, a recipe's files are found next to it.
    let o = run(bin()
        .current_dir(tmp.path().join("profiles"))
        .arg("check")
        .arg(repo().join("images/qemu.toml")));
    assert!(o.status.success(), "{}", text(&o));
}
