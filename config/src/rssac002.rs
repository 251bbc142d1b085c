//! RSSAC002 daily metrics (the ones every root server operator publishes): what one box counts
//! in a UTC day, how days from several boxes merge, and the YAML documents in the published
//! layout (rssac-caucus/RSSAC002-data: `YYYY/MM/<metric>/l-root-YYYYMMDD-<metric>.yaml`, each
//! starting `version`, `service`, `start-period`, `metric`).
//!
//! - Volumes and size histograms are plain counters; merging adds them. Sizes are DNS message
//!   sizes (over TCP without the two-octet length) in 16-byte bins, requests open-ended from
//!   288 bytes, responses from 4096; a bin that saw nothing is not written, an empty histogram
//!   is written `{}`.
//! - Unique sources cannot be added across boxes: each box keeps, per address family (and per
//!   IPv6 /64), a [`Sources`] set of 64-bit keyed hashes of the addresses (the key is the
//!   fleet's, so the same address hashes alike on every box and no address leaves the box in
//!   clear), exact up to [`SPARSE_MAX`] sources and a HyperLogLog sketch of 2^14 one-byte
//!   registers beyond (16 KiB whatever the traffic; standard error 1.04/sqrt(2^14) = 0.81%).
//!   Merging is the union (exact while the union stays small, register maximum once dense).
//! - Load time: per serial, seconds from when the box first saw it to when it served it; across
//!   boxes RSSAC002 asks for the 95th percentile, which [`load_time_p95`] gives.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The document version written.
pub const VERSION: &str = "rssac002v5";
/// The service L-root publishes for.
pub const SERVICE: &str = "l.root-servers.net";
/// The root server letter in file names.
pub const LETTER: char = 'l';
/// Bin width of the size histograms.
pub const BIN: u32 = 16;
/// Requests this size or larger share the open-ended bin.
pub const REQUEST_OPEN: u32 = 288;
/// Responses this size or larger share the open-ended bin.
pub const RESPONSE_OPEN: u32 = 4096;
/// Distinct sources kept exactly (as hashes) before the set becomes a sketch.
pub const SPARSE_MAX: usize = 4096;
/// HyperLogLog precision: 2^14 registers.
const P: u32 = 14;
const REGISTERS: usize = 1 << P;

/// Transport of a query or response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// UDP.
    Udp,
    /// TCP (sizes without the length prefix).
    Tcp,
}

/// A metric RSSAC002 defines (the ones a box measures; `zone-size` is the root zone
/// maintainer's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Queries received and responses sent, by transport and family.
    TrafficVolume,
    /// Request and response size histograms.
    TrafficSizes,
    /// Responses by response code.
    RcodeVolume,
    /// Distinct source addresses.
    UniqueSources,
    /// Seconds to load each new serial.
    LoadTime,
}

impl Metric {
    /// Every metric, in the order they are written.
    pub const ALL: [Metric; 5] = [
        Metric::TrafficVolume,
        Metric::TrafficSizes,
        Metric::RcodeVolume,
        Metric::UniqueSources,
        Metric::LoadTime,
    ];

    /// Its name in documents and paths.
    pub fn name(self) -> &'static str {
        match self {
            Metric::TrafficVolume => "traffic-volume",
            Metric::TrafficSizes => "traffic-sizes",
            Metric::RcodeVolume => "rcode-volume",
            Metric::UniqueSources => "unique-sources",
            Metric::LoadTime => "load-time",
        }
    }
}

/// A size histogram: count per bin, keyed by the bin's lower bound.
pub type Histogram = BTreeMap<u32, u64>;

/// The bin (lower bound) of a message of `size` bytes, the open bin starting at `open`.
pub fn bin_of(size: usize, open: u32) -> u32 {
    let s = u32::try_from(size).unwrap_or(u32::MAX);
    if s >= open { open } else { s / BIN * BIN }
}

/// One direction's counters for one transport: `[IPv4, IPv6]`.
type ByFamily = [u64; 2];

