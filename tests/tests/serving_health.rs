//! Health gating end to end with the real daemons: NSD serving the root zone, BIRD with the
//! generated config in the appliance namespace, the host's router in another (FRR, and again
//! GoBGP), and the health driver probing NSD and steering BIRD. Killing NSD withdraws the
//! specifics at the router and keeps the covering prefixes; NSD back brings the specifics back
//! after the hold-down; the drain switch withdraws and undrain restores them. Prints the
//! withdrawal latency at the router.

use imrs_init::bgp;
use imrs_init::dns;
use imrs_init::health;
use imrs_tests::daemons;
use imrs_tests::netns;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bgp::{BirdDaemon, BirdOptions};
use daemons::{BIRD, Daemon, NSD, Router, RouterKind, bgp_programs, router_config, wait_exact};
use dns::{DnsConfig, Hardware};
use health::Policy;
use health::driver::{BirdAnnouncer, DnsProber, Driver, Inputs, SharedInputs};
use imrs_config::recipe::DnsImpl;
use netns::{appliance_and_host, require};

const SERIAL: u32 = 2026073102;
const HOLD_DOWN: Duration = Duration::from_secs(3);

fn manifest(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn zone_file() -> PathBuf {
    manifest("../testdata/rootzone/root.zone.2026073102")
}

fn free_port() -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok()
            && UdpSocket::bind(("::1", port)).is_ok()
            && TcpListener::bind(("::1", port)).is_ok()
        {
            return port;
        }
    }
}

const ALL4: [&str; 2] = ["199.7.82.0/23", "199.7.83.0/24"];
const ALL6: [&str; 3] = ["2001:500:3::/48", "2001:500:9e::/47", "2001:500:9f::/48"];
const COVER4: [&str; 1] = ["199.7.82.0/23"];
const COVER6: [&str; 1] = ["2001:500:9e::/47"];

#[test]
fn frr_dns_failure_and_drain_gate_the_specifics() {
    dns_failure_and_drain_gate_the_specifics_at_the_peer(RouterKind::Frr);
}

#[test]
fn gobgp_dns_failure_and_drain_gate_the_specifics() {
    dns_failure_and_drain_gate_the_specifics_at_the_peer(RouterKind::Gobgp);
}

