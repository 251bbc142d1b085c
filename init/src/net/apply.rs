//! The netlink side of [`apply`](super::apply): read links, addresses and default routes, then
//! change only what differs from the plan.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType,
};
use rtnetlink::{Handle, LinkDummy, LinkUnspec, RouteMessageBuilder};

use super::{Change, FALLBACK_IFACE, LinkPlan, NetError, NetPlan, Report, diff_addresses};

/// The main routing table.
const RT_TABLE_MAIN: u8 = 254;

/// What the kernel says about one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    /// Kernel index.
    pub index: u32,
    /// Kernel name.
    pub name: String,
    /// MTU.
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
    /// MAC address, lowercase `aa:bb:...` (empty when none).
    pub mac: String,
    /// Every address, link-local included.
    pub addresses: Vec<IpNet>,
}

/// Opens a netlink connection in the calling thread's network namespace and spawns its driver
/// on the current tokio runtime.
pub fn connect() -> Result<Handle, NetError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(NetError::Connect)?;
    tokio::spawn(conn);
    Ok(handle)
}

fn nl(op: &'static str, target: impl ToString) -> impl FnOnce(rtnetlink::Error) -> NetError {
    move |source| NetError::Netlink {
        op,
        target: target.to_string(),
        source,
    }
}

/// Linux errno: no such device (a link looked up by name does not exist).
const ENODEV: i32 = 19;
/// Linux errno: operation not supported (a link kind without a driver).
const EOPNOTSUPP: i32 = 95;

fn has_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.code.map(|c| c.get()) == Some(-errno))
}

fn is_not_found(e: &rtnetlink::Error) -> bool {
    has_errno(e, ENODEV)
}

fn mac_string(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn parse_link(m: &LinkMessage) -> (u32, String, u32, bool, String) {
    let mut name = String::new();
    let mut mtu = 0;
    let mut mac = String::new();
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => name = n.clone(),
            LinkAttribute::Mtu(v) => mtu = *v,
            LinkAttribute::Address(b) => mac = mac_string(b),
            _ => {}
        }
    }
    (
        m.header.index,
        name,
        mtu,
        m.header.flags.contains(LinkFlags::Up),
        mac,
    )
}

fn address_of(m: &AddressMessage) -> Option<IpNet> {
    let mut addr = None;
    for a in &m.attributes {
        match a {
            // IPv4: IFA_LOCAL is the interface's own address (IFA_ADDRESS may be a peer).
            AddressAttribute::Local(ip) => addr = Some(*ip),
            AddressAttribute::Address(ip) if addr.is_none() => addr = Some(*ip),
            _ => {}
        }
    }
    IpNet::new(addr?, m.header.prefix_len).ok()
}

async fn addresses(handle: &Handle, index: u32) -> Result<Vec<(IpNet, AddressMessage)>, NetError> {
    let msgs: Vec<AddressMessage> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(nl("list addresses", index))?;
    Ok(msgs
        .into_iter()
        .filter(|m| m.header.index == index)
        .filter_map(|m| address_of(&m).map(|a| (a, m)))
        .collect())
}

/// Where duplicate address detection stands for one interface's IPv6 addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DadState {
    /// Tentative and not optimistic: the kernel will not use them as a source yet, so traffic
    /// would leave from another address.
    pub unusable: Vec<IpNet>,
    /// Optimistic (RFC 4429): usable already, detection still running.
    pub optimistic: Vec<IpNet>,
    /// Detection found another node with the address.
    pub failed: Vec<IpNet>,
}

impl DadState {
    /// Detection has finished for every address.
    pub fn settled(&self) -> bool {
        self.unusable.is_empty() && self.optimistic.is_empty()
    }
}

/// Duplicate address detection on interface `name` (nothing when it does not exist).
pub async fn dad_state(handle: &Handle, name: &str) -> Result<DadState, NetError> {
    let mut st = DadState::default();
    let Some(link) = link_state(handle, name).await? else {
        return Ok(st);
    };
    for (a, m) in addresses(handle, link.index).await? {
        let f = m.header.flags;
        if !a.addr().is_ipv6() {
            continue;
        }
        if f.contains(AddressHeaderFlags::Dadfailed) {
            st.failed.push(a);
        } else if f.contains(AddressHeaderFlags::Optimistic) {
            st.optimistic.push(a);
        } else if f.contains(AddressHeaderFlags::Tentative) {
            st.unusable.push(a);
        }
    }
    Ok(st)
}

/// IPv6 addresses of interface `name` that are not usable yet ([`DadState::unusable`]).
pub async fn tentative(handle: &Handle, name: &str) -> Result<Vec<IpNet>, NetError> {
    Ok(dad_state(handle, name).await?.unusable)
}

