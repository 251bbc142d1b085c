//! Logging for PID 1: every record goes to the console (stdout, which is `/dev/console` once the
//! console is set up) and, once `/dev` exists, to `/dev/kmsg` with one write per record.
//!
//! Policy: `info` for stage results and lifecycle, `warn` for degraded-but-continuing, `error` for
//! failures that keep the node off the air. `/dev/kmsg` is rate limited (a token bucket, 20
//! records/s with a burst of 100) so a crash-looping daemon cannot flood the kernel log; records
//! dropped are counted and reported when the bucket refills. Daemon output has its own bucket per
//! daemon ([`RateLimit`], used by the supervisor) before it reaches either.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::Mutex;
use std::time::Instant;

/// Severity of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Failure that keeps the node off the air.
    Error,
    /// Degraded but continuing.
    Warn,
    /// Normal progress.
    Info,
}

impl Level {
    /// Priority of the `/dev/kmsg` copy. Errors and warnings go in as "notice" (5), not "err"
    /// or "warning": the record is already on the console, and the kernel would print it a second
    /// time at the usual `loglevel=4`. The severity stays visible in the text.
    fn kmsg_priority(self) -> u8 {
        match self {
            Level::Error | Level::Warn => 5,
            Level::Info => 6,
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Level::Error => "ERROR ",
            Level::Warn => "WARN  ",
            Level::Info => "",
        }
    }
}

/// A token bucket: `rate` records per second on average, bursts up to `burst`. Counts what it
/// refuses so the caller can say how much was dropped.
#[derive(Debug, Clone)]
pub struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    dropped: u64,
}

/// What [`RateLimit::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Write the record; `dropped` records were refused since the last one written.
    Yes {
        /// Records refused before this one.
        dropped: u64,
    },
    /// Drop it.
    No,
}

impl RateLimit {
    /// A full bucket.
    pub fn new(rate: f64, burst: f64) -> RateLimit {
        RateLimit {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
            dropped: 0,
        }
    }

    /// Whether a record at `now` may be written.
    pub fn admit(&mut self, now: Instant) -> Admit {
        let elapsed = now.saturating_duration_since(self.last);
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens < 1.0 {
            self.dropped += 1;
            return Admit::No;
        }
        self.tokens -= 1.0;
        let dropped = std::mem::take(&mut self.dropped);
        Admit::Yes { dropped }
    }

    /// Records refused and not yet reported.
    #[cfg(test)]
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

const KMSG_RATE: f64 = 20.0;
const KMSG_BURST: f64 = 100.0;

static KMSG: Mutex<Option<(std::fs::File, RateLimit)>> = Mutex::new(None);

/// Starts mirroring records to `/dev/kmsg` (call once `/dev` is mounted; silently skipped if the
/// device cannot be opened, e.g. in tests without privileges).
pub fn enable_kmsg() {
    if let Ok(f) = OpenOptions::new().write(true).open("/dev/kmsg")
        && let Ok(mut g) = KMSG.lock()
    {
        *g = Some((f, RateLimit::new(KMSG_RATE, KMSG_BURST)));
    }
}

/// Writes one record: one `write` to the console and one to `/dev/kmsg`.
pub fn log(level: Level, msg: &str) {
    let line = format!("imrs-init: {}{msg}\n", level.tag());
    remember(line.trim_end());
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(line.as_bytes());
    let _ = out.flush();
    drop(out);
    if let Ok(mut g) = KMSG.lock()
        && let Some((f, bucket)) = g.as_mut()
    {
        let Admit::Yes { dropped } = bucket.admit(Instant::now()) else {
            return;
        };
        if dropped > 0 {
            let note = format!("<5>imrs-init: {dropped} log records dropped (rate limit)");
            let _ = f.write_all(note.as_bytes());
        }
        let rec = format!("<{}>imrs-init: {}{msg}", level.kmsg_priority(), level.tag());
        let _ = f.write_all(rec.as_bytes());
    }
}

/// `info` record.
pub fn info(msg: impl AsRef<str>) {
    log(Level::Info, msg.as_ref());
}

/// `warn` record.
pub fn warn(msg: impl AsRef<str>) {
    log(Level::Warn, msg.as_ref());
}

/// `error` record.
pub fn error(msg: impl AsRef<str>) {
    if let Ok(mut g) = LAST_ERROR.lock() {
        *g = Some(msg.as_ref().to_string());
    }
    log(Level::Error, msg.as_ref());
}

/// Console lines kept for `collect-logs` (what a `command-result` may carry).
pub const RECENT_LINES: usize = imrs_config::report::MAX_LOG_LINES;

/// The latest records as written to the console, each cut to 1 KiB.
static RECENT: Mutex<std::collections::VecDeque<String>> =
    Mutex::new(std::collections::VecDeque::new());

fn remember(line: &str) {
    if let Ok(mut g) = RECENT.lock() {
        if g.len() >= RECENT_LINES {
            g.pop_front();
        }
        g.push_back(cut(line, 1024));
    }
}

/// The last `n` console records, oldest first.
pub fn recent(n: usize) -> Vec<String> {
    RECENT
        .lock()
        .map(|g| g.iter().skip(g.len().saturating_sub(n)).cloned().collect())
        .unwrap_or_default()
}

/// The last `error` record (heartbeats carry it).
static LAST_ERROR: Mutex<Option<String>> = Mutex::new(None);

/// The last `error` record, if there was one.
pub fn last_error() -> Option<String> {
    LAST_ERROR.lock().ok().and_then(|g| g.clone())
}

/// `s` cut to at most `max` bytes on a character boundary, `...` marking a cut.
pub fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let end = (0..=max.saturating_sub(3))
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0);
    format!("{}...", s.get(..end).unwrap_or_default())
}

/// An error and its whole `source()` chain on one line.
pub use imrs_config::error_chain as chain;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn bucket_limits_bursts_refills_and_counts_drops() {
        let t0 = Instant::now();
        let mut b = RateLimit::new(2.0, 3.0);
        let got: Vec<Admit> = (0..5).map(|_| b.admit(t0)).collect();
        assert_eq!(
            got,
            vec![
                Admit::Yes { dropped: 0 },
                Admit::Yes { dropped: 0 },
                Admit::Yes { dropped: 0 },
                Admit::No,
                Admit::No
            ]
        );
        assert_eq!(b.dropped(), 2);
        // Half a second later one token is back; the two refused records are reported with it.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(b.admit(t1), Admit::Yes { dropped: 2 });
        assert_eq!(b.admit(t1), Admit::No);
        // Never more than the burst after a long pause.
        let t2 = t1 + Duration::from_secs(3600);
        let admitted = (0..10)
            .filter(|_| matches!(b.admit(t2), Admit::Yes { .. }))
            .count();
        assert_eq!(admitted, 3);
    }

    #[test]
    fn chain_joins_sources() {
        let e = std::io::Error::other(std::fmt::Error);
        assert!(chain(&e).contains("error"));
    }
}
