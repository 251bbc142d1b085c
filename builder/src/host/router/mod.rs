//! The host organisation's router: the BGP peer of the appliance, inside a namespace. A host
//! organisation's router is not ours to choose, so there are two independent implementations
//! behind one [`Router`]: FRR ([`frr`]: zebra + bgpd, read with `vtysh ... json`) and GoBGP
//! ([`gobgp`]: gobgpd, read with `gobgp ... -j`). Both take the same [`RouterConfig`] (one AS,
//! eBGP neighbours each activated in its own address family, no policy, short timers) and
//! answer in the same words: [`Route`]s and [`Neighbor`] session states.

pub mod frr;
pub mod gobgp;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::netns::NetNs;
use super::process::{last_lines, wait_for};

/// Which BGP implementation plays the host's router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RouterKind {
    /// FRR 8 (zebra + bgpd).
    Frr,
    /// GoBGP 3 (gobgpd).
    Gobgp,
}

impl RouterKind {
    /// Every kind.
    pub const ALL: [RouterKind; 2] = [RouterKind::Frr, RouterKind::Gobgp];

    /// Its name on the command line and in summaries (`frr`, `gobgp`).
    pub fn name(self) -> &'static str {
        match self {
            RouterKind::Frr => "frr",
            RouterKind::Gobgp => "gobgp",
        }
    }

    /// The product's name, for messages (`FRR`, `GoBGP`).
    pub fn product(self) -> &'static str {
        match self {
            RouterKind::Frr => "FRR",
            RouterKind::Gobgp => "GoBGP",
        }
    }

    /// The host programs it needs (absolute paths, Debian 12 packages `frr`, `gobgpd`).
    pub fn programs(self) -> &'static [&'static str] {
        match self {
            RouterKind::Frr => &frr::PROGRAMS,
            RouterKind::Gobgp => &gobgp::PROGRAMS,
        }
    }
}

impl fmt::Display for RouterKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An address family of unicast routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4 unicast.
    Ipv4,
    /// IPv6 unicast.
    Ipv6,
}

impl Family {
    /// Both families.
    pub const ALL: [Family; 2] = [Family::Ipv4, Family::Ipv6];

    /// `ipv4` or `ipv6`, as both routers' commands spell it.
    pub fn name(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        }
    }

    /// The family of `addr`.
    pub fn of(addr: IpAddr) -> Family {
        if addr.is_ipv4() {
            Family::Ipv4
        } else {
            Family::Ipv6
        }
    }
}

/// What the router is told: its AS and router id, and its eBGP neighbours (address, AS), each
/// activated in the family of its address only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterConfig {
    /// The router's AS.
    pub asn: u32,
    /// Its BGP router id.
    pub router_id: Ipv4Addr,
    /// Neighbour address and AS.
    pub neighbors: Vec<(IpAddr, u32)>,
}

impl RouterConfig {
    /// Refuses AS 0, no neighbours, and a neighbour given twice.
    pub fn check(&self) -> Result<()> {
        if self.asn == 0 {
            bail!("router config: asn 0 is not an AS");
        }
        if self.neighbors.is_empty() {
            bail!("router config: no neighbours");
        }
        for (i, (addr, asn)) in self.neighbors.iter().enumerate() {
            if *asn == 0 {
                bail!("router config: neighbors[{i}] {addr}: asn 0 is not an AS");
            }
            if self.neighbors[..i].iter().any(|(a, _)| a == addr) {
                bail!("router config: neighbors[{i}] {addr}: given twice");
            }
        }
        Ok(())
    }
}

/// A path the router holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    /// Prefix (`199.7.83.0/24`).
    pub prefix: String,
    /// The origin AS (last AS of the path), if the path has one.
    pub origin_as: Option<u32>,
    /// AS path: ASes separated by spaces, an AS_SET in braces (`{64512,64513}`).
    pub as_path: String,
    /// The router uses it. FRR: its next hop resolved; GoBGP: in the global RIB and not a
    /// withdrawal (GoBGP without zebra does not track next hops).
    pub valid: bool,
    /// The router's best path for the prefix.
    pub best: bool,
}

/// A BGP session's state (RFC 4271 section 8.2.2), as either router reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    /// Idle.
    Idle,
    /// Connect.
    Connect,
    /// Active.
    Active,
    /// OpenSent.
    OpenSent,
    /// OpenConfirm.
    OpenConfirm,
    /// Established: routes flow.
    Established,
    /// Anything else the router said.
    Unknown,
}

impl SessionState {
    /// From a state name (`Established`, `OpenSent`, ... in any case).
    pub fn from_name(name: &str) -> SessionState {
        match name.to_ascii_lowercase().as_str() {
            "idle" => SessionState::Idle,
            "connect" => SessionState::Connect,
            "active" => SessionState::Active,
            "opensent" => SessionState::OpenSent,
            "openconfirm" => SessionState::OpenConfirm,
            "established" => SessionState::Established,
            _ => SessionState::Unknown,
        }
    }

