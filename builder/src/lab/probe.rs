//! `. SOA` queries with an NSID request, as the RSSAC047 measurement probes send them
//! (facts.md): over UDP and TCP, to the appliance's lab service addresses (and to the lab's own
//! transfer server for its readiness). Built and parsed with `domain`; the lab calls these from a
//! thread inside its namespace ([`super::netns::NetNs::run_inside`]).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use domain::base::iana::{Class, Rcode};
use domain::base::opt::Nsid;
use domain::base::{Message, MessageBuilder, Name, Rtype};
use domain::rdata::Soa;
use serde::Serialize;

/// UDP or TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// One datagram each way.
    Udp,
    /// Length-prefixed over one connection.
    Tcp,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        })
    }
}

/// One `. SOA` answer, or why there was none.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SoaAnswer {
    /// Server queried.
    pub server: SocketAddr,
    /// Transport.
    pub transport: Transport,
    /// Response code (`NOERROR`, ...), when a response came.
    pub rcode: Option<String>,
    /// The AA bit.
    pub aa: bool,
    /// The SOA serial of `.`, if the answer holds one.
    pub serial: Option<u32>,
    /// The NSID the server sent (text, lossily).
    pub nsid: Option<String>,
    /// Milliseconds from query to complete answer.
    pub latency_ms: Option<f64>,
    /// Why no usable answer came.
    pub error: Option<String>,
}

impl SoaAnswer {
    /// NOERROR, authoritative, with a serial.
    pub fn ok(&self) -> bool {
        self.rcode.as_deref() == Some("NOERROR") && self.aa && self.serial.is_some()
    }
}

fn query_wire(id: u16) -> Result<Vec<u8>, String> {
    let mut b = MessageBuilder::new_vec();
    b.header_mut().set_id(id);
    b.header_mut().set_rd(false);
    let mut q = b.question();
    q.push((Name::root_vec(), Rtype::SOA, Class::IN))
        .map_err(|e| e.to_string())?;
    let mut add = q.additional();
    add.opt(|opt| {
        opt.set_udp_payload_size(1232);
        opt.push(Nsid::empty())
    })
    .map_err(|e| e.to_string())?;
    Ok(add.finish())
}

fn exchange(
    server: SocketAddr,
    transport: Transport,
    timeout: Duration,
    wire: &[u8],
) -> std::io::Result<Vec<u8>> {
    match transport {
        Transport::Udp => {
            let local: SocketAddr = match server.ip() {
                IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
                IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
            };
            let sock = UdpSocket::bind(local)?;
            sock.connect(server)?;
            sock.set_read_timeout(Some(timeout))?;
            sock.send(wire)?;
            let mut buf = vec![0u8; 65535];
            let n = sock.recv(&mut buf)?;
            buf.truncate(n);
            Ok(buf)
        }
        Transport::Tcp => {
            let mut s = TcpStream::connect_timeout(&server, timeout)?;
            s.set_read_timeout(Some(timeout))?;
            s.set_write_timeout(Some(timeout))?;
            let len = u16::try_from(wire.len())
                .map_err(|_| std::io::Error::other("query longer than 65535 bytes"))?;
            let mut framed = len.to_be_bytes().to_vec();
            framed.extend_from_slice(wire);
            s.write_all(&framed)?;
            let mut len = [0u8; 2];
            s.read_exact(&mut len)?;
            let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
            s.read_exact(&mut buf)?;
            Ok(buf)
        }
    }
}

fn query_id() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    (h.finish() & 0xffff) as u16
}

/// Asks `server` for `. SOA` with NSID over `transport`; never fails, the answer says what
/// happened.
pub fn soa(server: SocketAddr, transport: Transport, timeout: Duration) -> SoaAnswer {
    let mut a = SoaAnswer {
        server,
        transport,
        rcode: None,
        aa: false,
        serial: None,
        nsid: None,
        latency_ms: None,
        error: None,
    };
    let id = query_id();
    let wire = match query_wire(id) {
        Ok(w) => w,
        Err(e) => {
            a.error = Some(format!("cannot build the query: {e}"));
            return a;
        }
    };
    let t = Instant::now();
    let raw = match exchange(server, transport, timeout, &wire) {
        Ok(r) => r,
        Err(e) => {
            a.error = Some(match e.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                    format!("no answer within {:.1} s", timeout.as_secs_f64())
                }
                _ => e.to_string(),
            });
            return a;
        }
    };
    a.latency_ms = Some(t.elapsed().as_secs_f64() * 1000.0);
    parse_answer(&mut a, raw, id);
    a
}

