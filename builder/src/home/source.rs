//! Who a connection comes from, as the receiver's per-client limits and the per-source cap on
//! stored refusals count it: an IPv4 address, or the /64 an IPv6 address is in (one host
//! usually holds a whole /64, so counting single IPv6 addresses would give it 2^64 budgets).
//! IPv4-mapped IPv6 addresses (a dual-stack listener) count as their IPv4 address.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A client as the limits count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// One IPv4 address.
    V4(Ipv4Addr),
    /// An IPv6 /64: the address with its last 64 bits cleared.
    V6(Ipv6Addr),
}

impl From<IpAddr> for Source {
    fn from(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(a) => Source::V4(a),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => Source::V4(v4),
                None => Source::V6(Ipv6Addr::from_bits(a.to_bits() & !u128::from(u64::MAX))),
            },
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::V4(a) => write!(f, "{a}"),
            Source::V6(a) => write!(f, "{a}/64"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_ipv4_addresses_and_ipv6_slash_64s() {
        let cases = [
            ("192.0.2.7", "192.0.2.7"),
            ("::ffff:192.0.2.7", "192.0.2.7"),
            ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
            ("2001:db8:1:2::ffff", "2001:db8:1:2::/64"),
            ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
            ("::1", "::/64"),
        ];
        for (ip, want) in cases {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(Source::from(ip).to_string(), want, "{ip}");
        }
        let a = Source::from("2001:db8::1".parse::<IpAddr>().unwrap());
        let b = Source::from("2001:db8::2".parse::<IpAddr>().unwrap());
        assert_eq!(a, b, "one /64, one client");
    }
}
