//! Site configs (`images/sites/*.toml`): one per appliance, written by ICANN DNS Engineering for the
//! host organisation's network. Signed at provisioning; the init refuses an unsigned one.
//!
//! Validation is where routing safety starts: nothing but the five IMRS prefixes can be requested
//! for announcement, peers cannot claim AS 20144, and every address has the right family.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::error::{Checker, ConfigError, parse_toml, read};
use crate::imrs::{IMRS_ASN, IMRS_PREFIXES, LROOT_V4, LROOT_V6, imrs_prefix, is_documentation};

/// The site schema version this build understands.
pub const SITE_VERSION: u32 = 1;

/// A site config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Site {
    /// Schema version; must be [`SITE_VERSION`].
    pub version: u32,
    /// Instance name, a DNS name (answered in NSID, `hostname.bind`, `id.server`).
    pub instance: String,
    /// Site identifier used in reports and the fleet list.
    pub site_id: String,
    /// A lab site: may use documentation-range service addresses; shown on the console and in
    /// every report.
    #[serde(default)]
    pub lab: bool,
    /// Service addresses (default: the L-root addresses).
    #[serde(default)]
    pub service: Service,
    /// Network interfaces.
    pub interfaces: Vec<Interface>,
    /// BGP.
    pub bgp: Bgp,
    /// Time.
    #[serde(default)]
    pub ntp: Ntp,
    /// Phone home.
    pub phone_home: PhoneHome,
    /// Root zone sources (default: ICANN's transfer servers).
    #[serde(default)]
    pub zone: ZoneSources,
}

/// Addresses the DNS service answers on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// IPv4 service address.
    pub ipv4: Ipv4Addr,
    /// IPv6 service address.
    pub ipv6: Ipv6Addr,
}

impl Default for Service {
    fn default() -> Self {
        Service {
            ipv4: LROOT_V4,
            ipv6: LROOT_V6,
        }
    }
}

/// One network interface.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    /// Kernel name (`eth0`, `enp1s0`).
    pub name: String,
    /// Optional MAC address to match instead of relying on names.
    #[serde(default)]
    pub mac: Option<String>,
    /// Addresses with prefix length.
    pub addresses: Vec<IpNet>,
    /// IPv4 default gateway.
    #[serde(default)]
    pub gateway4: Option<Ipv4Addr>,
    /// IPv6 default gateway.
    #[serde(default)]
    pub gateway6: Option<Ipv6Addr>,
    /// MTU.
    #[serde(default)]
    pub mtu: Option<u32>,
}

/// BGP settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bgp {
    /// Router id (an IPv4 address of the appliance).
    pub router_id: Ipv4Addr,
    /// Prefixes to announce; default all five IMRS prefixes; only IMRS prefixes are accepted.
    #[serde(default)]
    pub announce: Option<Vec<IpNet>>,
    /// Neighbours (the host organisation's routers).
    pub neighbors: Vec<Neighbor>,
}

/// One BGP neighbour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Neighbor {
    /// Name, used for the BIRD protocol name.
    pub name: String,
    /// Neighbour address.
    pub address: IpAddr,
    /// Neighbour AS.
    pub asn: u32,
    /// TCP-MD5 password.
    #[serde(default)]
    pub password: Option<String>,
    /// eBGP multihop TTL (neighbour not on a connected subnet).
    #[serde(default)]
    pub multihop: Option<u8>,
    /// Tag announcements with community `20144:<peer asn>`.
    #[serde(default)]
    pub community: bool,
    /// Tag announcements NO_EXPORT.
    #[serde(default)]
    pub no_export: bool,
    /// Prepend AS 20144 this many extra times.
    #[serde(default)]
    pub prepend: u8,
}

/// Time sources.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ntp {
    /// NTP servers (addresses; the appliance resolves no names before it has a clock).
    #[serde(default)]
    pub servers: Vec<IpAddr>,
    /// Trust the RTC instead (labs only; shown on the console and recorded).
    #[serde(default)]
    pub trust_rtc: bool,
}

/// Where the installation report goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhoneHome {
    /// HTTPS URL receiving reports.
    pub url: String,
    /// PEM CA certificate(s) the receiver's certificate must chain to (no system trust store).
    pub ca_pem: String,
}

/// Root zone transfer sources.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneSources {
    /// Transfer servers (`ADDR` or `[V6]:PORT` / `V4:PORT`); empty means ICANN's.
    #[serde(default)]
    pub servers: Vec<String>,
}

impl Site {
    /// Prefixes this site announces (validated to be IMRS prefixes).
    pub fn announced(&self) -> Vec<IpNet> {
        match &self.bgp.announce {
            Some(list) => list.clone(),
            None => IMRS_PREFIXES.iter().map(|p| p.prefix).collect(),
        }
    }
}

/// Parses and validates a site config from text; `path` names it in errors.
pub fn parse(path: &Path, text: &str) -> Result<Site, ConfigError> {
    let site: Site = parse_toml(path, text)?;
    validate(path, &site)?;
    Ok(site)
}

