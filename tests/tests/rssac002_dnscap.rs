//! RSSAC002 metrics checked against an independent collector (issue 16): NSD, and separately
//! Knot, serve the real root zone in a network namespace and write dnstap to our collector;
//! DNS-OARC's `dnscap` with its `rssm` plugin captures the same traffic on the wire. Traffic:
//! dnsperf over UDP and TCP, IPv4 and IPv6, from several source addresses (two IPv6 /64s),
//! plus crafted queries for the response codes a root server gives (NOERROR, NXDOMAIN,
//! FORMERR, NOTIMP, REFUSED, BADVERS) and requests across the 288-byte edge of RSSAC002's
//! open-ended request bin, over UDP and TCP. For every metric both compute (traffic-volume,
//! traffic-sizes, rcode-volume, unique-sources) our document must equal dnscap's.
//!
//! Where they could differ, and why they do not here: dnscap bins sizes to 64 KiB while
//! RSSAC002 ends the request bins at 288 and the response bins at 4096, so dnscap's bins are
//! folded the same way first; dnstap is dropped by the daemon under overload (the rate here is
//! far below it: the collector's own count of dropped frames stays 0); dnscap counts every DNS
//! message on the interface, dnstap only those the daemon handled (every query here is
//! answered, which the test checks); RSSAC002's load-time is ours alone.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use imrs_config::recipe::DnsImpl;
use imrs_config::rssac002::{self, DayMetrics, Metric};
use imrs_init::dns::probe::{Probe, Transport};
use imrs_init::dns::{DnsConfig, Hardware};
use imrs_init::telemetry::day_of;
use imrs_tests::collector::{self, settled};
use imrs_tests::daemons::{DNSCAP, DNSPERF, Daemon, KNOT_DNSTAP, KNOTD, NSD, POLL, RSSM, wait_for};
use imrs_tests::netns::{NetNs, appliance_and_host, require};

const SERIAL: u32 = 2026073102;
const SERVER_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10);
/// Extra client addresses on the host's side: a second IPv4 source, a second IPv6 source in
/// the same /64, and one in another /64 (routed back by a host route on the server's side).
const HOST_EXTRA: [&str; 3] = ["192.0.2.2/24", "2001:db8:1::2/64", "2001:db8:2::5/64"];
const OTHER_64: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 5);

#[test]
fn nsd_rssac002_equals_dnscap() {
    compare(DnsImpl::Nsd, &[NSD]);
}

#[test]
fn knot_rssac002_equals_dnscap() {
    compare(DnsImpl::Knot, &[KNOTD, KNOT_DNSTAP]);
}

fn zone() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/rootzone/root.zone.2026073102")
}

/// `now` minus `base` for everything that adds up (sources stay `now`'s: a union).
fn minus(now: &DayMetrics, base: &DayMetrics) -> DayMetrics {
    let mut d = now.clone();
    let sub2 = |a: &mut [u64; 2], b: &[u64; 2]| {
        a[0] -= b[0];
        a[1] -= b[1];
    };
    sub2(&mut d.udp_queries, &base.udp_queries);
    sub2(&mut d.tcp_queries, &base.tcp_queries);
    sub2(&mut d.udp_responses, &base.udp_responses);
    sub2(&mut d.tcp_responses, &base.tcp_responses);
    for (h, b) in [
        (&mut d.udp_request_sizes, &base.udp_request_sizes),
        (&mut d.udp_response_sizes, &base.udp_response_sizes),
        (&mut d.tcp_request_sizes, &base.tcp_request_sizes),
        (&mut d.tcp_response_sizes, &base.tcp_response_sizes),
    ] {
        for (bin, n) in b {
            *h.get_mut(bin).unwrap() -= n;
        }
        h.retain(|_, n| *n > 0);
    }
    for (code, n) in &base.rcodes {
        *d.rcodes.get_mut(code).unwrap() -= n;
    }
    d.rcodes.retain(|_, n| *n > 0);
    d
}

