//! Logging for PID 1: every record goes to the console (stdout, which is `/dev/console` once the
//! console is set up) and, once `/dev` exists, to `/dev/kmsg` with one write per record.
//!
//! Policy: `info` for stage results and lifecycle, `warn` for degraded-but-continuing, `error` for
//! failures that keep the node off the air. `/dev/kmsg` is rate limited (a token bucket, 20
//! records/s with a burst of 100) so a crash-looping daemon cannot flood the kernel log; records
//! dropped are counted and reported when the bucket refills.

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

struct Bucket {
    tokens: f64,
    last: Instant,
    dropped: u64,
}

const RATE: f64 = 20.0;
const BURST: f64 = 100.0;

static KMSG: Mutex<Option<(std::fs::File, Bucket)>> = Mutex::new(None);

/// Starts mirroring records to `/dev/kmsg` (call once `/dev` is mounted; silently skipped if the
/// device cannot be opened, e.g. in tests without privileges).
pub fn enable_kmsg() {
    if let Ok(f) = OpenOptions::new().write(true).open("/dev/kmsg")
        && let Ok(mut g) = KMSG.lock()
    {
        *g = Some((
            f,
            Bucket {
                tokens: BURST,
                last: Instant::now(),
                dropped: 0,
            },
        ));
    }
}

/// Writes one record.
pub fn log(level: Level, msg: &str) {
    let line = format!("imrs-init: {}{msg}\n", level.tag());
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(line.as_bytes());
    let _ = out.flush();
    drop(out);
    if let Ok(mut g) = KMSG.lock()
        && let Some((f, b)) = g.as_mut()
    {
        let now = Instant::now();
        b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * RATE).min(BURST);
        b.last = now;
        if b.tokens < 1.0 {
            b.dropped += 1;
            return;
        }
        b.tokens -= 1.0;
        if b.dropped > 0 {
            let note = format!(
                "<4>imrs-init: {} log records dropped (rate limit)\n",
                b.dropped
            );
            let _ = f.write_all(note.as_bytes());
            b.dropped = 0;
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
    log(Level::Error, msg.as_ref());
}
