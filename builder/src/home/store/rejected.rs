//! Refused submissions, kept bounded: anyone who can reach the receiver can make it refuse
//! something, so what it keeps about refusals must not grow with what they send.
//!
//! - Every text value is cut to [`MAX_VALUE_BYTES`] at a character boundary and marked
//!   (`… [truncated, N bytes]`, and the row's `truncated` flag), before it is even queued.
//! - At most [`RejectedCaps::per_source`] refusals are kept per source (an IPv4 address or an
//!   IPv6 /64, [`crate::home::source`]) and [`RejectedCaps::total`] in all; past a cap the
//!   oldest (of that source, or in all) is dropped to make room. Drops are counted, per source
//!   and in all, so `home list` can say how much was thrown away and by whom.
//! - The per-source counters are themselves bounded: a source whose refusals have all been
//!   dropped keeps its counter only while there are at most `total` counters; past that, the
//!   one with the fewest drops goes (its drops stay in the total).
//!
//! With the defaults (100 per source, 10,000 in all) the table holds at most 10,000 rows of a
//! few hundred bytes of each value: a few megabytes whatever arrives.

use std::borrow::Cow;

use rusqlite::{OptionalExtension, Transaction, params};
use serde::Serialize;

/// Longest value kept of a refused submission's text fields, in bytes.
pub const MAX_VALUE_BYTES: usize = 256;
/// Default of [`RejectedCaps::per_source`].
pub const DEFAULT_PER_SOURCE: u64 = 100;
/// Default of [`RejectedCaps::total`].
pub const DEFAULT_TOTAL: u64 = 10_000;

/// How many refused submissions are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RejectedCaps {
    /// Per source (IPv4 address or IPv6 /64).
    pub per_source: u64,
    /// In all.
    pub total: u64,
}

impl Default for RejectedCaps {
    fn default() -> RejectedCaps {
        RejectedCaps {
            per_source: DEFAULT_PER_SOURCE,
            total: DEFAULT_TOTAL,
        }
    }
}

/// A refused submission, as the receiver records it.
#[derive(Debug, Clone)]
pub struct Rejection {
    /// Receiver's time.
    pub received_unix: i64,
    /// Peer address (`ip:port`).
    pub peer: String,
    /// The client as the caps count it ([`crate::home::source::Source`]).
    pub source: String,
    /// HTTP status answered.
    pub status: u16,
    /// Why.
    pub reason: String,
    /// Device key id, when the envelope had a usable key.
    pub key_id: Option<String>,
    /// Report id, when the report parsed.
    pub report_id: Option<String>,
    /// Serial, when the report parsed.
    pub serial: Option<String>,
    /// Site, when the report parsed.
    pub site_id: Option<String>,
}

/// A rejection with every value cut to [`MAX_VALUE_BYTES`].
#[derive(Debug, Clone)]
pub(super) struct Bounded {
    pub(super) r: Rejection,
    pub(super) truncated: bool,
}

impl Bounded {
    pub(super) fn new(r: Rejection) -> Bounded {
        let mut truncated = false;
        let mut cut = |v: String| match bounded(&v) {
            (Cow::Borrowed(_), _) => v,
            (Cow::Owned(s), c) => {
                truncated |= c;
                s
            }
        };
        let r = Rejection {
            received_unix: r.received_unix,
            peer: cut(r.peer),
            source: cut(r.source),
            status: r.status,
            reason: cut(r.reason),
            key_id: r.key_id.map(&mut cut),
            report_id: r.report_id.map(&mut cut),
            serial: r.serial.map(&mut cut),
            site_id: r.site_id.map(&mut cut),
        };
        Bounded { r, truncated }
    }
}

/// `value` cut to at most [`MAX_VALUE_BYTES`] (at a character boundary) and marked with its
/// full length; whether it was cut.
pub fn bounded(value: &str) -> (Cow<'_, str>, bool) {
    if value.len() <= MAX_VALUE_BYTES {
        return (Cow::Borrowed(value), false);
    }
    let end = value.floor_char_boundary(MAX_VALUE_BYTES);
    let head = value.get(..end).unwrap_or_default();
    (
        Cow::Owned(format!("{head}… [truncated, {} bytes]", value.len())),
        true,
    )
}

