//! The `telemetry` scenario's side of the lab: the guest's clock starts [`BEFORE_MIDNIGHT`]
//! before midnight UTC; once the box serves, the lab sends it known DNS traffic from its
//! namespace ([`send`]); after midnight the box's `telemetry` report for the day that ended
//! reaches the receiver, and `imrs-build fleet rssac002` (this program) turns it into the
//! RSSAC002 documents, whose numbers are checked against what was sent ([`checks`]).
//!
//! Exact where the lab knows every query: TCP over IPv4 and IPv6 and UDP over IPv6 come from
//! this traffic only, and so do the NXDOMAIN responses; UDP over IPv4 also carries the lab's
//! readiness probes, so it is at least what was sent. The box's own health probes are not
//! counted (the collector leaves out its own addresses), so the sources are the lab's two.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use domain::base::Name;
use domain::base::iana::{Class, Rcode, Rtype};
use imrs_zone::query::{self, Transport};

use super::summary::Check;
use super::zone::GuestClock;
use crate::home::store;

/// How long before midnight UTC the guest's clock starts (it serves after ~30 s in the lab;
/// the report comes a minute and a heartbeat after midnight).
pub const BEFORE_MIDNIGHT: Duration = Duration::from_secs(90);

/// The guest clock for the scenario: [`BEFORE_MIDNIGHT`] before the midnight (UTC) at or
/// after `clock` (the bundled zone's pinned clock is a midnight inside its signatures' window,
/// and so is the time just before it).
pub fn clock_before_midnight(clock: GuestClock) -> anyhow::Result<GuestClock> {
    let t = pinned(clock)?;
    let utc = t.to_zoned(jiff::tz::TimeZone::UTC);
    let start = utc.start_of_day()?;
    let midnight = if start.timestamp() == t {
        t
    } else {
        start.tomorrow()?.timestamp()
    };
    let before = jiff::SignedDuration::try_from(BEFORE_MIDNIGHT)?;
    Ok(GuestClock::Fixed(midnight.checked_sub(before)?))
}

/// The UTC day that ends while the scenario runs, from the guest clock
/// [`clock_before_midnight`] chose.
pub fn ending_day(clock: GuestClock) -> anyhow::Result<jiff::civil::Date> {
    Ok(pinned(clock)?.to_zoned(jiff::tz::TimeZone::UTC).date())
}

fn pinned(clock: GuestClock) -> anyhow::Result<jiff::Timestamp> {
    match clock {
        GuestClock::Fixed(t) => Ok(t),
        GuestClock::Host => {
            anyhow::bail!("the telemetry scenario needs a pinned guest clock (not --zone live)")
        }
    }
}

/// What the lab sent and got answered, before the guest's midnight.
#[derive(Debug, Clone, Default)]
pub struct Traffic {
    /// Seconds after QEMU start when it was sent.
    pub sent_at: Option<f64>,
    /// Answered `. SOA` queries: UDP v4, TCP v4, UDP v6, TCP v6.
    pub soa: [u64; 4],
    /// Answered NXDOMAIN queries (UDP, IPv4).
    pub nxdomain: u64,
    /// Queries that got no answer.
    pub errors: Vec<String>,
    /// The box's device key id, once a report named it.
    pub device: String,
    /// The `telemetry` command queued for it (its sequence number).
    pub command: Option<u64>,
}

/// `. SOA` over each transport and family, and NXDOMAIN queries, to the service addresses.
/// Runs inside the lab's namespace.
pub fn send(v4: SocketAddr, v6: SocketAddr) -> Traffic {
    let mut t = Traffic::default();
    let timeout = Duration::from_secs(2);
    let plan = [
        (v4, Transport::Udp, 20),
        (v4, Transport::Tcp, 5),
        (v6, Transport::Udp, 10),
        (v6, Transport::Tcp, 4),
    ];
    for (i, (server, transport, n)) in plan.into_iter().enumerate() {
        for _ in 0..n {
            match query::root_soa(server, transport, timeout) {
                Ok(_) => t.soa[i] += 1,
                Err(e) => t.errors.push(format!("{server} {transport:?}: {e}")),
            }
        }
    }
    let nx: Name<Vec<u8>> = "no-such-tld-imrs-lab."
        .parse()
        .unwrap_or_else(|_| Name::root_vec());
    for _ in 0..3 {
        match query::query(v4, Transport::Udp, timeout, &nx, Rtype::A, Class::IN) {
            Ok(r) if r.message.header().rcode() == Rcode::NXDOMAIN => t.nxdomain += 1,
            Ok(r) => t
                .errors
                .push(format!("{nx} A: rcode {}", r.message.header().rcode())),
            Err(e) => t.errors.push(format!("{nx} A: {e}")),
        }
    }
    t
}

