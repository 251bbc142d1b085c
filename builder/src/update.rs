//! `imrs-build update`: a verified image into the inactive slot of an appliance disk (a disk
//! image file, or the block device of a disk taken out of an appliance), to be tried on the next
//! boot. The slot writer is `imrs_disk`'s (the init uses the same for remote updates): the
//! slot's old entry goes first, then the payload, fsync, and the entry under its counted name
//! as the commit point. A refused image or a write cut short leaves the running slot as it was.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use imrs_config::keys;
use imrs_disk::entry::MAX_TRIES;
use imrs_disk::{Esp, Slot};
use serde_json::json;

use crate::disk::{check_words, slot_payload};
use crate::ui::Ui;
use crate::verify;

/// `update` arguments.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// The appliance disk: a disk image file from `imrs-build disk`, or a whole-disk block device
    /// (opened exclusively: refused while any of it is mounted).
    pub target: PathBuf,
    /// Image folder to write.
    pub dir: PathBuf,
    /// Public key (PEM) the image's manifest must be signed with.
    #[arg(long)]
    pub pubkey: PathBuf,
    /// Boots the new slot may take to become healthy before systemd-boot falls back.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=MAX_TRIES as i64))]
    pub tries: u32,
    /// Write this slot (default: the one that would not boot next).
    #[arg(long, value_parser = parse_slot)]
    pub slot: Option<Slot>,
    /// Extra kernel command-line words for the new entry.
    #[arg(long = "append", value_name = "WORD")]
    pub append: Vec<String>,
}

fn parse_slot(text: &str) -> Result<Slot, String> {
    Slot::parse(text).ok_or_else(|| format!("{}: a or b", imrs_config::escape(text)))
}

/// Opens the target for writing: a regular file, or a block device exclusively (`O_EXCL`
/// refuses a device with a mounted file system).
fn open_target(path: &Path) -> Result<File> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    if meta.file_type().is_block_device() {
        o.custom_flags(libc::O_EXCL);
    } else if !meta.is_file() {
        anyhow::bail!(
            "{}: neither a disk image file nor a block device",
            path.display()
        );
    }
    o.open(path).with_context(|| {
        format!(
            "{}: cannot open for writing (a block device in use, e.g. mounted, is refused)",
            path.display()
        )
    })
}

/// `update`.
pub fn run(args: UpdateArgs, ui: &Ui) -> Result<u8> {
    check_words(&args.append)?;
    let key = keys::read_public(&args.pubkey)?;
    let v = verify::verify_loaded(&args.dir, &key)?;
    let payload = slot_payload(&v, &args.dir)?;
    let file = open_target(&args.target)?;
    let mut esp = Esp::open(file)
        .with_context(|| format!("{}: not an appliance disk", args.target.display()))?;
    let before = esp.slots()?;
    let slot = args
        .slot
        .unwrap_or_else(|| imrs_disk::update_target(&before, None));
    let next_before = imrs_disk::next_boot(&before);
    let entry = esp
        .write_slot(slot, &payload, Some(args.tries), &args.append)
        .with_context(|| format!("{}: writing slot {slot}", args.target.display()))?;
    let after = esp.slots()?;
    let keeps = slot.other();
    if ui.json {
        crate::ui::print_ok(json!({
            "target": args.target, "slot": slot.to_string(), "entry": entry.file_name(),
            "tries": args.tries, "image": v.manifest.name, "version": v.manifest.version,
            "manifest_sha256": payload.manifest_sha256(),
            "generation": after[slot as usize].entry.as_ref().and_then(|e| e.generation()),
            "next_boot": imrs_disk::next_boot(&after).map(|s| s.to_string()),
            "fallback": keeps.to_string(),
            "next_boot_before": next_before.map(|s| s.to_string()),
        }))?;
    } else {
        ui.info(format!(
            "{}: slot {slot} now holds {} {} (manifest {}), entry {}: tried on the next boot, \
             {} tries to become healthy, else slot {keeps} boots again",
            args.target.display(),
            v.manifest.name,
            v.manifest.version,
            payload.manifest_sha256(),
            entry.file_name(),
            args.tries
        ));
    }
    Ok(0)
}
