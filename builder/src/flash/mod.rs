//! `imrs-build flash SOURCE DEVICE`: one appliance's disk, written and proven. In order:
//!
//! 1. the source is verified before anything is written: an image folder as `verify` does, or a
//!    disk image's slot A (manifest signature, kernel, initramfs and boot loader against their
//!    signed sha256);
//! 2. the site config must verify with the image's own site-signing key;
//! 3. the target is checked ([`target`]: whole disk, idle, not the system disk, big enough) and
//!    the engineer confirms (or `--yes`);
//! 4. this appliance's own partitions are composed in a sparse scratch disk ([`Appliance`]):
//!    its site config on `IMRS-CONFIG`, a new device key (Ed25519) on `IMRS-DATA` that the init
//!    uses instead of making one; everything else is written straight from the source's disk,
//!    which is never copied (a disk image given as SOURCE is read in place; an image folder is
//!    made into a disk first);
//! 5. only the mapped ranges are written, and every one is read back bypassing the page cache
//!    right behind the writer, on a second thread, and compared by sha256 ([`write::flash`]);
//! 6. the flash record (device identity, key, site, image, read-back digest, time), signed with
//!    `--key`, is printed; with `--enrol DIR` the device's public key is dropped into the
//!    receiver's enrolment folder and the record appended to `DIR/inventory.jsonl`. The record
//!    (schema 2) lists every written range with its sha256 (`written_ranges`: `[first block,
//!    last block, sha256]`), ranges cut at partition boundaries, so that [`check`] can compare
//!    the personalised partitions later.
//!
//! `flash --check` writes nothing: it is `verify-device` ([`check`]) with flash's arguments.

pub mod check;
pub mod target;
pub mod write;

use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Write as _};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use ed25519_dalek::VerifyingKey;
use imrs_config::image::{Manifest, canonical_json};
use imrs_config::keys;
use imrs_disk::bmap::Bmap;
use imrs_disk::image::{ApplianceSpec, personalise, write_appliance};
use imrs_disk::payload::{INITRAMFS, KERNEL, MANIFEST, SIGNATURE};
use imrs_disk::{Esp, SlotPayload};
use serde_json::{Value, json};

use crate::disk::{SiteFiles, image_site_key, parse_size, read_site};
use crate::image_dir::{BOOT_LOADER, sha256_hex};
use crate::ui::Ui;
use crate::verify::{self, VerifyError};

/// The device key's file name on `IMRS-DATA` (the init's state folder).
pub const DEVICE_KEY_FILE: &str = imrs_init::phonehome::identity::DEVICE_KEY_FILE;

/// Record schema version (2: `written_ranges`, per-range digests).
pub const RECORD_SCHEMA: u32 = 2;

/// `flash` arguments.
#[derive(Debug, Args)]
pub struct FlashArgs {
    /// An image folder (from `build`) or a disk image (from `disk`).
    pub source: PathBuf,
    /// The whole disk to write (`/dev/sdX`), or a file.
    pub device: PathBuf,
    /// Public key (PEM) the image's manifest must be signed with.
    #[arg(long)]
    pub pubkey: PathBuf,
    /// This appliance's signed site config (FILE and FILE.sig); it must verify with the image's
    /// site-signing key.
    #[arg(long, required_unless_present = "check")]
    pub site: Option<PathBuf>,
    /// Secret key that signs the flash record.
    #[arg(long, required_unless_present = "check")]
    pub key: Option<PathBuf>,
    /// The receiver's enrolment folder (`home serve --enrolled DIR`): the device's public key
    /// goes there as KEY-ID.pub and the record is appended to DIR/inventory.jsonl.
    #[arg(long, conflicts_with = "check")]
    pub enrol: Option<PathBuf>,
    /// Disk size when SOURCE is an image folder (as `disk --size`).
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
    /// Accept a partition instead of a whole disk.
    #[arg(long)]
    pub allow_partition: bool,
    /// Write nothing: check DEVICE against SOURCE as `verify-device` does (with --site, the
    /// config partition is compared too) and name every range that is wrong.
    #[arg(long)]
    pub check: bool,
    /// With --check: the flash record this device's flash printed, to compare the personalised
    /// partitions with (as `verify-device --record`).
    #[arg(long, requires = "check")]
    pub record: Option<PathBuf>,
}

