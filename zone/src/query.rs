//! One DNS query and its answer, over UDP or TCP, blocking with a timeout: the client every
//! program here uses to ask a server something (the init's readiness probe and health loop, its
//! SOA polls of the transfer servers, the lab's measurement queries). Messages are built and
//! parsed with `domain`; only the TCP length prefix is framed here.
//!
//! Every query carries EDNS (a 1232-byte UDP payload size) and an empty NSID option, as the
//! RSSAC047 measurement probes send them (docs/facts.md: NSID is required). The answer is checked to
//! be a response to this query (QR set, the same random id); nothing about its content is
//! judged here: that is the caller's policy.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use domain::base::iana::Class;
use domain::base::opt::Nsid;
use domain::base::{Message, MessageBuilder, Name, Rtype};
use domain::rdata::{Soa, Txt};

/// The EDNS UDP payload size every query advertises (the DNS flag day 2020 value).
pub const EDNS_UDP_SIZE: u16 = 1232;

/// How a query travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// One UDP datagram each way.
    Udp,
    /// A TCP connection with the two-byte length prefix.
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

/// A query got no usable response.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// Sending or receiving failed (refused, unreachable, reset).
    #[error("{server}/{transport}: {op}")]
    Io {
        /// The server.
        server: SocketAddr,
        /// The transport.
        transport: Transport,
        /// What failed.
        op: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No answer within the timeout.
    #[error("{server}/{transport}: no answer within {timeout:?}")]
    Timeout {
        /// The server.
        server: SocketAddr,
        /// The transport.
        transport: Transport,
        /// The timeout.
        timeout: Duration,
    },
    /// The query could not be built.
    #[error("cannot build a query for {server}: {message}")]
    Build {
        /// The server.
        server: SocketAddr,
        /// What went wrong.
        message: String,
    },
    /// The answer is not a DNS response to this query.
    #[error("{server}/{transport}: malformed answer: {message}")]
    Malformed {
        /// The server.
        server: SocketAddr,
        /// The transport.
        transport: Transport,
        /// What is wrong with it.
        message: String,
    },
}

/// A response to a query.
#[derive(Debug, Clone)]
pub struct Response {
    /// The parsed message.
    pub message: Message<Vec<u8>>,
    /// From sending the query to having the whole answer.
    pub latency: Duration,
}

impl Response {
    /// The serial of the first SOA for `.` in the answer section.
    pub fn root_soa_serial(&self) -> Option<u32> {
        let answer = self.message.answer().ok()?;
        answer
            .limit_to::<Soa<_>>()
            .flatten()
            .find(|rec| rec.owner().is_root())
            .map(|rec| rec.data().serial().into_int())
    }

    /// The NSID the server sent, as text (lossily).
    pub fn nsid(&self) -> Option<String> {
        self.message.opt().and_then(|opt| {
            opt.opt()
                .first::<Nsid<_>>()
                .map(|n| String::from_utf8_lossy(n.as_slice()).into_owned())
        })
    }

    /// Every TXT string in the answer section (each record's strings joined).
    pub fn txt(&self) -> Vec<String> {
        let Ok(answer) = self.message.answer() else {
            return Vec::new();
        };
        answer
            .limit_to::<Txt<_>>()
            .flatten()
            .map(|rec| {
                let text: Vec<u8> = rec.data().iter().flatten().copied().collect();
                String::from_utf8_lossy(&text).into_owned()
            })
            .collect()
    }
}

/// A random query id (from the system's random source; a fixed fallback only if that fails).
pub fn query_id() -> u16 {
    let mut b = [0u8; 2];
    match aws_lc_rs::rand::fill(&mut b) {
        Ok(()) => u16::from_be_bytes(b),
        Err(_) => {
            use std::hash::{BuildHasher, Hasher};
            // RandomState is seeded from the OS per process and per call.
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(Instant::now().elapsed().as_nanos());
            (h.finish() & 0xffff) as u16
        }
    }
}

/// Builds the wire form of a query for `qname qtype qclass` with id `id`, recursion not
/// desired, EDNS with an empty NSID option.
pub fn build(
    id: u16,
    qname: &Name<Vec<u8>>,
    qtype: Rtype,
    qclass: Class,
) -> Result<Vec<u8>, String> {
    let mut b = MessageBuilder::new_vec();
    b.header_mut().set_id(id);
    b.header_mut().set_rd(false);
    let mut q = b.question();
    q.push((qname, qtype, qclass)).map_err(|e| e.to_string())?;
    let mut add = q.additional();
    add.opt(|opt| {
        opt.set_udp_payload_size(EDNS_UDP_SIZE);
        opt.push(Nsid::empty())
    })
    .map_err(|e| e.to_string())?;
    Ok(add.finish())
}

