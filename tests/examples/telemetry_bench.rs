//! The RSSAC002 collector for the benchmarks (`bench/dns-qps.sh`, `bench/rssac002.sh`):
//!
//! - `telemetry_bench collect SOCKET`: runs the collector (`imrs_init::telemetry::Collector`)
//!   on SOCKET until standard input closes, then prints one line: frames, payloads counted,
//!   bad payloads, the collector's CPU seconds (user + system, from /proc/self/stat) and CPU
//!   milliseconds per 100,000 queries.
//! - `telemetry_bench discard SOCKET`: the same reader (Frame Streams handshake and frames)
//!   without counting anything: what dnstap costs the daemon and the transport alone.
//! - `telemetry_bench sources N`: counts N distinct IPv4 and IPv6 sources (in N distinct /64s)
//!   into one day's metrics and prints the resident memory they took, the size of the day in
//!   a `telemetry` report (JSON) and the counts with their error.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::Bytes;
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

/// Frame Streams without counting: handshake, then frames read and dropped.
fn discard(socket: &str) {
    use imrs_init::telemetry::framestream::{self, Control, Decoder, Frame};
    use std::io::Write;
    let _ = std::fs::remove_file(socket);
    let listener = std::os::unix::net::UnixListener::bind(socket).expect("bind the socket");
    let frames = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = frames.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let counter = counter.clone();
            std::thread::spawn(move || {
                let mut dec = Decoder::default();
                let mut buf = vec![0u8; 64 << 10];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    dec.push(&buf[..n]);
                    while let Ok(Some(f)) = dec.next_frame() {
                        match f {
                            Frame::Control(Control::Ready, _) => {
                                let _ = s.write_all(&framestream::control(
                                    Control::Accept,
                                    Some(framestream::DNSTAP),
                                ));
                            }
                            Frame::Control(Control::Stop, _) => {
                                let _ = s.write_all(&framestream::control(Control::Finish, None));
                                return;
                            }
                            Frame::Data(_) => {
                                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            Frame::Control(..) => {}
                        }
                    }
                }
            });
        }
    });
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    let n = frames.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "frames {n} counted {n} (read, not decoded) cpu_s {:.3}",
        cpu_seconds()
    );
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

/// A root referral's shape: `com. NS` answered with 13 NS in authority and 26 glue records
/// plus OPT in additional.
fn referral() -> Vec<u8> {
    use domain::base::iana::{Class, Rtype};
    use domain::base::{MessageBuilder, Name, Ttl};
    use domain::rdata::{A, Aaaa, Ns};
    let com: Name<Vec<u8>> = "com.".parse().expect("name");
    let mut b = MessageBuilder::new_vec();
    b.header_mut().set_qr(true);
    let mut q = b.question();
    q.push((&com, Rtype::NS, Class::IN)).expect("question");
    let mut auth = q.authority();
    let servers: Vec<Name<Vec<u8>>> = (b'a'..=b'm')
        .map(|c| {
            format!("{}.gtld-servers.net.", c as char)
                .parse()
                .expect("name")
        })
        .collect();
    for s in &servers {
        auth.push((&com, Class::IN, Ttl::from_secs(172800), Ns::new(s.clone())))
            .expect("ns");
    }
    let mut add = auth.additional();
    for (i, s) in servers.iter().enumerate() {
        add.push((
            s,
            Class::IN,
            Ttl::from_secs(172800),
            A::new(Ipv4Addr::new(192, 5, 6, i as u8)),
        ))
        .expect("a");
        add.push((
            s,
            Class::IN,
            Ttl::from_secs(172800),
            Aaaa::new(Ipv6Addr::new(0x2001, 0x503, i as u16, 0, 0, 0, 2, 0x30)),
        ))
        .expect("aaaa");
    }
    add.opt(|o| {
        o.set_udp_payload_size(1232);
        Ok(())
    })
    .expect("opt");
    add.finish()
}

