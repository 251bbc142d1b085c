//! RSSAC002 collection on the box: the DNS daemon writes dnstap (Frame Streams over a Unix
//! socket this side listens on; NSD and Knot connect as the writer), and every authoritative
//! query and response it logs is counted into the metrics of its UTC day
//! ([`imrs_config::rssac002::DayMetrics`]), keyed by the time the daemon stamped on it.
//!
//! - [`framestream`]: the transport; [`dnstap`]: the payloads and what each counts.
//! - [`Collector`]: the listening side. Each connection does the bidirectional handshake
//!   (READY -> ACCEPT dnstap -> START), then data frames until STOP (-> FINISH). A connection
//!   that breaks the protocol is closed and counted; a daemon that restarts simply connects
//!   again, and the day's counters go on. At most [`MAX_DAYS`] days are held: a day is taken
//!   ([`Collector::take_finished`]) once it has ended, for the `telemetry` report.
//!
//! Memory is bounded whatever the traffic: per day, counters and at most a few hundred bins,
//! and three source sets of at most 16 KiB each once past 4,096 sources.

pub mod dnstap;
pub mod framestream;
pub mod keeper;

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use imrs_config::rssac002::{DayMetrics, SourceKey};
use jiff::civil::Date;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use framestream::{Control, Decoder, Frame};

/// Days held at once (today, yesterday until it is reported, and one more across a clock
/// step); a payload for an older day than these is counted as late and dropped.
pub const MAX_DAYS: usize = 3;

/// What the collector has seen, besides the metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Data frames read.
    pub frames: u64,
    /// Payloads counted (queries and responses).
    pub counted: u64,
    /// Well-formed payloads RSSAC002 does not count.
    pub ignored: u64,
    /// Payloads that were not dnstap or lacked a field.
    pub bad_payloads: u64,
    /// Payloads for a day no longer held, or already reported.
    pub late: u64,
    /// Payloads of the box's own queries (its health probes), not counted.
    pub own: u64,
    /// Days given up unreported to make room for a newer one (a clock step of days).
    pub dropped_days: u64,
    /// Connections closed for breaking Frame Streams.
    pub bad_connections: u64,
    /// Connections accepted.
    pub connections: u64,
    /// The last problem, for the heartbeat.
    pub last_error: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    days: BTreeMap<Date, DayMetrics>,
    /// Days up to this one were reported: what still arrives for them is late.
    closed: Option<Date>,
    stats: Stats,
}

impl State {
    /// Whether `day` was reported already.
    fn is_closed(&self, day: Date) -> bool {
        self.closed.is_some_and(|c| day <= c)
    }

    /// Gives up the oldest days beyond [`MAX_DAYS`], counting them.
    fn trim(&mut self) {
        while self.days.len() > MAX_DAYS {
            self.days.pop_first();
            self.stats.dropped_days += 1;
        }
    }
}

/// The counting side of dnstap.
#[derive(Debug, Clone)]
pub struct Collector {
    state: Arc<Mutex<State>>,
    key: SourceKey,
    own: Arc<HashSet<IpAddr>>,
}

/// The UTC day of Unix time `secs`.
pub fn day_of(secs: i64) -> Date {
    jiff::Timestamp::from_second(secs)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date()
}

impl Collector {
    /// A collector hashing sources with the fleet's `key`.
    pub fn new(key: SourceKey) -> Collector {
        Collector {
            state: Arc::new(Mutex::new(State::default())),
            key,
            own: Arc::default(),
        }
    }

