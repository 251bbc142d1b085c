//! The accepted zone on disk: one folder per accepted zone (a *generation*: the zone text and
//! its [`AcceptedRecord`]) and a `current` symbolic link naming the generation being served.
//!
//! ```text
//! <dir>/current -> gen-2026073102-1785542400000000000
//! <dir>/gen-2026073102-1785542400000000000/root.zone
//! <dir>/gen-2026073102-1785542400000000000/record.json
//! ```
//!
//! - **One atomic step** ([`ZoneStore::commit`]): the generation is written in a temporary
//!   folder (both files fsynced, then the folder), renamed into place, and `current` is switched
//!   by renaming a new link over it (then the folder is fsynced). A power cut at any point leaves
//!   either the previous generation or the new one current, never a zone beside another zone's
//!   record. Left-over temporaries are removed by the next commit; the previous generation is
//!   kept (a daemon may still be reading it), older ones are removed.
//! - **Evidence, not truth** ([`ZoneStore::load_verified`]): the disk holding the store is
//!   writable by whoever holds the box, so a stored zone is verified in full again (ZONEMD +
//!   DNSSEC against the caller's anchors, at the caller's trusted time) before anything serves
//!   it, and the record is only a hint: it must describe the zone just verified (serial and
//!   ZONEMD digest) and its refresh time may not lie in the future, or the caller is told not to
//!   serve on its word.
//!
//! Daemons load [`ZoneStore::zone_path`] (`<dir>/current/root.zone`), a path that stays the same
//! across commits.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use jiff::Timestamp;

use crate::accept::{AcceptError, AcceptedRecord};
use crate::anchors::TrustAnchors;
use crate::zone::Zone;

/// The link naming the current generation.
pub const CURRENT: &str = "current";
/// The zone text inside a generation.
pub const ZONE_FILE: &str = "root.zone";
/// The record inside a generation.
pub const RECORD_FILE: &str = "record.json";
/// Prefix of generation folders.
const GENERATION_PREFIX: &str = "gen-";
/// Prefix of temporaries (folders being written, links being switched).
const TEMP_PREFIX: &str = ".tmp-";
/// The largest stored zone read back (the root zone is about 2.2 MB).
pub const MAX_ZONE_BYTES: u64 = 64 * 1024 * 1024;
/// How far in the future a record's refresh time may lie (clock steps between boots).
pub const REFRESH_SKEW: jiff::SignedDuration = jiff::SignedDuration::from_secs(300);

/// The store could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file system operation failed.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.to_owned();
    move |source| StoreError::Io { what, path, source }
}

/// Where a commit has got to (for progress and for crash tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitStep {
    /// The zone text is written and synced in the temporary folder.
    ZoneWritten,
    /// The record is written and synced; the temporary folder is synced.
    RecordWritten,
    /// The temporary folder is renamed to its generation name.
    GenerationNamed,
    /// `current` names the new generation (the commit has happened).
    Switched,
}

/// Why a stored zone cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum StoredRefusal {
    /// The zone file is unreadable, too large or does not parse.
    #[error("stored zone {path} cannot be loaded: {reason}")]
    Unloadable {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The zone does not verify now.
    #[error("stored zone serial {serial} does not verify")]
    NotVerified {
        /// Its serial.
        serial: u32,
        /// Why.
        #[source]
        source: crate::verify::VerifyError,
    },
}

/// Why a stored zone's record does not vouch for it.
#[derive(Debug, thiserror::Error)]
pub enum HintProblem {
    /// The record is missing, unreadable or malformed.
    #[error("no usable record")]
    Unusable(#[source] AcceptError),
    /// The record describes another serial.
    #[error("the record says serial {record}, the zone is serial {zone}")]
    Serial {
        /// In the record.
        record: u32,
        /// In the zone.
        zone: u32,
    },
    /// The record describes another ZONEMD digest.
    #[error("the record's ZONEMD digest does not match the zone's")]
    Digest,
    /// The refresh time does not parse.
    #[error("the record's refresh time {0:?} is not a time")]
    RefreshTime(String),
    /// The refresh time lies in the future.
    #[error("the record's refresh time {refreshed_at} is after now ({now})")]
    Future {
        /// In the record.
        refreshed_at: String,
        /// The trusted time now.
        now: Timestamp,
    },
}

/// A stored zone verified again.
#[derive(Debug)]
pub struct VerifiedStored {
    /// The zone's record as of this verification (`verified_at` is now). With a matching hint,
    /// `refreshed_at` and `source` come from it; without, `refreshed_at` is the verification
    /// time and the zone must not be served on the record's word (see [`Self::hint`]).
    pub record: AcceptedRecord,
    /// Whether the record on disk vouches for the zone.
    pub hint: Result<(), HintProblem>,
}

/// What the store holds.
#[derive(Debug)]
pub enum Stored {
    /// No zone has been committed.
    Empty,
    /// A zone is stored but cannot be served.
    Refused(StoredRefusal),
    /// The stored zone verified.
    Verified(Box<VerifiedStored>),
}

/// The accepted-zone store in a folder.
#[derive(Clone, Debug)]
pub struct ZoneStore {
    /// The store's folder.
    pub dir: PathBuf,
}

impl ZoneStore {
    /// A store in `dir` (created on the first commit).
    pub fn new(dir: &Path) -> Self {
        ZoneStore {
            dir: dir.to_owned(),
        }
    }

