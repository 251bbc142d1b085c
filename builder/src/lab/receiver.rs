//! The phone-home receiver of the lab: `imrs-build home serve` (this very program) inside the
//! namespace, on the host and port of the site's `phone_home.url`, with the lab's certificate,
//! in open enrolment (the lab does not know the device key before the guest makes it), serving
//! the operators' pages and telling the lab's host organisation ([`super::notices`]).
//! Reports are read back through the receiver's store ([`crate::home::store`]): only verified
//! reports are stored, so a row is a verified report.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::home::store::{self, StoreError};
use crate::host::netns::NetNs;
use crate::host::process::{Daemon, wait_for};

use super::site::Tls;

/// One stored (verified) report.
pub use crate::home::store::ReportRow as StoredReport;

/// `home serve`, stopped with SIGTERM (then killed) when dropped.
#[derive(Debug)]
pub struct Receiver {
    daemon: Daemon,
    db: PathBuf,
    listen: SocketAddr,
}

impl Receiver {
    /// Starts `exe home serve` in `ns` listening on `listen`, database `db`, with `extra` flags
    /// (the operators' pages, the host's notices), and waits until it says it listens.
    pub fn start(
        ns: &NetNs,
        exe: &Path,
        dir: &Path,
        db: &Path,
        listen: SocketAddr,
        tls: &Tls,
        extra: &[std::ffi::OsString],
    ) -> Result<Receiver> {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: mkdir", dir.display()))?;
        let mut cmd = ns.command(exe);
        cmd.args(["home", "serve", "--open-enrolment"])
            .args(["--listen", &listen.to_string(), "--db"])
            .arg(db)
            .arg("--tls-cert")
            .arg(&tls.cert)
            .arg("--tls-key")
            .arg(&tls.key)
            .args(extra);
        let log = dir.join("receiver.log");
        let mut daemon = Daemon::spawn("receiver (imrs-build home serve)", &mut cmd, &log)?;
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

/// Every verified report in `db`, oldest first, and the number of rejected submissions (kept
/// and dropped). A database not created yet has none.
pub fn reports(db: &Path) -> Result<(Vec<StoredReport>, u64)> {
    let missing = |e: &StoreError| matches!(e, StoreError::Missing { .. });
    let rows = match store::reports(db) {
        Err(e) if missing(&e) => return Ok((Vec::new(), 0)),
        r => r?,
    };
    let rejected = store::rejected_counts(db)?;
    Ok((rows, rejected.total()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::home::store::{NewReport, RejectedCaps, Rejection, Store};

    #[test]
    fn reads_the_receivers_store() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("reports.sqlite");
        assert_eq!(reports(&db).unwrap(), (Vec::new(), 0));
        let store = Store::start(&db, RejectedCaps::default()).unwrap();
        let r = NewReport {
            id: "r1".into(),
            key_id: "k1".into(),
            public_key: "pk".into(),
            serial: "s".into(),
            profile: "qemu".into(),
            site_id: "lab-01".into(),
            instance: "i".into(),
            event: "install-failed".into(),
            failed_stage: Some("zone".into()),
            failed_reason: Some("ZONEMD mismatch".into()),
            zone_serial: None,
            image: "imrs-qemu 0.1.0".into(),
            lab: true,
            created_unix: 1,
            received_unix: 2,
            peer: "192.0.2.10:5000".into(),
            report: r#"{"event": {"kind": "slot-changed", "previous_slot": "b"},
                "slot": {"running": "a", "fallback": "slot b on trial gave up"}}"#
                .into(),
            signature: "x".into(),
            digest: "d".into(),
            enrolled: false,
            resolution: None,
        };
        store.submit(r).unwrap().blocking_recv().unwrap().unwrap();
        store.reject(Rejection {
            received_unix: 3,
            peer: "192.0.2.10:5001".into(),
            source: "192.0.2.10".into(),
            status: 400,
            reason: "malformed: bad".into(),
            key_id: None,
            report_id: None,
            serial: None,
            site_id: None,
        });
        drop(store);
        let (r, rejected) = reports(&db).unwrap();
        assert_eq!(rejected, 1);
        assert_eq!(r.len(), 1);
        assert!(r[0].is_install());
        assert_eq!(r[0].failed_stage.as_deref(), Some("zone"));
        assert_eq!(r[0].device, "k1");
        // Slot fields come from the stored report text.
        assert_eq!(r[0].slot.as_deref(), Some("a"));
        assert_eq!(r[0].previous_slot.as_deref(), Some("b"));
        assert_eq!(r[0].fallback.as_deref(), Some("slot b on trial gave up"));
    }
}
