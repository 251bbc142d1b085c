//! Telling the host organisation (issue 17): when the receiver stores a verified
//! `install-passed` or `install-failed`, and when a box of the site that was heard from stays
//! silent for longer than the site's `host.quiet_after_s`, every contact in the site's `[host]`
//! section gets one signed notice ([`notice`]): the webhook a `POST`, each address an e-mail
//! ([`deliver`]).
//!
//! Notices are queued in the database first (at most once per event and recipient, whatever
//! arrives twice or restarts) and delivered by a background task: tried at once, then again
//! after the backoff (doubling, at most an hour) until delivered or `--notice-attempts` ran
//! out; every attempt's outcome is recorded (`home list` does not show them; the device's page
//! does). A site without contacts, or without a config in `--sites`, is told nothing, and that
//! is no error.
//!
//! - [`contacts`]: the sites' `[host]` sections from `--sites DIR`.
//! - [`notice`]: the notice, its signature, and its check (`home verify-notice`).
//! - [`deliver`]: one webhook or e-mail attempt.

pub mod contacts;
pub mod deliver;
pub mod notice;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use imrs_config::report::{Event, Report, SignedReport};
use imrs_config::site::Host;

use super::receiver::unix_now as now_unix;
use super::store::notices::{self, Attempt, NewNotice, NoticeRow};
use super::store::{self, StoreError};
use contacts::{Contacts, ContactsError};
use deliver::{DeliverError, Smtp, Webhooks};
use notice::{Kind, Notice};

/// Default of `--notice-attempts`.
pub const DEFAULT_ATTEMPTS: u32 = 8;
/// Default of `--notice-backoff` (seconds).
pub const DEFAULT_BACKOFF_S: u64 = 30;
/// Longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// How often silent boxes are looked for.
pub const QUIET_CHECK: Duration = Duration::from_secs(30);
/// Most notices tried in one round.
const ROUND: usize = 32;

/// What `home serve` needs to send notices.
#[derive(Debug, Clone)]
pub struct NotifyConfig {
    /// The folder of site configs (their `[host]` sections).
    pub sites: PathBuf,
    /// The receiver's notice signing key (Ed25519 PEM).
    pub key: PathBuf,
    /// SMTP relay (`HOST[:PORT]`), for sites with e-mail contacts.
    pub smtp_relay: Option<String>,
    /// Sender address of the e-mails.
    pub smtp_from: String,
    /// The only CAs to trust for webhooks and the relay (default: the public web PKI).
    pub ca: Option<PathBuf>,
    /// Attempts per notice and recipient.
    pub attempts: u32,
    /// Wait after the first failed attempt (doubling after each further one).
    pub backoff: Duration,
    /// How long one attempt may take.
    pub timeout: Duration,
}

