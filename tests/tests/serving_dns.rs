//! DNS serving tests against the real daemons: NSD and, separately, Knot DNS run with the
//! generated config on loopback high ports, serving real root zones. The readiness probe must pass
//! over UDP and TCP, IPv4 and IPv6, with AA, the expected serial and NSID; a reload to a new zone
//! must not drop a single query; AXFR is refused; `hostname.bind` / `id.server` CH TXT answer the
//! instance name; the version is hidden; nothing recurses.

use imrs_init::dns;
use imrs_tests::daemons;
use imrs_tests::netns;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use daemons::{Daemon, KNOT_DNSTAP, KNOTD, NSD, POLL, wait_for};
use dns::probe::{Probe, ProbeError, Transport, chaos_txt, query};
use dns::{DnsConfig, Hardware};
use domain::base::iana::{Class, Rcode};
use domain::base::{Name, Rtype};
use imrs_config::recipe::DnsImpl;
use netns::require;

const SERIAL: u32 = 2026073102;
const OLD_SERIAL: u32 = 2026073101;

fn testdata(rel: &str) -> std::path::PathBuf {
    // The real root zone data in the repository (testdata/rootzone/README.md).
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/rootzone")
        .join(rel)
}

/// A port free for UDP and TCP on 127.0.0.1 and ::1 right now.
fn free_port() -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let ok = UdpSocket::bind(("127.0.0.1", port)).is_ok()
            && UdpSocket::bind(("::1", port)).is_ok()
            && TcpListener::bind(("::1", port)).is_ok();
        if ok {
            return port;
        }
    }
}

fn replace_atomically(from: &Path, to: &Path) {
    let tmp = to.with_extension("tmp");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

/// The lab site's DNS config for `imp` serving `zone` on 127.0.0.1 and ::1 at a free port,
/// two workers, its run folder under `dir`, dnstap to `dnstap` when given; written.
fn loopback_config(
    imp: DnsImpl,
    zone: &Path,
    dir: &Path,
    dnstap: Option<std::path::PathBuf>,
) -> DnsConfig {
    let site = imrs_config::site::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/sites/lab.toml"),
    )
    .unwrap();
    let mut cfg = DnsConfig::for_site(
        imp,
        &site,
        &Hardware::detect(Path::new("/proc")),
        zone,
        dir.join("run"),
    );
    cfg.listen = vec![
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ];
    cfg.port = free_port();
    cfg.workers = 2;
    cfg.dnstap = dnstap;
    cfg.write().unwrap();
    cfg
}

