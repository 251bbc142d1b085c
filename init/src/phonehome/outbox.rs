//! The outbox: signed reports waiting for the receiver, one file per report in
//! `<state>/outbox/`, written atomically (temp file, fsync, rename, fsync folder) and removed only
//! once the receiver has acknowledged it. It lives in the persistent state folder, so a report
//! made before a power cut is sent after it.
//!
//! File names are `<created nanoseconds, 20 digits>-<report id>.json`, so a listing sorted by
//! name is the order the reports were made. A file that is not a signed-report envelope is
//! renamed to `*.corrupt` and left for a person; it is never sent and never blocks the others.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use imrs_config::report::SignedReport;

use super::identity::sync_dir;

/// Outbox folder name inside the state folder.
pub const OUTBOX_DIR: &str = "outbox";
/// The largest envelope read back (a report is a few KiB; the receiver takes 1 MiB): anything
/// larger was not written by this init and is set aside as corrupt.
pub const MAX_ENVELOPE_BYTES: u64 = 1024 * 1024;

/// The outbox could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// Creating or listing the folder failed.
    #[error("{dir}: cannot use the outbox folder")]
    Dir {
        /// The folder.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Writing report `id` failed.
    #[error("{path}: cannot write report {id}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The report id.
        id: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Removing a delivered report failed.
    #[error("{path}: cannot remove delivered report {id}")]
    Remove {
        /// The file.
        path: PathBuf,
        /// The report id.
        id: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The report's id is not a safe file name (it did not come from `ReportId`).
    #[error("report id {id:?} is not usable as a file name")]
    BadId {
        /// The id.
        id: String,
    },
}

/// A report waiting in the outbox.
#[derive(Debug, Clone)]
pub struct Pending {
    /// Report id.
    pub id: String,
    /// Its file.
    pub path: PathBuf,
    /// The envelope as stored (sent as is).
    pub body: Vec<u8>,
}

/// The outbox folder.
#[derive(Debug, Clone)]
pub struct Outbox {
    dir: PathBuf,
}

fn id_of(name: &str) -> Option<&str> {
    let stem = name.strip_suffix(".json")?;
    let (seq, id) = stem.split_once('-')?;
    (seq.len() == 20 && seq.bytes().all(|b| b.is_ascii_digit()) && safe_id(id)).then_some(id)
}

fn safe_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

impl Outbox {
    /// Opens `<state_dir>/outbox`, creating it (mode 0700) and removing temp files a power cut
    /// may have left.
    pub fn open(state_dir: &Path) -> Result<Outbox, OutboxError> {
        let dir = state_dir.join(OUTBOX_DIR);
        let err = |source| OutboxError::Dir {
            dir: dir.clone(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(err)?;
        for entry in std::fs::read_dir(&dir).map_err(err)? {
            let entry = entry.map_err(err)?;
            if entry.file_name().to_string_lossy().ends_with(".tmp") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(Outbox { dir })
    }

    /// Stores a signed report under its id; storing the same id again does nothing.
    pub fn put(&self, id: &str, signed: &SignedReport) -> Result<PathBuf, OutboxError> {
        if !safe_id(id) {
            return Err(OutboxError::BadId { id: id.to_string() });
        }
        if let Some(p) = self.find(id)? {
            return Ok(p);
        }
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = self.dir.join(format!("{nanos:020}-{id}.json"));
        let err = |p: &Path| {
            let p = p.to_path_buf();
            let id = id.to_string();
            move |source| OutboxError::Write {
                path: p,
                id,
                source,
            }
        };
        imrs_config::fsutil::write_atomic(&path, &signed.to_json(), 0o600).map_err(err(&path))?;
        Ok(path)
    }

    /// Whether report `id` is waiting (an unreadable outbox counts as yes: it may be).
    pub fn contains(&self, id: &str) -> bool {
        self.find(id).map_or(true, |p| p.is_some())
    }

    fn find(&self, id: &str) -> Result<Option<PathBuf>, OutboxError> {
        Ok(self
            .names()?
            .into_iter()
            .find(|(_, i)| i == id)
            .map(|(p, _)| p))
    }

    /// Report files (path, id) sorted oldest first.
    fn names(&self) -> Result<Vec<(PathBuf, String)>, OutboxError> {
        let err = |source| OutboxError::Dir {
            dir: self.dir.clone(),
            source,
        };
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(err)? {
            let entry = entry.map_err(err)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(id) = id_of(&name) {
                out.push((entry.path(), id.to_string()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Reports waiting, oldest first. Files that are not envelopes are renamed `*.corrupt` and
    /// returned in the second list (their paths) for the caller to log.
    pub fn pending(&self) -> Result<(Vec<Pending>, Vec<PathBuf>), OutboxError> {
        let mut ok = Vec::new();
        let mut corrupt = Vec::new();
        for (path, id) in self.names()? {
            let body = match imrs_config::fsutil::read_limited(&path, MAX_ENVELOPE_BYTES) {
                Ok(b) => Some(b),
                // Removed meanwhile (delivered by another handle): nothing to do.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                // Too large, or not a regular file: not a report this init wrote.
                Err(e) if e.kind() != std::io::ErrorKind::PermissionDenied => None,
                Err(source) => return Err(OutboxError::Dir { dir: path, source }),
            };
            match body.filter(|b| SignedReport::from_json(b).is_ok()) {
                Some(body) => ok.push(Pending { id, path, body }),
                None => {
                    let mut aside = path.clone().into_os_string();
                    aside.push(".corrupt");
                    let aside = PathBuf::from(aside);
                    let _ = std::fs::rename(&path, &aside);
                    corrupt.push(aside);
                }
            }
        }
        Ok((ok, corrupt))
    }

    /// Number of reports waiting.
    pub fn len(&self) -> Result<usize, OutboxError> {
        Ok(self.names()?.len())
    }

    /// No report is waiting.
    pub fn is_empty(&self) -> Result<bool, OutboxError> {
        Ok(self.names()?.is_empty())
    }

    /// Removes a delivered report.
    pub fn remove(&self, p: &Pending) -> Result<(), OutboxError> {
        let err = |source| OutboxError::Remove {
            path: p.path.clone(),
            id: p.id.clone(),
            source,
        };
        match std::fs::remove_file(&p.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(err(e)),
        }
        sync_dir(&self.dir).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imrs_config::keys;

    fn signed(text: &str) -> SignedReport {
        let k = keys::generate().unwrap();
        SignedReport {
            report: text.into(),
            signature: keys::sign_hex(&k, text.as_bytes()).trim().into(),
            public_key: keys::public_pem(&k.verifying_key()),
        }
    }

    #[test]
    fn put_list_remove_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let ob = Outbox::open(dir.path()).unwrap();
        let a = "a".repeat(32);
        let b = "b".repeat(32);
        ob.put(&b, &signed("first")).unwrap();
        ob.put(&a, &signed("second")).unwrap();
        ob.put(&b, &signed("again")).unwrap(); // same id: kept once
        let ob = Outbox::open(dir.path()).unwrap(); // "reboot"
        let (p, corrupt) = ob.pending().unwrap();
        assert!(corrupt.is_empty());
        let ids: Vec<_> = p.iter().map(|x| x.id.clone()).collect();
        assert_eq!(
            ids,
            vec![b.clone(), a.clone()],
            "creation order, not id order"
        );
        let first = SignedReport::from_json(&p[0].body).unwrap();
        assert_eq!(first.report, "first");
        ob.remove(&p[0]).unwrap();
        ob.remove(&p[0]).unwrap(); // twice is fine
        assert_eq!(ob.len().unwrap(), 1);
        assert!(matches!(
            ob.put("../x", &signed("x")),
            Err(OutboxError::BadId { .. })
        ));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// Whatever an outbox file holds, reading the outbox never panics: the envelope is
        /// pending, or set aside as corrupt.
        #[test]
        fn damaged_envelopes_never_panic(
            bytes in crate::fuzzing::damaged(signed("report é").to_json())
        ) {
            let dir = tempfile::tempdir().unwrap();
            let ob = Outbox::open(dir.path()).unwrap();
            let name = ob.dir.join(format!("{:020}-{}.json", 1, "e".repeat(32)));
            std::fs::write(&name, &bytes).unwrap();
            let (p, corrupt) = ob.pending().unwrap();
            proptest::prop_assert_eq!(p.len() + corrupt.len(), 1);
        }
    }

    #[test]
    fn oversized_and_special_files_are_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let ob = Outbox::open(dir.path()).unwrap();
        let big = ob.dir.join(format!("{:020}-{}.json", 1, "f".repeat(32)));
        std::fs::write(&big, vec![b' '; MAX_ENVELOPE_BYTES as usize + 1]).unwrap();
        let (p, corrupt) = ob.pending().unwrap();
        assert!(p.is_empty() && corrupt.len() == 1, "{corrupt:?}");
    }

    #[test]
    fn corrupt_files_are_set_aside_and_temp_files_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let ob = Outbox::open(dir.path()).unwrap();
        let good = "c".repeat(32);
        ob.put(&good, &signed("ok")).unwrap();
        let bad = ob.dir.join(format!("{:020}-{}.json", 1, "d".repeat(32)));
        std::fs::write(&bad, "{not json").unwrap();
        std::fs::write(ob.dir.join(".x.1.tmp"), "half").unwrap();
        let ob = Outbox::open(dir.path()).unwrap();
        assert!(!ob.dir.join(".x.1.tmp").exists());
        let (p, corrupt) = ob.pending().unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].id, good);
        assert_eq!(corrupt.len(), 1);
        assert!(corrupt[0].to_string_lossy().ends_with(".json.corrupt"));
        assert!(corrupt[0].exists());
    }
}
