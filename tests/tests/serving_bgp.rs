//! BGP serving tests against the real daemons: BIRD with the generated config in one network
//! namespace (the appliance), the host's router (AS 64512) in another, a veth between them with
//! documentation addresses. Every export and withdrawal check runs against both routers, FRR
//! (zebra + bgpd) and GoBGP (gobgpd), two independent BGP implementations. The router must learn
//! exactly the five IMRS prefixes from AS 20144 over the IPv4 and the IPv6 session; disabling the
//! specifics must leave exactly the two covering prefixes; a hand-edited config with extra routes
//! must still export nothing else.

use imrs_init::bgp;
use imrs_tests::daemons;
use imrs_tests::netns;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use bgp::{BirdDaemon, BirdOptions, Birdc, COVER4, COVER6, SPEC4, SPEC6};
use daemons::{
    BIRD, Daemon, POLL, Router, RouterKind, bgp_programs, router_config, wait_exact, wait_for,
};
use imrs_config::site::Site;
use netns::{NetNs, appliance_and_host, require};

const V4_ALL: [&str; 2] = ["199.7.82.0/23", "199.7.83.0/24"];
const V6_ALL: [&str; 3] = ["2001:500:3::/48", "2001:500:9e::/47", "2001:500:9f::/48"];

fn lab_site() -> Site {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/sites/lab.toml");
    imrs_config::site::load(&path).unwrap()
}

/// Appliance and router namespaces with BIRD and the router running. Fields drop in order:
/// daemons first, then namespaces, then the directory.
struct Lab {
    bird: Daemon,
    router: Router,
    birdd: BirdDaemon,
    _appl: NetNs,
    _rtr: NetNs,
    _dir: tempfile::TempDir,
}

impl Lab {
    fn start(
        kind: RouterKind,
        tag: &str,
        opts: &BirdOptions,
        edit: impl Fn(String) -> String,
    ) -> Option<Lab> {
        let tag = format!("{tag}-{kind}");
        if !require(&tag, true, &bgp_programs(kind)) {
            return None;
        }
        let (appl, rtr) = appliance_and_host(&tag, &[]);
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let router = Router::start(kind, &rtr, &dir.path().join(kind.name()), &router_config())
            .unwrap_or_else(|e| panic!("{e:#}"));
        let conf = edit(bgp::render(&lab_site(), opts).unwrap());
        let birdd = BirdDaemon {
            bird: BIRD.into(),
            run_dir: dir.path().join("bird"),
            account: None,
        };
        birdd.write_config(&conf).unwrap();
        let (bin, args) = birdd.command();
        let mut bird = Daemon::spawn(
            "bird",
            appl.command(&bin).args(&args),
            &dir.path().join("bird.log"),
        )
        .unwrap();
        let sock = birdd.socket();
        wait_for(Duration::from_secs(10), POLL, || {
            Birdc::new(&sock).protocols().ok()
        })
        .unwrap_or_else(|| panic!("BIRD control socket never answered:\n{}", bird.log()));
        bird.ensure_running().unwrap();
        Some(Lab {
            bird,
            router,
            birdd,
            _appl: appl,
            _rtr: rtr,
            _dir: dir,
        })
    }

    fn birdc(&self) -> Birdc {
        self.birdd.birdc()
    }

    /// Waits until the router holds exactly `v4` and `v6` as valid routes, each with AS path
    /// `20144`.
    fn wait_exact(&mut self, v4: &[&str], v6: &[&str], timeout: Duration) -> Duration {
        self.router.ensure_running().unwrap();
        let elapsed = wait_exact(&self.router, v4, v6, timeout, &|| {
            format!("BIRD:\n{}", self.bird.log())
        });
        for route in self.router.routes().unwrap() {
            assert_eq!(
                route.as_path, "20144",
                "{} has AS path {}",
                route.prefix, route.as_path
            );
            assert_eq!(route.origin_as, Some(20144), "{route:?}");
        }
        elapsed
    }