/// What one box (or a merged fleet) counted in one UTC day.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DayMetrics {
    /// Queries received over UDP, `[v4, v6]`.
    pub udp_queries: ByFamily,
    /// Queries received over TCP.
    pub tcp_queries: ByFamily,
    /// Responses sent over UDP.
    pub udp_responses: ByFamily,
    /// Responses sent over TCP.
    pub tcp_responses: ByFamily,
    /// Request sizes over UDP.
    #[serde(with = "pairs")]
    pub udp_request_sizes: Histogram,
    /// Response sizes over UDP.
    #[serde(with = "pairs")]
    pub udp_response_sizes: Histogram,
    /// Request sizes over TCP.
    #[serde(with = "pairs")]
    pub tcp_request_sizes: Histogram,
    /// Response sizes over TCP.
    #[serde(with = "pairs")]
    pub tcp_response_sizes: Histogram,
    /// Responses sent by response code (extended codes included).
    #[serde(with = "pairs")]
    pub rcodes: BTreeMap<u16, u64>,
    /// Distinct IPv4 sources.
    pub sources_v4: Sources,
    /// Distinct IPv6 sources.
    pub sources_v6: Sources,
    /// Distinct IPv6 /64 prefixes.
    pub sources_v6_64: Sources,
    /// Seconds to load each serial (for one box; a merge keeps every box's, see
    /// [`load_time_p95`]).
    #[serde(with = "pairs")]
    pub load_time: BTreeMap<u32, Vec<u64>>,
}

fn family(addr: &IpAddr) -> usize {
    usize::from(addr.is_ipv6())
}

impl DayMetrics {
    /// Counts a query of `size` bytes received from `source` over `transport`, the source
    /// hashed with `key` (the fleet's).
    pub fn query(&mut self, transport: Transport, source: IpAddr, size: usize, key: &SourceKey) {
        let f = family(&source);
        let (count, sizes) = match transport {
            Transport::Udp => (&mut self.udp_queries, &mut self.udp_request_sizes),
            Transport::Tcp => (&mut self.tcp_queries, &mut self.tcp_request_sizes),
        };
        count[f] += 1;
        *sizes.entry(bin_of(size, REQUEST_OPEN)).or_default() += 1;
        match source {
            IpAddr::V4(a) => self.sources_v4.insert(key.hash(4, &a.octets())),
            IpAddr::V6(a) => {
                let o = a.octets();
                self.sources_v6.insert(key.hash(6, &o));
                self.sources_v6_64.insert(key.hash(64, &o[..8]));
            }
        }
    }

    /// Counts a response of `size` bytes with (extended) response code `rcode` sent to a client
    /// of `client`'s family over `transport`.
    pub fn response(&mut self, transport: Transport, client: IpAddr, size: usize, rcode: u16) {
        let f = family(&client);
        let (count, sizes) = match transport {
            Transport::Udp => (&mut self.udp_responses, &mut self.udp_response_sizes),
            Transport::Tcp => (&mut self.tcp_responses, &mut self.tcp_response_sizes),
        };
        count[f] += 1;
        *sizes.entry(bin_of(size, RESPONSE_OPEN)).or_default() += 1;
        *self.rcodes.entry(rcode).or_default() += 1;
    }

    /// Adds another box's (or day part's) metrics: counters add (saturating: a device's claims
    /// cannot overflow the fleet's sum), sources unite, load times are kept side by side.
    pub fn merge(&mut self, other: &DayMetrics) {
        for (a, b) in [
            (&mut self.udp_queries, &other.udp_queries),
            (&mut self.tcp_queries, &other.tcp_queries),
            (&mut self.udp_responses, &other.udp_responses),
            (&mut self.tcp_responses, &other.tcp_responses),
        ] {
            a[0] = a[0].saturating_add(b[0]);
            a[1] = a[1].saturating_add(b[1]);
        }
        for (a, b) in [
            (&mut self.udp_request_sizes, &other.udp_request_sizes),
            (&mut self.udp_response_sizes, &other.udp_response_sizes),
            (&mut self.tcp_request_sizes, &other.tcp_request_sizes),
            (&mut self.tcp_response_sizes, &other.tcp_response_sizes),
        ] {
            for (k, v) in b {
                let e = a.entry(*k).or_default();
                *e = e.saturating_add(*v);
            }
        }
        for (k, v) in &other.rcodes {
            let e = self.rcodes.entry(*k).or_default();
            *e = e.saturating_add(*v);
        }
        self.sources_v4.merge(&other.sources_v4);
        self.sources_v6.merge(&other.sources_v6);
        self.sources_v6_64.merge(&other.sources_v6_64);
        for (serial, secs) in &other.load_time {
            self.load_time
                .entry(*serial)
                .or_default()
                .extend(secs.iter().copied());
        }
    }
}

/// The 95th percentile (nearest rank) of each serial's load times: what RSSAC002 publishes for
/// an operator's instances.
pub fn load_time_p95(load: &BTreeMap<u32, Vec<u64>>) -> BTreeMap<u32, u64> {
    load.iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(serial, v)| {
            let mut v = v.clone();
            v.sort_unstable();
            // Nearest rank: ceil(0.95 n), 1-based.
            let rank = (v.len() * 95).div_ceil(100).max(1);
            (*serial, v[rank - 1])
        })
        .collect()
}

