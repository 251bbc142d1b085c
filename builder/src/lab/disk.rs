//! The guest's disk when the lab boots the kernel directly: one raw image with a GPT holding two
//! partitions found by the init through their GPT names (`PARTNAME=` in sysfs):
//!
//! | partition | filesystem | contents |
//! |---|---|---|
//! | `IMRS-CONFIG` | vfat | `site.toml`, `site.toml.sig` |
//! | `IMRS-DATA` | ext4 | empty: the init keeps its state and outbox there |
//!
//! Made by `imrs_disk` (the same code as the appliance disk: GPT, FAT through `fatfs`, ext4
//! through `mke2fs` at the partition's offset), without loop devices or mounts. The same disk
//! is reused across the boots of a scenario (power cut, second boot).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

pub use imrs_disk::layout::{CONFIG_PARTNAME, DATA_PARTNAME};

/// Timestamps on the lab disk's file systems (2026-08-01, UTC): the disk is made afresh for
/// every run, only its contents matter.
const EPOCH: i64 = 1_785_542_400;

/// Builds the disk image `out` with the signed site config `site` (and `site.sig`) on the config
/// partition; identifiers derived from the site config's bytes.
pub fn build(out: &Path, site: &Path, site_sig: &Path) -> Result<PathBuf> {
    let read = |p: &Path| {
        if !p.is_file() {
            bail!("{}: missing; the config partition needs it", p.display());
        }
        std::fs::read(p).with_context(|| format!("{}: cannot read", p.display()))
    };
    let (text, sig) = (read(site)?, read(site_sig)?);
    std::fs::File::create(out).with_context(|| format!("{}: cannot create", out.display()))?;
    let seed = Sha256::digest([b"imrs lab disk\0".as_slice(), &text].concat());
    imrs_disk::image::write_config_and_data(
        out,
        &seed,
        EPOCH,
        &[("site.toml", &text), ("site.toml.sig", &sig)],
    )
    .with_context(|| format!("{}: writing the lab disk", out.display()))?;
    Ok(out.to_path_buf())
}

/// How much bigger than the disk image the lab's appliance disk is: the first boot grows
/// `IMRS-DATA` into it, as on an appliance whose disk is bigger than the image.
pub const LAB_DISK_SPARE: u64 = 128 << 20;

/// Builds the appliance disk `out` from the image folder `image` (already verified by the
/// lab), with the signed site config on `IMRS-CONFIG`: what `imrs-build disk --site` makes,
/// on a disk [`LAB_DISK_SPARE`] bigger than the image.
pub fn appliance(out: &Path, image: &Path, site: &Path, site_sig: &Path) -> Result<PathBuf> {
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("{}: cannot read", p.display()));
    let (text, sig) = (read(site)?, read(site_sig)?);
    let payload = imrs_disk::SlotPayload::from_folder(image)?;
    let loader = read(&image.join(crate::image_dir::BOOT_LOADER)).context(
        "the image has no boot loader (built from a recipe without [boot]): --boot disk needs it",
    )?;
    std::fs::File::create(out).with_context(|| format!("{}: cannot create", out.display()))?;
    imrs_disk::image::write_appliance(
        out,
        &imrs_disk::image::ApplianceSpec {
            size: None,
            loader_efi: &loader,
            payload: &payload,
            extra_options: &[],
            config_files: &[("site.toml", &text), ("site.toml.sig", &sig)],
        },
    )
    .with_context(|| format!("{}: writing the appliance disk", out.display()))?;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(out)
        .with_context(|| format!("{}: cannot open", out.display()))?;
    let len = f.metadata()?.len();
    f.set_len(len + LAB_DISK_SPARE)
        .with_context(|| format!("{}: cannot extend", out.display()))?;
    Ok(out.to_path_buf())
}

/// The partition names in `disk`'s GPT, in disk order.
pub fn partition_names(disk: &Path) -> Result<Vec<String>> {
    let mut f =
        std::fs::File::open(disk).with_context(|| format!("{}: cannot open", disk.display()))?;
    Ok(imrs_disk::layout::partitions(&mut f)?
        .into_iter()
        .map(|(name, _)| name)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_disk_the_init_can_read() {
        if std::process::Command::new(imrs_disk::ext4::MKE2FS)
            .arg("-V")
            .output()
            .is_err()
        {
            assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "mke2fs missing");
            eprintln!("SKIP: mke2fs (e2fsprogs) not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let site = dir.path().join("site.toml");
        std::fs::write(&site, "x = 1\n").unwrap();
        let sig = dir.path().join("site.toml.sig");
        std::fs::write(&sig, "00\n").unwrap();
        let disk = build(&dir.path().join("disk.img"), &site, &sig).unwrap();
        assert_eq!(
            partition_names(&disk).unwrap(),
            [CONFIG_PARTNAME, DATA_PARTNAME]
        );
        assert_eq!(
            imrs_disk::image::read_config_file(&disk, "site.toml")
                .unwrap()
                .unwrap(),
            b"x = 1\n"
        );
        // Cross-checked with mtools when it is installed: the FAT is a standard one.
        let e = imrs_disk::layout::find(&mut std::fs::File::open(&disk).unwrap(), CONFIG_PARTNAME)
            .unwrap();
        if let Ok(o) = std::process::Command::new("mtype")
            .arg("-i")
            .arg(format!("{}@@{}", disk.display(), e.offset))
            .arg("::/site.toml.sig")
            .env("MTOOLS_SKIP_CHECK", "1")
            .output()
        {
            assert_eq!(String::from_utf8_lossy(&o.stdout), "00\n");
        }
        // A missing signature is named.
        let e = build(&dir.path().join("d2.img"), &site, &dir.path().join("nope")).unwrap_err();
        assert!(format!("{e:#}").contains("nope: missing"), "{e:#}");
    }
}
