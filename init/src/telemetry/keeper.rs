//! The collector on the box: started before the DNS daemon (which connects to its socket),
//! its days saved in the state folder so a restart loses at most the last minutes of counts,
//! and each ended UTC day handed out once for its `telemetry` report.
//!
//! - The socket is `<run>/telemetry/dnstap.sock`; the daemon's config points there.
//! - The days held are saved (`<state>/telemetry.json`, replaced atomically) on every
//!   heartbeat and restored at the next boot: counts go on across a reboot. A damaged file is
//!   moved aside (`.damaged`) and counting starts afresh, with a warning.
//! - [`Keeper::finished`] gives the days that ended at least [`GRACE`] ago (the daemons buffer
//!   dnstap for a few seconds), including days this boot watched with no traffic at all (their
//!   report says zero, not nothing), and marks them reported: frames still arriving for them
//!   are counted late. Days before this boot that were never saved are not invented.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use imrs_config::fsutil;
use imrs_config::rssac002::{DayMetrics, SourceKey};
use imrs_config::site;
use jiff::civil::Date;
use serde::{Deserialize, Serialize};

use super::{Collector, MAX_DAYS, day_of};

/// The saved days, in the state folder.
pub const SAVED_FILE: &str = "telemetry.json";
/// The Frame Streams socket, in the collector's run folder.
pub const SOCKET: &str = "dnstap.sock";
/// How long after midnight (UTC) a day stays open for frames still in the daemon's buffers.
pub const GRACE: Duration = Duration::from_secs(60);
/// The saved file is at most this big (three days of counters and 16 KiB sketches are far
/// smaller); a bigger one is treated as damaged.
const MAX_SAVED_BYTES: u64 = 4 << 20;

/// Why the collector could not start.
#[derive(Debug, thiserror::Error)]
pub enum KeeperError {
    /// No `[telemetry]`, or its key is not 32 bytes of hex (the site validation refuses that
    /// first).
    #[error("telemetry.source_key: absent, or not 64 hex digits")]
    Key,
    /// The socket could not be made.
    #[error("dnstap socket {path}: {source}")]
    Socket {
        /// The socket's path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// What is saved across a restart.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Saved {
    /// The last day reported (`YYYY-MM-DD`).
    reported_through: Option<String>,
    /// The days held, oldest first.
    days: Vec<(String, DayMetrics)>,
}

/// The running collector and its files.
#[derive(Debug, Clone)]
pub struct Keeper {
    collector: Collector,
    socket: PathBuf,
    saved: PathBuf,
    /// The first day this boot watched.
    since: Date,
}

fn parse_day(s: &str) -> Option<Date> {
    s.parse().ok()
}

impl Keeper {
    /// Restores the saved days, binds the socket in `run_dir` and accepts the daemon's
    /// connections from now on (needs a tokio runtime). `now`: Unix seconds. Queries from the
    /// box's own addresses (service, interfaces, loopback) are not counted. `writer`: the
    /// daemon's group, given the socket and its directory (root's otherwise): no other
    /// account can reach the socket.
    pub fn start(
        site: &site::Site,
        run_dir: &Path,
        state_dir: &Path,
        now: i64,
        writer: Option<u32>,
    ) -> Result<(Keeper, Option<String>), KeeperError> {
        let key = site
            .telemetry
            .as_ref()
            .and_then(site::Telemetry::key_bytes)
            .ok_or(KeeperError::Key)?;
        let own = [
            IpAddr::V4(site.service.ipv4),
            IpAddr::V6(site.service.ipv6),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ]
        .into_iter()
        .chain(
            site.interfaces
                .iter()
                .flat_map(|i| i.addresses.iter().map(|a| a.addr())),
        );
        let keeper = Keeper {
            collector: Collector::new(SourceKey::new(key)).without_sources(own),
            socket: run_dir.join(SOCKET),
            saved: state_dir.join(SAVED_FILE),
            since: day_of(now),
        };
        let warning = keeper.restore();
        let socket_err = |source| KeeperError::Socket {
            path: keeper.socket.clone(),
            source,
        };
        std::fs::create_dir_all(run_dir).map_err(socket_err)?;
        std::fs::set_permissions(run_dir, std::fs::Permissions::from_mode(0o750))
            .map_err(socket_err)?;
        if let Some(gid) = writer {
            std::os::unix::fs::chown(run_dir, Some(0), Some(gid)).map_err(socket_err)?;
        }
        match std::fs::remove_file(&keeper.socket) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(socket_err(e)),
        }
        let listener = tokio::net::UnixListener::bind(&keeper.socket).map_err(socket_err)?;
        std::fs::set_permissions(&keeper.socket, std::fs::Permissions::from_mode(0o660))
            .map_err(socket_err)?;
        if let Some(gid) = writer {
            std::os::unix::fs::chown(&keeper.socket, Some(0), Some(gid)).map_err(socket_err)?;
        }
        tokio::spawn(keeper.collector.clone().serve(listener));
        Ok((keeper, warning))
    }

