//! The host side's NTS server (RFC 8915): chronyd inside a namespace, serving NTS-KE and
//! authenticated NTP on every address of the namespace with a given certificate, killed when
//! dropped. It can serve a time other than the host's: chronyd runs with `-x` (it never touches
//! the system clock, which a namespace shares with the host) and takes the time given with
//! `chronyc settime` as its clock's offset (`manual`), so the lab's NTS server serves the
//! guest's pinned clock (the test zone's signature window), not the host's.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use jiff::Timestamp;

use super::netns::NetNs;
use super::process::{Daemon, wait_for};

/// chronyd.
pub const CHRONYD: &str = "/usr/sbin/chronyd";
/// chronyc (sets the served time).
pub const CHRONYC: &str = "/usr/bin/chronyc";

/// What the NTS server serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NtsConfig {
    /// Its certificate (PEM; the names the clients ask for).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// Its NTS-KE port (4460 is NTS's own).
    pub port: u16,
    /// The time it serves from the moment it starts (`None`: the host's).
    pub time: Option<Timestamp>,
}

/// The chronyd configuration for `cfg`, its files in `dir`.
pub fn chrony_conf(dir: &Path, cfg: &NtsConfig) -> String {
    let d = dir.display();
    format!(
        "local stratum 1\nmanual\nallow all\ncmdport 0\nbindcmdaddress {d}/control/chronyd.sock\n\
         pidfile {d}/chronyd.pid\nntsserverkey {}\nntsservercert {}\nntsport {}\n",
        cfg.key.display(),
        cfg.cert.display(),
        cfg.port
    )
}

/// chronyd serving NTS, killed when dropped.
#[derive(Debug)]
pub struct Nts {
    daemon: Daemon,
}

impl Nts {
    /// Starts chronyd in `ns` from `dir` (created; config, control socket and `chronyd.log`
    /// there) with `cfg`, and sets the time it serves. Returns once chronyd took the time (or,
    /// serving the host's, answers on its control socket).
    pub fn start(ns: &NetNs, dir: &Path, cfg: &NtsConfig) -> Result<Nts> {
        // chronyd refuses a control socket in a folder others can write to.
        let control = dir.join("control");
        std::fs::create_dir_all(&control)
            .with_context(|| format!("{}: mkdir", control.display()))?;
        std::fs::set_permissions(
            &control,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .with_context(|| format!("{}: chmod", control.display()))?;
        let conf = dir.join("chronyd.conf");
        imrs_config::fsutil::write_atomic(&conf, chrony_conf(dir, cfg).as_bytes(), 0o644)
            .with_context(|| format!("{}: cannot write", conf.display()))?;
        let mut daemon = Daemon::spawn(
            "chronyd (NTS server)",
            ns.command(CHRONYD)
                .args(["-d", "-x", "-u", "root", "-f"])
                .arg(&conf),
            &dir.join("chronyd.log"),
        )?;
        let socket = control.join("chronyd.sock");
        // `settime` takes local time: give chronyc UTC.
        let command = match cfg.time {
            Some(t) => format!("settime {}", t.strftime("%Y-%m-%d %H:%M:%S")),
            None => "tracking".into(),
        };
        let mut last = String::new();
        let done = wait_for(Duration::from_secs(20), Duration::from_millis(100), || {
            if !daemon.running() {
                return Some(false);
            }
            let out = Command::new(CHRONYC)
                .env("TZ", "UTC")
                .arg("-h")
                .arg(&socket)
                .arg(&command)
                .output()
                .ok()?;
            last = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            (out.status.success() && !last.contains("Could not open")).then_some(true)
        });
        if done != Some(true) {
            daemon.ensure_running()?;
            bail!(
                "chronyd (NTS server) did not take `{command}` on {} within 20 s ({}); the end \
                 of {}:\n{}",
                socket.display(),
                last.trim(),
                daemon.log_path().display(),
                daemon.log_tail(15)
            );
        }
        Ok(Nts { daemon })
    }

    /// Fails with the end of its log if chronyd stopped.
    pub fn ensure_running(&mut self) -> Result<()> {
        self.daemon.ensure_running()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chrony_conf_serves_nts_with_a_private_control_socket() {
        let c = chrony_conf(
            Path::new("/run/x"),
            &NtsConfig {
                cert: "/t/nts.pem".into(),
                key: "/t/nts.key".into(),
                port: 4460,
                time: None,
            },
        );
        assert!(c.contains("ntsservercert /t/nts.pem\n"), "{c}");
        assert!(c.contains("ntsserverkey /t/nts.key\n"), "{c}");
        assert!(c.contains("ntsport 4460\n"), "{c}");
        assert!(
            c.contains("manual\n") && c.contains("local stratum 1\n"),
            "{c}"
        );
        assert!(
            c.contains("bindcmdaddress /run/x/control/chronyd.sock\n") && c.contains("cmdport 0\n"),
            "{c}"
        );
    }
}
