//! The readiness probe: `. SOA` with an NSID request, over UDP or TCP, to one address, judged
//! for readiness. The query itself is [`imrs_zone::query`]'s; this module is the policy.
//!
//! Ready means NOERROR with the AA bit, the expected SOA serial and, when asked for, an NSID in
//! the answer (docs/facts.md, Service expectations: measurement probes require NSID). Knot answers
//! SERVFAIL while a zone loads, so "the daemon answers" is not readiness.
//!
//! Blocking with a timeout on purpose: the health driver calls it from its own thread once a
//! second.

use std::net::SocketAddr;
use std::time::Duration;

use domain::base::Name;
use domain::base::Rtype;
use domain::base::iana::{Class, Rcode};
pub use imrs_zone::query::{QueryError, Response, Transport, query};

/// Why a probe did not find the server ready.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// No usable response (unreachable, refused, silent, malformed).
    #[error(transparent)]
    Query(#[from] QueryError),
    /// A name to ask for does not parse.
    #[error("cannot ask for {name:?}: not a domain name")]
    Name {
        /// The name.
        name: String,
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
        let answer = imrs_zone::query::root_soa(s, t, self.timeout)?;
        let msg = &answer.message;
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
        let serial = answer.root_soa_serial().ok_or(ProbeError::NoSoa {
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
        let nsid = answer.nsid();
        if self.require_nsid && nsid.is_none() {
            return Err(ProbeError::NoNsid {
                server: s,
                transport: t,
            });
        }
        Ok(Ready {
            server: s,
            transport: t,
            latency: answer.latency,
            serial,
            nsid,
        })
    }
}

/// Asks `name` CH TXT (`hostname.bind`, `id.server`) and returns the TXT strings answered.
pub fn chaos_txt(
    server: SocketAddr,
    transport: Transport,
    timeout: Duration,
    name: &str,
) -> Result<Vec<String>, ProbeError> {
    let qname: Name<Vec<u8>> = name.parse().map_err(|_| ProbeError::Name {
        name: name.to_string(),
    })?;
    let r = query(server, transport, timeout, &qname, Rtype::TXT, Class::CH)?;
    let rcode = r.message.header().rcode();
    if rcode != Rcode::NOERROR {
        return Err(ProbeError::Rcode {
            server,
            transport,
            rcode: rcode.to_string(),
        });
    }
    Ok(r.txt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::base::Message;
    use imrs_zone::query::fake::{RootSoa, one_shot};

    fn fake_server(
        respond: impl FnOnce(Message<Vec<u8>>) -> Vec<u8> + Send + 'static,
    ) -> SocketAddr {
        one_shot(respond).unwrap()
    }

    fn answer(
        q: &Message<Vec<u8>>,
        rcode: Rcode,
        aa: bool,
        serial: Option<u32>,
        nsid: bool,
    ) -> Vec<u8> {
        RootSoa {
            rcode,
            aa,
            serial,
            nsid: nsid.then(|| b"test-nsid".to_vec()),
        }
        .answer(q)
        .unwrap()
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
}
