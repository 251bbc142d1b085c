//! GoBGP as the host's router: `gobgpd` (GoBGP 3.10, Debian 12 package `gobgpd`) inside the
//! namespace with a TOML config, its gRPC API on the namespace's loopback
//! (`--api-hosts 127.0.0.1:PORT`, a port free there when it starts), read with `gobgp ... -j`. An implementation of its
//! own, written in Go, sharing no code with FRR or BIRD: a host organisation's router is not
//! ours to choose.
//!
//! Every neighbour is an eBGP peer with one `afi-safis` entry for its own family and short
//! timers; GoBGP needs no policy to accept or to select routes, and without zebra it neither
//! installs routes in the kernel nor tracks next hops.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use super::{Family, Neighbor, Route, RouterConfig, SessionState, origin_as};
use crate::host::netns::NetNs;
use crate::host::process::Daemon;

/// The daemon.
pub const GOBGPD: &str = "/usr/bin/gobgpd";
/// Its client.
pub const GOBGP: &str = "/usr/bin/gobgp";
/// Every GoBGP program the router needs.
pub const PROGRAMS: [&str; 2] = [GOBGPD, GOBGP];

/// The `afi-safi-name` of a family's unicast routes.
fn afi_safi(family: Family) -> &'static str {
    match family {
        Family::Ipv4 => "ipv4-unicast",
        Family::Ipv6 => "ipv6-unicast",
    }
}

/// The gobgpd configuration (TOML): AS, router id, BGP listening on every address of the
/// namespace, and one `[[neighbors]]` per neighbour with its family and short timers (hold 9 s,
/// keepalive 3 s, connect retry 1 s).
pub fn config(cfg: &RouterConfig) -> String {
    let mut c = format!(
        "[global.config]\n  as = {}\n  router-id = \"{}\"\n  \
         local-address-list = [\"0.0.0.0\", \"::\"]\n",
        cfg.asn, cfg.router_id
    );
    for (addr, asn) in &cfg.neighbors {
        c += &format!(
            "\n[[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{addr}\"\n    \
             peer-as = {asn}\n  [neighbors.timers.config]\n    hold-time = 9\n    \
             keepalive-interval = 3\n    connect-retry = 1\n  [[neighbors.afi-safis]]\n    \
             [neighbors.afi-safis.config]\n      afi-safi-name = \"{}\"\n",
            afi_safi(Family::of(*addr))
        );
    }
    c
}

/// gobgpd, stopped when dropped.
#[derive(Debug)]
pub struct Gobgp {
    ns: String,
    api_port: u16,
    daemon: Daemon,
}

/// A TCP port free on the namespace's loopback now (the kernel's choice), for the API: a
/// client never reaches another gobgpd by mistake.
fn free_api_port(ns: &NetNs) -> Result<u16> {
    let port = ns
        .run_inside(|| std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()))?
        .with_context(|| format!("no free port on the loopback of {}", ns.name()))?
        .port();
    Ok(port)
}

impl Gobgp {
    /// Starts gobgpd inside `ns` with `cfg` (config and log in `dir`); [`super::Router::start`]
    /// waits until its API answers.
    pub(super) fn start(ns: &NetNs, dir: &Path, cfg: &RouterConfig) -> Result<Gobgp> {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: mkdir", dir.display()))?;
        let conf = dir.join("gobgpd.toml");
        imrs_config::fsutil::write_atomic(&conf, config(cfg).as_bytes(), 0o644)
            .with_context(|| format!("{}: cannot write", conf.display()))?;
        let api_port = free_api_port(ns)?;
        let api = format!("127.0.0.1:{api_port}");
        let daemon = Daemon::spawn(
            "gobgpd",
            ns.command(GOBGPD)
                .arg("-f")
                .arg(&conf)
                .args(["-t", "toml", "--api-hosts", &api])
                .args(["--pprof-disable", "--log-plain"]),
            &dir.join("gobgpd.log"),
        )?;
        Ok(Gobgp {
            ns: ns.name().to_string(),
            api_port,
            daemon,
        })
    }

