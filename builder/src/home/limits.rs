//! Per-client limits of the receiver, so that one client (an IPv4 address or an IPv6 /64,
//! [`Source`]) cannot crowd out the others:
//!
//! - at most [`ClientLimits::connections`] open connections per client; a connection past that
//!   is closed as soon as it is accepted, before any TLS work;
//! - a token bucket per client ([`ClientLimits::burst`] tokens, refilled at
//!   [`ClientLimits::rate`] per second): each accepted connection and each request takes one.
//!   A connection that finds the bucket empty is closed at once; a request gets `429` with
//!   `Retry-After` and the connection is closed after it.
//!
//! The table of clients is bounded: clients with no open connection and a full bucket are
//! forgotten (they would start afresh anyway), and when more than [`MAX_TRACKED`] are known,
//! every client without an open connection is. Clients with open connections are bounded by the
//! receiver's global connection cap.
//!
//! Refusals are logged at most once per client per [`LOG_EVERY`], with the count since.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::source::Source;

/// Clients tracked before those without an open connection are forgotten.
pub const MAX_TRACKED: usize = 65_536;
/// Refusals of one client are logged at most this often.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Default of [`ClientLimits::connections`].
pub const DEFAULT_CONNECTIONS: usize = 16;
/// Default of [`ClientLimits::rate`].
pub const DEFAULT_RATE: f64 = 2.0;
/// Default of [`ClientLimits::burst`].
pub const DEFAULT_BURST: u32 = 60;

/// What one client may do.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClientLimits {
    /// Open connections at once.
    pub connections: usize,
    /// Tokens added per second (connections and requests).
    pub rate: f64,
    /// Bucket size: the burst a client may send after a quiet time.
    pub burst: u32,
}

impl Default for ClientLimits {
    fn default() -> ClientLimits {
        ClientLimits {
            connections: DEFAULT_CONNECTIONS,
            rate: DEFAULT_RATE,
            burst: DEFAULT_BURST,
        }
    }
}

impl ClientLimits {
    /// No per-client limit (benchmarks that drive the receiver from one address).
    pub fn unlimited() -> ClientLimits {
        ClientLimits {
            connections: usize::MAX,
            rate: f64::INFINITY,
            burst: u32::MAX,
        }
    }
}

/// Why a client was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// It has [`ClientLimits::connections`] open already.
    Connections,
    /// Its bucket is empty.
    Rate,
}

impl Refusal {
    /// For logs.
    pub fn describe(self) -> &'static str {
        match self {
            Refusal::Connections => "too many open connections",
            Refusal::Rate => "rate limit",
        }
    }
}

#[derive(Debug)]
struct Client {
    open: usize,
    tokens: f64,
    at: Instant,
    refused: u64,
    logged: Option<Instant>,
}

impl Client {
    fn new(limits: &ClientLimits, now: Instant) -> Client {
        Client {
            open: 0,
            tokens: f64::from(limits.burst),
            at: now,
            refused: 0,
            logged: None,
        }
    }

    fn refill(&mut self, limits: &ClientLimits, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        let burst = f64::from(limits.burst);
        if limits.rate.is_infinite() {
            self.tokens = burst;
        } else {
            self.tokens = (self.tokens + dt * limits.rate).min(burst);
        }
        self.at = now;
    }

