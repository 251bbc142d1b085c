//! Acceptance policy: which verified zone replaces the one being served, and
//! writing it so that a daemon never sees a half-written file.
//!
//! Owns RFC 1982 serial comparison, the refusal of a serial that is not
//! newer than the current one (unless forced), and the atomic write (temp
//! file in the same directory, fsync, rename, fsync of the directory) of the
//! zone text plus a JSON record of what was verified.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::verify::{Verification, VerifyError};
use crate::zone::Zone;

/// Version of the JSON record format.
pub const RECORD_VERSION: u32 = 1;

/// RFC 1982 comparison: whether serial `a` is newer than `b`. Undefined
/// comparisons (distance exactly 2^31) are not newer.
pub fn serial_is_newer(a: u32, b: u32) -> bool {
    a != b && (a.wrapping_sub(b) as i32) > 0
}

/// What was verified about an accepted zone, written next to it as JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcceptedRecord {
    /// Format version ([`RECORD_VERSION`]).
    pub version: u32,
    /// SOA serial.
    pub serial: u32,
    /// Records in the zone.
    pub records: usize,
    /// ZONEMD scheme of the digest that matched.
    pub zonemd_scheme: u8,
    /// ZONEMD hash algorithm of the digest that matched.
    pub zonemd_hash_algorithm: u8,
    /// The ZONEMD digest, hex.
    pub zonemd_digest: String,
    /// Key tags of the anchored KSKs that signed the DNSKEY RRset.
    pub anchors_used: Vec<u16>,
    /// RRSIGs verified.
    pub signatures_verified: usize,
    /// The time the verification was done for (RFC 3339).
    pub verified_at: String,
    /// Where the zone came from (server address or file path).
    pub source: String,
    /// Whether the serial check was overridden.
    pub forced: bool,
}

impl AcceptedRecord {
    /// Reads a record written by [`accept`].
    pub fn load(path: &Path) -> Result<Self, AcceptError> {
        let text = fs::read(path).map_err(|source| AcceptError::ReadRecord {
            path: path.to_owned(),
            source,
        })?;
        let rec: AcceptedRecord =
            serde_json::from_slice(&text).map_err(|source| AcceptError::ParseRecord {
                path: path.to_owned(),
                source,
            })?;
        if rec.version != RECORD_VERSION {
            return Err(AcceptError::RecordVersion {
                path: path.to_owned(),
                version: rec.version,
            });
        }
        Ok(rec)
    }
}

/// Where accepted zones go.
#[derive(Clone, Debug)]
pub struct ZoneStore {
    /// The zone file the daemons load.
    pub zone_path: PathBuf,
    /// The JSON record beside it.
    pub record_path: PathBuf,
}

impl ZoneStore {
    /// A store writing `zone_path` and `zone_path` + `.verified.json`.
    pub fn new(zone_path: &Path) -> Self {
        let mut record = zone_path.as_os_str().to_owned();
        record.push(".verified.json");
        ZoneStore {
            zone_path: zone_path.to_owned(),
            record_path: PathBuf::from(record),
        }
    }

    /// The record of the zone currently stored, if any.
    pub fn current(&self) -> Result<Option<AcceptedRecord>, AcceptError> {
        if !self.record_path.exists() {
            return Ok(None);
        }
        AcceptedRecord::load(&self.record_path).map(Some)
    }
}

/// A verified candidate zone.
#[derive(Clone, Copy, Debug)]
pub struct Candidate<'a> {
    /// The zone.
    pub zone: &'a Zone,
    /// Its verification.
    pub verification: &'a Verification,
    /// Where it came from.
    pub source: &'a str,
}

