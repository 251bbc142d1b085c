//! Heartbeats: once the node is healthy, a signed `heartbeat` report every
//! `phone_home.heartbeat_s` (jittered by up to a tenth either way, so a fleet rebooted together
//! does not heartbeat together) on the same outbox as every report: running slot and image,
//! the zone's serial, when it was last confirmed current and when it expires, the DNS probe, each
//! BGP session and what is announced, the drain switch, uptime and the last error.
//!
//! While the receiver cannot be reached heartbeats wait in the outbox; at most
//! [`MAX_WAITING`] of this boot's do (a day at the default period): the oldest is dropped first
//! and the next heartbeat says how many were ([`Event::Heartbeat`]'s `heartbeats_dropped`).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use imrs_config::report::{CollectorHealth, DnsReport, Event, Report};

use crate::context::Context;
use crate::health::driver::Inputs;
use crate::outcome::StageResult;
use crate::state::Store;
use crate::{installation, log};

/// Heartbeats of this boot that may wait in the outbox at once.
pub const MAX_WAITING: usize = 288;

/// `period` moved by up to a tenth either way, from `random` (uniform in 0..=u32::MAX).
pub fn jittered(period: Duration, random: u32) -> Duration {
    crate::jitter::spread(period, 0.1, random).max(Duration::from_secs(1))
}

/// The heartbeat event from the health inputs at `now` and the collector's `telemetry` counts.
pub fn event(
    inputs: &Inputs,
    now: SystemTime,
    uptime: Duration,
    dropped: u64,
    telemetry: Option<CollectorHealth>,
) -> Event {
    let secs_between = |a: SystemTime, b: SystemTime| match a.duration_since(b) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    };
    Event::Heartbeat {
        uptime_s: uptime.as_secs(),
        zone_serial: inputs.serial,
        zone_checked_s_ago: inputs
            .zone_checked
            .map(|t| u64::try_from(secs_between(now, t).max(0)).unwrap_or(0)),
        zone_expires_in_s: inputs.zone_expires.map(|t| secs_between(t, now)),
        drained: inputs.drained,
        dns_probe_error: inputs.dns_probe.clone().flatten(),
        last_error: log::last_error(),
        heartbeats_dropped: dropped,
        telemetry,
    }
}

/// The collector's counts for a heartbeat.
fn collector_health(ctx: &Context) -> Option<CollectorHealth> {
    let st = ctx.telemetry.as_ref()?.collector().stats();
    Some(CollectorHealth {
        connections: st.connections,
        counted: st.counted,
        bad: st.bad_payloads + st.bad_connections,
        late: st.late,
        own: st.own,
    })
}

/// This boot's heartbeats waiting in the outbox: at most a bound of them, the oldest dropped
/// first and counted.
#[derive(Debug, Default)]
pub struct Backlog {
    waiting: VecDeque<PathBuf>,
    dropped: u64,
}

impl Backlog {
    /// Forgets the heartbeats the receiver has taken (gone from the outbox), then drops the
    /// oldest waiting until one more fits within `max`. Returns how many were dropped so far.
    pub fn make_room(&mut self, max: usize) -> u64 {
        self.waiting.retain(|p| p.exists());
        while self.waiting.len() >= max.max(1) {
            if let Some(old) = self.waiting.pop_front()
                && std::fs::remove_file(&old).is_ok()
            {
                self.dropped += 1;
            }
        }
        self.dropped
    }

    /// Notes a heartbeat queued at `path`.
    pub fn push(&mut self, path: PathBuf) {
        self.waiting.push_back(path);
    }
}

/// How often the commands the receiver's answers carried are looked at.
const COMMAND_POLL: Duration = Duration::from_millis(250);

