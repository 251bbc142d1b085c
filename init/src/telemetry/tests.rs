//! The collector against a writer speaking Frame Streams over a real Unix socket.

use std::net::IpAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::dnstap::tests::{dns, payload};
use super::dnstap::{AUTH_QUERY, AUTH_RESPONSE};
use super::framestream::{self, Control, DNSTAP};
use super::*;

/// A payload stamped at Unix time `t`.
fn at(t: u64, kind: i32, client: IpAddr, wire: &[u8]) -> Vec<u8> {
    let mut d =
        <dnstap::Dnstap as prost::Message>::decode(&payload(kind, 1, client, wire)[..]).unwrap();
    let m = d.message.as_mut().unwrap();
    m.query_time_sec = Some(t);
    if kind == AUTH_RESPONSE {
        m.response_time_sec = Some(t);
    }
    prost::Message::encode_to_vec(&d)
}

async fn read_control(s: &mut tokio::net::UnixStream) -> Frame {
    let mut dec = Decoder::default();
    let mut buf = [0u8; 512];
    loop {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "the collector closed the connection");
        dec.push(&buf[..n]);
        if let Some(f) = dec.next_frame().unwrap() {
            return f;
        }
    }
}

#[test]
fn a_daemons_sessions_are_counted_per_day_across_restarts_and_bad_writers_are_closed() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dnstap.sock");
        let c = Collector::new(SourceKey::new([3; 32]));
        tokio::spawn(
            c.clone()
                .serve(tokio::net::UnixListener::bind(&path).unwrap()),
        );
        let day1 = 1_751_328_000u64; // 2025-07-01T00:00:00Z
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let q = dns(None, None);
        let r = dns(Some(0), None);

        // First session: the handshake, two queries and a response on day 1, one query on
        // day 2, then STOP -> FINISH.
        let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
        s.write_all(&framestream::control(Control::Ready, Some(DNSTAP)))
            .await
            .unwrap();
        assert_eq!(
            read_control(&mut s).await,
            Frame::Control(Control::Accept, vec![DNSTAP.to_vec()])
        );
        let mut out = framestream::control(Control::Start, Some(DNSTAP));
        for p in [
            at(day1 + 10, AUTH_QUERY, v4, &q),
            at(day1 + 11, AUTH_QUERY, v4, &q),
            at(day1 + 11, AUTH_RESPONSE, v4, &r),
            at(day1 + 86_400 + 5, AUTH_QUERY, v4, &q),
        ] {
            out.extend(framestream::data(&p));
        }
        out.extend(framestream::control(Control::Stop, None));
        s.write_all(&out).await.unwrap();
        assert_eq!(
            read_control(&mut s).await,
            Frame::Control(Control::Finish, vec![])
        );
        drop(s);

        // The daemon restarts: a new session, counting goes on (and a payload that is not
        // dnstap is counted as bad, the session kept).
        let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
        s.write_all(&framestream::control(Control::Ready, Some(DNSTAP)))
            .await
            .unwrap();
        read_control(&mut s).await;
        let mut out = framestream::control(Control::Start, Some(DNSTAP));
        out.extend(framestream::data(&at(day1 + 20, AUTH_QUERY, v4, &q)));
        out.extend(framestream::data(b"\xff\xfenot dnstap"));
        out.extend(framestream::control(Control::Stop, None));
        s.write_all(&out).await.unwrap();
        read_control(&mut s).await;
        drop(s);

        // A writer that offers something else, and one that sends garbage: closed, counted.
        let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
        s.write_all(&framestream::control(
            Control::Ready,
            Some(b"protobuf:other"),
        ))
        .await
        .unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "no ACCEPT for another content type");
        let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
        s.write_all(&[0, 0, 0, 0, 0, 0, 0x10, 0]).await.unwrap();
        s.read_to_end(&mut rest).await.unwrap();

        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while c.stats().bad_connections < 2 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let st = c.stats();
        assert_eq!(
            (
                st.frames,
                st.counted,
                st.bad_payloads,
                st.connections,
                st.bad_connections
            ),
            (6, 5, 1, 4, 2),
            "{st:?}"
        );
        let d1 = day_of(day1 as i64);
        let d2 = day_of((day1 + 86_400) as i64);
        assert_eq!(c.day(d1).udp_queries, [3, 0]);
        assert_eq!(c.day(d1).udp_responses, [1, 0]);
        assert_eq!(c.day(d1).sources_v4.count(), 1);
        // Day 1 is over on day 2: taken for its report; day 2 stays.
        let done = c.take_finished(d2);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].0.to_string(), "2025-07-01");
        assert_eq!(c.day(d2).udp_queries, [1, 0]);
        assert!(c.take_finished(d2).is_empty());
    });
}

#[test]
fn only_a_few_days_are_held_and_older_payloads_are_late() {
    let c = Collector::new(SourceKey::new([3; 32]));
    let v4: IpAddr = "192.0.2.1".parse().unwrap();
    let q = dns(None, None);
    let day = 86_400u64;
    let base = 1_751_328_000u64;
    for i in 0..5 {
        c.payload(Bytes::from(at(base + i * day, AUTH_QUERY, v4, &q)), 0);
    }
    // Days 3..5 are held; a payload for day 1 now is late.
    c.payload(Bytes::from(at(base, AUTH_QUERY, v4, &q)), 0);
    let st = c.stats();
    assert_eq!((st.counted, st.late, st.dropped_days), (5, 1, 2));
    let held = c.take_finished(day_of((base + 10 * day) as i64));
    assert_eq!(held.len(), MAX_DAYS);
    assert_eq!(held[0].0, day_of((base + 2 * day) as i64));
}

/// The box's own queries (its health probes to its service addresses) are left out, and what
/// arrives for a day already reported is late, not a second count.
#[test]
fn own_queries_and_reported_days_are_not_counted() {
    let own: IpAddr = "198.51.100.42".parse().unwrap();
    let client: IpAddr = "2001:db8:9::1".parse().unwrap();
    let c = Collector::new(SourceKey::new([3; 32])).without_sources([own]);
    let day1 = 1_751_328_000u64; // 2025-07-01T00:00:00Z
    let q = dns(None, None);
    c.payload(Bytes::from(at(day1 + 5, AUTH_QUERY, own, &q)), 0);
    c.payload(Bytes::from(at(day1 + 6, AUTH_QUERY, client, &q)), 0);
    let d1 = day_of(day1 as i64);
    assert_eq!(c.day(d1).udp_queries, [0, 1]);
    assert_eq!(c.stats().own, 1);
    c.close_through(d1);
    c.payload(Bytes::from(at(day1 + 7, AUTH_QUERY, client, &q)), 0);
    assert_eq!(c.day(d1), DayMetrics::default());
    assert_eq!((c.stats().late, c.stats().counted), (1, 1));
    // Restoring a saved copy of a reported day does not bring it back.
    let saved = DayMetrics {
        udp_queries: [4, 0],
        ..Default::default()
    };
    c.restore(BTreeMap::from([(d1, saved)]), None);
    assert_eq!(c.day(d1), DayMetrics::default());
}
