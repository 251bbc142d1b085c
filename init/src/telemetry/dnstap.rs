//! dnstap payloads (dnstap.proto, proto2: the fields RSSAC002 needs, declared with prost's
//! derive) and what each one adds to a day's metrics: an `AUTH_QUERY` counts a query received
//! (transport, family, size, source), an `AUTH_RESPONSE` a response sent (transport, family,
//! size, response code with EDNS's extended bits). Other message types (a resolver's, a
//! tool's) and other transports (DoT, DoH: not served here) are counted as ignored.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::Bytes;
use imrs_config::rssac002::{DayMetrics, SourceKey, Transport};

/// The top-level dnstap payload.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Dnstap {
    /// DNS server identity.
    #[prost(bytes = "bytes", optional, tag = "1")]
    pub identity: Option<Bytes>,
    /// DNS server version.
    #[prost(bytes = "bytes", optional, tag = "2")]
    pub version: Option<Bytes>,
    /// The message, when `kind` is [`MESSAGE`].
    #[prost(message, optional, tag = "14")]
    pub message: Option<Message>,
    /// Which payload is filled in.
    #[prost(int32, required, tag = "15")]
    pub kind: i32,
}

/// `Dnstap.Type.MESSAGE`.
pub const MESSAGE: i32 = 1;
/// `Message.Type.AUTH_QUERY`.
pub const AUTH_QUERY: i32 = 1;
/// `Message.Type.AUTH_RESPONSE`.
pub const AUTH_RESPONSE: i32 = 2;

/// A DNS message and its metadata.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Message {
    /// Message type.
    #[prost(int32, required, tag = "1")]
    pub kind: i32,
    /// 1: IPv4, 2: IPv6.
    #[prost(int32, optional, tag = "2")]
    pub socket_family: Option<i32>,
    /// 1: UDP, 2: TCP, others not served here.
    #[prost(int32, optional, tag = "3")]
    pub socket_protocol: Option<i32>,
    /// The initiator's address (the client's, for the authoritative types).
    #[prost(bytes = "bytes", optional, tag = "4")]
    pub query_address: Option<Bytes>,
    /// The responder's address.
    #[prost(bytes = "bytes", optional, tag = "5")]
    pub response_address: Option<Bytes>,
    /// When the query was received, Unix seconds.
    #[prost(uint64, optional, tag = "8")]
    pub query_time_sec: Option<u64>,
    /// The query, wire format.
    #[prost(bytes = "bytes", optional, tag = "10")]
    pub query_message: Option<Bytes>,
    /// When the response was sent, Unix seconds.
    #[prost(uint64, optional, tag = "12")]
    pub response_time_sec: Option<u64>,
    /// The response, wire format.
    #[prost(bytes = "bytes", optional, tag = "14")]
    pub response_message: Option<Bytes>,
}

/// What a payload was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// A query received, counted.
    Query,
    /// A response sent, counted.
    Response,
    /// A well-formed payload RSSAC002 does not count (another message type or transport).
    Ignored,
}

/// A payload that is not dnstap, or lacks what its type needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnstapError {
    /// Not a protobuf `Dnstap`.
    #[error("not a dnstap payload: {0}")]
    Decode(String),
    /// A type this reader does not know.
    #[error("dnstap payload type {0} (only MESSAGE is defined)")]
    UnknownType(i32),
    /// A field the message type needs is missing or malformed.
    #[error("dnstap {what}: {detail}")]
    Field {
        /// Which message.
        what: &'static str,
        /// What is wrong.
        detail: String,
    },
}

fn address(family: Option<i32>, bytes: Option<&[u8]>) -> Option<IpAddr> {
    match (family, bytes) {
        (Some(1), Some(b)) => <[u8; 4]>::try_from(b)
            .ok()
            .map(|a| Ipv4Addr::from(a).into()),
        (Some(2), Some(b)) => <[u8; 16]>::try_from(b)
            .ok()
            .map(|a| Ipv6Addr::from(a).into()),
        _ => None,
    }
}

