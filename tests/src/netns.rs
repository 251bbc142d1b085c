//! Network namespaces for tests ([`imrs_build::host::netns`]), the standard cable between an
//! appliance namespace and the host's namespace ([`appliance_and_host`]), and the prerequisite
//! rule of the project: a missing prerequisite skips the test with a reason, but under `CI=true`
//! it fails it ([`require`]).

use std::path::Path;

pub use imrs_build::host::netns::{NETNS_DIR, NetNs, veth};
use ipnet::IpNet;

/// The appliance's addresses on its `eth0` in every namespace test.
pub const APPLIANCE_ADDRS: [&str; 2] = ["192.0.2.10/24", "2001:db8:1::10/64"];
/// The host router's addresses on the host's `eth0`.
pub const ROUTER_ADDRS: [&str; 2] = ["192.0.2.1/24", "2001:db8:1::1/64"];

/// Whether this process runs with effective uid 0.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// This host's account `name` as (uid, gid) from `/etc/passwd` (its ids differ from the
/// image's fixed ones, `imrs_config::accounts`).
pub fn host_account(name: &str) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && f[0] == name).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

/// Whether the CI rule applies (`CI=true`): missing prerequisites fail instead of skipping.
pub fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Checks prerequisites: root when `root` is set, and every listed executable or file. Returns
/// `false` (after printing why) when the test should skip; panics under `CI=true`.
pub fn require(test: &str, root: bool, executables: &[&str]) -> bool {
    let mut missing = Vec::new();
    if root && !is_root() {
        missing.push("root (network namespaces)".to_string());
    }
    for exe in executables {
        if !Path::new(exe).exists() {
            missing.push(exe.to_string());
        }
    }
    if missing.is_empty() {
        return true;
    }
    let reason = format!("{test}: missing prerequisites: {}", missing.join(", "));
    assert!(
        !in_ci(),
        "{reason} (CI=true: a missing prerequisite is a failure)"
    );
    eprintln!("SKIP {reason}");
    false
}

/// Parses address/prefix strings written in a test.
pub fn nets(addrs: &[&str]) -> Vec<IpNet> {
    addrs
        .iter()
        .map(|a| a.parse().unwrap_or_else(|e| panic!("{a}: {e}")))
        .collect()
}

/// An appliance namespace (`imrs-<tag>a-…`) and a host namespace (`imrs-<tag>r-…`) joined by a
/// veth `eth0` <-> `eth0`: [`APPLIANCE_ADDRS`] on the appliance's side, [`ROUTER_ADDRS`] and
/// `host_extra` on the host's side, both up.
pub fn appliance_and_host(tag: &str, host_extra: &[&str]) -> (NetNs, NetNs) {
    let appl = NetNs::create(&format!("{tag}a")).unwrap();
    let host = NetNs::create(&format!("{tag}r")).unwrap();
    veth(&appl, "eth0", &host, "eth0").unwrap();
    appl.addr("eth0", &nets(&APPLIANCE_ADDRS)).unwrap();
    let mut h = nets(&ROUTER_ADDRS);
    h.extend(nets(host_extra));
    host.addr("eth0", &h).unwrap();
    (appl, host)
}
