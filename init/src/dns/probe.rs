//! The readiness probe: `. SOA` with an NSID request, over UDP or TCP, to one address.
//!
//! Ready means NOERROR with the AA bit, the expected SOA serial and, when asked for, an NSID in
//! the answer (facts.md, Service expectations: measurement probes require NSID). Knot answers
//! SERVFAIL while a zone loads, so "the daemon answers" is not readiness.
//!
//! Blocking with a timeout on purpose: the health driver calls it from its own thread once a
//! second. Messages are built and parsed with `domain`; only the TCP length prefix is framed here.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use domain::base::iana::{Class, Rcode};
use domain::base::opt::Nsid;
use domain::base::{Message, MessageBuilder, Name, Rtype};
use domain::rdata::{Soa, Txt};

/// How a query travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// Why a probe did not find the server ready.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
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
    /// The query could not be built (an internal error).
    #[error("cannot build query for {server}: {message}")]
    Build {
        /// The server.
        server: SocketAddr,
        /// What went wrong.
        message: String,
    },
    /// The answer is not a DNS response to our query.
    #[error("{server}/{transport}: malformed answer: {message}")]
    Malformed {
        /// The server.
        server: SocketAddr,
        /// The transport.
        transport: Transport,
        /// What is wrong with it.
        message: String,
    },
    /// The answer's rcode is not NOERROR (Knot says SERVFAIL while loading).
    #[error("{server}/{transport}: rcode {rcode}")]
    Rcode {
        /// The server.
        server: SocketAddr,
        /// The transport.
        transport: Transport,
        /// The rcode.
        rcode: String,
    },
    /// The AA bit is not set: the server does not serve the zone.
    #[error("{server}/{transport}: answer is not authoritative")]
    NotAuthoritative {
        /// The server.
        server: SocketAddr,
        /// The transport.
        transport: Transport,
    },
    /// The answer has no SOA record for `.`.
    #[error("{server}/{transport}: no SOA in the answer")]
    NoSoa {
        /// The server.
        server: SocketAddr,
        /// The transport.
        transport: Transport,
    },
    /// The server serves another serial than expected.
    #[error("{server}/{transport}: serial {got}, expected {expected}")]
    Serial {
        /// The server.
        server: SocketAddr,
        /// The transport.
        transport: Transport,
        /// Expected serial.
        expected: u32,
        /// Served serial.
        got: u32,
    },
    /// NSID was required but absent.
    #[error("{server}/{transport}: no NSID in the answer")]
    NoNsid {
        /// The server.
        server: SocketAddr,
        /// The transport.
        transport: Transport,
    },
}

/// A passed readiness probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    /// The server probed.
    pub server: SocketAddr,
    /// The transport used.
    pub transport: Transport,
    /// Time from sending the query to having the whole answer.
    pub latency: Duration,
    /// The SOA serial served.
    pub serial: u32,
    /// The NSID the server sent, if any (as text, lossily).
    pub nsid: Option<String>,
}

/// What to probe and what to expect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The address and port to query.
    pub server: SocketAddr,
    /// UDP or TCP.
    pub transport: Transport,
    /// Give up after this long.
    pub timeout: Duration,
    /// The serial that must be served (`None`: any).
    pub expected_serial: Option<u32>,
    /// Fail when the answer carries no NSID.
    pub require_nsid: bool,
}

impl Probe {
    /// A probe of `server` over `transport` expecting `serial`, requiring NSID, 1 s timeout.
    pub fn new(server: SocketAddr, transport: Transport, serial: Option<u32>) -> Probe {
        Probe {
            server,
            transport,
            timeout: Duration::from_secs(1),
            expected_serial: serial,
            require_nsid: true,
        }
    }

    /// Runs the probe once.
    pub fn run(&self) -> Result<Ready, ProbeError> {
        let (s, t) = (self.server, self.transport);
        let (answer, latency) =
            query(s, t, self.timeout, &Name::root_vec(), Rtype::SOA, Class::IN)?;
        let msg = &answer;
        let rcode = msg.header().rcode();
        if rcode != Rcode::NOERROR {
            return Err(ProbeError::Rcode {
                server: s,
                transport: t,
                rcode: rcode.to_string(),
            });
        }
        if !msg.header().aa() {
            return Err(ProbeError::NotAuthoritative {
                server: s,
                transport: t,
            });
        }
        let serial = soa_serial(msg).ok_or(ProbeError::NoSoa {
            server: s,
            transport: t,
        })?;
        if let Some(expected) = self.expected_serial
            && expected != serial
        {
            return Err(ProbeError::Serial {
                server: s,
                transport: t,
                expected,
                got: serial,
            });
        }
        let nsid = msg.opt().and_then(|opt| {
            opt.opt()
                .first::<Nsid<_>>()
                .map(|n| String::from_utf8_lossy(n.as_slice()).into_owned())
        });
        if self.require_nsid && nsid.is_none() {
            return Err(ProbeError::NoNsid {
                server: s,
                transport: t,
            });
        }
        Ok(Ready {
            server: s,
            transport: t,
            latency,
            serial,
            nsid,
        })
    }
}

