//! The root zone transfer server of the host side: NSD inside a namespace serving `.` from a
//! zone file, on the given addresses, with `provide-xfr` (NOKEY) to the given addresses only,
//! killed when dropped. [`Xfr::start`] returns once NSD answers `. SOA` with the zone's serial
//! (authoritative) on its first address.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use imrs_zone::query::{self, Transport};

use super::netns::NetNs;
use super::process::{Daemon, wait_for};

/// NSD.
pub const NSD: &str = "/usr/sbin/nsd";

/// What the transfer server serves, where, and to whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XfrConfig {
    /// The zone file of `.`.
    pub zonefile: PathBuf,
    /// Its serial: the server is ready once it answers with it.
    pub serial: u32,
    /// Where it listens (address and port); at least one.
    pub listen: Vec<SocketAddr>,
    /// Who may transfer the zone.
    pub allow: Vec<IpAddr>,
}

/// The NSD configuration for `cfg`, its state files in `dir`, its log on stderr.
pub fn nsd_conf(dir: &Path, cfg: &XfrConfig) -> String {
    let d = dir.display();
    let mut c = String::from("server:\n");
    for l in &cfg.listen {
        c += &format!("  ip-address: {}@{}\n", l.ip(), l.port());
    }
    c += &format!(
        "  username: \"\"\n  chroot: \"\"\n  zonesdir: \"{d}\"\n  pidfile: \"{d}/nsd.pid\"\n  \
         database: \"\"\n  xfrdfile: \"{d}/xfrd.state\"\n  zonelistfile: \"{d}/zone.list\"\n  \
         server-count: 1\n  verbosity: 1\n  identity: \"imrs-host-xfr\"\n\
         remote-control:\n  control-enable: no\n\
         zone:\n  name: \".\"\n  zonefile: \"{}\"\n",
        cfg.zonefile.display()
    );
    for a in &cfg.allow {
        c += &format!("  provide-xfr: {a} NOKEY\n");
    }
    c
}

/// NSD serving the root zone, killed when dropped.
#[derive(Debug)]
pub struct Xfr {
    daemon: Daemon,
}

impl Xfr {
    /// Starts NSD in `ns` from `dir` (created; config, state and `nsd.log` there) with `cfg` and
    /// waits (up to 60 s: the root zone takes a few seconds to load) until it answers `. SOA`
    /// with `cfg.serial` on its first address.
    pub fn start(ns: &NetNs, dir: &Path, cfg: &XfrConfig) -> Result<Xfr> {
        let Some(&first) = cfg.listen.first() else {
            bail!("transfer server: no listen address");
        };
        std::fs::create_dir_all(dir).with_context(|| format!("{}: mkdir", dir.display()))?;
        let conf = dir.join("nsd.conf");
        imrs_config::fsutil::write_atomic(&conf, nsd_conf(dir, cfg).as_bytes(), 0o644)
            .with_context(|| format!("{}: cannot write", conf.display()))?;
        let mut daemon = Daemon::spawn(
            "nsd",
            ns.command(NSD).arg("-d").arg("-c").arg(&conf),
            &dir.join("nsd.log"),
        )?;
        let serial = cfg.serial;
        let ready = wait_for(Duration::from_secs(60), Duration::from_millis(200), || {
            if !daemon.running() {
                return Some(false);
            }
            let r = ns
                .run_inside(|| query::root_soa(first, Transport::Udp, Duration::from_millis(500)))
                .ok()?
                .ok()?;
            (r.message.header().aa() && r.root_soa_serial() == Some(serial)).then_some(true)
        });
        if ready != Some(true) {
            daemon.ensure_running()?;
            bail!(
                "NSD did not serve serial {serial} on {first} within 60 s; the end of {}:\n{}",
                daemon.log_path().display(),
                daemon.log_tail(15)
            );
        }
        Ok(Xfr { daemon })
    }

    /// Fails with the end of its log if NSD stopped.
    pub fn ensure_running(&mut self) -> Result<()> {
        self.daemon.ensure_running()
    }

    /// Stops NSD now (the transfer server goes away).
    pub fn kill(&mut self) {
        self.daemon.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nsd_conf_lists_listeners_and_transfers() {
        let c = nsd_conf(
            Path::new("/run/x"),
            &XfrConfig {
                zonefile: "/z/root.zone".into(),
                serial: 1,
                listen: vec![
                    "192.0.2.53:53".parse().unwrap(),
                    "[2001:db8:1::53]:5353".parse().unwrap(),
                ],
                allow: vec![
                    "192.0.2.10".parse().unwrap(),
                    "2001:db8:1::10".parse().unwrap(),
                ],
            },
        );
        assert!(c.contains("ip-address: 192.0.2.53@53\n"), "{c}");
        assert!(c.contains("ip-address: 2001:db8:1::53@5353\n"), "{c}");
        assert!(c.contains("provide-xfr: 192.0.2.10 NOKEY\n"), "{c}");
        assert!(c.contains("provide-xfr: 2001:db8:1::10 NOKEY\n"), "{c}");
        assert!(c.contains("zonefile: \"/z/root.zone\""), "{c}");
        assert!(c.contains("pidfile: \"/run/x/nsd.pid\""), "{c}");
        assert!(!c.contains("logfile"), "the log goes to stderr: {c}");
    }
}