    /// Its name in lower case.
    pub fn name(self) -> &'static str {
        match self {
            SessionState::Idle => "idle",
            SessionState::Connect => "connect",
            SessionState::Active => "active",
            SessionState::OpenSent => "opensent",
            SessionState::OpenConfirm => "openconfirm",
            SessionState::Established => "established",
            SessionState::Unknown => "unknown",
        }
    }
}

impl fmt::Display for SessionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One neighbour and its session state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Neighbor {
    /// The neighbour's address.
    pub address: IpAddr,
    /// Its session's state.
    pub state: SessionState,
}

/// The router, stopped when dropped.
#[derive(Debug)]
pub enum Router {
    /// FRR.
    Frr(frr::Frr),
    /// GoBGP.
    Gobgp(gobgp::Gobgp),
}

impl Router {
    /// Starts a router of `kind` inside `ns` with `cfg`, its configuration, state and logs in
    /// `dir` (created), and waits (up to 15 s) until it answers queries.
    pub fn start(kind: RouterKind, ns: &NetNs, dir: &Path, cfg: &RouterConfig) -> Result<Router> {
        let started = || -> Result<Router> {
            cfg.check()?;
            let mut r = match kind {
                RouterKind::Frr => Router::Frr(frr::Frr::start(ns, dir, cfg)?),
                RouterKind::Gobgp => Router::Gobgp(gobgp::Gobgp::start(ns, dir, cfg)?),
            };
            // Ready: its own daemons run and answer (a daemon that exits early ends the wait).
            let answered = wait_for(Duration::from_secs(15), Duration::from_millis(100), || {
                if !r.running() {
                    return Some(false);
                }
                r.routes_of(Family::Ipv4).ok().map(|_| true)
            });
            if answered != Some(true) || !r.running() {
                r.ensure_running()?;
                let err = r.routes_of(Family::Ipv4).err();
                bail!(
                    "it did not answer within 15 s ({}); its logs, last lines:\n{}",
                    err.map_or_else(|| "interrupted".to_string(), |e| format!("{e:#}")),
                    last_lines(&r.logs(), 30)
                );
            }
            Ok(r)
        };
        started()
            .with_context(|| format!("starting the router ({}) in {}", kind.product(), ns.name()))
    }

    /// Which implementation it is.
    pub fn kind(&self) -> RouterKind {
        match self {
            Router::Frr(_) => RouterKind::Frr,
            Router::Gobgp(_) => RouterKind::Gobgp,
        }
    }

    /// Every path of one family.
    pub fn routes_of(&self, family: Family) -> Result<Vec<Route>> {
        match self {
            Router::Frr(r) => r.routes_of(family),
            Router::Gobgp(r) => r.routes_of(family),
        }
    }

    /// Every path of both families.
    pub fn routes(&self) -> Result<Vec<Route>> {
        let mut all = self.routes_of(Family::Ipv4)?;
        all.extend(self.routes_of(Family::Ipv6)?);
        Ok(all)
    }

    /// The prefixes of one family with a valid path, sorted, each once.
    pub fn prefixes(&self, family: Family) -> Result<Vec<String>> {
        Ok(valid_prefixes(&self.routes_of(family)?))
    }

    /// Every neighbour's session state.
    pub fn neighbor_states(&self) -> Result<Vec<Neighbor>> {
        match self {
            Router::Frr(r) => r.neighbor_states(),
            Router::Gobgp(r) => r.neighbor_states(),
        }
    }

    /// Whether every daemon of the router still runs.
    pub fn running(&mut self) -> bool {
        match self {
            Router::Frr(r) => r.running(),
            Router::Gobgp(r) => r.running(),
        }
    }

    /// Fails naming the daemon that stopped, with the end of its log.
    pub fn ensure_running(&mut self) -> Result<()> {
        match self {
            Router::Frr(r) => r.ensure_running(),
            Router::Gobgp(r) => r.ensure_running(),
        }
    }

    /// Its daemons' logs, for failure messages.
    pub fn logs(&self) -> String {
        match self {
            Router::Frr(r) => r.logs(),
            Router::Gobgp(r) => r.logs(),
        }
    }
}

/// The prefixes with a valid path in `routes`, sorted, each once.
pub fn valid_prefixes(routes: &[Route]) -> Vec<String> {
    let mut v: Vec<String> = routes
        .iter()
        .filter(|r| r.valid)
        .map(|r| r.prefix.clone())
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Whether `routes` holds `prefix` as a valid route originated by `asn`.
pub fn holds(routes: &[Route], prefix: &str, asn: u32) -> bool {
    routes
        .iter()
        .any(|r| r.prefix == prefix && r.valid && r.origin_as == Some(asn))
}

/// The origin AS of an AS path written as [`Route::as_path`]: its last AS, or the one member of
/// a final AS_SET; `None` for an empty path or a larger set.
pub fn origin_as(as_path: &str) -> Option<u32> {
    let last = as_path.split_whitespace().last()?;
    match last.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
        Some(set) if !set.contains(',') => set.parse().ok(),
        Some(_) => None,
        None => last.parse().ok(),
    }
}

