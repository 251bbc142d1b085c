//! imrs-config: the typed, validated data every imrs program speaks.
//!
//! - [`imrs`]: the facts (AS 20144, the five prefixes, service addresses, transfer servers).
//! - [`recipe`], [`profile`], [`site`], [`lock`]: the files engineers write, each rejecting unknown
//!   keys and naming file, key, value and rule on error ([`ConfigError`]).
//! - [`image`]: what a built image says about itself (manifest, image info), canonical JSON.
//! - [`keys`]: Ed25519 keys and detached signatures.
//! - [`report`]: phone-home reports; [`command`]: signed fleet commands and the appliance's
//!   decision to run one.
//! - [`rssac002`]: the daily metrics a root server operator publishes: a day's counters, their
//!   merge across boxes, and the documents in the published layout.
//! - [`signed`]: signed site configs as the init receives them.
//! - [`stage`]: the boot pipeline's stages and statuses, shared by the init, reports and the lab.
//! - [`layout`]: the paths every image owns (recipes may not place files over them).
//! - [`accounts`]: the image's accounts (one per daemon) with fixed ids.
//! - [`fsutil`]: atomic, durable file writes and size-bounded reads shared by every program.

pub mod accounts;
pub mod command;
mod error;
pub mod fsutil;
pub mod image;
pub mod imrs;
pub mod keys;
pub mod layout;
pub mod lock;
pub mod profile;
pub mod recipe;
pub mod report;
pub mod rssac002;
pub mod signed;
pub mod site;
pub mod stage;

pub use error::{ConfigError, error_chain, escape, escape_all, needs_escape};