/// How many refused submissions are kept and how many were dropped to stay within the caps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RejectedCounts {
    /// Kept (listed by `home list`).
    pub kept: u64,
    /// Dropped, oldest first, to stay within the caps.
    pub dropped: u64,
}

impl RejectedCounts {
    /// Every refusal recorded: kept and dropped.
    pub fn total(&self) -> u64 {
        self.kept.saturating_add(self.dropped)
    }
}

/// The counters row.
#[derive(Debug, Clone, Copy)]
struct Totals {
    kept: i64,
    dropped: i64,
    sources: i64,
}

fn totals(tx: &Transaction<'_>) -> rusqlite::Result<Totals> {
    tx.query_row(
        "SELECT kept, dropped, sources FROM rejected_totals WHERE one = 1",
        [],
        |r| {
            Ok(Totals {
                kept: r.get(0)?,
                dropped: r.get(1)?,
                sources: r.get(2)?,
            })
        },
    )
}

fn put_totals(tx: &Transaction<'_>, t: Totals) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE rejected_totals SET kept = ?1, dropped = ?2, sources = ?3 WHERE one = 1",
        params![t.kept, t.dropped, t.sources],
    )?;
    Ok(())
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Stores one refusal within `caps`, dropping the oldest as needed.
pub(super) fn insert(
    tx: &Transaction<'_>,
    b: &Bounded,
    caps: RejectedCaps,
) -> rusqlite::Result<()> {
    let r = &b.r;
    let (per_source, total) = (to_i64(caps.per_source), to_i64(caps.total));
    let mut t = totals(tx)?;
    let existing: Option<(i64, i64)> = tx
        .query_row(
            "SELECT kept, dropped FROM rejected_sources WHERE source = ?1",
            params![r.source],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    if existing.is_none() {
        t.sources += 1;
    }
    let (mut kept, mut dropped) = existing.unwrap_or((0, 0));
    // This source's oldest make room for its newest.
    while kept > 0 && kept >= per_source {
        tx.execute(
            "DELETE FROM rejected WHERE seq =
                 (SELECT seq FROM rejected WHERE source = ?1 ORDER BY seq LIMIT 1)",
            params![r.source],
        )?;
        kept -= 1;
        dropped += 1;
        t.kept -= 1;
        t.dropped += 1;
    }
    if per_source == 0 || total == 0 {
        dropped += 1;
        t.dropped += 1;
    } else {
        tx.execute(
            "INSERT INTO rejected (received_unix, peer, source, status, reason, key_id,
                 report_id, serial, site_id, truncated)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                r.received_unix,
                r.peer,
                r.source,
                r.status,
                r.reason,
                r.key_id,
                r.report_id,
                r.serial,
                r.site_id,
                b.truncated
            ],
        )?;
        kept += 1;
        t.kept += 1;
    }
    tx.execute(
        "INSERT INTO rejected_sources (source, kept, dropped) VALUES (?1, ?2, ?3)
         ON CONFLICT(source) DO UPDATE SET kept = excluded.kept, dropped = excluded.dropped",
        params![r.source, kept, dropped],
    )?;
    // The oldest of all make room.
    while t.kept > total {
        let Some((seq, source)) = tx
            .query_row(
                "SELECT seq, source FROM rejected ORDER BY seq LIMIT 1",
                [],
                |row| Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?)),
            )
            .optional()?
        else {
            break;
        };
        tx.execute("DELETE FROM rejected WHERE seq = ?1", params![seq])?;
        tx.execute(
            "UPDATE rejected_sources SET kept = kept - 1, dropped = dropped + 1
             WHERE source = ?1",
            params![source],
        )?;
        t.kept -= 1;
        t.dropped += 1;
    }
    prune_sources(tx, &mut t, total)?;
    put_totals(tx, t)
}

/// Drops counters of sources with nothing kept, fewest drops first, while there are more than
/// `max` (at least one).
fn prune_sources(tx: &Transaction<'_>, t: &mut Totals, max: i64) -> rusqlite::Result<()> {
    while t.sources > max.max(1) {
        let victim: Option<String> = tx
            .query_row(
                "SELECT source FROM rejected_sources WHERE kept = 0
                 ORDER BY dropped, source LIMIT 1",
                [],
                |row| row.get(0),
            )
            .optional()?;
        let Some(victim) = victim else { break };
        tx.execute(
            "DELETE FROM rejected_sources WHERE source = ?1",
            params![victim],
        )?;
        t.sources -= 1;
    }
    Ok(())
}

