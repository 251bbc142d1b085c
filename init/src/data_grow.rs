//! `IMRS-DATA` grown to the end of the appliance's disk (the machine's init only). A disk image
//! is smaller than the disk it is written to; on the first boot (and any boot that finds room,
//! so a power cut half-way is finished later) the init, before mounting the data partition:
//!
//! 1. extends `IMRS-DATA` in the GPT to the disk's end and moves the backup GPT there
//!    ([`imrs_disk::grow::grow_data`]: crash-safe order, never touches another partition), then
//!    asks the kernel to re-read the table (`BLKRRPART`; nothing of the disk is in use yet);
//! 2. after the mount, when the file system is smaller than its partition (read from the ext4
//!    superblock), has the kernel grow it online (`EXT4_IOC_RESIZE_FS`, what `resize2fs` does
//!    for a mounted file system): no tool in the image.
//!
//! Everything here only warns on failure: a data partition that keeps its size is still a
//! working one.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

nix::ioctl_none!(blkrrpart, 0x12, 95);
nix::ioctl_write_ptr!(ext4_resize_fs, b'f', 16, u64);

/// The whole disk a partition node (`dev/vda3`) belongs to, from sysfs under `root`
/// (`sys/class/block/vda3` links into the disk's folder).
pub fn parent_disk(root: &Path, partition: &Path) -> Option<PathBuf> {
    let name = partition.file_name()?;
    let real = std::fs::canonicalize(root.join("sys/class/block").join(name)).ok()?;
    let disk = real.parent()?.file_name()?;
    Some(root.join("dev").join(disk))
}

/// Step 1: grows the partition table's `IMRS-DATA` on the disk holding `partition`; the
/// console line to print, if there is something to say.
pub fn grow_table(root: &Path, partition: &Path) -> Option<String> {
    let disk = parent_disk(root, partition)?;
    let mut f = match OpenOptions::new().read(true).write(true).open(&disk) {
        Ok(f) => f,
        Err(e) => {
            return Some(format!(
                "{}: cannot open to grow IMRS-DATA ({e})",
                disk.display()
            ));
        }
    };
    let len = match imrs_disk::grow::device_len(&mut f) {
        Ok(l) => l,
        Err(e) => return Some(format!("{}: {e}", disk.display())),
    };
    match imrs_disk::grow::grow_data(&mut f, len) {
        Ok(imrs_disk::grow::Growth::AlreadyFull { .. }) => None,
        Ok(imrs_disk::grow::Growth::Grown { from, to }) => {
            // SAFETY: BLKRRPART takes no argument; the descriptor is a block device we opened.
            let reread = unsafe { blkrrpart(f.as_raw_fd()) };
            Some(format!(
                "IMRS-DATA grown to the end of {}: {} MiB -> {} MiB{}",
                disk.display(),
                from >> 20,
                to >> 20,
                match reread {
                    Ok(_) => String::new(),
                    Err(e) => format!(
                        "; the kernel did not re-read the table ({e}): the file system grows on \
                         the next boot"
                    ),
                }
            ))
        }
        Err(e) => Some(format!(
            "{}: IMRS-DATA not grown: {}",
            disk.display(),
            crate::log::chain(&e)
        )),
    }
}

/// The ext4 superblock's block size and block count, read from the partition.
pub fn ext4_blocks(partition: &mut File) -> std::io::Result<(u64, u64)> {
    // The superblock: 1024 bytes at offset 1024. s_blocks_count_lo at 0x04, s_log_block_size
    // at 0x18, s_magic at 0x38, s_feature_incompat at 0x60 (INCOMPAT_64BIT = 0x80),
    // s_blocks_count_hi at 0x150.
    let mut sb = [0u8; 1024];
    partition.seek(SeekFrom::Start(1024))?;
    partition.read_exact(&mut sb)?;
    let le32 = |o: usize| {
        u32::from_le_bytes(
            sb.get(o..o + 4)
                .and_then(|b| b.try_into().ok())
                .unwrap_or([0; 4]),
        )
    };
    let magic = u16::from_le_bytes([sb[0x38], sb[0x39]]);
    if magic != 0xEF53 {
        return Err(std::io::Error::other(format!(
            "no ext4 superblock (magic {magic:#06x})"
        )));
    }
    let log = le32(0x18);
    if log > 6 {
        return Err(std::io::Error::other(format!(
            "ext4 block size 2^{} unusual",
            10 + log
        )));
    }
    let block = 1024u64 << log;
    let hi = if le32(0x60) & 0x80 != 0 {
        le32(0x150)
    } else {
        0
    };
    Ok((block, (u64::from(hi) << 32) | u64::from(le32(0x04))))
}