/// Sends one query and returns the response with the time it took.
pub fn query(
    server: SocketAddr,
    transport: Transport,
    timeout: Duration,
    qname: &Name<Vec<u8>>,
    qtype: Rtype,
    qclass: Class,
) -> Result<Response, QueryError> {
    let id = query_id();
    let wire =
        build(id, qname, qtype, qclass).map_err(|message| QueryError::Build { server, message })?;
    let start = Instant::now();
    let raw = match transport {
        Transport::Udp => exchange_udp(server, timeout, &wire)?,
        Transport::Tcp => exchange_tcp(server, timeout, &wire)?,
    };
    let latency = start.elapsed();
    let malformed = |message: String| QueryError::Malformed {
        server,
        transport,
        message,
    };
    let message = Message::from_octets(raw).map_err(|e| malformed(e.to_string()))?;
    if !message.header().qr() || message.header().id() != id {
        return Err(malformed(format!(
            "not a response to query id {id} (qr {}, id {})",
            message.header().qr(),
            message.header().id()
        )));
    }
    Ok(Response { message, latency })
}

/// `. SOA IN`: the question every probe of a root server asks.
pub fn root_soa(
    server: SocketAddr,
    transport: Transport,
    timeout: Duration,
) -> Result<Response, QueryError> {
    query(
        server,
        transport,
        timeout,
        &Name::root_vec(),
        Rtype::SOA,
        Class::IN,
    )
}

fn io_err(
    server: SocketAddr,
    transport: Transport,
    timeout: Duration,
    op: &'static str,
) -> impl Fn(std::io::Error) -> QueryError {
    move |source| match source.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => QueryError::Timeout {
            server,
            transport,
            timeout,
        },
        _ => QueryError::Io {
            server,
            transport,
            op,
            source,
        },
    }
}