/// A verified source: its disk and what it holds.
pub(crate) struct Source {
    pub manifest: Manifest,
    pub manifest_sha256: String,
    pub site_key: VerifyingKey,
    disk: SourceDisk,
    /// The disk's size in bytes.
    pub size: u64,
}

/// The disk a flash starts from.
enum SourceDisk {
    /// The disk image given as SOURCE, read in place.
    Given(PathBuf),
    /// Made from an image folder, in a scratch file.
    Made(tempfile::NamedTempFile),
}

impl Source {
    /// The disk's path.
    pub fn path(&self) -> &Path {
        match &self.disk {
            SourceDisk::Given(p) => p,
            SourceDisk::Made(t) => t.path(),
        }
    }
}

/// This appliance's disk as flash writes it: the source's ranges, except inside `IMRS-CONFIG`
/// and `IMRS-DATA`, whose ranges come from `own`, a sparse scratch disk of the same size into
/// which the source's GPT and `IMRS-CONFIG` were copied and then personalised (files written
/// into the config FAT, a new ext4 made on the data partition). Only these two small
/// partitions are composed; the rest of the source is never copied.
pub(crate) struct Appliance {
    own: tempfile::NamedTempFile,
    /// The disk's partitions.
    pub parts: Vec<(String, imrs_disk::layout::Extent)>,
    /// `IMRS-CONFIG`.
    pub config: imrs_disk::layout::Extent,
    /// `IMRS-DATA`.
    pub data: imrs_disk::layout::Extent,
}

/// Whether block range `r` starts inside `e`.
pub(crate) fn inside(r: &imrs_disk::bmap::Range, e: &imrs_disk::layout::Extent) -> bool {
    let start = r.first * imrs_disk::bmap::BLOCK;
    start >= e.offset && start < e.offset + e.len
}

impl Appliance {
    /// Composes the personal partitions of `src`'s disk: `config_files` into `IMRS-CONFIG`,
    /// `data_files` (name, bytes, mode) onto a new ext4 on `IMRS-DATA` whose identifiers derive
    /// from `seed`.
    pub fn compose(
        src: &Source,
        config_files: &[(&str, &[u8])],
        data_files: &[(&str, &[u8], u32)],
        seed: &[u8],
    ) -> Result<Appliance> {
        let mut disk = File::open(src.path())
            .with_context(|| format!("{}: cannot open", src.path().display()))?;
        let parts = imrs_disk::layout::partitions(&mut disk)?;
        let find = |name: &str| {
            parts
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, e)| *e)
                .with_context(|| format!("{}: the disk has no {name}", src.path().display()))
        };
        let (esp, config, data) = (
            find(imrs_disk::layout::ESP_PARTNAME)?,
            find(imrs_disk::layout::CONFIG_PARTNAME)?,
            find(imrs_disk::layout::DATA_PARTNAME)?,
        );
        let own = scratch()?;
        own.as_file()
            .set_len(src.size)
            .context("sizing the scratch disk")?;
        let mut map = disk_map(src.path())?;
        map.ranges.retain(|r| !inside(r, &esp) && !inside(r, &data));
        // A scratch file: read back through the page cache, never synced.
        write::copy_ranges(&disk, own.as_file(), &map)?;
        personalise(
            own.path(),
            config_files,
            data_files,
            seed,
            src.manifest.source_date_epoch,
        )?;
        Ok(Appliance {
            own,
            parts,
            config,
            data,
        })
    }

    /// What to write: file 0 is the source's disk, file 1 the composed partitions.
    pub fn plan(&self, src: &Source) -> Result<write::Plan> {
        let mine = |r: &imrs_disk::bmap::Range| inside(r, &self.config) || inside(r, &self.data);
        let mut theirs = disk_map(src.path())?.ranges;
        theirs.retain(|r| !mine(r));
        let mut ours = disk_map(self.own.path())?.ranges;
        ours.retain(mine);
        Ok(write::Plan::merge(src.size, vec![(0, theirs), (1, ours)]))
    }

    /// The files the plan reads, opened, with their names: the source's disk, then ours.
    pub fn files(&self, src: &Source) -> Result<[(File, PathBuf); 2]> {
        let open = |p: &Path| {
            File::open(p)
                .with_context(|| format!("{}: cannot open", p.display()))
                .map(|f| (f, p.to_path_buf()))
        };
        Ok([open(src.path())?, open(self.own.path())?])
    }
}