/// Loads and validates a site config file.
pub fn load(path: &Path) -> Result<Site, ConfigError> {
    parse(path, &read(path)?)
}

fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.trim_end_matches('.').split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

fn family_name(a: &IpAddr) -> &'static str {
    if a.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// Checks every rule of a site config.
pub fn validate(path: &Path, s: &Site) -> Result<(), ConfigError> {
    let c = Checker { path };
    c.ensure(
        s.version == SITE_VERSION,
        "version",
        s.version,
        format!("this build understands site version {SITE_VERSION}"),
    )?;
    c.ensure(
        is_dns_name(&s.instance),
        "instance",
        &s.instance,
        "a DNS host name",
    )?;
    c.ensure(
        !s.site_id.is_empty()
            && s.site_id
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch)),
        "site_id",
        &s.site_id,
        "letters, digits, '-', '_', '.'",
    )?;

    // Service addresses: the L-root addresses, or documentation ranges in a lab.
    for (key, addr, real) in [
        (
            "service.ipv4",
            IpAddr::V4(s.service.ipv4),
            IpAddr::V4(LROOT_V4),
        ),
        (
            "service.ipv6",
            IpAddr::V6(s.service.ipv6),
            IpAddr::V6(LROOT_V6),
        ),
    ] {
        c.ensure(
            addr == real || (s.lab && is_documentation(addr)),
            key,
            addr,
            format!("must be {real} (a lab site may use a documentation-range address)"),
        )?;
    }

    // Interfaces.
    c.ensure(
        !s.interfaces.is_empty(),
        "interfaces",
        "[]",
        "at least one interface",
    )?;
    let mut names = BTreeSet::new();
    for (i, ifc) in s.interfaces.iter().enumerate() {
        let k = |f: &str| format!("interfaces[{i}].{f}");
        c.ensure(
            !ifc.name.is_empty()
                && ifc.name.len() < 16
                && ifc
                    .name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch)),
            k("name"),
            &ifc.name,
            "a kernel interface name (1-15 characters)",
        )?;
        c.ensure(
            names.insert(ifc.name.clone()),
            k("name"),
            &ifc.name,
            "duplicate interface",
        )?;
        c.ensure(
            !ifc.addresses.is_empty(),
            k("addresses"),
            "[]",
            "at least one address",
        )?;
        for (j, a) in ifc.addresses.iter().enumerate() {
            c.ensure(
                imrs_covering(&a.addr()).is_none(),
                format!("interfaces[{i}].addresses[{j}]"),
                a,
                "IMRS service space goes on the service interface, not a management interface",
            )?;
        }
        if let Some(gw) = ifc.gateway4 {
            c.ensure(
                ifc.addresses.iter().any(|a| a.contains(&IpAddr::V4(gw))),
                k("gateway4"),
                gw,
                "must be inside one of the interface's IPv4 subnets",
            )?;
        }
        if let Some(gw) = ifc.gateway6 {
            let ip = IpAddr::V6(gw);
            c.ensure(
                ifc.addresses.iter().any(|a| a.contains(&ip)) || gw.is_unicast_link_local(),
                k("gateway6"),
                gw,
                "must be link-local or inside one of the interface's IPv6 subnets",
            )?;
        }
        if let Some(mtu) = ifc.mtu {
            c.ensure((1280..=9216).contains(&mtu), k("mtu"), mtu, "1280..=9216")?;
        }
        if let Some(mac) = &ifc.mac {
            let ok = mac.split(':').count() == 6
                && mac
                    .split(':')
                    .all(|b| b.len() == 2 && u8::from_str_radix(b, 16).is_ok());
            c.ensure(ok, k("mac"), mac, "six colon-separated hex bytes")?;
        }
    }
    let has_family = |v4: bool| {
        s.interfaces
            .iter()
            .flat_map(|i| &i.addresses)
            .any(|a| a.addr().is_ipv4() == v4)
    };
    c.ensure(
        has_family(true),
        "interfaces",
        "no IPv4 address",
        "dual stack is required",
    )?;
    c.ensure(
        has_family(false),
        "interfaces",
        "no IPv6 address",
        "dual stack is required",
    )?;
    c.ensure(
        s.interfaces.iter().any(|i| i.gateway4.is_some()),
        "interfaces",
        "no gateway4",
        "an IPv4 default gateway is required",
    )?;
    c.ensure(
        s.interfaces.iter().any(|i| i.gateway6.is_some()),
        "interfaces",
        "no gateway6",
        "an IPv6 default gateway is required",
    )?;

    // BGP.
    let own: Vec<IpAddr> = s
        .interfaces
        .iter()
        .flat_map(|i| &i.addresses)
        .map(|a| a.addr())
        .collect();
    c.ensure(
        own.contains(&IpAddr::V4(s.bgp.router_id)),
        "bgp.router_id",
        s.bgp.router_id,
        "must be one of the appliance's IPv4 addresses",
    )?;
    if let Some(list) = &s.bgp.announce {
        c.ensure(
            !list.is_empty(),
            "bgp.announce",
            "[]",
            "announce at least one prefix, or omit the key",
        )?;
        let mut seen = BTreeSet::new();
        for (i, p) in list.iter().enumerate() {
            c.ensure(
                imrs_prefix(p).is_some(),
                format!("bgp.announce[{i}]"),
                p,
                "only the five IMRS prefixes may be announced (199.7.82.0/23, 199.7.83.0/24, \
                 2001:500:3::/48, 2001:500:9e::/47, 2001:500:9f::/48)",
            )?;
            c.ensure(
                seen.insert(*p),
                format!("bgp.announce[{i}]"),
                p,
                "listed twice",
            )?;
        }
    }
    c.ensure(
        !s.bgp.neighbors.is_empty(),
        "bgp.neighbors",
        "[]",
        "at least one neighbour",
    )?;
    let mut nnames = BTreeSet::new();
    for (i, n) in s.bgp.neighbors.iter().enumerate() {
        let k = |f: &str| format!("bgp.neighbors[{i}].{f}");
        c.ensure(
            !n.name.is_empty()
                && n.name.len() <= 32
                && n.name.starts_with(|ch: char| ch.is_ascii_alphabetic())
                && n.name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '_'),
            k("name"),
            &n.name,
            "a letter then letters, digits, '_' (at most 32)",
        )?;
        c.ensure(
            nnames.insert(n.name.clone()),
            k("name"),
            &n.name,
            "duplicate neighbour name",
        )?;
        c.ensure(
            n.asn != IMRS_ASN,
            k("asn"),
            n.asn,
            "the neighbour must be the host's AS, not AS 20144 (eBGP only)",
        )?;
        c.ensure(
            n.asn != 0 && n.asn != 23456 && n.asn != u32::MAX,
            k("asn"),
            n.asn,
            "a usable AS number",
        )?;
        let onlink = s
            .interfaces
            .iter()
            .any(|ifc| ifc.addresses.iter().any(|a| a.contains(&n.address)));
        let own_family = own.iter().any(|a| a.is_ipv4() == n.address.is_ipv4());
        c.ensure(
            own_family,
            k("address"),
            n.address,
            format!(
                "an {} neighbour needs an {} address on an interface",
                family_name(&n.address),
                family_name(&n.address)
            ),
        )?;
        c.ensure(
            onlink || n.multihop.is_some(),
            k("address"),
            n.address,
            "not on any interface's subnet; set multihop for a non-adjacent neighbour",
        )?;
        c.ensure(
            !own.contains(&n.address),
            k("address"),
            n.address,
            "is the appliance's own address",
        )?;
        if let Some(pw) = &n.password {
            c.ensure(
                !pw.is_empty() && pw.len() <= 80 && !pw.contains(['"', '\n', '\\']),
                k("password"),
                "(hidden)",
                "1-80 characters without quotes, backslashes or newlines",
            )?;
        }
        if let Some(h) = n.multihop {
            c.ensure((2..=64).contains(&h), k("multihop"), h, "2..=64 hops")?;
        }
        c.ensure(n.prepend <= 5, k("prepend"), n.prepend, "at most 5")?;
    }
    for fam in [true, false] {
        c.ensure(
            s.bgp.neighbors.iter().any(|n| n.address.is_ipv4() == fam),
            "bgp.neighbors",
            format!("no {} neighbour", if fam { "IPv4" } else { "IPv6" }),
            "dual stack is required: one IPv4 and one IPv6 session at least",
        )?;
    }

    // Time.
    c.ensure(
        !s.ntp.servers.is_empty() || s.ntp.trust_rtc,
        "ntp.servers",
        "[]",
        "give NTP servers, or trust_rtc = true (labs)",
    )?;
    c.ensure(
        !s.ntp.trust_rtc || s.lab,
        "ntp.trust_rtc",
        "true",
        "only a lab site may trust the RTC",
    )?;

    // Phone home.
    c.ensure(
        s.phone_home.url.starts_with("https://") && s.phone_home.url.len() > 8,
        "phone_home.url",
        &s.phone_home.url,
        "an https:// URL",
    )?;
    c.ensure(
        s.phone_home.ca_pem.contains("-----BEGIN CERTIFICATE-----"),
        "phone_home.ca_pem",
        "(no certificate)",
        "a PEM CA certificate",
    )?;

    // Zone sources.
    for (i, srv) in s.zone.servers.iter().enumerate() {
        c.ensure(
            parse_server(srv).is_some(),
            format!("zone.servers[{i}]"),
            srv,
            "an address, V4:PORT or [V6]:PORT",
        )?;
    }
    Ok(())
}

/// Parses `ADDR`, `V4:PORT` or `[V6]:PORT` (port 53 by default).
pub fn parse_server(s: &str) -> Option<std::net::SocketAddr> {
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(sa);
    }
    s.parse::<IpAddr>()
        .ok()
        .map(|ip| std::net::SocketAddr::new(ip, 53))
}

fn imrs_covering(addr: &IpAddr) -> Option<IpNet> {
    IMRS_PREFIXES
        .iter()
        .find(|p| p.prefix.contains(addr))
        .map(|p| p.prefix)
}

#[cfg(test)]
mod tests;