/// Reads one interface by name; `None` when it does not exist.
pub async fn link_state(handle: &Handle, name: &str) -> Result<Option<LinkState>, NetError> {
    let got: Result<Vec<LinkMessage>, _> = handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_collect()
        .await;
    let msgs = match got {
        Ok(m) => m,
        Err(e) if is_not_found(&e) => return Ok(None),
        Err(e) => return Err(nl("get link", name)(e)),
    };
    let Some(m) = msgs.first() else {
        return Ok(None);
    };
    let (index, name, mtu, up, mac) = parse_link(m);
    let addresses = addresses(handle, index)
        .await?
        .into_iter()
        .map(|(a, _)| a)
        .collect();
    Ok(Some(LinkState {
        index,
        name,
        mtu,
        up,
        mac,
        addresses,
    }))
}

async fn find_by_mac(handle: &Handle, mac: &str) -> Result<Option<String>, NetError> {
    let all: Vec<LinkMessage> = handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(nl("list links", mac))?;
    Ok(all
        .iter()
        .map(parse_link)
        .find(|(_, _, _, _, m)| m.eq_ignore_ascii_case(mac))
        .map(|(_, name, ..)| name))
}

/// How new IPv6 addresses go through duplicate address detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dad {
    /// Tentative until detection ends.
    Full,
    /// Usable at once, detection running (RFC 4429; the kernel uses it when the interface's
    /// `optimistic_dad` and `use_optimistic` settings are on, [`super::sysctl::optimistic_dad`]).
    Optimistic,
    /// None: anycast service addresses, which other root instances announce too.
    Skip,
}

/// Brings the link up, sets its MTU and makes its addresses match `want`.
async fn converge_link(
    handle: &Handle,
    st: &LinkState,
    mtu: Option<u32>,
    want: &[IpNet],
    keep_others: bool,
    dad: Dad,
    changes: &mut Vec<Change>,
) -> Result<(), NetError> {
    if let Some(mtu) = mtu
        && mtu != st.mtu
    {
        handle
            .link()
            .set(LinkUnspec::new_with_index(st.index).mtu(mtu).build())
            .execute()
            .await
            .map_err(nl("set mtu", &st.name))?;
        changes.push(Change::Mtu {
            iface: st.name.clone(),
            from: st.mtu,
            to: mtu,
        });
    }
    if !st.up {
        handle
            .link()
            .set(LinkUnspec::new_with_index(st.index).up().build())
            .execute()
            .await
            .map_err(nl("set up", &st.name))?;
        changes.push(Change::Up {
            iface: st.name.clone(),
        });
    }
    let have = addresses(handle, st.index).await?;
    let have_nets: Vec<IpNet> = have.iter().map(|(a, _)| *a).collect();
    let (add, remove) = diff_addresses(&have_nets, want, keep_others);
    for addr in remove {
        if let Some((_, msg)) = have.iter().find(|(a, _)| *a == addr) {
            handle
                .address()
                .del(msg.clone())
                .execute()
                .await
                .map_err(nl("remove address", addr))?;
            changes.push(Change::AddressRemoved {
                iface: st.name.clone(),
                addr,
            });
        }
    }
    for addr in add {
        let mut req = handle
            .address()
            .add(st.index, addr.addr(), addr.prefix_len());
        if addr.addr().is_ipv6() {
            match dad {
                Dad::Full => {}
                Dad::Optimistic => {
                    req.message_mut().header.flags |= AddressHeaderFlags::Optimistic;
                }
                Dad::Skip => req.message_mut().header.flags |= AddressHeaderFlags::Nodad,
            }
        }
        req.execute().await.map_err(nl("add address", addr))?;
        changes.push(Change::AddressAdded {
            iface: st.name.clone(),
            addr,
        });
    }
    Ok(())
}

