//! The data partition's ext4, made by the host's `mke2fs` straight into the disk image at the
//! partition's offset (builder side only: the init never formats). Reproducible: the UUID and
//! the directory hash seed are given, the clock is fixed with `E2FSPROGS_FAKE_TIME`, nothing is
//! discarded, and only metadata is written (the rest of the partition stays a hole).
//!
//! What mke2fs zeroes (the journal) is written as zeros (`UNIX_IO_NOZEROOUT`): on a file it
//! would otherwise punch a hole there, a hole is not a mapped range, and flashing would leave
//! the target's old bytes in the new journal, where an old journal's blocks could be replayed
//! after a power cut.

use std::path::Path;
use std::process::Command;

use crate::error::DiskError;
use crate::guid::Guid;
use crate::layout::Extent;

/// The program.
pub const MKE2FS: &str = "mke2fs";
/// ext4 block size.
pub const BLOCK: u64 = 4096;
/// Volume label of the data partition.
pub const DATA_LABEL: &str = "imrs-data";

/// Makes an ext4 file system over `extent` of the image file `image`; with `populate`, the
/// file system holds that folder's files (`mke2fs -d`, owners and modes as they are there).
pub fn make(
    image: &Path,
    extent: Extent,
    uuid: Guid,
    hash_seed: Guid,
    epoch: i64,
    populate: Option<&Path>,
) -> Result<(), DiskError> {
    let blocks = extent.len / BLOCK;
    let mut cmd = Command::new(MKE2FS);
    cmd.args(["-t", "ext4", "-q", "-F", "-b", "4096", "-m", "0"])
        .args(["-L", DATA_LABEL, "-U", &uuid.to_string()])
        .arg("-E")
        .arg(format!(
            "offset={},nodiscard,hash_seed={hash_seed},root_owner=0:0",
            extent.offset
        ));
    if let Some(dir) = populate {
        cmd.arg("-d").arg(dir);
    }
    let out = cmd
        .arg(image)
        .arg(blocks.to_string())
        .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
        .env("UNIX_IO_NOZEROOUT", "1")
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| DiskError::Tool {
            program: MKE2FS,
            detail: format!("cannot run it ({e}); install e2fsprogs"),
        })?;
    if !out.status.success() {
        return Err(DiskError::Tool {
            program: MKE2FS,
            detail: format!(
                "failed ({}) on {}: {}",
                out.status,
                image.display(),
                imrs_config::escape(String::from_utf8_lossy(&out.stderr).trim())
            ),
        });
    }
    Ok(())
}