/// The value of `key: N` in a YAML document (top level or indented one level).
fn value(doc: &str, key: &str) -> Option<u64> {
    doc.lines()
        .find_map(|l| l.trim_start().strip_prefix(&format!("{key}: ")))
        .and_then(|v| v.trim().parse().ok())
}

/// The checks of the `telemetry` scenario: the report for `day` at the receiver (`db`), and
/// the documents `exe fleet rssac002` writes from it into `out`.
pub fn checks(
    exe: &Path,
    db: &Path,
    out: &Path,
    day: jiff::civil::Date,
    traffic: &Traffic,
) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut check = |what: &str, ok: bool, detail: String| {
        checks.push(Check {
            what: what.into(),
            ok,
            detail,
        })
    };
    check(
        "the lab's queries were answered before the guest's midnight",
        traffic.sent_at.is_some() && traffic.errors.is_empty(),
        format!(
            "sent at {} s: . SOA answered {:?} (UDP v4, TCP v4, UDP v6, TCP v6), NXDOMAIN {}{}",
            traffic
                .sent_at
                .map_or("never".into(), |s| format!("{s:.1}")),
            traffic.soa,
            traffic.nxdomain,
            if traffic.errors.is_empty() {
                String::new()
            } else {
                format!("; errors: {}", traffic.errors.join("; "))
            }
        ),
    );
    let day_s = day.to_string();
    let command = store::commands::commands(db, Some(&traffic.device))
        .ok()
        .and_then(|rows| {
            rows.into_iter()
                .find(|c| Some(c.sequence) == traffic.command)
        });
    let now = jiff::Timestamp::now().as_second();
    check(
        "the telemetry command sent the day so far: its result is done",
        command.as_ref().is_some_and(|c| {
            c.state(now) == "done"
                && c.reason
                    .as_deref()
                    .is_some_and(|r| r.contains(&format!("telemetry for {day_s} so far queued")))
        }),
        command.map_or_else(
            || format!("command {:?} not found", traffic.command),
            |c| {
                format!(
                    "{} {}: {}",
                    c.action,
                    c.state(now),
                    c.reason.as_deref().unwrap_or_default()
                )
            },
        ),
    );
    let rows = match store::telemetry(db, &day_s) {
        Ok(r) => r,
        Err(e) => {
            check(
                "a telemetry report for the day arrived",
                false,
                format!("{}: {e}", db.display()),
            );
            return checks;
        }
    };
    check(
        "one device's telemetry report for the day that ended arrived, marked complete",
        rows.len() == 1 && rows[0].complete,
        format!(
            "{} report(s) for {day_s}{}",
            rows.len(),
            rows.first()
                .map(|r| format!(" (complete: {})", r.complete))
                .unwrap_or_default()
        ),
    );
    let Some(row) = rows.first() else {
        return checks;
    };
    let m = &row.metrics;
    let [udp4, tcp4, udp6, tcp6] = traffic.soa;
    let exact = m.tcp_queries == [tcp4, tcp6]
        && m.tcp_responses == [tcp4, tcp6]
        && m.udp_queries[1] == udp6
        && m.udp_responses[1] == udp6
        && m.rcodes.get(&3).copied().unwrap_or(0) == traffic.nxdomain;
    check(
        "the report counts exactly the lab's TCP, UDP-over-IPv6 and NXDOMAIN traffic",
        exact,
        format!(
            "TCP queries {:?} responses {:?} (sent {:?}); UDP v6 queries {} responses {} (sent {udp6}); NXDOMAIN {} (sent {})",
            m.tcp_queries,
            m.tcp_responses,
            [tcp4, tcp6],
            m.udp_queries[1],
            m.udp_responses[1],
            m.rcodes.get(&3).copied().unwrap_or(0),
            traffic.nxdomain
        ),
    );
    let sent_udp4 = udp4 + traffic.nxdomain;
    check(
        "UDP over IPv4 counts at least the lab's queries; the box's own probes are not counted",
        m.udp_queries[0] >= sent_udp4
            && m.sources_v4.count() == 1
            && m.sources_v6.count() == 1
            && m.sources_v6_64.count() == 1,
        format!(
            "UDP v4 queries {} (sent {sent_udp4} plus the lab's readiness probes); sources v4 {} v6 {} v6/64 {}",
            m.udp_queries[0],
            m.sources_v4.count(),
            m.sources_v6.count(),
            m.sources_v6_64.count()
        ),
    );

    // The receiver's side: the documents.
    let run = std::process::Command::new(exe)
        .args(["fleet", "rssac002", "--quiet", "--day", &day_s, "--db"])
        .arg(db)
        .arg("--out")
        .arg(out)
        .output();
    let ran = match &run {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "exit {}: {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(e.to_string()),
    };
    check(
        "fleet rssac002 writes the day's documents",
        ran.is_none(),
        ran.unwrap_or_else(|| format!("into {}", out.display())),
    );
    let compact = day_s.replace('-', "");
    let (y, mo) = (&day_s[..4], &day_s[5..7]);
    let doc = |base: &Path, metric: &str| {
        std::fs::read_to_string(
            base.join(y)
                .join(mo)
                .join(metric)
                .join(format!("l-root-{compact}-{metric}.yaml")),
        )
        .unwrap_or_default()
    };
    let volume = doc(out, "traffic-volume");
    let rcodes = doc(out, "rcode-volume");
    let sources = doc(out, "unique-sources");
    let device = doc(&out.join("devices").join(&row.device), "traffic-volume");
    let all_there = [
        "traffic-volume",
        "traffic-sizes",
        "rcode-volume",
        "unique-sources",
        "load-time",
    ]
    .iter()
    .all(|metric| doc(out, metric).contains(&format!("metric: {metric}\n")));
    let matches = value(&volume, "dns-tcp-queries-received-ipv4") == Some(tcp4)
        && value(&volume, "dns-tcp-queries-received-ipv6") == Some(tcp6)
        && value(&volume, "dns-udp-queries-received-ipv6") == Some(udp6)
        && value(&volume, "dns-udp-queries-received-ipv4") == Some(m.udp_queries[0])
        && value(&rcodes, "3") == Some(traffic.nxdomain)
        && value(&sources, "num-sources-ipv4") == Some(1)
        && volume.contains(&format!("start-period: {day_s}T00:00:00Z\n"))
        && device == volume;
    check(
        "the RSSAC002 documents (fleet and device) say what the report counted",
        all_there && matches,
        format!(
            "five metrics present: {all_there}; traffic-volume:\n{volume}rcode-volume:\n{rcodes}"
        ),
    );
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_starts_before_the_next_midnight() {
        let at = |s: &str| GuestClock::Fixed(s.parse().unwrap());
        assert_eq!(
            clock_before_midnight(at("2026-08-01T00:00:00Z")).unwrap(),
            at("2026-07-31T23:58:30Z")
        );
        assert_eq!(
            clock_before_midnight(at("2026-07-31T20:00:00Z")).unwrap(),
            at("2026-07-31T23:58:30Z")
        );
        assert!(clock_before_midnight(GuestClock::Host).is_err());
    }

    #[test]
    fn reads_values_from_documents() {
        let doc = "---\nversion: rssac002v5\nmetric: rcode-volume\n0: 12\n3: 4\nudp-request-sizes:\n  16-31: 7\n";
        assert_eq!(value(doc, "3"), Some(4));
        assert_eq!(value(doc, "0"), Some(12));
        assert_eq!(value(doc, "16-31"), Some(7));
        assert_eq!(value(doc, "5"), None);
    }
}
