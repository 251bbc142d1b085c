//! Network interfaces through netlink (the appliance has no `ip` binary): links up, MTU, static
//! IPv4/IPv6 addresses and default gateways from the site, loopback up, and the DNS service addresses (/32 and
//! /128) on a dummy interface [`SERVICE_IFACE`] (falling back to `lo` when the kernel has no dummy
//! driver).
//!
//! [`NetPlan::from_site`] says what should be; [`apply`] reads what is, changes only what
//! differs and returns a [`Report`] of every change, so applying twice changes nothing the
//! second time. Link-local IPv6 addresses (the kernel's own) are never touched; on `lo` only the
//! service addresses are added, nothing is removed.
//!
//! The functions are async on `rtnetlink`'s tokio connection; [`connect`] must run inside a
//! tokio runtime. The netlink socket belongs to the network namespace of the thread that
//! creates it.

mod apply;
pub mod filter;
pub mod sysctl;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use imrs_config::site::Site;
use ipnet::IpNet;

pub use apply::{DadState, LinkState, apply, connect, dad_state, link_state, tentative};

/// The dummy interface carrying the service addresses.
pub const SERVICE_IFACE: &str = "imrs0";
/// Where the service addresses go when the dummy driver is missing.
pub const FALLBACK_IFACE: &str = "lo";

/// Everything that can fail while configuring interfaces.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The netlink socket could not be opened.
    #[error("cannot open a netlink socket")]
    Connect(#[source] std::io::Error),
    /// An interface named in the site does not exist.
    #[error("no interface {name} (mac {mac:?})")]
    NoSuchLink {
        /// The configured name.
        name: String,
        /// The configured MAC, when matching by MAC.
        mac: Option<String>,
    },
    /// A netlink request failed.
    #[error("netlink {op} on {target} failed")]
    Netlink {
        /// The operation (`add address`, `set mtu`, ...).
        op: &'static str,
        /// What it was for (interface, address, gateway).
        target: String,
        /// The kernel's answer.
        #[source]
        source: rtnetlink::Error,
    },
}

/// The desired configuration of one physical interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkPlan {
    /// Kernel name.
    pub name: String,
    /// Match this MAC instead of the name (`aa:bb:...`).
    pub mac: Option<String>,
    /// MTU to set, if any.
    pub mtu: Option<u32>,
    /// Exactly these global addresses (others are removed).
    pub addresses: Vec<IpNet>,
    /// IPv4 default gateway through this interface.
    pub gateway4: Option<Ipv4Addr>,
    /// IPv6 default gateway through this interface.
    pub gateway6: Option<Ipv6Addr>,
}

/// The desired configuration of all interfaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetPlan {
    /// Physical (management) interfaces.
    pub links: Vec<LinkPlan>,
    /// Service interface name (a dummy created if missing).
    pub service_iface: String,
    /// Service addresses (/32, /128).
    pub service: Vec<IpNet>,
}

impl NetPlan {
    /// The plan for a site.
    pub fn from_site(site: &Site) -> NetPlan {
        NetPlan {
            links: site
                .interfaces
                .iter()
                .map(|i| LinkPlan {
                    name: i.name.clone(),
                    mac: i.mac.clone(),
                    mtu: i.mtu,
                    addresses: i.addresses.clone(),
                    gateway4: i.gateway4,
                    gateway6: i.gateway6,
                })
                .collect(),
            service_iface: SERVICE_IFACE.into(),
            service: vec![
                IpNet::from(IpAddr::V4(site.service.ipv4)),
                IpNet::from(IpAddr::V6(site.service.ipv6)),
            ],
        }
    }
}