/// Step 2: grows the ext4 file system mounted at `mount` to fill `partition`; the console
/// line to print, if there is something to say.
pub fn grow_fs(partition: &Path, mount: &Path) -> Option<String> {
    let mut p = match File::open(partition) {
        Ok(f) => f,
        Err(e) => return Some(format!("{}: cannot read ({e})", partition.display())),
    };
    let (block, blocks) = match ext4_blocks(&mut p) {
        Ok(b) => b,
        Err(e) => return Some(format!("{}: {e}", partition.display())),
    };
    let bytes = match imrs_disk::grow::device_len(&mut p) {
        Ok(b) => b,
        Err(e) => return Some(format!("{}: {e}", partition.display())),
    };
    let want = bytes / block;
    if want <= blocks {
        return None;
    }
    let dir = match File::open(mount) {
        Ok(d) => d,
        Err(e) => return Some(format!("{}: cannot open ({e})", mount.display())),
    };
    // SAFETY: EXT4_IOC_RESIZE_FS reads one u64 (the new block count) from the pointer, which
    // lives for the call; the descriptor is the mounted ext4's root.
    match unsafe { ext4_resize_fs(dir.as_raw_fd(), &want) } {
        Ok(_) => Some(format!(
            "IMRS-DATA file system grown online: {} MiB -> {} MiB",
            (blocks * block) >> 20,
            (want * block) >> 20
        )),
        Err(e) => Some(format!(
            "IMRS-DATA file system not grown ({e}): it keeps {} MiB",
            (blocks * block) >> 20
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_ext4_superblock_and_refuses_others() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("fs");
        let mut sb = vec![0u8; 4096];
        sb[1024 + 0x38..1024 + 0x3a].copy_from_slice(&0xEF53u16.to_le_bytes());
        sb[1024 + 0x18..1024 + 0x1c].copy_from_slice(&2u32.to_le_bytes());
        sb[1024 + 0x04..1024 + 0x08].copy_from_slice(&24576u32.to_le_bytes());
        sb[1024 + 0x60..1024 + 0x64].copy_from_slice(&0x80u32.to_le_bytes());
        sb[1024 + 0x150..1024 + 0x154].copy_from_slice(&1u32.to_le_bytes());
        std::fs::write(&p, &sb).unwrap();
        let (block, blocks) = ext4_blocks(&mut File::open(&p).unwrap()).unwrap();
        assert_eq!((block, blocks), (4096, (1 << 32) + 24576));
        std::fs::write(&p, vec![0u8; 4096]).unwrap();
        let e = ext4_blocks(&mut File::open(&p).unwrap()).unwrap_err();
        assert!(e.to_string().contains("no ext4 superblock"), "{e}");
        std::fs::write(&p, vec![0u8; 100]).unwrap();
        assert!(ext4_blocks(&mut File::open(&p).unwrap()).is_err());
    }

    #[test]
    fn the_parent_disk_comes_from_sysfs() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        let disk_dir = r.join("sys/devices/virtual/block/vda");
        std::fs::create_dir_all(disk_dir.join("vda3")).unwrap();
        std::fs::create_dir_all(r.join("sys/class/block")).unwrap();
        std::os::unix::fs::symlink(disk_dir.join("vda3"), r.join("sys/class/block/vda3")).unwrap();
        assert_eq!(parent_disk(r, &r.join("dev/vda3")), Some(r.join("dev/vda")));
        assert_eq!(parent_disk(r, &r.join("dev/sdz1")), None);
    }
}
