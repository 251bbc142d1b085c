//! `imrs-build home`: the receiving end of phone home. Appliances `POST` signed reports
//! (`imrs_config::report`) over HTTPS; `home serve` verifies and stores them in SQLite, and
//! `home list` shows the fleet: each device's latest report, and the submissions refused.
//!
//! - [`server`]: TLS, HTTP, timeouts, connection caps, the serving loop.
//! - [`limits`]: per-client limits (open connections, token-bucket rate).
//! - [`source`]: what counts as one client (IPv4 address, IPv6 /64).
//! - [`receiver`]: one submission: verification, enrolment, storage, the answer the device
//!   relies on.
//! - [`store`]: the SQLite database, the only code with SQL: writer, bounded refusals, reads.
//! - [`enrol`]: the folder of enrolled device keys, or open enrolment.
//! - [`images`]: image payloads published for remote updates, served as
//!   `GET /v1/images/<manifest-sha256>/<file>`.
//! - [`list`]: the fleet as text for people, every reporter-controlled value escaped
//!   ([`imrs_config::escape_all`]).
//! - [`notify`]: notices to host organisations (webhook, e-mail), queued and retried.
//! - [`web`]: the operators' pages (fleet table, device pages, `/metrics`, `/healthz`), on the
//!   same TLS port, for holders of the operators' token only.

pub mod enrol;
pub mod images;
pub mod limits;
pub mod list;
pub mod notify;
pub mod receiver;
pub mod server;
pub mod source;
pub mod store;
pub mod web;

pub use list::render;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use enrol::EnrolmentMode;
use limits::ClientLimits;
use store::RejectedCaps;

/// `imrs-build home ...`
// Parsed once per run: the size of `Serve`'s flags costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, clap::Subcommand)]
pub enum HomeCommand {
    /// Receive phone-home reports over HTTPS: verify each signature, store it once per report
    /// id in SQLite; runs until SIGINT or SIGTERM. Either `--enrolled DIR` or
    /// `--open-enrolment` must be given.
    #[command(group(
        clap::ArgGroup::new("enrolment")
            .required(true)
            .args(["enrolled", "open_enrolment"])
    ))]
    Serve {
        /// Address to listen on, e.g. `[::]:8443` (port 0 picks a free one; the bound address is
        /// printed on stdout).
        #[arg(long)]
        listen: SocketAddr,
        /// SQLite database (created if missing).
        #[arg(long)]
        db: PathBuf,
        /// PEM certificate chain of this receiver (leaf first), issued by the CA in the site
        /// configs' `phone_home.ca_pem`.
        #[arg(long)]
        tls_cert: PathBuf,
        /// PEM private key of the certificate.
        #[arg(long)]
        tls_key: PathBuf,
        /// Accept only devices whose public key (PEM, `*.pem`/`*.pub`) is in this folder;
        /// others are refused with 403 and recorded as rejected.
        #[arg(long, value_name = "DIR")]
        enrolled: Option<PathBuf>,
        /// Accept any device key (labs, tests): devices are stored and listed as unenrolled,
        /// and a key claiming a serial another key claimed first is flagged.
        #[arg(long)]
        open_enrolment: bool,
        /// Largest accepted request body in bytes.
        #[arg(long, default_value_t = server::DEFAULT_MAX_BODY)]
        max_body: usize,
        /// Most connections served at once, all clients together.
        #[arg(long, default_value_t = server::DEFAULT_CONNECTIONS)]
        max_connections: usize,
        /// Seconds a request's headers may take; also how long an idle keep-alive connection
        /// is kept.
        #[arg(long, default_value_t = server::DEFAULT_IDLE_TIMEOUT.as_secs())]
        idle_timeout: u64,
        /// Most open connections per client (an IPv4 address or an IPv6 /64).
        #[arg(long, default_value_t = limits::DEFAULT_CONNECTIONS)]
        client_connections: usize,
        /// Connections plus requests per second allowed per client, on average (token bucket;
        /// past it: connections closed, requests answered 429).
        #[arg(long, default_value_t = limits::DEFAULT_RATE)]
        client_rate: f64,
        /// Connections plus requests a client may send in a burst.
        #[arg(long, default_value_t = limits::DEFAULT_BURST)]
        client_burst: u32,
        /// Refused submissions kept per client; the oldest is dropped (and counted) first.
        #[arg(long, default_value_t = store::rejected::DEFAULT_PER_SOURCE)]
        rejected_per_source: u64,
        /// Refused submissions kept in all; the oldest is dropped (and counted) first.
        #[arg(long, default_value_t = store::rejected::DEFAULT_TOTAL)]
        rejected_total: u64,
        /// Serve the operators' pages (`/fleet`, `/fleet/device/KEY`, `/metrics`) to holders of
        /// the token in FILE (at least 32 printable characters), as `Authorization: Bearer` or
        /// through `/login`. Without it they are not served.
        #[arg(long, value_name = "FILE")]
        operator_token: Option<PathBuf>,
        /// Seconds without a report after which the pages show a device as quiet.
        #[arg(long, value_name = "SECS", default_value_t = web::DEFAULT_STALE_AFTER)]
        stale_after: u64,
        /// Tell host organisations: the site configs (`*.toml`) whose `[host]` sections name
        /// the contacts; notices go out on verified installation reports and when a box goes
        /// quiet. Needs --notice-key.
        #[arg(long, value_name = "DIR", requires = "notice_key")]
        sites: Option<PathBuf>,
        /// The Ed25519 key (PEM) notices are signed with; hosts check them with its public
        /// half (`home verify-notice --notice-pubkey`).
        #[arg(long, value_name = "KEY", requires = "sites")]
        notice_key: Option<PathBuf>,
        /// SMTP relay for e-mail notices, `HOST[:PORT]` (port 587; STARTTLS required).
        #[arg(long, value_name = "HOST[:PORT]")]
        smtp_relay: Option<String>,
        /// Sender of e-mail notices.
        #[arg(long, value_name = "ADDRESS", default_value = "imrs-notices@localhost")]
        smtp_from: String,
        /// Trust only the CA certificates in FILE (PEM) for webhooks and the SMTP relay
        /// (default: the public web PKI).
        #[arg(long, value_name = "FILE")]
        notice_ca: Option<PathBuf>,
        /// Attempts per notice and recipient before the receiver gives up (and records it).
        #[arg(long, value_name = "N", default_value_t = notify::DEFAULT_ATTEMPTS)]
        notice_attempts: u32,
        /// Seconds to wait after a failed attempt; doubled after each further failure, at most
        /// an hour.
        #[arg(long, value_name = "SECS", default_value_t = notify::DEFAULT_BACKOFF_S)]
        notice_backoff: u64,
        /// Seconds one delivery attempt may take.
        #[arg(long, value_name = "SECS", default_value_t = notify::deliver::DEFAULT_TIMEOUT.as_secs())]
        notice_timeout: u64,
    },
    /// Check a notice a host received: the receiver's signature over it (against
    /// --notice-pubkey when given), the device's signature over the report inside, and that
    /// the notice says what the report says.
    VerifyNotice {
        /// The notice (the webhook's body, or the e-mail's notice.json).
        file: PathBuf,
        /// The receiver's notice public key (PEM), as ICANN published it.
        #[arg(long, value_name = "PUB")]
        notice_pubkey: Option<PathBuf>,
    },
    /// Show the fleet: each device's latest report, then the latest rejected submissions.
    List {
        /// SQLite database written by `home serve`.
        #[arg(long)]
        db: PathBuf,
        /// How many rejected submissions to show (newest first).
        #[arg(long, default_value_t = 20)]
        rejected: usize,
        /// Flag devices nothing arrived from for more than SECS (a heartbeat period or two:
        /// 600 at the default 300 s): they are listed first, and the command fails (exit 3,
        /// the fleet in the failure's details with --json) when any is.
        #[arg(long, value_name = "SECS")]
        stale: Option<u64>,
    },
}

