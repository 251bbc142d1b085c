//! Full verification of a zone: ZONEMD and DNSSEC, run side by side.
//!
//! Owns the combined verdict the rest of the appliance acts on. A zone is
//! verified only if both the ZONEMD digest and the whole DNSSEC check pass.

use std::time::{Duration, Instant};

use jiff::Timestamp;

use crate::anchors::TrustAnchors;
use crate::dnssec::{self, DnssecError, DnssecReport};
use crate::zone::Zone;
use crate::zonemd::{self, ZonemdError, ZonemdVerified};

/// The outcome of verifying one zone. Both halves are always run, so a
/// report names every failing part.
#[derive(Clone, Debug)]
pub struct Verification {
    /// SOA serial of the zone.
    pub serial: u32,
    /// Number of records (duplicates removed).
    pub records: usize,
    /// The time signatures and anchors were checked against.
    pub at: Timestamp,
    /// ZONEMD result.
    pub zonemd: Result<ZonemdVerified, ZonemdError>,
    /// DNSSEC result.
    pub dnssec: Result<DnssecReport, DnssecError>,
    /// Wall time of the verification.
    pub elapsed: Duration,
}

/// Why a zone is not verified (the first failing half; DNSSEC first since
/// it names a single signature or RRset).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// DNSSEC verification failed.
    #[error("DNSSEC verification failed for serial {serial}")]
    Dnssec {
        /// Serial of the zone.
        serial: u32,
        /// The failure.
        #[source]
        source: DnssecError,
    },
    /// ZONEMD verification failed.
    #[error("ZONEMD verification failed for serial {serial}")]
    Zonemd {
        /// Serial of the zone.
        serial: u32,
        /// The failure.
        #[source]
        source: ZonemdError,
    },
}

/// A fully verified zone's proof, as recorded next to an accepted zone.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Proof {
    /// SOA serial.
    pub serial: u32,
    /// Records in the zone.
    pub records: usize,
    /// The ZONEMD record that matched.
    pub zonemd: crate::zonemd::ZonemdRecord,
    /// Key tags of the anchored KSKs that signed the DNSKEY RRset.
    pub anchors_used: Vec<u16>,
    /// RRSIGs verified.
    pub signatures_verified: usize,
    /// Verification time (RFC 3339).
    pub verified_at: String,
    /// The earliest expiration among the zone's signatures (RFC 3339).
    pub signatures_valid_until: String,
}

impl Verification {
    /// Whether the zone is fully verified.
    pub fn is_verified(&self) -> bool {
        self.zonemd.is_ok() && self.dnssec.is_ok()
    }

    /// The proof of a verified zone, or the failure.
    pub fn proof(&self) -> Result<Proof, VerifyError> {
        let dnssec = self.dnssec.as_ref().map_err(|e| VerifyError::Dnssec {
            serial: self.serial,
            source: e.clone(),
        })?;
        let zonemd = self.zonemd.as_ref().map_err(|e| VerifyError::Zonemd {
            serial: self.serial,
            source: e.clone(),
        })?;
        Ok(Proof {
            serial: self.serial,
            records: self.records,
            zonemd: zonemd.matched.clone(),
            anchors_used: dnssec.anchors_used.clone(),
            signatures_verified: dnssec.signatures_verified,
            verified_at: self.at.to_string(),
            signatures_valid_until: dnssec.signatures_valid_until.clone(),
        })
    }

    /// One JSON object describing the whole outcome.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "verified": self.is_verified(),
            "serial": self.serial,
            "records": self.records,
            "at": self.at.to_string(),
            "elapsed_ms": self.elapsed.as_secs_f64() * 1000.0,
            "zonemd": match &self.zonemd {
                Ok(v) => serde_json::json!({"ok": true, "matched": v.matched, "unsupported": v.unsupported}),
                Err(e) => serde_json::json!({"ok": false, "error": e.to_string(),
                    "unverifiable": matches!(e, ZonemdError::Unsupported { .. } | ZonemdError::Missing)}),
            },
            "dnssec": match &self.dnssec {
                Ok(r) => serde_json::json!({"ok": true, "report": r}),
                Err(e) => serde_json::json!({"ok": false, "error": e.to_string()}),
            },
        })
    }
}

/// Verifies ZONEMD and DNSSEC of `zone` at time `at`, both cores busy.
pub fn verify(zone: &Zone, anchors: &TrustAnchors, at: Timestamp) -> Verification {
    let start = Instant::now();
    let (dnssec, zonemd) = rayon::join(
        || dnssec::verify(zone, anchors, at),
        || zonemd::verify(zone),
    );
    Verification {
        serial: zone.serial(),
        records: zone.len(),
        at,
        zonemd,
        dnssec,
        elapsed: start.elapsed(),
    }
}