/// Time per payload through the collector (decode, count), and its parts, over `n` query and
/// response pairs from `n` distinct sources.
fn payloads(n: u64) {
    use imrs_init::telemetry::dnstap::{self, AUTH_QUERY, AUTH_RESPONSE, Dnstap, MESSAGE, Message};
    let response = referral();
    let query = {
        let b = domain::base::MessageBuilder::new_vec();
        let com: domain::base::Name<Vec<u8>> = "com.".parse().expect("name");
        let mut q = b.question();
        q.push((
            &com,
            domain::base::iana::Rtype::NS,
            domain::base::iana::Class::IN,
        ))
        .expect("question");
        let mut add = q.additional();
        add.opt(|o| {
            o.set_udp_payload_size(1232);
            Ok(())
        })
        .expect("opt");
        add.finish()
    };
    let now = jiff::Timestamp::now().as_second() as u64;
    let frame = |kind: i32, i: u64| {
        let mut m = Message {
            kind,
            socket_family: Some(1),
            socket_protocol: Some(1),
            query_address: Some(Bytes::copy_from_slice(
                &(0x0b00_0000u32 + i as u32).to_be_bytes(),
            )),
            response_address: Some(Bytes::from_static(&[198, 51, 100, 42])),
            query_time_sec: Some(now),
            ..Default::default()
        };
        if kind == AUTH_QUERY {
            m.query_message = Some(Bytes::from(query.clone()));
        } else {
            m.response_time_sec = Some(now);
            m.response_message = Some(Bytes::from(response.clone()));
        }
        prost::Message::encode_to_vec(&Dnstap {
            identity: Some(Bytes::from_static(b"lab-01.l.root-servers.test")),
            version: Some(Bytes::from_static(b"NSD 4.6.1")),
            message: Some(m),
            kind: MESSAGE,
        })
    };
    let frames: Vec<Bytes> = (0..n)
        .flat_map(|i| [frame(AUTH_QUERY, i), frame(AUTH_RESPONSE, i)])
        .map(Bytes::from)
        .collect();
    let per = |t: std::time::Duration| t.as_nanos() as f64 / frames.len() as f64;
    let c = Collector::new(SourceKey::new([7; 32]));
    let t = std::time::Instant::now();
    for f in &frames {
        c.payload(f.clone(), now as i64);
    }
    let whole = per(t.elapsed());
    let t = std::time::Instant::now();
    for f in &frames {
        std::hint::black_box(dnstap::decode(f.clone()).ok());
    }
    let decode = per(t.elapsed());
    let t = std::time::Instant::now();
    for _ in &frames {
        std::hint::black_box(dnstap::rcode(&response));
    }
    let rcode = per(t.elapsed());
    let key = SourceKey::new([7; 32]);
    let t = std::time::Instant::now();
    for i in 0..(frames.len() as u32) {
        std::hint::black_box(key.hash(4, &i.to_be_bytes()));
    }
    let hash = per(t.elapsed());
    let t = std::time::Instant::now();
    for i in 0..frames.len() as i64 {
        std::hint::black_box(imrs_init::telemetry::day_of(now as i64 + i % 7));
    }
    let day = per(t.elapsed());
    println!(
        "payloads {}: {whole:.0} ns each through the collector; parts (each over every payload): decode {decode:.0} ns, response code {rcode:.0} ns, source hash {hash:.0} ns, UTC day {day:.0} ns; response {} bytes",
        frames.len(),
        response.len()
    );
    assert_eq!(c.stats().counted, frames.len() as u64);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("collect") if args.len() == 3 => collect(&args[2]),
        Some("discard") if args.len() == 3 => discard(&args[2]),
        Some("sources") if args.len() == 3 => sources(args[2].parse().expect("a number")),
        Some("payloads") if args.len() == 3 => payloads(args[2].parse().expect("a number")),
        _ => {
            eprintln!("usage: telemetry_bench collect SOCKET | telemetry_bench sources N");
            std::process::exit(2);
        }
    }
}
