//! The host organisation's router: FRR (zebra + bgpd) inside the lab namespace, run directly
//! from a private state folder owned by `frr` (docs/lab-notes.md: without systemd; zebra is needed for
//! IPv6 routes with link-local next hops). It peers with the appliance on both families, accepts
//! everything (`no bgp ebgp-requires-policy`) and is read with `vtysh ... json`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::netns::NetNs;
use super::plan::Plan;
use super::proc::{Daemon, run, wait_for};

/// FRR's zebra.
pub const ZEBRA: &str = "/usr/lib/frr/zebra";
/// FRR's bgpd.
pub const BGPD: &str = "/usr/lib/frr/bgpd";
/// FRR's shell.
pub const VTYSH: &str = "/usr/bin/vtysh";

/// A route as the router holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    /// Prefix.
    pub prefix: String,
    /// The origin AS (last AS of the path), if the path is not empty.
    pub origin_as: Option<u32>,
    /// AS path as FRR prints it.
    pub as_path: String,
    /// Valid (next hop resolved).
    pub valid: bool,
    /// FRR's best path.
    pub best: bool,
}

/// zebra + bgpd, stopped (bgpd first) when dropped.
#[derive(Debug)]
pub struct Router {
    dir: PathBuf,
    ns: String,
    // Field order: bgpd is dropped (killed) before zebra.
    bgpd: Daemon,
    zebra: Daemon,
}

/// The bgpd configuration for `plan`: our AS and router id, every site neighbour as an eBGP
/// peer of AS 20144 activated in its own family, no import/export policy required, short timers.
pub fn bgpd_conf(plan: &Plan) -> String {
    let asn = plan.router_asn;
    let mut c = format!(
        "frr defaults traditional\nhostname imrs-lab-router\nlog stdout informational\n!\n\
         router bgp {asn}\n bgp router-id {}\n no bgp ebgp-requires-policy\n \
         no bgp default ipv4-unicast\n",
        plan.router_v4
    );
    let guests: Vec<IpAddr> = vec![plan.guest_v4.addr(), plan.guest_v6.addr()];
    for g in &guests {
        c += &format!(
            " neighbor {g} remote-as {}\n neighbor {g} timers 3 9\n neighbor {g} timers connect 1\n",
            imrs_config::imrs::IMRS_ASN
        );
    }
    for (fam, v6) in [("ipv4", false), ("ipv6", true)] {
        c += &format!(" address-family {fam} unicast\n");
        for g in guests.iter().filter(|g| g.is_ipv6() == v6) {
            c += &format!("  neighbor {g} activate\n");
        }
        c += " exit-address-family\n";
    }
    c + "!\n"
}

