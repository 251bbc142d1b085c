//! What `flash` is about to write to, and whether it may: a whole disk that nothing on this
//! machine uses (no mounted partition, no swap, no device-mapper or md holder, not the disk of
//! the running system), big enough; or a regular file (a disk image file, for tests and
//! benchmarks). Read from sysfs and `/proc` (`sys` and `proc` are parameters so tests can give
//! a made-up machine).

use std::collections::BTreeSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Why a device is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    /// Not a block device or regular file, or unreadable.
    #[error("{path}: {detail}")]
    Unusable {
        /// The device path.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// A partition, not a whole disk.
    #[error(
        "{path} is partition {name} of {disk}, not a whole disk; flash the disk, or pass \
         --allow-partition"
    )]
    Partition {
        /// The device path.
        path: PathBuf,
        /// Its kernel name.
        name: String,
        /// The disk it is on.
        disk: String,
    },
    /// It holds the running system's root file system.
    #[error("{path} ({name}) holds the running system (/ is mounted from {part})")]
    SystemDisk {
        /// The device path.
        path: PathBuf,
        /// Its kernel name.
        name: String,
        /// The partition `/` is on.
        part: String,
    },
    /// A partition of it is mounted.
    #[error("{path} ({name}) is in use: {part} is mounted at {mount}; unmount it first")]
    Mounted {
        /// The device path.
        path: PathBuf,
        /// Its kernel name.
        name: String,
        /// The mounted device.
        part: String,
        /// Where.
        mount: String,
    },
    /// It or a partition of it is active swap.
    #[error("{path} ({name}) is in use: {part} is active swap; swapoff it first")]
    Swap {
        /// The device path.
        path: PathBuf,
        /// Its kernel name.
        name: String,
        /// The swap device.
        part: String,
    },
    /// Something is stacked on it (device-mapper, md RAID, LVM).
    #[error("{path} ({name}) is in use: {part} is held by {holder} (device-mapper, md or LVM)")]
    Held {
        /// The device path.
        path: PathBuf,
        /// Its kernel name.
        name: String,
        /// The held device.
        part: String,
        /// The holder.
        holder: String,
    },
    /// Smaller than the image.
    #[error("{path} ({name}) has {size} bytes; the disk image needs {needed}")]
    TooSmall {
        /// The device path.
        path: PathBuf,
        /// Its kernel name.
        name: String,
        /// Its size.
        size: u64,
        /// The image's size.
        needed: u64,
    },
}

/// What a target is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A regular file (created if missing).
    File,
    /// A whole disk (`sda`, `nvme0n1`, `loop3`).
    Disk,
    /// A partition, allowed with `--allow-partition`.
    Partition,
}

/// A target that may be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The path given.
    pub path: PathBuf,
    /// What it is.
    pub kind: Kind,
    /// Kernel name (`sda`), for block devices.
    pub name: Option<String>,
    /// Size in bytes, for block devices.
    pub size: Option<u64>,
    /// The disk's model, as sysfs gives it.
    pub model: Option<String>,
    /// The disk's serial number, as sysfs gives it.
    pub serial: Option<String>,
}

impl Target {
    /// One line for a confirmation prompt or a record.
    pub fn describe(&self) -> String {
        match self.kind {
            Kind::File => format!("{} (a file)", self.path.display()),
            _ => format!(
                "{} ({}, {} MiB, model {}, serial {})",
                self.path.display(),
                self.name.as_deref().unwrap_or("?"),
                self.size.unwrap_or(0) >> 20,
                imrs_config::escape(self.model.as_deref().unwrap_or("unknown")),
                imrs_config::escape(self.serial.as_deref().unwrap_or("unknown")),
            ),
        }
    }
}

fn read_trim(p: &Path) -> Option<String> {
    let t = std::fs::read_to_string(p).ok()?;
    let t = t.trim();
    (!t.is_empty()).then(|| t.to_string())
}

fn devnum(major: u64, minor: u64) -> String {
    format!("{major}:{minor}")
}

/// The disk's folder in sysfs and its partitions' (name, `M:m`), the disk first.
fn family(disk_dir: &Path, disk_name: &str) -> Vec<(String, String, PathBuf)> {
    let mut out = Vec::new();
    if let Some(d) = read_trim(&disk_dir.join("dev")) {
        out.push((disk_name.to_string(), d, disk_dir.to_path_buf()));
    }
    if let Ok(rd) = std::fs::read_dir(disk_dir) {
        let mut parts: Vec<(String, String, PathBuf)> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("partition").exists())
            .filter_map(|p| {
                let name = p.file_name()?.to_string_lossy().into_owned();
                Some((name, read_trim(&p.join("dev"))?, p))
            })
            .collect();
        parts.sort();
        out.extend(parts);
    }
    out
}

