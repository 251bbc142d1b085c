//! Interface configuration against the real kernel: a network namespace with a dummy `eth0`, the
//! lab site applied through netlink from a thread that entered the namespace, read back through
//! netlink and cross-checked with `ip -j`; a second apply changes nothing; drift made behind the
//! init's back (extra address, lost address, MTU, link down, wrong gateway) is repaired exactly.
//! Over a veth with the network stage's optimistic duplicate address detection settings: the
//! management address is usable at once, detection ends; a duplicate on the other side is
//! found.

use imrs_init::net;
use imrs_tests::netns;
use std::collections::BTreeSet;
use std::path::Path;

use ipnet::IpNet;
use net::{Change, LinkState, NetPlan, Report};
use netns::{NetNs, require};

/// Runs `f` on a thread inside `ns` ([`NetNs::run_inside`]), with a current-thread tokio
/// runtime and a netlink handle opened there.
fn in_netns<T: Send>(ns: &NetNs, f: impl AsyncFnOnce(&rtnetlink::Handle) -> T + Send) -> T {
    ns.run_inside(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let h = net::connect().unwrap();
            f(&h).await
        })
    })
    .unwrap()
}

fn apply_and_read(ns: &NetNs, plan: &NetPlan) -> (Report, Report, LinkState, LinkState) {
    in_netns(ns, async |h| {
        let first = net::apply(h, plan).await.unwrap();
        let second = net::apply(h, plan).await.unwrap();
        let eth0 = net::link_state(h, "eth0").await.unwrap().unwrap();
        let svc = net::link_state(h, &first.service_iface)
            .await
            .unwrap()
            .unwrap();
        (first, second, eth0, svc)
    })
}

fn global(addrs: &[IpNet]) -> BTreeSet<String> {
    addrs
        .iter()
        .filter(|a| !matches!(a.addr(), std::net::IpAddr::V6(v6) if v6.is_unicast_link_local()))
        .map(|a| a.to_string())
        .collect()
}

/// `ip -j addr show dev IFACE` in the namespace: global addresses as `addr/len`.
fn ip_addrs(ns: &NetNs, iface: &str) -> BTreeSet<String> {
    let v: serde_json::Value =
        serde_json::from_str(&ns.ip(&["-j", "addr", "show", "dev", iface]).unwrap()).unwrap();
    v[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["scope"] == "global")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}

