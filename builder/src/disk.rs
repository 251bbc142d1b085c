//! `imrs-build disk`: the appliance disk from a signed image folder. The folder is verified
//! first (signature, every artifact, the initramfs file list); only then is the disk written,
//! into a temporary file next to `--out` that is renamed into place when complete (and its
//! bmap likewise), so a refused image or a failed build leaves no output behind. What the disk
//! holds is `imrs_disk`'s business ([`imrs_disk::image::write_appliance`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use imrs_config::fsutil::{limits, read_bounded, read_bounded_string};
use imrs_config::image::SITE_PUBKEY_PATH;
use imrs_config::{keys, signed};
use imrs_disk::SlotPayload;
use imrs_disk::bmap::Bmap;
use imrs_disk::image::{ApplianceSpec, write_appliance};
use imrs_disk::layout::{Kind, Layout, MIB};
use serde_json::json;

use crate::image_dir::{BOOT_LOADER, INITRAMFS, KERNEL};
use crate::ui::Ui;
use crate::verify::{self, Verified};

/// `disk` arguments.
#[derive(Debug, Args)]
pub struct DiskArgs {
    /// Image folder (from `imrs-build build`).
    pub dir: PathBuf,
    /// Disk image file to write (replaced atomically).
    #[arg(long)]
    pub out: PathBuf,
    /// Public key (PEM) the image's manifest must be signed with.
    #[arg(long)]
    pub pubkey: PathBuf,
    /// Whole disk size: bytes, or with a K, M, G or T suffix (binary units), a multiple of 1 MiB.
    /// The data partition takes what the boot and config partitions leave (default: a 370 MiB
    /// disk, 96 MiB of data).
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// Also write OUT.bmap (bmaptool's format 2.0) for `bmaptool copy`.
    #[arg(long)]
    pub bmap: bool,
    /// Extra kernel command-line words for slot A's boot entry (e.g. `imrs.stop_after=hardware`
    /// for a bench check of the hardware); the same words give the same disk.
    #[arg(long = "append", value_name = "WORD")]
    pub append: Vec<String>,
    /// A signed site config (FILE and FILE.sig) to put on IMRS-CONFIG; it must verify with the
    /// image's own site-signing key. Without it the config partition is left empty.
    #[arg(long)]
    pub site: Option<PathBuf>,
}

/// Parses `--size`: `123456789`, `512M`, `4G`, `1T` (binary units).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" => 0,
        "K" | "KIB" => 10,
        "M" | "MIB" => 20,
        "G" | "GIB" => 30,
        "T" | "TIB" => 40,
        _ => {
            return Err(format!(
                "{}: unknown unit (use bytes or K, M, G, T)",
                imrs_config::escape(text)
            ));
        }
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{}: not a size", imrs_config::escape(text)))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{}: too large", imrs_config::escape(text)))
}

/// The image's site-signing public key, from its (verified) initramfs entries; `what` names
/// the image in errors.
pub(crate) fn image_site_key(
    entries: &[crate::cpio::Entry],
    what: &Path,
) -> Result<ed25519_dalek::VerifyingKey> {
    let want = SITE_PUBKEY_PATH.trim_start_matches('/');
    site_key_of(entries.iter().find(|e| e.name == want), what)
}

/// The image's site-signing public key from its compressed (verified) initramfs `data`, read
/// from `what`: decompressed only as far as the key (the initramfs holds it early).
pub(crate) fn site_key_in(data: &[u8], what: &Path) -> Result<ed25519_dalek::VerifyingKey> {
    let want = SITE_PUBKEY_PATH.trim_start_matches('/');
    let z = zstd::stream::read::Decoder::with_buffer(data)
        .with_context(|| format!("{}: not zstd", what.display()))?;
    let entry = crate::cpio::find(z, want, limits::KEY as u32)
        .with_context(|| format!("{}: reading the archive", what.display()))?;
    site_key_of(entry.as_ref(), what)
}

