//! Delivery: a background thread that sends the outbox to the site's receiver over HTTPS and
//! removes a report only when the receiver acknowledges it.
//!
//! - Trust: the receiver's certificate must chain to the CA PEM pinned in the site config
//!   (`phone_home.ca_pem`); no system store, no Mozilla roots, no proxies, no redirects. A
//!   receiver with another CA is refused and the report stays in the outbox.
//! - Acknowledgement: `200`/`201` whose JSON body echoes the report `id`, or `409` with that `id`
//!   and `"status": "duplicate"` (the receiver already has it). Anything else (a refusal, a
//!   5xx, a timeout, no route) keeps the report for the next try.
//! - Timing: the thread sleeps until woken ([`Deliverer::wake`], after a new report or when the
//!   network comes up) or until its timer: after a failed round it retries with exponential
//!   backoff and jitter (2 s doubling up to 5 min by default); when the outbox is empty it
//!   rescans every [`RESCAN`]. The caller never waits on the network.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use imrs_config::command::SignedCommand;
use imrs_config::site::PhoneHome;

use super::outbox::{Outbox, Pending};

/// First retry delay after a failed round.
pub const BACKOFF_MIN: Duration = Duration::from_secs(2);
/// Longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Time limit for one HTTPS request (connect, TLS, send, answer).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How often an idle deliverer looks at the outbox without being woken.
pub const RESCAN: Duration = Duration::from_secs(300);
/// Largest answer body read from the receiver.
const MAX_ANSWER: u64 = 64 * 1024;

/// The deliverer could not start.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    /// The receiver URL is not an `https://` URL.
    #[error("phone_home.url {url:?}: must be an https:// URL")]
    Url {
        /// The URL.
        url: String,
    },
    /// The pinned CA PEM holds no usable certificate.
    #[error("phone_home.ca_pem for {url}: no usable CA certificate{detail}")]
    Ca {
        /// The receiver URL.
        url: String,
        /// What the PEM parser said, if anything.
        detail: String,
    },
    /// The delivery thread could not be started.
    #[error("cannot start the phone-home delivery thread for {url}")]
    Thread {
        /// The receiver URL.
        url: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// One delivery attempt failed; the report stays in the outbox.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No answer: no route, refused, TLS failure (wrong CA), timeout.
    #[error("report {id} to {url}: {message}")]
    Transport {
        /// The receiver URL.
        url: String,
        /// The report id.
        id: String,
        /// ureq's description (names a certificate problem as such).
        message: String,
    },
    /// The receiver answered without acknowledging the report.
    #[error("report {id} to {url}: receiver answered {status}: {answer}")]
    NotAcknowledged {
        /// The receiver URL.
        url: String,
        /// The report id.
        id: String,
        /// HTTP status.
        status: u16,
        /// The answer body (shortened).
        answer: String,
    },
}

/// How the receiver acknowledged a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// Stored now.
    Stored,
    /// It had it already (an earlier attempt got through but its answer was lost).
    Duplicate,
}

/// Where and how to deliver.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Receiver URL (`https://...`).
    pub url: String,
    /// PEM CA certificate(s) the receiver must chain to.
    pub ca_pem: String,
    /// First retry delay.
    pub backoff_min: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// Per-request time limit.
    pub timeout: Duration,
}

impl DeliveryConfig {
    /// The site's phone-home settings with the default timings.
    pub fn new(site: &PhoneHome) -> DeliveryConfig {
        DeliveryConfig {
            url: site.url.clone(),
            ca_pem: site.ca_pem.clone(),
            backoff_min: BACKOFF_MIN,
            backoff_max: BACKOFF_MAX,
            timeout: REQUEST_TIMEOUT,
        }
    }
}

/// Builds the HTTPS client: rustls on aws-lc-rs (the one crypto library in `/init`) trusting
/// only the pinned CA.
pub fn agent(cfg: &DeliveryConfig) -> Result<ureq::Agent, DeliverError> {
    if !cfg.url.to_ascii_lowercase().starts_with("https://") {
        return Err(DeliverError::Url {
            url: cfg.url.clone(),
        });
    }
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(cfg.ca_pem.as_bytes()) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
            Ok(_) => {}
            Err(e) => {
                return Err(DeliverError::Ca {
                    url: cfg.url.clone(),
                    detail: format!(": {e}"),
                });
            }
        }
    }
    if certs.is_empty() {
        return Err(DeliverError::Ca {
            url: cfg.url.clone(),
            detail: String::new(),
        });
    }
    let tls = ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .root_certs(ureq::tls::RootCerts::Specific(Arc::new(certs)))
        .build();
    Ok(ureq::Agent::config_builder()
        .tls_config(tls)
        .https_only(true)
        .proxy(None)
        .max_redirects(0)
        .http_status_as_error(false)
        .timeout_global(Some(cfg.timeout))
        .user_agent(concat!("imrs-init/", env!("CARGO_PKG_VERSION")))
        .build()
        .into())
}

