//! The lab's root zone transfer server: NSD ([`crate::host::xfr`]) inside the namespace serving
//! `.` from the lab's verified zone ([`super::zone`]: the bundled real root zone, a file or the
//! live zone) or a tampered copy of it, on every `zone.servers` address of the site, with
//! `provide-xfr` to the guest's addresses only (NOKEY).
//!
//! The tampered copy changes one glue A record: glue is not signed, so only ZONEMD catches it
//! (testdata/rootzone/README.md); a correct appliance refuses the zone.

use std::path::Path;

use anyhow::{Context, Result};

use super::plan::Plan;
use super::zone::LabZone;
use crate::host::netns::NetNs;
use crate::host::xfr::{Xfr, XfrConfig};

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

/// NSD serving the lab's zone, killed when dropped.
#[derive(Debug)]
pub struct XfrServer {
    xfr: Xfr,
    /// What was changed (tampered-zone), if anything.
    pub tampering: Option<Tampering>,
}

impl XfrServer {
    /// Starts NSD in `ns` from `dir`, serving `zone` (or a tampered copy), and waits until it
    /// answers `. SOA` with the zone's serial on its first address.
    pub fn start(
        ns: &NetNs,
        dir: &Path,
        plan: &Plan,
        zone: &LabZone,
        tampered: bool,
    ) -> Result<XfrServer> {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: mkdir", dir.display()))?;
        let src = zone.file.clone();
        let (zonefile, tampering) = if tampered {
            let text = std::fs::read_to_string(&src)
                .with_context(|| format!("{}: cannot read", src.display()))?;
            let (new, t) = tamper(&text).with_context(|| src.display().to_string())?;
            let p = dir.join("root.zone.tampered");
            imrs_config::fsutil::write_atomic(&p, new.as_bytes(), 0o644)
                .with_context(|| format!("{}: cannot write", p.display()))?;
            (p, Some(t))
        } else {
            (src, None)
        };
        let cfg = XfrConfig {
            zonefile,
            serial: zone.serial,
            listen: plan.xfr.clone(),
            allow: vec![plan.guest_v4.addr(), plan.guest_v6.addr()],
        };
        let xfr = Xfr::start(ns, dir, &cfg)?;
        Ok(XfrServer { xfr, tampering })
    }

    /// Fails if NSD stopped.
    pub fn ensure_running(&mut self) -> Result<()> {
        self.xfr.ensure_running()
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
}