/// What both routers' captured output (`router/testdata/README.md`) must parse to.
#[cfg(test)]
pub(crate) fn check_captured(v4: &[Route], v6: &[Route], neighbors: &[Neighbor]) {
    assert_eq!(valid_prefixes(v4), ["199.7.82.0/23", "199.7.83.0/24"]);
    assert_eq!(
        valid_prefixes(v6),
        ["2001:500:3::/48", "2001:500:9e::/47", "2001:500:9f::/48"]
    );
    for r in v4.iter().chain(v6) {
        assert_eq!(
            (r.as_path.as_str(), r.origin_as, r.valid, r.best),
            ("20144", Some(20144), true, true),
            "{r:?}"
        );
    }
    let mut states: Vec<(IpAddr, SessionState)> =
        neighbors.iter().map(|n| (n.address, n.state)).collect();
    states.sort();
    let addr = |a: &str| {
        a.parse::<IpAddr>()
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    };
    assert_eq!(
        states,
        [
            (addr("192.0.2.10"), SessionState::Established),
            (addr("2001:db8:1::10"), SessionState::Established),
            (addr("2001:db8:1::20"), SessionState::Active),
        ]
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(prefix: &str, as_path: &str, valid: bool) -> Route {
        Route {
            prefix: prefix.into(),
            origin_as: origin_as(as_path),
            as_path: as_path.into(),
            valid,
            best: valid,
        }
    }

    #[test]
    fn origin_is_the_last_as() {
        assert_eq!(origin_as("20144"), Some(20144));
        assert_eq!(origin_as("64512 64513 20144"), Some(20144));
        assert_eq!(origin_as("64512 {20144}"), Some(20144));
        assert_eq!(origin_as("64512 {20144,64513}"), None);
        assert_eq!(origin_as(""), None);
        assert_eq!(origin_as("64512 x"), None);
    }

    #[test]
    fn holds_and_prefixes_count_valid_paths_only() {
        let r = [
            route("199.7.83.0/24", "20144", true),
            route("199.7.83.0/24", "64512 20144", false),
            route("199.7.82.0/23", "20144", true),
            route("203.0.113.0/24", "20144", false),
            route("198.51.100.0/24", "64513", true),
        ];
        assert!(holds(&r, "199.7.83.0/24", 20144));
        assert!(!holds(&r, "199.7.83.0/24", 64512));
        assert!(!holds(&r, "203.0.113.0/24", 20144));
        assert_eq!(
            valid_prefixes(&r),
            ["198.51.100.0/24", "199.7.82.0/23", "199.7.83.0/24"]
        );
    }

    #[test]
    fn config_check_refuses_what_no_router_takes() {
        let good = RouterConfig {
            asn: 64512,
            router_id: Ipv4Addr::new(192, 0, 2, 1),
            neighbors: vec![
                ("192.0.2.10".parse().unwrap(), 20144),
                ("2001:db8:1::10".parse().unwrap(), 20144),
            ],
        };
        good.check().unwrap();
        let mut c = good.clone();
        c.asn = 0;
        assert!(c.check().unwrap_err().to_string().contains("asn 0"));
        let mut c = good.clone();
        c.neighbors.clear();
        assert!(c.check().unwrap_err().to_string().contains("no neighbours"));
        let mut c = good.clone();
        c.neighbors[1] = ("192.0.2.10".parse().unwrap(), 20144);
        let e = c.check().unwrap_err().to_string();
        assert!(e.contains("neighbors[1] 192.0.2.10: given twice"), "{e}");
        let mut c = good;
        c.neighbors[0].1 = 0;
        let e = c.check().unwrap_err().to_string();
        assert!(e.contains("neighbors[0] 192.0.2.10: asn 0"), "{e}");
    }

    #[test]
    fn names() {
        assert_eq!(
            SessionState::from_name("Established"),
            SessionState::Established
        );
        assert_eq!(SessionState::from_name("OpenSent"), SessionState::OpenSent);
        assert_eq!(SessionState::from_name("Clearing"), SessionState::Unknown);
        assert_eq!(RouterKind::Gobgp.to_string(), "gobgp");
        assert_eq!(
            serde_json::to_value(RouterKind::Frr).unwrap(),
            serde_json::json!("frr")
        );
        assert_eq!(Family::of("2001:db8::1".parse().unwrap()), Family::Ipv6);
    }
}