/// The YAML documents in `text` as metric -> key -> value (a nested key is `section/key`;
/// the headers are left out). Size bins from `lo` up are folded into RSSAC002's open-ended
/// bins (`288-` for requests, `4096-` for responses), as dnscap does not end them.
fn parse(text: &str) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut out: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let (mut metric, mut section) = (String::new(), String::new());
    for line in text.lines() {
        if line == "---" || line.trim().is_empty() {
            continue;
        }
        let (k, v) = line.split_once(':').unwrap_or((line, ""));
        let v = v.trim();
        if !line.starts_with(' ') {
            match k {
                "version" | "service" | "start-period" => continue,
                "metric" => {
                    metric = v.to_string();
                    out.entry(metric.clone()).or_default();
                    continue;
                }
                _ => {}
            }
            section = k.to_string();
            if let Ok(n) = v.parse() {
                out.entry(metric.clone())
                    .or_default()
                    .insert(k.to_string(), n);
            }
            continue;
        }
        if metric.starts_with("dnscap-") {
            // dnscap's own listings (sources by address): not RSSAC002.
            continue;
        }
        let (k, v) = line.rsplit_once(':').unwrap_or((line, ""));
        let v = v.trim();
        let key = k.trim();
        let n: u64 = v
            .parse()
            .unwrap_or_else(|_| panic!("not a count: {line:?}"));
        let open = if section.contains("request") {
            288
        } else {
            4096
        };
        let folded = match key.split_once('-') {
            Some((lo, _)) if lo.parse::<u32>().is_ok_and(|lo| lo >= open) => format!("{open}-"),
            _ => key.to_string(),
        };
        *out.entry(metric.clone())
            .or_default()
            .entry(format!("{section}/{folded}"))
            .or_default() += n;
    }
    out
}

/// A query in wire format: opcode `opcode`, and `edns` OPT records of EDNS `version` (more
/// than one is a format error), the first padded (option 12) to make the message `size`
/// bytes when it is bigger than the query without padding.
fn query(
    opcode: u8,
    name: &str,
    qtype: u16,
    qclass: u16,
    edns: u16,
    version: u8,
    size: usize,
) -> Vec<u8> {
    let mut q = Vec::new();
    q.extend_from_slice(&0x4242u16.to_be_bytes());
    q.push(opcode << 3);
    q.push(0);
    q.extend_from_slice(&[0, 1, 0, 0, 0, 0]);
    q.extend_from_slice(&edns.to_be_bytes());
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&qclass.to_be_bytes());
    for i in 0..edns {
        // OPT: root owner, type 41, class = UDP size, TTL = ext rcode, version, flags.
        let base = q.len() + 11;
        q.push(0);
        q.extend_from_slice(&41u16.to_be_bytes());
        q.extend_from_slice(&1232u16.to_be_bytes());
        q.extend_from_slice(&[0, version, 0, 0]);
        if i == 0 && size > base + 4 {
            let pad = size - (base + 4);
            q.extend_from_slice(&((pad + 4) as u16).to_be_bytes());
            q.extend_from_slice(&12u16.to_be_bytes());
            q.extend_from_slice(&(pad as u16).to_be_bytes());
            q.extend(std::iter::repeat_n(0u8, pad));
        } else {
            q.extend_from_slice(&0u16.to_be_bytes());
        }
    }
    q
}

/// Sends `wire` from `from` (UDP; over TCP the kernel picks the source) to the server (port
/// 53) and returns the response's rcode with the extended bits, failing the test when no
/// answer comes.
fn ask(from: IpAddr, tcp: bool, wire: &[u8]) -> u16 {
    let server: SocketAddr = match from {
        IpAddr::V4(_) => (SERVER_V4, 53).into(),
        IpAddr::V6(_) => (SERVER_V6, 53).into(),
    };
    let resp = if tcp {
        // Over TCP the kernel picks the source (the first address of its family here).
        let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(2)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut framed = (wire.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(wire);
        s.write_all(&framed).unwrap();
        let mut len = [0u8; 2];
        s.read_exact(&mut len)
            .unwrap_or_else(|e| panic!("no TCP answer from {server}: {e}"));
        let mut r = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut r).unwrap();
        r
    } else {
        let s = UdpSocket::bind(SocketAddr::new(from, 0)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.send_to(wire, server).unwrap();
        let mut buf = [0u8; 65535];
        let (n, _) = s
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("no UDP answer from {server}: {e}"));
        buf[..n].to_vec()
    };
    imrs_init::telemetry::dnstap::rcode(&resp).expect("a DNS response")
}

