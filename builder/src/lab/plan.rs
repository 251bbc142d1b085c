//! The lab's network plan, read from the site config the appliance boots with, so that the
//! host side (router, transfer server, receiver, routes) always matches what the box expects:
//!
//! - the router owns the interface's gateways and is every BGP neighbour (one private AS);
//! - the transfer server listens on every `zone.servers` address;
//! - the receiver listens on the host and port of `phone_home.url`;
//! - the host organisation's inboxes (`[host]`) are on the receiver's address: the webhook on
//!   the port of `host.webhook`, the SMTP relay for `host.email` on port 587;
//! - the NTS server (chronyd) listens on every `ntp.nts` address, its certificate for their
//!   names;
//! - the lab reaches `service.ipv4`/`ipv6` through the guest's interface addresses.
//!
//! Every address the lab uses or routes to must be in a documentation range: the lab never sends
//! a packet to a public address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::{Result, bail};
use imrs_config::imrs::is_documentation;
use imrs_config::site::{Site, parse_server};
use ipnet::IpNet;

use crate::host::router::RouterConfig;

/// The addresses of one lab run.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Guest interface name in the site (the guest's one NIC).
    pub guest_ifname: String,
    /// Guest IPv4 address with its prefix.
    pub guest_v4: IpNet,
    /// Guest IPv6 address with its prefix.
    pub guest_v6: IpNet,
    /// Router IPv4 (gateway4, a BGP neighbour address).
    pub router_v4: Ipv4Addr,
    /// Router IPv6 (gateway6, a BGP neighbour address).
    pub router_v6: Ipv6Addr,
    /// The router's AS (the neighbours' `asn`).
    pub router_asn: u32,
    /// Every BGP neighbour address the appliance will connect to (all on the router).
    pub neighbors: Vec<IpAddr>,
    /// Transfer server addresses with ports.
    pub xfr: Vec<SocketAddr>,
    /// Receiver address and port.
    pub receiver: SocketAddr,
    /// The host's webhook endpoint (`host.webhook`), on the receiver's address.
    pub webhook: Option<SocketAddr>,
    /// The SMTP relay that takes the host's e-mail (`host.email`): the receiver's address,
    /// port 587.
    pub smtp: Option<SocketAddr>,
    /// NTS servers (`ntp.nts`): the name in the certificate and the NTS-KE address.
    pub nts: Vec<(String, SocketAddr)>,
    /// Appliance service addresses.
    pub service_v4: Ipv4Addr,
    /// Appliance service IPv6 address.
    pub service_v6: Ipv6Addr,
}

/// The port of the lab's SMTP relay (submission).
pub const SMTP_PORT: u16 = 587;

fn doc(what: &str, addr: IpAddr) -> Result<()> {
    if !is_documentation(addr) {
        bail!(
            "site {what} = {addr}: the lab only uses documentation addresses (192.0.2.0/24, \
             198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32) and never sends to a public address"
        );
    }
    Ok(())
}

/// The `HOST:PORT` of an `https://HOST[:PORT]/...` URL whose host is an IP literal; `what`
/// names the field in errors.
pub fn url_addr(what: &str, url: &str) -> Result<SocketAddr> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| anyhow::anyhow!("{what} = {url:?}: not an https:// URL"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    if let Ok(sa) = authority.parse::<SocketAddr>() {
        return Ok(sa);
    }
    let host = authority.trim_start_matches('[').trim_end_matches(']');
    host.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 443))
        .map_err(|_| {
            anyhow::anyhow!(
                "{what} = {url:?}: the lab needs an IP address as host (no DNS in the lab)"
            )
        })
}