/// Verifies SOURCE (an image folder, made into a disk of `size` bytes, or a disk image);
/// nothing else is read or written before it verifies.
pub(crate) fn load_source(source: &Path, key: &VerifyingKey, size: Option<u64>) -> Result<Source> {
    if source.is_dir() {
        from_folder(source, key, size)
    } else {
        if size.is_some() {
            bail!("--size applies to an image folder; a disk image keeps its own size");
        }
        from_disk(source, key)
    }
}

/// The map `flash` writes: the mapped ranges of the composed disk, cut at its partitions'
/// boundaries (no range spans two partitions), without digests (the writer computes them).
pub(crate) fn disk_map(disk: &Path) -> Result<Bmap> {
    let map = Bmap::ranges_of_file(disk)?;
    let mut f = File::open(disk).with_context(|| format!("{}: cannot open", disk.display()))?;
    Ok(write::split_ranges(&map, &write::partition_cuts(&mut f)?))
}

fn scratch() -> Result<tempfile::NamedTempFile> {
    tempfile::Builder::new()
        .prefix("imrs-flash-")
        .suffix(".img")
        .tempfile()
        .context("a scratch file for the appliance's disk")
}

/// An image folder: verified, then made into a disk.
fn from_folder(dir: &Path, key: &VerifyingKey, size: Option<u64>) -> Result<Source> {
    let v = verify::verify_loaded(dir, key)?;
    let loader = crate::disk::boot_loader(&v, dir)?;
    let payload = crate::disk::slot_payload(&v, dir)?;
    let disk = scratch()?;
    let layout = write_appliance(
        disk.path(),
        &ApplianceSpec {
            size,
            loader_efi: &loader,
            payload: &payload,
            extra_options: &[],
            config_files: &[],
        },
    )?;
    Ok(Source {
        site_key: image_site_key(&v.initramfs, dir)?,
        manifest_sha256: payload.manifest_sha256(),
        manifest: v.manifest,
        disk: SourceDisk::Made(disk),
        size: layout.size,
    })
}

/// A disk image: slot A's image verified (signature, then every file against the manifest).
fn from_disk(path: &Path, key: &VerifyingKey) -> Result<Source> {
    let bad = |detail: String| VerifyError::Manifest {
        path: path.join(format!("(slot a)/{MANIFEST}")),
        detail,
    };
    let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut esp =
        Esp::open(file).with_context(|| format!("{}: not an appliance disk", path.display()))?;
    let limit = verify::MAX_INITRAMFS_BYTES;
    let mut read = |p: &str| -> Result<Vec<u8>> {
        esp.read_file(p, limit)?
            .with_context(|| format!("{}: the ESP has no {p}", path.display()))
    };
    let slot = imrs_disk::Slot::A.dir();
    let mut read_slot = |name: &str| read(&format!("{slot}/{name}"));
    let mbytes = read_slot(MANIFEST)?;
    let sig = read_slot(SIGNATURE)?;
    let stext = String::from_utf8_lossy(&sig);
    let spath = path.join(format!("(slot a)/{SIGNATURE}"));
    let signature =
        keys::parse_signature(&stext, &spath).map_err(|source| VerifyError::Signature {
            path: spath.clone(),
            source,
        })?;
    keys::verify(key, &mbytes, &signature).map_err(|source| VerifyError::Signature {
        path: spath.clone(),
        source,
    })?;
    let kernel = read_slot(KERNEL)?;
    let initramfs = read_slot(INITRAMFS)?;
    let payload = SlotPayload::new(mbytes, sig.clone(), kernel, initramfs.clone())
        .map_err(|e| bad(e.to_string()))?;
    // The boot loader on the ESP is the one the image names.
    let efi = read(imrs_disk::esp::BOOT_EFI)?;
    let listed = payload
        .manifest()
        .artifacts
        .iter()
        .find(|a| a.name == BOOT_LOADER)
        .ok_or_else(|| bad(format!("lists no {BOOT_LOADER}")))?;
    if listed.sha256 != sha256_hex(&efi) {
        return Err(bad(format!(
            "{} on the disk has sha256 {}, the manifest says {}",
            imrs_disk::esp::BOOT_EFI,
            sha256_hex(&efi),
            imrs_config::escape(&listed.sha256)
        ))
        .into());
    }
    // The site-signing key, from the (verified) initramfs: decompressed only as far as it.
    let site_key = crate::disk::site_key_in(&initramfs, &path.join("(slot a)/initramfs.cpio.zst"))?;
    let size = std::fs::metadata(path)
        .with_context(|| format!("{}: cannot read its size", path.display()))?
        .len();
    Ok(Source {
        manifest_sha256: payload.manifest_sha256(),
        manifest: payload.manifest().clone(),
        site_key,
        disk: SourceDisk::Given(path.to_path_buf()),
        size,
    })
}