fn exchange_udp(server: SocketAddr, timeout: Duration, wire: &[u8]) -> Result<Vec<u8>, QueryError> {
    let t = Transport::Udp;
    let local: SocketAddr = match server.ip() {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(local).map_err(io_err(server, t, timeout, "bind"))?;
    // Connected: an ICMP port unreachable (daemon dead) fails the receive at once.
    sock.connect(server)
        .map_err(io_err(server, t, timeout, "connect"))?;
    sock.set_read_timeout(Some(timeout))
        .map_err(io_err(server, t, timeout, "set timeout"))?;
    sock.send(wire)
        .map_err(io_err(server, t, timeout, "send"))?;
    let mut buf = vec![0u8; 65535];
    let n = sock
        .recv(&mut buf)
        .map_err(io_err(server, t, timeout, "receive"))?;
    buf.truncate(n);
    Ok(buf)
}

/// `wire` with the two-byte length prefix DNS over TCP needs.
pub fn tcp_frame(wire: &[u8]) -> std::io::Result<Vec<u8>> {
    let len = u16::try_from(wire.len())
        .map_err(|_| std::io::Error::other("message longer than 65535 bytes"))?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(wire);
    Ok(framed)
}

fn exchange_tcp(server: SocketAddr, timeout: Duration, wire: &[u8]) -> Result<Vec<u8>, QueryError> {
    let t = Transport::Tcp;
    let mut s = TcpStream::connect_timeout(&server, timeout)
        .map_err(io_err(server, t, timeout, "connect"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(io_err(server, t, timeout, "set timeout"))?;
    s.set_write_timeout(Some(timeout))
        .map_err(io_err(server, t, timeout, "set timeout"))?;
    let framed = tcp_frame(wire).map_err(|e| QueryError::Build {
        server,
        message: e.to_string(),
    })?;
    s.write_all(&framed)
        .map_err(io_err(server, t, timeout, "send"))?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len)
        .map_err(io_err(server, t, timeout, "receive"))?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut buf)
        .map_err(io_err(server, t, timeout, "receive"))?;
    Ok(buf)
}

/// A DNS server to test clients against: answers built like a root server's, served once on
/// loopback. Used by the tests of every program's client policy (readiness probe, measurement
/// queries).
pub mod fake {
    use std::net::{SocketAddr, UdpSocket};

    use domain::base::iana::Rcode;
    use domain::base::opt::Nsid;
    use domain::base::{Message, MessageBuilder, Name, Serial, Ttl};
    use domain::rdata::Soa;

    /// What the fake server answers to a query.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct RootSoa {
        /// The response code.
        pub rcode: Rcode,
        /// The AA bit.
        pub aa: bool,
        /// The serial of a `. SOA` record in the answer section (`None`: no record).
        pub serial: Option<u32>,
        /// An NSID option in the answer's OPT record.
        pub nsid: Option<Vec<u8>>,
    }

    impl RootSoa {
        /// NOERROR, authoritative, serial `serial`, NSID `nsid`.
        pub fn good(serial: u32, nsid: &[u8]) -> RootSoa {
            RootSoa {
                rcode: Rcode::NOERROR,
                aa: true,
                serial: Some(serial),
                nsid: Some(nsid.to_vec()),
            }
        }

        /// The response to `query` (same id and question).
        pub fn answer(&self, query: &Message<Vec<u8>>) -> Result<Vec<u8>, String> {
            let err = |e: &dyn std::fmt::Display| e.to_string();
            let mut b = MessageBuilder::new_vec()
                .start_answer(query, self.rcode)
                .map_err(|e| err(&e))?;
            b.header_mut().set_aa(self.aa);
            if let Some(serial) = self.serial {
                let soa = Soa::new(
                    Name::<Vec<u8>>::root_vec(),
                    Name::<Vec<u8>>::root_vec(),
                    Serial(serial),
                    Ttl::from_secs(1800),
                    Ttl::from_secs(900),
                    Ttl::from_secs(604800),
                    Ttl::from_secs(86400),
                );
                b.push((Name::root_vec(), 86400, soa))
                    .map_err(|e| err(&e))?;
            }
            let nsid = match &self.nsid {
                Some(n) => Some(Nsid::from_octets(n.as_slice()).map_err(|e| err(&e))?),
                None => None,
            };
            let mut a = b.additional();
            a.opt(|o| {
                if let Some(n) = &nsid {
                    o.push(n)?;
                }
                Ok(())
            })
            .map_err(|e| err(&e))?;
            Ok(a.finish())
        }
    }

    /// A UDP server on 127.0.0.1 that answers one query with `respond(query)` from a thread.
    pub fn one_shot(
        respond: impl FnOnce(Message<Vec<u8>>) -> Vec<u8> + Send + 'static,
    ) -> std::io::Result<SocketAddr> {
        let sock = UdpSocket::bind("127.0.0.1:0")?;
        let addr = sock.local_addr()?;
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            if let Ok((n, peer)) = sock.recv_from(&mut buf) {
                buf.truncate(n);
                if let Ok(q) = Message::from_octets(buf) {
                    let _ = sock.send_to(&respond(q), peer);
                }
            }
        });
        Ok(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::fake::{RootSoa, one_shot};

    fn soa_answer(q: &Message<Vec<u8>>, serial: u32, nsid: Option<&[u8]>) -> Vec<u8> {
        let mut a = RootSoa::good(serial, b"");
        a.nsid = nsid.map(<[u8]>::to_vec);
        a.answer(q).unwrap()
    }

    #[test]
    fn asks_with_edns_and_nsid_and_reads_serial_and_nsid() {
        let s = one_shot(|q| {
            let opt = q.opt().expect("EDNS in the query");
            assert_eq!(opt.udp_payload_size(), EDNS_UDP_SIZE);
            assert!(opt.opt().first::<Nsid<_>>().is_some(), "NSID requested");
            assert!(!q.header().rd());
            soa_answer(&q, 2026073102, Some(b"lab-01"))
        })
        .unwrap();
        let r = root_soa(s, Transport::Udp, Duration::from_secs(2)).unwrap();
        assert_eq!(r.root_soa_serial(), Some(2026073102));
        assert_eq!(r.nsid().as_deref(), Some("lab-01"));
    }

    #[test]
    fn a_response_to_another_query_is_malformed() {
        let s = one_shot(|q| {
            let mut w = soa_answer(&q, 7, None);
            w[0] ^= 0xff;
            w
        })
        .unwrap();
        let r = root_soa(s, Transport::Udp, Duration::from_secs(2));
        assert!(matches!(r, Err(QueryError::Malformed { .. })), "{r:?}");
    }

    #[test]
    fn silence_times_out_and_closed_ports_fail_fast() {
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let r = root_soa(
            silent.local_addr().unwrap(),
            Transport::Udp,
            Duration::from_millis(200),
        );
        assert!(matches!(r, Err(QueryError::Timeout { .. })), "{r:?}");
        drop(silent);
        // A closed port: refused at once (a connected UDP socket sees the ICMP error). Tests
        // run in parallel and may take a just-freed port, so a few fresh ports are tried.
        let refused = (0..5).any(|_| {
            let closed = UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap();
            let t0 = Instant::now();
            matches!(
                root_soa(closed, Transport::Udp, Duration::from_secs(1)),
                Err(QueryError::Io { .. })
            ) && t0.elapsed() < Duration::from_millis(500)
        });
        assert!(refused, "a closed UDP port was never refused at once");
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(matches!(
            root_soa(closed, Transport::Tcp, Duration::from_secs(1)),
            Err(QueryError::Io { .. })
        ));
    }

    #[test]
    fn query_ids_vary() {
        let ids: std::collections::BTreeSet<u16> = (0..64).map(|_| query_id()).collect();
        assert!(ids.len() > 32, "{} distinct ids of 64", ids.len());
    }
}
