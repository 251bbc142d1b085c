//! The RSSAC002 collector for the benchmarks (`bench/dns-qps.sh`, `bench/rssac002.sh`):
//!
//! - `telemetry_bench collect SOCKET`: runs the collector (`imrs_init::telemetry::Collector`)
//!   on SOCKET until standard input closes, then prints one line: frames, payloads counted,
//!   bad payloads, the collector's CPU seconds (user + system, from /proc/self/stat) and CPU
//!   milliseconds per 100,000 queries.
//! - `telemetry_bench sources N`: counts N distinct IPv4 and IPv6 sources (in N distinct /64s)
//!   into one day's metrics and prints the resident memory they took, the size of the day in
//!   a `telemetry` report (JSON) and the counts with their error.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use imrs_config::rssac002::{DayMetrics, SourceKey, Transport};
use imrs_init::telemetry::Collector;

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime and stime are 14 and 15.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn collect(socket: &str) {
    let c = Collector::new(SourceKey::new([7; 32]));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _ = std::fs::remove_file(socket);
    let listener = {
        let _g = rt.enter();
        tokio::net::UnixListener::bind(socket).expect("bind the socket")
    };
    rt.spawn(c.clone().serve(listener));
    // Serve until standard input closes.
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        std::process::exit(report(&c));
    });
    rt.block_on(std::future::pending::<()>());
}

fn report(c: &Collector) -> i32 {
    let st = c.stats();
    let cpu = cpu_seconds();
    let queries = st.counted / 2;
    println!(
        "frames {} counted {} bad {} late {} connections {} cpu_s {cpu:.3} cpu_ms_per_100k_queries {:.1}",
        st.frames,
        st.counted,
        st.bad_payloads,
        st.late,
        st.connections,
        if queries > 0 {
            cpu * 1000.0 * 100_000.0 / queries as f64
        } else {
            0.0
        }
    );
    0
}

fn sources(n: u64) {
    let key = SourceKey::new([7; 32]);
    let mut m = DayMetrics::default();
    let before = resident_kib();
    let t = std::time::Instant::now();
    for i in 0..n {
        let v4 = IpAddr::V4(Ipv4Addr::from(0x0b00_0000u32 + i as u32));
        let v6 = IpAddr::V6(Ipv6Addr::from(
            (0x2001_0db8u128 << 96) | (u128::from(i) << 64) | 1,
        ));
        m.query(Transport::Udp, v4, 40, &key);
        m.query(Transport::Udp, v6, 40, &key);
    }
    let took = t.elapsed();
    let after = resident_kib();
    let json = serde_json::to_vec(&m).expect("serialize");
    let err = |c: u64| (c as f64 - n as f64) / n as f64 * 100.0;
    println!(
        "sources {n}: counted v4 {} ({:+.2}%) v6 {} ({:+.2}%) v6/64 {} ({:+.2}%); resident +{} KiB; report JSON {} KiB; {:.0} ns per query",
        m.sources_v4.count(),
        err(m.sources_v4.count()),
        m.sources_v6.count(),
        err(m.sources_v6.count()),
        m.sources_v6_64.count(),
        err(m.sources_v6_64.count()),
        after.saturating_sub(before),
        json.len() / 1024,
        took.as_nanos() as f64 / (2 * n) as f64
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("collect") if args.len() == 3 => collect(&args[2]),
        Some("sources") if args.len() == 3 => sources(args[2].parse().expect("a number")),
        _ => {
            eprintln!("usage: telemetry_bench collect SOCKET | telemetry_bench sources N");
            std::process::exit(2);
        }
    }
}
