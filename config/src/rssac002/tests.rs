//! The metrics against hand-counted traffic and the published documents' layout.

use super::*;

fn day() -> jiff::civil::Date {
    jiff::civil::date(2025, 7, 1)
}

fn key() -> SourceKey {
    SourceKey::new([7; 32])
}

#[test]
fn sizes_fall_into_sixteen_byte_bins_with_open_ends() {
    assert_eq!(bin_of(0, REQUEST_OPEN), 0);
    assert_eq!(bin_of(15, REQUEST_OPEN), 0);
    assert_eq!(bin_of(16, REQUEST_OPEN), 16);
    assert_eq!(bin_of(287, REQUEST_OPEN), 272);
    assert_eq!(bin_of(288, REQUEST_OPEN), 288);
    assert_eq!(bin_of(65535, REQUEST_OPEN), 288);
    assert_eq!(bin_of(4095, RESPONSE_OPEN), 4080);
    assert_eq!(bin_of(4096, RESPONSE_OPEN), 4096);
}

#[test]
fn a_days_traffic_renders_in_the_published_layout() {
    let k = key();
    let mut m = DayMetrics::default();
    let v4: IpAddr = "192.0.2.1".parse().unwrap();
    let v4b: IpAddr = "192.0.2.2".parse().unwrap();
    let v6: IpAddr = "2001:db8:1::1".parse().unwrap();
    let v6b: IpAddr = "2001:db8:1::2".parse().unwrap();
    let v6c: IpAddr = "2001:db8:2::1".parse().unwrap();
    m.query(Transport::Udp, v4, 40, &k);
    m.query(Transport::Udp, v4, 300, &k);
    m.query(Transport::Udp, v4b, 47, &k);
    m.query(Transport::Tcp, v6, 16, &k);
    m.query(Transport::Udp, v6b, 60, &k);
    m.query(Transport::Udp, v6c, 60, &k);
    m.response(Transport::Udp, v4, 1100, 0);
    m.response(Transport::Udp, v4b, 5000, 3);
    m.response(Transport::Tcp, v6, 700, 0);
    m.response(Transport::Udp, v6b, 30, 5);
    m.load_time.insert(2025070100, vec![160]);
    let vol = render(Metric::TrafficVolume, day(), &m);
    assert_eq!(
        vol,
        "---\nversion: rssac002v5\nservice: l.root-servers.net\nstart-period: \
         2025-07-01T00:00:00Z\nmetric: traffic-volume\n\
         dns-udp-queries-received-ipv4: 3\ndns-udp-queries-received-ipv6: 2\n\
         dns-tcp-queries-received-ipv6: 1\ndns-tcp-queries-received-ipv4: 0\n\
         dns-udp-responses-sent-ipv4: 2\ndns-udp-responses-sent-ipv6: 1\n\
         dns-tcp-responses-sent-ipv6: 1\ndns-tcp-responses-sent-ipv4: 0\n"
    );
    let sizes = render(Metric::TrafficSizes, day(), &m);
    assert!(
        sizes.ends_with(
            "metric: traffic-sizes\nudp-request-sizes:\n  32-47: 2\n  48-63: 2\n  288-: 1\n\
             udp-response-sizes:\n  16-31: 1\n  1088-1103: 1\n  4096-: 1\n\
             tcp-request-sizes:\n  16-31: 1\ntcp-response-sizes:\n  688-703: 1\n"
        ),
        "{sizes}"
    );
    assert!(
        render(Metric::RcodeVolume, day(), &m)
            .ends_with("metric: rcode-volume\n0: 2\n3: 1\n5: 1\n")
    );
    assert!(render(Metric::UniqueSources, day(), &m).ends_with(
        "metric: unique-sources\nnum-sources-ipv4: 2\nnum-sources-ipv6: 3\n\
             num-sources-ipv6-aggregate: 2\n"
    ));
    assert!(
        render(Metric::LoadTime, day(), &m)
            .ends_with("metric: load-time\ntime:\n  2025070100: 160\n")
    );
    assert_eq!(
        path(day(), Metric::TrafficSizes),
        "2025/07/traffic-sizes/l-root-20250701-traffic-sizes.yaml"
    );
}

#[test]
fn a_day_without_traffic_writes_empty_maps() {
    let m = DayMetrics::default();
    let sizes = render(Metric::TrafficSizes, day(), &m);
    assert!(
        sizes.ends_with(
            "udp-request-sizes: {}\nudp-response-sizes: {}\ntcp-request-sizes: {}\n\
             tcp-response-sizes: {}\n"
        ),
        "{sizes}"
    );
    assert!(render(Metric::LoadTime, day(), &m).ends_with("time: {}\n"));
    assert!(render(Metric::RcodeVolume, day(), &m).ends_with("metric: rcode-volume\n"));
    assert!(render(Metric::UniqueSources, day(), &m).contains("num-sources-ipv4: 0\n"));
}

