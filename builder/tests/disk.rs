//! `imrs-build disk` end to end on the qemu image: the disk is bit-for-bit reproducible (another
//! folder, umask and time zone), `bmaptool copy` accepts its bmap and gives the same bytes, it
//! boots under QEMU through UEFI (OVMF) and systemd-boot to the init with slot A, and bad inputs
//! (a tampered image, a disk too small, an image without the boot loader, a site config signed
//! by another key) are refused before anything is written.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use imrs_build::image_dir::{self, BOOT_LOADER, KERNEL, MANIFEST};
use imrs_config::image::Manifest;

fn disk_cmd(image: &Path, key: &Path, out: &Path) -> Command {
    let mut c = bin();
    c.args(["--quiet", "disk"])
        .arg(image)
        .arg("--pubkey")
        .arg(key.with_extension("pub"))
        .arg("--out")
        .arg(out);
    c
}

/// The folder holds only `keep` (no temporary file was left behind).
fn only(dir: &Path, keep: &[&str]) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, keep, "{}", dir.display());
}

#[test]
fn disks_are_reproducible_and_bmaptool_copies_them() {
    let Some((image, key, _)) = qemu_image() else {
        return;
    };
    if !require(have("mke2fs", "-V"), "mke2fs (install e2fsprogs)") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let first = tmp.path().join("one.img");
    let o = run(disk_cmd(image, key, &first).arg("--bmap"));
    assert!(o.status.success(), "disk: {}", text(&o));
    // Second disk: another working directory, umask, time zone and time.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let other = tempfile::tempdir().unwrap();
    let second = other.path().join("two.img");
    let o = run(Command::new("sh")
        .arg("-c")
        .arg("umask 077; exec \"$@\"")
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_imrs-build"))
        .args(["--quiet", "disk"])
        .arg(image)
        .arg("--pubkey")
        .arg(key.with_extension("pub"))
        .arg("--out")
        .arg(&second)
        .arg("--bmap")
        .current_dir(other.path())
        .env("TZ", "Pacific/Kiritimati"));
    assert!(o.status.success(), "second disk: {}", text(&o));
    let a = std::fs::read(&first).unwrap();
    let b = std::fs::read(&second).unwrap();
    assert_eq!(a.len(), b.len());
    if let Some(i) = a.iter().zip(&b).position(|(x, y)| x != y) {
        panic!("the two disks differ first at byte {i} (MiB {})", i >> 20);
    }
    assert_eq!(
        std::fs::read(first.with_extension("img.bmap")).unwrap(),
        std::fs::read(second.with_extension("img.bmap")).unwrap(),
        "the two bmaps differ"
    );
    only(tmp.path(), &["one.img", "one.img.bmap"]);

    // The partition table as sfdisk reads it: the three named partitions, 1 MiB aligned.
    if have("sfdisk", "--version") {
        let o = run(Command::new("sfdisk").arg("--dump").arg(&first));
        let t = text(&o);
        assert!(o.status.success(), "{t}");
        for name in ["IMRS-ESP", "IMRS-CONFIG", "IMRS-DATA"] {
            assert!(t.contains(&format!("name=\"{name}\"")), "{t}");
        }
        assert!(t.contains("start=        2048"), "{t}");
    }

    if !require(
        have("bmaptool", "--version"),
        "bmaptool (install bmap-tools)",
    ) {
        return;
    }
    let copy = tmp.path().join("copy.img");
    let o = run(Command::new("bmaptool")
        .arg("copy")
        .arg("--bmap")
        .arg(first.with_extension("img.bmap"))
        .arg(&first)
        .arg(&copy));
    assert!(o.status.success(), "bmaptool copy: {}", text(&o));
    assert!(
        std::fs::read(&copy).unwrap() == a,
        "bmaptool's copy differs from the disk"
    );
    // bmaptool checks every range's sha256: a damaged disk is refused.
    let mut damaged = a.clone();
    damaged[4096 * 3] ^= 0xff; // inside the first mapped range (the GPT)
    let bad = tmp.path().join("bad.img");
    std::fs::write(&bad, &damaged).unwrap();
    let o = run(Command::new("bmaptool")
        .arg("copy")
        .arg("--bmap")
        .arg(first.with_extension("img.bmap"))
        .arg(&bad)
        .arg(tmp.path().join("bad-copy.img")));
    assert!(!o.status.success(), "bmaptool accepted a damaged disk");
}