impl Plan {
    /// The plan for `site`, or what in it the lab cannot simulate.
    pub fn from_site(site: &Site) -> Result<Plan> {
        let Some(iface) = site.interfaces.first() else {
            bail!("site interfaces: empty; the lab gives the guest one NIC");
        };
        if site.interfaces.len() > 1 {
            bail!(
                "site interfaces: {} given; the lab gives the guest one NIC",
                site.interfaces.len()
            );
        }
        let guest_v4 = iface
            .addresses
            .iter()
            .find(|a| matches!(a, IpNet::V4(_)))
            .copied()
            .ok_or_else(|| anyhow::anyhow!("site interfaces[0].addresses: no IPv4 address"))?;
        let guest_v6 = iface
            .addresses
            .iter()
            .find(|a| matches!(a, IpNet::V6(_)))
            .copied()
            .ok_or_else(|| anyhow::anyhow!("site interfaces[0].addresses: no IPv6 address"))?;
        let router_v4 = iface
            .gateway4
            .ok_or_else(|| anyhow::anyhow!("site interfaces[0].gateway4: missing (the router)"))?;
        let router_v6 = iface
            .gateway6
            .ok_or_else(|| anyhow::anyhow!("site interfaces[0].gateway6: missing (the router)"))?;
        let mut asns: Vec<u32> = site.bgp.neighbors.iter().map(|n| n.asn).collect();
        asns.sort_unstable();
        asns.dedup();
        let router_asn = match asns.as_slice() {
            [one] => *one,
            [] => bail!("site bgp.neighbors: empty; the lab's router is the neighbour"),
            many => bail!("site bgp.neighbors: ASes {many:?}; the lab has one router, so one AS"),
        };
        let neighbors: Vec<IpAddr> = site.bgp.neighbors.iter().map(|n| n.address).collect();
        for n in &site.bgp.neighbors {
            if n.multihop.is_some() || n.password.is_some() {
                bail!(
                    "site bgp.neighbors {}: multihop and passwords are not simulated by the lab",
                    n.name
                );
            }
            let net = if n.address.is_ipv4() {
                guest_v4
            } else {
                guest_v6
            };
            if !net.contains(&n.address) {
                bail!(
                    "site bgp.neighbors {} address = {}: not on the guest's subnet {net}",
                    n.name,
                    n.address
                );
            }
        }
        let mut xfr = Vec::new();
        for s in &site.zone.servers {
            let sa = parse_server(s)
                .ok_or_else(|| anyhow::anyhow!("site zone.servers: {s:?} is not ADDR[:PORT]"))?;
            xfr.push(sa);
        }
        if xfr.is_empty() {
            bail!(
                "site zone.servers: empty (ICANN's servers); the lab needs its own transfer server"
            );
        }
        let receiver = url_addr("phone_home.url", &site.phone_home.url)?;
        let webhook = match &site.host.webhook {
            Some(url) => {
                let w = url_addr("host.webhook", url)?;
                if w.ip() != receiver.ip() || w.port() == receiver.port() {
                    bail!(
                        "site host.webhook = {url:?}: the lab's webhook endpoint is on the \
                         receiver's address {} with a port of its own",
                        receiver.ip()
                    );
                }
                Some(w)
            }
            None => None,
        };
        let smtp = (!site.host.email.is_empty()).then(|| SocketAddr::new(receiver.ip(), SMTP_PORT));
        if smtp.is_some_and(|s| Some(s) == webhook || s == receiver) {
            bail!(
                "site: port {SMTP_PORT} of {} is the lab's SMTP relay; the receiver and the \
                 webhook need other ports",
                receiver.ip()
            );
        }
        let plan = Plan {
            guest_ifname: iface.name.clone(),
            guest_v4,
            guest_v6,
            router_v4,
            router_v6,
            router_asn,
            neighbors,
            xfr,
            receiver,
            webhook,
            smtp,
            nts: site
                .ntp
                .nts
                .iter()
                .map(|n| (n.name.clone(), SocketAddr::new(n.address, n.port)))
                .collect(),
            service_v4: site.service.ipv4,
            service_v6: site.service.ipv6,
        };
        plan.check()?;
        Ok(plan)
    }

    fn check(&self) -> Result<()> {
        doc("interfaces[0] IPv4", self.guest_v4.addr())?;
        doc("interfaces[0] IPv6", self.guest_v6.addr())?;
        doc("gateway4", self.router_v4.into())?;
        doc("gateway6", self.router_v6.into())?;
        for n in &self.neighbors {
            doc("bgp neighbour", *n)?;
        }
        for x in &self.xfr {
            doc("zone.servers", x.ip())?;
            let net = self.subnet(x.ip());
            if !net.contains(&x.ip()) {
                bail!("site zone.servers {x}: not on the guest's subnet {net}");
            }
        }
        for (name, n) in &self.nts {
            doc("ntp.nts", n.ip())?;
            let net = self.subnet(n.ip());
            if !net.contains(&n.ip()) {
                bail!("site ntp.nts {name} at {n}: not on the guest's subnet {net}");
            }
        }
        doc("phone_home.url host", self.receiver.ip())?;
        let net = self.subnet(self.receiver.ip());
        if !net.contains(&self.receiver.ip()) {
            bail!(
                "site phone_home.url host {}: not on the guest's subnet {net}",
                self.receiver.ip()
            );
        }
        doc("service.ipv4", self.service_v4.into())?;
        doc("service.ipv6", self.service_v6.into())?;
        Ok(())
    }

    /// The guest subnet of `addr`'s family.
    fn subnet(&self, addr: IpAddr) -> IpNet {
        if addr.is_ipv4() {
            self.guest_v4.trunc()
        } else {
            self.guest_v6.trunc()
        }
    }

    /// The addresses the lab puts on its tap, each with the guest's prefix length, deduplicated:
    /// router, neighbours, transfer servers, NTS servers, receiver.
    pub fn tap_addresses(&self) -> Vec<IpNet> {
        let mut ips: Vec<IpAddr> = vec![self.router_v4.into(), self.router_v6.into()];
        ips.extend(&self.neighbors);
        ips.extend(self.xfr.iter().map(SocketAddr::ip));
        ips.extend(self.nts.iter().map(|(_, a)| a.ip()));
        ips.push(self.receiver.ip());
        let mut out: Vec<IpNet> = Vec::new();
        for ip in ips {
            let len = self.subnet(ip).prefix_len();
            if let Ok(net) = IpNet::new(ip, len)
                && !out.iter().any(|n| n.addr() == ip)
            {
                out.push(net);
            }
        }
        out
    }