    fn wait_sessions(&mut self) {
        let c = self.birdc();
        let up = wait_for(Duration::from_secs(30), POLL, || {
            let p = c.protocols().ok()?;
            let sessions: Vec<_> = p.iter().filter(|p| p.proto == "BGP").collect();
            (sessions.len() == 2 && sessions.iter().all(|s| s.is_up())).then_some(())
        });
        if up.is_none() {
            panic!(
                "BGP sessions never came up: {:?}, the router says {:?}\n{}\n{}",
                c.protocols(),
                self.router.neighbor_states(),
                self.bird.log(),
                self.router.logs()
            );
        }
    }
}

/// The router learns exactly the five prefixes once gating enables them, and the specifics go
/// and come back with the gate.
fn learns_exactly_the_imrs_prefixes_and_specifics_are_gated(kind: RouterKind) {
    let Some(mut lab) = Lab::start(kind, "bgp", &BirdOptions::default(), |c| c) else {
        return;
    };
    lab.wait_sessions();
    // Statics start disabled: nothing is announced before gating says so.
    std::thread::sleep(Duration::from_millis(500));
    lab.wait_exact(&[], &[], Duration::ZERO);

    let c = lab.birdc();
    for p in [COVER4, COVER6, SPEC4, SPEC6] {
        c.enable(p).unwrap();
        assert!(c.protocol(p).unwrap().is_up(), "{p}");
    }
    lab.wait_exact(&V4_ALL, &V6_ALL, Duration::from_secs(10));
    // And nothing else arrives later.
    std::thread::sleep(Duration::from_secs(1));
    lab.wait_exact(&V4_ALL, &V6_ALL, Duration::ZERO);

    for round in 0..2 {
        c.disable(SPEC4).unwrap();
        c.disable(SPEC6).unwrap();
        assert!(!c.protocol(SPEC4).unwrap().is_up());
        let t = lab.wait_exact(
            &["199.7.82.0/23"],
            &["2001:500:9e::/47"],
            Duration::from_secs(5),
        );
        eprintln!("{kind} round {round}: specifics withdrawn at the router after {t:?}");
        c.enable(SPEC4).unwrap();
        c.enable(SPEC6).unwrap();
        let t = lab.wait_exact(&V4_ALL, &V6_ALL, Duration::from_secs(5));
        eprintln!("{kind} round {round}: specifics back at the router after {t:?}");
    }
}

#[test]
fn frr_learns_exactly_the_imrs_prefixes_and_specifics_are_gated() {
    learns_exactly_the_imrs_prefixes_and_specifics_are_gated(RouterKind::Frr);
}

#[test]
fn gobgp_learns_exactly_the_imrs_prefixes_and_specifics_are_gated() {
    learns_exactly_the_imrs_prefixes_and_specifics_are_gated(RouterKind::Gobgp);
}

/// BIRD holds extra routes, but the export filter lets only the five prefixes out.
fn hand_edited_config_still_exports_only_imrs_prefixes(kind: RouterKind) {
    let leak = |conf: String| {
        conf.replace(
            "  route 199.7.83.0/24 blackhole;",
            "  route 199.7.83.0/24 blackhole;\n  route 192.0.2.0/25 blackhole;\n  \
             route 199.7.83.0/25 blackhole;\n  route 0.0.0.0/0 blackhole;",
        )
        .replace(
            "  route 2001:500:9f::/48 blackhole;",
            "  route 2001:500:9f::/48 blackhole;\n  route 2001:db8:ff::/48 blackhole;\n  \
             route 2001:500:9f::/49 blackhole;",
        ) + "protocol static leak4 {\n  ipv4;\n  route 203.0.113.0/24 blackhole;\n}\n"
    };
    let opts = BirdOptions {
        announce_at_start: true,
        ..BirdOptions::default()
    };
    let Some(mut lab) = Lab::start(kind, "leak", &opts, leak) else {
        return;
    };
    lab.wait_sessions();
    // The leaked routes are really in BIRD's table: only the export filter stops them.
    let c = lab.birdc();
    for net in [
        "192.0.2.0/25",
        "199.7.83.0/25",
        "0.0.0.0/0",
        "203.0.113.0/24",
        "2001:db8:ff::/48",
        "2001:500:9f::/49",
    ] {
        let reply = c.command(&format!("show route {net}")).unwrap();
        let text: Vec<_> = reply.lines.iter().map(|(_, t)| t.as_str()).collect();
        assert!(
            text.iter().any(|l| l.starts_with(net)),
            "BIRD does not hold {net}: {text:?}"
        );
    }
    lab.wait_exact(&V4_ALL, &V6_ALL, Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(2));
    lab.wait_exact(&V4_ALL, &V6_ALL, Duration::ZERO);
}

