//! IMRS constants: the facts an L-root appliance must never get wrong.
//!
//! Every value here comes from `docs/facts.md` (section "Routing" and "The root zone").
//! Nothing else in the workspace spells these numbers out; everything refers to this module.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Origin AS of every IMRS announcement (docs/facts.md, Routing).
pub const IMRS_ASN: u32 = 20144;

/// Whether a prefix is a covering "failsafe" prefix or a specific one (docs/facts.md, ICANN practice:
/// an unhealthy node withdraws the specifics and keeps the covering prefixes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PrefixKind {
    /// Covering prefix (/23, /47), announced once the node has served correctly.
    Covering,
    /// Specific prefix (/24, /48), announced only while healthy.
    Specific,
}

/// One prefix the appliance may announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ImrsPrefix {
    /// The prefix.
    pub prefix: IpNet,
    /// Covering or specific.
    pub kind: PrefixKind,
    /// Why it is announced.
    pub note: &'static str,
}

const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> IpNet {
    match Ipv4Net::new(Ipv4Addr::new(a, b, c, d), len) {
        Ok(n) => IpNet::V4(n),
        Err(_) => panic!("invalid IPv4 prefix constant"),
    }
}

#[allow(clippy::too_many_arguments)]
const fn v6(s: [u16; 8], len: u8) -> IpNet {
    match Ipv6Net::new(
        Ipv6Addr::new(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]),
        len,
    ) {
        Ok(n) => IpNet::V6(n),
        Err(_) => panic!("invalid IPv6 prefix constant"),
    }
}

/// Exactly the five prefixes an IMRS-Single may announce (docs/facts.md, Routing). Nothing else, ever.
pub const IMRS_PREFIXES: [ImrsPrefix; 5] = [
    ImrsPrefix {
        prefix: v4(199, 7, 82, 0, 23),
        kind: PrefixKind::Covering,
        note: "covers 199.7.83.0/24 (failsafe)",
    },
    ImrsPrefix {
        prefix: v4(199, 7, 83, 0, 24),
        kind: PrefixKind::Specific,
        note: "holds 199.7.83.42",
    },
    ImrsPrefix {
        prefix: v6([0x2001, 0x500, 0x3, 0, 0, 0, 0, 0], 48),
        kind: PrefixKind::Specific,
        note: "held the pre-2016 address 2001:500:3::42",
    },
    ImrsPrefix {
        prefix: v6([0x2001, 0x500, 0x9e, 0, 0, 0, 0, 0], 47),
        kind: PrefixKind::Covering,
        note: "covers 2001:500:9f::/48 (failsafe)",
    },
    ImrsPrefix {
        prefix: v6([0x2001, 0x500, 0x9f, 0, 0, 0, 0, 0], 48),
        kind: PrefixKind::Specific,
        note: "holds 2001:500:9f::42",
    },
];

/// The L-root IPv4 service address (docs/facts.md).
pub const LROOT_V4: Ipv4Addr = Ipv4Addr::new(199, 7, 83, 42);
/// The L-root IPv6 service address (docs/facts.md).
pub const LROOT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0x500, 0x9f, 0, 0, 0, 0, 0x42);

/// Looks up an IMRS prefix; `None` for anything that may never be announced.
pub fn imrs_prefix(net: &IpNet) -> Option<&'static ImrsPrefix> {
    IMRS_PREFIXES.iter().find(|p| p.prefix == *net)
}

/// One of ICANN's root zone transfer servers (docs/facts.md, The root zone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferServer {
    /// Host name.
    pub name: &'static str,
    /// IPv4 address.
    pub v4: Ipv4Addr,
    /// IPv6 address.
    pub v6: Ipv6Addr,
}

impl TransferServer {
    /// Both addresses on port 53, IPv6 first.
    pub fn socket_addrs(&self) -> [SocketAddr; 2] {
        [
            SocketAddr::new(IpAddr::V6(self.v6), 53),
            SocketAddr::new(IpAddr::V4(self.v4), 53),
        ]
    }
}

/// ICANN's AXFR servers for the root zone, in preference order (docs/facts.md).
pub const ICANN_XFR_SERVERS: [TransferServer; 2] = [
    TransferServer {
        name: "lax.xfr.dns.icann.org",
        v4: Ipv4Addr::new(192, 0, 32, 132),
        v6: Ipv6Addr::new(0x2620, 0, 0x2d0, 0x202, 0, 0, 0, 0x132),
    },
    TransferServer {
        name: "iad.xfr.dns.icann.org",
        v4: Ipv4Addr::new(192, 0, 47, 132),
        v6: Ipv6Addr::new(0x2620, 0, 0x2830, 0x202, 0, 0, 0, 0x132),
    },
];

/// HTTPS copy of the root zone, a further fallback source (docs/facts.md).
pub const ROOT_ZONE_HTTPS: &str = "https://www.internic.net/domain/root.zone";

/// Root zone SOA timers in seconds (docs/facts.md): refresh, retry, expire.
pub const ROOT_SOA_REFRESH: u32 = 1800;
/// SOA retry (docs/facts.md).
pub const ROOT_SOA_RETRY: u32 = 900;
/// SOA expire (docs/facts.md).
pub const ROOT_SOA_EXPIRE: u32 = 604_800;

/// Documentation and private ranges a lab site may use for its service addresses.
pub fn is_documentation(addr: IpAddr) -> bool {
    let nets: [IpNet; 4] = [
        v4(192, 0, 2, 0, 24),
        v4(198, 51, 100, 0, 24),
        v4(203, 0, 113, 0, 24),
        v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32),
    ];
    nets.iter().any(|n| n.contains(&addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_prefixes_two_covering_three_specific() {
        let covering = IMRS_PREFIXES
            .iter()
            .filter(|p| p.kind == PrefixKind::Covering)
            .count();
        assert_eq!(covering, 2);
        assert_eq!(IMRS_PREFIXES.len(), 5);
    }

    #[test]
    fn service_addresses_inside_specific_and_covering() {
        for addr in [IpAddr::V4(LROOT_V4), IpAddr::V6(LROOT_V6)] {
            let kinds: Vec<_> = IMRS_PREFIXES
                .iter()
                .filter(|p| p.prefix.contains(&addr))
                .map(|p| p.kind)
                .collect();
            assert!(kinds.contains(&PrefixKind::Covering), "{addr}");
            assert!(kinds.contains(&PrefixKind::Specific), "{addr}");
        }
    }

    #[test]
    fn lookup_rejects_neighbours_and_supernets() {
        for bad in [
            "199.7.83.0/25",
            "199.7.0.0/16",
            "192.0.2.0/24",
            "2001:500:9f::/47",
        ] {
            let net: IpNet = bad.parse().unwrap();
            assert!(imrs_prefix(&net).is_none(), "{bad}");
        }
        let ok: IpNet = "2001:500:9e::/47".parse().unwrap();
        assert_eq!(imrs_prefix(&ok).unwrap().kind, PrefixKind::Covering);
    }
}
