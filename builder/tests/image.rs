//! End-to-end tests of images: reproducible builds, verification catching every kind of
//! tampering, inspect, bad build inputs, and booting the image under QEMU to the init's banner.
//! They need the Debian mirror (fetched with apt absent from `PATH`; the host's apt lists only to
//! re-lock when no source has the committed lock's versions) and QEMU for the boot test.
//! Mirror and snapshot fallbacks are tested against a local server in `fetch.rs`.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn build_cmd(recipe: &Path, lock: &Path, key: &Path, out: &Path) -> Command {
    build_cmd_cache(recipe, lock, key, out, &cache())
}

fn build_cmd_cache(recipe: &Path, lock: &Path, key: &Path, out: &Path, cache: &Path) -> Command {
    let mut c = bin();
    c.args(["--quiet", "build"])
        .arg(recipe)
        .arg("--lock")
        .arg(lock)
        .arg("--cache")
        .arg(cache)
        .arg("--key")
        .arg(key)
        .arg("--out")
        .arg(out);
    c
}

#[test]
fn builds_are_bit_for_bit_reproducible() {
    let Some((first, key, lock)) = qemu_image() else {
        return;
    };
    // Second build: another working directory, another time, umask and time zone.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("second");
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg("umask 077; exec \"$@\"")
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_imrs-build"))
        .args(["--quiet", "build"])
        .arg(repo().join("images/qemu.toml"))
        .arg("--lock")
        .arg(lock)
        .arg("--cache")
        .arg(cache())
        .arg("--key")
        .arg(key)
        .arg("--out")
        .arg(&out)
        .arg("--site")
        .arg(first.parent().unwrap().join("site.toml"))
        .current_dir(tmp.path())
        .env("TZ", "Pacific/Kiritimati")
        .env("LC_ALL", "C");
    let o = run(&mut c);
    assert!(o.status.success(), "second build: {}", text(&o));
    let mut names: Vec<_> = std::fs::read_dir(first)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names.len(), 5, "{names:?}");
    for n in names {
        let a = std::fs::read(first.join(&n)).unwrap();
        let b = std::fs::read(out.join(&n)).unwrap();
        assert!(a == b, "{n:?} differs between the two builds");
    }
}

#[test]
fn verify_names_what_was_tampered_with() {
    let Some((image, key, _)) = qemu_image() else {
        return;
    };
    let pubkey = format!("{}.pub", key.display());
    let verify =
        |dir: &Path, pubkey: &str| run(bin().arg("verify").arg(dir).arg("--pubkey").arg(pubkey));
    let o = verify(image, &pubkey);
    assert!(o.status.success(), "clean image: {}", text(&o));

    // Another key.
    let tmp = tempfile::tempdir().unwrap();
    let other = keygen(tmp.path(), "other");
    let o = verify(image, &format!("{}.pub", other.display()));
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("manifest.sig"), "{}", text(&o));

    // One flipped byte in each file (in the middle), and a truncated initramfs.
    for (name, expect) in [
        ("vmlinuz", "vmlinuz: sha256"),
        ("initramfs.cpio.zst", "initramfs.cpio.zst: sha256"),
        ("manifest.json", "manifest.sig"),
        ("manifest.sig", "manifest.sig"),
    ] {
        let d = tmp.path().join(format!("flip-{name}"));
        copy_dir(image, &d);
        let p = d.join(name);
        let mut data = std::fs::read(&p).unwrap();
        let i = data.len() / 2;
        data[i] ^= if name == "manifest.sig" { 0x01 } else { 0x20 };
        // Keep the signature file hex: flip between two hex digits.
        if name == "manifest.sig" && !data[i].is_ascii_hexdigit() {
            data[i] = if data[i] == b'0' { b'1' } else { b'0' };
        }
        std::fs::write(&p, &data).unwrap();
        let o = verify(&d, &pubkey);
        assert_eq!(o.status.code(), Some(3), "{name}: {}", text(&o));
        assert!(text(&o).contains(expect), "{name}: {}", text(&o));
    }
    let d = tmp.path().join("truncated");
    copy_dir(image, &d);
    let p = d.join("initramfs.cpio.zst");
    let data = std::fs::read(&p).unwrap();
    std::fs::write(&p, &data[..data.len() - 4096]).unwrap();
    let o = verify(&d, &pubkey);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        text(&o).contains("initramfs.cpio.zst: size"),
        "{}",
        text(&o)
    );
    // A file the manifest does not list.
    let d = tmp.path().join("extra");
    copy_dir(image, &d);
    std::fs::write(d.join("backdoor"), b"x").unwrap();
    let o = verify(&d, &pubkey);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("backdoor: not listed"), "{}", text(&o));
}

