//! `imrs-build flash` end to end: onto a file and onto a loop device (root; under CI=true a
//! missing prerequisite fails), the record signed and the device enrolled, the flashed disk
//! booting with the flashed device key; a byte changed on the device behind the writer caught
//! by the read-back with its range named; refusals (tampered disk, foreign site config, a
//! mounted device, no confirmation) writing nothing. `verify-device` and `flash --check` on a
//! flashed file: a match, a changed byte in the ESP or in IMRS-DATA (with the record) and an
//! interrupted flash named by range, a tampered source refused before the device is read.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use imrs_build::flash::write::{FlashError, read_back, write_ranges};
use imrs_disk::bmap::Bmap;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A loop device over a new sparse file of `size` bytes; detached on drop.
struct Loop {
    dev: PathBuf,
}

impl Loop {
    fn new(backing: &Path, size: u64) -> Option<Loop> {
        std::fs::File::create(backing)
            .unwrap()
            .set_len(size)
            .unwrap();
        let o = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(backing)
            .output()
            .ok()?;
        if !o.status.success() {
            eprintln!("losetup: {}", String::from_utf8_lossy(&o.stderr));
            return None;
        }
        Some(Loop {
            dev: PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()),
        })
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).output();
    }
}

/// The bench disk of the qemu image (stops after the hardware stage and powers off) and its
/// site config.
fn bench_disk(dir: &Path) -> Option<(PathBuf, PathBuf, PathBuf, PathBuf)> {
    let (image, key, _) = qemu_image()?;
    let disk = dir.join("disk.img");
    let o = run(bin()
        .args(["--quiet", "disk"])
        .arg(image)
        .arg("--pubkey")
        .arg(key.with_extension("pub"))
        .arg("--out")
        .arg(&disk)
        .args(["--append", "imrs.stop_after=hardware"])
        .args(["--append", "imrs.poweroff_after_boot=1"]));
    assert!(o.status.success(), "disk: {}", text(&o));
    let site = image.parent().unwrap().join("site.toml");
    Some((disk, image.clone(), key.clone(), site))
}

fn flash(source: &Path, target: &Path, key: &Path, site: &Path) -> Command {
    let mut c = bin();
    c.args(["--json", "flash"])
        .arg(source)
        .arg(target)
        .arg("--pubkey")
        .arg(key.with_extension("pub"))
        .arg("--site")
        .arg(site)
        .arg("--key")
        .arg(key);
    c
}

#[test]
fn a_flashed_file_boots_with_its_device_key_and_the_record_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((disk, _image, key, site)) = bench_disk(tmp.path()) else {
        return;
    };
    let target = tmp.path().join("appliance.img");
    let enrol = tmp.path().join("enrolled");
    let o = run(flash(&disk, &target, &key, &site)
        .arg("--yes")
        .arg("--enrol")
        .arg(&enrol));
    let t = text(&o);
    assert!(o.status.success(), "flash: {t}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let record = &v["record"];
    let device_key = record["device_key_id"].as_str().unwrap().to_string();
    assert_eq!(record["kind"], "imrs-flash-record");
    assert_eq!(record["site"]["site_id"], "lab-01");
    assert_eq!(record["target"]["kind"], "file");
    assert_eq!(record["read_back_sha256"].as_str().unwrap().len(), 64);
    // The record is signed with --key over its canonical JSON.
    let pubkey = imrs_config::keys::read_public(&key.with_extension("pub")).unwrap();
    let sig = imrs_config::keys::parse_signature(v["signature"].as_str().unwrap(), &key).unwrap();
    imrs_config::keys::verify(&pubkey, &imrs_config::image::canonical_json(record), &sig)
        .expect("the flash record's signature verifies");
    // Enrolled: the receiver's folder has the key, the inventory the record.
    let pubp = enrol.join(format!("{device_key}.pub"));
    let dk = imrs_config::keys::read_public(&pubp).unwrap();
    assert_eq!(imrs_config::keys::key_id(&dk), device_key);
    let inv = std::fs::read_to_string(enrol.join("inventory.jsonl")).unwrap();
    assert_eq!(inv.lines().count(), 1);
    assert!(inv.contains(&device_key));

    if !uefi_prerequisites() {
        return;
    }
    let o = run(bin()
        .args(["--json", "boot"])
        .arg(&target)
        .args(["--timeout", "300"])
        .args(["--expect", "site        PASSED"])
        .args(["--expect", &format!("(key:{device_key})")]));
    assert!(o.status.success(), "boot: {}", text(&o));
}

