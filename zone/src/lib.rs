//! Root zone handling for the IMRS appliance: load a zone, prove it
//! (ZONEMD and DNSSEC against the IANA trust anchors), decide whether to accept
//! it, and transfer it by AXFR.
//!
//! Map of the modules:
//! - [`name`]: canonical wire-format names and their order.
//! - [`zone`]: loading and the canonical in-memory zone.

pub mod name;
pub mod zone;

pub use name::WireName;
pub use zone::{LoadError, Record, Zone};