#[test]
fn inspect_lists_packages_and_files() {
    let Some((image, _, _)) = qemu_image() else {
        return;
    };
    let o = run(bin().arg("inspect").arg(image));
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    for needle in [
        "bird2",
        "nsd",
        "/init",
        "/usr/sbin/bird",
        "/usr/sbin/nsd",
        "/etc/imrs/image.json",
        "virtio_net.ko",
        "/etc/imrs/root-anchors.xml",
    ] {
        assert!(t.contains(needle), "inspect lacks {needle}:\n{t}");
    }
    let o = run(bin().args(["--json", "inspect"]).arg(image));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["files"].as_array().unwrap().len() > 50);
}

/// The size explained (issue 15): with the package cache every file has its package, the
/// packages' bytes add up to the archive's content, the shares to one; the largest file is the
/// init; an image compared with itself shows no change; a --cache that is no cache is refused.
#[test]
fn inspect_explains_the_size_by_package() {
    let Some((image, _, _)) = qemu_image() else {
        return;
    };
    let o = run(bin()
        .args(["--json", "inspect"])
        .arg(image)
        .arg("--cache")
        .arg(cache())
        .arg("--diff")
        .arg(image));
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let size = &v["size"];
    assert_eq!(size["packages_missing_from_cache"], serde_json::json!([]));
    let by = size["by_package"].as_array().unwrap();
    let bytes: u64 = by.iter().map(|p| p["bytes"].as_u64().unwrap()).sum();
    assert_eq!(bytes, size["bytes"].as_u64().unwrap());
    let share: f64 = by.iter().map(|p| p["share"].as_f64().unwrap()).sum();
    assert!((share - 1.0).abs() < 1e-9, "{share}");
    let package_of = |path: &str| {
        v["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["path"] == path)
            .map(|f| f["package"].clone())
            .unwrap_or_else(|| panic!("no {path}"))
    };
    assert_eq!(package_of("/init"), "imrs-init");
    assert_eq!(package_of("/usr/sbin/nsd"), "nsd");
    assert_eq!(package_of("/usr/sbin/bird"), "bird2");
    assert_eq!(package_of("/usr/lib/x86_64-linux-gnu/libc.so.6"), "libc6");
    assert_eq!(package_of("/etc/passwd"), "imrs-build (generated)");
    assert!(
        package_of("/usr/sbin/nft").is_string(),
        "every regular file has a package"
    );
    assert_eq!(v["largest"][0]["path"], "/init");
    let d = &v["diff"];
    for kind in ["added", "removed", "resized", "changed", "packages"] {
        assert_eq!(d[kind], serde_json::json!([]), "{kind}");
    }
    let o = run(bin().arg("inspect").arg(image).arg("--cache").arg(image));
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("not a package cache"), "{}", text(&o));
    let o = run(bin().arg("inspect").arg(image).arg("--cache").arg(cache()));
    let t = text(&o);
    assert!(
        t.contains("by package")
            && t.contains("largest files:")
            && t.contains("/init  (imrs-init)"),
        "{t}"
    );
}

