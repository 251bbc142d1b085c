//! The phone-home receiver of the lab: `imrs-build home serve` (this very program) inside the
//! namespace, on the host and port of the site's `phone_home.url`, with the lab's certificate.
//! Reports are read back from its SQLite database (WAL allows it beside the serving process):
//! only verified reports are stored, so a row is a verified report.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::netns::NetNs;
use super::proc::{Daemon, wait_for};
use super::site::Tls;

/// One stored (verified) report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredReport {
    /// Report id.
    pub id: String,
    /// `install-passed`, `install-failed`, `boot`.
    pub event: String,
    /// Failed stage of an `install-failed`.
    pub failed_stage: Option<String>,
    /// Its reason.
    pub failed_reason: Option<String>,
    /// Zone serial in the report.
    pub zone_serial: Option<u32>,
    /// Receiver's time of arrival (Unix seconds).
    pub received_unix: i64,
    /// Device key id.
    pub device: String,
}

impl StoredReport {
    /// An installation report (`install-passed` or `install-failed`).
    pub fn is_install(&self) -> bool {
        self.event.starts_with("install-")
    }
}

/// `home serve`, stopped with SIGTERM (then killed) when dropped.
#[derive(Debug)]
pub struct Receiver {
    daemon: Daemon,
    db: PathBuf,
    listen: SocketAddr,
}

impl Receiver {
    /// Starts `exe home serve` in `ns` listening on `listen`, database `db`, and waits until it
    /// says it listens.
    pub fn start(
        ns: &NetNs,
        exe: &Path,
        dir: &Path,
        db: &Path,
        listen: SocketAddr,
        tls: &Tls,
    ) -> Result<Receiver> {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: mkdir", dir.display()))?;
        let mut cmd = ns.command(exe);
        cmd.args(["home", "serve", "--listen", &listen.to_string(), "--db"])
            .arg(db)
            .arg("--tls-cert")
            .arg(&tls.cert)
            .arg("--tls-key")
            .arg(&tls.key);
        let log = dir.join("receiver.log");
        let mut daemon = Daemon::spawn("receiver (imrs-build home serve)", cmd, &log)?;
        let up = wait_for(Duration::from_secs(20), Duration::from_millis(100), || {
            if !daemon.running() {
                return Some(false);
            }
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.contains("listening on").then_some(true)
        });
        if up != Some(true) {
            daemon.ensure_running()?;
            bail!(
                "the receiver did not listen on {listen} within 20 s; {}:\n{}",
                log.display(),
                daemon.log_tail(10)
            );
        }
        Ok(Receiver {
            daemon,
            db: db.to_path_buf(),
            listen,
        })
    }

    /// Where it listens.
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// Fails if it stopped.
    pub fn ensure_running(&mut self) -> Result<()> {
        self.daemon.ensure_running()
    }

    /// Stops it (SIGTERM, then SIGKILL after 3 s).
    pub fn stop(mut self) {
        self.daemon.stop(Duration::from_secs(3));
    }

    /// Its database.
    pub fn db(&self) -> &Path {
        &self.db
    }
}

/// Every verified report in `db`, oldest first, and the number of rejected submissions. A
/// missing database has none.
pub fn reports(db: &Path) -> Result<(Vec<StoredReport>, u64)> {
    if !db.exists() {
        return Ok((Vec::new(), 0));
    }
    let conn = crate::home::store::open(db)?;
    let ctx = || format!("{}: cannot read the reports", db.display());
    let mut stmt = conn
        .prepare(
            "SELECT id, event, failed_stage, failed_reason, zone_serial, received_unix, key_id
             FROM reports ORDER BY received_unix, rowid",
        )
        .with_context(ctx)?;
    let rows = stmt
        .query_map([], |r| {
            Ok(StoredReport {
                id: r.get(0)?,
                event: r.get(1)?,
                failed_stage: r.get(2)?,
                failed_reason: r.get(3)?,
                zone_serial: r.get(4)?,
                received_unix: r.get(5)?,
                device: r.get(6)?,
            })
        })
        .with_context(ctx)?
        .collect::<Result<Vec<_>, _>>()
        .with_context(ctx)?;
    let rejected: i64 = conn
        .query_row("SELECT COUNT(*) FROM rejected", [], |r| r.get(0))
        .with_context(ctx)?;
    Ok((rows, rejected.max(0).unsigned_abs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_receivers_schema() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("reports.sqlite");
        assert_eq!(reports(&db).unwrap(), (Vec::new(), 0));
        let conn = crate::home::store::open(&db).unwrap();
        conn.execute(
            "INSERT INTO reports (id, key_id, public_key, serial, profile, site_id, instance,
                 event, failed_stage, failed_reason, zone_serial, image, lab, created_unix,
                 received_unix, peer, report, signature, digest)
             VALUES ('r1', 'k1', 'pk', 's', 'qemu', 'lab-01', 'i', 'install-failed', 'zone',
                 'ZONEMD mismatch', NULL, 'imrs-qemu 0.1.0', 1, 1, 2, '192.0.2.10', '{}', 'x', 'd')",
            [],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO rejected (received_unix, peer, status, reason) VALUES (3, 'p', 400, 'bad')",
            [],
        )
        .unwrap();
        let (r, rejected) = reports(&db).unwrap();
        assert_eq!(rejected, 1);
        assert_eq!(r.len(), 1);
        assert!(r[0].is_install());
        assert_eq!(r[0].failed_stage.as_deref(), Some("zone"));
        assert_eq!(r[0].device, "k1");
    }
}