#[test]
fn a_loop_device_is_flashed_and_a_byte_changed_behind_the_writer_is_caught() {
    if !require(
        is_root() && have("losetup", "--version"),
        "root and losetup (util-linux) for loop devices",
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let Some((disk, _image, key, site)) = bench_disk(tmp.path()) else {
        return;
    };
    let Some(lo) = Loop::new(&tmp.path().join("lo.img"), 512 << 20) else {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "no loop device under CI"
        );
        eprintln!("SKIP: no loop device could be set up");
        return;
    };
    let o = run(flash(&disk, &lo.dev, &key, &site).arg("--yes"));
    assert!(o.status.success(), "flash: {}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["record"]["target"]["kind"], "disk");
    assert_eq!(v["record"]["read_back"], "direct");
    assert_eq!(v["record"]["target"]["size"], 512u64 << 20);
    // verify-device reads the device back with O_DIRECT and finds it as written.
    let record = tmp.path().join("record.json");
    std::fs::write(&record, &o.stdout).unwrap();
    let o = run(verify_device(&lo.dev, &disk, &key)
        .arg("--record")
        .arg(&record));
    assert!(o.status.success(), "verify-device: {}", text(&o));
    let ok: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(ok["read"], "direct");

    // The same write through the library, with a byte changed on the device between the write
    // and the read-back (another writer, the device lying): the range is named.
    let map = Bmap::of_file(&disk).unwrap();
    let src = std::fs::File::open(&disk).unwrap();
    let dst = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&lo.dev)
        .unwrap();
    let (_, written) = write_ranges(&src, &dst, &map, &mut |_| {}).unwrap();
    assert_eq!(written, map);
    read_back(&lo.dev, &map, &mut |_| {}).expect("a faithful copy reads back");
    let r = map.ranges.last().unwrap();
    let at = r.first * imrs_disk::bmap::BLOCK + 17;
    {
        use std::os::unix::fs::FileExt;
        let mut b = [0u8; 1];
        dst.read_exact_at(&mut b, at).unwrap();
        dst.write_all_at(&[!b[0]], at).unwrap();
        dst.sync_all().unwrap();
    }
    let e = read_back(&lo.dev, &map, &mut |_| {}).unwrap_err();
    assert!(
        matches!(&e, FlashError::Mismatch { first, last, .. } if *first == r.first && *last == r.last),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains(&format!("blocks {}-{}", r.first, r.last)),
        "{e}"
    );
}

fn verify_device(device: &Path, source: &Path, key: &Path) -> Command {
    let mut c = bin();
    c.args(["--json", "verify-device"])
        .arg(device)
        .arg("--source")
        .arg(source)
        .arg("--pubkey")
        .arg(key.with_extension("pub"));
    c
}

/// Runs a check expected to fail with exit 3; its JSON object.
fn wrong(cmd: &mut Command) -> serde_json::Value {
    let o = run(cmd);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], false);
    v
}

/// Flips the byte at `at` of `file`; returns what it was.
fn flip(file: &Path, at: u64) -> u8 {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[!b[0]], at).unwrap();
    f.sync_all().unwrap();
    b[0]
}