/// The fleet's key for hashing source addresses (so that sets from different boxes unite, and
/// no address can be read back without it).
#[derive(Clone)]
pub struct SourceKey([u8; 32]);

impl SourceKey {
    /// A key from 32 secret bytes.
    pub fn new(bytes: [u8; 32]) -> SourceKey {
        SourceKey(bytes)
    }

    /// The 64-bit hash of `addr` in domain `tag` (4, 6 or 64).
    pub fn hash(&self, tag: u8, addr: &[u8]) -> u64 {
        let d = Sha256::new()
            .chain_update(self.0)
            .chain_update([tag])
            .chain_update(addr)
            .finalize();
        let mut b = [0u8; 8];
        b.copy_from_slice(&d[..8]);
        u64::from_be_bytes(b)
    }
}

impl std::fmt::Debug for SourceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SourceKey(..)")
    }
}

/// A set of distinct sources, as keyed hashes: exact while small, a HyperLogLog sketch beyond
/// [`SPARSE_MAX`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "form", content = "data")]
pub enum Sources {
    /// The hashes themselves, sorted.
    Exact(BTreeSet<u64>),
    /// 2^14 HyperLogLog registers, hex.
    Sketch(#[serde(with = "hex_registers")] Vec<u8>),
}

impl Default for Sources {
    fn default() -> Sources {
        Sources::Exact(BTreeSet::new())
    }
}

/// Maps with number keys as `[[key, value], ...]` (JSON object keys are strings, and a report is
/// read through a JSON value, which does not turn them back into numbers).
mod pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<K: Serialize, V: Serialize, S: Serializer>(
        m: &BTreeMap<K, V>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(m.iter())
    }

    pub fn deserialize<'de, K, V, D>(d: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        let list = Vec::<(K, V)>::deserialize(d)?;
        let n = list.len();
        let m: BTreeMap<K, V> = list.into_iter().collect();
        if m.len() != n {
            return Err(serde::de::Error::custom("a key appears twice"));
        }
        Ok(m)
    }
}

mod hex_registers {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(r: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(r))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        let r = hex::decode(&text).map_err(serde::de::Error::custom)?;
        if r.len() != super::REGISTERS || r.iter().any(|&v| v > 64 - super::P as u8 + 1) {
            return Err(serde::de::Error::custom(format!(
                "a sketch is {} registers of at most {}",
                super::REGISTERS,
                64 - super::P + 1
            )));
        }
        Ok(r)
    }
}

/// Register index and rank of a hash.
fn slot(h: u64) -> (usize, u8) {
    let index = (h >> (64 - P)) as usize;
    let rest = (h << P) | (1 << (P - 1));
    (index, (rest.leading_zeros() + 1) as u8)
}

impl Sources {
    /// Adds a source's hash.
    pub fn insert(&mut self, h: u64) {
        match self {
            Sources::Exact(set) => {
                set.insert(h);
                if set.len() > SPARSE_MAX {
                    *self = Sources::Sketch(Self::registers(set.iter().copied()));
                }
            }
            Sources::Sketch(r) => {
                let (i, rank) = slot(h);
                r[i] = r[i].max(rank);
            }
        }
    }

    fn registers(hashes: impl Iterator<Item = u64>) -> Vec<u8> {
        let mut r = vec![0u8; REGISTERS];
        for h in hashes {
            let (i, rank) = slot(h);
            r[i] = r[i].max(rank);
        }
        r
    }

    /// The union with `other`.
    pub fn merge(&mut self, other: &Sources) {
        match (&mut *self, other) {
            (Sources::Exact(a), Sources::Exact(b)) => {
                a.extend(b.iter().copied());
                if a.len() > SPARSE_MAX {
                    *self = Sources::Sketch(Self::registers(a.iter().copied()));
                }
            }
            (Sources::Exact(a), Sources::Sketch(b)) => {
                let mut r = b.clone();
                for h in a.iter() {
                    let (i, rank) = slot(*h);
                    r[i] = r[i].max(rank);
                }
                *self = Sources::Sketch(r);
            }
            (Sources::Sketch(r), Sources::Exact(b)) => {
                for h in b {
                    let (i, rank) = slot(*h);
                    r[i] = r[i].max(rank);
                }
            }
            (Sources::Sketch(a), Sources::Sketch(b)) => {
                for (x, y) in a.iter_mut().zip(b) {
                    *x = (*x).max(*y);
                }
            }
        }
    }

