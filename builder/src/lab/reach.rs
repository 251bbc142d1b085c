//! The appliance's closed face probed from the router side (issue 18): TCP connections that the
//! packet filter must leave unanswered (no SYN-ACK, no reset): BGP from an address on the lab's
//! link that is not a configured neighbour, BGP to a service address, and other ports on the
//! management and service addresses. DNS answering is the `. SOA` probes' part. Run from a
//! thread inside the lab's namespace; the probes run side by side, so the whole costs one
//! timeout.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Serialize;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::plan::Plan;

/// What a TCP connection attempt met.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The handshake completed: something answers.
    Connected,
    /// A reset came back (a closed port, unfiltered).
    Refused,
    /// Nothing came back before the timeout (filtered).
    Silent,
    /// The probe itself failed (binding the source, no route).
    Error(String),
}

/// One probe and what it met.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Probe {
    /// What is probed, in words.
    pub what: String,
    /// Source address (on the lab's link).
    pub from: IpAddr,
    /// Destination.
    pub to: SocketAddr,
    /// Result.
    pub outcome: Outcome,
}

/// One TCP connection attempt from `from` to `to`.
pub fn tcp(from: IpAddr, to: SocketAddr, timeout: Duration) -> Outcome {
    let attempt = || -> std::io::Result<()> {
        let s = Socket::new(Domain::for_address(to), Type::STREAM, Some(Protocol::TCP))?;
        s.bind(&SockAddr::from(SocketAddr::new(from, 0)))?;
        s.connect_timeout(&SockAddr::from(to), timeout)
    };
    match attempt() {
        Ok(()) => Outcome::Connected,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Outcome::Refused,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            ) =>
        {
            Outcome::Silent
        }
        Err(e) => Outcome::Error(e.to_string()),
    }
}

/// The probes for a lab plan, each expected [`Outcome::Silent`].
pub fn planned(plan: &Plan) -> Vec<(String, IpAddr, SocketAddr)> {
    let mgmt4 = plan.guest_v4.addr();
    let mgmt6 = plan.guest_v6.addr();
    let svc4 = IpAddr::from(plan.service_v4);
    let svc6 = IpAddr::from(plan.service_v6);
    let router4 = IpAddr::from(plan.router_v4);
    let router6 = IpAddr::from(plan.router_v6);
    let mut out = Vec::new();
    // An address on the link that is not a neighbour: the transfer server's.
    for x in &plan.xfr {
        if plan.neighbors.contains(&x.ip()) {
            continue;
        }
        let to = if x.is_ipv4() { mgmt4 } else { mgmt6 };
        out.push((
            "BGP from a non-neighbour".to_string(),
            x.ip(),
            SocketAddr::new(to, 179),
        ));
    }
    for (from, svc) in [(router4, svc4), (router6, svc6)] {
        out.push((
            "BGP to a service address".into(),
            from,
            SocketAddr::new(svc, 179),
        ));
        out.push((
            "SSH to a service address".into(),
            from,
            SocketAddr::new(svc, 22),
        ));
    }
    for (from, to) in [(router4, mgmt4), (router6, mgmt6)] {
        for port in [22, 443, 8080] {
            out.push((
                format!("TCP {port} to the management address"),
                from,
                SocketAddr::new(to, port),
            ));
        }
    }
    out
}

/// Runs `probes` side by side (call from inside the lab's namespace: threads inherit it).
pub fn run(probes: Vec<(String, IpAddr, SocketAddr)>, timeout: Duration) -> Vec<Probe> {
    std::thread::scope(|s| {
        let handles: Vec<_> = probes
            .into_iter()
            .map(|(what, from, to)| {
                s.spawn(move || Probe {
                    outcome: tcp(from, to, timeout),
                    what,
                    from,
                    to,
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| Probe {
                    what: "probe thread".into(),
                    from: IpAddr::from([0, 0, 0, 0]),
                    to: SocketAddr::from(([0, 0, 0, 0], 0)),
                    outcome: Outcome::Error("panicked".into()),
                })
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_on_loopback() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = l.local_addr().unwrap();
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(tcp(lo, open, Duration::from_secs(2)), Outcome::Connected);
        drop(l);
        assert_eq!(tcp(lo, open, Duration::from_secs(2)), Outcome::Refused);
        // A source address this host does not have.
        let e = tcp(
            "192.0.2.254".parse().unwrap(),
            open,
            Duration::from_millis(200),
        );
        assert!(matches!(e, Outcome::Error(_)), "{e:?}");
    }
}