#[test]
fn frr_hand_edited_config_still_exports_only_imrs_prefixes() {
    hand_edited_config_still_exports_only_imrs_prefixes(RouterKind::Frr);
}

#[test]
fn gobgp_hand_edited_config_still_exports_only_imrs_prefixes() {
    hand_edited_config_still_exports_only_imrs_prefixes(RouterKind::Gobgp);
}

#[test]
fn site_asking_for_another_prefix_is_refused() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/sites/lab.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    for bad in [
        "192.0.2.0/24",
        "199.7.83.0/25",
        "199.7.0.0/16",
        "2001:500::/32",
    ] {
        let edited = text.replace("[bgp]\n", &format!("[bgp]\nannounce = [\"{bad}\"]\n"));
        let err = imrs_config::site::parse(&path, &edited).unwrap_err();
        assert!(err.to_string().contains("bgp.announce[0]"), "{bad}: {err}");
        // A site that skipped validation is refused by the generator too.
        let mut site = lab_site();
        site.bgp.announce = Some(vec![bad.parse().unwrap()]);
        let err = bgp::render(&site, &BirdOptions::default()).unwrap_err();
        assert!(
            matches!(err, bgp::BgpError::Refused { ref field, .. } if field == "bgp.announce[0]"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn generated_config_passes_bird_check() {
    if !require("generated_config_passes_bird_check", false, &[BIRD]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut site = lab_site();
    site.bgp.neighbors[0].password = Some("md5-secret".into());
    site.bgp.neighbors[0].community = true;
    site.bgp.neighbors[0].no_export = true;
    site.bgp.neighbors[0].prepend = 3;
    site.bgp.neighbors[1].multihop = Some(4);
    site.bgp.neighbors[1].asn = 4_200_000_000;
    site.bgp.neighbors[1].community = true;
    let d = BirdDaemon {
        bird: BIRD.into(),
        run_dir: dir.path().to_path_buf(),
        account: None,
    };
    let conf = bgp::render(&site, &BirdOptions::default()).unwrap();
    d.write_config(&conf).unwrap();
    assert_eq!(std::fs::read_to_string(d.config_path()).unwrap(), conf);
}

/// A router that cannot start fails at once, naming the router, the namespace and why, with
/// the end of its log (a second GoBGP in one namespace finds its API port taken).
#[test]
fn a_router_that_cannot_start_says_why() {
    let kind = RouterKind::Gobgp;
    if !require(
        "a_router_that_cannot_start_says_why",
        true,
        &bgp_programs(kind),
    ) {
        return;
    }
    let (_appl, rtr) = appliance_and_host("dup", &[]);
    let dir = tempfile::tempdir().unwrap();
    let _first = Router::start(kind, &rtr, &dir.path().join("one"), &router_config())
        .unwrap_or_else(|e| panic!("{e:#}"));
    let t0 = std::time::Instant::now();
    let e = Router::start(kind, &rtr, &dir.path().join("two"), &router_config()).unwrap_err();
    let text = format!("{e:#}");
    assert!(
        text.starts_with(&format!("starting the router (GoBGP) in {}", rtr.name())),
        "{text}"
    );
    assert!(text.contains("gobgpd exited"), "{text}");
    assert!(text.contains("two/gobgpd.log"), "{text}");
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
}