fn site_key_of(
    entry: Option<&crate::cpio::Entry>,
    what: &Path,
) -> Result<ed25519_dalek::VerifyingKey> {
    let e = entry
        .with_context(|| format!("{}: the image has no {SITE_PUBKEY_PATH}", what.display()))?;
    let pem = std::str::from_utf8(&e.data)
        .with_context(|| format!("{}: {SITE_PUBKEY_PATH} is not text", what.display()))?;
    keys::parse_public(pem, Path::new(SITE_PUBKEY_PATH)).map_err(Into::into)
}

/// A signed site config as read for a disk: its text, its signature file and what it says.
pub(crate) struct SiteFiles {
    pub text: Vec<u8>,
    pub sig: String,
    pub site: imrs_config::site::Site,
}

/// Reads the site config `path` (and `path.sig`) and checks it against the image's site key.
pub(crate) fn read_site(path: &Path, key: &ed25519_dalek::VerifyingKey) -> Result<SiteFiles> {
    let text = read_bounded(path, limits::SITE, "site config")?;
    let sig_path = signed::sig_path_for(path);
    let sig = read_bounded_string(&sig_path, limits::SIGNATURE, "site signature")?;
    let site = signed::verify_text(path, &text, &sig, key).with_context(|| {
        format!(
            "{}: the site config does not verify with the image's site-signing key \
             ({SITE_PUBKEY_PATH}); sign it with that key (`imrs-build site sign`)",
            path.display()
        )
    })?;
    Ok(SiteFiles { text, sig, site })
}

/// The boot loader from a verified folder.
pub(crate) fn boot_loader(v: &Verified, dir: &Path) -> Result<Vec<u8>> {
    match v.artifacts.get(BOOT_LOADER) {
        Some(l) => Ok(l.clone()),
        None => bail!(
            "{}: the image has no {BOOT_LOADER}: it was built from a recipe without a boot \
             loader; add `[boot] package = \"systemd-boot-efi\"` to the recipe (the shipped \
             images/*.toml have it), run `imrs-build lock` and build the image again",
            dir.display()
        ),
    }
}

/// What goes into a slot, from a verified folder.
pub(crate) fn slot_payload(v: &Verified, dir: &Path) -> Result<SlotPayload> {
    let get = |name: &str| {
        v.artifacts
            .get(name)
            .cloned()
            .with_context(|| format!("{}: the image has no {name}", dir.display()))
    };
    Ok(SlotPayload::new(
        v.manifest_bytes.clone(),
        v.signature.clone(),
        get(KERNEL)?,
        get(INITRAMFS)?,
    )?)
}

/// Refuses a `--append` word with spaces or control characters (one word each).
pub(crate) fn check_words(words: &[String]) -> Result<()> {
    for w in words {
        if w.is_empty() || w.chars().any(|c| c.is_whitespace() || c.is_control()) {
            bail!(
                "--append {}: one command-line word, without spaces or control characters",
                imrs_config::escape(w)
            );
        }
    }
    Ok(())
}

/// A temporary file next to `path`, removed unless persisted.
fn temp_beside(path: &Path) -> Result<tempfile::NamedTempFile> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .with_context(|| format!("{}: not a file name", path.display()))?;
    tempfile::Builder::new()
        .prefix(&format!(".{}.", name.to_string_lossy()))
        .tempfile_in(parent)
        .with_context(|| format!("{}: cannot create a file in this folder", parent.display()))
}