/// `(M:m, mount point)` of every mount, from `mountinfo`.
fn mounts(proc_: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(proc_.join("self/mountinfo"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let (_, _, dev, _, mnt) = (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
            Some((dev.to_string(), mnt.replace("\\040", " ")))
        })
        .collect()
}

/// `M:m` of every active swap device.
fn swaps(proc_: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(proc_.join("swaps"))
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|p| std::fs::metadata(p).ok())
        .filter(|m| m.file_type().is_block_device())
        .map(|m| devnum(major_of(m.rdev()), minor_of(m.rdev())))
        .collect()
}

fn major_of(rdev: u64) -> u64 {
    u64::from(nix::sys::stat::major(rdev) as u32)
}

fn minor_of(rdev: u64) -> u64 {
    u64::from(nix::sys::stat::minor(rdev) as u32)
}

/// Checks `path` against this machine (`sys`, `proc`: `/sys`, `/proc`); `needed` is the disk
/// image's size.
pub fn inspect(
    path: &Path,
    needed: u64,
    allow_partition: bool,
    sys: &Path,
    proc_: &Path,
) -> Result<Target, Refusal> {
    let unusable = |detail: String| Refusal::Unusable {
        path: path.to_path_buf(),
        detail,
    };
    let file = || Target {
        path: path.to_path_buf(),
        kind: Kind::File,
        name: None,
        size: None,
        model: None,
        serial: None,
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(file()),
        Err(e) => return Err(unusable(format!("cannot read ({e})"))),
    };
    if meta.is_file() {
        return Ok(file());
    }
    if !meta.file_type().is_block_device() {
        return Err(unusable("neither a block device nor a regular file".into()));
    }
    let (major, minor) = (major_of(meta.rdev()), minor_of(meta.rdev()));
    inspect_block(path, major, minor, needed, allow_partition, sys, proc_)
}