/// A copy of the image folder without the boot loader, re-signed with the image key (an image
/// built from a recipe without `[boot]`).
fn without_boot_loader(image: &Path, key: &Path, out: &Path) {
    let mut m: Manifest =
        serde_json::from_slice(&std::fs::read(image.join(MANIFEST)).unwrap()).unwrap();
    m.artifacts.retain(|a| a.name != BOOT_LOADER);
    let files: Vec<(String, Vec<u8>)> = m
        .artifacts
        .iter()
        .map(|a| (a.name.clone(), std::fs::read(image.join(&a.name)).unwrap()))
        .collect();
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    let key = imrs_config::keys::read_secret(key).unwrap();
    image_dir::write(out, &refs, &m, &key).unwrap();
}

#[test]
fn bad_inputs_are_refused_before_anything_is_written() {
    let Some((image, key, _)) = qemu_image() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let disk = out.join("disk.img");
    // Exit 3: the image does not verify; 1: any other refusal.
    let refused = |cmd: &mut Command, code: i32, expect: &[&str]| {
        let o = run(cmd);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(code), "{t}");
        for e in expect {
            assert!(t.contains(e), "expected {e:?} in: {t}");
        }
        only(&out, &[]);
    };

    // A tampered kernel.
    let tampered = tmp.path().join("tampered");
    copy_dir(image, &tampered);
    let mut k = std::fs::read(tampered.join(KERNEL)).unwrap();
    k[1000] ^= 1;
    std::fs::write(tampered.join(KERNEL), k).unwrap();
    refused(
        disk_cmd(&tampered, key, &disk).arg("--bmap"),
        3,
        &["vmlinuz", "sha256"],
    );

    // Signed by another key.
    let other = keygen(tmp.path(), "other-key");
    refused(&mut disk_cmd(image, &other, &disk), 3, &["signature"]);

    // Too small, and not whole MiB.
    refused(
        disk_cmd(image, key, &disk).args(["--size", "100M"]),
        1,
        &["--size", "too small", "MiB"],
    );
    refused(
        disk_cmd(image, key, &disk).args(["--size", "400000001"]),
        1,
        &["--size", "MiB"],
    );

    // No boot loader: names the re-build needed.
    let old = tmp.path().join("no-loader");
    without_boot_loader(image, key, &old);
    refused(
        &mut disk_cmd(&old, key, &disk),
        1,
        &[BOOT_LOADER, "[boot]", "imrs-build lock"],
    );

    // A site config signed by a key the image does not trust.
    let site = tmp.path().join("site.toml");
    std::fs::copy(repo().join("images/sites/lab.toml"), &site).unwrap();
    let o = run(bin()
        .args(["--quiet", "site", "sign"])
        .arg(&site)
        .arg("--key")
        .arg(&other));
    assert!(o.status.success(), "{}", text(&o));
    refused(
        disk_cmd(image, key, &disk).arg("--site").arg(&site),
        1,
        &["site-signing key"],
    );

    // A command-line word with a space.
    refused(
        disk_cmd(image, key, &disk).args(["--append", "imrs.x=1 init=/bin/sh"]),
        1,
        &["--append"],
    );
}

fn image_site(image: &Path) -> PathBuf {
    image.parent().unwrap().join("site.toml")
}

#[test]
fn the_disk_boots_through_uefi_from_slot_a() {
    let Some((image, key, _)) = qemu_image() else {
        return;
    };
    if !uefi_prerequisites() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("disk.img");
    let o = run(disk_cmd(image, key, &disk)
        .arg("--site")
        .arg(image_site(image))
        // A bench check: no lab network here.
        .args(["--append", "imrs.stop_after=hardware"])
        .args(["--append", "imrs.poweroff_after_boot=1"]));
    assert!(o.status.success(), "disk: {}", text(&o));
    let o = run(bin()
        .args(["--json", "boot"])
        .arg(&disk)
        .args(["--timeout", "300"])
        .args(["--expect", "EFI stub"])
        .args(["--expect", "imrs-qemu 0.1.0"])
        .args(["--expect", "started from disk slot a"])
        .args(["--expect", "from partition IMRS-CONFIG"])
        .args(["--expect", "site        PASSED"])
        .args(["--expect", "hardware    PASSED"]));
    let t = text(&o);
    assert!(o.status.success(), "boot failed:\n{t}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["guest_exit_code"], 0,
        "guest must power off cleanly:\n{t}"
    );
    // Slot A's entry, read back with the library the init uses: blessed, the image's manifest
    // digest and the slot on its command line; slot B empty.
    let digest = image_dir::sha256_hex(&std::fs::read(image.join(MANIFEST)).unwrap());
    let mut esp = imrs_disk::Esp::open(std::fs::File::open(&disk).unwrap()).unwrap();
    let [a, b] = esp.slots().unwrap();
    assert!(a.bootable() && a.blessed(), "{a:?}");
    assert_eq!(a.image.as_ref().unwrap().manifest_sha256, digest);
    let entry = a.entry.as_ref().unwrap().entry.as_ref().unwrap();
    assert_eq!(entry.option("imrs.manifest"), Some(digest.as_str()));
    assert_eq!(entry.option("imrs.slot"), Some("a"));
    assert!(b.entry.is_none() && b.image.is_none(), "{b:?}");
    // Appending to a disk's command line is refused with the way to do it.
    let o = run(bin()
        .args(["--quiet", "boot"])
        .arg(&disk)
        .args(["--append", "imrs.x=1"]));
    assert!(
        !o.status.success() && text(&o).contains("imrs-build disk --append"),
        "{}",
        text(&o)
    );
}

