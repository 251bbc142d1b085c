//! The receiver's SQLite database: verified reports (once per report id) and rejected
//! submissions. The fleet view `home list` prints is in [`super::fleet`].
//!
//! One writer thread owns the writing connection and commits in groups: it takes every
//! submission waiting in its queue, stores them in one transaction (`synchronous=FULL`, WAL), and
//! only then answers each, so an acknowledged report is on disk even after a power cut, and a
//! burst of devices costs one fsync per group rather than one per report. Readers open their own
//! connections (WAL lets them run beside the writer).

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use tokio::sync::oneshot;

/// Schema version stored in `PRAGMA user_version`.
pub const SCHEMA_VERSION: i64 = 1;

/// Most submissions committed in one transaction.
const MAX_GROUP: usize = 512;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS reports (
    id            TEXT PRIMARY KEY,
    key_id        TEXT NOT NULL,
    public_key    TEXT NOT NULL,
    serial        TEXT NOT NULL,
    profile       TEXT NOT NULL,
    site_id       TEXT NOT NULL,
    instance      TEXT NOT NULL,
    event         TEXT NOT NULL,
    failed_stage  TEXT,
    failed_reason TEXT,
    zone_serial   INTEGER,
    image         TEXT NOT NULL,
    lab           INTEGER NOT NULL,
    created_unix  INTEGER NOT NULL,
    received_unix INTEGER NOT NULL,
    peer          TEXT NOT NULL,
    report        TEXT NOT NULL,
    signature     TEXT NOT NULL,
    digest        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS reports_by_key ON reports(key_id, received_unix);
CREATE TABLE IF NOT EXISTS rejected (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    received_unix INTEGER NOT NULL,
    peer          TEXT NOT NULL,
    status        INTEGER NOT NULL,
    reason        TEXT NOT NULL,
    key_id        TEXT,
    report_id     TEXT,
    serial        TEXT,
    site_id       TEXT
);
";

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
    /// Reading the fleet failed.
    #[error("{path}: cannot read the fleet")]
    Read {
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
    /// The writer thread is gone (it failed earlier or the store shut down).
    #[error("{path}: the database writer has stopped")]
    WriterGone {
        /// The database file.
        path: PathBuf,
    },
}

/// A verified report ready to store.
#[derive(Debug, Clone)]
pub struct NewReport {
    /// Report id.
    pub id: String,
    /// Device key id.
    pub key_id: String,
    /// Device public key (PEM).
    pub public_key: String,
    /// DMI serial.
    pub serial: String,
    /// Hardware profile.
    pub profile: String,
    /// Site id.
    pub site_id: String,
    /// Instance name.
    pub instance: String,
    /// Event name.
    pub event: String,
    /// Stage of an `install-failed`.
    pub failed_stage: Option<String>,
    /// Reason of an `install-failed`.
    pub failed_reason: Option<String>,
    /// Zone serial.
    pub zone_serial: Option<u32>,
    /// `name version`.
    pub image: String,
    /// Lab site.
    pub lab: bool,
    /// Device's creation time.
    pub created_unix: i64,
    /// Receiver's time.
    pub received_unix: i64,
    /// Peer address.
    pub peer: String,
    /// Canonical report text (the signed bytes).
    pub report: String,
    /// Signature hex.
    pub signature: String,
    /// sha256 hex of the report text.
    pub digest: String,
}

/// A submission that was refused.
#[derive(Debug, Clone, Serialize)]
pub struct Rejection {
    /// Receiver's time.
    pub received_unix: i64,
    /// Peer address.
    pub peer: String,
    /// HTTP status answered.
    pub status: u16,
    /// Why.
    pub reason: String,
    /// Device key id, when the envelope had a usable key.
    pub key_id: Option<String>,
    /// Report id, when the report parsed.
    pub report_id: Option<String>,
    /// Serial, when the report parsed.
    pub serial: Option<String>,
    /// Site, when the report parsed.
    pub site_id: Option<String>,
}

/// What storing a report did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// First time seen: stored.
    New,
    /// The same signed report was stored before: nothing changed.
    Duplicate,
    /// Another report with this id is stored (different bytes or key): refused.
    IdConflict,
}

