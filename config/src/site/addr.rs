//! Address classes the site rules need: which addresses can be a host on a wire, IPv4 addresses
//! written inside IPv6 ones, IMRS service space.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::imrs::IMRS_PREFIXES;

/// The IPv4 address an IPv6 address carries in its IPv4-mapped (`::ffff:a.b.c.d`) or deprecated
/// IPv4-compatible (`::a.b.c.d`) form; `None` for other addresses (`::` and `::1` included).
pub(super) fn embedded_v4(a: &Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = a.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = a.segments();
    (s[..6] == [0; 6] && (s[6] != 0 || s[7] > 1))
        .then(|| Ipv4Addr::from((u32::from(s[6]) << 16) | u32::from(s[7])))
}

/// `a`, with an IPv4 address written as IPv6 replaced by that IPv4 address.
pub(super) fn canonical(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => embedded_v4(&v6).map_or(a, IpAddr::V4),
        v4 => v4,
    }
}

/// Why `a` cannot be the address of a host on a wire (ours or a peer's), or `None`.
pub(super) fn not_host(a: IpAddr) -> Option<&'static str> {
    match a {
        IpAddr::V4(v4) => {
            let first = v4.octets()[0];
            if first == 0 {
                Some("an unspecified address (0.0.0.0/8) is no host")
            } else if v4.is_loopback() {
                Some("a loopback address (127.0.0.0/8) is no host on a wire")
            } else if v4.is_multicast() {
                Some("a multicast address (224.0.0.0/4) is no host")
            } else if v4.is_broadcast() {
                Some("the broadcast address is no host")
            } else if first >= 240 {
                Some("a reserved address (240.0.0.0/4) is no host")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if v6.is_unspecified() {
                Some("the unspecified address (::) is no host")
            } else if v6.is_loopback() {
                Some("the loopback address (::1) is no host on a wire")
            } else if v6.is_multicast() {
                Some("a multicast address (ff00::/8) is no host")
            } else if v6.to_ipv4_mapped().is_some() {
                Some("an IPv4-mapped address (::ffff:0:0/96): write the IPv4 address itself")
            } else if embedded_v4(&v6).is_some() {
                Some(
                    "an IPv4-compatible address (::/96, deprecated): write the IPv4 address itself",
                )
            } else {
                None
            }
        }
    }
}

/// The IMRS prefix holding `a` (compared as IPv4 when written as an IPv4-mapped address).
pub(super) fn imrs_space(a: IpAddr) -> Option<IpNet> {
    let a = canonical(a);
    IMRS_PREFIXES
        .iter()
        .find(|p| p.prefix.contains(&a))
        .map(|p| p.prefix)
}

/// Why `net` cannot be an interface address of ours (beyond [`not_host`]), or `None`: a prefix
/// so short that most of the Internet would be on-link, or the network or broadcast address of
/// an IPv4 subnet.
pub(super) fn bad_interface_prefix(net: &IpNet) -> Option<String> {
    match net {
        IpNet::V4(n) => {
            if n.prefix_len() < 8 {
                Some(format!(
                    "an IPv4 prefix length of at least 8 (/{} puts most of the Internet on-link)",
                    n.prefix_len()
                ))
            } else if n.prefix_len() <= 30 && n.addr() == n.network() {
                Some(format!("{} is the subnet's network address", n.addr()))
            } else if n.prefix_len() <= 30 && n.addr() == n.broadcast() {
                Some(format!("{} is the subnet's broadcast address", n.addr()))
            } else {
                None
            }
        }
        IpNet::V6(n) => (n.prefix_len() < 16).then(|| {
            format!(
                "an IPv6 prefix length of at least 16 (/{} puts most of the Internet on-link)",
                n.prefix_len()
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn classes() {
        assert_eq!(
            canonical(ip("::ffff:199.7.83.42")),
            ip("199.7.83.42"),
            "mapped"
        );
        assert_eq!(canonical(ip("::199.7.83.42")), ip("199.7.83.42"));
        assert_eq!(canonical(ip("::1")), ip("::1"));
        assert_eq!(canonical(ip("::")), ip("::"));
        assert!(imrs_space(ip("::ffff:199.7.83.42")).is_some());
        assert!(imrs_space(ip("2001:500:9f::42")).is_some());
        assert!(imrs_space(ip("192.0.2.1")).is_none());
        for bad in [
            "0.0.0.0",
            "0.1.2.3",
            "127.0.0.1",
            "224.0.0.1",
            "239.1.1.1",
            "255.255.255.255",
            "240.0.0.1",
            "::",
            "::1",
            "ff02::1",
            "::ffff:192.0.2.1",
            "::192.0.2.1",
        ] {
            assert!(not_host(ip(bad)).is_some(), "{bad}");
        }
        for good in [
            "192.0.2.1",
            "2001:db8::1",
            "fe80::1",
            "169.254.0.1",
            "10.0.0.1",
        ] {
            assert_eq!(not_host(ip(good)), None, "{good}");
        }
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        assert!(bad_interface_prefix(&net("192.0.2.0/24")).is_some());
        assert!(bad_interface_prefix(&net("192.0.2.255/24")).is_some());
        assert!(bad_interface_prefix(&net("10.1.2.3/7")).is_some());
        assert!(bad_interface_prefix(&net("2001:db8::1/8")).is_some());
        assert_eq!(bad_interface_prefix(&net("192.0.2.0/31")), None);
        assert_eq!(bad_interface_prefix(&net("192.0.2.10/24")), None);
        assert_eq!(bad_interface_prefix(&net("2001:db8::/64")), None);
    }
}