    /// The router's configuration: the neighbours' AS at the gateways' IPv4 address as router
    /// id, the guest's two interface addresses as its eBGP neighbours in AS 20144.
    pub fn router_config(&self) -> RouterConfig {
        RouterConfig {
            asn: self.router_asn,
            router_id: self.router_v4,
            neighbors: vec![
                (self.guest_v4.addr(), imrs_config::imrs::IMRS_ASN),
                (self.guest_v6.addr(), imrs_config::imrs::IMRS_ASN),
            ],
        }
    }

    /// Routes from the lab to the service addresses: (destination, via the guest).
    pub fn service_routes(&self) -> [(IpAddr, IpAddr); 2] {
        [
            (self.service_v4.into(), self.guest_v4.addr()),
            (self.service_v6.into(), self.guest_v6.addr()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lab_site() -> Site {
        let path = crate::workspace::this_checkout().join("images/sites/lab.toml");
        imrs_config::site::load(&path).expect("images/sites/lab.toml")
    }

    #[test]
    fn plan_of_the_lab_site() {
        let p = Plan::from_site(&lab_site()).unwrap();
        assert_eq!(p.guest_v4.to_string(), "192.0.2.10/24");
        assert_eq!(p.guest_v6.to_string(), "2001:db8:1::10/64");
        assert_eq!(p.router_asn, 64512);
        assert_eq!(p.receiver.to_string(), "192.0.2.80:8443");
        assert_eq!(p.webhook, Some("192.0.2.80:8444".parse().unwrap()));
        assert_eq!(p.smtp, Some("192.0.2.80:587".parse().unwrap()));
        let tap: Vec<String> = p.tap_addresses().iter().map(ToString::to_string).collect();
        assert_eq!(
            tap,
            [
                "192.0.2.1/24",
                "2001:db8:1::1/64",
                "192.0.2.53/24",
                "2001:db8:1::53/64",
                "192.0.2.80/24"
            ]
        );
        let r = p.router_config();
        assert_eq!(
            (r.asn, r.router_id.to_string()),
            (64512, "192.0.2.1".into())
        );
        assert_eq!(
            r.neighbors,
            [
                ("192.0.2.10".parse().unwrap(), 20144),
                ("2001:db8:1::10".parse().unwrap(), 20144)
            ]
        );
        r.check().unwrap();
        assert_eq!(
            p.service_routes()[0],
            (
                "198.51.100.42".parse().unwrap(),
                "192.0.2.10".parse().unwrap()
            )
        );
    }

    #[test]
    fn public_addresses_are_refused() {
        let mut s = lab_site();
        s.zone.servers = vec!["192.0.32.132".into()];
        let e = Plan::from_site(&s).unwrap_err().to_string();
        assert!(e.contains("zone.servers = 192.0.32.132"), "{e}");
        let mut s = lab_site();
        s.service.ipv4 = imrs_config::imrs::LROOT_V4;
        let e = Plan::from_site(&s).unwrap_err().to_string();
        assert!(e.contains("service.ipv4 = 199.7.83.42"), "{e}");
    }

    #[test]
    fn the_hosts_inboxes_are_on_the_receivers_address() {
        let mut s = lab_site();
        s.host.webhook = Some("https://192.0.2.81:8444/notices".into());
        let e = Plan::from_site(&s).unwrap_err().to_string();
        assert!(
            e.contains("host.webhook") && e.contains("192.0.2.80"),
            "{e}"
        );
        s.host.webhook = Some("https://192.0.2.80:8443/notices".into());
        assert!(Plan::from_site(&s).is_err(), "the receiver's own port");
        s.host.webhook = Some("https://192.0.2.80:587/notices".into());
        let e = Plan::from_site(&s).unwrap_err().to_string();
        assert!(e.contains("port 587"), "{e}");
        s.host.webhook = None;
        s.host.email.clear();
        let p = Plan::from_site(&s).unwrap();
        assert_eq!((p.webhook, p.smtp), (None, None));
    }

    #[test]
    fn url_hosts() {
        assert_eq!(
            url_addr("u", "https://192.0.2.80:8443/v1/reports").unwrap(),
            "192.0.2.80:8443".parse().unwrap()
        );
        assert_eq!(
            url_addr("u", "https://[2001:db8::80]/x").unwrap(),
            "[2001:db8::80]:443".parse().unwrap()
        );
        let e = url_addr("host.webhook", "https://home.example/x").unwrap_err();
        assert!(e.to_string().starts_with("host.webhook = "), "{e}");
        assert!(url_addr("u", "http://192.0.2.80/").is_err());
    }
}
