//! Whole disk image files (builder side): the appliance disk `imrs-build disk` writes, and the
//! lab's config + data disk for a kernel booted directly. Written into a file the caller
//! created (empty), sparse: only what the partition table, the file systems and the files need
//! is written, the rest stays a hole that a bmap leaves out.

use std::fs::{File, OpenOptions};
use std::path::Path;

use crate::device::Window;
use crate::entry::Slot;
use crate::error::DiskError;
use crate::esp::Esp;
use crate::guid::Guid;
use crate::layout::{CONFIG_PARTNAME, Extent, Kind, Layout};
use crate::payload::SlotPayload;
use crate::{ext4, fat};

/// FAT volume label of the config partition.
pub const CONFIG_LABEL: &str = "IMRSCONFIG";

/// What goes on an appliance disk.
#[derive(Debug, Clone, Copy)]
pub struct ApplianceSpec<'a> {
    /// Whole disk size in bytes (`None`: [`Layout::default_appliance_size`]).
    pub size: Option<u64>,
    /// systemd-boot (`systemd-bootx64.efi`).
    pub loader_efi: &'a [u8],
    /// The image for slot A (written blessed).
    pub payload: &'a SlotPayload,
    /// Kernel parameters added to the entry's options.
    pub extra_options: &'a [String],
    /// Files for the config partition (`site.toml`, `site.toml.sig`), maybe none.
    pub config_files: &'a [(&'a str, &'a [u8])],
}

fn open_rw(path: &Path) -> Result<File, DiskError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(DiskError::io(format!(
            "{}: opening the disk image",
            path.display()
        )))
}

fn sized(file: &File, path: &Path, size: u64) -> Result<(), DiskError> {
    file.set_len(0)
        .and_then(|_| file.set_len(size))
        .map_err(DiskError::io(format!(
            "{}: sizing the disk image to {size} bytes",
            path.display()
        )))
}

fn config(
    file: &mut File,
    extent: Extent,
    seed: &[u8],
    epoch: i64,
    files: &[(&str, &[u8])],
) -> Result<(), DiskError> {
    let mut vol = Window::new(file, extent.offset, extent.len);
    let id = Guid::derive_u32(seed, "config volume id");
    fat::format(&mut vol, CONFIG_PARTNAME, CONFIG_LABEL, id, false)?;
    let fs = fat::open(&mut vol, CONFIG_PARTNAME, epoch)?;
    for (name, data) in files {
        fat::write_file(&fs, CONFIG_PARTNAME, name, data)?;
    }
    fat::close(fs, CONFIG_PARTNAME)
}

fn data(path: &Path, layout: &Layout, seed: &[u8], epoch: i64) -> Result<(), DiskError> {
    let p = layout.get(Kind::Data).ok_or_else(|| DiskError::Gpt {
        detail: "the layout has no data partition".into(),
    })?;
    ext4::make(
        path,
        p.extent,
        Guid::derive(seed, "ext4 uuid"),
        Guid::derive(seed, "ext4 hash seed"),
        epoch,
        None,
    )
}

/// One appliance's own files on a disk image made by [`write_appliance`], before it is flashed:
/// `config_files` replace the config partition's files of the same names, and the data
/// partition is made again holding `data_files` (name, bytes, mode; in its root, owned by root),
/// its identifiers derived from `seed` (per appliance).
pub fn personalise(
    path: &Path,
    config_files: &[(&str, &[u8])],
    data_files: &[(&str, &[u8], u32)],
    seed: &[u8],
    epoch: i64,
) -> Result<(), DiskError> {
    use std::os::unix::fs::PermissionsExt;
    let mut file = open_rw(path)?;
    let config = crate::layout::find(&mut file, CONFIG_PARTNAME)?;
    let data = crate::layout::find(&mut file, crate::layout::DATA_PARTNAME)?;
    {
        let mut vol = Window::new(&mut file, config.offset, config.len);
        let fs = fat::open(&mut vol, CONFIG_PARTNAME, epoch)?;
        for (name, bytes) in config_files {
            fat::write_file(&fs, CONFIG_PARTNAME, name, bytes)?;
        }
        fat::close(fs, CONFIG_PARTNAME)?;
    }
    let stage = tempfile_dir(path)?;
    for (name, bytes, mode) in data_files {
        let p = stage.join(name);
        std::fs::write(&p, bytes)
            .and_then(|()| std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)))
            .map_err(DiskError::io(format!(
                "{}: staging {name}",
                stage.display()
            )))?;
    }
    let made = ext4::make(
        path,
        data,
        Guid::derive(seed, "ext4 uuid"),
        Guid::derive(seed, "ext4 hash seed"),
        epoch,
        Some(&stage),
    );
    let _ = std::fs::remove_dir_all(&stage);
    made?;
    finish(file, path)
}

