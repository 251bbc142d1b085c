//! BGP serving tests against the real daemons: BIRD with the generated config in one network
//! namespace (the appliance), FRR (zebra + bgpd) in another (the host's router, AS 64512), a veth
//! between them with documentation addresses. FRR must learn exactly the five IMRS prefixes from
//! AS 20144 over the IPv4 and the IPv6 session; disabling the specifics must leave exactly the two
//! covering prefixes; a hand-edited config with extra routes must still export nothing else.

use imrs_init::bgp;
use imrs_tests::daemons;
use imrs_tests::netns;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use bgp::{BirdDaemon, BirdOptions, Birdc, COVER4, COVER6, SPEC4, SPEC6};
use daemons::{BGPD, BIRD, Daemon, Frr, VTYSH, ZEBRA, frr_bgpd_conf, wait_for};
use imrs_config::site::Site;
use netns::{NetNs, require, veth};

const V4_ALL: [&str; 2] = ["199.7.82.0/23", "199.7.83.0/24"];
const V6_ALL: [&str; 3] = ["2001:500:3::/48", "2001:500:9e::/47", "2001:500:9f::/48"];

fn lab_site() -> Site {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/sites/lab.toml");
    imrs_config::site::load(&path).unwrap()
}

/// Appliance and router namespaces with BIRD and FRR running. Fields drop in order: daemons
/// first, then namespaces, then the directory.
struct Lab {
    bird: Daemon,
    frr: Frr,
    birdd: BirdDaemon,
    _appl: NetNs,
    _rtr: NetNs,
    _dir: tempfile::TempDir,
}

impl Lab {
    fn start(tag: &str, opts: &BirdOptions, edit: impl Fn(String) -> String) -> Option<Lab> {
        if !require(tag, true, &[BIRD, ZEBRA, BGPD, VTYSH, "/usr/sbin/ip"]) {
            return None;
        }
        let appl = NetNs::new(&format!("{tag}a"));
        let rtr = NetNs::new(&format!("{tag}r"));
        veth(&appl, "eth0", &rtr, "eth0");
        appl.addr("eth0", &["192.0.2.10/24", "2001:db8:1::10/64"]);
        rtr.addr("eth0", &["192.0.2.1/24", "2001:db8:1::1/64"]);
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let frr = Frr::start(
            &rtr,
            &dir.path().join("frr"),
            &frr_bgpd_conf(
                64512,
                "192.0.2.1",
                &[("192.0.2.10", 20144), ("2001:db8:1::10", 20144)],
            ),
        );
        let conf = edit(bgp::render(&lab_site(), opts).unwrap());
        let birdd = BirdDaemon {
            bird: BIRD.into(),
            run_dir: dir.path().join("bird"),
        };
        birdd.write_config(&conf).unwrap();
        let (bin, args) = birdd.command();
        let mut bird = Daemon::spawn(
            "bird",
            Some(&appl),
            &bin,
            &args,
            &dir.path().join("bird.log"),
        );
        let sock = birdd.socket();
        wait_for(Duration::from_secs(10), || {
            Birdc::new(&sock).protocols().ok()
        })
        .unwrap_or_else(|| panic!("BIRD control socket never answered:\n{}", bird.log()));
        bird.assert_running();
        Some(Lab {
            bird,
            frr,
            birdd,
            _appl: appl,
            _rtr: rtr,
            _dir: dir,
        })
    }

    fn birdc(&self) -> Birdc {
        self.birdd.birdc()
    }

    /// Waits until FRR holds exactly `v4` and `v6` as valid routes, each with AS path `20144`.
    fn wait_exact(&mut self, v4: &[&str], v6: &[&str], timeout: Duration) -> Duration {
        let t0 = Instant::now();
        let want = |w: &[&str]| {
            let mut w: Vec<String> = w.iter().map(|s| s.to_string()).collect();
            w.sort();
            w
        };
        let ok = wait_for(timeout, || {
            (self.frr.prefixes("ipv4") == want(v4) && self.frr.prefixes("ipv6") == want(v6))
                .then_some(())
        });
        if ok.is_none() {
            self.frr.assert_running();
            self.bird.assert_running();
            panic!(
                "FRR never held exactly {v4:?} + {v6:?}; it has {:?} + {:?}\nBIRD:\n{}\n{}",
                self.frr.routes("ipv4"),
                self.frr.routes("ipv6"),
                self.bird.log(),
                self.frr.logs()
            );
        }
        let elapsed = t0.elapsed();
        for fam in ["ipv4", "ipv6"] {
            for (prefix, route) in self.frr.routes(fam).unwrap() {
                assert_eq!(route.path, "20144", "{prefix} has AS path {}", route.path);
            }
        }
        elapsed
    }

    fn wait_sessions(&mut self) {
        let c = self.birdc();
        let up = wait_for(Duration::from_secs(30), || {
            let p = c.protocols().ok()?;
            let sessions: Vec<_> = p.iter().filter(|p| p.proto == "BGP").collect();
            (sessions.len() == 2 && sessions.iter().all(|s| s.is_up())).then_some(())
        });
        if up.is_none() {
            panic!(
                "BGP sessions never came up: {:?}\n{}\n{}",
                c.protocols(),
                self.bird.log(),
                self.frr.logs()
            );
        }
    }
}

#[test]
fn frr_learns_exactly_the_imrs_prefixes_and_specifics_are_gated() {
    let Some(mut lab) = Lab::start("bgp", &BirdOptions::default(), |c| c) else {
        return;
    };
    lab.wait_sessions();
    // Statics start disabled: nothing is announced before gating says so.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(lab.frr.prefixes("ipv4"), Vec::<String>::new());
    assert_eq!(lab.frr.prefixes("ipv6"), Vec::<String>::new());

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
        eprintln!("round {round}: specifics withdrawn at FRR after {t:?}");
        c.enable(SPEC4).unwrap();
        c.enable(SPEC6).unwrap();
        let t = lab.wait_exact(&V4_ALL, &V6_ALL, Duration::from_secs(5));
        eprintln!("round {round}: specifics back at FRR after {t:?}");
    }
}

#[test]
fn hand_edited_config_still_exports_only_imrs_prefixes() {
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
    let Some(mut lab) = Lab::start("leak", &opts, leak) else {
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
    };
    let conf = bgp::render(&site, &BirdOptions::default()).unwrap();
    d.write_config(&conf).unwrap();
    assert_eq!(std::fs::read_to_string(d.config_path()).unwrap(), conf);
}
