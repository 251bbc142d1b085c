//! What the receiver does with one submission, apart from HTTP: parse the envelope, verify the
//! signature over the exact report bytes, check enrolment, store once per report id, and pick
//! the answer the device relies on.
//!
//! Answers (JSON bodies, always with `status`, and `id` once the report is known):
//! - `201 {"id","status":"stored"}`: new report stored (committed to disk).
//! - `409 {"id","status":"duplicate"}`: the same signed report was stored before. The device
//!   treats 201 and this 409 alike: delivered.
//! - `400 malformed`, `413 too-large`, `422 bad-signature | invalid | id-conflict`,
//!   `403 unknown-device`: refused and recorded in `rejected` (bounded: see
//!   [`super::store::rejected`]); the device keeps its copy.
//! - `503` when the database cannot store (not recorded; the device retries).
//!
//! A `201` or `409` answer also carries `commands`: the device key's unresolved signed commands
//! (queued by `imrs-build fleet command`), oldest first, as the signed texts; the device decides
//! on each itself (`imrs_config::command::admit`). A `command-result` report resolves the
//! command it names, in the same transaction that stores it.
//!
//! Under open enrolment a report whose serial another key claimed first is still stored (`201`,
//! with a `warning`), and flagged: `home list` shows which key holds the serial. Refusing it
//! instead would let whoever reports first lock the real device out.
//!
//! Everything logged from a submission is cut to size and escaped ([`imrs_config::escape_all`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use hyper::StatusCode;
use imrs_config::keys;
use imrs_config::report::{self, Event, ReportError, SignedReport};
use serde_json::json;
use sha2::Digest;

use super::enrol::{Enrolment, EnrolmentMode};
use super::notify::Notifier;
use super::server::{ServeConfig, ServeError};
use super::source::Source;
use super::store::commands::Resolution;
use super::store::rejected::bounded;
use super::store::{NewReport, Outcome, Rejection, Store, StoreError, Stored};
use imrs_config::escape_all as escape;

/// The receiver's shared state: the store, the enrolment and the body limit.
#[derive(Debug)]
pub struct Receiver {
    store: Store,
    /// `None`: open enrolment.
    enrolled: Option<Enrolment>,
    pub(super) max_body: usize,
    pub(super) log: bool,
    /// Where published image payloads are ([`super::images`]).
    pub(super) images: std::path::PathBuf,
    /// What this receiver answered since it started (the operators' `/metrics`).
    pub(super) answered: Answered,
    /// The operators' pages, when on.
    pub(super) operators: Option<super::web::Operators>,
    /// Notices to host organisations, when on.
    pub(super) notifier: Option<Arc<Notifier>>,
}

/// Submissions answered since the receiver started, by outcome.
#[derive(Debug, Default)]
pub struct Answered {
    /// Stored (201).
    pub stored: AtomicU64,
    /// Already stored (409 duplicate).
    pub duplicate: AtomicU64,
    /// Refused (400, 403, 413, 408, 422).
    pub refused: AtomicU64,
    /// Not stored for want of the database (503).
    pub unavailable: AtomicU64,
}

impl Answered {
    /// Submissions that changed the database (stored, or refused and recorded).
    pub fn changes(&self) -> u64 {
        self.stored.load(Ordering::Relaxed) + self.refused.load(Ordering::Relaxed)
    }
}

fn bump(n: &AtomicU64) {
    n.fetch_add(1, Ordering::Relaxed);
}

/// Text from a submission as it may go to a log line: cut to size, controls escaped.
fn loggable(text: &str) -> String {
    escape(&bounded(text).0).into_owned()
}

impl Receiver {
    /// Opens the database (bringing refused submissions within their caps) and reads the
    /// enrolment folder.
    pub fn open(cfg: &ServeConfig) -> Result<Receiver, ServeError> {
        let enrolled = match &cfg.enrolment {
            EnrolmentMode::Folder(dir) => Some(Enrolment::load(dir)?),
            EnrolmentMode::Open => None,
        };
        // The token before the database: a refused start creates nothing.
        let operators = match &cfg.operator_token {
            Some(file) => Some(super::web::Operators::new(
                super::web::auth::Access::from_file(file)?,
                cfg.stale_after,
            )),
            None => None,
        };
        let notifier = match &cfg.notify {
            Some(n) => Some(Arc::new(Notifier::open(n, &cfg.db, cfg.log)?)),
            None => None,
        };
        Ok(Receiver {
            store: Store::start(&cfg.db, cfg.rejected)?,
            enrolled,
            max_body: cfg.limits.max_body,
            log: cfg.log,
            images: super::images::dir_for(&cfg.db),
            answered: Answered::default(),
            operators,
            notifier,
        })
    }

