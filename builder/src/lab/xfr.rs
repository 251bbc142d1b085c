//! The lab's root zone transfer server: NSD inside the namespace serving `.` from the lab's
//! verified zone ([`super::zone`]: the bundled real root zone, a file or the live zone) or a
//! tampered copy of it, on every `zone.servers` address of the site, with `provide-xfr` to the
//! guest's addresses only (NOKEY).
//!
//! The tampered copy changes one glue A record: glue is not signed, so only ZONEMD catches it
//! (testdata/rootzone/README.md); a correct appliance refuses the zone.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::netns::NetNs;
use super::plan::Plan;
use super::probe::{self, Transport};
use super::proc::{Daemon, wait_for};
use super::zone::LabZone;

/// NSD.
pub const NSD: &str = "/usr/sbin/nsd";

/// What was changed in a tampered copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tampering {
    /// Owner of the changed A record.
    pub owner: String,
    /// Original address.
    pub from: String,
    /// Address served instead.
    pub to: String,
}

/// `text` with the first glue A record (an A record not owned by `.`) given another address.
pub fn tamper(text: &str) -> Result<(String, Tampering)> {
    let mut out = String::with_capacity(text.len());
    let mut done: Option<Tampering> = None;
    for line in text.split_inclusive('\n') {
        if done.is_none() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if let [owner, _ttl, "IN", "A", addr] = fields.as_slice()
                && *owner != "."
                && let Ok(ip) = addr.parse::<std::net::Ipv4Addr>()
            {
                let o = ip.octets();
                let new = std::net::Ipv4Addr::new(o[0], o[1], o[2], o[3].wrapping_add(1));
                let body = line.trim_end_matches('\n');
                let cut = body.len() - addr.len();
                out.push_str(&body[..cut]);
                out.push_str(&new.to_string());
                out.push('\n');
                done = Some(Tampering {
                    owner: owner.to_string(),
                    from: addr.to_string(),
                    to: new.to_string(),
                });
                continue;
            }
        }
        out.push_str(line);
    }
    let t = done.ok_or_else(|| anyhow::anyhow!("the zone has no glue A record to change"))?;
    Ok((out, t))
}

/// The NSD configuration: listen on `listen`, serve `.` from `zonefile`, transfers to `guests`.
pub fn nsd_conf(dir: &Path, zonefile: &Path, listen: &[SocketAddr], guests: &[String]) -> String {
    let d = dir.display();
    let mut c = String::from("server:\n");
    for l in listen {
        c += &format!("  ip-address: {}@{}\n", l.ip(), l.port());
    }
    c += &format!(
        "  username: \"\"\n  chroot: \"\"\n  zonesdir: \"{d}\"\n  pidfile: \"{d}/nsd.pid\"\n  \
         database: \"\"\n  xfrdfile: \"{d}/xfrd.state\"\n  zonelistfile: \"{d}/zone.list\"\n  \
         logfile: \"{d}/nsd.log\"\n  server-count: 1\n  verbosity: 1\n  \
         identity: \"imrs-lab-xfr\"\nremote-control:\n  control-enable: no\n\
         zone:\n  name: \".\"\n  zonefile: \"{}\"\n",
        zonefile.display()
    );
    for g in guests {
        c += &format!("  provide-xfr: {g} NOKEY\n");
    }
    c
}

/// NSD serving the root zone, killed when dropped.
#[derive(Debug)]
pub struct XfrServer {
    daemon: Daemon,
    /// What was changed (tampered-zone), if anything.
    pub tampering: Option<Tampering>,
}

