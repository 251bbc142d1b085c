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
//! - [`accept`]: serial policy and atomic writing of an accepted zone.
//! - [`refresh`]: when to poll, when the zone expires.
//! - [`axfr`]: the transfer client.

pub mod accept;
pub mod anchors;
pub mod axfr;
pub mod crypto;
pub mod dnssec;
pub mod input;
pub mod name;
pub mod refresh;
pub mod verify;
pub mod zone;
pub mod zonemd;

pub use accept::{AcceptError, AcceptedRecord, Candidate, ZoneStore, accept, serial_is_newer};
pub use anchors::{DEFAULT_ANCHORS_PATH, TrustAnchor, TrustAnchors};
pub use axfr::{AxfrConfig, AxfrError, Transfer};
pub use jiff::Timestamp;
pub use name::WireName;
pub use refresh::{RefreshDecision, RefreshState, SoaTimers};
pub use verify::{Proof, Verification, VerifyError, verify};
pub use zone::{LoadError, MAX_ZONE_FILE_BYTES, Record, Zone};
