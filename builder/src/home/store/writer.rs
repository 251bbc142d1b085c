//! The writing side of the database: one writer thread owns the writing connection and commits
//! in groups. It takes every submission waiting in its queue, stores them in one transaction
//! (`synchronous=FULL`, WAL), and only then answers each, so an acknowledged report is on disk
//! even after a power cut, and a burst of devices costs one fsync per group rather than one per
//! report.
//!
//! Refusals are best effort: cut to size before they are queued ([`super::rejected`]), and at
//! most [`MAX_PENDING_REJECTIONS`] wait in the queue; past that they are only counted as
//! dropped, so a flood of refusals costs neither memory nor disk.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::oneshot;

use super::commands::{self, Resolution};
use super::rejected::{self, Bounded, RejectedCaps, Rejection};
use super::{StoreError, open};

/// Most submissions committed in one transaction.
const MAX_GROUP: usize = 512;
/// Most refusals waiting for the writer; more are counted as dropped.
pub const MAX_PENDING_REJECTIONS: usize = 4096;

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
    /// The key is enrolled; `false` under open enrolment.
    pub enrolled: bool,
    /// A `command-result`: what it says about which command.
    pub resolution: Option<Resolution>,
}

/// What the writer did with a report, and the commands waiting for its device (signed JSON
/// texts, oldest first) that the answer carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// What storing it did.
    pub stored: Stored,
    /// The device's unresolved commands (none for an id conflict).
    pub commands: Vec<String>,
}

/// What storing a report did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// First time seen: stored.
    New,
    /// Stored, and flagged: the key is not enrolled and another key claimed the report's serial
    /// first.
    Flagged {
        /// The key id that holds the serial.
        serial_held_by: String,
    },
    /// The same signed report was stored before: nothing changed.
    Duplicate,
    /// Another report with this id is stored (different bytes or key): refused.
    IdConflict,
}

enum Job {
    Report(Box<NewReport>, oneshot::Sender<Result<Outcome, StoreError>>),
    Reject(Box<Bounded>),
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Job::Report(r, _) => write!(f, "Report({})", r.id),
            Job::Reject(r) => write!(f, "Reject({})", r.r.reason),
        }
    }
}

/// Refusals waiting in the queue, and those dropped because it was full.
#[derive(Debug, Default)]
struct Backlog {
    pending: AtomicUsize,
    overflow: AtomicU64,
}

/// The writing side: a handle to the writer thread.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    backlog: Arc<Backlog>,
}