/// One change made to the kernel's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A dummy interface was created.
    Created {
        /// Interface.
        iface: String,
    },
    /// An interface was brought up.
    Up {
        /// Interface.
        iface: String,
    },
    /// The MTU was changed.
    Mtu {
        /// Interface.
        iface: String,
        /// Old MTU.
        from: u32,
        /// New MTU.
        to: u32,
    },
    /// An address was added.
    AddressAdded {
        /// Interface.
        iface: String,
        /// Address.
        addr: IpNet,
    },
    /// An address not in the site was removed.
    AddressRemoved {
        /// Interface.
        iface: String,
        /// Address.
        addr: IpNet,
    },
    /// A default route not in the site was removed.
    GatewayRemoved {
        /// Gateway of the removed route (`None`: a device route).
        gateway: Option<IpAddr>,
    },
    /// A default route was added.
    GatewayAdded {
        /// Interface.
        iface: String,
        /// Gateway.
        gateway: IpAddr,
    },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Created { iface } => write!(f, "{iface}: created (dummy)"),
            Change::Up { iface } => write!(f, "{iface}: up"),
            Change::Mtu { iface, from, to } => write!(f, "{iface}: mtu {from} -> {to}"),
            Change::AddressAdded { iface, addr } => write!(f, "{iface}: added {addr}"),
            Change::AddressRemoved { iface, addr } => write!(f, "{iface}: removed {addr}"),
            Change::GatewayRemoved { gateway: Some(g) } => {
                write!(f, "default route via {g} removed")
            }
            Change::GatewayRemoved { gateway: None } => f.write_str("device default route removed"),
            Change::GatewayAdded { iface, gateway } => {
                write!(f, "default route via {gateway} dev {iface} added")
            }
        }
    }
}

/// What [`apply`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Every change, in order; empty when the kernel already matched the plan.
    pub changes: Vec<Change>,
    /// The interface now carrying the service addresses.
    pub service_iface: String,
    /// The dummy could not be created (no driver): the service addresses are on
    /// [`FALLBACK_IFACE`]. Not a change: it is reported on every apply.
    pub service_fallback: bool,
    /// Configured interface name -> the kernel name found (differs when matched by MAC).
    pub links: Vec<(String, String)>,
}

/// Address sets: what to add and what to remove so that `have` becomes `want`; link-local IPv6
/// addresses in `have` are kept, and with `keep_others` nothing is removed.
pub fn diff_addresses(
    have: &[IpNet],
    want: &[IpNet],
    keep_others: bool,
) -> (Vec<IpNet>, Vec<IpNet>) {
    let add = want.iter().filter(|a| !have.contains(a)).copied().collect();
    let remove = if keep_others {
        Vec::new()
    } else {
        have.iter()
            .filter(|a| !want.contains(a) && !is_link_local(a))
            .copied()
            .collect()
    };
    (add, remove)
}

fn is_link_local(a: &IpNet) -> bool {
    match a.addr() {
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
        IpAddr::V4(v4) => v4.is_link_local(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn plan_from_lab_site() {
        let text = include_str!("../../../images/sites/lab.toml");
        let site = imrs_config::site::parse(std::path::Path::new("lab.toml"), text).unwrap();
        let plan = NetPlan::from_site(&site);
        assert_eq!(plan.service_iface, "imrs0");
        assert_eq!(
            plan.service,
            nets(&["198.51.100.42/32", "2001:db8:42::42/128"])
        );
        assert_eq!(plan.links.len(), 1);
        assert_eq!(plan.links[0].gateway4, Some(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(
            plan.links[0].addresses,
            nets(&["192.0.2.10/24", "2001:db8:1::10/64"])
        );
    }

    #[test]
    fn address_diff_table() {
        // (have, want, keep others, to add, to remove)
        type Case<'a> = (
            &'a [&'a str],
            &'a [&'a str],
            bool,
            &'a [&'a str],
            &'a [&'a str],
        );
        let cases: &[Case] = &[
            (&[], &["192.0.2.10/24"], false, &["192.0.2.10/24"], &[]),
            (&["192.0.2.10/24"], &["192.0.2.10/24"], false, &[], &[]),
            (
                &["192.0.2.10/25", "fe80::1/64"],
                &["192.0.2.10/24"],
                false,
                &["192.0.2.10/24"],
                &["192.0.2.10/25"],
            ),
            (
                &["127.0.0.1/8", "::1/128"],
                &["198.51.100.42/32"],
                true,
                &["198.51.100.42/32"],
                &[],
            ),
        ];
        for (have, want, keep, add, remove) in cases {
            let (a, r) = diff_addresses(&nets(have), &nets(want), *keep);
            assert_eq!((a, r), (nets(add), nets(remove)), "{have:?} -> {want:?}");
        }
    }
}
