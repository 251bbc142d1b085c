//! AXFR client over TCP (RFC 5936), blocking.
//!
//! Owns pulling a whole zone from an ordered list of transfer servers with
//! connect and idle timeouts, an overall deadline per transfer (so a server
//! that trickles bytes just fast enough to beat the idle timeout cannot hold
//! a transfer forever), a size limit, fallback to the next server, and
//! the transfer checks: every message answers our query, the transfer opens
//! and closes with the same SOA, and nothing lies outside the zone. The
//! result is only a [`Zone`] in memory: nothing is written here.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use domain::base::iana::{Class, Rcode, Rtype};
use domain::base::{Message, MessageBuilder, Name, ParsedName};
use domain::rdata::ZoneRecordData;

use crate::name::WireName;
use crate::zone::{LoadError, Record, Zone};

/// ICANN's root zone transfer servers, in the order to try them
/// (docs/facts.md, "Distribution"): lax.xfr.dns.icann.org then
/// iad.xfr.dns.icann.org, IPv4 and IPv6 each.
pub const ICANN_XFR_SERVERS: [&str; 4] = [
    "192.0.32.132:53",
    "[2620:0:2d0:202::132]:53",
    "192.0.47.132:53",
    "[2620:0:2830:202::132]:53",
];

/// Default size limit: ~2.2 MB of text is ~1.3 MB of wire data today;
/// allow ample growth.
pub const DEFAULT_MAX_BYTES: usize = 64 * 1024 * 1024;

/// Default overall deadline of one transfer: the root zone takes a few
/// seconds from ICANN's servers; a transfer still running after two minutes
/// is being held open.
pub const DEFAULT_TRANSFER_TIMEOUT: Duration = Duration::from_secs(120);

/// How to transfer.
#[derive(Clone, Debug)]
pub struct AxfrConfig {
    /// Servers, tried in order.
    pub servers: Vec<SocketAddr>,
    /// Zone to transfer.
    pub zone: WireName,
    /// Timeout for the TCP connect.
    pub connect_timeout: Duration,
    /// Timeout for any single read or write.
    pub idle_timeout: Duration,
    /// Longest a whole transfer from one server may take, from the start of
    /// the connect to the closing SOA, however steadily bytes arrive. Each
    /// server tried gets its own.
    pub transfer_timeout: Duration,
    /// Maximum bytes received per transfer.
    pub max_bytes: usize,
}

