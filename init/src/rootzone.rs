//! The root zone on the appliance: the zone stage (a verified zone to serve) and the refresh
//! loop that keeps it fresh in steady state, both on `imrs-zone`.
//!
//! - **Where**: the zone store `<state>/zone` ([`imrs_zone::store`]): each accepted zone and its
//!   record (what was verified, when it was last refreshed, from where) committed in one atomic
//!   step; the daemons load `<state>/zone/current/root.zone`. On the persistent data partition
//!   it survives reboots.
//! - **Zone stage** ([`obtain`]): the disk is evidence, not truth. The stored zone is verified
//!   in full again (ZONEMD + DNSSEC against the image's anchors at the trusted time) before any
//!   daemon sees it; it is served at once (the refresh loop polls the transfer servers right
//!   after) only when it verifies, its record describes it (serial, ZONEMD digest, a refresh
//!   time not in the future) and it has not expired (SOA expire after the last refresh, never
//!   past its first signature expiry). Otherwise one round over the site's transfer servers
//!   (ICANN's when the site names none): AXFR, ZONEMD + DNSSEC at the current time, acceptance
//!   (never older than a stored zone that verified). A server that is unreachable is retried
//!   with backoff for as long as it takes (the node stays off the air meanwhile); a zone that
//!   fails verification fails the stage with the exact reason.
//! - **Refresh** ([`refresh_loop`]): polls the SOA serial of the transfer servers every SOA
//!   refresh (retry after a failure); a newer serial is transferred, verified, accepted and
//!   loaded into the running daemon without dropping queries. The zone expires 604800 s after
//!   its last successful verification: the health inputs carry that time, so an expired zone
//!   withdraws the specifics. An unreachable transfer server alone changes nothing (the
//!   health machine is told, and ignores it while the zone is valid).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use imrs_config::site::{Site, parse_server};
use imrs_zone::accept::{AcceptError, AcceptedRecord, Candidate};
use imrs_zone::anchors::TrustAnchors;
use imrs_zone::axfr::{AxfrConfig, transfer_from};
use imrs_zone::query::{self, Transport};
use imrs_zone::refresh::{RefreshState, SoaTimers, decide};
use imrs_zone::store::{Stored, ZoneStore};

use crate::command::CommandError;
use crate::health::driver::SharedInputs;
use crate::log;

/// The image's copy of IANA's trust anchors (under the init's root).
pub const ANCHORS: &str = "etc/imrs/root-anchors.xml";
/// The zone store inside the state folder.
pub const ZONE_DIR: &str = "zone";
/// First delay between rounds when every transfer server is unreachable; doubles up to
/// [`RETRY_MAX`].
pub const RETRY_MIN: Duration = Duration::from_secs(2);
/// Longest delay between rounds in the zone stage.
pub const RETRY_MAX: Duration = Duration::from_secs(60);

/// Where zones come from and go.
#[derive(Debug, Clone)]
pub struct ZoneSetup {
    /// Transfer servers, in order.
    pub servers: Vec<SocketAddr>,
    /// Trust anchors file.
    pub anchors_path: PathBuf,
    /// The accepted zone and its record.
    pub store: ZoneStore,
    /// The SOA timers (the root zone's).
    pub timers: SoaTimers,
}

impl ZoneSetup {
    /// Servers from the site (ICANN's when it names none), anchors under `root`, the zone in
    /// `state_dir`.
    pub fn new(root: &Path, state_dir: &Path, site: &Site) -> ZoneSetup {
        let servers = if site.zone.servers.is_empty() {
            AxfrConfig::default().servers
        } else {
            // Validated with the site config: every entry parses.
            site.zone
                .servers
                .iter()
                .filter_map(|s| parse_server(s))
                .collect()
        };
        ZoneSetup {
            servers,
            anchors_path: root.join(ANCHORS),
            store: ZoneStore::new(&state_dir.join(ZONE_DIR)),
            timers: SoaTimers::ROOT,
        }
    }