/// Why a candidate was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The candidate is not fully verified.
    #[error("zone serial {serial} is not verified")]
    NotVerified {
        /// Candidate serial.
        serial: u32,
        /// Why.
        #[source]
        source: VerifyError,
    },
    /// The candidate's serial is not newer than the current one.
    #[error("zone serial {candidate} is not newer than the current serial {current}")]
    NotNewer {
        /// Candidate serial.
        candidate: u32,
        /// Current serial.
        current: u32,
    },
    /// Writing a file failed (nothing was replaced).
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Reading the current record failed.
    #[error("cannot read {path}")]
    ReadRecord {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The current record does not parse.
    #[error("malformed verification record {path}")]
    ParseRecord {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The current record has an unknown format version.
    #[error("verification record {path} has unknown version {version}")]
    RecordVersion {
        /// The file.
        path: PathBuf,
        /// Its version.
        version: u32,
    },
}

/// Accepts `candidate` if it is verified and newer than `current` (or
/// `force`), writing the zone and its record atomically into `store`.
pub fn accept(
    candidate: Candidate<'_>,
    current: Option<&AcceptedRecord>,
    force: bool,
    store: &ZoneStore,
) -> Result<AcceptedRecord, AcceptError> {
    let serial = candidate.verification.serial;
    let proof = candidate
        .verification
        .proof()
        .map_err(|source| AcceptError::NotVerified { serial, source })?;
    if let Some(cur) = current
        && !force
        && !serial_is_newer(serial, cur.serial)
    {
        return Err(AcceptError::NotNewer {
            candidate: serial,
            current: cur.serial,
        });
    }
    let record = AcceptedRecord {
        version: RECORD_VERSION,
        serial: proof.serial,
        records: proof.records,
        zonemd_scheme: proof.zonemd.scheme,
        zonemd_hash_algorithm: proof.zonemd.hash_algorithm,
        zonemd_digest: proof.zonemd.digest,
        anchors_used: proof.anchors_used,
        signatures_verified: proof.signatures_verified,
        verified_at: proof.verified_at,
        source: candidate.source.to_owned(),
        forced: force && current.is_some_and(|c| !serial_is_newer(serial, c.serial)),
    };
    write_atomically(&store.zone_path, |w| candidate.zone.write_text(w))?;
    write_atomically(&store.record_path, |w| {
        serde_json::to_writer_pretty(&mut *w, &record).map_err(io::Error::other)?;
        w.write_all(b"\n")
    })?;
    Ok(record)
}

/// Writes `path` atomically: a temp file in the same directory, fsync,
/// rename over `path`, fsync of the directory. On failure the temp file is
/// removed and `path` is untouched.
pub fn write_atomically(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<&File>) -> io::Result<()>,
) -> Result<(), AcceptError> {
    let err = |source| AcceptError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| err(io::Error::new(io::ErrorKind::InvalidInput, "no file name")))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let file = File::create(&tmp)?;
        {
            let mut w = BufWriter::with_capacity(1 << 20, &file);
            fill(&mut w)?;
            w.flush()?;
        }
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        File::open(&dir)?.sync_all()
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(err(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1982_serials() {
        let cases: &[(u32, u32, bool)] = &[
            (2026073102, 2026073101, true),
            (2026073101, 2026073102, false),
            (5, 5, false),
            (0, u32::MAX, true), // wrapped
            (u32::MAX, 0, false),
            (1 << 31, 0, false), // undefined distance: not newer
            (0, 1 << 31, false),
            ((1 << 31) - 1, 0, true),
        ];
        for &(a, b, want) in cases {
            assert_eq!(serial_is_newer(a, b), want, "{a} vs {b}");
        }
    }

    #[test]
    fn atomic_write_leaves_old_file_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.zone");
        write_atomically(&path, |w| w.write_all(b"old\n")).unwrap();
        let err = write_atomically(&path, |w| {
            w.write_all(b"half")?;
            Err(io::Error::other("interrupted"))
        })
        .unwrap_err();
        assert!(matches!(err, AcceptError::Write { .. }));
        assert_eq!(fs::read(&path).unwrap(), b"old\n");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from("root.zone")]);
    }
}