/// `disk`.
pub fn run(args: DiskArgs, ui: &Ui) -> Result<u8> {
    let t0 = Instant::now();
    // Everything that can be refused is refused before a byte is written.
    if let Some(size) = args.size {
        // The seed only places identifiers; the size check does not depend on it.
        Layout::appliance(Some(size), b"").with_context(|| format!("--size {size}"))?;
    }
    check_words(&args.append)?;
    let key = keys::read_public(&args.pubkey)?;
    let v = verify::verify_loaded(&args.dir, &key)?;
    let loader = boot_loader(&v, &args.dir)?;
    let payload = slot_payload(&v, &args.dir)?;
    let site = match &args.site {
        Some(p) => Some(read_site(p, &image_site_key(&v.initramfs, &args.dir)?)?),
        None => None,
    };
    let config: Vec<(&str, &[u8])> = match &site {
        Some(f) => vec![("site.toml", &f.text), ("site.toml.sig", f.sig.as_bytes())],
        None => vec![],
    };
    let spec = ApplianceSpec {
        size: args.size,
        loader_efi: &loader,
        payload: &payload,
        extra_options: &args.append,
        config_files: &config,
    };
    let tmp = temp_beside(&args.out)?;
    let sp = ui.spinner("writing the disk image");
    let layout = write_appliance(tmp.path(), &spec)
        .with_context(|| format!("{}: writing the disk image", args.out.display()))?;
    sp.finish_and_clear();
    let bmap = if args.bmap {
        let b = Bmap::of_file(tmp.path())?;
        let bpath = bmap_path(&args.out);
        let mut btmp = temp_beside(&bpath)?;
        btmp.write_all(b.to_xml().as_bytes())
            .and_then(|()| btmp.as_file().sync_all())
            .with_context(|| format!("{}: cannot write", bpath.display()))?;
        Some((b, btmp, bpath))
    } else {
        None
    };
    // The disk first, then its map: a map never describes another disk than the one beside it.
    tmp.persist(&args.out)
        .with_context(|| format!("{}: cannot rename into place", args.out.display()))?;
    let bmap = match bmap {
        Some((b, btmp, bpath)) => {
            btmp.persist(&bpath)
                .with_context(|| format!("{}: cannot rename into place", bpath.display()))?;
            Some((b, bpath))
        }
        None => None,
    };
    let secs = t0.elapsed().as_secs_f64();
    let parts: Vec<_> = layout
        .partitions
        .iter()
        .map(|p| {
            json!({"name": p.kind.partname(), "offset": p.extent.offset, "size": p.extent.len,
                   "guid": p.guid.to_string()})
        })
        .collect();
    if ui.json {
        crate::ui::print_ok(json!({
            "out": args.out, "size": layout.size, "image": v.manifest.name,
            "version": v.manifest.version, "manifest_sha256": payload.manifest_sha256(),
            "partitions": parts, "site": site.is_some(),
            "bmap": bmap.as_ref().map(|(b, p)| json!({"path": p,
                "mapped_bytes": b.mapped_blocks() * imrs_disk::bmap::BLOCK})),
            "seconds": secs,
        }))?;
    } else {
        ui.info(format!(
            "{}: {} MiB disk, slot A: {} {} (manifest {}), slot B empty, site config: {}",
            args.out.display(),
            layout.size / MIB,
            v.manifest.name,
            v.manifest.version,
            payload.manifest_sha256(),
            if site.is_some() { "yes" } else { "none" },
        ));
        for p in &layout.partitions {
            ui.info(format!(
                "  {:<12} {:>6} MiB at {:>6} MiB",
                p.kind.partname(),
                p.extent.len / MIB,
                p.extent.offset / MIB
            ));
        }
        if let Some((b, p)) = &bmap {
            ui.info(format!(
                "{}: {} of {} blocks mapped",
                p.display(),
                b.mapped_blocks(),
                b.blocks()
            ));
        }
        let data = layout.get(Kind::Data).map(|p| p.extent.len / MIB);
        ui.info(format!(
            "done in {secs:.1} s; IMRS-DATA {} MiB",
            data.unwrap_or(0)
        ));
    }
    Ok(0)
}

/// `FILE.bmap` for `FILE`.
pub fn bmap_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".bmap");
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("4g"), Ok(4 << 30));
        assert_eq!(parse_size("1TiB"), Ok(1 << 40));
        assert!(parse_size("12X").unwrap_err().contains("unknown unit"));
        assert!(parse_size("M").unwrap_err().contains("not a size"));
        assert!(
            parse_size("99999999999T")
                .unwrap_err()
                .contains("too large")
        );
    }
}