/// Counts `n` refusals dropped before they reached the database (the queue to the writer was
/// full); their source is not kept.
pub(super) fn add_dropped(tx: &Transaction<'_>, n: u64) -> rusqlite::Result<()> {
    let mut t = totals(tx)?;
    t.dropped = t.dropped.saturating_add(to_i64(n));
    put_totals(tx, t)
}

/// Recomputes the kept counters from the table (dropped counts are kept as they are).
pub(super) fn recount(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "UPDATE rejected_sources SET kept = 0;
         INSERT INTO rejected_sources (source, kept, dropped)
             SELECT source, COUNT(*), 0 FROM rejected WHERE true GROUP BY source
             ON CONFLICT(source) DO UPDATE SET kept = excluded.kept;
         UPDATE rejected_totals SET
             kept = (SELECT COUNT(*) FROM rejected),
             sources = (SELECT COUNT(*) FROM rejected_sources)
         WHERE one = 1;",
    )
}

/// Brings the table within `caps` (they may be lower than when it was written): recounts, then
/// drops the oldest per source and in all. Returns how many were dropped.
pub(super) fn trim(tx: &Transaction<'_>, caps: RejectedCaps) -> rusqlite::Result<u64> {
    recount(tx)?;
    let (per_source, total) = (to_i64(caps.per_source), to_i64(caps.total));
    let mut t = totals(tx)?;
    let before = t.dropped;
    let over: Vec<(String, i64)> = tx
        .prepare("SELECT source, kept FROM rejected_sources WHERE kept > ?1")?
        .query_map(params![per_source], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (source, kept) in over {
        let n = kept - per_source;
        tx.execute(
            "DELETE FROM rejected WHERE seq IN
                 (SELECT seq FROM rejected WHERE source = ?1 ORDER BY seq LIMIT ?2)",
            params![source, n],
        )?;
        tx.execute(
            "UPDATE rejected_sources SET kept = kept - ?2, dropped = dropped + ?2
             WHERE source = ?1",
            params![source, n],
        )?;
        t.kept -= n;
        t.dropped += n;
    }
    if t.kept > total {
        let n = t.kept - total;
        let oldest: Vec<(String, i64)> = tx
            .prepare(
                "SELECT source, COUNT(*) FROM
                     (SELECT source FROM rejected ORDER BY seq LIMIT ?1) GROUP BY source",
            )?
            .query_map(params![n], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        for (source, k) in oldest {
            tx.execute(
                "UPDATE rejected_sources SET kept = kept - ?2, dropped = dropped + ?2
                 WHERE source = ?1",
                params![source, k],
            )?;
        }
        tx.execute(
            "DELETE FROM rejected WHERE seq IN
                 (SELECT seq FROM rejected ORDER BY seq LIMIT ?1)",
            params![n],
        )?;
        t.kept -= n;
        t.dropped += n;
    }
    prune_sources(tx, &mut t, total)?;
    put_totals(tx, t)?;
    Ok((t.dropped - before).max(0).unsigned_abs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    fn db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let conn = super::super::open(&dir.path().join("r.sqlite")).unwrap();
        (dir, conn)
    }

    fn rejection(source: &str, n: usize) -> Rejection {
        Rejection {
            received_unix: 1,
            peer: format!("{source}:{n}"),
            source: source.into(),
            status: 422,
            reason: format!("invalid: #{n}"),
            key_id: None,
            report_id: None,
            serial: None,
            site_id: None,
        }
    }

    type Counter = (String, i64, i64);

    fn put(conn: &mut Connection, source: &str, n: usize, caps: RejectedCaps) {
        let tx = conn.transaction().unwrap();
        insert(&tx, &Bounded::new(rejection(source, n)), caps).unwrap();
        tx.commit().unwrap();
    }

    /// (source, kept, dropped) per counter row, then the totals.
    fn state(conn: &Connection) -> (Vec<Counter>, (i64, i64, i64)) {
        let rows = conn
            .prepare("SELECT source, kept, dropped FROM rejected_sources ORDER BY source")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let t = conn
            .query_row(
                "SELECT kept, dropped, sources FROM rejected_totals",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        (rows, t)
    }

    fn reasons(conn: &Connection, source: &str) -> Vec<String> {
        conn.prepare("SELECT reason FROM rejected WHERE source = ?1 ORDER BY seq")
            .unwrap()
            .query_map([source], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn cuts_values_at_a_character_boundary_and_marks_them() {
        let short = "é".repeat(MAX_VALUE_BYTES / 2);
        assert_eq!(bounded(&short), (Cow::Borrowed(short.as_str()), false));
        // 'é' is two bytes: an odd limit would fall inside one.
        let long = format!("a{}", "é".repeat(400));
        let (cut, was) = bounded(&long);
        assert!(was);
        assert!(cut.ends_with("… [truncated, 801 bytes]"), "{cut}");
        let head = cut.trim_end_matches("… [truncated, 801 bytes]");
        assert!(head.len() <= MAX_VALUE_BYTES && head.len() >= MAX_VALUE_BYTES - 1);
        assert!(long.starts_with(head));
        let b = Bounded::new(Rejection {
            serial: Some("S".repeat(1 << 20)),
            ..rejection("192.0.2.1", 0)
        });
        assert!(b.truncated);
        assert!(b.r.serial.unwrap().len() < MAX_VALUE_BYTES + 40);
        assert!(!Bounded::new(rejection("192.0.2.1", 0)).truncated);
    }

    #[test]
    fn caps_per_source_and_in_all_dropping_the_oldest_and_counting() {
        let (_d, mut conn) = db();
        let caps = RejectedCaps {
            per_source: 3,
            total: 5,
        };
        for n in 0..5 {
            put(&mut conn, "A", n, caps);
        }
        put(&mut conn, "B", 0, caps);
        put(&mut conn, "B", 1, caps);
        put(&mut conn, "C", 0, caps);
        // A kept its newest 3 (2 dropped by the per-source cap); then C pushed out A's oldest
        // (the cap in all).
        assert_eq!(reasons(&conn, "A"), ["invalid: #3", "invalid: #4"]);
        assert_eq!(reasons(&conn, "B"), ["invalid: #0", "invalid: #1"]);
        assert_eq!(
            state(&conn),
            (
                vec![("A".into(), 2, 3), ("B".into(), 2, 0), ("C".into(), 1, 0)],
                (5, 3, 3)
            )
        );
        for s in ["C", "D", "E", "F"] {
            put(&mut conn, s, usize::from(s == "C"), caps);
        }
        // A lost its last row but keeps its counter (it dropped the most); counters are at
        // most `total`, so the emptied ones with the fewest drops went (B's two).
        let (rows, t) = state(&conn);
        assert_eq!(t, (5, 7, rows.len() as i64));
        assert!(rows.len() <= 5, "{rows:?}");
        assert!(rows.contains(&("A".into(), 0, 5)), "{rows:?}");
        assert!(!rows.iter().any(|r| r.0 == "B"), "{rows:?}");
        let kept: i64 = conn
            .query_row("SELECT COUNT(*) FROM rejected", [], |r| r.get(0))
            .unwrap();
        assert_eq!(kept, 5);

        // Lower caps at the next start: trimmed, counted.
        let tx = conn.transaction().unwrap();
        let n = trim(
            &tx,
            RejectedCaps {
                per_source: 1,
                total: 2,
            },
        )
        .unwrap();
        tx.commit().unwrap();
        assert_eq!(n, 3);
        let (rows, t) = state(&conn);
        assert_eq!((t.0, t.1), (2, 10));
        assert!(rows.len() <= 2, "{rows:?}");
        assert_eq!(rows.iter().map(|r| r.1).sum::<i64>(), 2);

        // Caps of 0 keep nothing and count everything.
        let tx = conn.transaction().unwrap();
        let zero = RejectedCaps {
            per_source: 0,
            total: 0,
        };
        insert(&tx, &Bounded::new(rejection("G", 0)), zero).unwrap();
        add_dropped(&tx, 5).unwrap();
        tx.commit().unwrap();
        let (rows, t) = state(&conn);
        assert_eq!((t.0, t.1), (0, 13 + 5));
        assert_eq!(rows, [("G".into(), 0, 1)]);
    }
}
