//! FRR as the host's router: zebra + bgpd inside the namespace, run directly from a private
//! state folder owned by `frr` (docs/lab-notes.md: without systemd; zebra is needed for IPv6
//! routes with link-local next hops). It peers with every neighbour in its own family, accepts
//! everything (`no bgp ebgp-requires-policy`) and is read with `vtysh ... json`.
//!
//! FRR drops to the `frr` user, and its sockets' paths must fit `sun_path` (108 bytes): the state
//! (config, sockets, pid files) lives in the given folder when `frr` can reach it there, else in
//! a short folder under /tmp removed when the router stops. The logs stay in the given folder.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::{Family, Neighbor, Route, RouterConfig, SessionState, origin_as};
use crate::host::netns::NetNs;
use crate::host::process::{Daemon, run, wait_for};

/// FRR's zebra.
pub const ZEBRA: &str = "/usr/lib/frr/zebra";
/// FRR's bgpd.
pub const BGPD: &str = "/usr/lib/frr/bgpd";
/// FRR's shell.
pub const VTYSH: &str = "/usr/bin/vtysh";
/// Every FRR program the router needs.
pub const PROGRAMS: [&str; 3] = [ZEBRA, BGPD, VTYSH];

/// The bgpd configuration: AS and router id, every neighbour an eBGP peer activated in its own
/// family only, no import/export policy required, short timers (keepalive 3 s, hold 9 s,
/// connect retry 1 s).
pub fn bgpd_conf(cfg: &RouterConfig) -> String {
    let mut c = format!(
        "frr defaults traditional\nhostname imrs-host-router\nlog stdout informational\n!\n\
         router bgp {}\n bgp router-id {}\n no bgp ebgp-requires-policy\n \
         no bgp default ipv4-unicast\n",
        cfg.asn, cfg.router_id
    );
    for (addr, asn) in &cfg.neighbors {
        c += &format!(
            " neighbor {addr} remote-as {asn}\n neighbor {addr} timers 3 9\n \
             neighbor {addr} timers connect 1\n"
        );
    }
    for family in Family::ALL {
        c += &format!(" address-family {} unicast\n", family.name());
        for (addr, _) in cfg
            .neighbors
            .iter()
            .filter(|(a, _)| Family::of(*a) == family)
        {
            c += &format!("  neighbor {addr} activate\n");
        }
        c += " exit-address-family\n";
    }
    c + "!\n"
}

/// Where FRR keeps its config, sockets and pid files; removed when dropped if it is a folder
/// of its own under /tmp.
#[derive(Debug)]
struct StateDir {
    path: PathBuf,
    remove: bool,
}