/// The (extended) response code of a wire-format response: the header's four bits, and the
/// upper eight from the OPT record's TTL when there is one; `None` when the message is cut
/// short or its names are malformed.
///
/// The OPT record is found by stepping over the records before it (owner name, then the
/// fixed fields and RDATA by their length) instead of parsing them: a root referral carries
/// some fifty records, and parsing each (`domain`'s `Message::opt`) cost 2.6 µs per response
/// here, more than everything else the collector does with it (`telemetry_bench payloads`).
/// The tests check this against `domain`.
pub fn rcode(wire: &[u8]) -> Option<u16> {
    let header = wire.get(..12)?;
    let low = u16::from(header[3] & 0x0f);
    let count = |i: usize| usize::from(u16::from_be_bytes([header[i], header[i + 1]]));
    let mut at = 12;
    for _ in 0..count(4) {
        at = skip_name(wire, at)? + 4;
    }
    for section in 0..3 {
        for _ in 0..count(6 + 2 * section) {
            let end = skip_name(wire, at)?;
            let fixed = wire.get(end..end + 10)?;
            at = end + 10 + usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
            if section == 2 && fixed[..2] == [0, 41] {
                return (at <= wire.len()).then_some((u16::from(fixed[4]) << 4) | low);
            }
        }
    }
    (at <= wire.len()).then_some(low)
}

/// The offset just past the (possibly compressed) name at `at`.
fn skip_name(wire: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *wire.get(at)?;
        match len & 0xc0 {
            0 if len == 0 => return Some(at + 1),
            0 => at += 1 + usize::from(len),
            0xc0 => {
                wire.get(at + 1)?;
                return Some(at + 2);
            }
            // 0x40 and 0x80: label types that are not defined.
            _ => return None,
        }
    }
}

/// Decodes one dnstap payload (its byte fields share `payload`'s memory).
pub fn decode(payload: Bytes) -> Result<Dnstap, DnstapError> {
    <Dnstap as prost::Message>::decode(payload).map_err(|e| DnstapError::Decode(e.to_string()))
}

impl Dnstap {
    /// When the daemon stamped it (the response's time, else the query's), Unix seconds.
    pub fn time(&self) -> Option<i64> {
        let m = self.message.as_ref()?;
        i64::try_from(m.response_time_sec.or(m.query_time_sec)?).ok()
    }

    /// The client's address (the query's source), when the message carries one.
    pub fn client(&self) -> Option<IpAddr> {
        let m = self.message.as_ref()?;
        address(m.socket_family, m.query_address.as_deref())
    }
}

/// Decodes one dnstap payload and counts it into `m`, sources hashed with `key`.
pub fn observe(payload: &[u8], m: &mut DayMetrics, key: &SourceKey) -> Result<Seen, DnstapError> {
    count(decode(Bytes::copy_from_slice(payload))?, m, key)
}

