//! dnstap payloads (dnstap.proto, proto2: the fields RSSAC002 needs, declared with prost's
//! derive) and what each one adds to a day's metrics: an `AUTH_QUERY` counts a query received
//! (transport, family, size, source), an `AUTH_RESPONSE` a response sent (transport, family,
//! size, response code with EDNS's extended bits). Other message types (a resolver's, a
//! tool's) and other transports (DoT, DoH: not served here) are counted as ignored.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use imrs_config::rssac002::{DayMetrics, SourceKey, Transport};

/// The top-level dnstap payload.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Dnstap {
    /// DNS server identity.
    #[prost(bytes = "vec", optional, tag = "1")]
    pub identity: Option<Vec<u8>>,
    /// DNS server version.
    #[prost(bytes = "vec", optional, tag = "2")]
    pub version: Option<Vec<u8>>,
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
    #[prost(bytes = "vec", optional, tag = "4")]
    pub query_address: Option<Vec<u8>>,
    /// The responder's address.
    #[prost(bytes = "vec", optional, tag = "5")]
    pub response_address: Option<Vec<u8>>,
    /// When the query was received, Unix seconds.
    #[prost(uint64, optional, tag = "8")]
    pub query_time_sec: Option<u64>,
    /// The query, wire format.
    #[prost(bytes = "vec", optional, tag = "10")]
    pub query_message: Option<Vec<u8>>,
    /// When the response was sent, Unix seconds.
    #[prost(uint64, optional, tag = "12")]
    pub response_time_sec: Option<u64>,
    /// The response, wire format.
    #[prost(bytes = "vec", optional, tag = "14")]
    pub response_message: Option<Vec<u8>>,
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

/// The (extended) response code of a wire-format response.
pub fn rcode(wire: &[u8]) -> Option<u16> {
    let msg = domain::base::Message::from_octets(wire).ok()?;
    let header = msg.header();
    Some(match msg.opt() {
        Some(opt) => opt.rcode(header).to_int(),
        None => u16::from(header.rcode().to_int()),
    })
}

/// Decodes one dnstap payload.
pub fn decode(payload: &[u8]) -> Result<Dnstap, DnstapError> {
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
    count(decode(payload)?, m, key)
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
            query_address: Some(addr),
            ..Message::default()
        };
        if kind == AUTH_QUERY {
            m.query_message = Some(wire.to_vec());
        } else {
            m.response_message = Some(wire.to_vec());
        }
        prost::Message::encode_to_vec(&Dnstap {
            identity: Some(b"lab-01".to_vec()),
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
        no_addr.message.as_mut().unwrap().query_address = Some(vec![1, 2, 3]);
        let e = observe(&prost::Message::encode_to_vec(&no_addr), &mut m, &k).unwrap_err();
        assert!(e.to_string().contains("no client address"), "{e}");
        let garbage = payload(AUTH_RESPONSE, 1, v4, b"xy");
        let e = observe(&garbage, &mut m, &k).unwrap_err();
        assert!(e.to_string().contains("not a DNS message"), "{e}");
        assert_eq!(m, before);
    }
}