/// A private scratch folder beside `path` (mode 0700: it may hold a secret key for a moment).
fn tempfile_dir(path: &Path) -> Result<std::path::PathBuf, DiskError> {
    use std::os::unix::fs::DirBuilderExt;
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir = parent.join(format!(
        ".{}.data.{}",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(DiskError::io(format!("{}: creating", dir.display())))?;
    Ok(dir)
}

fn finish(file: File, path: &Path) -> Result<(), DiskError> {
    file.sync_all().map_err(DiskError::io(format!(
        "{}: syncing the disk image",
        path.display()
    )))
}

/// Writes the appliance disk into the (empty) file `path`: GPT, the ESP with systemd-boot and
/// the image in slot A (blessed; slot B empty), the config partition with `config_files`, and
/// the ext4 data partition. Every identifier is derived from the image's manifest sha256 and
/// every timestamp is its SOURCE_DATE_EPOCH: the same image gives the same bytes.
pub fn write_appliance(path: &Path, spec: &ApplianceSpec<'_>) -> Result<Layout, DiskError> {
    let seed = spec.payload.manifest_sha256().into_bytes();
    let epoch = spec.payload.manifest().source_date_epoch;
    let layout = Layout::appliance(spec.size, &seed)?;
    let mut file = open_rw(path)?;
    sized(&file, path, layout.size)?;
    layout.write_gpt(&mut file)?;
    let esp = layout
        .get(Kind::Esp)
        .map(|p| p.extent)
        .ok_or_else(|| DiskError::Gpt {
            detail: "the layout has no ESP".into(),
        })?;
    Esp::format(
        Window::new(&mut file, esp.offset, esp.len),
        &seed,
        epoch,
        spec.loader_efi,
    )?
    .write_slot(Slot::A, spec.payload, None, spec.extra_options)?;
    if let Some(p) = layout.get(Kind::Config) {
        config(&mut file, p.extent, &seed, epoch, spec.config_files)?;
    }
    data(path, &layout, &seed, epoch)?;
    // fsync covers the inode, so mke2fs's writes through its own descriptor too.
    finish(file, path)?;
    Ok(layout)
}

/// Writes the lab's disk for a directly booted kernel into the (empty) file `path`: GPT with
/// `IMRS-CONFIG` holding `config_files` and an empty ext4 `IMRS-DATA`; identifiers from `seed`,
/// timestamps `epoch`.
pub fn write_config_and_data(
    path: &Path,
    seed: &[u8],
    epoch: i64,
    config_files: &[(&str, &[u8])],
) -> Result<Layout, DiskError> {
    let layout = Layout::config_and_data(seed);
    let mut file = open_rw(path)?;
    sized(&file, path, layout.size)?;
    layout.write_gpt(&mut file)?;
    if let Some(p) = layout.get(Kind::Config) {
        config(&mut file, p.extent, seed, epoch, config_files)?;
    }
    data(path, &layout, seed, epoch)?;
    finish(file, path)?;
    Ok(layout)
}

/// Reads a file of the config partition of the disk image `path` (tests, checks).
pub fn read_config_file(path: &Path, name: &str) -> Result<Option<Vec<u8>>, DiskError> {
    let mut file = open_rw(path)?;
    let e = crate::layout::find(&mut file, CONFIG_PARTNAME)?;
    let mut vol = Window::new(&mut file, e.offset, e.len);
    let fs = fat::open(&mut vol, CONFIG_PARTNAME, 0)?;
    let r = fat::read_file(&fs, CONFIG_PARTNAME, name, 1 << 20);
    drop(fs);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn have_mke2fs() -> bool {
        std::process::Command::new(ext4::MKE2FS)
            .arg("-V")
            .output()
            .is_ok()
    }

    #[test]
    fn appliance_disks_are_reproducible_and_readable() {
        if !have_mke2fs() {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "mke2fs missing under CI"
            );
            eprintln!("SKIP: mke2fs (e2fsprogs) not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = crate::payload::tests::payload("1", 4096);
        let site: &[(&str, &[u8])] = &[("site.toml", b"x = 1\n"), ("site.toml.sig", b"00\n")];
        let spec = ApplianceSpec {
            size: None,
            loader_efi: b"MZ",
            payload: &p,
            extra_options: &[],
            config_files: site,
        };
        let mut images = Vec::new();
        for n in ["one.img", "two.img"] {
            let path = dir.path().join(n);
            File::create(&path).unwrap();
            let l = write_appliance(&path, &spec).unwrap();
            assert_eq!(std::fs::metadata(&path).unwrap().len(), l.size);
            images.push(path);
        }
        assert!(
            std::fs::read(&images[0]).unwrap() == std::fs::read(&images[1]).unwrap(),
            "two builds differ"
        );
        assert_eq!(
            read_config_file(&images[0], "site.toml").unwrap().unwrap(),
            b"x = 1\n"
        );
        let mut esp = Esp::open(File::open(&images[0]).unwrap()).unwrap();
        let [a, b] = esp.slots().unwrap();
        assert!(a.bootable() && a.blessed() && b.entry.is_none());
        // The ext4 has the derived UUID (blkid reads it at the partition's offset).
        let data = Layout::appliance(None, p.manifest_sha256().as_bytes())
            .unwrap()
            .get(Kind::Data)
            .unwrap()
            .clone();
        let out = std::process::Command::new("dumpe2fs")
            .arg("-h")
            .arg(format!(
                "{}?offset={}",
                images[0].display(),
                data.extent.offset
            ))
            .output();
        if let Ok(o) = out
            && o.status.success()
        {
            let t = String::from_utf8_lossy(&o.stdout);
            assert!(
                t.contains(&Guid::derive(p.manifest_sha256().as_bytes(), "ext4 uuid").to_string()),
                "{t}"
            );
        }
    }
}
