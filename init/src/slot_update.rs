//! Remote updates and rollbacks (the fleet commands `update` and `rollback`), device side:
//! writing the slot this boot does not run from, so that systemd-boot tries it next.
//!
//! - `update`: the image's four slot files are downloaded from the receiver the box phones home
//!   to (same origin, the same pinned CA: `GET /v1/images/<sha256>/<file>`), and nothing of
//!   what the receiver says is trusted: the manifest must have the sha256 the signed command
//!   names, its signature must verify with this image's image-signing key
//!   ([`IMAGE_PUBKEY_PATH`]), it must be for this appliance's profile, and the kernel and
//!   initramfs must be exactly the manifest's (each read only up to the size the manifest
//!   gives, so a receiver serving more or less is refused). Only then is the slot written.
//! - `rollback`: the other slot's payload is read back from the ESP and must verify the same
//!   way; it is written again as the newest entry.
//!
//! Either way the slot is written with `imrs_disk`'s crash-safe writer, counted with
//! [`TRIES`] tries (blessed only once healthy, [`crate::slots`]), its entry carrying the
//! command-line words that follow `imrs.slot=` in this boot's command line (options added to
//! the running entry, e.g. by `imrs-build update --append`, stay). Reading a slot, downloading
//! and verifying happen before anything is written: a refused image leaves the disk as it was.
//! This is blocking work (network and disk): the caller runs it off the event loop.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use imrs_config::image::IMAGE_PUBKEY_PATH;
use imrs_config::keys;
use imrs_disk::payload::{INITRAMFS, KERNEL, MANIFEST, SIGNATURE};
use imrs_disk::{EntryName, Esp, Slot, SlotPayload, Window};
use sha2::{Digest, Sha256};

/// Tries the new slot gets before systemd-boot falls back to the running one.
pub const TRIES: u32 = 3;
/// Time limit for downloading all of an image.
pub const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(600);
/// Largest manifest signature file downloaded.
const MAX_SIGNATURE: u64 = 4 << 10;

/// What to write.
#[derive(Debug, Clone)]
pub enum Job {
    /// Download and write an image.
    Update {
        /// The receiver's report URL (`phone_home.url`): the image comes from its origin.
        receiver: String,
        /// The CA the receiver must chain to (`phone_home.ca_pem`).
        ca_pem: String,
        /// The image's path on the receiver (from the signed command).
        path: String,
        /// sha256 of its manifest (from the signed command).
        manifest_sha256: String,
    },
    /// Write the other slot's own image again, as the newest entry.
    Rollback,
}

/// Where the job runs.
#[derive(Debug, Clone)]
pub struct Target {
    /// Root of the files read (`/` on the appliance).
    pub root: PathBuf,
    /// The slot this boot runs from (`imrs.slot=`).
    pub running: Option<Slot>,
    /// This appliance's profile name (an image for another one is refused).
    pub profile: Option<String>,
}

/// A slot written and committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The slot.
    pub slot: Slot,
    /// Its entry as committed (counted).
    pub entry: EntryName,
    /// sha256 of the image's manifest.
    pub manifest_sha256: String,
    /// The image's name and version.
    pub image: String,
}

/// Runs `job` on `target`: the slot written, or why nothing was (or, for a disk error in the
/// middle of the write, why the slot is no longer bootable: its entry goes first).
pub fn run(job: &Job, target: &Target) -> Result<Written, String> {
    let running = target.running.ok_or_else(|| {
        "this boot was not started from a disk slot (no imrs.slot= on the command line): \
         there is no other slot to write"
            .to_string()
    })?;
    let slot = running.other();
    let key_path = target.root.join(IMAGE_PUBKEY_PATH.trim_start_matches('/'));
    let key = keys::read_public(&key_path).map_err(|e| {
        format!(
            "no image-signing key to verify images with: {}",
            crate::log::chain(&e)
        )
    })?;
    let mut esp = open_esp(&target.root)?;
    let payload = match job {
        Job::Update {
            receiver,
            ca_pem,
            path,
            manifest_sha256,
        } => download(receiver, ca_pem, path, manifest_sha256)?,
        Job::Rollback => esp
            .read_slot(slot)
            .map_err(|e| format!("slot {slot}: {}", crate::log::chain(&e)))?
            .ok_or_else(|| format!("slot {slot} holds no image to go back to"))?,
    };
    check(&payload, &key, target.profile.as_deref())
        .map_err(|e| format!("{} for slot {slot}: {e}", what(&payload)))?;
    let extra =
        extra_words(&std::fs::read_to_string(target.root.join("proc/cmdline")).unwrap_or_default());
    let entry = esp
        .write_slot(slot, &payload, Some(TRIES), &extra)
        .map_err(|e| format!("writing slot {slot}: {}", crate::log::chain(&e)))?;
    Ok(Written {
        slot,
        entry,
        manifest_sha256: payload.manifest_sha256(),
        image: what(&payload),
    })
}