/// Counts a decoded payload into `m`.
pub fn count(d: Dnstap, m: &mut DayMetrics, key: &SourceKey) -> Result<Seen, DnstapError> {
    if d.kind != MESSAGE {
        return Err(DnstapError::UnknownType(d.kind));
    }
    let Some(msg) = d.message else {
        return Err(DnstapError::Field {
            what: "payload",
            detail: "type MESSAGE without a message".into(),
        });
    };
    let what = match msg.kind {
        AUTH_QUERY => "AUTH_QUERY",
        AUTH_RESPONSE => "AUTH_RESPONSE",
        _ => return Ok(Seen::Ignored),
    };
    let transport = match msg.socket_protocol {
        Some(1) => Transport::Udp,
        Some(2) => Transport::Tcp,
        _ => return Ok(Seen::Ignored),
    };
    let field = |detail: &str| DnstapError::Field {
        what,
        detail: detail.to_string(),
    };
    let client = address(msg.socket_family, msg.query_address.as_deref())
        .ok_or_else(|| field("no client address of its socket family"))?;
    if msg.kind == AUTH_QUERY {
        let q = msg
            .query_message
            .as_deref()
            .ok_or_else(|| field("no query message"))?;
        m.query(transport, client, q.len(), key);
        Ok(Seen::Query)
    } else {
        let r = msg
            .response_message
            .as_deref()
            .ok_or_else(|| field("no response message"))?;
        let code = rcode(r).ok_or_else(|| field("the response is not a DNS message"))?;
        m.response(transport, client, r.len(), code);
        Ok(Seen::Response)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use domain::base::iana::{Class, Rtype};
    use domain::base::{MessageBuilder, Name};

    /// A dnstap payload as a daemon writes it.
    pub fn payload(kind: i32, protocol: i32, client: IpAddr, wire: &[u8]) -> Vec<u8> {
        let (family, addr) = match client {
            IpAddr::V4(a) => (1, a.octets().to_vec()),
            IpAddr::V6(a) => (2, a.octets().to_vec()),
        };
        let mut m = Message {
            kind,
            socket_family: Some(family),
            socket_protocol: Some(protocol),
            query_address: Some(addr.into()),
            ..Message::default()
        };
        if kind == AUTH_QUERY {
            m.query_message = Some(Bytes::copy_from_slice(wire));
        } else {
            m.response_message = Some(Bytes::copy_from_slice(wire));
        }
        prost::Message::encode_to_vec(&Dnstap {
            identity: Some(Bytes::from_static(b"lab-01")),
            version: None,
            message: Some(m),
            kind: MESSAGE,
        })
    }

    /// A `. SOA` query (response when `rcode` is given; EDNS with `ext` extended bits).
    pub fn dns(rcode: Option<u8>, ext: Option<u8>) -> Vec<u8> {
        let mut b = MessageBuilder::new_vec();
        if let Some(r) = rcode {
            b.header_mut().set_qr(true);
            b.header_mut()
                .set_rcode(domain::base::iana::Rcode::checked_from_int(r).unwrap());
        }
        let mut q = b.question();
        q.push((Name::root_vec(), Rtype::SOA, Class::IN)).unwrap();
        let mut a = q.additional();
        if let Some(e) = ext {
            a.opt(|o| {
                o.set_rcode(domain::base::iana::OptRcode::from_parts(
                    domain::base::iana::Rcode::checked_from_int(rcode.unwrap_or(0)).unwrap(),
                    e,
                ));
                Ok(())
            })
            .unwrap();
        }
        a.finish()
    }

    #[test]
    fn queries_and_responses_are_counted_others_ignored_bad_ones_named() {
        let k = SourceKey::new([1; 32]);
        let mut m = DayMetrics::default();
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let q = dns(None, None);
        assert_eq!(
            observe(&payload(AUTH_QUERY, 1, v4, &q), &mut m, &k),
            Ok(Seen::Query)
        );
        assert_eq!(
            observe(&payload(AUTH_QUERY, 2, v6, &q), &mut m, &k),
            Ok(Seen::Query)
        );
        let nx = dns(Some(3), None);
        assert_eq!(
            observe(&payload(AUTH_RESPONSE, 1, v4, &nx), &mut m, &k),
            Ok(Seen::Response)
        );
        // BADVERS: extended code 16 (1 << 4 | 0).
        let badvers = dns(Some(0), Some(1));
        assert_eq!(rcode(&badvers), Some(16));
        observe(&payload(AUTH_RESPONSE, 2, v6, &badvers), &mut m, &k).unwrap();
        assert_eq!(m.udp_queries, [1, 0]);
        assert_eq!(m.tcp_queries, [0, 1]);
        assert_eq!(m.udp_responses, [1, 0]);
        assert_eq!(m.tcp_responses, [0, 1]);
        assert_eq!(m.rcodes.get(&3), Some(&1));
        assert_eq!(m.rcodes.get(&16), Some(&1));
        assert_eq!(m.udp_request_sizes.get(&16), Some(&1), "{} bytes", q.len());
        assert_eq!(m.sources_v6_64.count(), 1);
        // A resolver's message and DoT: ignored, nothing counted.
        let before = m.clone();
        assert_eq!(
            observe(&payload(3, 1, v4, &q), &mut m, &k),
            Ok(Seen::Ignored)
        );
        assert_eq!(
            observe(&payload(AUTH_QUERY, 3, v4, &q), &mut m, &k),
            Ok(Seen::Ignored)
        );
        assert_eq!(m, before);
        // Malformed, truncated, another type, missing fields: named, nothing counted.
        let good = payload(AUTH_QUERY, 1, v4, &q);
        assert!(matches!(
            observe(&good[..good.len() - 3], &mut m, &k),
            Err(DnstapError::Decode(_))
        ));
        assert!(matches!(
            observe(b"\xff\xff\xff", &mut m, &k),
            Err(DnstapError::Decode(_))
        ));
        let other = prost::Message::encode_to_vec(&Dnstap {
            identity: None,
            version: None,
            message: None,
            kind: 2,
        });
        assert_eq!(
            observe(&other, &mut m, &k),
            Err(DnstapError::UnknownType(2))
        );
        let mut no_addr = <Dnstap as prost::Message>::decode(&good[..]).unwrap();
        no_addr.message.as_mut().unwrap().query_address = Some(Bytes::from_static(&[1, 2, 3]));
        let e = observe(&prost::Message::encode_to_vec(&no_addr), &mut m, &k).unwrap_err();
        assert!(e.to_string().contains("no client address"), "{e}");
        let garbage = payload(AUTH_RESPONSE, 1, v4, b"xy");
        let e = observe(&garbage, &mut m, &k).unwrap_err();
        assert!(e.to_string().contains("not a DNS message"), "{e}");
        assert_eq!(m, before);
    }

    /// The response code as `domain` reads it (parsing every record).
    fn rcode_by_domain(wire: &[u8]) -> Option<u16> {
        let msg = domain::base::Message::from_octets(wire).ok()?;
        let header = msg.header();
        Some(match msg.opt() {
            Some(opt) => opt.rcode(header).to_int(),
            None => u16::from(header.rcode().to_int()),
        })
    }

    /// The record-skipping reader agrees with `domain` on responses with and without OPT, with
    /// records in every section and compressed names, for every header and extended code; a
    /// response cut anywhere inside its records, or with an undefined label type, is refused.
    #[test]
    fn the_response_code_agrees_with_domain() {
        use domain::base::Ttl;
        use domain::rdata::{A, Ns};
        let mut cases = Vec::new();
        for (rc, ext) in [
            (0, None),
            (3, None),
            (0, Some(1)),
            (5, Some(0)),
            (1, Some(255)),
        ] {
            cases.push(dns(Some(rc), ext));
            // A referral's shape: answer, authority and glue before OPT.
            let mut b = MessageBuilder::new_vec();
            b.header_mut().set_qr(true);
            b.header_mut()
                .set_rcode(domain::base::iana::Rcode::checked_from_int(rc).unwrap());
            let com: Name<Vec<u8>> = "com.".parse().unwrap();
            let mut q = b.question();
            q.push((&com, Rtype::NS, Class::IN)).unwrap();
            let mut an = q.answer();
            an.push((
                &com,
                Class::IN,
                Ttl::from_secs(1),
                A::new([192, 0, 2, 1].into()),
            ))
            .unwrap();
            let mut ns = an.authority();
            for c in ["a", "b", "c"] {
                let n: Name<Vec<u8>> = format!("{c}.gtld-servers.net.").parse().unwrap();
                ns.push((&com, Class::IN, Ttl::from_secs(1), Ns::new(n)))
                    .unwrap();
            }
            let mut add = ns.additional();
            let glue: Name<Vec<u8>> = "a.gtld-servers.net.".parse().unwrap();
            add.push((
                &glue,
                Class::IN,
                Ttl::from_secs(1),
                A::new([192, 5, 6, 30].into()),
            ))
            .unwrap();
            if let Some(e) = ext {
                add.opt(|o| {
                    o.set_rcode(domain::base::iana::OptRcode::from_parts(
                        domain::base::iana::Rcode::checked_from_int(rc).unwrap(),
                        e,
                    ));
                    o.push(&domain::base::opt::nsid::Nsid::from_octets(b"lab-01".to_vec()).unwrap())
                })
                .unwrap();
            }
            cases.push(add.finish());
        }
        for wire in &cases {
            assert!(rcode(wire).is_some());
            assert_eq!(rcode(wire), rcode_by_domain(wire), "{wire:?}");
            for cut in 12..wire.len() {
                assert_eq!(rcode(&wire[..cut]), None, "cut at {cut} of {}", wire.len());
            }
        }
        let mut bad = cases[1].clone();
        bad[12] = 0x45;
        assert_eq!(rcode(&bad), None);
        assert_eq!(rcode(b"short"), None);
    }
}