    /// The database file.
    pub fn db(&self) -> &std::path::Path {
        self.store.path()
    }

    /// Number of enrolled keys; `None` under open enrolment.
    pub fn enrolled(&self) -> Option<usize> {
        self.enrolled.as_ref().map(Enrolment::len)
    }

    /// Handles one submission body from `peer`: the status and the JSON answer.
    pub async fn submit(&self, body: &[u8], peer: SocketAddr) -> (StatusCode, serde_json::Value) {
        let now = unix_now();
        let reject = |status: StatusCode, kind: &str, reason: String, known: Known| {
            bump(&self.answered.refused);
            if self.log {
                eprintln!(
                    "home: {peer}: {} {kind}: {}",
                    status.as_u16(),
                    loggable(&reason)
                );
            }
            self.store.reject(Rejection {
                received_unix: now,
                peer: peer.to_string(),
                source: Source::from(peer.ip()).to_string(),
                status: status.as_u16(),
                reason: format!("{kind}: {reason}"),
                key_id: known.key_id,
                report_id: known.report_id.clone(),
                serial: known.serial,
                site_id: known.site_id,
            });
            // The answer goes back to the sender only; still, no megabyte echoes.
            let mut answer = json!({"status": kind, "error": bounded(&reason).0});
            if let Some(id) = known.report_id {
                answer["id"] = id.into();
            }
            (status, answer)
        };
        let signed = match SignedReport::from_json(body) {
            Ok(s) => s,
            Err(e) => {
                return reject(
                    StatusCode::BAD_REQUEST,
                    "malformed",
                    e.to_string(),
                    Known::default(),
                );
            }
        };
        let key = signed.key().ok();
        let key_id = key.as_ref().map(keys::key_id);
        let parsed = match report::verify(&signed) {
            Ok(r) => r,
            Err(e) => {
                let kind = match e {
                    ReportError::BadSignature { .. } | ReportError::SignatureFormat { .. } => {
                        "bad-signature"
                    }
                    ReportError::PublicKey { .. } => "malformed",
                    _ => "invalid",
                };
                let status = if kind == "malformed" {
                    StatusCode::BAD_REQUEST
                } else {
                    StatusCode::UNPROCESSABLE_ENTITY
                };
                let known = Known {
                    key_id,
                    ..Known::default()
                };
                return reject(status, kind, imrs_config::error_chain(&e), known);
            }
        };
        let (Some(key), Some(key_id)) = (key, key_id) else {
            return reject(
                StatusCode::BAD_REQUEST,
                "malformed",
                "public key unusable".into(),
                Known::default(),
            );
        };
        let known = Known {
            key_id: Some(key_id.clone()),
            report_id: Some(parsed.id.to_string()),
            serial: Some(parsed.device.serial.clone()),
            site_id: Some(parsed.site.site_id.clone()),
        };
        if let Some(enrolled) = &self.enrolled
            && !enrolled.contains(&key)
        {
            return reject(
                StatusCode::FORBIDDEN,
                "unknown-device",
                format!("device key {key_id} is not enrolled"),
                known,
            );
        }
        let (failed_stage, failed_reason) = match &parsed.event {
            Event::InstallFailed { stage, reason } => {
                (Some(stage.to_string()), Some(reason.clone()))
            }
            _ => (None, None),
        };
        let id = parsed.id.to_string();
        // Installation reports are what the host is told about, once stored.
        let for_notice = match (&self.notifier, &parsed.event) {
            (Some(n), Event::InstallPassed {} | Event::InstallFailed { .. }) => {
                Some((n.clone(), signed.clone(), parsed.clone()))
            }
            _ => None,
        };
        let row = NewReport {
            id: id.clone(),
            key_id: key_id.clone(),
            public_key: signed.public_key.clone(),
            serial: parsed.device.serial.clone(),
            profile: parsed.device.profile.clone(),
            site_id: parsed.site.site_id.clone(),
            instance: parsed.site.instance.clone(),
            event: parsed.event.name().to_string(),
            failed_stage,
            failed_reason,
            zone_serial: match &parsed.event {
                // The refresh loop's serial, newer than the one verified at boot.
                Event::Heartbeat { zone_serial, .. } => *zone_serial,
                _ => parsed.zone.as_ref().map(|z| z.serial),
            },
            image: format!("{} {}", parsed.image.name, parsed.image.version),
            lab: parsed.lab,
            created_unix: parsed.created_unix,
            received_unix: now,
            peer: peer.to_string(),
            digest: hex::encode(sha2::Sha256::digest(signed.report.as_bytes())),
            report: signed.report,
            signature: signed.signature,
            enrolled: self.enrolled.is_some(),
            resolution: match &parsed.event {
                Event::CommandResult {
                    sequence,
                    outcome,
                    reason,
                    logs,
                    ..
                } => Some(Resolution {
                    sequence: *sequence,
                    outcome: outcome.name().to_string(),
                    reason: reason.clone(),
                    logs: logs.clone(),
                }),
                _ => None,
            },
        };
        let outcome = match self.store.submit(row) {
            Ok(rx) => match rx.await {
                Ok(r) => r,
                Err(_) => Err(StoreError::WriterGone {
                    path: self.store.path().to_path_buf(),
                }),
            },
            Err(e) => Err(e),
        };
        let stored = |flag: &str| {
            bump(&self.answered.stored);
            if let Some((notifier, signed, parsed)) = for_notice.clone() {
                tokio::task::spawn_blocking(move || {
                    if let Err(e) = notifier.on_report(&signed, &parsed, now) {
                        eprintln!("notices: {}", imrs_config::error_chain(&e));
                    }
                });
            }
            if self.log {
                eprintln!(
                    "home: {peer}: stored {} {id} from {key_id} ({} at {}){flag}",
                    parsed.event.name(),
                    loggable(&parsed.device.serial),
                    loggable(&parsed.site.site_id)
                );
            }
        };
        // The device's waiting commands ride on the answer (as the signed texts).
        let with_commands = |mut answer: serde_json::Value, commands: Vec<String>| {
            if !commands.is_empty() {
                let list: Vec<serde_json::Value> = commands
                    .iter()
                    .filter_map(|c| serde_json::from_str(c).ok())
                    .collect();
                answer["commands"] = list.into();
            }
            answer
        };
        match outcome {
            Ok(Outcome {
                stored: Stored::New,
                commands,
            }) => {
                stored("");
                (
                    StatusCode::CREATED,
                    with_commands(json!({"id": id, "status": "stored"}), commands),
                )
            }
            Ok(Outcome {
                stored: Stored::Flagged { serial_held_by },
                commands,
            }) => {
                stored(&format!(
                    "; FLAGGED: device key {serial_held_by} claimed this serial first"
                ));
                (
                    StatusCode::CREATED,
                    with_commands(
                        json!({"id": id, "status": "stored",
                               "warning": format!("serial claimed first by device key {serial_held_by}; stored and flagged")}),
                        commands,
                    ),
                )
            }
            Ok(Outcome {
                stored: Stored::Duplicate,
                commands,
            }) => {
                bump(&self.answered.duplicate);
                (
                    StatusCode::CONFLICT,
                    with_commands(json!({"id": id, "status": "duplicate"}), commands),
                )
            }
            Ok(Outcome {
                stored: Stored::IdConflict,
                ..
            }) => {
                // Recorded as rejected by the writer in the same transaction.
                bump(&self.answered.refused);
                (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json!({"id": id, "status": "id-conflict",
                           "error": "another report with this id is stored"}),
                )
            }
            Err(e) => {
                bump(&self.answered.unavailable);
                eprintln!(
                    "home: {peer}: report {id}: {}",
                    imrs_config::error_chain(&e)
                );
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"id": id, "status": "unavailable", "error": "cannot store now"}),
                )
            }
        }
    }

    /// Records a refusal that happened before the body was read (too large, timeout).
    pub(super) fn refuse(&self, peer: SocketAddr, status: StatusCode, kind: &str, reason: String) {
        bump(&self.answered.refused);
        if self.log {
            eprintln!(
                "home: {peer}: {} {kind}: {}",
                status.as_u16(),
                loggable(&reason)
            );
        }
        self.store.reject(Rejection {
            received_unix: unix_now(),
            peer: peer.to_string(),
            source: Source::from(peer.ip()).to_string(),
            status: status.as_u16(),
            reason: format!("{kind}: {reason}"),
            key_id: None,
            report_id: None,
            serial: None,
            site_id: None,
        });
    }
}

/// What is known about a submission when it is refused.
#[derive(Debug, Default)]
struct Known {
    key_id: Option<String>,
    report_id: Option<String>,
    serial: Option<String>,
    site_id: Option<String>,
}

/// The current Unix time in seconds.
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