    /// The zone file the daemons load: `<dir>/current/root.zone`.
    pub fn zone_path(&self) -> PathBuf {
        self.dir.join(CURRENT).join(ZONE_FILE)
    }

    /// The current record: `<dir>/current/record.json`.
    pub fn record_path(&self) -> PathBuf {
        self.dir.join(CURRENT).join(RECORD_FILE)
    }

    /// The generation `current` names, if any.
    pub fn current_generation(&self) -> Option<PathBuf> {
        let target = fs::read_link(self.dir.join(CURRENT)).ok()?;
        Some(self.dir.join(target))
    }

    /// The current record as written (a hint: see the module docs).
    pub fn hint(&self) -> Result<Option<AcceptedRecord>, AcceptError> {
        if self.current_generation().is_none() {
            return Ok(None);
        }
        AcceptedRecord::load(&self.record_path()).map(Some)
    }

    /// Commits `zone` and its `record` as the current generation in one atomic step.
    pub fn commit(&self, zone: &Zone, record: &AcceptedRecord) -> Result<PathBuf, StoreError> {
        self.commit_observed(zone, record, |_| {})
    }

    /// [`Self::commit`], telling `observe` each step as it completes.
    pub fn commit_observed(
        &self,
        zone: &Zone,
        record: &AcceptedRecord,
        mut observe: impl FnMut(CommitStep),
    ) -> Result<PathBuf, StoreError> {
        fs::create_dir_all(&self.dir).map_err(io_err("cannot create", &self.dir))?;
        self.remove_temporaries();
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let tmp = self
            .dir
            .join(format!("{TEMP_PREFIX}{}-{stamp}", std::process::id()));
        let written = (|| {
            fs::create_dir(&tmp).map_err(io_err("cannot create", &tmp))?;
            let zone_file = tmp.join(ZONE_FILE);
            write_synced(&zone_file, |w| zone.write_text(w))
                .map_err(io_err("cannot write", &zone_file))?;
            observe(CommitStep::ZoneWritten);
            let record_file = tmp.join(RECORD_FILE);
            write_synced(&record_file, |w| {
                serde_json::to_writer_pretty(&mut *w, record).map_err(io::Error::other)?;
                w.write_all(b"\n")
            })
            .map_err(io_err("cannot write", &record_file))?;
            sync_dir(&tmp)?;
            observe(CommitStep::RecordWritten);
            Ok(())
        })();
        if let Err(e) = written {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        let generation = format!("{GENERATION_PREFIX}{}-{stamp}", record.serial);
        let gen_path = self.dir.join(&generation);
        if let Err(e) = fs::rename(&tmp, &gen_path) {
            let _ = fs::remove_dir_all(&tmp);
            return Err(io_err("cannot rename into", &gen_path)(e));
        }
        sync_dir(&self.dir)?;
        observe(CommitStep::GenerationNamed);
        let previous = fs::read_link(self.dir.join(CURRENT)).ok();
        let link = self
            .dir
            .join(format!("{TEMP_PREFIX}link-{}-{stamp}", std::process::id()));
        symlink(&generation, &link).map_err(io_err("cannot create link", &link))?;
        let current = self.dir.join(CURRENT);
        if let Err(e) = fs::rename(&link, &current) {
            let _ = fs::remove_file(&link);
            return Err(io_err("cannot switch", &current)(e));
        }
        sync_dir(&self.dir)?;
        observe(CommitStep::Switched);
        self.remove_old_generations(&generation, previous.as_deref());
        Ok(gen_path)
    }

    /// Loads the current generation's zone, verifies it in full against `anchors` at `at`, and
    /// checks the record against it (see the module docs).
    pub fn load_verified(&self, anchors: &TrustAnchors, at: Timestamp) -> Stored {
        if self.current_generation().is_none() {
            return Stored::Empty;
        }
        let path = self.zone_path();
        let zone = match load_bounded(&path) {
            Ok(z) => z,
            Err(reason) => return Stored::Refused(StoredRefusal::Unloadable { path, reason }),
        };
        let verification = crate::verify(&zone, anchors, at);
        let source = self.dir.display().to_string();
        let mut record = match crate::accept::decide(
            crate::accept::Candidate {
                zone: &zone,
                verification: &verification,
                source: &source,
            },
            None,
            false,
        ) {
            Ok(r) => r,
            Err(AcceptError::NotVerified { serial, source }) => {
                return Stored::Refused(StoredRefusal::NotVerified { serial, source });
            }
            Err(other) => {
                return Stored::Refused(StoredRefusal::Unloadable {
                    path,
                    reason: crate::error_chain(&other),
                });
            }
        };
        let hint = self
            .hint()
            .map_err(HintProblem::Unusable)
            .and_then(|h| h.ok_or(HintProblem::Unusable(missing_record(&self.record_path()))))
            .and_then(|h| check_hint(&h, &record, at).map(|()| h));
        let hint = match hint {
            Ok(h) => {
                record.refreshed_at = h.refreshed_at;
                record.source = h.source;
                Ok(())
            }
            Err(e) => Err(e),
        };
        Stored::Verified(Box::new(VerifiedStored { record, hint }))
    }

    /// Removes temporaries left by an interrupted commit.
    fn remove_temporaries(&self) {
        for (name, path) in self.entries() {
            if name.starts_with(TEMP_PREFIX) {
                let _ = fs::remove_dir_all(&path).or_else(|_| fs::remove_file(&path));
            }
        }
    }

    /// Removes every generation but `keep` and `previous`.
    fn remove_old_generations(&self, keep: &str, previous: Option<&Path>) {
        let previous = previous.and_then(|p| p.to_str());
        for (name, path) in self.entries() {
            if name.starts_with(GENERATION_PREFIX)
                && name != keep
                && Some(name.as_str()) != previous
            {
                let _ = fs::remove_dir_all(&path);
            }
        }
    }

    fn entries(&self) -> Vec<(String, PathBuf)> {
        fs::read_dir(&self.dir)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn missing_record(path: &Path) -> AcceptError {
    AcceptError::ReadRecord {
        path: path.to_owned(),
        source: io::Error::from(io::ErrorKind::NotFound),
    }
}

/// The hint must describe the zone just verified, and its refresh time must not lie ahead.
fn check_hint(
    hint: &AcceptedRecord,
    verified: &AcceptedRecord,
    now: Timestamp,
) -> Result<(), HintProblem> {
    if hint.serial != verified.serial {
        return Err(HintProblem::Serial {
            record: hint.serial,
            zone: verified.serial,
        });
    }
    if hint.zonemd_digest != verified.zonemd_digest
        || hint.zonemd_scheme != verified.zonemd_scheme
        || hint.zonemd_hash_algorithm != verified.zonemd_hash_algorithm
    {
        return Err(HintProblem::Digest);
    }
    let refreshed: Timestamp = hint
        .refreshed_at
        .parse()
        .map_err(|_| HintProblem::RefreshTime(hint.refreshed_at.clone()))?;
    if refreshed > now + REFRESH_SKEW {
        return Err(HintProblem::Future {
            refreshed_at: hint.refreshed_at.clone(),
            now,
        });
    }
    Ok(())
}

/// Loads a zone file of at most [`MAX_ZONE_BYTES`] that is a regular file.
fn load_bounded(path: &Path) -> Result<Zone, String> {
    let meta = fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > MAX_ZONE_BYTES {
        return Err(format!(
            "{} bytes, more than the {MAX_ZONE_BYTES} allowed",
            meta.len()
        ));
    }
    Zone::load(path).map_err(|e| crate::error_chain(&e))
}

fn write_synced(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<&File>) -> io::Result<()>,
) -> io::Result<()> {
    let file = File::create(path)?;
    {
        let mut w = BufWriter::with_capacity(1 << 20, &file);
        fill(&mut w)?;
        w.flush()?;
    }
    file.sync_all()
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("cannot sync", dir))
}