#[test]
fn verify_device_names_every_wrong_range() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((disk, _image, key, site)) = bench_disk(tmp.path()) else {
        return;
    };
    let target = tmp.path().join("appliance.img");
    let o = run(flash(&disk, &target, &key, &site).arg("--yes"));
    assert!(o.status.success(), "flash: {}", text(&o));
    let record_path = tmp.path().join("record.json");
    std::fs::write(&record_path, &o.stdout).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["record"]["schema"], 2);
    let written: Vec<(u64, u64)> = v["record"]["written_ranges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r[0].as_u64().unwrap(), r[1].as_u64().unwrap()))
        .collect();
    assert_eq!(
        written.len() as u64,
        v["record"]["ranges"].as_u64().unwrap()
    );
    let parts = imrs_disk::layout::partitions(&mut std::fs::File::open(&target).unwrap()).unwrap();
    let extent = |name: &str| parts.iter().find(|(n, _)| n == name).unwrap().1;
    let (esp, data) = (extent("IMRS-ESP"), extent("IMRS-DATA"));
    let block = imrs_disk::bmap::BLOCK;
    let first_in = |e: imrs_disk::layout::Extent| {
        written
            .iter()
            .position(|(f, _)| f * block >= e.offset && f * block < e.offset + e.len)
            .unwrap()
    };

    // (a) The device matches: without the record (IMRS-CONFIG and IMRS-DATA by content), with
    // it, and as flash --check with the site config.
    let o = run(&mut verify_device(&target, &disk, &key));
    assert!(o.status.success(), "verify-device: {}", text(&o));
    let ok: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(ok["compared"]["IMRS-DATA"], "content");
    assert_eq!(ok["site"]["site_id"], "lab-01");
    assert_eq!(ok["device_key_id"], v["record"]["device_key_id"]);
    assert!(ok["ranges"].as_u64().unwrap() > 0 && ok["bytes"].as_u64().unwrap() > 0);
    let o = run(verify_device(&target, &disk, &key)
        .arg("--record")
        .arg(&record_path));
    assert!(o.status.success(), "verify-device --record: {}", text(&o));
    let ok: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(ok["ranges"].as_u64().unwrap() as usize, written.len());
    assert_eq!(ok["compared"]["IMRS-DATA"], "record");
    let mut check = bin();
    check
        .args(["--json", "flash"])
        .arg(&disk)
        .arg(&target)
        .arg("--pubkey")
        .arg(key.with_extension("pub"))
        .arg("--site")
        .arg(&site)
        .arg("--check");
    let o = run(&mut check);
    assert!(o.status.success(), "flash --check: {}", text(&o));
    let ok: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(ok["compared"]["IMRS-CONFIG"], "site");
    let o = run(bin()
        .arg("verify-device")
        .arg(&target)
        .arg("--source")
        .arg(&disk)
        .arg("--pubkey")
        .arg(key.with_extension("pub")));
    assert!(
        text(&o).contains(" ranges, ") && text(&o).contains("bytes compared"),
        "{}",
        text(&o)
    );

    // (b) A byte changed in the ESP (slot A's area): that range, and only it, is named.
    let i = first_in(esp);
    let at = (written[i].0 + written[i].1) / 2 * block + 100;
    flip(&target, at);
    let e = wrong(&mut verify_device(&target, &disk, &key));
    let w = e["wrong"].as_array().unwrap();
    assert_eq!(w.len(), 1, "{e}");
    assert_eq!(w[0]["offset"], written[i].0 * block, "{e}");
    assert_eq!(w[0]["partition"], "IMRS-ESP");
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains(&format!("1 of {} ranges wrong", e["ranges"])),
        "{e}"
    );
    let o = run(&mut check);
    assert_eq!(o.status.code(), Some(3), "flash --check: {}", text(&o));
    flip(&target, at);

    // (e) With the record, a byte changed in IMRS-DATA is named too.
    let i = first_in(data);
    let at = written[i].0 * block + 7;
    flip(&target, at);
    let e = wrong(
        verify_device(&target, &disk, &key)
            .arg("--record")
            .arg(&record_path),
    );
    let w = e["wrong"].as_array().unwrap();
    assert_eq!(w.len(), 1, "{e}");
    assert_eq!(w[0]["index"], i, "{e}");
    assert_eq!(w[0]["partition"], "IMRS-DATA");
    flip(&target, at);
    let o = run(verify_device(&target, &disk, &key)
        .arg("--record")
        .arg(&record_path));
    assert!(o.status.success(), "restored: {}", text(&o));

    // (d) A tampered source is refused before the device is read (it does not even exist).
    let tampered = tmp.path().join("tampered.img");
    std::fs::copy(&disk, &tampered).unwrap();
    let k = imrs_disk::Esp::open(std::fs::File::open(&tampered).unwrap())
        .unwrap()
        .read_file("imrs/a/vmlinuz", 1 << 30)
        .unwrap()
        .unwrap();
    let mut all = std::fs::read(&tampered).unwrap();
    let at = all.windows(64).position(|w| w == &k[4096..4160]).unwrap();
    all[at] ^= 1;
    std::fs::write(&tampered, all).unwrap();
    let e = wrong(&mut verify_device(
        &tmp.path().join("no-such-device"),
        &tampered,
        &key,
    ));
    assert!(e["error"].as_str().unwrap().contains("vmlinuz"), "{e}");

    // (c) An interrupted flash: the device ends half-way through the written ranges (a file
    // flashed until then). The first range not written is named first.
    let k = written.len() / 2;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&target)
        .unwrap();
    f.set_len(written[k].0 * block).unwrap();
    drop(f);
    let e = wrong(
        verify_device(&target, &disk, &key)
            .arg("--record")
            .arg(&record_path),
    );
    let w = e["wrong"].as_array().unwrap();
    assert_eq!(w[0]["index"], k, "{e}");
    assert_eq!(w[0]["device_ends_at"], written[k].0 * block, "{e}");
    assert_eq!(w.len(), written.len() - k);
    assert!(
        e["error"].as_str().unwrap().contains(&format!(
            "the first is range {k} at byte {}",
            written[k].0 * block
        )),
        "{e}"
    );
    // Without the record too: the first range past the end is named.
    let e = wrong(&mut verify_device(&target, &disk, &key));
    assert!(
        e["wrong"][0]["offset"].as_u64().unwrap() >= written[k].0 * block,
        "{e}"
    );
}