    /// Runs `gobgp ARGS -j` against this router and returns its JSON text; fails with what the
    /// client said.
    pub fn gobgp(&self, args: &[&str]) -> Result<String> {
        let port = self.api_port.to_string();
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns,
                GOBGP,
                "-u",
                "127.0.0.1",
                "-p",
                &port,
            ])
            .args(args)
            .arg("-j")
            .stdin(Stdio::null())
            .output()
            .context("cannot run gobgp")?;
        if !out.status.success() {
            bail!(
                "gobgp {} ({}): {} {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Every path of one family in the global RIB (`gobgp global rib -a ipv4|ipv6 -j`).
    pub fn routes_of(&self, family: Family) -> Result<Vec<Route>> {
        parse_rib(&self.gobgp(&["global", "rib", "-a", family.name()])?)
    }

    /// Every neighbour's session state (`gobgp neighbor -j`).
    pub fn neighbor_states(&self) -> Result<Vec<Neighbor>> {
        parse_neighbors(&self.gobgp(&["neighbor"])?)
    }

    /// Whether gobgpd still runs.
    pub fn running(&mut self) -> bool {
        self.daemon.running()
    }

    /// Fails with the end of gobgpd's log unless it runs.
    pub fn ensure_running(&mut self) -> Result<()> {
        self.daemon.ensure_running()
    }

    /// gobgpd's log.
    pub fn logs(&self) -> String {
        format!("gobgpd:\n{}", self.daemon.log())
    }
}

fn json(text: &str) -> Result<serde_json::Value> {
    serde_json::from_str(text).with_context(|| {
        format!(
            "gobgp: not JSON: {}",
            imrs_config::escape(&text.chars().take(200).collect::<String>())
        )
    })
}

/// Path attribute type 2: AS_PATH.
const ATTR_AS_PATH: u64 = 2;

/// The AS path of a path's `attrs`, written as [`Route::as_path`]: AS_SEQUENCE (2) members
/// separated by spaces, an AS_SET (1) in braces, confederation segments (3, 4) in parentheses
/// and brackets.
fn as_path(attrs: &[serde_json::Value]) -> String {
    let mut words = Vec::new();
    let segments = attrs
        .iter()
        .filter(|a| a["type"].as_u64() == Some(ATTR_AS_PATH))
        .flat_map(|a| a["as_paths"].as_array().into_iter().flatten());
    for seg in segments {
        let asns: Vec<String> = seg["asns"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_u64().map(|a| a.to_string()))
            .collect();
        match seg["segment_type"].as_u64() {
            Some(1) => words.push(format!("{{{}}}", asns.join(","))),
            Some(3) => words.push(format!("({})", asns.join(" "))),
            Some(4) => words.push(format!("[{}]", asns.join(","))),
            _ => words.extend(asns),
        }
    }
    words.join(" ")
}

/// Parses `gobgp global rib -a FAMILY -j`: a JSON object prefix -> list of paths, each with
/// `best` and `attrs` (type 2 holds `as_paths` segments with `asns`).
pub fn parse_rib(text: &str) -> Result<Vec<Route>> {
    let v = json(text)?;
    let Some(o) = v.as_object() else {
        bail!("gobgp: the RIB is not a JSON object");
    };
    let mut out = Vec::new();
    for (prefix, paths) in o {
        let Some(paths) = paths.as_array() else {
            bail!(
                "gobgp: the paths of {} are not a list",
                imrs_config::escape(prefix)
            );
        };
        for p in paths {
            let attrs = p["attrs"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            let as_path = as_path(attrs);
            out.push(Route {
                prefix: prefix.clone(),
                origin_as: origin_as(&as_path),
                as_path,
                valid: !p["withdrawal"].as_bool().unwrap_or(false),
                best: p["best"].as_bool().unwrap_or(false),
            });
        }
    }
    Ok(out)
}

/// GoBGP's `session_state` numbers (its API's `PeerState.SessionState`).
fn session_state(n: Option<u64>) -> SessionState {
    match n {
        Some(1) => SessionState::Idle,
        Some(2) => SessionState::Connect,
        Some(3) => SessionState::Active,
        Some(4) => SessionState::OpenSent,
        Some(5) => SessionState::OpenConfirm,
        Some(6) => SessionState::Established,
        _ => SessionState::Unknown,
    }
}

/// Parses `gobgp neighbor -j`: a list of neighbours, each with `state.neighbor_address` and
/// `state.session_state` (6: established; absent: unknown).
pub fn parse_neighbors(text: &str) -> Result<Vec<Neighbor>> {
    let v = json(text)?;
    let Some(list) = v.as_array() else {
        bail!("gobgp: the neighbours are not a JSON list");
    };
    let mut out = Vec::new();
    for n in list {
        let addr = n["state"]["neighbor_address"]
            .as_str()
            .or_else(|| n["conf"]["neighbor_address"].as_str())
            .unwrap_or("");
        let Ok(address) = addr.parse() else {
            bail!(
                "gobgp: neighbour address \"{}\" is not an IP address",
                imrs_config::escape(addr)
            );
        };
        out.push(Neighbor {
            address,
            state: session_state(n["state"]["session_state"].as_u64()),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> RouterConfig {
        RouterConfig {
            asn: 64512,
            router_id: "192.0.2.1".parse().unwrap(),
            neighbors: vec![
                ("192.0.2.10".parse().unwrap(), 20144),
                ("2001:db8:1::10".parse().unwrap(), 20144),
            ],
        }
    }

    #[test]
    fn config_is_toml_with_one_family_per_neighbour() {
        let text = config(&cfg());
        let v: toml::Table = toml::from_str(&text).unwrap();
        let g = &v["global"]["config"];
        assert_eq!(g["as"].as_integer(), Some(64512));
        assert_eq!(g["router-id"].as_str(), Some("192.0.2.1"));
        assert_eq!(
            g["local-address-list"].as_array().unwrap().len(),
            2,
            "{text}"
        );
        let n = v["neighbors"].as_array().unwrap();
        assert_eq!(n.len(), 2, "{text}");
        for (n, (addr, fam)) in n.iter().zip([
            ("192.0.2.10", "ipv4-unicast"),
            ("2001:db8:1::10", "ipv6-unicast"),
        ]) {
            assert_eq!(n["config"]["neighbor-address"].as_str(), Some(addr));
            assert_eq!(n["config"]["peer-as"].as_integer(), Some(20144));
            let t = &n["timers"]["config"];
            assert_eq!(t["hold-time"].as_integer(), Some(9));
            assert_eq!(t["keepalive-interval"].as_integer(), Some(3));
            assert_eq!(t["connect-retry"].as_integer(), Some(1));
            let afs = n["afi-safis"].as_array().unwrap();
            assert_eq!(afs.len(), 1, "{text}");
            assert_eq!(afs[0]["config"]["afi-safi-name"].as_str(), Some(fam));
        }
    }

    /// Real output of GoBGP 3.10 (testdata/README.md).
    #[test]
    fn parses_captured_output() {
        super::super::check_captured(
            &parse_rib(include_str!("testdata/gobgp-ipv4.json")).unwrap(),
            &parse_rib(include_str!("testdata/gobgp-ipv6.json")).unwrap(),
            &parse_neighbors(include_str!("testdata/gobgp-neighbors.json")).unwrap(),
        );
    }

    #[test]
    fn a_withdrawal_is_not_valid() {
        let text = r#"{"199.7.83.0/24":[{"nlri":{"prefix":"199.7.83.0/24"},"best":false,
            "withdrawal":true,"attrs":[{"type":2,"as_paths":[{"segment_type":2,"num":1,
            "asns":[20144]}]}]}]}"#;
        let r = parse_rib(text).unwrap();
        assert_eq!(r.len(), 1);
        assert!(!r[0].valid && !r[0].best, "{r:?}");
        assert_eq!(r[0].origin_as, Some(20144));
        assert!(!super::super::holds(&r, "199.7.83.0/24", 20144));
    }

    #[test]
    fn as_paths_of_every_segment_kind() {
        let attrs: Vec<serde_json::Value> = serde_json::from_str(
            r#"[{"type":1,"value":0},{"type":2,"as_paths":[
                {"segment_type":3,"num":2,"asns":[65001,65002]},
                {"segment_type":2,"num":2,"asns":[64512,64513]},
                {"segment_type":1,"num":2,"asns":[20144,64514]}]}]"#,
        )
        .unwrap();
        assert_eq!(as_path(&attrs), "(65001 65002) 64512 64513 {20144,64514}");
        assert_eq!(origin_as(&as_path(&attrs)), None);
        // A path without AS_PATH segments (iBGP-originated): empty, no origin.
        assert_eq!(as_path(&[serde_json::json!({"type": 2})]), "");
    }

    #[test]
    fn bad_output_is_an_error_naming_it() {
        let e = parse_rib("{\"error\":\"context deadline exceeded\"}").unwrap_err();
        assert!(
            format!("{e:#}").contains("paths of error are not a list"),
            "{e:#}"
        );
        let e = parse_rib("rpc error\n").unwrap_err();
        assert!(format!("{e:#}").contains("not JSON: rpc error\\n"), "{e:#}");
        assert_eq!(parse_rib("{}").unwrap(), Vec::new());
        let e = parse_neighbors("[{\"state\":{\"neighbor_address\":\"x\"}}]").unwrap_err();
        assert!(e.to_string().contains("\"x\" is not an IP address"), "{e}");
    }
}