/// `ip -j [-6] route show default`: (gateway, dev) pairs.
fn ip_defaults(ns: &NetNs, v6: bool) -> Vec<(String, String)> {
    let mut args = vec!["-j"];
    if v6 {
        args.push("-6");
    }
    args.extend(["route", "show", "default"]);
    let v: serde_json::Value = serde_json::from_str(&ns.ip(&args).unwrap()).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["gateway"].as_str().unwrap_or("").to_string(),
                r["dev"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[test]
fn site_applied_through_netlink_idempotently_and_drift_repaired() {
    if !require("serving_net", true, &["/usr/sbin/ip"]) {
        return;
    }
    let ns = NetNs::create("net").unwrap();
    ns.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
    ])
    .unwrap();
    ns.ip(&["link", "set", "peer0", "up"]).unwrap();
    // Some kernels have no dummy driver: then the service addresses must go on lo.
    let dummy = ns
        .command("ip")
        .args(["link", "add", "probe0", "type", "dummy"])
        .status()
        .unwrap()
        .success();
    let svc_name = if dummy { "imrs0" } else { "lo" };
    if dummy {
        ns.ip(&["link", "del", "probe0"]).unwrap();
    } else {
        eprintln!("no dummy driver in this kernel: testing the fallback to lo");
    }
    let mut site = imrs_config::site::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/sites/lab.toml"),
    )
    .unwrap();
    site.interfaces[0].mtu = Some(1400);
    let plan = NetPlan::from_site(&site);

    let (first, second, eth0, svc) = apply_and_read(&ns, &plan);
    let did: Vec<String> = first.changes.iter().map(|c| c.to_string()).collect();
    let mut want: Vec<String> = [
        "eth0: mtu 1500 -> 1400",
        "eth0: up",
        "eth0: added 192.0.2.10/24",
        "eth0: added 2001:db8:1::10/64",
    ]
    .map(String::from)
    .into();
    if dummy {
        want.extend(["imrs0: created (dummy)".into(), "imrs0: up".into()]);
    }
    want.extend([
        format!("{svc_name}: added 198.51.100.42/32"),
        format!("{svc_name}: added 2001:db8:42::42/128"),
        "default route via 192.0.2.1 dev eth0 added".into(),
        "default route via 2001:db8:1::1 dev eth0 added".into(),
    ]);
    assert_eq!(did, want);
    assert_eq!(
        second.changes,
        Vec::<Change>::new(),
        "second apply changed things"
    );
    assert_eq!(first.service_iface, svc_name);
    assert_eq!(first.service_fallback, !dummy);
    assert_eq!((eth0.mtu, eth0.up), (1400, true));
    let want_eth0: BTreeSet<String> = ["192.0.2.10/24", "2001:db8:1::10/64"]
        .map(String::from)
        .into();
    let want_svc: BTreeSet<String> = ["198.51.100.42/32", "2001:db8:42::42/128"]
        .map(String::from)
        .into();
    assert_eq!(global(&eth0.addresses), want_eth0);
    if dummy {
        assert_eq!(global(&svc.addresses), want_svc);
    } else {
        // lo keeps its own addresses; the service addresses are added to them.
        assert!(
            global(&svc.addresses).is_superset(&want_svc),
            "{:?}",
            svc.addresses
        );
    }
    // Cross-check with iproute2.
    assert_eq!(ip_addrs(&ns, "eth0"), want_eth0);
    if dummy {
        assert_eq!(ip_addrs(&ns, "imrs0"), want_svc);
        let link: serde_json::Value =
            serde_json::from_str(&ns.ip(&["-j", "-d", "link", "show", "imrs0"]).unwrap()).unwrap();
        assert_eq!(link[0]["linkinfo"]["info_kind"], "dummy");
    } else {
        // `ip` reports lo's addresses with scope host; check the service ones are there.
        let lo = ns.ip(&["addr", "show", "dev", "lo"]).unwrap();
        assert!(
            lo.contains("198.51.100.42/32") && lo.contains("2001:db8:42::42/128"),
            "{lo}"
        );
    }
    assert_eq!(
        ip_defaults(&ns, false),
        [("192.0.2.1".into(), "eth0".into())]
    );
    assert_eq!(
        ip_defaults(&ns, true),
        [("2001:db8:1::1".into(), "eth0".into())]
    );

    // Drift behind the init's back.
    ns.ip(&["addr", "add", "192.0.2.99/24", "dev", "eth0"])
        .unwrap();
    ns.ip(&["addr", "del", "2001:db8:1::10/64", "dev", "eth0"])
        .unwrap();
    ns.ip(&["link", "set", "eth0", "mtu", "1500"]).unwrap();
    ns.ip(&["addr", "del", "198.51.100.42/32", "dev", svc_name])
        .unwrap();
    if dummy {
        ns.ip(&["link", "set", "imrs0", "down"]).unwrap();
    }
    ns.ip(&[
        "route",
        "replace",
        "default",
        "via",
        "192.0.2.2",
        "dev",
        "eth0",
    ])
    .unwrap();
    let (repair, again, eth0, _) = apply_and_read(&ns, &plan);
    let mut did: Vec<String> = repair.changes.iter().map(|c| c.to_string()).collect();
    did.sort();
    let mut want: Vec<String> = [
        "eth0: mtu 1500 -> 1400",
        "eth0: removed 192.0.2.99/24",
        "eth0: added 2001:db8:1::10/64",
        "default route via 192.0.2.2 removed",
        "default route via 192.0.2.1 dev eth0 added",
    ]
    .map(String::from)
    .into();
    want.push(format!("{svc_name}: added 198.51.100.42/32"));
    if dummy {
        want.push("imrs0: up".into());
    }
    want.sort();
    assert_eq!(did, want);
    assert!(again.changes.is_empty(), "{:?}", again.changes);
    assert_eq!(global(&eth0.addresses), want_eth0);
    assert_eq!(ip_addrs(&ns, "eth0"), want_eth0);
    assert_eq!(
        ip_defaults(&ns, false),
        [("192.0.2.1".into(), "eth0".into())]
    );
}

