//! The rules of a site config, one function used by `imrs-build site check`, `site sign` and the
//! appliance's init. A rule exists for each thing the appliance would refuse at boot (BIRD's
//! parser, the network stage, the phone-home client) or must never do (announce or configure
//! IMRS space where it does not belong, peer with itself, talk to a multicast or loopback
//! address). Each refusal names the file, the key path, the value (escaped) and the rule.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;

use super::addr::{bad_interface_prefix, canonical, imrs_space, not_host};
use super::phone_home::{ca_problem, url_problem};
use super::{SITE_VERSION, Site, parse_server};
use crate::error::{Checker, ConfigError};
use crate::imrs::{IMRS_ASN, LROOT_V4, LROOT_V6, imrs_prefix, is_documentation};

/// Longest `site_id`, in bytes.
pub const SITE_ID_MAX: usize = 64;
/// Most interfaces.
pub const INTERFACES_MAX: usize = 16;
/// Most addresses on one interface.
pub const ADDRESSES_MAX: usize = 32;
/// Most BGP neighbours.
pub const NEIGHBORS_MAX: usize = 32;
/// Most NTP servers, and most zone transfer servers.
pub const SERVERS_MAX: usize = 16;
/// Longest TCP-MD5 password (Linux `TCP_MD5SIG_MAXKEYLEN`).
pub const PASSWORD_MAX: usize = 80;

/// Whether `s` is a DNS host name (letters, digits, hyphens; labels of 1-63; at most 253).
pub(super) fn is_dns_name(s: &str) -> bool {
    let body = s.strip_suffix('.').unwrap_or(s);
    !body.is_empty()
        && body.len() <= 253
        && body.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
        })
}

fn family_name(a: &IpAddr) -> &'static str {
    if a.is_ipv4() { "IPv4" } else { "IPv6" }
}

fn is_v6_link_local(a: &IpAddr) -> bool {
    matches!(a, IpAddr::V6(v6) if v6.is_unicast_link_local())
}

/// What the site's own addresses are, for the rules that compare against them.
struct Own {
    /// Interface addresses (canonical).
    interfaces: Vec<IpAddr>,
    /// The two service addresses.
    service: [IpAddr; 2],
}

impl Own {
    fn of(s: &Site) -> Own {
        Own {
            interfaces: s
                .interfaces
                .iter()
                .flat_map(|i| &i.addresses)
                .map(|a| canonical(a.addr()))
                .collect(),
            service: [IpAddr::V4(s.service.ipv4), IpAddr::V6(s.service.ipv6)],
        }
    }

    /// Why `a` (a remote host: gateway, neighbour, server) is the appliance itself, or `None`.
    fn is_self(&self, a: IpAddr) -> Option<&'static str> {
        let a = canonical(a);
        if self.service.contains(&a) {
            Some("is the appliance's own service address")
        } else if self.interfaces.contains(&a) {
            Some("is the appliance's own address")
        } else {
            None
        }
    }
}

/// Checks that `a`, the address of a remote host, is a host on a wire and not the appliance.
fn remote(c: &Checker<'_>, own: &Own, key: &str, a: IpAddr) -> Result<(), ConfigError> {
    if let Some(why) = not_host(a) {
        c.ensure(false, key, a, why)?;
    }
    if let Some(why) = own.is_self(a) {
        c.ensure(false, key, a, why)?;
    }
    Ok(())
}

/// Checks every rule of a site config; `path` names the file in errors.
pub fn validate(path: &Path, s: &Site) -> Result<(), ConfigError> {
    let c = Checker { path };
    identity(&c, s)?;
    let own = Own::of(s);
    interfaces(&c, s, &own)?;
    bgp(&c, s, &own)?;
    time_and_zone(&c, s, &own)?;
    phone_home(&c, s)?;
    dns(&c, s)?;
    fleet(&c, s)?;
    super::host::check(&c, &s.host)?;
    if let Some(t) = &s.telemetry {
        // The key is a secret: an error shows its first characters and its length only.
        let shown = format!(
            "{}... ({} characters)",
            t.source_key.chars().take(4).collect::<String>(),
            t.source_key.chars().count()
        );
        c.ensure(
            t.key_bytes().is_some_and(|k| k != [0u8; 32]),
            "telemetry.source_key",
            shown,
            "64 hex digits (32 random bytes, the same on every box of the fleet), not all zero",
        )?;
    }
    c.ensure(
        (60..=86_400).contains(&s.slots.health_deadline_s),
        "slots.health_deadline_s",
        s.slots.health_deadline_s,
        "60 to 86400 seconds (a slot on trial needs time to transfer and verify the zone and \
         bring BGP up; a day is the most a box may stay on an unproven image)",
    )
}