/// The serial of the first SOA in the answer section.
pub fn soa_serial(msg: &Message<Vec<u8>>) -> Option<u32> {
    let answer = msg.answer().ok()?;
    for rec in answer.limit_to::<Soa<_>>() {
        let rec = rec.ok()?;
        if rec.owner().is_root() {
            return Some(rec.data().serial().into_int());
        }
    }
    None
}

fn random_id() -> u16 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    (h.finish() & 0xffff) as u16
}

/// Sends one query (with EDNS, a 1232-byte UDP size and an empty NSID option) and returns the
/// parsed response with the time it took. Checks that the response answers this query (id, QR),
/// nothing about its content.
pub fn query(
    server: SocketAddr,
    transport: Transport,
    timeout: Duration,
    qname: &Name<Vec<u8>>,
    qtype: Rtype,
    qclass: Class,
) -> Result<(Message<Vec<u8>>, Duration), ProbeError> {
    let id = random_id();
    let build = |e: &dyn std::fmt::Display| ProbeError::Build {
        server,
        message: e.to_string(),
    };
    let mut b = MessageBuilder::new_vec();
    b.header_mut().set_id(id);
    let mut q = b.question();
    q.push((qname, qtype, qclass)).map_err(|e| build(&e))?;
    let mut add = q.additional();
    add.opt(|opt| {
        opt.set_udp_payload_size(1232);
        opt.push(Nsid::empty())
    })
    .map_err(|e| build(&e))?;
    let wire = add.finish();

    let start = Instant::now();
    let raw = match transport {
        Transport::Udp => exchange_udp(server, timeout, &wire)?,
        Transport::Tcp => exchange_tcp(server, timeout, &wire)?,
    };
    let latency = start.elapsed();
    let malformed = |message: String| ProbeError::Malformed {
        server,
        transport,
        message,
    };
    let msg = Message::from_octets(raw).map_err(|e| malformed(e.to_string()))?;
    if !msg.header().qr() || msg.header().id() != id {
        return Err(malformed(format!(
            "not a response to query id {id} (qr {}, id {})",
            msg.header().qr(),
            msg.header().id()
        )));
    }
    Ok((msg, latency))
}

fn io_err(
    server: SocketAddr,
    transport: Transport,
    timeout: Duration,
    op: &'static str,
) -> impl Fn(std::io::Error) -> ProbeError {
    move |source| match source.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => ProbeError::Timeout {
            server,
            transport,
            timeout,
        },
        _ => ProbeError::Io {
            server,
            transport,
            op,
            source,
        },
    }
}