/// Notices cannot be sent as configured.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The site configs.
    #[error("notices")]
    Contacts(#[from] ContactsError),
    /// The notice key.
    #[error("notices")]
    Key(#[from] imrs_config::keys::KeyError),
    /// The delivery settings.
    #[error("notices")]
    Deliver(#[from] DeliverError),
}

/// The notifier: contacts, key, channels, and the database's queue.
#[derive(Debug)]
pub struct Notifier {
    contacts: Contacts,
    key: SigningKey,
    webhooks: Webhooks,
    smtp: Option<Smtp>,
    attempts: u32,
    backoff: Duration,
    db: PathBuf,
    log: bool,
    wake: tokio::sync::Notify,
}

impl Notifier {
    /// Reads the site configs and the key, and sets up the channels.
    pub fn open(cfg: &NotifyConfig, db: &Path, log: bool) -> Result<Notifier, NotifyError> {
        let contacts = Contacts::load(&cfg.sites)?;
        let key = imrs_config::keys::read_secret(&cfg.key)?;
        let webhooks = Webhooks::new(cfg.ca.as_deref(), cfg.timeout)?;
        let smtp = match &cfg.smtp_relay {
            Some(relay) => Some(Smtp::new(
                relay,
                &cfg.smtp_from,
                cfg.ca.as_deref(),
                cfg.timeout,
            )?),
            None => None,
        };
        if log {
            let (sites, with) = contacts.counts();
            eprintln!(
                "notices: {sites} site config(s), {with} with contacts; signed by notice key {}",
                imrs_config::keys::key_id(&key.verifying_key())
            );
            if smtp.is_none() && !contacts.emailed_sites().is_empty() {
                eprintln!(
                    "WARNING: notices: sites {} list e-mail contacts but no --smtp-relay is \
                     given: their e-mail notices will be recorded as not sent",
                    contacts.emailed_sites().join(", ")
                );
            }
        }
        Ok(Notifier {
            contacts,
            key,
            webhooks,
            smtp,
            attempts: cfg.attempts.max(1),
            backoff: cfg.backoff,
            db: db.to_path_buf(),
            log,
            wake: tokio::sync::Notify::new(),
        })
    }

    /// Queues the notices of one verified, newly stored report (installation events only);
    /// how many were queued.
    pub fn on_report(
        &self,
        signed: &SignedReport,
        parsed: &Report,
        received_unix: i64,
    ) -> Result<usize, StoreError> {
        let kind = match parsed.event {
            Event::InstallPassed {} => Kind::InstallPassed,
            Event::InstallFailed { .. } => Kind::InstallFailed,
            _ => return Ok(0),
        };
        let Some(host) = self.contacts.host(&parsed.site.site_id) else {
            return Ok(0);
        };
        let id = parsed.id.to_string();
        let now = now_unix();
        let Ok(n) = Notice::of_report(
            kind,
            id,
            &host.organisation,
            signed,
            parsed,
            received_unix,
            now,
        ) else {
            return Ok(0);
        };
        self.queue(&n, host, now)
    }

    fn queue(&self, n: &Notice, host: &Host, now: i64) -> Result<usize, StoreError> {
        let body = serde_json::to_string(&notice::sign(n, &self.key)).unwrap_or_default();
        let mut rows = Vec::new();
        let mut add = |channel: &str, target: &str| {
            rows.push(NewNotice {
                id: n.id.clone(),
                channel: channel.into(),
                target: target.into(),
                key_id: n.device_key.clone(),
                site_id: n.site_id.clone(),
                kind: n.kind.name().into(),
                body: body.clone(),
            });
        };
        if let Some(url) = &host.webhook {
            add("webhook", url);
        }
        for e in &host.email {
            add("email", e);
        }
        if rows.is_empty() {
            return Ok(0);
        }
        let queued = notices::queue(&self.db, &rows, now)?;
        if queued > 0 {
            if self.log {
                eprintln!(
                    "notices: {} {} of {} queued for {queued} recipient(s)",
                    n.kind.name(),
                    n.id,
                    imrs_config::escape_all(&n.instance)
                );
            }
            self.wake.notify_one();
        }
        Ok(queued)
    }

    /// Queues a `went-quiet` notice for every box of a site with contacts whose latest report
    /// (not a failed installation) arrived longer ago than the site allows; once per silence
    /// (the notice id names the last report's arrival).
    pub fn check_quiet(&self, now: i64) -> Result<usize, StoreError> {
        let fleet = store::fleet(&self.db, 0)?;
        let mut queued = 0;
        for d in &fleet.devices {
            let Some(host) = self.contacts.host(&d.site_id) else {
                continue;
            };
            let limit = i64::try_from(host.quiet_after_s).unwrap_or(i64::MAX);
            if !host.has_contacts()
                || d.last_event == "install-failed"
                || now.saturating_sub(d.received_unix) <= limit
            {
                continue;
            }
            let id = format!("quiet-{}-{}", d.device, d.received_unix);
            if notices::queued(&self.db, &id)? {
                continue;
            }
            let Some((signed, received)) = store::latest_signed(&self.db, &d.device)? else {
                continue;
            };
            // Stored reports were verified on arrival.
            let Ok(parsed) = imrs_config::report::verify(&signed) else {
                continue;
            };
            let Ok(n) = Notice::of_report(
                Kind::WentQuiet,
                id,
                &host.organisation,
                &signed,
                &parsed,
                received,
                now,
            ) else {
                continue;
            };
            queued += self.queue(&n, host, now)?;
        }
        Ok(queued)
    }

    /// Tries every due notice once; how many were delivered.
    pub fn deliver_due(&self, now: i64) -> Result<usize, StoreError> {
        let mut sent = 0;
        for row in notices::due(&self.db, now, ROUND)? {
            let outcome = match self.attempt(&row) {
                Ok(()) => Attempt::Sent,
                Err(error) if row.attempts + 1 >= self.attempts => Attempt::GaveUp { error },
                Err(error) => {
                    let wait = self
                        .backoff
                        .saturating_mul(1u32 << row.attempts.min(16))
                        .min(MAX_BACKOFF);
                    Attempt::Retry {
                        error,
                        next_unix: now_unix()
                            + i64::try_from(wait.as_secs().max(1)).unwrap_or(3600),
                    }
                }
            };
            if self.log {
                let what = match &outcome {
                    Attempt::Sent => "sent".to_string(),
                    Attempt::Retry { error, .. } => format!("failed, will retry: {error}"),
                    Attempt::GaveUp { error } => {
                        format!("failed {} time(s), given up: {error}", row.attempts + 1)
                    }
                };
                eprintln!(
                    "notices: {} {} by {} to {}: {}",
                    row.kind,
                    row.id,
                    row.channel,
                    imrs_config::escape_all(&row.target),
                    imrs_config::escape_all(&what)
                );
            }
            if outcome == Attempt::Sent {
                sent += 1;
            }
            notices::record(
                &self.db,
                (&row.id, &row.channel, &row.target),
                &outcome,
                now_unix(),
            )?;
        }
        Ok(sent)
    }

    fn attempt(&self, row: &NoticeRow) -> Result<(), String> {
        match row.channel.as_str() {
            "webhook" => self.webhooks.post(&row.target, &row.id, &row.body),
            "email" => {
                let Some(smtp) = &self.smtp else {
                    return Err("no SMTP relay configured (home serve --smtp-relay)".into());
                };
                let (n, _) = notice::verify(row.body.as_bytes(), None)
                    .map_err(|e| format!("the queued notice does not check: {e}"))?;
                smtp.send(&row.target, &n, &row.body)
            }
            other => Err(format!("unknown channel {other}")),
        }
    }

    /// Delivers and watches for silent boxes until the runtime stops.
    pub async fn run(self: Arc<Self>) {
        let mut last_quiet_check: Option<tokio::time::Instant> = None;
        loop {
            let me = self.clone();
            let check_quiet = last_quiet_check.is_none_or(|t| t.elapsed() >= QUIET_CHECK);
            if check_quiet {
                last_quiet_check = Some(tokio::time::Instant::now());
            }
            let round = tokio::task::spawn_blocking(move || {
                if check_quiet {
                    me.check_quiet(now_unix())?;
                }
                me.deliver_due(now_unix())
            })
            .await;
            match round {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => eprintln!("notices: {}", imrs_config::error_chain(&e)),
                Err(e) => eprintln!("notices: the delivery round stopped: {e}"),
            }
            tokio::select! {
                () = self.wake.notified() => {},
                () = tokio::time::sleep(Duration::from_secs(1)) => {},
            }
        }
    }
}