/// Runs a `home` subcommand; `json` selects machine-readable output on stdout.
pub fn run(cmd: HomeCommand, json: bool) -> Result<u8> {
    match cmd {
        HomeCommand::Serve {
            listen,
            db,
            tls_cert,
            tls_key,
            enrolled,
            open_enrolment,
            max_body,
            max_connections,
            idle_timeout,
            client_connections,
            client_rate,
            client_burst,
            rejected_per_source,
            rejected_total,
            operator_token,
            stale_after,
            sites,
            notice_key,
            smtp_relay,
            smtp_from,
            notice_ca,
            notice_attempts,
            notice_backoff,
            notice_timeout,
        } => {
            let enrolment = match (enrolled, open_enrolment) {
                (Some(dir), false) => EnrolmentMode::Folder(dir),
                (None, true) => EnrolmentMode::Open,
                // clap enforces exactly one; say so if that ever changes.
                _ => bail!("give exactly one of --enrolled DIR and --open-enrolment"),
            };
            if !(client_rate.is_finite() && client_rate > 0.0) {
                bail!(
                    "--client-rate {client_rate}: must be a positive number of requests per second"
                );
            }
            let cfg = server::ServeConfig {
                limits: server::Limits {
                    max_body,
                    connections: max_connections,
                    idle_timeout: Duration::from_secs(idle_timeout.max(1)),
                    per_client: ClientLimits {
                        connections: client_connections,
                        rate: client_rate,
                        burst: client_burst,
                    },
                },
                rejected: RejectedCaps {
                    per_source: rejected_per_source,
                    total: rejected_total,
                },
                log: true,
                operator_token,
                stale_after,
                notify: match (sites, notice_key) {
                    (Some(sites), Some(key)) => Some(notify::NotifyConfig {
                        sites,
                        key,
                        smtp_relay,
                        smtp_from,
                        ca: notice_ca,
                        attempts: notice_attempts,
                        backoff: Duration::from_secs(notice_backoff.max(1)),
                        timeout: Duration::from_secs(notice_timeout.max(1)),
                    }),
                    _ => None,
                },
                ..server::ServeConfig::new(listen, db, tls_cert, tls_key, enrolment)
            };
            serve(&cfg, json)
        }
        HomeCommand::VerifyNotice {
            file,
            notice_pubkey,
        } => verify_notice(&file, notice_pubkey.as_deref(), json),
        HomeCommand::List {
            db,
            rejected,
            stale,
        } => {
            let mut fleet = store::fleet(&db, rejected)?;
            if let Some(secs) = stale {
                store::mark_quiet(&mut fleet, jiff::Timestamp::now().as_second(), secs);
                fleet.devices.sort_by_key(|d| !d.quiet);
            }
            let quiet: Vec<&str> = fleet
                .devices
                .iter()
                .filter(|d| d.quiet)
                .map(|d| d.device.as_str())
                .collect();
            if !quiet.is_empty() {
                // The fleet still goes out: in the failure's details with --json, as the
                // table otherwise.
                if !json {
                    print!("{}", render(&fleet));
                }
                let message = format!(
                    "{} device(s) heard from more than {} s ago: {}{}",
                    quiet.len(),
                    stale.unwrap_or(0),
                    quiet
                        .iter()
                        .take(10)
                        .map(|k| imrs_config::escape(k))
                        .collect::<Vec<_>>()
                        .join(", "),
                    if quiet.len() > 10 { ", ..." } else { "" }
                );
                return Err(crate::ui::Failure::new(crate::EXIT_VERIFY, message)
                    .with_details(serde_json::to_value(&fleet)?)
                    .into());
            }
            if json {
                crate::ui::print_ok(&fleet)?;
            } else {
                print!("{}", render(&fleet));
            }
            Ok(0)
        }
    }
}