    /// When a zone stops being servable: the SOA expire after its last refresh, never past
    /// its first signature expiry ([`AcceptedRecord::expires_at`]).
    pub fn expires_at(&self, record: &AcceptedRecord) -> Option<SystemTime> {
        record.expires_at(self.timers.expire).map(SystemTime::from)
    }
}

/// Why a round over the transfer servers gave no zone.
/// Each carries every server's own reason, `; `-separated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoundError {
    /// No server could be reached or transferred from (retry later).
    #[error("{0}")]
    Unreachable(String),
    /// At least one server sent a zone that failed verification (and none sent a good one).
    #[error("{0}")]
    Refused(String),
}

fn load_anchors(path: &Path) -> Result<TrustAnchors, RoundError> {
    TrustAnchors::load(path).map_err(|e| {
        RoundError::Refused(format!(
            "trust anchors {}: {}",
            path.display(),
            log::chain(&e)
        ))
    })
}

/// One round over the servers (blocking): transfer, verify at the current time, accept against
/// `current` (the zone being served, or a stored zone that verified). Stops at the first server
/// whose zone is accepted: a newer serial, or the current serial verified again (stored with
/// this refresh time).
pub fn round(
    setup: &ZoneSetup,
    current: Option<&AcceptedRecord>,
) -> Result<AcceptedRecord, RoundError> {
    let anchors = load_anchors(&setup.anchors_path)?;
    let config = AxfrConfig {
        servers: setup.servers.clone(),
        connect_timeout: Duration::from_secs(3),
        ..AxfrConfig::default()
    };
    let mut unreachable = Vec::new();
    let mut refused = Vec::new();
    for server in &setup.servers {
        let t = match transfer_from(*server, &config) {
            Ok(t) => t,
            Err(e) => {
                unreachable.push(format!("{server}: {}", log::chain(&e)));
                continue;
            }
        };
        let v = imrs_zone::verify(&t.zone, &anchors, crate::clock::timestamp_now());
        let source = format!("axfr://{server}");
        let candidate = Candidate {
            zone: &t.zone,
            verification: &v,
            source: &source,
        };
        match imrs_zone::accept(candidate, current, false, &setup.store) {
            Ok(record) => return Ok(record),
            Err(AcceptError::NotNewer {
                candidate,
                current: cur,
            }) if candidate == cur => {
                // The same serial, verified again now: stored again with this verification
                // time (the expiry counts from the last successful verification).
                let again = Candidate {
                    zone: &t.zone,
                    verification: &v,
                    source: &source,
                };
                match imrs_zone::accept(again, current, true, &setup.store) {
                    Ok(record) => return Ok(record),
                    Err(e) => refused.push(format!("{server}: {}", log::chain(&e))),
                }
            }
            Err(e @ AcceptError::NotNewer { .. }) => {
                unreachable.push(format!("{server}: {}", log::chain(&e)));
            }
            Err(e) => refused.push(format!(
                "zone serial {} from {server}: {}",
                t.zone.serial(),
                log::chain(&e)
            )),
        }
    }
    if refused.is_empty() {
        Err(RoundError::Unreachable(format!(
            "no transfer server answered: {}",
            unreachable.join("; ")
        )))
    } else {
        refused.extend(unreachable);
        Err(RoundError::Refused(refused.join("; ")))
    }
}

/// What the zone stage produced.
#[derive(Debug, Clone)]
pub struct Obtained {
    /// The zone to serve.
    pub record: AcceptedRecord,
    /// It came from the store (verified in an earlier boot), not from a transfer now.
    pub from_store: bool,
}