/// Sends heartbeats until the runtime stops (never returns while the site asks for them), and
/// acts on the fleet commands their answers carry ([`crate::fleet`]) within a quarter second; a
/// `reboot` is passed to the main loop on `halt`.
pub async fn run(
    ctx: &mut Context,
    store: &Store,
    results: &[StageResult],
    start: Instant,
    halt: tokio::sync::mpsc::Sender<String>,
) {
    let Some(period) = ctx
        .site
        .as_ref()
        .map(|s| Duration::from_secs(s.phone_home.heartbeat_s))
    else {
        return;
    };
    log::info(format!(
        "heartbeats every {} s (jittered) to the receiver",
        period.as_secs()
    ));
    let mut commands = crate::fleet::Commands::open(store);
    commands.report_interrupted(ctx, results);
    let mut backlog = Backlog::default();
    let mut first = true;
    loop {
        let due = Instant::now() + jittered(period, crate::jitter::random());
        loop {
            let left = due.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            tokio::time::sleep(left.min(COMMAND_POLL)).await;
            if let Some(why) = commands.poll(ctx, results).await {
                let _ = halt.send(why).await;
                return std::future::pending().await;
            }
        }
        let dropped = backlog.make_room(MAX_WAITING);
        let inputs = ctx
            .serving
            .inputs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let event = event(
            &inputs,
            crate::clock::wall_now(),
            start.elapsed(),
            dropped,
            collector_health(ctx),
        );
        let queued = queue(ctx, event, results, |rep| {
            let expired = inputs
                .zone_expires
                .is_some_and(|t| crate::clock::wall_now() >= t);
            rep.dns = DnsReport {
                ready: !expired && matches!(inputs.dns_probe, Some(None)),
                daemon: rep.dns.daemon.clone(),
                detail: match (&inputs.dns_probe, expired) {
                    (_, true) => Some("the zone has expired: not served".into()),
                    (Some(Some(why)), _) => Some(why.clone()),
                    (None, _) => Some("not probed yet".into()),
                    (Some(None), false) => None,
                },
            };
        });
        match queued {
            Ok(Some(path)) => {
                backlog.push(path);
                if first {
                    log::info("first heartbeat queued");
                    first = false;
                }
            }
            Ok(None) => {}
            Err(e) => log::warn(format!("heartbeat not queued: {}", log::chain(&e))),
        }
        telemetry(ctx, results);
    }
}

/// Builds the report of `event` (adjusted by `adjust`), signs it and puts it in the outbox.
fn queue(
    ctx: &mut Context,
    event: Event,
    results: &[StageResult],
    adjust: impl FnOnce(&mut Report),
) -> Result<Option<PathBuf>, installation::InstallReportError> {
    let bgp = crate::stages::bgp::report(ctx);
    let report = installation::start(ctx).and_then(|()| {
        let mut rep = installation::build(ctx, event, results, bgp)?;
        adjust(&mut rep);
        Ok(rep)
    })?;
    ctx.phone
        .as_ref()
        .map(|p| p.report(&report))
        .transpose()
        .map_err(installation::InstallReportError::PhoneHome)
}

/// Queues a `telemetry` report of the current UTC day so far (the `telemetry` fleet command);
/// says what was sent, or why nothing was.
pub fn telemetry_so_far(ctx: &mut Context, results: &[StageResult]) -> Result<String, String> {
    let Some(keeper) = ctx.telemetry.clone() else {
        return Err(
            "this box collects no RSSAC002 metrics (no [telemetry] in its site config, \
             or its collector did not start)"
                .into(),
        );
    };
    let (day, metrics) = keeper.today(crate::clock::timestamp_now().as_second());
    queue_day(ctx, results, day, metrics, false)
        .map(|queries| format!("telemetry for {day} so far queued ({queries} queries counted)"))
        .map_err(|e| format!("telemetry for {day} not queued: {e}"))
}

/// Queues the `telemetry` report of `day`; returns the queries it counts.
fn queue_day(
    ctx: &mut Context,
    results: &[StageResult],
    day: jiff::civil::Date,
    metrics: imrs_config::rssac002::DayMetrics,
    complete: bool,
) -> Result<u64, String> {
    let queries = [metrics.udp_queries, metrics.tcp_queries]
        .iter()
        .flatten()
        .sum();
    let event = Event::Telemetry {
        day: day.to_string(),
        complete,
        metrics: Box::new(metrics),
    };
    queue(ctx, event, results, |_| {})
        .map(|_| queries)
        .map_err(|e| log::chain(&e))
}

