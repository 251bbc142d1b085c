//! Enrolled devices: a folder of device public keys (SPKI PEM, `*.pem` or `*.pub`, one per
//! file, as written at flashing time). The receiver accepts reports only from these keys unless
//! it was started with open enrolment ([`EnrolmentMode::Open`]), which it must be told
//! explicitly: there is no default. (The flash inventory of the disk work is meant to become
//! the source of this folder.)
//!
//! The folder is read strictly at start (a file that is not a key stops the receiver, naming the
//! file) and read again whenever its modification time changes, so enrolling a device is
//! dropping its key into the folder; a bad file met on a re-read is skipped with a warning.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use ed25519_dalek::VerifyingKey;
use imrs_config::keys;

/// Which device keys the receiver accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnrolmentMode {
    /// Only the keys in this folder (`--enrolled DIR`); others get `403 unknown-device`.
    Folder(PathBuf),
    /// Any correctly signed report (`--open-enrolment`, for labs and tests): its device is
    /// stored as not enrolled, and a key claiming a serial another key claimed first is stored
    /// flagged.
    Open,
}

/// The enrolment folder could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    /// Listing the folder failed.
    #[error("{dir}: cannot read the enrolment folder")]
    ReadDir {
        /// The folder.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A key file is unreadable or not an Ed25519 public key.
    #[error("enrolled device key unusable")]
    Key {
        /// Why (names the file).
        #[source]
        source: keys::KeyError,
    },
}

/// The set of enrolled device keys, refreshed from its folder.
#[derive(Debug)]
pub struct Enrolment {
    dir: PathBuf,
    cache: Mutex<Cached>,
}

#[derive(Debug)]
struct Cached {
    mtime: Option<SystemTime>,
    keys: HashSet<[u8; 32]>,
}

fn dir_mtime(dir: &Path) -> Option<SystemTime> {
    std::fs::metadata(dir).and_then(|m| m.modified()).ok()
}

/// Reads every key in `dir`; `strict` turns a bad file into an error, else it is reported to
/// `warn` and skipped.
fn read_keys(
    dir: &Path,
    strict: bool,
    warn: &mut dyn FnMut(String),
) -> Result<HashSet<[u8; 32]>, EnrolError> {
    let entries = std::fs::read_dir(dir).map_err(|source| EnrolError::ReadDir {
        dir: dir.to_path_buf(),
        source,
    })?;
    let mut out = HashSet::new();
    for entry in entries {
        let entry = entry.map_err(|source| EnrolError::ReadDir {
            dir: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        let is_key = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("pem" | "pub")
        );
        if !is_key || !path.is_file() {
            continue;
        }
        match keys::read_public(&path) {
            Ok(k) => {
                out.insert(k.to_bytes());
            }
            Err(source) if strict => return Err(EnrolError::Key { source }),
            Err(e) => warn(format!("skipping enrolled key: {e}")),
        }
    }
    Ok(out)
}

impl Enrolment {
    /// Reads the folder; fails on any unusable key file.
    pub fn load(dir: &Path) -> Result<Enrolment, EnrolError> {
        let mtime = dir_mtime(dir);
        let keys = read_keys(dir, true, &mut |_| {})?;
        Ok(Enrolment {
            dir: dir.to_path_buf(),
            cache: Mutex::new(Cached { mtime, keys }),
        })
    }

    /// Number of enrolled keys (as of the last read).
    pub fn len(&self) -> usize {
        self.cache.lock().map(|c| c.keys.len()).unwrap_or(0)
    }

    /// No key enrolled.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `key` is enrolled, re-reading the folder first if it changed.
    pub fn contains(&self, key: &VerifyingKey) -> bool {
        let Ok(mut cache) = self.cache.lock() else {
            return false;
        };
        let now = dir_mtime(&self.dir);
        if now != cache.mtime {
            let mut warn = |m: String| eprintln!("warning: {}: {m}", self.dir.display());
            match read_keys(&self.dir, false, &mut warn) {
                Ok(keys) => {
                    cache.keys = keys;
                    cache.mtime = now;
                }
                Err(e) => warn(e.to_string()),
            }
        }
        cache.keys.contains(&key.to_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_keys_strictly_then_follows_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let a = keys::generate().unwrap();
        let b = keys::generate().unwrap();
        keys::write_keypair(&a, &dir.path().join("a")).unwrap();
        // The secret half has no .pem/.pub extension: ignored.
        let e = Enrolment::load(dir.path()).unwrap();
        assert_eq!(e.len(), 1);
        assert!(e.contains(&a.verifying_key()));
        assert!(!e.contains(&b.verifying_key()));
        // Enrol b by dropping its key in; make sure the folder's mtime moves.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(
            dir.path().join("b.pem"),
            keys::public_pem(&b.verifying_key()),
        )
        .unwrap();
        assert!(e.contains(&b.verifying_key()));
        // A garbage file fails a fresh load, naming it.
        std::fs::write(dir.path().join("junk.pem"), "nope").unwrap();
        let err = Enrolment::load(dir.path()).unwrap_err();
        let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(chain.contains("junk.pem"), "{chain}");
        // ...but a running receiver keeps the good keys.
        assert!(e.contains(&a.verifying_key()));
        assert!(matches!(
            Enrolment::load(&dir.path().join("missing")),
            Err(EnrolError::ReadDir { .. })
        ));
    }
}