fn verify_notice(
    file: &std::path::Path,
    pubkey: Option<&std::path::Path>,
    json: bool,
) -> Result<u8> {
    let body = std::fs::read(file).with_context(|| format!("{}: cannot read", file.display()))?;
    let expected = pubkey.map(imrs_config::keys::read_public).transpose()?;
    let (n, report) = match notify::notice::verify(&body, expected.as_ref()) {
        Ok(v) => v,
        Err(e) => {
            return Err(crate::ui::Failure::new(
                crate::EXIT_VERIFY,
                format!("{}: {}", file.display(), imrs_config::error_chain(&e)),
            )
            .into());
        }
    };
    let signer = if expected.is_some() {
        "the expected receiver key"
    } else {
        "the key inside it (give --notice-pubkey to pin the receiver's key)"
    };
    if json {
        crate::ui::print_ok(serde_json::json!({
            "notice": n.id, "kind": n.kind.name(), "site_id": n.site_id,
            "instance": n.instance, "device_key": n.device_key, "serial": n.serial,
            "image": n.image, "manifest_sha256": n.manifest_sha256, "zone_serial": n.zone_serial,
            "announced": n.announced, "report": report.id.to_string(),
            "receiver_key_pinned": expected.is_some(),
        }))?;
    } else {
        println!(
            "notice {} verified: signed by {signer}; the device's report {} verifies and says the same",
            n.id, report.id
        );
        print!("{}", n.text());
    }
    Ok(0)
}

fn serve(cfg: &server::ServeConfig, json: bool) -> Result<u8> {
    let tls = server::tls_config(&cfg.tls_cert, &cfg.tls_key)?;
    let receiver = Arc::new(receiver::Receiver::open(cfg)?);
    let rt = server::runtime()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("cannot listen on {}", cfg.listen))?;
        let addr = listener.local_addr()?;
        if json {
            crate::ui::print_ok_line(
                serde_json::json!({"listening": addr.to_string(), "db": cfg.db,
                                   "enrolment": if receiver.enrolled().is_some() { "enrolled" } else { "open" },
                                   "enrolled": receiver.enrolled()}),
            )?;
        } else {
            println!("listening on https://{addr}");
        }
        match receiver.enrolled() {
            Some(n) => eprintln!("enrolment on: {n} device key(s)"),
            None => eprintln!(
                "WARNING: OPEN ENROLMENT: any correctly signed report from any device key is \
                 accepted and stored (listed as unenrolled); anyone who can reach {addr} can add \
                 devices to this fleet. For a real fleet, use --enrolled DIR."
            ),
        }
        use std::io::Write;
        std::io::stdout().flush()?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot watch SIGTERM")?;
        let stop = async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
        };
        server::serve(listener, tls, receiver, cfg.limits, stop).await;
        eprintln!("home: stopped");
        anyhow::Ok(())
    })?;
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    Ok(0)
}
