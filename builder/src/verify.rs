//! `verify` and `inspect`: check an image folder against its signed manifest, and list what is in
//! it. Verification order: the signature over the exact manifest bytes first (nothing unsigned is
//! trusted), then the folder holds exactly the manifest, its signature and the listed artifacts,
//! each a regular file, then every artifact's size and sha256, then the initramfs's structure and
//! file list.
//!
//! Files in the folder are opened with `O_NOFOLLOW` and checked with `fstat` on the open file: a
//! symlink (even to an identical file elsewhere), FIFO, device or folder in the image folder is an
//! error naming it, and what is hashed is what was opened, not whatever the name points to later.
//! Every read is bounded: the manifest and signature by fixed limits, an artifact by the size its
//! signed manifest gives, the unpacked initramfs by [`MAX_INITRAMFS_UNPACKED`].

use std::fs::File;
use std::io::Read as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use imrs_config::image::Manifest;
use imrs_config::keys;

use crate::cpio;
use crate::image_dir::{INITRAMFS, MANIFEST, SIGNATURE, file_list_digest, sha256_hex};

/// Largest `manifest.json` read (a real one is a few KiB).
pub const MAX_MANIFEST_BYTES: u64 = 16 << 20;
/// Largest `manifest.sig` read (a real one is 129 bytes).
pub const MAX_SIGNATURE_BYTES: u64 = 4 << 10;
/// Largest initramfs read when its size is not given by a verified manifest (`inspect`).
pub const MAX_INITRAMFS_BYTES: u64 = 1 << 30;
/// Largest unpacked initramfs (the appliance's whole RAM is 1 GiB or more; real images unpack to
/// well under 100 MiB).
pub const MAX_INITRAMFS_UNPACKED: u64 = 1 << 30;