/// One crafted query and the response code it got.
#[derive(Debug)]
struct Crafted {
    rcode: u16,
    size: usize,
    tcp: bool,
    v6: bool,
}

/// The crafted queries, from `from`: every rcode a root server gives and requests across the
/// 288-byte edge; returns the rcodes seen.
fn crafted(from: IpAddr) -> Vec<Crafted> {
    let (a, soa, txt, any, in_, ch) = (1, 6, 16, 255, 1, 3);
    let mut seen = Vec::new();
    for tcp in [false, true] {
        let mut go = |w: Vec<u8>| {
            seen.push(Crafted {
                rcode: ask(from, tcp, &w),
                size: w.len(),
                tcp,
                v6: from.is_ipv6(),
            })
        };
        go(query(0, ".", soa, in_, 0, 0, 0));
        go(query(0, "no-such-tld-imrs-test.", a, in_, 1, 0, 0));
        go(query(0, ".", soa, in_, 2, 0, 0)); // two OPT records: FORMERR
        go(query(5, ".", soa, in_, 0, 0, 0)); // UPDATE: NOTIMP or REFUSED
        go(query(0, "version.bind.", txt, ch, 0, 0, 0)); // hidden version
        go(query(0, ".", soa, in_, 1, 1, 0)); // EDNS version 1: BADVERS
        for size in [287, 288, 289, 300, 511] {
            go(query(0, "com.", a, in_, 1, 0, size));
        }
        if tcp {
            go(query(0, ".", any, in_, 1, 0, 0));
        }
    }
    seen
}