    /// Reads the saved days back; a damaged file is moved aside. Returns a warning to log.
    fn restore(&self) -> Option<String> {
        let bytes = match fsutil::read_bounded(&self.saved, MAX_SAVED_BYTES, "telemetry") {
            Ok(b) => b,
            Err(e) if e.is_not_found() => return None,
            Err(e) => return Some(self.set_aside(&e.to_string())),
        };
        let saved: Saved = match serde_json::from_slice(&bytes) {
            Ok(s) => s,
            Err(e) => return Some(self.set_aside(&e.to_string())),
        };
        let mut days = BTreeMap::new();
        for (day, m) in saved.days {
            let Some(d) = parse_day(&day) else {
                return Some(self.set_aside(&format!("day {day:?} is not YYYY-MM-DD")));
            };
            days.insert(d, m);
        }
        let closed = saved.reported_through.as_deref().and_then(parse_day);
        self.collector.restore(days, closed);
        None
    }

    fn set_aside(&self, why: &str) -> String {
        let aside = self.saved.with_extension("json.damaged");
        let moved = std::fs::rename(&self.saved, &aside);
        format!(
            "{}: {why}; RSSAC002 counts start afresh ({})",
            self.saved.display(),
            match moved {
                Ok(()) => format!("the file is kept as {}", aside.display()),
                Err(e) => format!("it could not be moved aside: {e}"),
            }
        )
    }

    /// The collector.
    pub fn collector(&self) -> &Collector {
        &self.collector
    }

    /// The socket the daemon writes to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Saves the days held (atomically).
    pub fn save(&self) -> std::io::Result<()> {
        let (days, closed) = self.collector.snapshot();
        let saved = Saved {
            reported_through: closed.map(|d| d.to_string()),
            days: days.into_iter().map(|(d, m)| (d.to_string(), m)).collect(),
        };
        let bytes = serde_json::to_vec(&saved).map_err(std::io::Error::other)?;
        fsutil::write_atomic(&self.saved, &bytes, 0o600)
    }

    /// The days that ended at least [`GRACE`] before `now` (Unix seconds), each once, oldest
    /// first: what was counted, or an empty day for a day this boot watched without traffic.
    /// They are marked reported; call [`Keeper::save`] once their reports are queued.
    pub fn finished(&self, now: i64) -> Vec<(Date, DayMetrics)> {
        let grace = i64::try_from(GRACE.as_secs()).unwrap_or(60);
        let today = day_of(now.saturating_sub(grace));
        let Ok(last) = today.yesterday() else {
            return Vec::new();
        };
        let mut out: BTreeMap<Date, DayMetrics> =
            self.collector.take_finished(today).into_iter().collect();
        let closed = self.collector.closed();
        // Days watched with nothing counted: at most the last few (a clock step of years does
        // not make a report per day).
        let mut d = last;
        for _ in 0..MAX_DAYS {
            if d < self.since || closed.is_some_and(|c| d <= c) {
                break;
            }
            out.entry(d).or_default();
            match d.yesterday() {
                Ok(y) => d = y,
                Err(_) => break,
            }
        }
        if self.since <= last {
            self.collector.close_through(last);
        }
        out.into_iter().collect()
    }