enum Job {
    Report(Box<NewReport>, oneshot::Sender<Result<Stored, StoreError>>),
    Reject(Box<Rejection>),
}

/// The writing side: a handle to the writer thread.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Job::Report(r, _) => write!(f, "Report({})", r.id),
            Job::Reject(r) => write!(f, "Reject({})", r.reason),
        }
    }
}

/// Opens (creating if needed) the database at `path` with the receiver's settings.
pub fn open(path: &Path) -> Result<Connection, StoreError> {
    let err = |source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    };
    let conn = Connection::open(path).map_err(err)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(err)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(err)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(err)?;
    let found: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(err)?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::Schema {
            path: path.to_path_buf(),
            found,
        });
    }
    conn.execute_batch(SCHEMA).map_err(err)?;
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(err)?;
    Ok(conn)
}

impl Store {
    /// Opens the database and starts its writer thread.
    pub fn start(path: &Path) -> Result<Store, StoreError> {
        let conn = open(path)?;
        let (tx, rx) = mpsc::channel();
        let p = path.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("home-db-writer".into())
            .spawn(move || writer(conn, &p, rx))
            .map_err(|source| StoreError::Thread {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Store {
            path: path.to_path_buf(),
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queues a report; the returned receiver yields the outcome once it is committed.
    pub fn submit(
        &self,
        report: NewReport,
    ) -> Result<oneshot::Receiver<Result<Stored, StoreError>>, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .as_ref()
            .and_then(|tx| tx.send(Job::Report(Box::new(report), reply)).ok())
            .ok_or_else(|| StoreError::WriterGone {
                path: self.path.clone(),
            })?;
        Ok(rx)
    }

    /// Records a rejected submission (best effort: it is written with the next group).
    pub fn reject(&self, r: Rejection) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Job::Reject(Box::new(r)));
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn writer(mut conn: Connection, path: &Path, rx: mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(j) => group.push(j),
                Err(_) => break,
            }
        }
        match write_group(&mut conn, &group) {
            Ok(outcomes) => {
                for (job, outcome) in group.into_iter().zip(outcomes) {
                    if let Job::Report(_, reply) = job {
                        let _ = reply.send(Ok(outcome));
                    }
                }
            }
            Err((id, source)) => {
                let msg = source.to_string();
                for job in group {
                    if let Job::Report(_, reply) = job {
                        let _ = reply.send(Err(StoreError::WriteGroup {
                            path: path.to_path_buf(),
                            id: id.clone(),
                            message: msg.clone(),
                        }));
                    }
                }
            }
        }
    }
}

/// Writes one group in one transaction; on failure nothing of the group is kept.
fn write_group(
    conn: &mut Connection,
    group: &[Job],
) -> Result<Vec<Stored>, (String, rusqlite::Error)> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(|e| ("transaction".to_string(), e))?;
    let mut out = Vec::with_capacity(group.len());
    for job in group {
        match job {
            Job::Report(r, _) => {
                let s = store_one(&tx, r).map_err(|e| (r.id.clone(), e))?;
                if s == Stored::IdConflict {
                    insert_rejection(
                        &tx,
                        &Rejection {
                            received_unix: r.received_unix,
                            peer: r.peer.clone(),
                            status: 422,
                            reason: "report id already used by a different report".into(),
                            key_id: Some(r.key_id.clone()),
                            report_id: Some(r.id.clone()),
                            serial: Some(r.serial.clone()),
                            site_id: Some(r.site_id.clone()),
                        },
                    )
                    .map_err(|e| (r.id.clone(), e))?;
                }
                out.push(s);
            }
            Job::Reject(r) => {
                insert_rejection(&tx, r).map_err(|e| ("rejected".to_string(), e))?;
                out.push(Stored::New);
            }
        }
    }
    tx.commit().map_err(|e| ("commit".to_string(), e))?;
    Ok(out)
}