/// Runs dnsperf in `ns` against `server` from `local`, sending each line of `queries` `n`
/// times; extra arguments (`-m tcp`, `-D`).
fn dnsperf(
    ns: &NetNs,
    server: IpAddr,
    local: Option<IpAddr>,
    queries: &Path,
    n: u32,
    extra: &[&str],
) {
    let mut args = vec![
        "-s".to_string(),
        server.to_string(),
        "-d".into(),
        queries.display().to_string(),
        "-n".into(),
        n.to_string(),
        "-t".into(),
        "2".into(),
        "-q".into(),
        "20".into(),
        // A steady rate: in bursts, NSD's dnstap queue and the capture both drop messages.
        "-Q".into(),
        "400".into(),
    ];
    if let Some(l) = local {
        args.push("-a".into());
        args.push(l.to_string());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = ns.exec(DNSPERF, &refs).unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "dnsperf {args:?}: {out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let lost = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Queries lost:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok());
    assert_eq!(lost, Some(0), "dnsperf {args:?} lost queries:\n{out}");
}

/// The files in `dir` whose names start with `prefix`.
fn files_starting(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .collect()
}

/// Knot's dnstap module logs a query only once Knot has parsed it and handed it to its
/// modules: a query it answers at parse time with FORMERR or BADVERS is not in its dnstap
/// (the response is). dnscap counts those queries on the wire; they are taken out of its
/// counts here, each from its transport's and family's query count and request-size bin.
/// (With Knot, RSSAC002's queries-received leaves out such malformed queries; noted in
/// docs/facts.md.)
fn knot_unlogged_queries(
    theirs: &mut BTreeMap<String, BTreeMap<String, u64>>,
    crafted: &[Crafted],
) {
    for c in crafted.iter().filter(|c| c.rcode == 1 || c.rcode == 16) {
        let (proto, fam) = (if c.tcp { "tcp" } else { "udp" }, if c.v6 { 6 } else { 4 });
        let lo = c.size / 16 * 16;
        let bin = if lo >= 288 {
            "288-".to_string()
        } else {
            format!("{lo}-{}", lo + 15)
        };
        for (metric, key) in [
            (
                "traffic-volume",
                format!("dns-{proto}-queries-received-ipv{fam}"),
            ),
            ("traffic-sizes", format!("{proto}-request-sizes/{bin}")),
        ] {
            let m = theirs.entry(metric.into()).or_default();
            let n = m
                .get_mut(&key)
                .unwrap_or_else(|| panic!("dnscap has no {key}"));
            *n -= 1;
            if *n == 0 && metric == "traffic-sizes" {
                m.remove(&key);
            }
        }
    }
}

/// One comparison at a time: both daemons would share the machine's two cores.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn compare(imp: DnsImpl, needs: &[&str]) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let test = format!("rssac002_dnscap_{imp}");
    let zone_src = zone();
    let zone_s = zone_src.to_string_lossy().into_owned();
    let mut needs = needs.to_vec();
    needs.extend([DNSCAP, RSSM, DNSPERF, zone_s.as_str()]);
    if !require(&test, true, &needs) {
        return;
    }
    // Kept when the test fails (the capture and both daemons' logs are the evidence); removed
    // at the end of a passing run.
    let dir = tempfile::Builder::new()
        .prefix(&format!("{test}-"))
        .disable_cleanup(true)
        .tempdir()
        .unwrap();
    eprintln!(
        "{imp}: capture, logs and counts in {}",
        dir.path().display()
    );
    let zone = dir.path().join("root.zone");
    std::fs::copy(&zone_src, &zone).unwrap();
    let (appl, host) = appliance_and_host(&format!("rs{}", &imp.to_string()[..1]), &HOST_EXTRA);
    appl.add_route(OTHER_64.into(), "2001:db8:1::1".parse().unwrap(), "eth0")
        .unwrap();

    let sock = dir.path().join("dnstap.sock");
    let c = collector::start(&sock, [9; 32]);
    let site = imrs_config::site::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/sites/lab.toml"),
    )
    .unwrap();
    let mut cfg = DnsConfig::for_site(
        imp,
        &site,
        &Hardware::detect(Path::new("/proc")),
        &zone,
        dir.path().join("run"),
    );
    cfg.listen = vec![SERVER_V4.into(), SERVER_V6.into()];
    cfg.port = 53;
    cfg.workers = 2;
    cfg.rate_limit = None;
    cfg.dnstap = Some(sock);
    cfg.write().unwrap();
    cfg.check().unwrap();
    let (bin, args) = cfg.command();
    let mut daemon = Daemon::spawn(
        &test,
        &mut appl.wrap(std::process::Command::new(&bin).args(&args)),
        &dir.path().join("daemon.log"),
    )
    .unwrap();
    let v4 = SocketAddr::from((SERVER_V4, 53));
    let ready = wait_for(Duration::from_secs(60), POLL, || {
        host.run_inside(|| Probe::new(v4, Transport::Udp, Some(SERIAL)).run().ok())
            .unwrap()
    });
    if ready.is_none() {
        daemon.ensure_running().unwrap();
        panic!("{imp} never became ready:\n{}", daemon.log());
    }
    let today = || day_of(jiff::Timestamp::now().as_second());
    let base_count = settled(&c, 2);
    let base = c.day(today());

    // dnscap captures on the server's interface from here on; its rssm plugin reads the
    // capture afterwards (run live, the plugin loses packets under dnsperf's bursts: a third
    // to two thirds of them here; from the capture file it sees every one). With libpcap's
    // default buffer the capture itself lost a few milliseconds of packets when the machine
    // was busy (CI, tests in parallel: ten TCP queries gone in one run); 64 MiB holds the
    // whole exchange, and `-S` reports the kernel's drop count, which must stay 0.
    let capture = dir.path().join("capture");
    let mut dnscap = Daemon::spawn(
        &format!("{test}_dnscap"),
        &mut appl.wrap(
            std::process::Command::new(DNSCAP)
                .args(["-N", "-D", "-T", "-S", "-m", "qun", "-i", "eth0"])
                .args(["-o", "pcap_buffer_size=67108864", "-w"])
                .arg(&capture),
        ),
        &dir.path().join("dnscap.log"),
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    dnscap.ensure_running().unwrap();

    // The traffic.
    let queries = dir.path().join("queries.txt");
    let names = [
        ". SOA",
        ". NS",
        ". DNSKEY",
        "com. NS",
        "org. DS",
        "net. NS",
        "arpa. NS",
        "no-such-tld. A",
        "a.root-servers.net. A",
        "a.root-servers.net. AAAA",
        "uk. DS",
        "de. NS",
        "www.example. A",
        ". ZONEMD",
        "nl. NS",
    ];
    std::fs::write(&queries, names.join("\n") + "\n").unwrap();
    let (s4, s6): (IpAddr, IpAddr) = (SERVER_V4.into(), SERVER_V6.into());
    dnsperf(
        &host,
        s4,
        Some("192.0.2.2".parse().unwrap()),
        &queries,
        20,
        &[],
    );
    dnsperf(&host, s4, None, &queries, 5, &["-D"]);
    dnsperf(&host, s6, Some(OTHER_64.into()), &queries, 10, &["-D"]);
    dnsperf(&host, s6, None, &queries, 4, &[]);
    dnsperf(&host, s4, None, &queries, 3, &["-m", "tcp"]);
    dnsperf(
        &host,
        s6,
        Some("2001:db8:1::2".parse().unwrap()),
        &queries,
        2,
        &["-m", "tcp", "-D"],
    );
    let mut rcodes = Vec::new();
    for from in ["192.0.2.1", "2001:db8:1::2"] {
        let from: IpAddr = from.parse().unwrap();
        rcodes.extend(host.run_inside(|| crafted(from)).unwrap());
    }
    // UPDATE: NOTIMP from NSD, NOTAUTH from Knot.
    for want in [0, 1, 3, 5, 16] {
        assert!(
            rcodes.iter().any(|c| c.rcode == want),
            "{imp}: no response with rcode {want}: {rcodes:?}"
        );
    }
    settled(&c, base_count + 1);
    std::thread::sleep(Duration::from_secs(1));
    dnscap.stop(Duration::from_secs(10));
    // `-S`: "<interface>: <n> recv <n> drop <n> total ...": a capture that lost packets
    // cannot be compared with (the lost ones would show as our "extra" messages).
    let log = dnscap.log();
    let dropped = log
        .lines()
        .find_map(|l| l.strip_prefix("eth0:"))
        .and_then(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.iter()
                .position(|&x| x == "drop")
                .and_then(|i| w.get(i.checked_sub(1)?)?.parse::<u64>().ok())
        });
    assert_eq!(
        dropped,
        Some(0),
        "dnscap's capture dropped packets (or printed no counts):\n{log}"
    );
    let pcap = files_starting(dir.path(), "capture.");
    assert_eq!(
        pcap.len(),
        1,
        "dnscap's capture: {pcap:?}\n{}",
        dnscap.log()
    );
    let prefix = dir.path().join("rssm");
    let o = std::process::Command::new(DNSCAP)
        .args([
            "-N",
            "-T",
            "-m",
            "qun",
            "-o",
            "reassemble_tcp=yes",
            "-o",
            "parse_ongoing_tcp=yes",
            "-r",
        ])
        .arg(&pcap[0])
        .args(["-P", RSSM, "-w"])
        .arg(&prefix)
        .args(["-Y", "-n", "test", "-D"])
        .output()
        .unwrap();
    let counts = files_starting(dir.path(), "rssm.");
    assert!(
        o.status.success() && counts.len() == 1,
        "dnscap rssm: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let theirs = std::fs::read_to_string(&counts[0]).unwrap();
    let theirs = parse(&theirs);

    let st = c.stats();
    assert_eq!(
        (
            st.bad_payloads,
            st.bad_connections,
            st.late,
            st.dropped_days
        ),
        (0, 0, 0, 0),
        "{st:?}"
    );
    let ours = minus(&c.day(today()), &base);
    let mut text = String::new();
    for metric in [
        Metric::TrafficVolume,
        Metric::TrafficSizes,
        Metric::RcodeVolume,
        Metric::UniqueSources,
    ] {
        text.push_str(&rssac002::render(metric, today(), &ours));
    }
    let ours = parse(&text);
    let mut theirs = theirs;
    if imp == DnsImpl::Knot {
        knot_unlogged_queries(&mut theirs, &rcodes);
    }
    for metric in [
        "traffic-volume",
        "traffic-sizes",
        "rcode-volume",
        "unique-sources",
    ] {
        assert_eq!(
            ours.get(metric),
            theirs.get(metric),
            "{imp}: {metric} differs (ours, then dnscap's)"
        );
    }
    let total: u64 = ours["traffic-volume"].values().sum();
    assert!(total > 1000, "{imp}: only {total} messages counted");
    eprintln!("{imp}: {total} messages; every metric equals dnscap's\n{text}");
    daemon.ensure_running().unwrap();
    drop(dnscap);
    drop(daemon);
    std::fs::remove_dir_all(dir.path()).unwrap();
}
