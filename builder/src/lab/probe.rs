//! `. SOA` queries with an NSID request, as the RSSAC047 measurement probes send them
//! (docs/facts.md): over UDP and TCP, to the appliance's lab service addresses. Built and parsed
//! with `domain`; the lab calls these from a thread inside its namespace
//! ([`crate::host::netns::NetNs::run_inside`]).

use std::net::SocketAddr;
use std::time::Duration;

use domain::base::iana::Rcode;
pub use imrs_zone::query::Transport;
use imrs_zone::query::{self, QueryError};
use serde::Serialize;

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
    let r = match query::root_soa(server, transport, timeout) {
        Ok(r) => r,
        Err(e) => {
            a.error = Some(match e {
                QueryError::Timeout { .. } => {
                    format!("no answer within {:.1} s", timeout.as_secs_f64())
                }
                other => imrs_config::error_chain(&other),
            });
            return a;
        }
    };
    a.latency_ms = Some(r.latency.as_secs_f64() * 1000.0);
    let rcode = r.message.header().rcode();
    a.rcode = Some(rcode.to_string());
    a.aa = r.message.header().aa();
    a.serial = r.root_soa_serial();
    a.nsid = r.nsid();
    if rcode != Rcode::NOERROR {
        a.error = Some(format!("rcode {rcode}"));
    } else if !a.aa {
        a.error = Some("answer is not authoritative".into());
    } else if a.serial.is_none() {
        a.error = Some("no SOA for . in the answer".into());
    }
    a
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
    use imrs_zone::query::fake::{RootSoa, one_shot};
    use std::net::UdpSocket;

    #[test]
    fn reads_serial_aa_and_nsid() {
        let s = one_shot(|q| RootSoa::good(2026073102, b"lab-01").answer(&q).unwrap()).unwrap();
        let a = soa(s, Transport::Udp, Duration::from_secs(2));
        assert!(a.ok(), "{a:?}");
        assert_eq!(a.serial, Some(2026073102));
        assert_eq!(a.nsid.as_deref(), Some("lab-01"));
        assert_eq!(a.rcode.as_deref(), Some("NOERROR"));
    }

    #[test]
    fn not_authoritative_and_silence_are_reported() {
        let s = one_shot(|q| {
            let mut a = RootSoa::good(1, b"");
            a.aa = false;
            a.nsid = None;
            a.answer(&q).unwrap()
        })
        .unwrap();
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