impl Drop for StateDir {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

static SEQ: AtomicU32 = AtomicU32::new(0);

fn searchable_by_others(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.ancestors().all(|a| {
        a.as_os_str().is_empty()
            || std::fs::metadata(a).is_ok_and(|m| m.permissions().mode() & 0o001 != 0)
    })
}

/// `dir` itself when the `frr` user can reach it (every parent searchable by others) and the
/// longest socket path fits `sun_path`; else a fresh short folder under /tmp.
fn state_dir(dir: &Path) -> Result<StateDir> {
    let s = if dir.join("zebra.vty").as_os_str().len() < 100 && searchable_by_others(dir) {
        StateDir {
            path: dir.to_path_buf(),
            remove: false,
        }
    } else {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        StateDir {
            path: PathBuf::from(format!("/tmp/imrs-frr-{}-{n}", std::process::id())),
            remove: true,
        }
    };
    std::fs::create_dir_all(&s.path).with_context(|| format!("{}: mkdir", s.path.display()))?;
    Ok(s)
}

/// zebra + bgpd, stopped (bgpd first) when dropped.
#[derive(Debug)]
pub struct Frr {
    ns: String,
    // Field order: bgpd is dropped (killed) before zebra, both before their state folder.
    bgpd: Daemon,
    zebra: Daemon,
    state: StateDir,
}

impl Frr {
    /// Starts zebra and bgpd inside `ns` with `cfg` (logs in `dir`); [`super::Router::start`]
    /// waits until bgpd answers.
    pub(super) fn start(ns: &NetNs, dir: &Path, cfg: &RouterConfig) -> Result<Frr> {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: mkdir", dir.display()))?;
        let state = state_dir(dir)?;
        let conf = state.path.join("bgpd.conf");
        imrs_config::fsutil::write_atomic(&conf, bgpd_conf(cfg).as_bytes(), 0o644)
            .with_context(|| format!("{}: cannot write", conf.display()))?;
        run(Command::new("chown")
            .args(["-R", "frr:frr"])
            .arg(&state.path))
        .context("FRR's state folder must belong to the frr user (install frr)")?;
        let d = |p: &str| state.path.join(p).to_string_lossy().into_owned();
        let mut zebra = Daemon::spawn(
            "zebra",
            ns.command(ZEBRA)
                .args(["-u", "frr", "-g", "frr", "-z", &d("zserv.api"), "-i"])
                .args([&d("zebra.pid"), "--vty_socket", &d(""), "-P", "0"]),
            &dir.join("zebra.log"),
        )?;
        // bgpd connects to zebra's socket: wait for it.
        let api = state.path.join("zserv.api");
        if wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
            api.exists().then_some(())
        })
        .is_none()
        {
            zebra.ensure_running()?;
            bail!("zebra did not create {} within 10 s", api.display());
        }
        let bgpd = Daemon::spawn(
            "bgpd",
            ns.command(BGPD)
                .args(["-u", "frr", "-g", "frr", "-S", "-f", &d("bgpd.conf")])
                .args(["-z", &d("zserv.api"), "-i", &d("bgpd.pid")])
                .args(["--vty_socket", &d(""), "-P", "0"]),
            &dir.join("bgpd.log"),
        )?;
        Ok(Frr {
            ns: ns.name().to_string(),
            bgpd,
            zebra,
            state,
        })
    }

    /// Runs one vtysh command against this router; fails with its stderr.
    pub fn vtysh(&self, command: &str) -> Result<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns, VTYSH, "--vty_socket"])
            .arg(&self.state.path)
            .args(["-c", command])
            .stdin(std::process::Stdio::null())
            .output()
            .context("cannot run vtysh")?;
        if !out.status.success() {
            bail!(
                "vtysh -c {command:?} ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Every path of one family (`show bgp <family> unicast json`).
    pub fn routes_of(&self, family: Family) -> Result<Vec<Route>> {
        parse_routes(&self.vtysh(&format!("show bgp {} unicast json", family.name()))?)
    }

    /// Every neighbour's session state (`show bgp neighbors json`).
    pub fn neighbor_states(&self) -> Result<Vec<Neighbor>> {
        parse_neighbors(&self.vtysh("show bgp neighbors json")?)
    }

    /// Whether zebra and bgpd both still run.
    pub fn running(&mut self) -> bool {
        self.zebra.running() && self.bgpd.running()
    }

    /// Fails naming the daemon whose process ended.
    pub fn ensure_running(&mut self) -> Result<()> {
        self.zebra.ensure_running()?;
        self.bgpd.ensure_running()
    }

    /// zebra's and bgpd's logs.
    pub fn logs(&self) -> String {
        format!("zebra:\n{}\nbgpd:\n{}", self.zebra.log(), self.bgpd.log())
    }
}

fn json(text: &str) -> Result<serde_json::Value> {
    serde_json::from_str(text).with_context(|| {
        format!(
            "vtysh: not JSON: {}",
            imrs_config::escape(&text.chars().take(200).collect::<String>())
        )
    })
}

/// Parses `show bgp <family> unicast json`: every path of every prefix.
pub fn parse_routes(text: &str) -> Result<Vec<Route>> {
    let v = json(text)?;
    let Some(routes) = v.get("routes").and_then(|r| r.as_object()) else {
        // No "routes" at all: bgpd answered something else (e.g. no BGP instance yet).
        bail!(
            "vtysh: no \"routes\" in {}",
            imrs_config::escape(&text.chars().take(200).collect::<String>())
        );
    };
    let mut out = Vec::new();
    for (prefix, paths) in routes {
        for p in paths.as_array().into_iter().flatten() {
            let as_path = p["path"].as_str().unwrap_or("").to_string();
            out.push(Route {
                prefix: prefix.clone(),
                origin_as: origin_as(&as_path),
                as_path,
                valid: p["valid"].as_bool().unwrap_or(false),
                best: p["bestpath"].as_bool().unwrap_or(false),
            });
        }
    }
    Ok(out)
}

/// Parses `show bgp neighbors json`: neighbour address -> `bgpState`.
pub fn parse_neighbors(text: &str) -> Result<Vec<Neighbor>> {
    let v = json(text)?;
    let Some(o) = v.as_object() else {
        bail!("vtysh: neighbours are not a JSON object");
    };
    Ok(o.iter()
        .filter_map(|(k, n)| {
            let address: IpAddr = k.parse().ok()?;
            Some(Neighbor {
                address,
                state: SessionState::from_name(n["bgpState"].as_str().unwrap_or("")),
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real output of FRR 8.4 (testdata/README.md).
    #[test]
    fn parses_captured_output() {
        super::super::check_captured(
            &parse_routes(include_str!("testdata/frr-ipv4.json")).unwrap(),
            &parse_routes(include_str!("testdata/frr-ipv6.json")).unwrap(),
            &parse_neighbors(include_str!("testdata/frr-neighbors.json")).unwrap(),
        );
    }

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
        assert!(!r[1].best);
        assert!(!r[2].valid);
        assert_eq!(r[2].origin_as, None);
        let e = parse_routes("% Unknown command\u{1b}[0m").unwrap_err();
        assert!(
            format!("{e:#}").contains("not JSON: % Unknown command\\u{1b}[0m"),
            "{e:#}"
        );
        assert!(parse_routes("{\"warning\":\"no BGP\"}").is_err());
    }

    #[test]
    fn config_peers_with_every_neighbour_in_its_family() {
        let c = bgpd_conf(&RouterConfig {
            asn: 64512,
            router_id: "192.0.2.1".parse().unwrap(),
            neighbors: vec![
                ("192.0.2.10".parse().unwrap(), 20144),
                ("2001:db8:1::10".parse().unwrap(), 20144),
            ],
        });
        assert!(
            c.contains("router bgp 64512\n bgp router-id 192.0.2.1\n"),
            "{c}"
        );
        assert!(c.contains(" neighbor 192.0.2.10 remote-as 20144\n"), "{c}");
        assert!(
            c.contains(" neighbor 2001:db8:1::10 remote-as 20144\n"),
            "{c}"
        );
        assert!(c.contains(" neighbor 2001:db8:1::10 timers 3 9\n"), "{c}");
        assert!(c.contains("no bgp ebgp-requires-policy"), "{c}");
        let v6 = c.split("address-family ipv6").nth(1).unwrap();
        assert!(v6.contains("neighbor 2001:db8:1::10 activate"), "{c}");
        assert!(!v6.contains("neighbor 192.0.2.10 activate"), "{c}");
        let v4 = c.split("address-family ipv6").next().unwrap();
        assert!(v4.contains("neighbor 192.0.2.10 activate"), "{c}");
        assert!(!v4.contains("neighbor 2001:db8:1::10 activate"), "{c}");
    }

    #[test]
    fn state_folder_is_short_and_reachable() {
        use std::os::unix::fs::PermissionsExt;
        let short = tempfile::tempdir().unwrap();
        // A private folder (0700): FRR's user could not reach it.
        std::fs::set_permissions(short.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let s = state_dir(short.path()).unwrap();
        assert!(
            s.remove && s.path.to_string_lossy().starts_with("/tmp/imrs-frr-"),
            "{s:?}"
        );
        let p = s.path.clone();
        assert!(p.is_dir());
        drop(s);
        assert!(!p.exists());
        std::fs::set_permissions(short.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        if searchable_by_others(short.path()) {
            let s = state_dir(short.path()).unwrap();
            assert!(!s.remove && s.path == short.path(), "{s:?}");
            let long = short.path().join("x".repeat(100));
            let s = state_dir(&long).unwrap();
            assert!(s.remove, "{s:?}");
        }
    }
}
