//! Acceptance policy: which verified zone replaces the one being served, and what is recorded
//! about it.
//!
//! Owns RFC 1982 serial comparison, the refusal of a serial that is not newer than the current
//! one (unless forced), the [`AcceptedRecord`] written beside an accepted zone, and when a zone
//! stops being servable ([`AcceptedRecord::expires_at`]: the SOA expire after the last refresh,
//! and never after its earliest signature expires). Writing goes through [`crate::store`] (one
//! atomic step for the zone and its record) or, for a plain output file, [`write_atomically`].

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::store::{StoreError, ZoneStore};
use crate::verify::{Verification, VerifyError};
use crate::zone::Zone;

/// Version of the JSON record format. Version 2 added `refreshed_at` and
/// `signatures_valid_until`.
pub const RECORD_VERSION: u32 = 2;

/// The largest record file read (a record is well under 1 KiB).
pub const MAX_RECORD_BYTES: u64 = 64 * 1024;

/// RFC 1982 comparison: whether serial `a` is newer than `b`. Undefined
/// comparisons (distance exactly 2^31) are not newer.
pub fn serial_is_newer(a: u32, b: u32) -> bool {
    a != b && (a.wrapping_sub(b) as i32) > 0
}

/// What was verified about an accepted zone, written next to it as JSON.
///
/// On the appliance's disk this is a hint, never proof: every boot verifies the stored zone
/// again ([`crate::store::ZoneStore::load_verified`]) and compares it with the record.
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
    /// The last time a transfer server gave (or confirmed) this serial (RFC 3339): the SOA
    /// expire counts from here.
    pub refreshed_at: String,
    /// The earliest expiration among the zone's signatures (RFC 3339): after it the zone
    /// no longer verifies.
    pub signatures_valid_until: String,
    /// Where the zone came from (server address or file path).
    pub source: String,
    /// Whether the serial check was overridden.
    pub forced: bool,
}

