//! Site config sources and signatures, against fixture trees.

use std::path::Path;

use imrs_config::keys;

use super::*;

fn lab_site() -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/sites/lab.toml")).unwrap()
}

/// A root with the image key and, if given, a site.toml and signature in the initramfs.
fn root_with(
    site: Option<&[u8]>,
    sig: Option<String>,
) -> (tempfile::TempDir, ed25519_dalek::SigningKey) {
    let d = tempfile::tempdir().unwrap();
    let key = keys::generate().unwrap();
    let etc = d.path().join("etc/imrs");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(
        etc.join("site-signing.pub"),
        keys::public_pem(&key.verifying_key()),
    )
    .unwrap();
    if let Some(text) = site {
        std::fs::write(etc.join("site.toml"), text).unwrap();
    }
    if let Some(s) = sig {
        std::fs::write(etc.join("site.toml.sig"), s).unwrap();
    }
    (d, key)
}

#[test]
fn signed_initramfs_config_is_accepted() {
    let text = lab_site();
    let (d, key) = root_with(Some(&text), None);
    std::fs::write(
        d.path().join("etc/imrs/site.toml.sig"),
        keys::sign_hex(&key, &text),
    )
    .unwrap();
    let (site, origin) = load(d.path(), false).unwrap();
    assert_eq!(origin, "initramfs /etc/imrs/site.toml");
    assert!(site.lab);
}

#[test]
fn every_refusal_says_why() {
    let text = lab_site();
    let other = keys::generate().unwrap();
    let mut tampered = text.clone();
    tampered.extend_from_slice(b"\n# edited after signing\n");
    let invalid = b"version = 1\ninstance = \"x\"\n".to_vec();
    type Case = (
        &'static str,
        Option<Vec<u8>>,
        Box<dyn Fn(&ed25519_dalek::SigningKey) -> Option<String>>,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        ("missing", None, Box::new(|_| None), "no site config"),
        (
            "unsigned",
            Some(text.clone()),
            Box::new(|_| None),
            "not signed",
        ),
        (
            "wrong key",
            Some(text.clone()),
            Box::new(move |_| Some(keys::sign_hex(&other, &lab_site()))),
            "signature rejected",
        ),
        (
            "tampered",
            Some(tampered),
            Box::new(|k| Some(keys::sign_hex(k, &lab_site()))),
            "signature rejected",
        ),
        (
            "garbage signature",
            Some(text.clone()),
            Box::new(|_| Some("zz".into())),
            "signature rejected",
        ),
        (
            "signed but invalid",
            Some(invalid.clone()),
            Box::new(move |k| Some(keys::sign_hex(k, &invalid))),
            "signed but invalid",
        ),
    ];
    for (what, site, sign, expect) in cases {
        let (d, key) = root_with(site.as_deref(), None);
        if let Some(sig) = sign(&key) {
            std::fs::write(d.path().join("etc/imrs/site.toml.sig"), sig).unwrap();
        }
        let e = load(d.path(), false).unwrap_err();
        let msg = crate::log::chain(&e);
        assert!(msg.contains(expect), "{what}: {msg}");
    }
}

#[test]
fn missing_image_key_is_named() {
    let d = tempfile::tempdir().unwrap();
    let e = load(d.path(), false).unwrap_err();
    assert!(matches!(e, SiteError::Key(_)), "{e}");
    assert!(e.to_string().contains("site-signing.pub"));
}

#[test]
fn config_partition_is_found_by_gpt_name_and_never_skipped() {
    let d = tempfile::tempdir().unwrap();
    for (dev, extra) in [
        ("vda", ""),
        ("vda1", "PARTNAME=IMRS-DATA\n"),
        ("vda2", "PARTNAME=IMRS-CONFIG\n"),
    ] {
        let p = d.path().join("sys/class/block").join(dev);
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(
            p.join("uevent"),
            format!("MAJOR=254\nDEVNAME={dev}\n{extra}"),
        )
        .unwrap();
    }
    let found = find_partition(&d.path().join("sys"), Path::new("/dev"), CONFIG_PARTNAME);
    assert_eq!(found, Some(PathBuf::from("/dev/vda2")));
    assert_eq!(
        find_partition(&d.path().join("sys"), Path::new("/dev"), "NOPE"),
        None
    );
    // With a signed initramfs config too, a partition that cannot be used is a failure.
    let text = lab_site();
    let key = keys::generate().unwrap();
    let etc = d.path().join("etc/imrs");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(
        etc.join("site-signing.pub"),
        keys::public_pem(&key.verifying_key()),
    )
    .unwrap();
    std::fs::write(etc.join("site.toml"), &text).unwrap();
    std::fs::write(etc.join("site.toml.sig"), keys::sign_hex(&key, &text)).unwrap();
    let e = load(d.path(), false).unwrap_err();
    assert!(matches!(e, SiteError::Partition { .. }), "{e}");
}

#[test]
fn unknown_filesystems_are_a_clear_failure() {
    let e = mount_ro(
        "nodev\tsysfs\nnodev\tproc\n",
        Path::new("/dev/vda2"),
        "/nonexistent/x",
    )
    .unwrap_err();
    assert!(e.starts_with("filesystem not available"), "{e}");
    assert_eq!(
        known_filesystems("nodev\tproc\n\text4\n"),
        vec!["proc", "ext4"]
    );
}