fn exchange_udp(server: SocketAddr, timeout: Duration, wire: &[u8]) -> Result<Vec<u8>, ProbeError> {
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

fn exchange_tcp(server: SocketAddr, timeout: Duration, wire: &[u8]) -> Result<Vec<u8>, ProbeError> {
    let t = Transport::Tcp;
    let mut s = TcpStream::connect_timeout(&server, timeout)
        .map_err(io_err(server, t, timeout, "connect"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(io_err(server, t, timeout, "set timeout"))?;
    s.set_write_timeout(Some(timeout))
        .map_err(io_err(server, t, timeout, "set timeout"))?;
    let len = u16::try_from(wire.len()).map_err(|_| ProbeError::Build {
        server,
        message: "query longer than 65535 bytes".into(),
    })?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(wire);
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

/// Asks `name` CH TXT (`hostname.bind`, `id.server`) and returns the TXT strings answered.
pub fn chaos_txt(
    server: SocketAddr,
    transport: Transport,
    timeout: Duration,
    name: &str,
) -> Result<Vec<String>, ProbeError> {
    let qname: Name<Vec<u8>> = name.parse().map_err(|_| ProbeError::Build {
        server,
        message: format!("bad name {name}"),
    })?;
    let (msg, _) = query(server, transport, timeout, &qname, Rtype::TXT, Class::CH)?;
    if msg.header().rcode() != Rcode::NOERROR {
        return Err(ProbeError::Rcode {
            server,
            transport,
            rcode: msg.header().rcode().to_string(),
        });
    }
    let mut out = Vec::new();
    let answer = msg.answer().map_err(|e| ProbeError::Malformed {
        server,
        transport,
        message: e.to_string(),
    })?;
    for rec in answer.limit_to::<Txt<_>>().flatten() {
        let text: Vec<u8> = rec.data().iter().flatten().copied().collect();
        out.push(String::from_utf8_lossy(&text).into_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-shot UDP server answering with whatever `respond` builds from the query.
    fn fake_server(
        respond: impl FnOnce(Message<Vec<u8>>) -> Vec<u8> + Send + 'static,
    ) -> SocketAddr {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            let (n, peer) = sock.recv_from(&mut buf).unwrap();
            buf.truncate(n);
            let q = Message::from_octets(buf).unwrap();
            sock.send_to(&respond(q), peer).unwrap();
        });
        addr
    }

    fn answer(
        q: &Message<Vec<u8>>,
        rcode: Rcode,
        aa: bool,
        serial: Option<u32>,
        nsid: bool,
    ) -> Vec<u8> {
        use domain::base::{Serial, Ttl};
        let b = MessageBuilder::new_vec();
        let mut b = b.start_answer(q, rcode).unwrap();
        b.header_mut().set_aa(aa);
        if let Some(s) = serial {
            let soa = Soa::new(
                Name::<Vec<u8>>::root_vec(),
                Name::<Vec<u8>>::root_vec(),
                Serial(s),
                Ttl::from_secs(1800),
                Ttl::from_secs(900),
                Ttl::from_secs(604800),
                Ttl::from_secs(86400),
            );
            b.push((Name::root_vec(), 86400, soa)).unwrap();
        }
        let mut a = b.additional();
        a.opt(|o| {
            if nsid {
                o.push(&Nsid::from_octets(b"test-nsid".as_slice()).unwrap())?;
            }
            Ok(())
        })
        .unwrap();
        a.finish()
    }

    #[test]
    fn classifies_answers() {
        type Case = (
            Rcode,
            bool,
            Option<u32>,
            bool,
            fn(&Result<Ready, ProbeError>) -> bool,
        );
        let cases: [Case; 6] = [
            (
                Rcode::NOERROR,
                true,
                Some(7),
                true,
                |r| matches!(r, Ok(Ready { serial: 7, nsid: Some(n), .. }) if n == "test-nsid"),
            ),
            (
                Rcode::SERVFAIL,
                false,
                None,
                true,
                |r| matches!(r, Err(ProbeError::Rcode { rcode, .. }) if rcode == "SERVFAIL"),
            ),
            (Rcode::NOERROR, false, Some(7), true, |r| {
                matches!(r, Err(ProbeError::NotAuthoritative { .. }))
            }),
            (Rcode::NOERROR, true, None, true, |r| {
                matches!(r, Err(ProbeError::NoSoa { .. }))
            }),
            (Rcode::NOERROR, true, Some(6), true, |r| {
                matches!(
                    r,
                    Err(ProbeError::Serial {
                        expected: 7,
                        got: 6,
                        ..
                    })
                )
            }),
            (Rcode::NOERROR, true, Some(7), false, |r| {
                matches!(r, Err(ProbeError::NoNsid { .. }))
            }),
        ];
        for (i, (rcode, aa, serial, nsid, check)) in cases.into_iter().enumerate() {
            let addr = fake_server(move |q| answer(&q, rcode, aa, serial, nsid));
            let r = Probe::new(addr, Transport::Udp, Some(7)).run();
            assert!(check(&r), "case {i}: {r:?}");
        }
    }

    #[test]
    fn wrong_id_is_malformed() {
        let addr = fake_server(|q| {
            let mut w = answer(&q, Rcode::NOERROR, true, Some(7), true);
            w[0] ^= 0xff;
            w
        });
        let r = Probe::new(addr, Transport::Udp, Some(7)).run();
        assert!(matches!(r, Err(ProbeError::Malformed { .. })), "{r:?}");
    }

    #[test]
    fn closed_port_and_silence_fail_fast() {
        // A bound but silent socket: timeout.
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut p = Probe::new(silent.local_addr().unwrap(), Transport::Udp, None);
        p.timeout = Duration::from_millis(200);
        assert!(matches!(p.run(), Err(ProbeError::Timeout { .. })));
        drop(silent);
        // A closed port: refused at once (connected UDP socket sees the ICMP error). Tests run
        // in parallel and may take a just-freed port, so a few fresh ports are tried; one
        // clean refusal is the proof.
        let refused = (0..5).any(|_| {
            let closed = UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap();
            let p = Probe::new(closed, Transport::Udp, None);
            let t0 = Instant::now();
            matches!(p.run(), Err(ProbeError::Io { .. }))
                && t0.elapsed() < Duration::from_millis(500)
        });
        assert!(refused, "a closed UDP port was never refused at once");
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let p = Probe::new(closed, Transport::Tcp, None);
        assert!(matches!(p.run(), Err(ProbeError::Io { .. })));
    }
}