fn serve_and_probe(imp: DnsImpl, daemon_bin: &str) {
    let test = format!("serving_dns_{imp}");
    let zone_new = testdata("root.zone.2026073102");
    let zone_old = testdata("stripped/root.zone.2026073101");
    let zone_new_s = zone_new.to_string_lossy().into_owned();
    if !require(&test, false, &[daemon_bin, &zone_new_s]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let zone = dir.path().join("root.zone");
    replace_atomically(&zone_old, &zone);

    let cfg = loopback_config(imp, &zone, dir.path(), None);
    let port = cfg.port;
    cfg.check().unwrap();
    let (bin, args) = cfg.command();
    let t0 = Instant::now();
    let mut d = Daemon::spawn(
        &test,
        std::process::Command::new(&bin).args(&args),
        &dir.path().join("daemon.log"),
    )
    .unwrap();

    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    let ready = wait_for(Duration::from_secs(60), POLL, || {
        Probe::new(v4, Transport::Udp, Some(OLD_SERIAL)).run().ok()
    });
    if ready.is_none() {
        d.ensure_running().unwrap();
        panic!(
            "{imp} never became ready: {:?}\n{}",
            Probe::new(v4, Transport::Udp, Some(OLD_SERIAL)).run(),
            d.log()
        );
    }
    eprintln!("{imp}: ready with {OLD_SERIAL} after {:?}", t0.elapsed());

    // Reload to the new zone while a client queries without pause: no query may fail.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let hammer = {
        let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
        std::thread::spawn(move || {
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                sent.fetch_add(1, Ordering::Relaxed);
                match Probe::new(v4, Transport::Udp, None).run() {
                    Ok(r) if r.serial == OLD_SERIAL || r.serial == SERIAL => {}
                    other => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        errors.push(format!("{other:?}"));
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            errors
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    replace_atomically(&zone_new, &zone);
    let t1 = Instant::now();
    cfg.reload().unwrap();
    let switched = wait_for(Duration::from_secs(60), POLL, || {
        Probe::new(v4, Transport::Udp, Some(SERIAL)).run().ok()
    });
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let errors = hammer.join().unwrap();
    assert!(
        switched.is_some(),
        "{imp} never served {SERIAL}:\n{}",
        d.log()
    );
    eprintln!(
        "{imp}: serving {SERIAL} {:?} after reload; {} queries during reload, {} failed",
        t1.elapsed(),
        sent.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    assert!(
        errors.is_empty(),
        "queries failed during reload: {errors:?}"
    );

    // Readiness over every transport and family.
    for server in [v4, v6] {
        for transport in [Transport::Udp, Transport::Tcp] {
            let r = Probe::new(server, transport, Some(SERIAL))
                .run()
                .unwrap_or_else(|e| panic!("{imp} {server}/{transport}: {e}"));
            assert_eq!(r.serial, SERIAL);
            assert_eq!(r.nsid.as_deref(), Some(cfg.instance.as_str()));
            eprintln!("{imp}: {server}/{transport} ready in {:?}", r.latency);
            // The probe does fail on a wrong expectation.
            assert!(matches!(
                Probe::new(server, transport, Some(SERIAL + 1)).run(),
                Err(ProbeError::Serial { got: SERIAL, .. })
            ));
        }
    }

    let timeout = Duration::from_secs(2);
    for server in [v4, v6] {
        // No zone transfer to anyone.
        for qtype in [Rtype::AXFR, Rtype::IXFR] {
            let m = query(
                server,
                Transport::Tcp,
                timeout,
                &Name::root_vec(),
                qtype,
                Class::IN,
            )
            .unwrap_or_else(|e| panic!("{imp} {qtype}: {e}"))
            .message;
            assert_ne!(m.header().rcode(), Rcode::NOERROR, "{imp} answered {qtype}");
            assert_eq!(m.header_counts().ancount(), 0, "{imp} {qtype} has records");
        }
        // Identity.
        for name in ["hostname.bind.", "id.server."] {
            let txt = chaos_txt(server, Transport::Udp, timeout, name).unwrap();
            assert_eq!(txt, std::slice::from_ref(&cfg.instance), "{imp} {name}");
        }
        // Version hidden.
        match chaos_txt(server, Transport::Udp, timeout, "version.bind.") {
            Ok(txt) => assert!(
                txt.iter().all(|t| !t.chars().any(|c| c.is_ascii_digit())),
                "{imp} reveals its version: {txt:?}"
            ),
            Err(ProbeError::Rcode { .. }) => {}
            Err(e) => panic!("{imp} version.bind: {e}"),
        }
        // Authoritative only: a query below a TLD gets a referral, never recursion.
        let qname: Name<Vec<u8>> = "www.example.com.".parse().unwrap();
        let m = query(server, Transport::Udp, timeout, &qname, Rtype::A, Class::IN)
            .unwrap()
            .message;
        assert!(!m.header().ra(), "{imp} offers recursion");
        assert!(!m.header().aa(), "{imp} claims authority below the root");
        assert_eq!(m.header_counts().ancount(), 0);
        assert!(m.header_counts().nscount() > 0, "{imp}: no referral");
    }
    d.ensure_running().unwrap();
}

#[test]
fn nsd_serves_the_root_zone() {
    serve_and_probe(DnsImpl::Nsd, NSD);
}

#[test]
fn knot_serves_the_root_zone() {
    serve_and_probe(DnsImpl::Knot, KNOTD);
}

#[test]
fn rate_limited_configs_pass_the_daemons_own_checks() {
    for (imp, checker) in [
        (DnsImpl::Nsd, "/usr/sbin/nsd-checkconf"),
        (DnsImpl::Knot, "/usr/sbin/knotc"),
    ] {
        if !require("rate_limited_configs", false, &[checker]) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let site = imrs_config::site::load(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/sites/lab.toml"),
        )
        .unwrap();
        let hw = Hardware {
            cpus: 8,
            memory_mib: 16384,
        };
        let mut cfg = DnsConfig::for_site(imp, &site, &hw, "/nonexistent/root.zone", dir.path());
        cfg.rate_limit = Some(dns::RateLimit {
            responses_per_second: 200,
            slip: 2,
            ipv4_prefix_length: 24,
            ipv6_prefix_length: 56,
        });
        cfg.write().unwrap();
        cfg.check().unwrap_or_else(|e| panic!("{imp}: {e}"));
        // And a broken one is refused by the same check.
        std::fs::write(cfg.config_path(), "server:\n    no-such-option: 1\n").unwrap();
        assert!(cfg.check().is_err(), "{imp} checker accepts garbage");
    }
}

/// NSD writes dnstap to the RSSAC002 collector's socket (issue 16): every authoritative query
/// and response, over UDP and TCP, IPv4 and IPv6, is counted with its size, its response code
/// and its source, exactly.
#[test]
fn nsd_writes_dnstap_that_the_rssac002_collector_counts() {
    dnstap_counted(DnsImpl::Nsd, &[NSD]);
}

/// The same with Knot and its `mod-dnstap` (knot-module-dnstap).
#[test]
fn knot_writes_dnstap_that_the_rssac002_collector_counts() {
    dnstap_counted(DnsImpl::Knot, &[KNOTD, KNOT_DNSTAP]);
}

fn dnstap_counted(imp: DnsImpl, needs: &[&str]) {
    use imrs_config::rssac002::DayMetrics;
    use imrs_init::telemetry::day_of;
    let test = format!("serving_dns_dnstap_{imp}");
    let zone_new = testdata("root.zone.2026073102");
    let zone_s = zone_new.to_string_lossy().into_owned();
    let mut needs = needs.to_vec();
    needs.push(&zone_s);
    if !require(&test, false, &needs) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let zone = dir.path().join("root.zone");
    replace_atomically(&zone_new, &zone);
    let sock = dir.path().join("dnstap.sock");
    let collector = imrs_tests::collector::start(&sock, [5; 32]);
    let cfg = loopback_config(imp, &zone, dir.path(), Some(sock.clone()));
    let port = cfg.port;
    cfg.check().unwrap();
    let (bin, args) = cfg.command();
    let mut d = Daemon::spawn(
        &test,
        std::process::Command::new(&bin).args(&args),
        &dir.path().join("daemon.log"),
    )
    .unwrap();
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    let ready = wait_for(Duration::from_secs(60), POLL, || {
        Probe::new(v4, Transport::Udp, Some(SERIAL)).run().ok()
    });
    if ready.is_none() {
        d.ensure_running().unwrap();
        panic!("{imp} never became ready:\n{}", d.log());
    }
    // The readiness probes' frames settle first; what follows is counted from there.
    let today = || day_of(jiff::Timestamp::now().as_second());
    let base_count = imrs_tests::collector::settled(&collector, 2);
    let base = collector.day(today());

    let soa = |server, transport| {
        Probe::new(server, transport, Some(SERIAL))
            .run()
            .unwrap_or_else(|e| panic!("{server} {transport:?}: {e:?}"));
    };
    for _ in 0..5 {
        soa(v4, Transport::Udp);
    }
    for _ in 0..3 {
        soa(v6, Transport::Udp);
    }
    for _ in 0..2 {
        soa(v4, Transport::Tcp);
    }
    soa(v6, Transport::Tcp);
    let nx: Name<Vec<u8>> = "no-such-tld-imrs-test.".parse().unwrap();
    let mut nx_sizes = Vec::new();
    for _ in 0..2 {
        let r = query(
            v4,
            Transport::Udp,
            Duration::from_secs(2),
            &nx,
            Rtype::A,
            Class::IN,
        )
        .unwrap();
        assert_eq!(r.message.header().rcode(), Rcode::NXDOMAIN);
        nx_sizes.push(r.message.as_slice().len());
    }
    let sent = 13u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while collector.stats().counted < base_count + 2 * sent && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    // Nothing more comes.
    std::thread::sleep(Duration::from_secs(2));
    let st = collector.stats();
    assert_eq!(
        (st.counted - base_count, st.bad_payloads, st.bad_connections),
        (2 * sent, 0, 0),
        "{st:?}\n{}",
        d.log()
    );
    let now = collector.day(today());
    let delta = |a: [u64; 2], b: [u64; 2]| [a[0] - b[0], a[1] - b[1]];
    assert_eq!(delta(now.udp_queries, base.udp_queries), [7, 3]);
    assert_eq!(delta(now.tcp_queries, base.tcp_queries), [2, 1]);
    assert_eq!(delta(now.udp_responses, base.udp_responses), [7, 3]);
    assert_eq!(delta(now.tcp_responses, base.tcp_responses), [2, 1]);
    let rc = |m: &DayMetrics, c: u16| m.rcodes.get(&c).copied().unwrap_or(0);
    assert_eq!(rc(&now, 3) - rc(&base, 3), 2);
    assert_eq!(rc(&now, 0) - rc(&base, 0), 11);
    // The NXDOMAIN responses' sizes are in their bin (sizes as sent, without TCP's prefix).
    let bin = imrs_config::rssac002::bin_of(nx_sizes[0], imrs_config::rssac002::RESPONSE_OPEN);
    let in_bin = |m: &DayMetrics| m.udp_response_sizes.get(&bin).copied().unwrap_or(0);
    assert!(in_bin(&now) >= in_bin(&base) + 2, "bin {bin}");
    assert_eq!(now.sources_v4.count(), 1, "127.0.0.1 only");
    assert_eq!(now.sources_v6.count(), 1, "::1 only");
    d.ensure_running().unwrap();
}