/// Default routes of one family in the main table: (gateway, output interface, message).
async fn default_routes(
    handle: &Handle,
    v4: bool,
) -> Result<Vec<(Option<IpAddr>, Option<u32>, RouteMessage)>, NetError> {
    let query = if v4 {
        RouteMessageBuilder::<Ipv4Addr>::new().build()
    } else {
        RouteMessageBuilder::<Ipv6Addr>::new().build()
    };
    let family = if v4 {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let routes: Vec<RouteMessage> = handle
        .route()
        .get(query)
        .execute()
        .try_collect()
        .await
        .map_err(nl("list routes", if v4 { "ipv4" } else { "ipv6" }))?;
    Ok(routes
        .into_iter()
        .filter(|r| {
            r.header.address_family == family
                && r.header.destination_prefix_length == 0
                && r.header.table == RT_TABLE_MAIN
                && r.header.kind == RouteType::Unicast
        })
        .map(|r| {
            let mut gw = None;
            let mut oif = None;
            for a in &r.attributes {
                match a {
                    RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(IpAddr::V4(*g)),
                    RouteAttribute::Gateway(RouteAddress::Inet6(g)) => gw = Some(IpAddr::V6(*g)),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    _ => {}
                }
            }
            (gw, oif, r)
        })
        .collect())
}

async fn converge_gateway(
    handle: &Handle,
    want: Option<(IpAddr, u32, String)>,
    v4: bool,
    changes: &mut Vec<Change>,
) -> Result<(), NetError> {
    let have = default_routes(handle, v4).await?;
    let mut present = false;
    for (gw, oif, msg) in have {
        let matches = match &want {
            Some((g, idx, _)) => gw == Some(*g) && oif == Some(*idx),
            None => false,
        };
        if matches && !present {
            present = true;
            continue;
        }
        if want.is_none() {
            // No gateway of this family in the site: leave what others configured alone.
            continue;
        }
        handle
            .route()
            .del(msg)
            .execute()
            .await
            .map_err(nl("remove default route", format!("{gw:?}")))?;
        changes.push(Change::GatewayRemoved { gateway: gw });
    }
    if let (Some((gw, idx, iface)), false) = (want, present) {
        let msg = match gw {
            IpAddr::V4(g) => RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(g)
                .output_interface(idx)
                .protocol(RouteProtocol::Static)
                .build(),
            IpAddr::V6(g) => RouteMessageBuilder::<Ipv6Addr>::new()
                .gateway(g)
                .output_interface(idx)
                .protocol(RouteProtocol::Static)
                .build(),
        };
        handle
            .route()
            .add(msg)
            .execute()
            .await
            .map_err(nl("add default route", gw))?;
        changes.push(Change::GatewayAdded { iface, gateway: gw });
    }
    Ok(())
}

async fn resolve(handle: &Handle, plan: &LinkPlan) -> Result<LinkState, NetError> {
    let name = match &plan.mac {
        Some(mac) => find_by_mac(handle, mac).await?,
        None => Some(plan.name.clone()),
    };
    let missing = || NetError::NoSuchLink {
        name: plan.name.clone(),
        mac: plan.mac.clone(),
    };
    match name {
        Some(n) => link_state(handle, &n).await?.ok_or_else(missing),
        None => Err(missing()),
    }
}

/// Creates the service dummy if missing; falls back to `lo` when dummies are unsupported
/// (the second value says so).
async fn service_link(
    handle: &Handle,
    name: &str,
    changes: &mut Vec<Change>,
) -> Result<(LinkState, bool), NetError> {
    if let Some(st) = link_state(handle, name).await? {
        return Ok((st, false));
    }
    match handle
        .link()
        .add(LinkDummy::new(name).build())
        .execute()
        .await
    {
        Ok(()) => changes.push(Change::Created {
            iface: name.to_string(),
        }),
        Err(e) if has_errno(&e, EOPNOTSUPP) => {
            return link_state(handle, FALLBACK_IFACE)
                .await?
                .map(|st| (st, true))
                .ok_or_else(|| NetError::NoSuchLink {
                    name: FALLBACK_IFACE.into(),
                    mac: None,
                });
        }
        Err(e) => return Err(nl("create dummy", name)(e)),
    }
    link_state(handle, name)
        .await?
        .map(|st| (st, false))
        .ok_or_else(|| NetError::NoSuchLink {
            name: name.to_string(),
            mac: None,
        })
}

/// Makes the kernel match `plan`, changing only what differs; returns what changed.
pub async fn apply(handle: &Handle, plan: &NetPlan) -> Result<Report, NetError> {
    let mut changes = Vec::new();
    let mut links = Vec::new();
    let mut gw4 = None;
    let mut gw6 = None;
    for lp in &plan.links {
        let st = resolve(handle, lp).await?;
        converge_link(
            handle,
            &st,
            lp.mtu,
            &lp.addresses,
            false,
            Dad::Optimistic,
            &mut changes,
        )
        .await?;
        if let Some(g) = lp.gateway4 {
            gw4 = Some((IpAddr::V4(g), st.index, st.name.clone()));
        }
        if let Some(g) = lp.gateway6 {
            gw6 = Some((IpAddr::V6(g), st.index, st.name.clone()));
        }
        links.push((lp.name.clone(), st.name));
    }
    // Loopback up first: nothing else brings it up on the appliance, and every local packet
    // (the init's own probes of the service addresses, whatever interface carries them) goes
    // through it. Its addresses are the kernel's: nothing is added or removed.
    if let Some(lo) = link_state(handle, FALLBACK_IFACE).await? {
        converge_link(handle, &lo, None, &[], true, Dad::Full, &mut changes).await?;
    }
    let (svc, service_fallback) = service_link(handle, &plan.service_iface, &mut changes).await?;
    let keep_others = svc.name == FALLBACK_IFACE;
    converge_link(
        handle,
        &svc,
        None,
        &plan.service,
        keep_others,
        Dad::Skip,
        &mut changes,
    )
    .await?;
    converge_gateway(handle, gw4, true, &mut changes).await?;
    converge_gateway(handle, gw6, false, &mut changes).await?;
    Ok(Report {
        changes,
        service_iface: svc.name,
        service_fallback,
        links,
    })
}
