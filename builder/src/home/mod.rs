//! `imrs-build home`: the receiving end of phone home. Appliances `POST` signed reports
//! (`imrs_config::report`) over HTTPS; `home serve` verifies and stores them in SQLite, and
//! `home list` shows the fleet: each device's latest report, and the submissions refused.
//!
//! - [`server`]: TLS, HTTP, limits, the serving loop.
//! - [`receiver`]: one submission: verification, enrolment, storage, the answer the device
//!   relies on.
//! - [`store`]: the SQLite database (WAL, group commit).
//! - [`fleet`]: the fleet query behind `home list`.
//! - [`enrol`]: the optional folder of enrolled device keys.

pub mod enrol;
pub mod fleet;
pub mod receiver;
pub mod server;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};

/// `imrs-build home ...`
#[derive(Debug, clap::Subcommand)]
pub enum HomeCommand {
    /// Receive phone-home reports over HTTPS: verify each signature, store it once per report
    /// id in SQLite; runs until SIGINT or SIGTERM.
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
        #[arg(long)]
        enrolled: Option<PathBuf>,
        /// Largest accepted request body in bytes.
        #[arg(long, default_value_t = server::DEFAULT_MAX_BODY)]
        max_body: usize,
    },
    /// Show the fleet: each device's latest report, then the latest rejected submissions.
    List {
        /// SQLite database written by `home serve`.
        #[arg(long)]
        db: PathBuf,
        /// How many rejected submissions to show (newest first).
        #[arg(long, default_value_t = 20)]
        rejected: usize,
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
            max_body,
        } => {
            let cfg = server::ServeConfig {
                listen,
                db,
                tls_cert,
                tls_key,
                enrolled,
                max_body,
                log: true,
            };
            serve(&cfg, json)
        }
        HomeCommand::List { db, rejected } => {
            let fleet = fleet::fleet(&db, rejected)?;
            if json {
                crate::ui::print_ok(&fleet)?;
            } else {
                print!("{}", render(&fleet));
            }
            Ok(0)
        }
    }
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
                                   "enrolled": receiver.enrolled()}),
            )?;
        } else {
            println!("listening on https://{addr}");
            match receiver.enrolled() {
                Some(n) => eprintln!("enrolment on: {n} device key(s)"),
                None => eprintln!("enrolment off: any correctly signed report is accepted"),
            }
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
        server::serve(listener, tls, receiver, stop).await;
        eprintln!("home: stopped");
        anyhow::Ok(())
    })?;
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    Ok(0)
}

fn when(unix: i64) -> String {
    jiff::Timestamp::from_second(unix)
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%SZ").to_string())
        .unwrap_or_else(|_| unix.to_string())
}

/// The fleet as a text table for people.
pub fn render(f: &fleet::Fleet) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let head = [
        "DEVICE",
        "SERIAL",
        "SITE",
        "INSTANCE",
        "LAST EVENT",
        "ZONE",
        "RECEIVED",
        "REPORTS",
    ];
    let rows: Vec<[String; 8]> = f
        .devices
        .iter()
        .map(|d| {
            let event = match (&d.failed_stage, &d.failed_reason) {
                (Some(s), Some(r)) => format!("{} ({s}: {r})", d.last_event),
                _ => d.last_event.clone(),
            };
            let site = if d.lab {
                format!("{} [lab]", d.site_id)
            } else {
                d.site_id.clone()
            };
            [
                d.device.clone(),
                d.serial.clone(),
                site,
                d.instance.clone(),
                event,
                d.zone_serial
                    .map(|z| z.to_string())
                    .unwrap_or_else(|| "-".into()),
                when(d.received_unix),
                d.reports.to_string(),
            ]
        })
        .collect();
    let mut width = head.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(width).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                let _ = write!(s, "{c:<w$}  ");
            }
        }
        s.trim_end().to_string()
    };
    let _ = writeln!(out, "{} device(s)", f.devices.len());
    if !rows.is_empty() {
        let _ = writeln!(out, "{}", line(&head));
        for r in &rows {
            let cells: Vec<&str> = r.iter().map(String::as_str).collect();
            let _ = writeln!(out, "{}", line(&cells));
        }
    }
    let _ = writeln!(
        out,
        "\n{} rejected submission(s){}",
        f.rejected_total,
        if f.rejected.len() as u64 == f.rejected_total {
            String::new()
        } else {
            format!(", latest {}", f.rejected.len())
        }
    );
    for r in &f.rejected {
        let _ = writeln!(
            out,
            "{}  {}  {}  device {}  report {}  serial {}  site {}  {}",
            when(r.received_unix),
            r.peer,
            r.status,
            r.key_id.as_deref().unwrap_or("-"),
            r.report_id.as_deref().unwrap_or("-"),
            r.serial.as_deref().unwrap_or("-"),
            r.site_id.as_deref().unwrap_or("-"),
            r.reason
        );
    }
    out
}