    /// How many distinct sources: exact for a small set, the HyperLogLog estimate (with
    /// linear counting while registers are empty) for a sketch.
    pub fn count(&self) -> u64 {
        match self {
            Sources::Exact(set) => set.len() as u64,
            Sources::Sketch(r) => {
                let m = REGISTERS as f64;
                let alpha = 0.7213 / (1.0 + 1.079 / m);
                let sum: f64 = r.iter().map(|&v| 2f64.powi(-i32::from(v))).sum();
                let raw = alpha * m * m / sum;
                let zeros = r.iter().filter(|&&v| v == 0).count();
                let e = if raw <= 2.5 * m && zeros > 0 {
                    m * (m / zeros as f64).ln()
                } else {
                    raw
                };
                e.round() as u64
            }
        }
    }
}

/// Where a metric's document goes under the output folder:
/// `YYYY/MM/<metric>/l-root-YYYYMMDD-<metric>.yaml`.
pub fn path(day: jiff::civil::Date, metric: Metric) -> String {
    let m = metric.name();
    format!(
        "{:04}/{:02}/{m}/{LETTER}-root-{:04}{:02}{:02}-{m}.yaml",
        day.year(),
        day.month(),
        day.year(),
        day.month(),
        day.day()
    )
}

fn histogram(out: &mut String, name: &str, h: &Histogram, open: u32) {
    let bins: Vec<_> = h.iter().filter(|(_, n)| **n > 0).collect();
    if bins.is_empty() {
        let _ = writeln!(out, "{name}: {{}}");
        return;
    }
    let _ = writeln!(out, "{name}:");
    for (lo, n) in bins {
        if *lo >= open {
            let _ = writeln!(out, "  {open}-: {n}");
        } else {
            let _ = writeln!(out, "  {lo}-{}: {n}", lo + BIN - 1);
        }
    }
}

/// The YAML document of `metric` for `day` (the published layout, key order as L-root
/// publishes it).
pub fn render(metric: Metric, day: jiff::civil::Date, m: &DayMetrics) -> String {
    let mut out = format!(
        "---\nversion: {VERSION}\nservice: {SERVICE}\nstart-period: {day}T00:00:00Z\nmetric: {}\n",
        metric.name()
    );
    match metric {
        Metric::TrafficVolume => {
            for (what, udp, tcp) in [
                ("queries-received", &m.udp_queries, &m.tcp_queries),
                ("responses-sent", &m.udp_responses, &m.tcp_responses),
            ] {
                let _ = writeln!(out, "dns-udp-{what}-ipv4: {}", udp[0]);
                let _ = writeln!(out, "dns-udp-{what}-ipv6: {}", udp[1]);
                let _ = writeln!(out, "dns-tcp-{what}-ipv6: {}", tcp[1]);
                let _ = writeln!(out, "dns-tcp-{what}-ipv4: {}", tcp[0]);
            }
        }
        Metric::TrafficSizes => {
            histogram(
                &mut out,
                "udp-request-sizes",
                &m.udp_request_sizes,
                REQUEST_OPEN,
            );
            histogram(
                &mut out,
                "udp-response-sizes",
                &m.udp_response_sizes,
                RESPONSE_OPEN,
            );
            histogram(
                &mut out,
                "tcp-request-sizes",
                &m.tcp_request_sizes,
                REQUEST_OPEN,
            );
            histogram(
                &mut out,
                "tcp-response-sizes",
                &m.tcp_response_sizes,
                RESPONSE_OPEN,
            );
        }
        Metric::RcodeVolume => {
            for (code, n) in m.rcodes.iter().filter(|(_, n)| **n > 0) {
                let _ = writeln!(out, "{code}: {n}");
            }
        }
        Metric::UniqueSources => {
            let _ = writeln!(out, "num-sources-ipv4: {}", m.sources_v4.count());
            let _ = writeln!(out, "num-sources-ipv6: {}", m.sources_v6.count());
            let _ = writeln!(
                out,
                "num-sources-ipv6-aggregate: {}",
                m.sources_v6_64.count()
            );
        }
        Metric::LoadTime => {
            let p95 = load_time_p95(&m.load_time);
            if p95.is_empty() {
                out.push_str("time: {}\n");
            } else {
                out.push_str("time:\n");
                for (serial, secs) in p95 {
                    let _ = writeln!(out, "  {serial}: {secs}");
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