impl AcceptedRecord {
    /// Reads a record (at most [`MAX_RECORD_BYTES`]).
    pub fn load(path: &Path) -> Result<Self, AcceptError> {
        let read = |source| AcceptError::ReadRecord {
            path: path.to_owned(),
            source,
        };
        let text = imrs_config::fsutil::read_limited(path, MAX_RECORD_BYTES).map_err(read)?;
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

    /// When this zone stops being servable: `expire` (the SOA expire, 604800 s for the root)
    /// after the last refresh, and never after its earliest signature expires. `None` when a
    /// time in the record does not parse.
    pub fn expires_at(&self, expire: Duration) -> Option<Timestamp> {
        let refreshed: Timestamp = self.refreshed_at.parse().ok()?;
        let signatures: Timestamp = self.signatures_valid_until.parse().ok()?;
        let soa = refreshed
            .checked_add(jiff::SignedDuration::try_from(expire).ok()?)
            .ok()?;
        Some(soa.min(signatures))
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
    /// Committing to the zone store failed (the previous zone stays current).
    #[error("cannot store the zone")]
    Store(#[source] StoreError),
    /// Reading a record failed.
    #[error("cannot read {path}")]
    ReadRecord {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A record does not parse.
    #[error("malformed verification record {path}")]
    ParseRecord {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A record has an unknown format version.
    #[error("verification record {path} has unknown version {version}")]
    RecordVersion {
        /// The file.
        path: PathBuf,
        /// Its version.
        version: u32,
    },
}

/// The acceptance decision without writing anything: `candidate` must be verified and newer
/// than `current` (unless `force`). The record says it was refreshed at the verification time.
pub fn decide(
    candidate: Candidate<'_>,
    current: Option<u32>,
    force: bool,
) -> Result<AcceptedRecord, AcceptError> {
    let serial = candidate.verification.serial;
    let proof = candidate
        .verification
        .proof()
        .map_err(|source| AcceptError::NotVerified { serial, source })?;
    let newer = current.is_none_or(|cur| serial_is_newer(serial, cur));
    if let (Some(cur), false, false) = (current, force, newer) {
        return Err(AcceptError::NotNewer {
            candidate: serial,
            current: cur,
        });
    }
    Ok(AcceptedRecord {
        version: RECORD_VERSION,
        serial: proof.serial,
        records: proof.records,
        zonemd_scheme: proof.zonemd.scheme,
        zonemd_hash_algorithm: proof.zonemd.hash_algorithm,
        zonemd_digest: proof.zonemd.digest,
        anchors_used: proof.anchors_used,
        signatures_verified: proof.signatures_verified,
        refreshed_at: proof.verified_at.clone(),
        verified_at: proof.verified_at,
        signatures_valid_until: proof.signatures_valid_until,
        source: candidate.source.to_owned(),
        forced: force && !newer,
    })
}

/// Accepts `candidate` if it is verified and newer than `current` (or `force`), committing the
/// zone and its record to `store` in one atomic step.
pub fn accept(
    candidate: Candidate<'_>,
    current: Option<&AcceptedRecord>,
    force: bool,
    store: &ZoneStore,
) -> Result<AcceptedRecord, AcceptError> {
    let record = decide(candidate, current.map(|c| c.serial), force)?;
    store
        .commit(candidate.zone, &record)
        .map_err(AcceptError::Store)?;
    Ok(record)
}

/// Writes `path` atomically: a temp file in the same directory, fsync, rename over `path`,
/// fsync of the directory. On failure the temp file is removed and `path` is untouched.
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

    fn record(refreshed: &str, signatures: &str) -> AcceptedRecord {
        AcceptedRecord {
            version: RECORD_VERSION,
            serial: 1,
            records: 1,
            zonemd_scheme: 1,
            zonemd_hash_algorithm: 1,
            zonemd_digest: "00".into(),
            anchors_used: vec![20326],
            signatures_verified: 1,
            verified_at: refreshed.into(),
            refreshed_at: refreshed.into(),
            signatures_valid_until: signatures.into(),
            source: "test".into(),
            forced: false,
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]
        /// A record with any text in its fields (what a forger could write) loads and gives an
        /// expiry or none, never a panic; arbitrary bytes are an error, never a panic.
        #[test]
        fn any_record_loads_or_fails_without_panicking(
            digest in ".{0,120}",
            refreshed in "\\PC{0,40}",
            signatures in "[0-9TZ:.+-]{0,30}|2026-08-13T20:00:00Z",
            source in "\\PC{0,60}",
            serial: u32,
            junk in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
        ) {
            let d = tempfile::tempdir().unwrap();
            let mut r = record(&refreshed, &signatures);
            r.zonemd_digest = digest;
            r.source = source;
            r.serial = serial;
            let path = d.path().join("record.json");
            fs::write(&path, serde_json::to_vec(&r).unwrap()).unwrap();
            let back = AcceptedRecord::load(&path).unwrap();
            proptest::prop_assert_eq!(&back, &r);
            let _ = back.expires_at(Duration::from_secs(604_800));
            let _ = back.expires_at(Duration::MAX);
            fs::write(&path, &junk).unwrap();
            let _ = AcceptedRecord::load(&path);
        }
    }

    #[test]
    fn expiry_is_the_soa_expire_or_the_first_signature_expiry_whichever_comes_first() {
        let week = Duration::from_secs(604_800);
        let r = record("2026-08-01T00:00:00Z", "2026-08-13T20:00:00Z");
        assert_eq!(
            r.expires_at(week).unwrap().to_string(),
            "2026-08-08T00:00:00Z"
        );
        // A refresh time pushed into the future (a forged record) cannot outlive the
        // signatures.
        let r = record("2030-01-01T00:00:00Z", "2026-08-13T20:00:00Z");
        assert_eq!(
            r.expires_at(week).unwrap().to_string(),
            "2026-08-13T20:00:00Z"
        );
        assert_eq!(
            record("garbage", "2026-08-13T20:00:00Z").expires_at(week),
            None
        );
    }
}