    /// The same, leaving out queries from `own` addresses (the box's: its health probes ask
    /// its service addresses every few seconds, and L-root's numbers are about clients).
    pub fn without_sources(mut self, own: impl IntoIterator<Item = IpAddr>) -> Collector {
        self.own = Arc::new(own.into_iter().collect());
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one dnstap payload at Unix time `now` (used when the daemon stamped no time).
    pub fn payload(&self, payload: Bytes, now: i64) {
        let decoded = dnstap::decode(payload);
        let mut st = self.lock();
        st.stats.frames += 1;
        let d = match decoded {
            Ok(d) => d,
            Err(e) => {
                st.stats.bad_payloads += 1;
                st.stats.last_error = Some(e.to_string());
                return;
            }
        };
        if d.client().is_some_and(|c| self.own.contains(&c)) {
            st.stats.own += 1;
            return;
        }
        let day = day_of(d.time().unwrap_or(now));
        if st.is_closed(day) {
            st.stats.late += 1;
            return;
        }
        if !st.days.contains_key(&day) {
            if st.days.len() >= MAX_DAYS && st.days.keys().next().is_some_and(|d| *d > day) {
                st.stats.late += 1;
                return;
            }
            st.days.insert(day, DayMetrics::default());
            st.trim();
        }
        let State { days, stats, .. } = &mut *st;
        let m = days.entry(day).or_default();
        match dnstap::count(d, m, &self.key) {
            Ok(dnstap::Seen::Ignored) => stats.ignored += 1,
            Ok(_) => stats.counted += 1,
            Err(e) => {
                stats.bad_payloads += 1;
                stats.last_error = Some(e.to_string());
            }
        }
    }

    /// The days before `today` (UTC), taken out: what the `telemetry` reports carry.
    pub fn take_finished(&self, today: Date) -> Vec<(Date, DayMetrics)> {
        let mut st = self.lock();
        let keep = st.days.split_off(&today);
        let done = std::mem::replace(&mut st.days, keep);
        done.into_iter().collect()
    }

    /// Marks the days up to `day` reported: payloads for them are counted late from now on.
    pub fn close_through(&self, day: Date) {
        let mut st = self.lock();
        st.closed = st.closed.max(Some(day));
        st.days.retain(|d, _| *d > day);
    }

    /// Adds `days` counted earlier (saved before a restart) to what is held; days already
    /// reported (up to `closed`) are left out.
    pub fn restore(&self, days: BTreeMap<Date, DayMetrics>, closed: Option<Date>) {
        let mut st = self.lock();
        st.closed = st.closed.max(closed);
        for (day, m) in days {
            if !st.is_closed(day) {
                st.days.entry(day).or_default().merge(&m);
            }
        }
        st.trim();
    }

    /// The last day reported.
    pub fn closed(&self) -> Option<Date> {
        self.lock().closed
    }

    /// A copy of every day held and the last day reported (to save across a restart).
    pub fn snapshot(&self) -> (BTreeMap<Date, DayMetrics>, Option<Date>) {
        let st = self.lock();
        (st.days.clone(), st.closed)
    }

    /// Records that serial `serial` took `secs` seconds from first being seen at a transfer
    /// server to being answered, in the metrics of `day`.
    pub fn load_time(&self, day: Date, serial: u32, secs: u64) {
        let mut st = self.lock();
        if st.is_closed(day) {
            return;
        }
        st.days
            .entry(day)
            .or_default()
            .load_time
            .entry(serial)
            .or_default()
            .push(secs);
    }

    /// A copy of one day's metrics so far (for a report on demand).
    pub fn day(&self, day: Date) -> DayMetrics {
        self.lock().days.get(&day).cloned().unwrap_or_default()
    }

    /// What has been seen.
    pub fn stats(&self) -> Stats {
        self.lock().stats.clone()
    }

    /// Accepts writers on `listener` until the runtime stops.
    pub async fn serve(self, listener: tokio::net::UnixListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            };
            self.lock().stats.connections += 1;
            let me = self.clone();
            tokio::spawn(async move {
                if let Err(why) = me.connection(stream).await {
                    let mut st = me.lock();
                    st.stats.bad_connections += 1;
                    st.stats.last_error = Some(why);
                }
            });
        }
    }

    /// One writer: handshake, data, stop. Err: why the connection was closed early.
    async fn connection(&self, mut stream: tokio::net::UnixStream) -> Result<(), String> {
        let mut dec = Decoder::default();
        let mut buf = vec![0u8; 64 << 10];
        let mut started = false;
        loop {
            let n = stream
                .read(&mut buf)
                .await
                .map_err(|e| format!("dnstap connection: {e}"))?;
            if n == 0 {
                // The writer went away (a daemon restart): what it sent is counted.
                return Ok(());
            }
            dec.push(&buf[..n]);
            while let Some(frame) = dec.next_frame().map_err(|e| format!("dnstap: {e}"))? {
                match frame {
                    Frame::Control(Control::Ready, types) => {
                        if !types.iter().any(|t| t == framestream::DNSTAP) {
                            return Err("dnstap: the writer offers no dnstap content type".into());
                        }
                        let accept =
                            framestream::control(Control::Accept, Some(framestream::DNSTAP));
                        stream
                            .write_all(&accept)
                            .await
                            .map_err(|e| format!("dnstap: answering READY: {e}"))?;
                    }
                    Frame::Control(Control::Start, _) => started = true,
                    Frame::Control(Control::Stop, _) => {
                        let finish = framestream::control(Control::Finish, None);
                        let _ = stream.write_all(&finish).await;
                        return Ok(());
                    }
                    Frame::Control(other, _) => {
                        return Err(format!("dnstap: unexpected control frame {other:?}"));
                    }
                    Frame::Data(payload) if started => {
                        self.payload(Bytes::from(payload), jiff::Timestamp::now().as_second());
                    }
                    Frame::Data(_) => return Err("dnstap: data before START".into()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