impl Default for AxfrConfig {
    fn default() -> Self {
        AxfrConfig {
            servers: ICANN_XFR_SERVERS
                .iter()
                .map(|s| s.parse().expect("constant socket address"))
                .collect(),
            zone: WireName::root(),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(10),
            transfer_timeout: DEFAULT_TRANSFER_TIMEOUT,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

/// A completed transfer.
#[derive(Clone, Debug)]
pub struct Transfer {
    /// The zone received.
    pub zone: Zone,
    /// The server it came from.
    pub server: SocketAddr,
    /// Wire bytes received.
    pub bytes: usize,
    /// DNS messages received.
    pub messages: usize,
}

/// Why a transfer from one server failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// TCP connect failed or timed out.
    #[error("connect to {server}")]
    Connect {
        /// The server.
        server: SocketAddr,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Sending the query failed.
    #[error("send query to {server}")]
    Send {
        /// The server.
        server: SocketAddr,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Reading failed or the idle timeout passed.
    #[error("read from {server} after {bytes} bytes")]
    Read {
        /// The server.
        server: SocketAddr,
        /// Bytes received so far.
        bytes: usize,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The transfer was still running when its overall deadline passed.
    #[error(
        "{server}: the transfer did not finish within {} s ({bytes} bytes received)",
        .limit.as_secs_f64()
    )]
    Deadline {
        /// The server.
        server: SocketAddr,
        /// The configured [`AxfrConfig::transfer_timeout`].
        limit: Duration,
        /// Bytes received so far.
        bytes: usize,
    },
    /// The connection closed before the closing SOA.
    #[error("{server} closed the connection mid-transfer after {bytes} bytes")]
    Truncated {
        /// The server.
        server: SocketAddr,
        /// Bytes received.
        bytes: usize,
    },
    /// The size limit was exceeded.
    #[error("{server} sent more than {limit} bytes")]
    TooLarge {
        /// The server.
        server: SocketAddr,
        /// The limit.
        limit: usize,
    },
    /// A message that does not parse or does not answer the query.
    #[error("bad message from {server}: {reason}")]
    BadMessage {
        /// The server.
        server: SocketAddr,
        /// What is wrong.
        reason: String,
    },
    /// The server refused or failed.
    #[error("{server} answered {rcode}")]
    Rcode {
        /// The server.
        server: SocketAddr,
        /// The response code.
        rcode: Rcode,
    },
    /// The first record is not the zone's SOA.
    #[error("transfer from {server} does not start with the SOA of {zone}")]
    NoOpeningSoa {
        /// The server.
        server: SocketAddr,
        /// The zone.
        zone: String,
    },
    /// The closing SOA differs from the opening one.
    #[error("transfer from {server}: closing SOA differs from the opening SOA")]
    SoaMismatch {
        /// The server.
        server: SocketAddr,
    },
    /// Data after the closing SOA.
    #[error("transfer from {server}: records after the closing SOA")]
    TrailingData {
        /// The server.
        server: SocketAddr,
    },
    /// A record outside the zone.
    #[error("transfer from {server}: record {owner} {rtype} is outside the zone")]
    OutOfZone {
        /// The server.
        server: SocketAddr,
        /// Owner name.
        owner: String,
        /// Type.
        rtype: Rtype,
    },
    /// The records do not form a zone.
    #[error("transfer from {server} does not form a zone")]
    Zone {
        /// The server.
        server: SocketAddr,
        /// The cause.
        #[source]
        source: LoadError,
    },
}

/// Every server failed.
#[derive(Debug, thiserror::Error)]
pub enum AxfrError {
    /// No server given.
    #[error("no transfer server configured")]
    NoServers,
    /// All servers failed; the last failure is the source, all are listed.
    #[error("all {} transfer servers failed: {}", .failures.len(), summary(.failures))]
    AllFailed {
        /// One failure per server, in order.
        failures: Vec<ServerError>,
    },
}

fn summary(failures: &[ServerError]) -> String {
    failures
        .iter()
        .map(|f| {
            let mut s = f.to_string();
            let mut src = std::error::Error::source(f);
            while let Some(e) = src {
                s.push_str(": ");
                s.push_str(&e.to_string());
                src = e.source();
            }
            s
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Transfers the zone from the first server that delivers a complete,
/// consistent transfer.
pub fn transfer(config: &AxfrConfig) -> Result<Transfer, AxfrError> {
    if config.servers.is_empty() {
        return Err(AxfrError::NoServers);
    }
    let mut failures = Vec::new();
    for &server in &config.servers {
        match transfer_from(server, config) {
            Ok(t) => return Ok(t),
            Err(e) => failures.push(e),
        }
    }
    Err(AxfrError::AllFailed { failures })
}

/// Transfers the zone from one server.
pub fn transfer_from(server: SocketAddr, config: &AxfrConfig) -> Result<Transfer, ServerError> {
    let clock = Clock {
        deadline: Instant::now() + config.transfer_timeout,
        idle: config.idle_timeout,
    };
    let deadline = |bytes| ServerError::Deadline {
        server,
        limit: config.transfer_timeout,
        bytes,
    };
    let connect_timeout = clock.next(config.connect_timeout).ok_or(deadline(0))?;
    let mut stream = TcpStream::connect_timeout(&server, connect_timeout)
        .map_err(|source| ServerError::Connect { server, source })?;
    let write_timeout = clock.next(config.idle_timeout).ok_or(deadline(0))?;
    let set = |s: &TcpStream| -> io::Result<()> {
        s.set_write_timeout(Some(write_timeout))?;
        s.set_nodelay(true)
    };
    set(&stream).map_err(|source| ServerError::Connect { server, source })?;

    let id = query_id();
    let zone_name =
        Name::from_octets(config.zone.as_wire().to_vec()).map_err(|_| ServerError::BadMessage {
            server,
            reason: "bad zone name".into(),
        })?;
    let mut builder = MessageBuilder::new_stream_vec();
    builder.header_mut().set_id(id);
    let mut q = builder.question();
    q.push((&zone_name, Rtype::AXFR, Class::IN))
        .map_err(|_| ServerError::BadMessage {
            server,
            reason: "cannot build query".into(),
        })?;
    let query = q.finish();
    stream
        .write_all(query.as_stream_slice())
        .map_err(|source| ServerError::Send { server, source })?;

    let mut records: Vec<Record> = Vec::new();
    let mut opening: Option<Record> = None;
    let mut closed = false;
    let mut bytes = 0usize;
    let mut messages = 0usize;
    let mut len_buf = [0u8; 2];
    let read_failed = |failure, bytes| match failure {
        ReadFailure::Deadline => deadline(bytes),
        ReadFailure::Io(source) => ServerError::Read {
            server,
            bytes,
            source,
        },
    };
    while !closed {
        match read_exact_or_eof(&mut stream, &mut len_buf, &clock) {
            Ok(true) => {}
            Ok(false) => return Err(ServerError::Truncated { server, bytes }),
            Err(failure) => return Err(read_failed(failure, bytes)),
        }
        let len = u16::from_be_bytes(len_buf) as usize;
        bytes += 2 + len;
        if bytes > config.max_bytes {
            return Err(ServerError::TooLarge {
                server,
                limit: config.max_bytes,
            });
        }
        let mut buf = vec![0u8; len];
        match read_exact_or_eof(&mut stream, &mut buf, &clock) {
            Ok(true) => {}
            Ok(false) => return Err(ServerError::Truncated { server, bytes }),
            Err(failure) => return Err(read_failed(failure, bytes)),
        }
        messages += 1;
        let bad = |reason: &str| ServerError::BadMessage {
            server,
            reason: reason.to_owned(),
        };
        let msg = Message::from_octets(buf).map_err(|_| bad("short message"))?;
        let header = msg.header();
        if header.id() != id || !header.qr() {
            return Err(bad("not a response to our query (ID or QR)"));
        }
        if header.tc() {
            return Err(bad("TC bit set on TCP"));
        }
        if header.rcode() != Rcode::NOERROR {
            return Err(ServerError::Rcode {
                server,
                rcode: header.rcode(),
            });
        }
        let answer = msg
            .answer()
            .map_err(|_| bad("malformed question section"))?;
        for rr in answer {
            let rr = rr.map_err(|_| bad("malformed record"))?;
            if closed {
                return Err(ServerError::TrailingData { server });
            }
            let parsed = rr
                .to_record::<ZoneRecordData<_, ParsedName<_>>>()
                .map_err(|_| bad("malformed record data"))?
                .ok_or_else(|| bad("unparseable record data"))?;
            let record = Record::from_domain(
                parsed.owner(),
                parsed.rtype(),
                parsed.class(),
                parsed.ttl().as_secs(),
                parsed.data(),
            )
            .map_err(|source| ServerError::Zone { server, source })?;
            if !record.owner.is_at_or_below(&config.zone) {
                return Err(ServerError::OutOfZone {
                    server,
                    owner: record.owner.to_string(),
                    rtype: record.rtype,
                });
            }
            match &opening {
                None => {
                    if record.rtype != Rtype::SOA || record.owner != config.zone {
                        return Err(ServerError::NoOpeningSoa {
                            server,
                            zone: config.zone.to_string(),
                        });
                    }
                    opening = Some(record.clone());
                    records.push(record);
                }
                Some(open) => {
                    if record.rtype == Rtype::SOA && record.owner == config.zone {
                        if record != *open {
                            return Err(ServerError::SoaMismatch { server });
                        }
                        closed = true;
                    } else {
                        records.push(record);
                    }
                }
            }
        }
    }
    let zone =
        Zone::from_records(records).map_err(|source| ServerError::Zone { server, source })?;
    Ok(Transfer {
        zone,
        server,
        bytes,
        messages,
    })
}

/// The two limits on waiting: each read, and the whole transfer.
struct Clock {
    deadline: Instant,
    idle: Duration,
}

impl Clock {
    /// How long the next step may wait: `step`, cut to what is left before
    /// the deadline; `None` once the deadline has passed.
    fn next(&self, step: Duration) -> Option<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        (!left.is_zero()).then(|| step.min(left))
    }
}

/// Why a read stopped.
enum ReadFailure {
    /// The transfer's deadline passed.
    Deadline,
    /// The socket failed or the idle timeout passed.
    Io(io::Error),
}

/// Fills `buf`; `Ok(false)` on a clean EOF before the first byte or midway.
/// Every read waits at most the idle timeout and never past the deadline.
fn read_exact_or_eof(
    stream: &mut TcpStream,
    buf: &mut [u8],
    clock: &Clock,
) -> Result<bool, ReadFailure> {
    let mut got = 0;
    while got < buf.len() {
        let wait = clock.next(clock.idle).ok_or(ReadFailure::Deadline)?;
        stream
            .set_read_timeout(Some(wait))
            .map_err(ReadFailure::Io)?;
        match stream.read(&mut buf[got..]) {
            Ok(0) => return Ok(false),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) && clock.next(clock.idle).is_none() =>
            {
                return Err(ReadFailure::Deadline);
            }
            Err(e) => return Err(ReadFailure::Io(e)),
        }
    }
    Ok(true)
}

/// A query ID that is not trivially predictable (no RNG dependency: hash of
/// the clock and the process id through std's randomly keyed hasher).
fn query_id() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish() as u16
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    /// A loopback server that answers the first connection's query with a message length and
    /// then one byte every `every`, for at most `for_at_most`, like a server holding a transfer
    /// open just fast enough to beat any idle timeout.
    fn trickler(every: Duration, for_at_most: Duration) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let Ok((mut s, _)) = l.accept() else { return };
            let mut len = [0u8; 2];
            if s.read_exact(&mut len).is_err() {
                return;
            }
            let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
            if s.read_exact(&mut q).is_err() {
                return;
            }
            let start = Instant::now();
            // Promises a 4096-byte message, then sends it a byte at a time.
            if s.write_all(&[0x10, 0x00]).is_err() {
                return;
            }
            while start.elapsed() < for_at_most {
                std::thread::sleep(every);
                if s.write_all(&[0]).is_err() {
                    return;
                }
            }
        });
        addr
    }