fn store_one(tx: &rusqlite::Transaction<'_>, r: &NewReport) -> Result<Stored, rusqlite::Error> {
    let existing: Option<(String, String)> = tx
        .query_row(
            "SELECT digest, public_key FROM reports WHERE id = ?1",
            params![r.id],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    if let Some((digest, key)) = existing {
        return Ok(if digest == r.digest && key == r.public_key {
            Stored::Duplicate
        } else {
            Stored::IdConflict
        });
    }
    tx.execute(
        "INSERT INTO reports (id, key_id, public_key, serial, profile, site_id, instance, event,
            failed_stage, failed_reason, zone_serial, image, lab, created_unix, received_unix,
            peer, report, signature, digest)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)",
        params![
            r.id,
            r.key_id,
            r.public_key,
            r.serial,
            r.profile,
            r.site_id,
            r.instance,
            r.event,
            r.failed_stage,
            r.failed_reason,
            r.zone_serial,
            r.image,
            r.lab,
            r.created_unix,
            r.received_unix,
            r.peer,
            r.report,
            r.signature,
            r.digest
        ],
    )?;
    Ok(Stored::New)
}

fn insert_rejection(tx: &rusqlite::Transaction<'_>, r: &Rejection) -> Result<(), rusqlite::Error> {
    tx.execute(
        "INSERT INTO rejected (received_unix, peer, status, reason, key_id, report_id, serial, site_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            r.received_unix,
            r.peer,
            r.status,
            r.reason,
            r.key_id,
            r.report_id,
            r.serial,
            r.site_id
        ],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, key: &str, digest: &str, received: i64) -> NewReport {
        NewReport {
            id: id.into(),
            key_id: key.into(),
            public_key: format!("PEM {key}"),
            serial: format!("SN-{key}"),
            profile: "qemu".into(),
            site_id: "lab-1".into(),
            instance: "a.example".into(),
            event: "boot".into(),
            failed_stage: None,
            failed_reason: None,
            zone_serial: Some(7),
            image: "qemu 0.1.0".into(),
            lab: true,
            created_unix: received,
            received_unix: received,
            peer: "127.0.0.1:1".into(),
            report: "{}".into(),
            signature: "00".into(),
            digest: digest.into(),
        }
    }

    #[test]
    fn stores_once_per_id_and_lists_latest_per_device() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("h.sqlite");
        let store = Store::start(&db).unwrap();
        // Queued together, so they land in one group: the duplicate inside the group is caught.
        let rxs: Vec<_> = [
            row("r1", "k1", "d1", 10),
            row("r1", "k1", "d1", 11),
            row("r1", "k2", "d1", 12),
            row("r1", "k1", "dX", 13),
            row("r2", "k1", "d2", 20),
            row("r3", "k2", "d3", 15),
        ]
        .into_iter()
        .map(|r| store.submit(r).unwrap())
        .collect();
        let got: Vec<Stored> = rxs
            .into_iter()
            .map(|rx| rx.blocking_recv().unwrap().unwrap())
            .collect();
        use Stored::*;
        assert_eq!(got, [New, Duplicate, IdConflict, IdConflict, New, New]);
        drop(store); // joins the writer: everything is committed
        assert_eq!(crate::home::fleet::count_reports(&db).unwrap(), 3);
        let f = crate::home::fleet::fleet(&db, 10).unwrap();
        let devs: Vec<_> = f
            .devices
            .iter()
            .map(|d| (d.device.as_str(), d.reports, d.received_unix))
            .collect();
        assert_eq!(devs, [("k1", 2, 20), ("k2", 1, 15)]);
        assert_eq!(f.rejected_total, 2, "id conflicts are recorded");
        assert!(f.rejected.iter().all(|r| r.status == 422));
        assert!(matches!(
            crate::home::fleet::fleet(&dir.path().join("none"), 1),
            Err(StoreError::Missing { .. })
        ));
        // A newer schema is refused, not clobbered.
        open(&db)
            .unwrap()
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        assert!(matches!(open(&db), Err(StoreError::Schema { .. })));
    }
}