    fn take(&mut self, limits: &ClientLimits, now: Instant) -> bool {
        self.refill(limits, now);
        if limits.rate.is_infinite() {
            return true;
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The per-client state of a running receiver.
#[derive(Debug)]
pub struct Clients {
    limits: ClientLimits,
    table: Mutex<HashMap<Source, Client>>,
}

/// An admitted connection; it counts as open until dropped.
#[derive(Debug)]
pub struct Admitted {
    clients: Arc<Clients>,
    source: Source,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Ok(mut t) = self.clients.table.lock()
            && let Some(c) = t.get_mut(&self.source)
        {
            c.open = c.open.saturating_sub(1);
        }
    }
}

/// A refusal and, when it is time to log one, the number of refusals since the last log line.
pub type Refused = (Refusal, Option<u64>);

impl Clients {
    /// An empty table with these limits.
    pub fn new(limits: ClientLimits) -> Arc<Clients> {
        Arc::new(Clients {
            limits,
            table: Mutex::new(HashMap::new()),
        })
    }

    /// The limits.
    pub fn limits(&self) -> &ClientLimits {
        &self.limits
    }

    /// A new connection from `source`: admitted (counted until dropped) or refused.
    pub fn admit(self: &Arc<Self>, source: Source) -> Result<Admitted, Refused> {
        self.admit_at(source, Instant::now())
    }

    fn admit_at(self: &Arc<Self>, source: Source, now: Instant) -> Result<Admitted, Refused> {
        let Ok(mut t) = self.table.lock() else {
            return Err((Refusal::Rate, None));
        };
        if t.len() >= MAX_TRACKED {
            forget(&mut t, &self.limits, now);
        }
        let c = t
            .entry(source)
            .or_insert_with(|| Client::new(&self.limits, now));
        let refusal = if c.open >= self.limits.connections {
            Refusal::Connections
        } else if !c.take(&self.limits, now) {
            Refusal::Rate
        } else {
            c.open += 1;
            return Ok(Admitted {
                clients: self.clone(),
                source,
            });
        };
        Err((refusal, note_refusal(c, now)))
    }

    /// A request from `source` on an admitted connection: `Ok` or refused for its rate.
    pub fn request(&self, source: Source) -> Result<(), Refused> {
        self.request_at(source, Instant::now())
    }

    fn request_at(&self, source: Source, now: Instant) -> Result<(), Refused> {
        let Ok(mut t) = self.table.lock() else {
            return Err((Refusal::Rate, None));
        };
        let c = t
            .entry(source)
            .or_insert_with(|| Client::new(&self.limits, now));
        if c.take(&self.limits, now) {
            Ok(())
        } else {
            Err((Refusal::Rate, note_refusal(c, now)))
        }
    }

    /// Seconds until `source` has a token again (for `Retry-After`), at least 1.
    pub fn retry_after(&self) -> u64 {
        if self.limits.rate > 0.0 && self.limits.rate.is_finite() {
            (1.0 / self.limits.rate).ceil().clamp(1.0, 3600.0) as u64
        } else {
            3600
        }
    }

    /// Number of clients tracked.
    pub fn tracked(&self) -> usize {
        self.table.lock().map(|t| t.len()).unwrap_or(0)
    }
}

/// Counts a refusal; returns the count to log when a log line is due.
fn note_refusal(c: &mut Client, now: Instant) -> Option<u64> {
    c.refused += 1;
    let due = c
        .logged
        .is_none_or(|t| now.saturating_duration_since(t) >= LOG_EVERY);
    if due {
        c.logged = Some(now);
        let n = c.refused;
        c.refused = 0;
        Some(n)
    } else {
        None
    }
}

/// Forgets clients that would start afresh anyway (no open connection, bucket full); if that is
/// not enough, every client without an open connection.
fn forget(t: &mut HashMap<Source, Client>, limits: &ClientLimits, now: Instant) {
    t.retain(|_, c| {
        c.refill(limits, now);
        c.open > 0 || c.tokens < f64::from(limits.burst)
    });
    if t.len() >= MAX_TRACKED {
        t.retain(|_, c| c.open > 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(s: &str) -> Source {
        Source::from(s.parse::<std::net::IpAddr>().unwrap())
    }

    #[test]
    fn caps_open_connections_per_client() {
        let clients = Clients::new(ClientLimits {
            connections: 2,
            rate: 1000.0,
            burst: 1000,
        });
        let now = Instant::now();
        let a = src("192.0.2.1");
        let c1 = clients.admit_at(a, now).unwrap();
        let _c2 = clients.admit_at(a, now).unwrap();
        let (why, log) = clients.admit_at(a, now).unwrap_err();
        assert_eq!((why, log), (Refusal::Connections, Some(1)));
        // Logged once per LOG_EVERY, with the count since.
        assert_eq!(clients.admit_at(a, now).unwrap_err().1, None);
        // Another client is not affected, nor is another /64's neighbour.
        let _b = clients.admit_at(src("192.0.2.2"), now).unwrap();
        drop(c1);
        let _c3 = clients.admit_at(a, now).unwrap();
        let (_, log) = clients
            .admit_at(a, now + LOG_EVERY)
            .expect_err("still two open");
        assert_eq!(log, Some(2));
        // One IPv6 /64 is one client.
        let _v6 = clients.admit_at(src("2001:db8::1"), now).unwrap();
        let _v6b = clients.admit_at(src("2001:db8::2"), now).unwrap();
        assert_eq!(
            clients.admit_at(src("2001:db8::3"), now).unwrap_err().0,
            Refusal::Connections
        );
        assert!(clients.admit_at(src("2001:db8:0:1::3"), now).is_ok());
    }

    #[test]
    fn token_bucket_per_client_refills_at_the_rate() {
        let clients = Clients::new(ClientLimits {
            connections: 100,
            rate: 2.0,
            burst: 5,
        });
        let t0 = Instant::now();
        let a = src("198.51.100.7");
        let conn = clients.admit_at(a, t0).unwrap();
        for _ in 0..4 {
            clients.request_at(a, t0).unwrap();
        }
        assert_eq!(clients.request_at(a, t0).unwrap_err().0, Refusal::Rate);
        assert_eq!(clients.admit_at(a, t0).unwrap_err().0, Refusal::Rate);
        // Someone else still has a full bucket.
        clients.request_at(src("198.51.100.8"), t0).unwrap();
        // Half a second is one token at 2/s.
        let t1 = t0 + Duration::from_millis(500);
        clients.request_at(a, t1).unwrap();
        assert!(clients.request_at(a, t1).is_err());
        // Refills up to the burst, no more.
        let t2 = t1 + Duration::from_secs(3600);
        for _ in 0..5 {
            clients.request_at(a, t2).unwrap();
        }
        assert!(clients.request_at(a, t2).is_err());
        assert_eq!(clients.retry_after(), 1);
        drop(conn);
        let free = Clients::new(ClientLimits::unlimited());
        for _ in 0..10_000 {
            free.request_at(a, t0).unwrap();
        }
    }

    #[test]
    fn the_table_forgets_idle_clients_when_full() {
        let clients = Clients::new(ClientLimits {
            connections: 4,
            rate: 1.0,
            burst: 2,
        });
        let t0 = Instant::now();
        let busy = clients.admit_at(src("192.0.2.1"), t0).unwrap();
        for i in 0..MAX_TRACKED as u32 {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            clients.request_at(Source::V4(ip), t0).unwrap();
        }
        assert_eq!(clients.tracked(), MAX_TRACKED + 1);
        // Full: the next new client makes room; the one with an open connection stays.
        let _n = clients.admit_at(src("192.0.2.99"), t0).unwrap();
        assert_eq!(clients.tracked(), 2);
        drop(busy);
    }
}