/// "image NAME VERSION".
fn what(p: &SlotPayload) -> String {
    format!("image {} {}", p.manifest().name, p.manifest().version)
}

/// The signature with `key`, and the profile.
fn check(p: &SlotPayload, key: &VerifyingKey, profile: Option<&str>) -> Result<(), String> {
    let origin = Path::new(SIGNATURE);
    let sig = keys::parse_signature(&String::from_utf8_lossy(p.signature()), origin)
        .map_err(|e| crate::log::chain(&e))?;
    keys::verify(key, p.manifest_bytes(), &sig).map_err(|_| {
        format!(
            "its manifest's signature does not verify with this image's image-signing key {}",
            keys::key_id(key)
        )
    })?;
    if let Some(want) = profile
        && p.manifest().profile != want
    {
        return Err(format!(
            "it is built for the {} appliance profile, this box is {want}",
            imrs_config::escape(&p.manifest().profile)
        ));
    }
    Ok(())
}

/// The `IMRS-ESP` partition under `root`, opened for writing.
fn open_esp(root: &Path) -> Result<Esp<std::fs::File>, String> {
    let node = crate::site::find_partition(
        &root.join("sys"),
        &root.join("dev"),
        imrs_disk::layout::ESP_PARTNAME,
    )
    .ok_or_else(|| {
        format!(
            "no partition named {} (the boot disk's ESP)",
            imrs_disk::layout::ESP_PARTNAME
        )
    })?;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&node)
        .map_err(|e| format!("{}: cannot open the ESP: {e}", node.display()))?;
    let len = std::io::Seek::seek(&mut file, std::io::SeekFrom::End(0))
        .map_err(|e| format!("{}: {e}", node.display()))?;
    Ok(Esp::from_window(Window::new(file, 0, len)))
}

/// The command-line words after `imrs.slot=...`: what was added to the running entry beyond
/// the image's own command line.
pub fn extra_words(cmdline: &str) -> Vec<String> {
    cmdline
        .split_whitespace()
        .skip_while(|w| !w.starts_with("imrs.slot="))
        .skip(1)
        .map(str::to_string)
        .collect()
}

/// `scheme://host[:port]` of an https URL.
pub fn origin(url: &str) -> Option<&str> {
    let rest_at = url.find("://")? + 3;
    let end = url
        .get(rest_at..)?
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| rest_at + i);
    url.get(..end).filter(|o| o.len() > rest_at)
}