impl XfrServer {
    /// Starts NSD in `ns` from `dir`, serving `zone` (or a tampered copy), and waits (up to
    /// 60 s) until it answers `. SOA` with the zone's serial on its first address.
    pub fn start(
        ns: &NetNs,
        dir: &Path,
        plan: &Plan,
        zone: &LabZone,
        tampered: bool,
    ) -> Result<XfrServer> {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: mkdir", dir.display()))?;
        let src = zone.file.clone();
        let serial = zone.serial;
        let (zonefile, tampering) = if tampered {
            let text = std::fs::read_to_string(&src)
                .with_context(|| format!("{}: cannot read", src.display()))?;
            let (new, t) = tamper(&text).with_context(|| src.display().to_string())?;
            let p = dir.join("root.zone.tampered");
            std::fs::write(&p, new).with_context(|| format!("{}: cannot write", p.display()))?;
            (p, Some(t))
        } else {
            (src, None)
        };
        let guests = [
            plan.guest_v4.addr().to_string(),
            plan.guest_v6.addr().to_string(),
        ];
        let conf = dir.join("nsd.conf");
        std::fs::write(&conf, nsd_conf(dir, &zonefile, &plan.xfr, &guests))
            .with_context(|| format!("{}: cannot write", conf.display()))?;
        let mut cmd = ns.command(NSD);
        cmd.arg("-d").arg("-c").arg(&conf);
        let mut daemon = Daemon::spawn("nsd", cmd, &dir.join("nsd.stderr"))?;
        let first = plan.xfr[0];
        let ready = wait_for(Duration::from_secs(60), Duration::from_millis(200), || {
            if !daemon.running() {
                return Some(false);
            }
            let a = ns
                .run_inside(move || probe::soa(first, Transport::Udp, Duration::from_millis(500)))
                .ok()?;
            (a.ok() && a.serial == Some(serial)).then_some(true)
        });
        match ready {
            Some(true) => Ok(XfrServer { daemon, tampering }),
            _ => {
                let log = std::fs::read_to_string(dir.join("nsd.log")).unwrap_or_default();
                daemon.ensure_running()?;
                bail!(
                    "NSD did not serve serial {serial} on {first} within 60 s; nsd.log:\n{}",
                    log.lines().rev().take(15).collect::<Vec<_>>().join("\n")
                )
            }
        }
    }

    /// Fails if NSD stopped.
    pub fn ensure_running(&mut self) -> Result<()> {
        self.daemon.ensure_running()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tampering_changes_exactly_one_glue_address() {
        let text = ".\t\t\t86400\tIN\tSOA\ta. b. 1 2 3 4 5\n\
                    .\t\t\t518400\tIN\tNS\ta.root-servers.net.\n\
                    a.nic.aaa.\t\t172800\tIN\tA\t37.209.192.9\n\
                    b.nic.aaa.\t\t172800\tIN\tA\t37.209.194.9\n";
        let (new, t) = tamper(text).unwrap();
        assert_eq!(t.owner, "a.nic.aaa.");
        assert_eq!(
            (t.from.as_str(), t.to.as_str()),
            ("37.209.192.9", "37.209.192.10")
        );
        assert!(new.contains("a.nic.aaa.\t\t172800\tIN\tA\t37.209.192.10\n"));
        assert!(new.contains("b.nic.aaa.\t\t172800\tIN\tA\t37.209.194.9\n"));
        assert_eq!(new.lines().count(), text.lines().count());
        assert!(tamper(".\t1\tIN\tA\t192.0.2.1\n").is_err());
    }

    #[test]
    fn tampers_the_real_zone() {
        let p = crate::workspace::this_checkout().join("testdata/rootzone/root.zone.2026073102");
        let text = std::fs::read_to_string(p).unwrap();
        let (new, t) = tamper(&text).unwrap();
        assert_eq!(new.len(), text.len() + t.to.len() - t.from.len());
    }

    #[test]
    fn nsd_conf_lists_listeners_and_transfers() {
        let c = nsd_conf(
            Path::new("/tmp/x"),
            Path::new("/z/root.zone"),
            &[
                "192.0.2.53:53".parse().unwrap(),
                "[2001:db8:1::53]:53".parse().unwrap(),
            ],
            &["192.0.2.10".into(), "2001:db8:1::10".into()],
        );
        assert!(c.contains("ip-address: 192.0.2.53@53\n"), "{c}");
        assert!(c.contains("ip-address: 2001:db8:1::53@53\n"), "{c}");
        assert!(c.contains("provide-xfr: 2001:db8:1::10 NOKEY\n"), "{c}");
        assert!(c.contains("zonefile: \"/z/root.zone\""), "{c}");
    }
}