/// Most commands taken from one answer, and most waiting for the box to decide on.
pub const MAX_COMMANDS: usize = 16;

/// The signed commands an acknowledging answer carries (`commands`), at most
/// [`MAX_COMMANDS`]; entries that are not signed commands are left out (the box decides on
/// each of the others itself, trusting nothing the answer says).
pub fn commands_in(answer: &serde_json::Value) -> Vec<SignedCommand> {
    answer
        .get("commands")
        .and_then(|c| c.as_array())
        .map(|list| {
            list.iter()
                .take(MAX_COMMANDS)
                .filter_map(|c| serde_json::from_value(c.clone()).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Sends one report and interprets the answer: how it was acknowledged, and the signed
/// commands the answer carries.
pub fn send(
    agent: &ureq::Agent,
    url: &str,
    p: &Pending,
) -> Result<(Ack, Vec<SignedCommand>), SendError> {
    let transport = |e: ureq::Error| SendError::Transport {
        url: url.to_string(),
        id: p.id.clone(),
        message: e.to_string(),
    };
    let mut resp = agent
        .post(url)
        .content_type("application/json")
        .send(&p.body[..])
        .map_err(transport)?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(MAX_ANSWER)
        .read_to_vec()
        .unwrap_or_default();
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let echoed = answer.get("id").and_then(|v| v.as_str()) == Some(p.id.as_str());
    let kind = answer.get("status").and_then(|v| v.as_str());
    match (status, echoed, kind) {
        (200 | 201, true, _) => Ok((Ack::Stored, commands_in(&answer))),
        (409, true, Some("duplicate")) => Ok((Ack::Duplicate, commands_in(&answer))),
        _ => Err(SendError::NotAcknowledged {
            url: url.to_string(),
            id: p.id.clone(),
            status,
            answer: String::from_utf8_lossy(&body)
                .trim()
                .chars()
                .take(300)
                .collect(),
        }),
    }
}

/// What the deliverer has done so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// Reports acknowledged by the receiver.
    pub delivered: u64,
    /// Failed attempts.
    pub failures: u64,
    /// Reports waiting after the last round.
    pub pending: usize,
    /// The last failure, cleared by a fully successful round.
    pub last_error: Option<String>,
    /// Rounds completed.
    pub rounds: u64,
}

#[derive(Debug, Default)]
struct Ctl {
    wake: bool,
    stop: bool,
    status: Status,
    /// The commands of the latest answer, not yet taken: distinct signed texts in the
    /// receiver's order. Each answer replaces them, because the receiver hands out every
    /// unresolved command with every answer: a copy from an older answer may be of a command
    /// whose result has been delivered since, and deciding on it again would refuse it as a
    /// replay.
    commands: Vec<SignedCommand>,
}

#[derive(Debug, Default)]
struct Shared {
    ctl: Mutex<Ctl>,
    cv: Condvar,
}

/// The background sender. Dropping it asks the thread to stop without waiting.
#[derive(Debug)]
pub struct Deliverer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Something worth a log line, handed to the caller's logger.
pub type Log = Box<dyn Fn(&str) + Send>;

/// The retry delay after `failures` failed rounds in a row (at least 1): doubling from
/// `min`, capped at `max`, then jittered into `[d/2, d]`.
pub fn backoff(failures: u32, min: Duration, max: Duration, random: u64) -> Duration {
    let exp = failures.saturating_sub(1).min(30);
    let d = min.saturating_mul(1u32 << exp).min(max);
    let half = d / 2;
    let span = u64::try_from(half.as_millis()).unwrap_or(u64::MAX).max(1);
    half + Duration::from_millis(random % (span + 1))
}

impl Deliverer {
    /// Starts the delivery thread over `outbox`; it makes a first round at once.
    pub fn start(outbox: Outbox, cfg: DeliveryConfig, log: Log) -> Result<Deliverer, DeliverError> {
        let agent = agent(&cfg)?;
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let url = cfg.url.clone();
        let thread = std::thread::Builder::new()
            .name("phone-home".into())
            .spawn(move || run(&s, &agent, &outbox, &cfg, &log))
            .map_err(|source| DeliverError::Thread { url, source })?;
        Ok(Deliverer {
            shared,
            thread: Some(thread),
        })
    }

    /// The signed commands of the latest answer, if not taken yet (see `Ctl::commands`).
    pub fn take_commands(&self) -> Vec<SignedCommand> {
        self.shared
            .ctl
            .lock()
            .map(|mut c| std::mem::take(&mut c.commands))
            .unwrap_or_default()
    }

    /// Asks for a round now (a report was queued, the network came up).
    pub fn wake(&self) {
        if let Ok(mut c) = self.shared.ctl.lock() {
            c.wake = true;
            self.shared.cv.notify_all();
        }
    }

    /// A snapshot of what it has done.
    pub fn status(&self) -> Status {
        self.shared
            .ctl
            .lock()
            .map(|c| c.status.clone())
            .unwrap_or_default()
    }

    /// Stops the thread and waits for it (at most one request time limit).
    pub fn stop(mut self) {
        self.signal_stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    fn signal_stop(&self) {
        if let Ok(mut c) = self.shared.ctl.lock() {
            c.stop = true;
            self.shared.cv.notify_all();
        }
    }
}

impl Drop for Deliverer {
    fn drop(&mut self) {
        self.signal_stop();
    }
}

/// One pass over the outbox; stops at the first failure so a down receiver is not hammered.
fn round(
    agent: &ureq::Agent,
    outbox: &Outbox,
    cfg: &DeliveryConfig,
    shared: &Shared,
    log: &Log,
) -> Result<(), String> {
    let (pending, corrupt) = outbox.pending().map_err(|e| e.to_string())?;
    for c in corrupt {
        log(&format!(
            "phone home: {} is not a signed report; set aside",
            c.display()
        ));
    }
    for p in &pending {
        if shared.ctl.lock().map(|c| c.stop).unwrap_or(true) {
            return Ok(());
        }
        match send(agent, &cfg.url, p) {
            Ok((ack, commands)) => {
                outbox.remove(p).map_err(|e| e.to_string())?;
                if let Ok(mut c) = shared.ctl.lock() {
                    c.status.delivered += 1;
                    c.commands.clear();
                    for cmd in commands {
                        if c.commands.len() < MAX_COMMANDS && !c.commands.contains(&cmd) {
                            c.commands.push(cmd);
                        }
                    }
                }
                let how = match ack {
                    Ack::Stored => "stored",
                    Ack::Duplicate => "already there",
                };
                log(&format!(
                    "phone home: report {} delivered to {} ({how})",
                    p.id, cfg.url
                ));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}

fn run(shared: &Shared, agent: &ureq::Agent, outbox: &Outbox, cfg: &DeliveryConfig, log: &Log) {
    let mut failures: u32 = 0;
    let mut last_logged: Option<String> = None;
    loop {
        let result = round(agent, outbox, cfg, shared, log);
        let pending = outbox.len().unwrap_or(0);
        let wait = match &result {
            Ok(()) => {
                failures = 0;
                last_logged = None;
                RESCAN
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let d = backoff(
                    failures,
                    cfg.backoff_min,
                    cfg.backoff_max,
                    getrandom::u64().unwrap_or(0),
                );
                // Rate limit: a new kind of failure, or every tenth repeat.
                if last_logged.as_deref() != Some(e.as_str()) || failures.is_multiple_of(10) {
                    log(&format!(
                        "phone home: {e}; {pending} report(s) waiting, retry in {}s (failure {failures})",
                        d.as_secs()
                    ));
                    last_logged = Some(e.clone());
                }
                d
            }
        };
        let Ok(mut c) = shared.ctl.lock() else {
            return;
        };
        c.status.rounds += 1;
        c.status.pending = pending;
        match result {
            Ok(()) => c.status.last_error = None,
            Err(e) => {
                c.status.failures += 1;
                c.status.last_error = Some(e);
            }
        }
        let deadline = std::time::Instant::now() + wait;
        while !c.wake && !c.stop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            c = match shared.cv.wait_timeout(c, left) {
                Ok((g, _)) => g,
                Err(_) => return,
            };
        }
        if c.stop {
            return;
        }
        c.wake = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_jitters() {
        let (min, max) = (Duration::from_secs(2), Duration::from_secs(300));
        let cases = [
            (1, 0, 1_000),
            (1, u64::MAX, 1_000 + u64::MAX % 1_001),
            (2, 0, 2_000),
            (3, 0, 4_000),
            (9, 0, 150_000),
            (40, 0, 150_000),
            (40, 150_000, 300_000),
        ];
        for (failures, random, want_ms) in cases {
            let d = backoff(failures, min, max, random);
            assert_eq!(
                d.as_millis() as u64,
                want_ms,
                "failures {failures} random {random}"
            );
        }
        for f in 1..50 {
            for r in [0, 7, 123_456_789, u64::MAX] {
                let d = backoff(f, min, max, r);
                assert!(d >= Duration::from_secs(1) && d <= max, "{f} {r} {d:?}");
            }
        }
    }

    #[test]
    fn refuses_plain_http_and_missing_ca() {
        let mut cfg = DeliveryConfig {
            url: "http://192.0.2.1/reports".into(),
            ca_pem: String::new(),
            backoff_min: BACKOFF_MIN,
            backoff_max: BACKOFF_MAX,
            timeout: REQUEST_TIMEOUT,
        };
        assert!(matches!(agent(&cfg), Err(DeliverError::Url { .. })));
        cfg.url = "https://192.0.2.1/reports".into();
        assert!(matches!(agent(&cfg), Err(DeliverError::Ca { .. })));
        cfg.ca_pem = "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n".into();
        assert!(matches!(agent(&cfg), Err(DeliverError::Ca { .. })));
    }
}