#[test]
fn missing_interface_is_named() {
    if !require("serving_net", true, &["/usr/sbin/ip"]) {
        return;
    }
    let ns = NetNs::create("netmiss").unwrap();
    let site = imrs_config::site::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/sites/lab.toml"),
    )
    .unwrap();
    let mut plan = NetPlan::from_site(&site);
    let err = in_netns(&ns, async |h| net::apply(h, &plan).await.unwrap_err());
    assert!(
        matches!(&err, net::NetError::NoSuchLink { name, .. } if name == "eth0"),
        "{err}"
    );
    // Matching by MAC finds the link whatever its name.
    ns.ip(&[
        "link",
        "add",
        "enp9s0",
        "address",
        "02:00:00:00:00:42",
        "type",
        "veth",
        "peer",
        "name",
        "peer0",
    ])
    .unwrap();
    plan.links[0].mac = Some("02:00:00:00:00:42".into());
    let report = in_netns(&ns, async |h| net::apply(h, &plan).await.unwrap());
    assert_eq!(report.links, [("eth0".to_string(), "enp9s0".to_string())]);
    assert_eq!(ip_addrs(&ns, "enp9s0").len(), 2);
}

/// Two namespaces joined by a veth `eth0` <-> `eth0`; the appliance side with the optimistic
/// duplicate address detection settings the network stage writes, the other side up with
/// `other` (added without detection, so it is there first).
fn optimistic_pair(tag: &str, other: &[&str]) -> (NetNs, NetNs) {
    let appl = NetNs::create(&format!("{tag}a")).unwrap();
    let peer = NetNs::create(&format!("{tag}p")).unwrap();
    netns::veth(&appl, "eth0", &peer, "eth0").unwrap();
    appl.ip(&["link", "set", "eth0", "down"]).unwrap();
    // Detection starts once the link has a carrier: the other side up.
    peer.ip(&["link", "set", "eth0", "up"]).unwrap();
    for a in other {
        peer.ip(&["addr", "add", a, "dev", "eth0", "nodad"])
            .unwrap();
    }
    appl.run_inside(|| net::sysctl::apply(Path::new("/proc/sys"), &net::sysctl::optimistic_dad()))
        .unwrap()
        .unwrap();
    (appl, peer)
}

#[test]
fn management_addresses_are_usable_at_once_and_a_duplicate_is_found() {
    if !require("serving_net", true, &["/usr/sbin/ip"]) {
        return;
    }
    let site = imrs_config::site::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/sites/lab.toml"),
    )
    .unwrap();
    let plan = NetPlan::from_site(&site);
    let mine: IpNet = "2001:db8:1::10/64".parse().unwrap();
    // Detection's end (or a duplicate), within 10 s.
    let watch = async |h: &rtnetlink::Handle| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let st = net::dad_state(h, "eth0").await.unwrap();
            if st.settled() || !st.failed.is_empty() || std::time::Instant::now() > deadline {
                return st;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    };

    // Alone on the link: usable at once (optimistic), then detection ends without a duplicate.
    let (appl, _peer) = optimistic_pair("dadok", &[]);
    let (at_once, later) = in_netns(&appl, async |h| {
        net::apply(h, &plan).await.unwrap();
        let at_once = net::dad_state(h, "eth0").await.unwrap();
        (at_once, watch(h).await)
    });
    assert!(at_once.unusable.is_empty(), "{at_once:?}");
    assert!(at_once.optimistic.contains(&mine), "{at_once:?}");
    assert!(later.settled() && later.failed.is_empty(), "{later:?}");

    // Another node has the management address: still usable at first, then found out.
    let (appl, _peer) = optimistic_pair("daddup", &["2001:db8:1::10/64"]);
    let (at_once, later) = in_netns(&appl, async |h| {
        net::apply(h, &plan).await.unwrap();
        let at_once = net::tentative(h, "eth0").await.unwrap();
        (at_once, watch(h).await)
    });
    assert!(at_once.is_empty(), "{at_once:?}");
    assert_eq!(later.failed, [mine], "{later:?}");
}