/// Asks the engineer, on the terminal.
fn confirm(what: &str) -> Result<()> {
    if !std::io::stdin().is_terminal() {
        bail!("{what}: not confirmed (no terminal to ask on); pass --yes");
    }
    eprint!("{what}\nEverything on it is lost. Type yes to go on: ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the answer")?;
    if line.trim() != "yes" {
        bail!("{what}: not confirmed");
    }
    Ok(())
}

/// A new device key pair: (PKCS#8 PEM secret, public key).
fn device_key() -> Result<(Vec<u8>, VerifyingKey)> {
    let key = keys::generate()?;
    let dir = tempfile::tempdir().context("a scratch folder for the device key")?;
    let path = dir.path().join("device-key");
    keys::write_keypair(&key, &path)?;
    let pem = std::fs::read(&path).context("reading the device key back")?;
    Ok((pem, key.verifying_key()))
}

/// Opens the target for writing: a block device exclusively, a file created and sized.
fn open_target(t: &target::Target, size: u64) -> Result<File> {
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    if t.kind == target::Kind::File {
        o.create(true);
    } else {
        o.custom_flags(libc::O_EXCL);
    }
    let f = o.open(&t.path).with_context(|| {
        format!(
            "{}: cannot open for writing (exclusively, for a device)",
            t.path.display()
        )
    })?;
    if t.kind == target::Kind::File {
        f.set_len(size)
            .with_context(|| format!("{}: sizing to {size} bytes", t.path.display()))?;
    }
    Ok(f)
}

/// Writes `DIR/KEY-ID.pub` and appends the signed record to `DIR/inventory.jsonl`.
fn enrol(dir: &Path, device: &VerifyingKey, signed_record: &Value) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let id = keys::key_id(device);
    let pubp = dir.join(format!("{id}.pub"));
    let tmp = dir.join(format!(".{id}.pub.tmp"));
    std::fs::write(&tmp, keys::public_pem(device))
        .and_then(|()| File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, &pubp))
        .with_context(|| format!("{}: cannot write", pubp.display()))?;
    let inv = dir.join("inventory.jsonl");
    let mut line = serde_json::to_vec(signed_record)?;
    line.push(b'\n');
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&inv)
        .with_context(|| format!("{}: cannot open", inv.display()))?;
    f.write_all(&line)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("{}: cannot append", inv.display()))?;
    Ok(pubp)
}

