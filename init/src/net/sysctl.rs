//! Kernel network settings for a server that is not a router (issue 18): no forwarding, no ICMP
//! redirects accepted or sent, no source routing, strict reverse-path filtering on the
//! management interfaces. Written under `/proc/sys` by the network stage once the interfaces
//! exist; a setting the kernel refuses fails the stage with the key and value.
//!
//! The kernel combines `all`, `default` and per-interface values differently per key (an IPv4
//! redirect is accepted when *either* `all` or the interface says so while forwarding is off),
//! so each key is written for `all`, `default` (interfaces created later) and every interface.

use std::fmt;
use std::path::Path;

/// One setting: the key below `/proc/sys` (slashes) and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// e.g. `net/ipv4/conf/all/accept_redirects`.
    pub key: String,
    /// The value written.
    pub value: &'static str,
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = {}", self.key.replace('/', "."), self.value)
    }
}

/// A setting the kernel did not take.
#[derive(Debug, thiserror::Error)]
#[error("kernel setting {setting}: {source}")]
pub struct SysctlError {
    /// The setting.
    pub setting: Setting,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

fn set(key: String, value: &'static str) -> Setting {
    Setting { key, value }
}

/// The settings for a box whose management interfaces are `management` (kernel names) and
/// whose service addresses sit on `service` (not reverse-path filtered: nothing arrives on it).
pub fn settings(management: &[String], service: &str) -> Vec<Setting> {
    let mut out = vec![
        set("net/ipv4/ip_forward".into(), "0"),
        set("net/ipv4/conf/all/forwarding".into(), "0"),
        set("net/ipv6/conf/all/forwarding".into(), "0"),
    ];
    let scopes: Vec<&str> = ["all", "default"]
        .into_iter()
        .chain(management.iter().map(String::as_str))
        .chain(std::iter::once(service))
        .collect();
    for scope in &scopes {
        for (family, key) in [
            ("ipv4", "accept_redirects"),
            ("ipv4", "secure_redirects"),
            ("ipv4", "send_redirects"),
            ("ipv4", "accept_source_route"),
            ("ipv6", "accept_redirects"),
            ("ipv6", "accept_source_route"),
        ] {
            out.push(set(format!("net/{family}/conf/{scope}/{key}"), "0"));
        }
    }
    // Strict reverse-path filtering (IPv4; the kernel has no IPv6 equivalent) on the
    // management interfaces: a packet whose source is not routed back out of the interface it
    // came in on is dropped.
    for iface in management {
        out.push(set(format!("net/ipv4/conf/{iface}/rp_filter"), "1"));
    }
    out
}

/// Optimistic duplicate address detection (RFC 4429) for every interface: the management
/// addresses (added with the optimistic flag) and the link-local ones the kernel makes when a
/// link comes up are usable at once, so the boot does not wait a second or two for detection
/// to end; detection still runs and a duplicate is still found ([`super::dad_state`]). Written
/// before the links come up. Per network namespace, so also written by a namespace's init.
pub fn optimistic_dad() -> Vec<Setting> {
    let mut out = Vec::new();
    for scope in ["all", "default"] {
        for key in ["optimistic_dad", "use_optimistic"] {
            out.push(set(format!("net/ipv6/conf/{scope}/{key}"), "1"));
        }
    }
    out
}

/// Writes `settings` under `proc_sys` (`/proc/sys`), stopping at the first refusal.
pub fn apply(proc_sys: &Path, settings: &[Setting]) -> Result<(), SysctlError> {
    for s in settings {
        std::fs::write(proc_sys.join(&s.key), s.value).map_err(|source| SysctlError {
            setting: s.clone(),
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scope_gets_every_key_and_management_is_rp_filtered() {
        let s = settings(&["eth0".into()], "imrs0");
        let keys: Vec<String> = s.iter().map(|s| s.to_string()).collect();
        for want in [
            "net.ipv4.ip_forward = 0",
            "net.ipv6.conf.all.forwarding = 0",
            "net.ipv4.conf.all.accept_redirects = 0",
            "net.ipv4.conf.default.send_redirects = 0",
            "net.ipv4.conf.eth0.accept_redirects = 0",
            "net.ipv6.conf.eth0.accept_redirects = 0",
            "net.ipv4.conf.imrs0.accept_source_route = 0",
            "net.ipv4.conf.eth0.rp_filter = 1",
        ] {
            assert!(keys.contains(&want.to_string()), "{want} in {keys:?}");
        }
        assert!(!keys.iter().any(|k| k.contains("imrs0.rp_filter")));
        assert_eq!(keys.len(), 3 + 4 * 6 + 1);
    }

    #[test]
    fn optimistic_dad_for_all_and_default() {
        let keys: Vec<String> = optimistic_dad().iter().map(|s| s.to_string()).collect();
        assert_eq!(
            keys,
            [
                "net.ipv6.conf.all.optimistic_dad = 1",
                "net.ipv6.conf.all.use_optimistic = 1",
                "net.ipv6.conf.default.optimistic_dad = 1",
                "net.ipv6.conf.default.use_optimistic = 1",
            ]
        );
    }

    #[test]
    fn a_refused_setting_names_key_and_value() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("net/ipv4")).unwrap();
        let ok = [set("net/ipv4/ip_forward".into(), "0")];
        apply(dir.path(), &ok).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("net/ipv4/ip_forward")).unwrap(),
            "0"
        );
        let missing = [set("net/ipv6/conf/all/forwarding".into(), "0")];
        let e = apply(dir.path(), &missing).unwrap_err().to_string();
        assert!(
            e.starts_with("kernel setting net.ipv6.conf.all.forwarding = 0: "),
            "{e}"
        );
    }
}