#[test]
fn refusals_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((disk, image, key, site)) = bench_disk(tmp.path()) else {
        return;
    };
    let target = tmp.path().join("never.img");
    let refused = |cmd: &mut Command, code: i32, expect: &str| {
        let o = run(cmd);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(code), "{t}");
        assert!(t.contains(expect), "expected {expect:?} in: {t}");
        assert!(
            !target.exists(),
            "a refused flash wrote {}",
            target.display()
        );
    };

    // A disk whose slot A kernel was changed: refused before anything is written.
    let tampered = tmp.path().join("tampered.img");
    std::fs::copy(&disk, &tampered).unwrap();
    {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&tampered)
            .unwrap();
        let mut esp = imrs_disk::Esp::open(f).unwrap();
        let k = esp.read_file("imrs/a/vmlinuz", 1 << 30).unwrap().unwrap();
        // Find the kernel's bytes on the disk and flip one.
        let all = std::fs::read(&tampered).unwrap();
        let at = all
            .windows(64)
            .position(|w| w == &k[4096..4160])
            .expect("the kernel is on the disk");
        let mut all = all;
        all[at] ^= 1;
        std::fs::write(&tampered, all).unwrap();
    }
    refused(
        flash(&tampered, &target, &key, &site).arg("--yes"),
        3,
        "vmlinuz",
    );

    // A site config signed by another key.
    let other = keygen(tmp.path(), "other");
    let foreign = tmp.path().join("site.toml");
    std::fs::copy(&site, &foreign).unwrap();
    let o = run(bin()
        .args(["--quiet", "site", "sign"])
        .arg(&foreign)
        .arg("--key")
        .arg(&other));
    assert!(o.status.success(), "{}", text(&o));
    refused(
        flash(&image, &target, &key, &foreign).arg("--yes"),
        1,
        "does not verify with the image's site-signing key",
    );

    // No --yes and no terminal to ask on.
    refused(
        flash(&disk, &target, &key, &site).stdin(std::process::Stdio::null()),
        1,
        "pass --yes",
    );

    // Not a disk.
    let o = run(flash(&disk, Path::new("/dev/null"), &key, &site).arg("--yes"));
    assert!(
        text(&o).contains("neither a block device nor a regular file"),
        "{}",
        text(&o)
    );

    // A loop device with a mounted file system (root only).
    if !is_root() || !have("mkfs.ext4", "-V") {
        return;
    }
    let Some(lo) = Loop::new(&tmp.path().join("mounted.img"), 512 << 20) else {
        return;
    };
    let o = run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&lo.dev));
    assert!(o.status.success(), "{}", text(&o));
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let o = run(Command::new("mount").arg(&lo.dev).arg(&mnt));
    if !o.status.success() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "cannot mount under CI: {}",
            text(&o)
        );
        eprintln!("SKIP: cannot mount here: {}", text(&o));
        return;
    }
    let o = run(flash(&disk, &lo.dev, &key, &site).arg("--yes"));
    let _ = Command::new("umount").arg(&mnt).output();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("is mounted at") && t.contains("unmount it first"),
        "{t}"
    );
}