#[test]
fn boxes_merge_counters_add_sources_unite_load_times_take_the_95th_percentile() {
    let k = key();
    let a_src: IpAddr = "192.0.2.1".parse().unwrap();
    let both: IpAddr = "192.0.2.9".parse().unwrap();
    let mut a = DayMetrics::default();
    let mut b = DayMetrics::default();
    a.query(Transport::Udp, a_src, 40, &k);
    a.query(Transport::Udp, both, 40, &k);
    b.query(Transport::Udp, both, 40, &k);
    b.response(Transport::Udp, both, 100, 0);
    a.load_time.insert(1, vec![10]);
    b.load_time.insert(1, vec![30]);
    let mut fleet = DayMetrics::default();
    fleet.merge(&a);
    fleet.merge(&b);
    assert_eq!(fleet.udp_queries, [3, 0]);
    assert_eq!(fleet.udp_request_sizes.get(&32), Some(&3));
    assert_eq!(fleet.sources_v4.count(), 2, "the shared source counts once");
    assert_eq!(load_time_p95(&fleet.load_time).get(&1), Some(&30));
    let twenty: BTreeMap<u32, Vec<u64>> = [(7, (1..=20).collect())].into();
    assert_eq!(load_time_p95(&twenty).get(&7), Some(&19));
    // What a report carries reads back the same.
    let json = serde_json::to_string(&fleet).unwrap();
    assert_eq!(serde_json::from_str::<DayMetrics>(&json).unwrap(), fleet);
}

#[test]
fn a_million_sources_stay_within_a_sketch_and_within_two_percent() {
    let k = key();
    let mut s = Sources::default();
    let mut half = Sources::default();
    for i in 0u32..1_000_000 {
        let h = k.hash(4, &i.to_be_bytes());
        s.insert(h);
        if i % 2 == 0 {
            half.insert(h);
        }
    }
    let Sources::Sketch(r) = &s else {
        panic!("a million sources are a sketch")
    };
    assert_eq!(r.len(), 16 << 10, "16 KiB whatever the traffic");
    let n = s.count() as f64;
    assert!((n - 1e6).abs() / 1e6 < 0.02, "estimate {n}");
    // Exact while small; the union of overlapping halves is the whole.
    let mut small = Sources::default();
    for i in 0u32..1000 {
        small.insert(k.hash(4, &i.to_be_bytes()));
    }
    assert_eq!(small.count(), 1000);
    let mut u = half.clone();
    u.merge(&s);
    assert_eq!(u, s, "half of a set adds nothing to it");
    let mut w = small.clone();
    w.merge(&s);
    assert_eq!(w, s);
    // Registers survive a report; out-of-range ones are refused.
    let json = serde_json::to_string(&s).unwrap();
    assert_eq!(serde_json::from_str::<Sources>(&json).unwrap(), s);
    let bad = json.replacen("\"data\":\"", "\"data\":\"ff", 1);
    assert!(serde_json::from_str::<Sources>(&bad).is_err());
}

#[test]
fn exact_sets_become_a_sketch_past_the_limit_and_keep_counting_closely() {
    let k = key();
    let mut s = Sources::default();
    for i in 0..=SPARSE_MAX as u32 {
        s.insert(k.hash(6, &i.to_be_bytes()));
    }
    assert!(matches!(s, Sources::Sketch(_)));
    let n = s.count() as f64;
    let want = (SPARSE_MAX + 1) as f64;
    assert!((n - want).abs() / want < 0.02, "estimate {n} for {want}");
    // Two exact sets whose union is too large for one.
    let mut a = Sources::default();
    let mut b = Sources::default();
    for i in 0..SPARSE_MAX as u32 {
        a.insert(k.hash(6, &i.to_be_bytes()));
        b.insert(k.hash(6, &(i + 1_000_000).to_be_bytes()));
    }
    a.merge(&b);
    assert!(matches!(a, Sources::Sketch(_)));
    let n = a.count() as f64;
    let want = 2.0 * SPARSE_MAX as f64;
    assert!((n - want).abs() / want < 0.02, "estimate {n} for {want}");
}

/// The largest day a box can report fits a report body (the receiver takes 1 MiB): exact sets
/// at their limit, every size bin, every extended response code.
#[test]
fn the_largest_day_fits_a_report() {
    let mut m = DayMetrics::default();
    let k = key();
    for s in [&mut m.sources_v4, &mut m.sources_v6, &mut m.sources_v6_64] {
        for i in 0..SPARSE_MAX as u32 {
            s.insert(k.hash(4, &i.to_be_bytes()) | (1 << 63));
        }
        assert!(matches!(s, Sources::Exact(_)));
    }
    for size in (0..5000).step_by(16) {
        for h in [
            &mut m.udp_request_sizes,
            &mut m.udp_response_sizes,
            &mut m.tcp_request_sizes,
            &mut m.tcp_response_sizes,
        ] {
            h.insert(bin_of(size, RESPONSE_OPEN), u64::MAX / 2);
        }
    }
    for code in 0..4096u16 {
        m.rcodes.insert(code, u64::MAX / 2);
    }
    let len = serde_json::to_vec(&m).unwrap().len();
    assert!(len < 512 << 10, "{len} bytes");
    // Counters a device claims cannot overflow a fleet's sum.
    let mut fleet = m.clone();
    fleet.merge(&m);
    fleet.merge(&m);
    assert_eq!(fleet.rcodes[&0], u64::MAX);
}