impl Router {
    /// Starts zebra and bgpd inside `ns` from `dir` and waits until bgpd answers.
    pub fn start(ns: &NetNs, dir: &Path, plan: &Plan) -> Result<Router> {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: mkdir", dir.display()))?;
        let conf = dir.join("bgpd.conf");
        std::fs::write(&conf, bgpd_conf(plan))
            .with_context(|| format!("{}: cannot write", conf.display()))?;
        run(Command::new("chown").args(["-R", "frr:frr"]).arg(dir))
            .context("FRR's state folder must belong to the frr user (install frr)")?;
        let d = |p: &str| dir.join(p).to_string_lossy().into_owned();
        let mut zc = ns.command(ZEBRA);
        zc.args(["-u", "frr", "-g", "frr", "-z", &d("zserv.api"), "-i"])
            .args([&d("zebra.pid"), "--vty_socket", &d(""), "-P", "0"]);
        let mut zebra = Daemon::spawn("zebra", zc, &dir.join("zebra.log"))?;
        let api = dir.join("zserv.api");
        if wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
            api.exists().then_some(())
        })
        .is_none()
        {
            zebra.ensure_running()?;
            bail!("zebra did not create {} within 10 s", api.display());
        }
        let mut bc = ns.command(BGPD);
        bc.args(["-u", "frr", "-g", "frr", "-S", "-f", &d("bgpd.conf")])
            .args(["-z", &d("zserv.api"), "-i", &d("bgpd.pid")])
            .args(["--vty_socket", &d(""), "-P", "0"]);
        let bgpd = Daemon::spawn("bgpd", bc, &dir.join("bgpd.log"))?;
        let mut r = Router {
            dir: dir.to_path_buf(),
            ns: ns.name().to_string(),
            bgpd,
            zebra,
        };
        if wait_for(Duration::from_secs(15), Duration::from_millis(100), || {
            r.routes_of("ipv4").ok()
        })
        .is_none()
        {
            r.bgpd.ensure_running()?;
            r.zebra.ensure_running()?;
            bail!(
                "bgpd did not answer vtysh within 15 s; see {}",
                r.bgpd.log_path().display()
            );
        }
        Ok(r)
    }

    /// Runs one vtysh command against this router.
    pub fn vtysh(&self, command: &str) -> Result<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns, VTYSH, "--vty_socket"])
            .arg(&self.dir)
            .args(["-c", command])
            .stdin(std::process::Stdio::null())
            .output()
            .context("cannot run vtysh")?;
        if !out.status.success() {
            bail!(
                "vtysh -c {command:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The routes of one family (`ipv4`, `ipv6`).
    pub fn routes_of(&self, family: &str) -> Result<Vec<Route>> {
        let text = self.vtysh(&format!("show bgp {family} unicast json"))?;
        parse_routes(&text)
    }

    /// Every route the router learned, both families.
    pub fn routes(&self) -> Result<Vec<Route>> {
        let mut all = self.routes_of("ipv4")?;
        all.extend(self.routes_of("ipv6")?);
        Ok(all)
    }

    /// The BGP neighbours' states (`show bgp summary`), for the summary on failure.
    pub fn neighbor_states(&self) -> Vec<(String, String)> {
        let Ok(text) = self.vtysh("show bgp neighbors json") else {
            return Vec::new();
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
            return Vec::new();
        };
        v.as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, n)| {
                        (
                            k.clone(),
                            n["bgpState"].as_str().unwrap_or("unknown").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Fails naming the daemon whose process ended.
    pub fn ensure_running(&mut self) -> Result<()> {
        self.zebra.ensure_running()?;
        self.bgpd.ensure_running()
    }
}

/// Parses `show bgp <family> unicast json`: every path of every prefix.
pub fn parse_routes(text: &str) -> Result<Vec<Route>> {
    let v: serde_json::Value =
        serde_json::from_str(text).with_context(|| format!("vtysh: not JSON: {text:.200}"))?;
    let Some(routes) = v.get("routes").and_then(|r| r.as_object()) else {
        bail!("vtysh: no \"routes\" in {text:.200}");
    };
    let mut out = Vec::new();
    for (prefix, paths) in routes {
        for p in paths.as_array().into_iter().flatten() {
            let as_path = p["path"].as_str().unwrap_or("").to_string();
            out.push(Route {
                prefix: prefix.clone(),
                origin_as: as_path
                    .split_whitespace()
                    .last()
                    .and_then(|a| a.trim_matches(['{', '}']).parse().ok()),
                as_path,
                valid: p["valid"].as_bool().unwrap_or(false),
                best: p["bestpath"].as_bool().unwrap_or(false),
            });
        }
    }
    Ok(out)
}

/// Whether `routes` holds `prefix` as a valid route originated by `asn`.
pub fn holds(routes: &[Route], prefix: &str, asn: u32) -> bool {
    routes
        .iter()
        .any(|r| r.prefix == prefix && r.valid && r.origin_as == Some(asn))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_frr_json() {
        let text = r#"{"vrfId":0,"routerId":"192.0.2.1","routes":{
            "199.7.82.0/23":[{"valid":true,"bestpath":true,"path":"20144","origin":"IGP"}],
            "199.7.83.0/24":[{"valid":true,"path":"20144"}],
            "203.0.113.0/24":[{"valid":false,"path":""}]}}"#;
        let r = parse_routes(text).unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].origin_as, Some(20144));
        assert!(r[0].best);
        assert!(holds(&r, "199.7.83.0/24", 20144));
        assert!(!holds(&r, "199.7.83.0/24", 64512));
        assert!(!holds(&r, "203.0.113.0/24", 20144));
        assert_eq!(r[2].origin_as, None);
        assert!(parse_routes("% Unknown command").is_err());
    }

    #[test]
    fn config_peers_with_the_guest() {
        let site = imrs_config::site::load(
            &crate::workspace::this_checkout().join("images/sites/lab.toml"),
        )
        .unwrap();
        let plan = Plan::from_site(&site).unwrap();
        let c = bgpd_conf(&plan);
        assert!(
            c.contains("router bgp 64512\n bgp router-id 192.0.2.1\n"),
            "{c}"
        );
        assert!(c.contains(" neighbor 192.0.2.10 remote-as 20144\n"), "{c}");
        assert!(
            c.contains(" neighbor 2001:db8:1::10 remote-as 20144\n"),
            "{c}"
        );
        assert!(c.contains("no bgp ebgp-requires-policy"), "{c}");
        let v6 = c.split("address-family ipv6").nth(1).unwrap();
        assert!(v6.contains("neighbor 2001:db8:1::10 activate"), "{c}");
        assert!(!v6.contains("neighbor 192.0.2.10 activate"), "{c}");
    }
}