fn parse_answer(a: &mut SoaAnswer, raw: Vec<u8>, id: u16) {
    let msg = match Message::from_octets(raw) {
        Ok(m) => m,
        Err(e) => {
            a.error = Some(format!("malformed answer: {e}"));
            return;
        }
    };
    if !msg.header().qr() || msg.header().id() != id {
        a.error = Some(format!("not a response to query id {id}"));
        return;
    }
    let rcode = msg.header().rcode();
    a.rcode = Some(rcode.to_string());
    a.aa = msg.header().aa();
    if let Ok(answer) = msg.answer() {
        for rec in answer.limit_to::<Soa<_>>().flatten() {
            if rec.owner().is_root() {
                a.serial = Some(rec.data().serial().into_int());
                break;
            }
        }
    }
    a.nsid = msg.opt().and_then(|opt| {
        opt.opt()
            .first::<Nsid<_>>()
            .map(|n| String::from_utf8_lossy(n.as_slice()).into_owned())
    });
    if rcode != Rcode::NOERROR {
        a.error = Some(format!("rcode {rcode}"));
    } else if !a.aa {
        a.error = Some("answer is not authoritative".into());
    } else if a.serial.is_none() {
        a.error = Some("no SOA for . in the answer".into());
    }
}

/// The four measurement queries: UDP and TCP to each of `servers`.
pub fn soa_all(servers: &[SocketAddr], timeout: Duration) -> Vec<SoaAnswer> {
    let mut out = Vec::new();
    for s in servers {
        for t in [Transport::Udp, Transport::Tcp] {
            out.push(soa(*s, t, timeout));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers one UDP query on loopback with `respond(query)`.
    fn one_shot(respond: impl FnOnce(&[u8]) -> Vec<u8> + Send + 'static) -> SocketAddr {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let (n, peer) = sock.recv_from(&mut buf).unwrap();
            let _ = sock.send_to(&respond(&buf[..n]), peer);
        });
        addr
    }

    fn answer(query: &[u8], aa: bool, serial: Option<u32>, nsid: Option<&[u8]>) -> Vec<u8> {
        let q = Message::from_octets(query.to_vec()).unwrap();
        let mut b = MessageBuilder::new_vec();
        b.header_mut().set_id(q.header().id());
        b.header_mut().set_qr(true);
        b.header_mut().set_aa(aa);
        let mut qs = b.question();
        qs.push((Name::root_vec(), Rtype::SOA, Class::IN)).unwrap();
        let mut ans = qs.answer();
        if let Some(serial) = serial {
            let soa = Soa::new(
                Name::<Vec<u8>>::root_vec(),
                Name::<Vec<u8>>::root_vec(),
                domain::base::Serial(serial),
                domain::base::Ttl::from_secs(1800),
                domain::base::Ttl::from_secs(900),
                domain::base::Ttl::from_secs(604800),
                domain::base::Ttl::from_secs(86400),
            );
            ans.push((Name::root_vec(), 86400, soa)).unwrap();
        }
        let mut add = ans.additional();
        add.opt(|opt| {
            if let Some(n) = nsid {
                opt.push(&Nsid::from_octets(n.to_vec()).unwrap())?;
            }
            Ok(())
        })
        .unwrap();
        add.finish()
    }

    #[test]
    fn reads_serial_aa_and_nsid() {
        let s = one_shot(|q| answer(q, true, Some(2026073102), Some(b"lab-01")));
        let a = soa(s, Transport::Udp, Duration::from_secs(2));
        assert!(a.ok(), "{a:?}");
        assert_eq!(a.serial, Some(2026073102));
        assert_eq!(a.nsid.as_deref(), Some("lab-01"));
        assert_eq!(a.rcode.as_deref(), Some("NOERROR"));
    }

    #[test]
    fn not_authoritative_and_silence_are_reported() {
        let s = one_shot(|q| answer(q, false, Some(1), None));
        let a = soa(s, Transport::Udp, Duration::from_secs(2));
        assert!(!a.ok());
        assert_eq!(a.error.as_deref(), Some("answer is not authoritative"));
        assert_eq!(a.nsid, None);
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let a = soa(
            silent.local_addr().unwrap(),
            Transport::Udp,
            Duration::from_millis(200),
        );
        assert!(a.error.unwrap().contains("no answer"));
    }
}