/// The zone stage: the stored zone when it verifies now, its record vouches for it and it has
/// not expired; else rounds until one is accepted (unreachable servers are retried with
/// backoff; a refused zone ends the stage).
pub async fn obtain(setup: &ZoneSetup) -> Result<Obtained, RoundError> {
    let anchors = load_anchors(&setup.anchors_path)?;
    let store = setup.store.clone();
    let stored = tokio::task::spawn_blocking(move || {
        store.load_verified(&anchors, crate::clock::timestamp_now())
    })
    .await
    .map_err(|e| RoundError::Refused(format!("verifying the stored zone crashed: {e}")))?;
    let mut current = None;
    match stored {
        Stored::Empty => {}
        Stored::Refused(why) => log::error(format!(
            "{}: not served; transferring anew",
            log::chain(&why)
        )),
        Stored::Verified(v) => {
            let record = v.record;
            match v.hint {
                Ok(()) => {
                    let fresh = setup
                        .expires_at(&record)
                        .is_some_and(|e| crate::clock::wall_now() < e);
                    if fresh {
                        return Ok(Obtained {
                            record,
                            from_store: true,
                        });
                    }
                    log::warn(format!(
                        "stored zone serial {} (refreshed {}, signatures valid until {}) has \
                         expired: transferring a new one",
                        record.serial, record.refreshed_at, record.signatures_valid_until
                    ));
                }
                Err(problem) => log::error(format!(
                    "stored zone serial {} verifies, but its record does not vouch for it ({}): \
                     not served; transferring anew",
                    record.serial,
                    log::chain(&problem)
                )),
            }
            current = Some(record);
        }
    }
    let mut delay = RETRY_MIN;
    loop {
        let (s, c) = (setup.clone(), current.clone());
        let r = tokio::task::spawn_blocking(move || round(&s, c.as_ref()))
            .await
            .map_err(|e| RoundError::Refused(format!("zone round crashed: {e}")))?;
        match r {
            Ok(record) => {
                return Ok(Obtained {
                    record,
                    from_store: false,
                });
            }
            Err(e @ RoundError::Refused(_)) => return Err(e),
            Err(RoundError::Unreachable(why)) => {
                log::warn(format!(
                    "{why}; trying again in {} s (off the air until a zone verifies)",
                    delay.as_secs()
                ));
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RETRY_MAX);
            }
        }
    }
}

/// Why a transfer server's serial is unknown (the last try: TCP after UDP).
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    /// No usable response.
    #[error(transparent)]
    Query(#[from] query::QueryError),
    /// A response without the root's SOA.
    #[error("{server}: no SOA in the answer ({rcode})")]
    NoSoa {
        /// The server.
        server: SocketAddr,
        /// The response code it gave.
        rcode: String,
    },
}

/// The SOA serial a transfer server publishes (UDP, then TCP).
pub fn poll_serial(server: SocketAddr) -> Result<u32, PollError> {
    let mut last = None;
    for transport in [Transport::Udp, Transport::Tcp] {
        match query::root_soa(server, transport, Duration::from_secs(3)) {
            Ok(r) => match r.root_soa_serial() {
                Some(s) => return Ok(s),
                None => {
                    last = Some(PollError::NoSoa {
                        server,
                        rcode: r.message.header().rcode().to_string(),
                    })
                }
            },
            Err(e) => last = Some(e.into()),
        }
    }
    // Two transports were tried, so `last` is set.
    Err(last.unwrap_or(PollError::NoSoa {
        server,
        rcode: "no query sent".into(),
    }))
}

/// What the refresh loop does when a newer zone was accepted: load it into the daemon. The
/// second argument is when the round that found it began (the serial was first seen at a
/// transfer server then), for RSSAC002's load time.
pub type OnNewZone = Box<
    dyn Fn(
            &AcceptedRecord,
            jiff::Timestamp,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), CommandError>> + Send>>
        + Send,
>;