/// Boots the disk once; returns the slot started and the console.
fn boot_slot(disk: &Path) -> (String, String) {
    let o = run(bin()
        .args(["--json", "boot"])
        .arg(disk)
        .args(["--timeout", "300"]));
    let t = text(&o);
    assert!(o.status.success(), "boot failed:\n{t}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let console: Vec<&str> = v["console"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l.as_str())
        .collect();
    let slot = console
        .iter()
        .filter_map(|l| l.split("started from disk slot ").nth(1))
        .map(str::to_string)
        .next()
        .unwrap_or_else(|| panic!("no slot on the console:\n{t}"));
    (slot, console.join("\n"))
}

/// `update` writes slot B with a boot counter; real systemd-boot under OVMF tries it as many
/// times as it has tries: B never becomes healthy (its pipeline stops after the hardware stage),
/// so the init reboots it each time instead of staying off the air, and once its tries are
/// spent systemd-boot boots A again. A tampered image changes nothing on the disk.
#[test]
fn an_update_is_tried_then_falls_back_when_never_blessed() {
    let Some((image, key, _)) = qemu_image() else {
        return;
    };
    if !uefi_prerequisites() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("disk.img");
    let bench = [
        "--append",
        "imrs.stop_after=hardware",
        "--append",
        "imrs.poweroff_after_boot=1",
    ];
    let o = run(disk_cmd(image, key, &disk)
        .arg("--site")
        .arg(image_site(image))
        .args(bench));
    assert!(o.status.success(), "disk: {}", text(&o));

    // Refused before anything is written.
    let tampered = tmp.path().join("tampered");
    copy_dir(image, &tampered);
    let mut k = std::fs::read(tampered.join(KERNEL)).unwrap();
    k[77] ^= 1;
    std::fs::write(tampered.join(KERNEL), k).unwrap();
    let before = std::fs::read(&disk).unwrap();
    let o = run(bin()
        .args(["--quiet", "update"])
        .arg(&disk)
        .arg(&tampered)
        .arg("--pubkey")
        .arg(key.with_extension("pub")));
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        std::fs::read(&disk).unwrap() == before,
        "a refused update changed the disk"
    );

    let o = run(bin()
        .args(["--json", "update"])
        .arg(&disk)
        .arg(image)
        .arg("--pubkey")
        .arg(key.with_extension("pub"))
        .args(["--tries", "2"])
        .args(["--append", "imrs.stop_after=hardware"]));
    assert!(o.status.success(), "update: {}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["slot"], "b");
    assert_eq!(v["entry"], "imrs-b+2.conf");
    assert_eq!(v["next_boot"], "b");
    assert_eq!(v["fallback"], "a");

    let boots: Vec<(String, String)> = (0..3).map(|_| boot_slot(&disk)).collect();
    let seen: Vec<&str> = boots.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(seen, ["b", "b", "a"], "slots booted");
    for (console, expect) in [
        (
            &boots[0].1,
            "rebooting: systemd-boot tries it again (1 tries left)",
        ),
        (
            &boots[1].1,
            "rebooting: its tries are spent, systemd-boot boots slot a",
        ),
    ] {
        assert!(
            console.contains("slot b on trial") && console.contains(expect),
            "expected {expect:?}:\n{console}"
        );
    }
    assert!(
        boots[2].1.contains("systemd-boot started imrs-a.conf"),
        "{}",
        boots[2].1
    );
    // systemd-boot counted both tries in the entry's name.
    let mut esp = imrs_disk::Esp::open(std::fs::File::open(&disk).unwrap()).unwrap();
    assert_eq!(
        esp.entry_files().unwrap(),
        ["imrs-a.conf", "imrs-b+0-2.conf"]
    );
    assert_eq!(
        imrs_disk::next_boot(&esp.slots().unwrap()),
        Some(imrs_disk::Slot::A)
    );
}