/// Queues a `telemetry` report for each UTC day that has ended (once each), then saves the
/// days still counting ([`crate::telemetry::keeper`]).
fn telemetry(ctx: &mut Context, results: &[StageResult]) {
    let Some(keeper) = ctx.telemetry.clone() else {
        return;
    };
    for (day, metrics) in keeper.finished(crate::clock::timestamp_now().as_second()) {
        match queue_day(ctx, results, day, metrics, true) {
            Ok(queries) => log::info(format!(
                "telemetry for {day} queued ({queries} queries counted)"
            )),
            Err(e) => log::error(format!(
                "telemetry for {day} not queued, its counts are lost: {e}"
            )),
        }
    }
    if let Err(e) = keeper.save() {
        log::warn(format!("telemetry: saving the day's counts: {e}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The receiver away for longer than the backlog holds (a day and an hour of heartbeats
    /// at the default period): the newest stay, the oldest go first and are counted; the ones
    /// the receiver took meanwhile make room without being counted.
    #[test]
    fn a_receiver_away_long_drops_the_oldest_heartbeats_and_counts_them() {
        let d = tempfile::tempdir().unwrap();
        let mut b = Backlog::default();
        let period = 300;
        let away: usize = 25 * 3600 / period;
        for i in 0..away {
            assert_eq!(
                b.make_room(MAX_WAITING),
                i.saturating_sub(MAX_WAITING - 1) as u64
            );
            let p = d.path().join(format!("hb-{i:04}.json"));
            std::fs::write(&p, b"{}").unwrap();
            b.push(p);
        }
        assert_eq!(b.make_room(MAX_WAITING), (away - MAX_WAITING + 1) as u64);
        let left: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left.len(), MAX_WAITING - 1);
        assert!(
            !d.path()
                .join(format!("hb-{:04}.json", away - MAX_WAITING))
                .exists()
        );
        assert!(d.path().join(format!("hb-{:04}.json", away - 1)).exists());
        // The receiver is back and takes them all: nothing more is dropped.
        for f in std::fs::read_dir(d.path()).unwrap() {
            std::fs::remove_file(f.unwrap().path()).unwrap();
        }
        let dropped = b.make_room(MAX_WAITING);
        assert_eq!(dropped, (away - MAX_WAITING + 1) as u64);
        assert_eq!(b.waiting.len(), 0);
    }

    #[test]
    fn jitter_stays_within_a_tenth() {
        let p = Duration::from_secs(300);
        assert_eq!(jittered(p, 0), Duration::from_secs(270));
        assert_eq!(jittered(p, u32::MAX), Duration::from_secs(330));
        let mid = jittered(p, u32::MAX / 2).as_secs_f64();
        assert!((mid - 300.0).abs() < 0.01, "{mid}");
        assert_eq!(
            jittered(Duration::from_millis(100), 0),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn the_event_says_how_the_zone_and_service_are() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let inputs = Inputs {
            serial: Some(2026073102),
            zone_expires: Some(now - Duration::from_secs(5)),
            drained: true,
            transfer_failure: None,
            zone_checked: Some(now - Duration::from_secs(120)),
            dns_probe: Some(Some("no answer".into())),
        };
        let Event::Heartbeat {
            uptime_s,
            zone_serial,
            zone_checked_s_ago,
            zone_expires_in_s,
            drained,
            dns_probe_error,
            heartbeats_dropped,
            ..
        } = event(&inputs, now, Duration::from_secs(42), 2, None)
        else {
            panic!("not a heartbeat")
        };
        assert_eq!(uptime_s, 42);
        assert_eq!(zone_serial, Some(2026073102));
        assert_eq!(zone_checked_s_ago, Some(120));
        assert_eq!(zone_expires_in_s, Some(-5));
        assert!(drained);
        assert_eq!(dns_probe_error.as_deref(), Some("no answer"));
        assert_eq!(heartbeats_dropped, 2);
        // Nothing known yet.
        let Event::Heartbeat {
            zone_checked_s_ago,
            zone_expires_in_s,
            dns_probe_error,
            ..
        } = event(&Inputs::default(), now, Duration::ZERO, 0, None)
        else {
            panic!()
        };
        assert_eq!((zone_checked_s_ago, zone_expires_in_s), (None, None));
        assert_eq!(dns_probe_error, None);
    }
}
