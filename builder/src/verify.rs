//! `verify` and `inspect`: check an image folder against its signed manifest, and list what is in
//! it. Verification order: the signature over the exact manifest bytes first (nothing unsigned is
//! trusted), then every artifact's size and sha256, then the initramfs's structure and file list.

use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use imrs_config::image::Manifest;
use imrs_config::keys;

use crate::cache::sha256_file;
use crate::cpio;
use crate::image_dir::{INITRAMFS, MANIFEST, SIGNATURE, file_list_digest};

/// The first thing found wrong with an image folder.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// A file could not be read.
    #[error("{path}: cannot read")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
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

fn read(path: &Path) -> Result<Vec<u8>, VerifyError> {
    std::fs::read(path).map_err(|source| VerifyError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Verifies an image folder; returns the manifest when everything checks out.
pub fn verify(dir: &Path, key: &VerifyingKey) -> Result<Manifest, VerifyError> {
    let mpath = dir.join(MANIFEST);
    let spath = dir.join(SIGNATURE);
    let mbytes = read(&mpath)?;
    let stext = String::from_utf8_lossy(&read(&spath)?).into_owned();
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
        let path = dir.join(&a.name);
        let size = std::fs::metadata(&path)
            .map_err(|source| VerifyError::Read {
                path: path.clone(),
                source,
            })?
            .len();
        if size != a.size {
            return Err(VerifyError::Size {
                path,
                expected: a.size,
                actual: size,
            });
        }
        let actual = sha256_file(&path).map_err(|source| VerifyError::Read {
            path: path.clone(),
            source,
        })?;
        if actual != a.sha256 {
            return Err(VerifyError::Digest {
                path,
                expected: a.sha256.clone(),
                actual,
            });
        }
    }
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|source| VerifyError::Read {
            path: dir.to_path_buf(),
            source,
        })?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    for name in entries {
        let listed = name == MANIFEST
            || name == SIGNATURE
            || manifest.artifacts.iter().any(|a| a.name == name);
        if !listed {
            return Err(VerifyError::Unexpected {
                path: dir.join(name),
            });
        }
    }
    // Deep check: the initramfs parses and its file list is the one that was signed.
    let ipath = dir.join(INITRAMFS);
    let entries = read_initramfs(&ipath)?;
    let (count, actual) = file_list_digest(&entries);
    if actual != manifest.files_sha256 || count != manifest.files_count {
        return Err(VerifyError::FileList {
            path: ipath,
            expected: manifest.files_sha256.clone(),
            actual,
        });
    }
    Ok(manifest)
}

/// Decompresses and parses the initramfs.
pub fn read_initramfs(path: &Path) -> Result<Vec<cpio::Entry>, VerifyError> {
    let data = read(path)?;
    let raw = zstd::decode_all(&data[..]).map_err(|e| VerifyError::Archive {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    cpio::read(&raw).map_err(|e| VerifyError::Archive {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}
