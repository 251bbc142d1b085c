//! Root zone handling for the IMRS appliance: load a zone, prove it
//! (ZONEMD and DNSSEC against the IANA trust anchors), decide whether to accept
//! it, and transfer it by AXFR.
//!
//! Map of the modules:
//! - [`name`]: canonical wire-format names and their order.
//! - [`zone`]: loading and the canonical in-memory zone.
//! - [`zonemd`]: the RFC 8976 zone digest.
//! - [`anchors`]: IANA trust anchors.
//! - [`input`]: size-limited reading of regular files (zone files, anchors).
//! - [`crypto`]: zone keys prepared for verification, and digests (aws-lc-rs).
//! - [`dnssec`]: RRSIGs, chain of trust, NSEC chain.
//! - [`verify`]: the combined verdict.
//! - [`accept`]: serial policy, the record of an accepted zone, its expiry.
//! - [`store`]: accepted zones on disk, committed in one step, verified again when read.
//! - [`refresh`]: when to poll, when the zone expires.
//! - [`axfr`]: the transfer client.
//! - [`query`]: one DNS query over UDP or TCP (EDNS, NSID), the client every program uses.

pub mod accept;
pub mod anchors;
pub mod axfr;
pub mod crypto;
pub mod dnssec;
pub mod input;
pub mod name;
pub mod query;
pub mod refresh;
pub mod store;
pub mod verify;
pub mod zone;
pub mod zonemd;

pub use accept::{AcceptError, AcceptedRecord, Candidate, accept, decide, serial_is_newer};
pub use anchors::{DEFAULT_ANCHORS_PATH, TrustAnchor, TrustAnchors};
pub use axfr::{AxfrConfig, AxfrError, Transfer};
pub use jiff::Timestamp;
pub use name::WireName;
pub use refresh::{RefreshDecision, RefreshState, SoaTimers};
pub use store::{Stored, ZoneStore};
pub use verify::{Proof, Verification, VerifyError, verify};
pub use zone::{LoadError, MAX_ZONE_FILE_BYTES, Record, Zone};

/// An error and its causes on one line (`a: b: c`).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