/// [`inspect`] for the block device `major:minor`.
pub fn inspect_block(
    path: &Path,
    major: u64,
    minor: u64,
    needed: u64,
    allow_partition: bool,
    sys: &Path,
    proc_: &Path,
) -> Result<Target, Refusal> {
    let p = path.to_path_buf();
    let link = sys.join("dev/block").join(devnum(major, minor));
    let dir = std::fs::canonicalize(&link).map_err(|e| Refusal::Unusable {
        path: p.clone(),
        detail: format!("{} not in sysfs ({e})", devnum(major, minor)),
    })?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let is_partition = dir.join("partition").exists();
    let disk_dir = if is_partition {
        dir.parent().map(Path::to_path_buf).unwrap_or(dir.clone())
    } else {
        dir.clone()
    };
    let disk_name = disk_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if is_partition && !allow_partition {
        return Err(Refusal::Partition {
            path: p,
            name,
            disk: disk_name,
        });
    }
    // What must be idle: a partition itself, or a disk and all its partitions.
    let fam: Vec<(String, String, PathBuf)> = if is_partition {
        family(&dir, &name).into_iter().take(1).collect()
    } else {
        family(&disk_dir, &disk_name)
    };
    let mounted = mounts(proc_);
    // The running system's disk first: the most important refusal to name.
    for (part, dev, _) in &fam {
        if mounted.iter().any(|(d, m)| d == dev && m == "/") {
            return Err(Refusal::SystemDisk {
                path: p,
                name,
                part: part.clone(),
            });
        }
    }
    for (part, dev, _) in &fam {
        if let Some((_, m)) = mounted.iter().find(|(d, _)| d == dev) {
            return Err(Refusal::Mounted {
                path: p,
                name,
                part: part.clone(),
                mount: m.clone(),
            });
        }
    }
    let swap = swaps(proc_);
    for (part, dev, _) in &fam {
        if swap.contains(dev) {
            return Err(Refusal::Swap {
                path: p,
                name,
                part: part.clone(),
            });
        }
    }
    for (part, _, d) in &fam {
        if let Ok(rd) = std::fs::read_dir(d.join("holders"))
            && let Some(h) = rd.flatten().next()
        {
            return Err(Refusal::Held {
                path: p,
                name,
                part: part.clone(),
                holder: h.file_name().to_string_lossy().into_owned(),
            });
        }
    }
    let size = read_trim(&dir.join("size"))
        .and_then(|s| s.parse::<u64>().ok())
        .map(|sectors| sectors * 512)
        .unwrap_or(0);
    if size < needed {
        return Err(Refusal::TooSmall {
            path: p,
            name,
            size,
            needed,
        });
    }
    let dev = disk_dir.join("device");
    Ok(Target {
        path: p,
        kind: if is_partition {
            Kind::Partition
        } else {
            Kind::Disk
        },
        name: Some(name),
        size: Some(size),
        model: read_trim(&dev.join("model")),
        serial: read_trim(&dev.join("serial")).or_else(|| read_trim(&disk_dir.join("serial"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A made-up machine: disk sda (8:0, 1 GiB) with sda1 (8:1) and sda2 (8:2), disk sdb
    /// (8:16, 10 MiB).
    fn machine() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        let w = |p: &str, text: &str| {
            let p = r.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        for (dir, dev, size) in [
            ("sys/devices/pci/block/sda", "8:0", "2097152"),
            ("sys/devices/pci/block/sda/sda1", "8:1", "1024"),
            ("sys/devices/pci/block/sda/sda2", "8:2", "1024"),
            ("sys/devices/pci/block/sdb", "8:16", "20480"),
        ] {
            w(&format!("{dir}/dev"), &format!("{dev}\n"));
            w(&format!("{dir}/size"), &format!("{size}\n"));
            std::fs::create_dir_all(r.join(dir).join("holders")).unwrap();
            if dir.ends_with('1') || dir.ends_with('2') {
                w(&format!("{dir}/partition"), "1\n");
            }
            std::fs::create_dir_all(r.join("sys/dev/block")).unwrap();
            std::os::unix::fs::symlink(r.join(dir), r.join("sys/dev/block").join(dev)).unwrap();
        }
        w("sys/devices/pci/block/sda/device/model", "CALYPSO SSD  \n");
        w("sys/devices/pci/block/sda/device/serial", "S3Z1NB0K\n");
        w(
            "proc/self/mountinfo",
            "22 1 0:21 / /proc rw - proc proc rw\n",
        );
        w("proc/swaps", "Filename Type Size Used Priority\n");
        t
    }

    fn check(r: &Path, major: u64, minor: u64, allow: bool) -> Result<Target, Refusal> {
        inspect_block(
            Path::new("/dev/x"),
            major,
            minor,
            400 << 20,
            allow,
            &r.join("sys"),
            &r.join("proc"),
        )
    }

    #[test]
    fn an_idle_disk_is_accepted_with_its_identity() {
        let m = machine();
        let t = check(m.path(), 8, 0, false).unwrap();
        assert_eq!(t.kind, Kind::Disk);
        assert_eq!(t.name.as_deref(), Some("sda"));
        assert_eq!(t.size, Some(1 << 30));
        assert_eq!(t.model.as_deref(), Some("CALYPSO SSD"));
        assert_eq!(t.serial.as_deref(), Some("S3Z1NB0K"));
        assert!(t.describe().contains("serial S3Z1NB0K"), "{}", t.describe());
    }

    #[test]
    fn every_kind_of_use_is_refused_and_named() {
        let m = machine();
        let r = m.path();
        let e = check(r, 8, 1, false).unwrap_err().to_string();
        assert!(
            e.contains("partition sda1 of sda") && e.contains("--allow-partition"),
            "{e}"
        );
        // Allowed, a partition is checked on its own (and is too small here).
        let e = check(r, 8, 1, true).unwrap_err().to_string();
        assert!(e.contains("has 524288 bytes"), "{e}");
        let e = check(r, 8, 16, false).unwrap_err().to_string();
        assert!(
            e.contains("has 10485760 bytes; the disk image needs 419430400"),
            "{e}"
        );

        let mi = r.join("proc/self/mountinfo");
        std::fs::write(&mi, "22 1 0:21 / /proc rw - proc proc rw\n30 1 8:2 / /run/media/usb\\040key rw - vfat /dev/sda2 rw\n").unwrap();
        let e = check(r, 8, 0, false).unwrap_err().to_string();
        assert_eq!(
            e,
            "/dev/x (sda) is in use: sda2 is mounted at /run/media/usb key; unmount it first"
        );
        std::fs::write(
            &mi,
            "30 1 8:1 / / rw - ext4 /dev/sda1 rw\n31 1 8:2 / /boot rw - ext4 /dev/sda2 rw\n",
        )
        .unwrap();
        let e = check(r, 8, 0, false).unwrap_err().to_string();
        assert_eq!(
            e,
            "/dev/x (sda) holds the running system (/ is mounted from sda1)"
        );
        std::fs::write(&mi, "").unwrap();

        std::fs::create_dir_all(r.join("sys/devices/pci/block/sda/sda2/holders/dm-0")).unwrap();
        let e = check(r, 8, 0, false).unwrap_err().to_string();
        assert_eq!(
            e,
            "/dev/x (sda) is in use: sda2 is held by dm-0 (device-mapper, md or LVM)"
        );
        std::fs::remove_dir(r.join("sys/devices/pci/block/sda/sda2/holders/dm-0")).unwrap();
        assert!(check(r, 8, 0, false).is_ok());

        let e = check(r, 8, 99, false).unwrap_err().to_string();
        assert!(e.contains("8:99 not in sysfs"), "{e}");
    }

    #[test]
    fn files_are_targets_and_other_things_are_not() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("disk.img");
        let t = inspect(&f, 1, false, Path::new("/sys"), Path::new("/proc")).unwrap();
        assert_eq!(t.kind, Kind::File);
        let e = inspect(
            Path::new("/dev/null"),
            1,
            false,
            Path::new("/sys"),
            Path::new("/proc"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("neither a block device nor a regular file"),
            "{e}"
        );
    }
}
