//! Real daemons for tests: the host side's processes, router and transfer server
//! ([`imrs_build::host`]), re-exported, with what every test agrees on: the appliance's daemons'
//! paths and the host router's configuration ([`router_config`]).

use std::net::{Ipv4Addr, Ipv6Addr};

pub use imrs_build::host::process::{Daemon, wait_for};
pub use imrs_build::host::router::{
    Family, Neighbor, Route, Router, RouterConfig, RouterKind, SessionState, holds, valid_prefixes,
};
pub use imrs_build::host::xfr::{NSD, Xfr, XfrConfig};

/// BIRD 2, the appliance's BGP daemon.
pub const BIRD: &str = "/usr/sbin/bird";
/// Knot DNS.
pub const KNOTD: &str = "/usr/sbin/knotd";
/// Knot's dnstap module (knot-module-dnstap), which knotd loads from its module folder.
pub const KNOT_DNSTAP: &str = "/usr/lib/x86_64-linux-gnu/knot/modules-3.2/dnstap.so";
/// dnscap and its RSSAC002 plugin: the independent collector the RSSAC002 metrics are checked
/// against.
pub const DNSCAP: &str = "/usr/bin/dnscap";
/// dnscap's rssm plugin.
pub const RSSM: &str = "/usr/lib/x86_64-linux-gnu/dnscap/rssm.so";
/// dnsperf, query load.
pub const DNSPERF: &str = "/usr/bin/dnsperf";

/// How often the tests poll.
pub const POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// The host router of every namespace test: AS 64512 at 192.0.2.1, the appliance's
/// 192.0.2.10 and 2001:db8:1::10 (AS 20144) its eBGP neighbours.
pub fn router_config() -> RouterConfig {
    RouterConfig {
        asn: 64512,
        router_id: Ipv4Addr::new(192, 0, 2, 1),
        neighbors: vec![
            (Ipv4Addr::new(192, 0, 2, 10).into(), 20144),
            (
                Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10).into(),
                20144,
            ),
        ],
    }
}

/// The programs a test with a `kind` router needs, with BIRD, for [`crate::netns::require`].
pub fn bgp_programs(kind: RouterKind) -> Vec<&'static str> {
    let mut p = vec![BIRD, "/usr/sbin/ip"];
    p.extend(kind.programs());
    p
}

/// The sorted prefixes of both families the router holds valid paths for (`None` while it
/// does not answer).
pub fn held(router: &Router) -> Option<(Vec<String>, Vec<String>)> {
    Some((
        router.prefixes(Family::Ipv4).ok()?,
        router.prefixes(Family::Ipv6).ok()?,
    ))
}

/// Waits until `router` holds exactly `v4` and `v6` (valid paths) and returns how long that
/// took; panics with what it holds, its logs and `logs()` otherwise.
pub fn wait_exact(
    router: &Router,
    v4: &[&str],
    v6: &[&str],
    timeout: std::time::Duration,
    logs: &dyn Fn() -> String,
) -> std::time::Duration {
    let sorted = |w: &[&str]| {
        let mut w: Vec<String> = w.iter().map(|s| s.to_string()).collect();
        w.sort();
        w
    };
    let want = (sorted(v4), sorted(v6));
    let t0 = std::time::Instant::now();
    let ok = wait_for(timeout, POLL, || {
        (held(router).as_ref() == Some(&want)).then_some(())
    });
    assert!(
        ok.is_some(),
        "{} never held exactly {v4:?} + {v6:?}; it holds {:?}, sessions {:?}\n{}\n{}",
        router.kind().product(),
        held(router),
        router.neighbor_states(),
        logs(),
        router.logs()
    );
    t0.elapsed()
}