/// Downloads an image's files from the origin of `receiver` (trusting only `ca_pem`) and
/// checks them against the manifest sha256 and the manifest (the signature is
/// [`run`]'s to check).
pub fn download(
    receiver: &str,
    ca_pem: &str,
    path: &str,
    manifest_sha256: &str,
) -> Result<SlotPayload, String> {
    let base = origin(receiver)
        .ok_or_else(|| format!("phone_home.url {receiver:?} has no origin"))?
        .to_string();
    let cfg = crate::phonehome::deliver::DeliveryConfig {
        url: receiver.to_string(),
        ca_pem: ca_pem.to_string(),
        backoff_min: Duration::ZERO,
        backoff_max: Duration::ZERO,
        timeout: DOWNLOAD_TIMEOUT,
    };
    let agent = crate::phonehome::deliver::agent(&cfg).map_err(|e| crate::log::chain(&e))?;
    let get = |name: &str, limit: u64| -> Result<Vec<u8>, String> {
        let url = format!("{base}{}/{name}", path.trim_end_matches('/'));
        let mut resp = agent.get(&url).call().map_err(|e| format!("{url}: {e}"))?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(format!("{url}: the receiver answered {status}"));
        }
        let mut data = Vec::new();
        resp.body_mut()
            .as_reader()
            .take(limit.saturating_add(1))
            .read_to_end(&mut data)
            .map_err(|e| format!("{url}: reading: {e}"))?;
        if data.len() as u64 > limit {
            return Err(format!("{url}: longer than the {limit} bytes expected"));
        }
        Ok(data)
    };
    let manifest = get(MANIFEST, imrs_config::fsutil::limits::MANIFEST)?;
    let got = hex::encode(Sha256::digest(&manifest));
    if got != manifest_sha256 {
        return Err(format!(
            "the receiver's {MANIFEST} has sha256 {got}, the signed command names \
             {manifest_sha256}"
        ));
    }
    let parsed: imrs_config::image::Manifest = serde_json::from_slice(&manifest)
        .map_err(|e| format!("{MANIFEST}: not an image manifest: {e}"))?;
    let size = |name: &str| {
        parsed
            .artifacts
            .iter()
            .find(|a| a.name == name)
            .map(|a| a.size)
            .ok_or_else(|| format!("the manifest lists no {name}"))
    };
    let signature = get(SIGNATURE, MAX_SIGNATURE)?;
    let kernel = get(KERNEL, size(KERNEL)?)?;
    let initramfs = get(INITRAMFS, size(INITRAMFS)?)?;
    SlotPayload::new(manifest, signature, kernel, initramfs).map_err(|e| {
        format!(
            "the downloaded image does not match its manifest: {}",
            crate::log::chain(&e)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_entrys_own_words_are_carried_over() {
        assert_eq!(
            extra_words(
                "console=ttyS0 quiet imrs.manifest=ab imrs.slot=a console=ttyS1 imrs.x=1\n"
            ),
            vec!["console=ttyS1", "imrs.x=1"]
        );
        assert!(extra_words("console=ttyS0 imrs.slot=b").is_empty());
        assert!(extra_words("console=ttyS0").is_empty());
    }

    #[test]
    fn the_origin_of_the_receiver_url() {
        assert_eq!(
            origin("https://10.0.0.1:8443/v1/reports"),
            Some("https://10.0.0.1:8443")
        );
        assert_eq!(
            origin("https://[fd00::1]:8443"),
            Some("https://[fd00::1]:8443")
        );
        assert_eq!(
            origin("https://home.example?x=1"),
            Some("https://home.example")
        );
        assert_eq!(origin("https:///x"), None);
        assert_eq!(origin("home.example/x"), None);
    }

    /// A consistent payload for profile `profile`, its manifest signed with `key`.
    fn signed_payload(key: &ed25519_dalek::SigningKey, profile: &str) -> SlotPayload {
        use imrs_config::image::{Artifact, Manifest};
        let kernel = b"kernel".to_vec();
        let initramfs = b"initramfs".to_vec();
        let m = Manifest::fixture(
            "2",
            profile,
            vec![
                Artifact::of(INITRAMFS, &initramfs),
                Artifact::of(KERNEL, &kernel),
            ],
        );
        let bytes = imrs_config::image::canonical_json(&m);
        let sig = keys::sign_hex(key, &bytes).into_bytes();
        SlotPayload::new(bytes, sig, kernel, initramfs).unwrap()
    }

    #[test]
    fn an_image_must_verify_with_the_image_key_and_fit_the_profile() {
        let image_key = keys::generate().unwrap();
        let other = keys::generate().unwrap();
        let good = signed_payload(&image_key, "qemu");
        check(&good, &image_key.verifying_key(), Some("qemu")).unwrap();
        check(&good, &image_key.verifying_key(), None).unwrap();
        let e = check(&good, &other.verifying_key(), Some("qemu")).unwrap_err();
        assert!(
            e.contains("does not verify with this image's image-signing key"),
            "{e}"
        );
        let e = check(&good, &image_key.verifying_key(), Some("calypso")).unwrap_err();
        assert_eq!(
            e,
            "it is built for the qemu appliance profile, this box is calypso"
        );
        let forged = SlotPayload::new(
            good.manifest_bytes().to_vec(),
            b"not a signature".to_vec(),
            b"kernel".to_vec(),
            b"initramfs".to_vec(),
        )
        .unwrap();
        assert!(check(&forged, &image_key.verifying_key(), None).is_err());
    }

    /// A root with an `IMRS-ESP` partition (a file, found through a sysfs `uevent`) whose
    /// slot A holds `payload`, and `key` as the image-signing key.
    fn fake_root(payload: &SlotPayload, key: &ed25519_dalek::VerifyingKey) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("sys/class/block/vda1")).unwrap();
        std::fs::write(
            r.join("sys/class/block/vda1/uevent"),
            "DEVNAME=vda1\nPARTNAME=IMRS-ESP\n",
        )
        .unwrap();
        std::fs::create_dir_all(r.join("dev")).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(r.join("dev/vda1"))
            .unwrap();
        file.set_len(8 << 20).unwrap();
        let mut esp = Esp::format(Window::new(file, 0, 8 << 20), b"t", 1, b"MZ").unwrap();
        esp.write_slot(Slot::A, payload, None, &[]).unwrap();
        std::fs::create_dir_all(r.join("etc/imrs")).unwrap();
        std::fs::write(
            r.join(IMAGE_PUBKEY_PATH.trim_start_matches('/')),
            keys::public_pem(key),
        )
        .unwrap();
        std::fs::create_dir_all(r.join("proc")).unwrap();
        std::fs::write(
            r.join("proc/cmdline"),
            "console=ttyS0 imrs.manifest=x imrs.slot=b console=ttyS1\n",
        )
        .unwrap();
        t
    }

    #[test]
    fn a_rollback_writes_the_other_slot_only_when_it_verifies() {
        let image_key = keys::generate().unwrap();
        let payload = signed_payload(&image_key, "qemu");
        let target = |root: &Path, running, profile: &str| Target {
            root: root.to_path_buf(),
            running: Some(running),
            profile: Some(profile.to_string()),
        };
        // Signed with another key, or for another appliance: refused, the ESP untouched.
        let stranger = keys::generate().unwrap();
        for (key, profile, why) in [
            (stranger.verifying_key(), "qemu", "does not verify"),
            (
                image_key.verifying_key(),
                "calypso",
                "built for the qemu appliance profile",
            ),
        ] {
            let t = fake_root(&payload, &key);
            let before = std::fs::read(t.path().join("dev/vda1")).unwrap();
            let e = run(&Job::Rollback, &target(t.path(), Slot::B, profile)).unwrap_err();
            assert!(e.contains(why) && e.contains("for slot a"), "{e}");
            assert_eq!(std::fs::read(t.path().join("dev/vda1")).unwrap(), before);
        }
        // Nothing in the other slot to go back to.
        let t = fake_root(&payload, &image_key.verifying_key());
        let e = run(&Job::Rollback, &target(t.path(), Slot::A, "qemu")).unwrap_err();
        assert_eq!(e, "slot b holds no image to go back to");
        // Verified: slot A written again as the newest, counted entry, the running entry's own
        // words carried over.
        let w = run(&Job::Rollback, &target(t.path(), Slot::B, "qemu")).unwrap();
        assert_eq!(w.slot, Slot::A);
        assert_eq!(w.entry.file_name(), format!("imrs-a+{TRIES}.conf"));
        assert_eq!(w.manifest_sha256, payload.manifest_sha256());
        assert_eq!(w.image, "image imrs-test 2");
        let file = std::fs::File::open(t.path().join("dev/vda1")).unwrap();
        let mut esp = Esp::from_window(Window::new(file, 0, 8 << 20));
        let slots = esp.slots().unwrap();
        assert_eq!(imrs_disk::next_boot(&slots), Some(Slot::A));
        let entry = slots[0].entry.as_ref().unwrap().entry.as_ref().unwrap();
        assert!(
            entry.options.ends_with("imrs.slot=a console=ttyS1"),
            "{}",
            entry.options
        );
    }

    #[test]
    fn nothing_is_written_without_a_slot_or_a_key() {
        let t = tempfile::tempdir().unwrap();
        let target = Target {
            root: t.path().to_path_buf(),
            running: None,
            profile: None,
        };
        let e = run(&Job::Rollback, &target).unwrap_err();
        assert!(e.contains("not started from a disk slot"), "{e}");
        let target = Target {
            running: Some(Slot::A),
            ..target
        };
        let e = run(&Job::Rollback, &target).unwrap_err();
        assert!(e.contains("no image-signing key"), "{e}");
    }
}