    /// Today's metrics so far (UTC day of `now`), for a report on demand.
    pub fn today(&self, now: i64) -> (Date, DayMetrics) {
        let day = day_of(now);
        (day, self.collector.day(day))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf() -> site::Site {
        let text = include_str!("../../../images/sites/lab.toml");
        site::parse(Path::new("lab.toml"), text).unwrap()
    }

    /// 2026-07-31T12:00:00Z.
    const NOON: i64 = 1_785_499_200;
    const DAY: i64 = 86_400;

    fn count(k: &Keeper, at: i64, n: u64) {
        let m = DayMetrics {
            udp_queries: [n, 0],
            ..Default::default()
        };
        k.collector.restore(BTreeMap::from([(day_of(at), m)]), None);
    }

    async fn keeper(state: &Path, now: i64) -> (Keeper, Option<String>) {
        Keeper::start(&conf(), &state.join("run"), state, now, None).unwrap()
    }

    #[tokio::test]
    async fn a_day_is_reported_once_after_its_grace_and_survives_a_restart_before() {
        let d = tempfile::tempdir().unwrap();
        let (k, w) = keeper(d.path(), NOON).await;
        assert!(w.is_none());
        assert!(k.socket().exists());
        count(&k, NOON, 7);
        // Saved and restored: counting goes on after a restart.
        k.save().unwrap();
        let (k, w) = keeper(d.path(), NOON + 3600).await;
        assert!(w.is_none());
        count(&k, NOON + 3600, 3);
        // Midnight, within the grace: nothing yet.
        let midnight = NOON + DAY / 2;
        assert!(k.finished(midnight + 30).is_empty());
        let done = k.finished(midnight + 61);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].0.to_string(), "2026-07-31");
        assert_eq!(done[0].1.udp_queries, [10, 0]);
        // Once only; late frames for it are not counted into a second report.
        assert!(k.finished(midnight + 120).is_empty());
        count(&k, NOON, 1);
        assert!(k.finished(midnight + DAY / 2).is_empty());
        k.save().unwrap();
        // A restart does not report the day again.
        let (k, _) = keeper(d.path(), midnight + 200).await;
        assert!(k.finished(midnight + 300).is_empty());
    }

    #[tokio::test]
    async fn a_quiet_day_is_reported_empty_but_days_the_box_was_off_are_not() {
        let d = tempfile::tempdir().unwrap();
        let (k, _) = keeper(d.path(), NOON).await;
        let done = k.finished(NOON + DAY + 100);
        assert_eq!(done.len(), 1, "{done:?}");
        assert_eq!(done[0].1, DayMetrics::default());
        k.save().unwrap();
        // Off for a week: the boot after reports from its own first day on.
        let back = NOON + 8 * DAY;
        let (k, _) = keeper(d.path(), back).await;
        assert!(k.finished(back).is_empty());
        let done = k.finished(back + DAY);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].0, day_of(back));
    }

    #[tokio::test]
    async fn a_damaged_file_is_set_aside_and_counting_starts_afresh() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(SAVED_FILE), b"{\"days\": [[\"yesterday\"").unwrap();
        let (k, w) = keeper(d.path(), NOON).await;
        let w = w.expect("a warning");
        assert!(
            w.contains("telemetry.json") && w.contains("start afresh"),
            "{w}"
        );
        assert!(d.path().join("telemetry.json.damaged").exists());
        assert_eq!(k.today(NOON).1, DayMetrics::default());
        let m = serde_json::to_string(&DayMetrics::default()).unwrap();
        std::fs::write(
            d.path().join(SAVED_FILE),
            format!(r#"{{"reported_through": null, "days": [["2026-13-01", {m}]]}}"#),
        )
        .unwrap();
        let (_, w) = keeper(d.path(), NOON).await;
        assert!(w.is_some_and(|w| w.contains("2026-13-01")));
    }
}