/// Keeps the zone fresh until the runtime stops: polls per the SOA timers, transfers newer
/// serials, reloads the daemon through `on_new`, and keeps the health inputs (serial,
/// expiry, transfer failures) current.
pub async fn refresh_loop(
    setup: ZoneSetup,
    mut record: AcceptedRecord,
    inputs: SharedInputs,
    on_new: OnNewZone,
) {
    let mut state = RefreshState {
        last_success: record.refreshed_at.parse().ok(),
        last_attempt: None,
        last_notify: None,
    };
    set_inputs(&setup, &inputs, &record);
    loop {
        let d = decide(setup.timers, state, crate::clock::timestamp_now());
        let wait = d
            .next_poll
            .duration_since(crate::clock::timestamp_now())
            .try_into()
            .unwrap_or(Duration::ZERO);
        tokio::time::sleep(wait).await;
        let began = crate::clock::timestamp_now();
        state.last_attempt = Some(began);
        let s = setup.clone();
        let current = record.clone();
        let outcome = tokio::task::spawn_blocking(move || poll_and_fetch(&s, &current)).await;
        match outcome {
            Ok(Ok(Refreshed::Current)) => {
                state.last_success = Some(crate::clock::timestamp_now());
                inputs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .zone_checked = Some(crate::clock::wall_now());
            }
            Ok(Ok(Refreshed::Stored(new))) => {
                log::info(format!(
                    "zone serial {} verified and stored (was {}) from {}",
                    new.serial, record.serial, new.source
                ));
                if let Err(e) = on_new(&new, began).await {
                    log::error(format!("loading zone serial {}: {e}", new.serial));
                }
                record = new;
                state.last_success = Some(crate::clock::timestamp_now());
                set_inputs(&setup, &inputs, &record);
            }
            Ok(Err(why)) => {
                log::warn(format!("zone refresh: {why}"));
                inputs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .transfer_failure = Some(why.to_string());
            }
            Err(e) => log::error(format!("zone refresh crashed: {e}")),
        }
    }
}

/// How close to its expiry a zone whose serial has not changed is transferred and verified
/// again (so a distribution that publishes no new serial does not expire a good zone).
pub const REVERIFY_BEFORE_EXPIRY: Duration = Duration::from_secs(86_400);

/// What a refresh found.
enum Refreshed {
    /// The stored zone is current.
    Current,
    /// A zone was transferred, verified and stored (a new serial, or the same one verified
    /// again close to its expiry).
    Stored(AcceptedRecord),
}

/// Polls the servers' serial; transfers, verifies and stores when one publishes a newer one,
/// or the same one while the stored zone is close to expiring.
fn poll_and_fetch(setup: &ZoneSetup, current: &AcceptedRecord) -> Result<Refreshed, RoundError> {
    let mut errors = Vec::new();
    let mut fetch = false;
    for server in &setup.servers {
        match poll_serial(*server) {
            Ok(s) if imrs_zone::accept::serial_is_newer(s, current.serial) => {
                fetch = true;
                break;
            }
            Ok(_) => {
                let left = setup
                    .expires_at(current)
                    .and_then(|e| e.duration_since(crate::clock::wall_now()).ok());
                if left.is_some_and(|l| l > REVERIFY_BEFORE_EXPIRY) {
                    return Ok(Refreshed::Current);
                }
                fetch = true;
                break;
            }
            Err(e) => errors.push(log::chain(&e)),
        }
    }
    if !fetch {
        return Err(RoundError::Unreachable(format!(
            "no transfer server answered: {}",
            errors.join("; ")
        )));
    }
    round(setup, Some(current)).map(Refreshed::Stored)
}

fn set_inputs(setup: &ZoneSetup, inputs: &SharedInputs, record: &AcceptedRecord) {
    let mut g = inputs.lock().unwrap_or_else(|p| p.into_inner());
    g.serial = Some(record.serial);
    g.zone_expires = setup.expires_at(record);
    g.zone_checked = record
        .refreshed_at
        .parse::<jiff::Timestamp>()
        .ok()
        .map(SystemTime::from);
}