impl Store {
    /// Opens the database, brings the refused submissions within `caps`, and starts the writer
    /// thread.
    pub fn start(path: &Path, caps: RejectedCaps) -> Result<Store, StoreError> {
        let mut conn = open(path)?;
        let caps_err = |source| StoreError::Caps {
            path: path.to_path_buf(),
            source,
        };
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(caps_err)?;
        rejected::trim(&tx, caps).map_err(caps_err)?;
        tx.commit().map_err(caps_err)?;
        let (tx, rx) = mpsc::channel();
        let backlog = Arc::new(Backlog::default());
        let writer_state = Writer {
            conn,
            path: path.to_path_buf(),
            caps,
            backlog: backlog.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("home-db-writer".into())
            .spawn(move || writer_state.run(rx))
            .map_err(|source| StoreError::Thread {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Store {
            path: path.to_path_buf(),
            tx: Some(tx),
            thread: Some(thread),
            backlog,
        })
    }

    /// Queues a report; the returned receiver yields the outcome once it is committed.
    pub fn submit(
        &self,
        report: NewReport,
    ) -> Result<oneshot::Receiver<Result<Outcome, StoreError>>, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .as_ref()
            .and_then(|tx| tx.send(Job::Report(Box::new(report), reply)).ok())
            .ok_or_else(|| StoreError::WriterGone {
                path: self.path.clone(),
            })?;
        Ok(rx)
    }

    /// Records a refused submission, cut to size (best effort: it is written with the next
    /// group, or only counted when too many are waiting).
    pub fn reject(&self, r: Rejection) {
        let b = &self.backlog;
        if b.pending.fetch_add(1, Ordering::AcqRel) >= MAX_PENDING_REJECTIONS {
            b.pending.fetch_sub(1, Ordering::AcqRel);
            b.overflow.fetch_add(1, Ordering::AcqRel);
            return;
        }
        let sent = self
            .tx
            .as_ref()
            .is_some_and(|tx| tx.send(Job::Reject(Box::new(Bounded::new(r)))).is_ok());
        if !sent {
            b.pending.fetch_sub(1, Ordering::AcqRel);
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

/// The writer thread's state.
struct Writer {
    conn: Connection,
    path: PathBuf,
    caps: RejectedCaps,
    backlog: Arc<Backlog>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(j) => group.push(j),
                    Err(_) => break,
                }
            }
            let rejections = group.iter().filter(|j| matches!(j, Job::Reject(_))).count();
            self.backlog.pending.fetch_sub(rejections, Ordering::AcqRel);
            let overflow = self.backlog.overflow.swap(0, Ordering::AcqRel);
            match self.write_group(&group, overflow) {
                Ok(outcomes) => {
                    for (job, outcome) in group.into_iter().zip(outcomes) {
                        if let Job::Report(_, reply) = job {
                            let _ = reply.send(Ok(outcome));
                        }
                    }
                }
                Err((id, source)) => {
                    self.backlog.overflow.fetch_add(overflow, Ordering::AcqRel);
                    let msg = source.to_string();
                    for job in group {
                        if let Job::Report(_, reply) = job {
                            let _ = reply.send(Err(StoreError::WriteGroup {
                                path: self.path.clone(),
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
        &mut self,
        group: &[Job],
        overflow: u64,
    ) -> Result<Vec<Outcome>, (String, rusqlite::Error)> {
        let caps = self.caps;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| ("transaction".to_string(), e))?;
        let mut out = Vec::with_capacity(group.len());
        for job in group {
            match job {
                Job::Report(r, _) => {
                    let s = store_one(&tx, r).map_err(|e| (r.id.clone(), e))?;
                    if s == Stored::IdConflict {
                        let refusal = Bounded::new(Rejection {
                            received_unix: r.received_unix,
                            peer: r.peer.clone(),
                            source: source_of_peer(&r.peer),
                            status: 422,
                            reason: "id-conflict: report id already used by a different report"
                                .into(),
                            key_id: Some(r.key_id.clone()),
                            report_id: Some(r.id.clone()),
                            serial: Some(r.serial.clone()),
                            site_id: Some(r.site_id.clone()),
                        });
                        rejected::insert(&tx, &refusal, caps).map_err(|e| (r.id.clone(), e))?;
                    }
                    let id_err = |e| (r.id.clone(), e);
                    if let (Stored::New | Stored::Flagged { .. }, Some(res)) = (&s, &r.resolution) {
                        commands::resolve(&tx, &r.key_id, res, r.received_unix).map_err(id_err)?;
                    }
                    let commands = if s == Stored::IdConflict {
                        Vec::new()
                    } else {
                        commands::deliver(&tx, &r.key_id, r.received_unix).map_err(id_err)?
                    };
                    out.push(Outcome {
                        stored: s,
                        commands,
                    });
                }
                Job::Reject(r) => {
                    rejected::insert(&tx, r, caps).map_err(|e| ("rejected".to_string(), e))?;
                    out.push(Outcome {
                        stored: Stored::New,
                        commands: Vec::new(),
                    });
                }
            }
        }
        if overflow > 0 {
            rejected::add_dropped(&tx, overflow).map_err(|e| ("rejected".to_string(), e))?;
        }
        tx.commit().map_err(|e| ("commit".to_string(), e))?;
        Ok(out)
    }
}

/// The source a stored peer string (`ip:port`) counts as.
fn source_of_peer(peer: &str) -> String {
    peer.parse::<std::net::SocketAddr>()
        .map(|a| crate::home::source::Source::from(a.ip()).to_string())
        .unwrap_or_else(|_| peer.to_string())
}

/// Heartbeats kept per device, newest first (a day at the default period of 5 minutes); every
/// other report is kept.
pub const MAX_HEARTBEATS_PER_DEVICE: i64 = 288;

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
    // Under open enrolment, the first key to claim a serial holds it; later claims by other
    // keys are stored but flagged.
    let held_by: Option<String> = if r.enrolled {
        None
    } else {
        tx.query_row(
            "SELECT key_id FROM reports WHERE serial = ?1 ORDER BY rowid LIMIT 1",
            params![r.serial],
            |row| row.get(0),
        )
        .optional()?
        .filter(|k: &String| *k != r.key_id)
    };
    tx.execute(
        "INSERT INTO reports (id, key_id, public_key, serial, profile, site_id, instance, event,
            failed_stage, failed_reason, zone_serial, image, lab, created_unix, received_unix,
            peer, report, signature, digest, enrolled, serial_conflict)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,
            ?19, ?20, ?21)",
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
            r.digest,
            r.enrolled,
            held_by
        ],
    )?;
    if r.event == "heartbeat" {
        // A bounded history per device: the newest heartbeats only.
        tx.execute(
            "DELETE FROM reports WHERE key_id = ?1 AND event = 'heartbeat' AND rowid NOT IN
               (SELECT rowid FROM reports WHERE key_id = ?1 AND event = 'heartbeat'
                ORDER BY received_unix DESC, rowid DESC LIMIT ?2)",
            params![r.key_id, MAX_HEARTBEATS_PER_DEVICE],
        )?;
    }
    Ok(match held_by {
        Some(serial_held_by) => Stored::Flagged { serial_held_by },
        None => Stored::New,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{SCHEMA_VERSION, StoreError, count_reports, fleet, open};
    use super::*;

    pub(crate) fn row(id: &str, key: &str, digest: &str, received: i64) -> NewReport {
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
            enrolled: true,
            resolution: None,
        }
    }

    #[test]
    fn stores_once_per_id_and_lists_latest_per_device() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("h.sqlite");
        let store = Store::start(&db, RejectedCaps::default()).unwrap();
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
            .map(|rx| rx.blocking_recv().unwrap().unwrap().stored)
            .collect();
        use Stored::*;
        assert_eq!(got, [New, Duplicate, IdConflict, IdConflict, New, New]);
        drop(store); // joins the writer: everything is committed
        assert_eq!(count_reports(&db).unwrap(), 3);
        let f = fleet(&db, 10).unwrap();
        let devs: Vec<_> = f
            .devices
            .iter()
            .map(|d| (d.device.as_str(), d.reports, d.received_unix))
            .collect();
        assert_eq!(devs, [("k1", 2, 20), ("k2", 1, 15)]);
        assert_eq!(f.rejected_total, 2, "id conflicts are recorded");
        assert!(f.rejected.iter().all(|r| r.status == 422));
        assert!(matches!(
            fleet(&dir.path().join("none"), 1),
            Err(StoreError::Missing { .. })
        ));
        // A newer schema is refused, not clobbered.
        open(&db)
            .unwrap()
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        assert!(matches!(open(&db), Err(StoreError::Schema { .. })));
    }

    #[test]
    fn heartbeats_keep_a_bounded_history_and_the_fleet_shows_lag_and_quiet_devices() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("h.sqlite");
        let store = Store::start(&db, RejectedCaps::default()).unwrap();
        let beat = |i: i64, key: &str, serial: u32| NewReport {
            event: "heartbeat".into(),
            zone_serial: Some(serial),
            report: r#"{"slot": {"running": "b"}}"#.into(),
            ..row(&format!("h{key}{i}"), key, &format!("d{key}{i}"), 1000 + i)
        };
        let n = MAX_HEARTBEATS_PER_DEVICE + 12;
        let mut rxs = vec![store.submit(row("install", "k1", "di", 1)).unwrap()];
        for i in 0..n {
            rxs.push(store.submit(beat(i, "k1", 2026010102)).unwrap());
        }
        rxs.push(store.submit(beat(0, "k2", 2026010100)).unwrap());
        for rx in rxs {
            assert_eq!(rx.blocking_recv().unwrap().unwrap().stored, Stored::New);
        }
        drop(store);
        // The install report and the newest heartbeats of k1, plus k2's one.
        assert_eq!(
            count_reports(&db).unwrap(),
            1 + MAX_HEARTBEATS_PER_DEVICE as u64 + 1
        );
        let mut f = fleet(&db, 0).unwrap();
        let k1 = f.devices.iter().find(|d| d.device == "k1").unwrap();
        assert_eq!(k1.last_heartbeat_unix, Some(1000 + n - 1));
        assert_eq!(k1.slot.as_deref(), Some("b"));
        assert_eq!(k1.serial_lag, Some(0));
        let k2 = f.devices.iter().find(|d| d.device == "k2").unwrap();
        assert_eq!(k2.serial_lag, Some(2), "two serials behind k1");
        super::super::mark_quiet(&mut f, 1000 + n + 100, 150);
        let quiet: Vec<(&str, bool)> = f
            .devices
            .iter()
            .map(|d| (d.device.as_str(), d.quiet))
            .collect();
        assert!(
            quiet.contains(&("k1", false)) && quiet.contains(&("k2", true)),
            "{quiet:?}"
        );
    }

    #[test]
    fn unenrolled_keys_claiming_a_held_serial_are_flagged() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("h.sqlite");
        let store = Store::start(&db, RejectedCaps::default()).unwrap();
        let open_row = |id: &str, key: &str, serial: &str, t: i64| NewReport {
            serial: serial.into(),
            enrolled: false,
            ..row(id, key, id, t)
        };
        let got: Vec<Stored> = [
            open_row("a1", "k1", "SN-1", 1),
            open_row("a2", "k2", "SN-1", 2),
            open_row("a3", "k1", "SN-1", 3),
            open_row("a4", "k3", "SN-1", 4),
            open_row("a5", "k4", "SN-4", 5),
            // An enrolled key is trusted with its serial (a re-flashed device).
            NewReport {
                serial: "SN-1".into(),
                ..row("a6", "k5", "a6", 6)
            },
        ]
        .into_iter()
        .map(|r| {
            store
                .submit(r)
                .unwrap()
                .blocking_recv()
                .unwrap()
                .unwrap()
                .stored
        })
        .collect();
        let held = |k: &str| Stored::Flagged {
            serial_held_by: k.into(),
        };
        assert_eq!(
            got,
            [
                Stored::New,
                held("k1"),
                Stored::New,
                held("k1"),
                Stored::New,
                Stored::New
            ]
        );
        drop(store);
        let f = fleet(&db, 10).unwrap();
        let view: Vec<_> = f
            .devices
            .iter()
            .map(|d| {
                (
                    d.device.as_str(),
                    d.enrolled,
                    d.serial_held_by.as_deref(),
                    d.serial_claimed_by.clone(),
                )
            })
            .collect();
        assert_eq!(
            view,
            [
                ("k1", false, None, vec!["k2".to_string(), "k3".to_string()]),
                ("k2", false, Some("k1"), vec![]),
                ("k3", false, Some("k1"), vec![]),
                ("k4", false, None, vec![]),
                ("k5", true, None, vec![]),
            ]
        );
    }

    #[test]
    fn a_full_queue_of_refusals_is_counted_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("h.sqlite");
        let store = Store::start(&db, RejectedCaps::default()).unwrap();
        // Fill the backlog as if the writer were slow: these are only counted.
        store
            .backlog
            .pending
            .fetch_add(MAX_PENDING_REJECTIONS, Ordering::AcqRel);
        for n in 0..3 {
            store.reject(Rejection {
                received_unix: 1,
                peer: "192.0.2.1:1".into(),
                source: "192.0.2.1".into(),
                status: 400,
                reason: format!("malformed #{n}"),
                key_id: None,
                report_id: None,
                serial: None,
                site_id: None,
            });
        }
        store
            .backlog
            .pending
            .fetch_sub(MAX_PENDING_REJECTIONS, Ordering::AcqRel);
        // The next one is kept, and the group that writes it counts the three.
        store.reject(Rejection {
            received_unix: 2,
            peer: "192.0.2.1:1".into(),
            source: "192.0.2.1".into(),
            status: 400,
            reason: "malformed #3".into(),
            key_id: None,
            report_id: None,
            serial: None,
            site_id: None,
        });
        drop(store);
        let f = fleet(&db, 10).unwrap();
        assert_eq!((f.rejected_kept, f.rejected_dropped), (1, 3));
        assert_eq!(f.rejected[0].reason, "malformed #3");
    }
}