/// `flash`.
pub fn run(args: FlashArgs, ui: &Ui) -> Result<u8> {
    if args.check {
        return check::run(
            check::VerifyDeviceArgs {
                device: args.device,
                source: args.source,
                pubkey: args.pubkey,
                record: args.record,
                record_pubkey: None,
                site: args.site,
                size: args.size,
            },
            ui,
        );
    }
    let (Some(key_path), Some(site_path)) = (&args.key, &args.site) else {
        bail!("--key and --site are needed to flash (only --check goes without them)");
    };
    let t0 = Instant::now();
    // Keys and inputs first: nothing is written until all of them check out.
    let image_key = keys::read_public(&args.pubkey)?;
    let record_key = keys::read_secret(key_path)?;
    let sp = ui.spinner("verifying the image");
    let src = load_source(&args.source, &image_key, args.size)?;
    sp.finish_and_clear();
    let SiteFiles {
        text: site_text,
        sig: site_sig,
        site,
    } = read_site(site_path, &src.site_key)?;
    let size = src.size;
    let tgt = target::inspect(
        &args.device,
        size,
        args.allow_partition,
        Path::new("/sys"),
        Path::new("/proc"),
    )?;
    let what = format!(
        "flash {} {} onto {}",
        src.manifest.name,
        src.manifest.version,
        tgt.describe()
    );
    if !args.yes {
        confirm(&what)?;
    }

    // This appliance's disk.
    let (device_pem, device_pub) = device_key()?;
    let appliance = Appliance::compose(
        &src,
        &[
            ("site.toml", &site_text),
            ("site.toml.sig", site_sig.as_bytes()),
        ],
        &[(DEVICE_KEY_FILE, &device_pem, 0o600)],
        device_pub.as_bytes(),
    )?;
    let plan = appliance.plan(&src)?;
    let [(from_src, _), (from_own, _)] = appliance.files(&src)?;
    let out = open_target(&tgt, size)?;
    let total = plan.map.mapped_blocks() * imrs_disk::bmap::BLOCK;
    let pb = ui.bytes(total, "writing and reading back");
    let pbc = pb.clone();
    let write::Flashed {
        bytes: written,
        map,
        how,
        digest: readback,
    } = write::flash(
        &[&from_src, &from_own],
        &plan,
        &out,
        &tgt.path,
        &mut move |b| pbc.set_position(b),
    )?;
    pb.finish_and_clear();
    drop(out);

    let record = json!({
        "schema": RECORD_SCHEMA,
        "kind": "imrs-flash-record",
        "flashed_at": jiff::Timestamp::now().to_string(),
        "target": {"path": tgt.path, "kind": format!("{:?}", tgt.kind).to_lowercase(),
                   "name": tgt.name, "model": tgt.model, "serial": tgt.serial, "size": tgt.size},
        "device_key_id": keys::key_id(&device_pub),
        "device_public_key": keys::public_pem(&device_pub),
        "site": {"site_id": site.site_id, "instance": site.instance,
                 "device": site.device.to_string(), "sequence": site.sequence},
        "image": {"name": src.manifest.name, "version": src.manifest.version,
                  "manifest_sha256": src.manifest_sha256},
        "disk_size": size,
        "bytes_written": written,
        "ranges": map.ranges.len(),
        "read_back": how,
        "read_back_sha256": readback,
        "written_ranges": map.ranges.iter().map(|r| json!([r.first, r.last, r.sha256]))
            .collect::<Vec<_>>(),
        "signer_key_id": keys::key_id(&record_key.verifying_key()),
    });
    let signature = keys::sign_hex(&record_key, &canonical_json(&record))
        .trim()
        .to_string();
    let signed_record = json!({"record": record, "signature": signature});
    let enrolled = match &args.enrol {
        Some(dir) => Some(enrol(dir, &device_pub, &signed_record)?),
        None => None,
    };
    let secs = t0.elapsed().as_secs_f64();
    if ui.json {
        crate::ui::print_ok(json!({
            "record": signed_record["record"], "signature": signature,
            "enrolled": enrolled, "seconds": secs,
        }))?;
    } else {
        ui.info(format!(
            "{}: {} {} written ({} MiB in {} ranges) and read back ({}): every range matches",
            tgt.path.display(),
            src.manifest.name,
            src.manifest.version,
            written >> 20,
            map.ranges.len(),
            match how {
                write::ReadBack::Direct => "O_DIRECT",
                write::ReadBack::CacheDropped => "page cache dropped first",
            }
        ));
        ui.info(format!(
            "device key {} on IMRS-DATA; site {} sequence {} on IMRS-CONFIG{}; {secs:.1} s",
            keys::key_id(&device_pub),
            site.site_id,
            site.sequence,
            enrolled
                .as_ref()
                .map(|p| format!("; enrolled as {}", p.display()))
                .unwrap_or_default()
        ));
        println!("{}", serde_json::to_string_pretty(&signed_record)?);
    }
    Ok(0)
}