/// The first thing found wrong with an image folder.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// A file or the folder could not be read (missing folder, permission, I/O error).
    #[error("{path}: cannot read")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file is larger than what may be read.
    #[error("{path}: {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A file the image must have is not in the folder.
    #[error("{path}: missing from the image folder")]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// An entry of the folder is not a regular file.
    #[error(
        "{path}: not a regular file (it is a {kind}); an image folder holds only regular files"
    )]
    NotRegular {
        /// The entry.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// A file changed size while it was read.
    #[error("{path}: changed while it was read ({expected} bytes when opened)")]
    Changed {
        /// The file.
        path: PathBuf,
        /// Its size when opened.
        expected: u64,
    },
    /// The manifest signature is missing, malformed or made with another key.
    #[error("{path}: the manifest signature is not valid for this public key")]
    Signature {
        /// `manifest.sig`.
        path: PathBuf,
        /// Why.
        #[source]
        source: keys::KeyError,
    },
    /// The manifest is signed but not a manifest (should not happen unless the key signed junk).
    #[error("{path}: signed, but not a manifest: {detail}")]
    Manifest {
        /// `manifest.json`.
        path: PathBuf,
        /// Parser message.
        detail: String,
    },
    /// The (unverified) manifest does not parse (`inspect`).
    #[error("{path}: not an image manifest: {detail}")]
    NotManifest {
        /// `manifest.json`.
        path: PathBuf,
        /// Parser message.
        detail: String,
    },
    /// An artifact's size differs.
    #[error("{path}: size {actual} bytes, the manifest says {expected}")]
    Size {
        /// Artifact.
        path: PathBuf,
        /// Manifest size.
        expected: u64,
        /// Actual size.
        actual: u64,
    },
    /// An artifact's content differs.
    #[error("{path}: sha256 {actual}, the manifest says {expected}")]
    Digest {
        /// Artifact.
        path: PathBuf,
        /// Manifest sha256.
        expected: String,
        /// Actual sha256.
        actual: String,
    },
    /// A file in the folder that the manifest does not list.
    #[error("{path}: not listed in the manifest")]
    Unexpected {
        /// The file.
        path: PathBuf,
    },
    /// The initramfs does not decompress or parse.
    #[error("{path}: not a valid zstd-compressed newc archive: {detail}")]
    Archive {
        /// The initramfs.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
    /// The initramfs file list differs from the manifest's digest.
    #[error("{path}: file list digest {actual}, the manifest says {expected}")]
    FileList {
        /// The initramfs.
        path: PathBuf,
        /// Manifest digest.
        expected: String,
        /// Actual digest.
        actual: String,
    },
}

impl VerifyError {
    /// The exit code this failure means: [`crate::EXIT_ERROR`] when the folder or a file could
    /// not be read at all (an I/O error, or a file too large to read), [`crate::EXIT_VERIFY`]
    /// when it was read and is wrong (the image folder is not what its signed manifest says).
    pub fn exit_code(&self) -> u8 {
        match self {
            VerifyError::Read { .. } | VerifyError::TooLarge { .. } => crate::EXIT_ERROR,
            _ => crate::EXIT_VERIFY,
        }
    }
}

/// Opens `path` without following a symlink in its last component and without blocking on a
/// FIFO; it must be a regular file. Returns the file and its size.
fn open_regular(path: &Path) -> Result<(File, u64), VerifyError> {
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    let file = match opened {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(VerifyError::NotRegular {
                path: path.to_path_buf(),
                kind: "symbolic link",
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(VerifyError::Missing {
                path: path.to_path_buf(),
            });
        }
        Err(source) => {
            return Err(VerifyError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let meta = file.metadata().map_err(|source| VerifyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.file_type().is_file() {
        return Err(VerifyError::NotRegular {
            path: path.to_path_buf(),
            kind: imrs_config::fsutil::kind_name(meta.file_type()),
        });
    }
    Ok((file, meta.len()))
}

/// Reads exactly `len` bytes from `file` (opened at `path`), refusing a file that grew or shrank.
fn read_exactly(mut file: File, path: &Path, len: u64) -> Result<Vec<u8>, VerifyError> {
    let mut data = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.by_ref()
        .take(len.saturating_add(1))
        .read_to_end(&mut data)
        .map_err(|source| VerifyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    if data.len() as u64 != len {
        return Err(VerifyError::Changed {
            path: path.to_path_buf(),
            expected: len,
        });
    }
    Ok(data)
}

/// Reads a regular file of at most `limit` bytes from the image folder.
fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, VerifyError> {
    let (file, size) = open_regular(path)?;
    if size > limit {
        return Err(VerifyError::TooLarge {
            path: path.to_path_buf(),
            size,
            limit,
        });
    }
    read_exactly(file, path, size)
}

/// Checks that the folder exists and is a folder (following a symlink to it: the folder is
/// named by the caller; what is inside it is not followed).
fn check_folder(dir: &Path) -> Result<(), VerifyError> {
    let meta = std::fs::metadata(dir).map_err(|source| VerifyError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(VerifyError::Read {
            path: dir.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                "not a directory: an image folder was expected",
            ),
        });
    }
    Ok(())
}

/// An artifact name must be a plain file name in the folder.
fn check_artifact_name(mpath: &Path, name: &str) -> Result<(), VerifyError> {
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0')
        && name != MANIFEST
        && name != SIGNATURE;
    if plain {
        Ok(())
    } else {
        Err(VerifyError::Manifest {
            path: mpath.to_path_buf(),
            detail: format!("artifact name {name:?} is not a plain file name in the folder"),
        })
    }
}

/// An image folder's contents as verified: what a later step (a disk, a flash) must use
/// instead of reading the folder again.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The manifest.
    pub manifest: Manifest,
    /// Its exact bytes (what the signature covers).
    pub manifest_bytes: Vec<u8>,
    /// The signature file's bytes.
    pub signature: Vec<u8>,
    /// Every artifact's bytes, by name.
    pub artifacts: std::collections::BTreeMap<String, Vec<u8>>,
    /// The initramfs's entries.
    pub initramfs: Vec<cpio::Entry>,
}

/// Verifies an image folder; returns the manifest when everything checks out.
pub fn verify(dir: &Path, key: &VerifyingKey) -> Result<Manifest, VerifyError> {
    verify_loaded(dir, key).map(|v| v.manifest)
}

/// Verifies an image folder like [`verify`] and returns the bytes that were verified.
pub fn verify_loaded(dir: &Path, key: &VerifyingKey) -> Result<Verified, VerifyError> {
    check_folder(dir)?;
    let mpath = dir.join(MANIFEST);
    let spath = dir.join(SIGNATURE);
    let mbytes = read_limited(&mpath, MAX_MANIFEST_BYTES)?;
    let sbytes = read_limited(&spath, MAX_SIGNATURE_BYTES)?;
    let stext = String::from_utf8_lossy(&sbytes).into_owned();
    let sig = keys::parse_signature(&stext, &spath).map_err(|source| VerifyError::Signature {
        path: spath.clone(),
        source,
    })?;
    keys::verify(key, &mbytes, &sig).map_err(|source| VerifyError::Signature {
        path: spath.clone(),
        source,
    })?;
    let manifest: Manifest =
        serde_json::from_slice(&mbytes).map_err(|e| VerifyError::Manifest {
            path: mpath.clone(),
            detail: e.to_string(),
        })?;
    for a in &manifest.artifacts {
        check_artifact_name(&mpath, &a.name)?;
    }
    check_entries(dir, &manifest)?;
    let mut artifacts = std::collections::BTreeMap::new();
    for a in &manifest.artifacts {
        let path = dir.join(&a.name);
        let (file, size) = open_regular(&path)?;
        if size != a.size {
            return Err(VerifyError::Size {
                path,
                expected: a.size,
                actual: size,
            });
        }
        let data = read_exactly(file, &path, size)?;
        let actual = sha256_hex(&data);
        if actual != a.sha256 {
            return Err(VerifyError::Digest {
                path,
                expected: a.sha256.clone(),
                actual,
            });
        }
        artifacts.insert(a.name.clone(), data);
    }
    // Deep check: the initramfs parses and its file list is the one that was signed.
    let ipath = dir.join(INITRAMFS);
    let data = artifacts
        .get(INITRAMFS)
        .ok_or_else(|| VerifyError::Manifest {
            path: mpath.clone(),
            detail: format!("lists no {INITRAMFS}"),
        })?;
    let entries = unpack_initramfs(&ipath, data)?;
    let (count, actual) = file_list_digest(&entries);
    if actual != manifest.files_sha256 || count != manifest.files_count {
        return Err(VerifyError::FileList {
            path: ipath,
            expected: manifest.files_sha256.clone(),
            actual,
        });
    }
    Ok(Verified {
        manifest,
        manifest_bytes: mbytes,
        signature: sbytes,
        artifacts,
        initramfs: entries,
    })
}

/// The folder holds only regular files, each of them the manifest, its signature or a listed
/// artifact.
fn check_entries(dir: &Path, manifest: &Manifest) -> Result<(), VerifyError> {
    let read_error = |source| VerifyError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut entries = Vec::new();
    for e in std::fs::read_dir(dir).map_err(read_error)? {
        let e = e.map_err(read_error)?;
        // The entry itself, not what a symlink points to.
        let t = e.file_type().map_err(|source| VerifyError::Read {
            path: e.path(),
            source,
        })?;
        entries.push((e.file_name(), t));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, t) in entries {
        let path = dir.join(&name);
        if !t.is_file() {
            return Err(VerifyError::NotRegular {
                path,
                kind: imrs_config::fsutil::kind_name(t),
            });
        }
        let listed = name.to_str().is_some_and(|n| {
            n == MANIFEST || n == SIGNATURE || manifest.artifacts.iter().any(|a| a.name == n)
        });
        if !listed {
            return Err(VerifyError::Unexpected { path });
        }
    }
    Ok(())
}

/// Reads an image folder's manifest without checking its signature (`inspect`).
pub fn read_manifest(dir: &Path) -> Result<Manifest, VerifyError> {
    check_folder(dir)?;
    let mpath = dir.join(MANIFEST);
    let bytes = read_limited(&mpath, MAX_MANIFEST_BYTES)?;
    serde_json::from_slice(&bytes).map_err(|e| VerifyError::NotManifest {
        path: mpath,
        detail: e.to_string(),
    })
}

/// Reads (a regular file of at most [`MAX_INITRAMFS_BYTES`]), decompresses and parses the
/// initramfs.
pub fn read_initramfs(path: &Path) -> Result<Vec<cpio::Entry>, VerifyError> {
    let data = read_limited(path, MAX_INITRAMFS_BYTES)?;
    unpack_initramfs(path, &data)
}

/// Decompresses (to at most [`MAX_INITRAMFS_UNPACKED`] bytes) and parses initramfs bytes read
/// from `path`.
pub(crate) fn unpack_initramfs(path: &Path, data: &[u8]) -> Result<Vec<cpio::Entry>, VerifyError> {
    let archive = |detail: String| VerifyError::Archive {
        path: path.to_path_buf(),
        detail,
    };
    let decoder =
        zstd::stream::read::Decoder::with_buffer(data).map_err(|e| archive(e.to_string()))?;
    let mut raw = Vec::new();
    decoder
        .take(MAX_INITRAMFS_UNPACKED + 1)
        .read_to_end(&mut raw)
        .map_err(|e| archive(e.to_string()))?;
    if raw.len() as u64 > MAX_INITRAMFS_UNPACKED {
        return Err(archive(format!(
            "unpacks to more than {MAX_INITRAMFS_UNPACKED} bytes"
        )));
    }
    cpio::read(&raw).map_err(|e| archive(e.to_string()))
}