#[test]
fn bad_build_inputs_fail_cleanly_and_write_nothing() {
    let Some((_, key, lock)) = qemu_image() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let recipe = repo().join("images/qemu.toml");

    // Missing key: named, nothing written.
    let out = tmp.path().join("nokey");
    let o = run(&mut build_cmd(
        &recipe,
        lock,
        &tmp.path().join("absent-key"),
        &out,
    ));
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("absent-key"), "{}", text(&o));
    assert!(!out.exists());

    // Unreadable key (garbage).
    let bad = tmp.path().join("garbage-key");
    std::fs::write(&bad, "nope").unwrap();
    let o = run(&mut build_cmd(&recipe, lock, &bad, &out));
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("garbage-key"), "{}", text(&o));
    assert!(!out.exists());

    // A corrupted .deb in the cache: the build names the package; nothing appears in --out.
    let l: serde_json::Value = serde_json::from_slice(&std::fs::read(lock).unwrap()).unwrap();
    let pkg = l["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "libfstrm0")
        .or_else(|| {
            l["packages"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["role"] == "dependency")
        })
        .unwrap();
    let name = pkg["name"].as_str().unwrap();
    let deb = format!(
        "{}_{}_{}.deb",
        name,
        pkg["version"].as_str().unwrap().replace(':', "%3a"),
        pkg["architecture"].as_str().unwrap()
    );
    let cache2 = tmp.path().join("cache");
    std::fs::create_dir_all(cache2.join("debs")).unwrap();
    for e in std::fs::read_dir(cache().join("debs")).unwrap() {
        let e = e.unwrap();
        std::fs::hard_link(e.path(), cache2.join("debs").join(e.file_name()))
            .or_else(|_| {
                std::fs::copy(e.path(), cache2.join("debs").join(e.file_name())).map(|_| ())
            })
            .unwrap();
    }
    let victim = cache2.join("debs").join(&deb);
    let mut data = std::fs::read(&victim).unwrap();
    data[100] ^= 0xff;
    std::fs::remove_file(&victim).unwrap();
    std::fs::write(&victim, &data).unwrap();
    let out = tmp.path().join("corrupt");
    let mut c = build_cmd_cache(&recipe, lock, key, &out, &cache2);
    c.arg("--offline");
    let o = run(&mut c);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains(name) && text(&o).contains("sha256"),
        "{}",
        text(&o)
    );
    assert!(!out.exists(), "nothing may appear in --out");

    // A module that does not exist.
    let rdir = tmp.path().join("recipe");
    std::fs::create_dir_all(rdir.join("profiles")).unwrap();
    std::fs::create_dir_all(rdir.join("files")).unwrap();
    std::fs::copy(
        repo().join("images/profiles/qemu.toml"),
        rdir.join("profiles/qemu.toml"),
    )
    .unwrap();
    std::fs::copy(
        repo().join("images/files/root-anchors.xml"),
        rdir.join("files/root-anchors.xml"),
    )
    .unwrap();
    let text_r = std::fs::read_to_string(&recipe).unwrap();
    std::fs::write(
        rdir.join("qemu.toml"),
        text_r.replace("\"dummy\"", "\"no_such_module_xyz\""),
    )
    .unwrap();
    let out = tmp.path().join("nomod");
    let o = run(&mut build_cmd(&rdir.join("qemu.toml"), lock, key, &out));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("no_such_module_xyz"), "{}", text(&o));
    assert!(!out.exists());
}

#[test]
fn qemu_image_boots_through_platform_site_and_hardware() {
    let Some((image, _, _)) = qemu_image() else {
        return;
    };
    let have_qemu = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok();
    if !require(have_qemu, "qemu-system-x86_64 (install qemu-system-x86)") {
        return;
    }
    let o = run(bin()
        .args(["--json", "boot"])
        .arg(image)
        .args([
            "--append",
            "imrs.poweroff_after_boot=1",
            "--append",
            // No lab network here: end the pipeline after the hardware stage.
            "imrs.stop_after=hardware",
            "--timeout",
            "240",
            "--expect",
            "imrs-init",
        ])
        .args(["--expect", "imrs-qemu 0.1.0", "--expect", "boot summary"])
        .args([
            "--expect",
            "platform    PASSED",
            "--expect",
            "site        PASSED",
        ])
        .args(["--expect", "hardware    PASSED", "--expect", "LAB SITE"]));
    let t = text(&o);
    assert!(o.status.success(), "boot failed:\n{t}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["exit_code"], 0, "guest must power off cleanly:\n{t}");
}