/// The refusal of a config written for another schema version.
pub(super) fn wrong_version(path: &Path, version: u32) -> ConfigError {
    ConfigError::invalid(
        path,
        "version",
        version,
        format!(
            "this build understands site version {SITE_VERSION} (version 2 added device, \
             sequence and [dns])"
        ),
    )
}

fn identity(c: &Checker<'_>, s: &Site) -> Result<(), ConfigError> {
    if s.version != SITE_VERSION {
        return Err(wrong_version(c.path, s.version));
    }
    c.ensure(
        is_dns_name(&s.instance),
        "instance",
        &s.instance,
        "a DNS host name (letters, digits, '-', labels of 1-63, at most 253)",
    )?;
    c.length("site_id", &s.site_id, 1, SITE_ID_MAX)?;
    c.ensure(
        s.site_id
            .bytes()
            .all(|ch| ch.is_ascii_alphanumeric() || b"-_.".contains(&ch)),
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
    Ok(())
}

fn interfaces(c: &Checker<'_>, s: &Site, own: &Own) -> Result<(), ConfigError> {
    c.ensure(
        !s.interfaces.is_empty(),
        "interfaces",
        "[]",
        "at least one interface",
    )?;
    c.count("interfaces", &s.interfaces, INTERFACES_MAX)?;
    let mut names = BTreeSet::new();
    let mut macs = BTreeSet::new();
    let mut seen: BTreeSet<IpAddr> = BTreeSet::new();
    for (i, ifc) in s.interfaces.iter().enumerate() {
        let k = |f: &str| format!("interfaces[{i}].{f}");
        c.ensure(
            !ifc.name.is_empty()
                && ifc.name.len() < 16
                && ifc
                    .name
                    .bytes()
                    .all(|ch| ch.is_ascii_alphanumeric() || b"-_.".contains(&ch)),
            k("name"),
            &ifc.name,
            "a kernel interface name (1-15 letters, digits, '-', '_', '.')",
        )?;
        c.ensure(
            names.insert(ifc.name.clone()),
            k("name"),
            &ifc.name,
            "duplicate interface",
        )?;
        if let Some(mac) = &ifc.mac {
            let bytes: Vec<Option<u8>> = mac
                .split(':')
                .map(|b| {
                    (b.len() == 2)
                        .then(|| u8::from_str_radix(b, 16).ok())
                        .flatten()
                })
                .collect();
            c.ensure(
                bytes.len() == 6 && bytes.iter().all(Option::is_some),
                k("mac"),
                mac,
                "six colon-separated hex bytes",
            )?;
            let first = bytes.first().copied().flatten().unwrap_or(0);
            c.ensure(
                first & 1 == 0 && bytes.iter().any(|b| *b != Some(0)),
                k("mac"),
                mac,
                "a unicast MAC address of a network card (not multicast, not all zeros)",
            )?;
            c.ensure(
                macs.insert(mac.to_ascii_lowercase()),
                k("mac"),
                mac,
                "the same MAC address is given to another interface",
            )?;
        }
        c.ensure(
            !ifc.addresses.is_empty(),
            k("addresses"),
            "[]",
            "at least one address",
        )?;
        c.count(k("addresses"), &ifc.addresses, ADDRESSES_MAX)?;
        for (j, a) in ifc.addresses.iter().enumerate() {
            let key = format!("interfaces[{i}].addresses[{j}]");
            // IMRS space first, also when written as an IPv4-mapped IPv6 address.
            c.ensure(
                imrs_space(a.addr()).is_none(),
                &key,
                a,
                "IMRS service space goes on the service interface, not a management interface",
            )?;
            if let Some(why) = not_host(a.addr()) {
                c.ensure(false, &key, a, format!("not an interface address: {why}"))?;
            }
            if let Some(why) = bad_interface_prefix(a) {
                c.ensure(false, &key, a, why)?;
            }
            c.ensure(
                !own.service.contains(&a.addr()),
                &key,
                a,
                "the service address goes on the service interface (imrs0), not here",
            )?;
            c.ensure(
                seen.insert(canonical(a.addr())),
                &key,
                a,
                "the same address is listed twice (on this or another interface)",
            )?;
        }
        if let Some(gw) = ifc.gateway4 {
            let ip = IpAddr::V4(gw);
            remote(c, own, &k("gateway4"), ip)?;
            c.ensure(
                ifc.addresses.iter().any(|a| a.contains(&ip)),
                k("gateway4"),
                gw,
                "must be inside one of the interface's IPv4 subnets",
            )?;
        }
        if let Some(gw) = ifc.gateway6 {
            let ip = IpAddr::V6(gw);
            remote(c, own, &k("gateway6"), ip)?;
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
    )
}

fn bgp(c: &Checker<'_>, s: &Site, own: &Own) -> Result<(), ConfigError> {
    c.ensure(
        own.interfaces.contains(&IpAddr::V4(s.bgp.router_id)),
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
    c.count("bgp.neighbors", &s.bgp.neighbors, NEIGHBORS_MAX)?;
    let mut names = BTreeSet::new();
    let mut addresses = BTreeSet::new();
    for (i, n) in s.bgp.neighbors.iter().enumerate() {
        let k = |f: &str| format!("bgp.neighbors[{i}].{f}");
        c.ensure(
            !n.name.is_empty()
                && n.name.len() <= 32
                && n.name.starts_with(|ch: char| ch.is_ascii_alphabetic())
                && n.name
                    .bytes()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == b'_'),
            k("name"),
            &n.name,
            "a letter then letters, digits, '_' (at most 32)",
        )?;
        c.ensure(
            names.insert(n.name.clone()),
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
        neighbor_address(c, s, own, i, n)?;
        c.ensure(
            addresses.insert(n.address),
            k("address"),
            n.address,
            "a second session to the same address",
        )?;
        if let Some(pw) = &n.password {
            let bad = pw
                .bytes()
                .position(|b| !(0x20..0x7f).contains(&b) || b == b'"' || b == b'\\');
            let detail = match bad {
                Some(at) => format!(" (character {} is not allowed)", at + 1),
                None => String::new(),
            };
            c.ensure(
                (1..=PASSWORD_MAX).contains(&pw.len()) && bad.is_none(),
                k("password"),
                "(hidden)",
                format!(
                    "1-{PASSWORD_MAX} printable ASCII characters without '\"' or '\\', no \
                     control characters{detail}"
                ),
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
    Ok(())
}

fn neighbor_address(
    c: &Checker<'_>,
    s: &Site,
    own: &Own,
    i: usize,
    n: &super::Neighbor,
) -> Result<(), ConfigError> {
    let key = format!("bgp.neighbors[{i}].address");
    let ikey = format!("bgp.neighbors[{i}].interface");
    remote(c, own, &key, n.address)?;
    c.ensure(
        imrs_space(n.address).is_none(),
        &key,
        n.address,
        "a neighbour inside IMRS service space cannot be the host's router",
    )?;
    c.ensure(
        own.interfaces
            .iter()
            .any(|a| a.is_ipv4() == n.address.is_ipv4()),
        &key,
        n.address,
        format!(
            "an {} neighbour needs an {} address on an interface",
            family_name(&n.address),
            family_name(&n.address)
        ),
    )?;
    let ifc = match &n.interface {
        Some(name) => {
            let found = s.interfaces.iter().find(|x| &x.name == name);
            c.ensure(
                found.is_some(),
                &ikey,
                name,
                "must name one of the site's interfaces",
            )?;
            c.ensure(
                n.multihop.is_none(),
                &ikey,
                name,
                "an interface is for a directly connected neighbour, not a multihop one",
            )?;
            found
        }
        None => None,
    };
    if is_v6_link_local(&n.address) {
        // BIRD refuses a link-local neighbour without an interface ("Link-local addresses
        // require defined interface"), and one can only be a single hop away.
        c.ensure(
            ifc.is_some(),
            &key,
            n.address,
            "a link-local neighbour needs `interface` (the link it is on)",
        )?;
        return c.ensure(
            n.multihop.is_none(),
            &key,
            n.address,
            "a link-local neighbour is directly connected; remove multihop",
        );
    }
    let on = |list: &[IpNet]| list.iter().any(|a| a.contains(&n.address));
    match (ifc, n.multihop) {
        (Some(x), _) => c.ensure(
            on(&x.addresses),
            &key,
            n.address,
            format!("not on a subnet of interface {}", x.name),
        ),
        (None, None) => c.ensure(
            s.interfaces.iter().any(|x| on(&x.addresses)),
            &key,
            n.address,
            "not on any interface's subnet; set multihop for a non-adjacent neighbour",
        ),
        (None, Some(_)) => Ok(()),
    }
}

fn time_and_zone(c: &Checker<'_>, s: &Site, own: &Own) -> Result<(), ConfigError> {
    ntp(c, s, own)?;
    c.ensure(
        !s.ntp.trust_rtc || s.lab,
        "ntp.trust_rtc",
        "true",
        "only a lab site may trust the RTC",
    )?;
    c.count("zone.servers", &s.zone.servers, SERVERS_MAX)?;
    for (i, srv) in s.zone.servers.iter().enumerate() {
        let key = format!("zone.servers[{i}]");
        c.length(&key, srv, 1, 64)?;
        let parsed = parse_server(srv);
        c.ensure(
            parsed.is_some(),
            &key,
            srv,
            "an address, V4:PORT or [V6]:PORT",
        )?;
        if let Some(sa) = parsed {
            c.ensure(sa.port() != 0, &key, srv, "port 0 is no port; 1-65535")?;
            remote(c, own, &key, sa.ip())?;
        }
    }
    Ok(())
}

/// The time sources: NTS servers or plain ones (never both), or a lab's RTC.
fn ntp(c: &Checker<'_>, s: &Site, own: &Own) -> Result<(), ConfigError> {
    let ntp = &s.ntp;
    c.ensure(
        !ntp.servers.is_empty() || !ntp.nts.is_empty() || ntp.trust_rtc,
        "ntp.servers",
        "[]",
        "give NTS servers (ntp.nts), NTP servers (ntp.servers), or trust_rtc = true (labs)",
    )?;
    c.ensure(
        ntp.servers.is_empty() || ntp.nts.is_empty(),
        "ntp.servers",
        format!(
            "({} entries next to {} in ntp.nts)",
            ntp.servers.len(),
            ntp.nts.len()
        ),
        "NTS servers or plain NTP servers, not both: an unauthenticated source next to NTS \
         ones lets an on-path attacker move the clock",
    )?;
    c.count("ntp.servers", &ntp.servers, SERVERS_MAX)?;
    for (i, a) in ntp.servers.iter().enumerate() {
        remote(c, own, &format!("ntp.servers[{i}]"), *a)?;
    }
    c.count("ntp.nts", &ntp.nts, SERVERS_MAX)?;
    for (i, n) in ntp.nts.iter().enumerate() {
        let key = format!("ntp.nts[{i}].name");
        let as_address = n.name.parse::<IpAddr>().ok();
        c.ensure(
            as_address.is_some() || (is_dns_name(&n.name) && !n.name.ends_with('.')),
            &key,
            &n.name,
            "the DNS name in the server's certificate (letters, digits, hyphens, dots; no \
             final dot), or its IP address",
        )?;
        if let Some(a) = as_address {
            c.ensure(
                canonical(a) == canonical(n.address),
                &key,
                &n.name,
                format!(
                    "an address as the name must be the server's address {}",
                    n.address
                ),
            )?;
        }
        c.ensure(
            !n.name.eq_ignore_ascii_case("localhost"),
            &key,
            &n.name,
            "a remote server's name (localhost is this box)",
        )?;
        c.ensure(
            !ntp.nts[..i]
                .iter()
                .any(|o| o.name.eq_ignore_ascii_case(&n.name)),
            &key,
            &n.name,
            "each NTS server once (a name maps to one address)",
        )?;
        remote(c, own, &format!("ntp.nts[{i}].address"), n.address)?;
        c.ensure(
            n.port != 0,
            format!("ntp.nts[{i}].port"),
            n.port,
            "port 0 is no port; 1-65535 (NTS-KE's is 4460)",
        )?;
    }
    let first = ntp.nts_ca_pem.lines().next().unwrap_or("");
    if ntp.nts.is_empty() {
        c.ensure(
            ntp.nts_ca_pem.is_empty(),
            "ntp.nts_ca_pem",
            format!("{first}..."),
            "only with NTS servers (ntp.nts)",
        )?;
    } else if let Some(why) = ca_problem(&ntp.nts_ca_pem) {
        c.ensure(
            false,
            "ntp.nts_ca_pem",
            format!("{first}..."),
            format!("the PEM CA certificate(s) the NTS servers' certificates chain to: {why}"),
        )?;
    }
    Ok(())
}

fn phone_home(c: &Checker<'_>, s: &Site) -> Result<(), ConfigError> {
    let url = &s.phone_home.url;
    if let Some(why) = url_problem(url) {
        c.ensure(false, "phone_home.url", url, why)?;
    }
    if let Some(why) = ca_problem(&s.phone_home.ca_pem) {
        let first = s.phone_home.ca_pem.lines().next().unwrap_or("");
        c.ensure(
            false,
            "phone_home.ca_pem",
            format!("{first}..."),
            format!("a PEM CA certificate: {why}"),
        )?;
    }
    c.ensure(
        (10..=86_400).contains(&s.phone_home.heartbeat_s),
        "phone_home.heartbeat_s",
        s.phone_home.heartbeat_s,
        "10 to 86400 seconds",
    )
}

fn fleet(c: &Checker<'_>, s: &Site) -> Result<(), ConfigError> {
    let keys = &s.fleet.ops_public_keys;
    c.ensure(
        keys.len() <= 4,
        "fleet.ops_public_keys",
        keys.len(),
        "at most 4 operations keys",
    )?;
    for (i, k) in keys.iter().enumerate() {
        if let Err(e) = crate::keys::parse_public(k, c.path) {
            let first = k.lines().next().unwrap_or("");
            c.ensure(
                false,
                format!("fleet.ops_public_keys[{i}]"),
                format!("{first}..."),
                format!("an Ed25519 public key in PEM: {e}"),
            )?;
        }
    }
    Ok(())
}

fn dns(c: &Checker<'_>, s: &Site) -> Result<(), ConfigError> {
    let Some(rrl) = &s.dns.rrl else {
        return Ok(());
    };
    c.ensure(
        (1..=1_000_000).contains(&rrl.responses_per_second),
        "dns.rrl.responses_per_second",
        rrl.responses_per_second,
        "1 to 1000000 responses per second",
    )?;
    c.ensure(
        rrl.slip <= 100,
        "dns.rrl.slip",
        rrl.slip,
        "0 to 100 (0: drop every limited response)",
    )?;
    c.ensure(
        (8..=32).contains(&rrl.ipv4_prefix_length),
        "dns.rrl.ipv4_prefix_length",
        rrl.ipv4_prefix_length,
        "8 to 32",
    )?;
    c.ensure(
        (16..=64).contains(&rrl.ipv6_prefix_length),
        "dns.rrl.ipv6_prefix_length",
        rrl.ipv6_prefix_length,
        "16 to 64 (NSD groups IPv6 clients by at most /64)",
    )
}