    #[test]
    fn a_trickling_server_cannot_hold_a_transfer_past_its_deadline() {
        let server = trickler(Duration::from_millis(50), Duration::from_secs(8));
        let config = AxfrConfig {
            servers: vec![server],
            idle_timeout: Duration::from_secs(1),
            transfer_timeout: Duration::from_millis(1500),
            ..AxfrConfig::default()
        };
        let start = Instant::now();
        let err = transfer_from(server, &config).unwrap_err();
        let took = start.elapsed();
        match &err {
            ServerError::Deadline { limit, bytes, .. } => {
                assert_eq!(*limit, Duration::from_millis(1500));
                assert!(*bytes > 0, "{err}");
            }
            other => panic!("expected the deadline, got: {other}"),
        }
        assert!(
            took >= Duration::from_millis(1400) && took < Duration::from_secs(4),
            "took {took:?}"
        );
        assert!(
            err.to_string()
                .contains("the transfer did not finish within 1.5 s"),
            "{err}"
        );
    }

    #[test]
    fn the_deadline_cuts_the_connect_and_idle_waits_short() {
        // A server that accepts and says nothing: the idle timeout (5 s) would end it later
        // than the deadline (0.5 s).
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let server = l.local_addr().unwrap();
        let config = AxfrConfig {
            servers: vec![server],
            idle_timeout: Duration::from_secs(5),
            transfer_timeout: Duration::from_millis(500),
            ..AxfrConfig::default()
        };
        let start = Instant::now();
        let err = transfer_from(server, &config).unwrap_err();
        assert!(matches!(err, ServerError::Deadline { .. }), "{err}");
        assert!(start.elapsed() < Duration::from_secs(2), "{err}");
        drop(l);
    }
}