fn dns_failure_and_drain_gate_the_specifics_at_the_peer(kind: RouterKind) {
    let test = format!("serving_health ({kind})");
    let zone = zone_file().to_string_lossy().into_owned();
    let mut needs = bgp_programs(kind);
    needs.extend([NSD, zone.as_str()]);
    if !require(&test, true, &needs) {
        return;
    }
    let site = imrs_config::site::load(&manifest("../images/sites/lab.toml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();

    // Routing: appliance namespace with BIRD, router namespace with the router.
    let (appl, rtr) = appliance_and_host(&format!("hlt-{kind}"), &[]);
    let mut router = Router::start(kind, &rtr, &dir.path().join(kind.name()), &router_config())
        .unwrap_or_else(|e| panic!("{e:#}"));
    let birdd = BirdDaemon {
        bird: BIRD.into(),
        run_dir: dir.path().join("bird"),
        account: None,
    };
    birdd
        .write_config(&bgp::render(&site, &BirdOptions::default()).unwrap())
        .unwrap();
    let (bin, args) = birdd.command();
    let bird = Daemon::spawn(
        "bird",
        appl.command(&bin).args(&args),
        &dir.path().join("bird.log"),
    )
    .unwrap();

    // DNS: NSD on loopback (the driver runs here; BIRD is reached through its socket).
    let port = free_port();
    let mut dns = DnsConfig::for_site(
        DnsImpl::Nsd,
        &site,
        &Hardware::detect(Path::new("/proc")),
        zone_file(),
        dir.path().join("nsd"),
    );
    dns.listen = vec![
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ];
    dns.port = port;
    dns.workers = 1;
    dns.write().unwrap();
    let start_nsd = || {
        let (bin, args) = dns.command();
        Daemon::spawn(
            "nsd",
            std::process::Command::new(bin).args(args),
            &dir.path().join("nsd.log"),
        )
        .unwrap()
    };
    let mut nsd = start_nsd();

    // The driver, production policy except a shorter hold-down.
    let policy = Policy {
        hold_down: HOLD_DOWN,
        ..Policy::default()
    };
    let inputs: SharedInputs = Arc::new(Mutex::new(Inputs {
        serial: Some(SERIAL),
        zone_expires: Some(SystemTime::now() + Duration::from_secs(604_800)),
        drained: false,
        transfer_failure: None,
        ..Inputs::default()
    }));
    let records = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let driver = {
        let (inputs, records, stop) = (inputs.clone(), records.clone(), stop.clone());
        let r2 = records.clone();
        let prober = DnsProber::new(&[
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
        ]);
        let announcer = BirdAnnouncer {
            birdc: birdd.birdc(),
        };
        std::thread::spawn(move || {
            let mut d = Driver::new(
                policy,
                prober,
                announcer,
                inputs,
                move |r| records.lock().unwrap().push(r.to_string()),
                move |e| r2.lock().unwrap().push(format!("apply failed: {e}")),
            );
            d.run(&stop);
        })
    };
    let logs = || {
        format!(
            "records:\n{}\nbird:\n{}\nnsd:\n{}",
            records.lock().unwrap().join("\n"),
            bird.log(),
            std::fs::read_to_string(dir.path().join("nsd.log")).unwrap_or_default()
        )
    };

    // Boot: everything at the first good probe (the dns stage has proved the daemon already;
    // a recovery below still waits for the rise and the hold-down).
    wait_exact(&router, &ALL4, &ALL6, Duration::from_secs(40), &logs);
    {
        let r = records.lock().unwrap();
        let first_on = r.iter().find(|l| l.contains("covering on"));
        assert!(
            first_on
                .is_some_and(|l| l.contains("specifics on") && l.contains("1 good probe in a row")),
            "{r:?}"
        );
    }

    // DNS daemon dies: specifics gone at the router, covering kept; back after the hold-down.
    let mut withdrawals = Vec::new();
    for trial in 0..3 {
        std::thread::sleep(Duration::from_millis(300 * trial));
        nsd.kill();
        let t = wait_exact(&router, &COVER4, &COVER6, Duration::from_secs(10), &logs);
        eprintln!("{kind} trial {trial}: specifics withdrawn at the router {t:?} after NSD died");
        withdrawals.push(t);
        nsd = start_nsd();
        let back = wait_exact(&router, &ALL4, &ALL6, Duration::from_secs(30), &logs);
        eprintln!(
            "{kind} trial {trial}: specifics back at the router {back:?} after NSD restarted"
        );
        assert!(
            back >= HOLD_DOWN,
            "re-announced after {back:?}, before the hold-down"
        );
        // Covering stayed throughout: it is checked as part of every exact set above.
    }
    withdrawals.sort();
    eprintln!(
        "{kind}: withdrawal latency at the router: median {:?} (of {:?})",
        withdrawals[withdrawals.len() / 2],
        withdrawals
    );

    // Operator drain and undrain.
    inputs.lock().unwrap().drained = true;
    let t = wait_exact(&router, &COVER4, &COVER6, Duration::from_secs(5), &logs);
    eprintln!("drain: specifics withdrawn after {t:?}");
    inputs.lock().unwrap().drained = false;
    let t = wait_exact(&router, &ALL4, &ALL6, Duration::from_secs(5), &logs);
    eprintln!("undrain: specifics back after {t:?}");

    // A transfer failure while the zone is valid changes nothing.
    inputs.lock().unwrap().transfer_failure = Some("192.0.2.53: timeout".into());
    std::thread::sleep(Duration::from_secs(3));
    wait_exact(&router, &ALL4, &ALL6, Duration::ZERO, &logs);

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    driver.join().unwrap();
    let r = records.lock().unwrap().join("\n");
    assert!(r.contains("2 failed probes in a row"), "{r}");
    assert!(r.contains("drained by the operator"), "{r}");
    assert!(r.contains("hold-down over, probes good"), "{r}");
    eprintln!("{r}");
    router.ensure_running().unwrap();
    drop(nsd);
    drop(bird);
    drop(router);
}
