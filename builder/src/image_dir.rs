//! The image folder: `vmlinuz`, `initramfs.cpio.zst`, `systemd-bootx64.efi` (when the recipe
//! names a boot loader), `manifest.json`, `manifest.sig`.
//! It is written into a temporary sibling folder and renamed into place only when complete, so a
//! failed or interrupted build never leaves a half-written image under the requested name.

use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use imrs_config::image::{Artifact, Manifest, canonical_json};
use imrs_config::keys;
use sha2::{Digest, Sha256};

use crate::cpio::Entry;

/// Kernel file name in the image folder (the same in a disk's slot).
pub const KERNEL: &str = imrs_disk::payload::KERNEL;
/// Initramfs file name.
pub const INITRAMFS: &str = imrs_disk::payload::INITRAMFS;
/// The UEFI boot loader (systemd-boot), carried for `imrs-build disk`.
pub const BOOT_LOADER: &str = "systemd-bootx64.efi";
/// Manifest file name.
pub const MANIFEST: &str = imrs_disk::payload::MANIFEST;
/// Signature file name.
pub const SIGNATURE: &str = imrs_disk::payload::SIGNATURE;

/// Writing the image folder failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageDirError {
    /// Filesystem error.
    #[error("{path}: cannot write")]
    Io {
        /// Path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The output exists and is not an image folder: refuse to replace it.
    #[error(
        "{path}: exists and is not an imrs image folder (no manifest.json); refusing to replace it"
    )]
    NotAnImage {
        /// Path.
        path: PathBuf,
    },
}

/// sha256 of bytes, hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The digest the manifest records over the initramfs's sorted entries: one line per entry,
/// `MODE SIZE SHA256 NAME`, where SHA256 is over a file's data or a symlink's target and `-` for
/// anything else. Returns (entry count, hex digest).
pub fn file_list_digest(entries: &[Entry]) -> (u64, String) {
    let mut lines: Vec<String> = entries
        .iter()
        .map(|e| {
            let kind = e.mode & 0o170000;
            let digest = if kind == 0o100000 || kind == 0o120000 {
                sha256_hex(&e.data)
            } else {
                "-".into()
            };
            format!("{:o} {} {} {}\n", e.mode, e.data.len(), digest, e.name)
        })
        .collect();
    lines.sort();
    let mut h = Sha256::new();
    for l in &lines {
        h.update(l.as_bytes());
    }
    (lines.len() as u64, hex::encode(h.finalize()))
}

/// An artifact entry for bytes.
pub fn artifact(name: &str, data: &[u8]) -> Artifact {
    Artifact {
        name: name.into(),
        size: data.len() as u64,
        sha256: sha256_hex(data),
    }
}

fn write_file(path: &Path, data: &[u8]) -> Result<(), ImageDirError> {
    let err = |source| ImageDirError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::create(path).map_err(err)?;
    f.write_all(data).map_err(err)?;
    // Fixed mode whatever the umask: image folders compare equal with `ls -l` too.
    use std::os::unix::fs::PermissionsExt;
    f.set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(err)?;
    f.sync_all().map_err(err)
}

fn fsync_dir(path: &Path) -> Result<(), ImageDirError> {
    std::fs::File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(|source| ImageDirError::Io {
            path: path.to_path_buf(),
            source,
        })
}

/// Writes the artifacts, the canonical manifest and its signature into `out`, atomically.
/// Returns the manifest bytes.
pub fn write(
    out: &Path,
    files: &[(&str, &[u8])],
    manifest: &Manifest,
    key: &SigningKey,
) -> Result<Vec<u8>, ImageDirError> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ImageDirError::Io { path, source }
    };
    std::fs::create_dir_all(&parent).map_err(io(&parent))?;
    if out.exists() && !out.join(MANIFEST).exists() {
        let empty = std::fs::read_dir(out)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !empty {
            return Err(ImageDirError::NotAnImage {
                path: out.to_path_buf(),
            });
        }
    }
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir(&tmp).map_err(io(&tmp))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).map_err(io(&tmp))?;
    }
    let result = (|| {
        for (fname, data) in files {
            write_file(&tmp.join(fname), data)?;
        }
        let mbytes = canonical_json(manifest);
        write_file(&tmp.join(MANIFEST), &mbytes)?;
        write_file(
            &tmp.join(SIGNATURE),
            keys::sign_hex(key, &mbytes).as_bytes(),
        )?;
        fsync_dir(&tmp)?;
        Ok(mbytes)
    })();
    let mbytes = match result {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    // Swap into place: the old image (if any) moves aside first and is removed last.
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    if out.exists() {
        std::fs::rename(out, &old).map_err(io(out))?;
    }
    std::fs::rename(&tmp, out).map_err(io(out))?;
    fsync_dir(&parent)?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    }
    Ok(mbytes)
}
