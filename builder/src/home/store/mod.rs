//! The receiver's SQLite database, and the only code that speaks SQL to it. `home serve` writes
//! through [`Store`] (one writer thread, group commits); `home list`, the lab and the tests read
//! through the typed functions of [`read`] on connections of their own (WAL lets them run
//! beside a serving receiver).
//!
//! - [`schema`]: the tables, and the upgrade of an older database in place.
//! - [`writer`]: verified reports, once per report id; the writer thread.
//! - [`rejected`]: refused submissions, kept bounded (values cut, caps per source and in all,
//!   oldest dropped first and counted).
//! - [`read`]: the fleet view, the reports, the counts.
//! - [`device`]: one device's page: its row, its timeline, its commands.
//! - [`notices`]: what the host organisations are told, and how delivery went.
//! - [`commands`]: signed commands queued for devices, delivered in the answers to their
//!   reports, resolved by their results.

pub mod commands;
pub mod device;
pub mod notices;
pub mod read;
pub mod rejected;
pub mod schema;
pub mod writer;

use std::path::{Path, PathBuf};

use rusqlite::Connection;

pub use read::{
    DeviceRow, Fleet, RejectedRow, ReportRow, SourceDrops, TelemetryRow, count_reports, fleet,
    latest_signed, mark_quiet, ping, rejected_counts, reports, signed_report, telemetry,
    telemetry_days,
};
pub use rejected::{RejectedCaps, RejectedCounts, Rejection};
pub use schema::SCHEMA_VERSION;
pub use writer::{NewReport, Outcome, Store, Stored};

/// The database could not be opened, written or read.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Opening or preparing the database failed.
    #[error("{path}: cannot open the report database")]
    Open {
        /// The database file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rusqlite::Error,
    },
    /// The database was written by a newer receiver.
    #[error("{path}: schema version {found}, this build understands {SCHEMA_VERSION}")]
    Schema {
        /// The database file.
        path: PathBuf,
        /// The version found.
        found: i64,
    },
    /// Upgrading an older database failed; it is left as it was.
    #[error("{path}: cannot upgrade the report database from schema version {from}")]
    Upgrade {
        /// The database file.
        path: PathBuf,
        /// The version found.
        from: i64,
        /// Why.
        #[source]
        source: rusqlite::Error,
    },
    /// Reading failed.
    #[error("{path}: cannot read the report database")]
    Read {
        /// The database file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rusqlite::Error,
    },
    /// Writing failed (notices).
    #[error("{path}: cannot write to the report database")]
    Write {
        /// The database file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rusqlite::Error,
    },
    /// A group of submissions could not be committed; none of it was kept.
    #[error("{path}: cannot store report {id}: {message}")]
    WriteGroup {
        /// The database file.
        path: PathBuf,
        /// The report (or step) that failed.
        id: String,
        /// The database's message.
        message: String,
    },
    /// Bringing the refused submissions within their caps at start failed.
    #[error("{path}: cannot apply the caps on refused submissions")]
    Caps {
        /// The database file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rusqlite::Error,
    },
    /// The writer thread could not be started.
    #[error("{path}: cannot start the database writer")]
    Thread {
        /// The database file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// There is no database at the path.
    #[error("{path}: no report database here")]
    Missing {
        /// The path given.
        path: PathBuf,
    },
    /// A stored row does not read back as what was stored.
    #[error("{path}: damaged: {detail}")]
    Damaged {
        /// The database file.
        path: PathBuf,
        /// What does not read back.
        detail: String,
    },
    /// The writer thread is gone (it failed earlier or the store shut down).
    #[error("{path}: the database writer has stopped")]
    WriterGone {
        /// The database file.
        path: PathBuf,
    },
}

/// Opens (creating if needed) the database at `path` with the receiver's settings, upgrading
/// an older schema in place.
fn open(path: &Path) -> Result<Connection, StoreError> {
    let err = |source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    };
    let mut conn = Connection::open(path).map_err(err)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(err)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(err)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(err)?;
    // After a checkpoint the write-ahead log is cut back to this size, so a burst does not
    // leave a large file behind.
    conn.pragma_update(None, "journal_size_limit", 16 * 1024 * 1024)
        .map_err(err)?;
    schema::prepare(&mut conn, path)?;
    Ok(conn)
}

/// Opens an existing database for reading; a missing file is [`StoreError::Missing`], not a
/// new empty database.
fn open_existing(path: &Path) -> Result<Connection, StoreError> {
    if !path.exists() {
        return Err(StoreError::Missing {
            path: path.to_path_buf(),
        });
    }
    open(path)
}
