//! Notices to host organisations, as the receiver keeps them: one row per event (the notice
//! id), channel (`webhook`, `email`) and recipient. A row is queued once (a second queueing of
//! the same event is ignored: at most one notice per event and recipient), tried until it is
//! delivered or its attempts run out, and kept either way, with the last error: the record
//! of who was told what, and when.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::{StoreError, open, open_existing};

/// A notice to queue.
#[derive(Debug, Clone)]
pub struct NewNotice {
    /// The event's notice id (the report id, or the quiet episode's).
    pub id: String,
    /// `webhook` or `email`.
    pub channel: String,
    /// The URL or the address.
    pub target: String,
    /// The device key it is about.
    pub key_id: String,
    /// Its site.
    pub site_id: String,
    /// `install-passed`, `install-failed`, `went-quiet`.
    pub kind: String,
    /// The signed notice (JSON envelope).
    pub body: String,
}

/// A notice as kept.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NoticeRow {
    /// The event's notice id.
    pub id: String,
    /// `webhook` or `email`.
    pub channel: String,
    /// The URL or the address.
    pub target: String,
    /// The device key it is about.
    pub key_id: String,
    /// Its site.
    pub site_id: String,
    /// What happened.
    pub kind: String,
    /// The signed notice.
    #[serde(skip)]
    pub body: String,
    /// When it was queued.
    pub queued_unix: i64,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// When the next attempt is due.
    pub next_unix: i64,
    /// When it was delivered.
    pub sent_unix: Option<i64>,
    /// When the receiver stopped trying.
    pub gave_up_unix: Option<i64>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
}

impl NoticeRow {
    /// `sent`, `gave-up`, `retrying` (an attempt failed) or `queued`.
    pub fn state(&self) -> &'static str {
        match (self.sent_unix, self.gave_up_unix) {
            (Some(_), _) => "sent",
            (None, Some(_)) => "gave-up",
            (None, None) if self.attempts > 0 => "retrying",
            (None, None) => "queued",
        }
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// Delivered.
    Sent,
    /// Failed; try again at this time.
    Retry {
        /// Why.
        error: String,
        /// When.
        next_unix: i64,
    },
    /// Failed for the last time.
    GaveUp {
        /// Why.
        error: String,
    },
}

fn write_err(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |source| StoreError::Write {
        path: path.to_path_buf(),
        source,
    }
}

/// Queues notices, due at once; returns how many were new (an event queued before is not
/// queued again).
pub fn queue(path: &Path, notices: &[NewNotice], now_unix: i64) -> Result<usize, StoreError> {
    let mut conn = open(path)?;
    let err = write_err(path);
    let tx = conn.transaction().map_err(&err)?;
    let mut new = 0;
    for n in notices {
        new += tx
            .execute(
                "INSERT OR IGNORE INTO notices
                     (id, channel, target, key_id, site_id, kind, body, queued_unix, next_unix)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
                params![
                    n.id, n.channel, n.target, n.key_id, n.site_id, n.kind, n.body, now_unix
                ],
            )
            .map_err(&err)?;
    }
    tx.commit().map_err(&err)?;
    Ok(new)
}

/// Whether any notice of event `id` was queued.
pub fn queued(path: &Path, id: &str) -> Result<bool, StoreError> {
    let conn = open_existing(path)?;
    conn.query_row(
        "SELECT 1 FROM notices WHERE id = ?1 LIMIT 1",
        params![id],
        |_| Ok(()),
    )
    .optional()
    .map(|r| r.is_some())
    .map_err(|source| StoreError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Notices due at `now_unix` (not delivered, not given up), oldest first, at most `limit`.
pub fn due(path: &Path, now_unix: i64, limit: usize) -> Result<Vec<NoticeRow>, StoreError> {
    let conn = open_existing(path)?;
    read(
        &conn,
        "WHERE sent_unix IS NULL AND gave_up_unix IS NULL AND next_unix <= ?1
         ORDER BY next_unix, queued_unix LIMIT ?2",
        params![now_unix, i64::try_from(limit).unwrap_or(i64::MAX)],
    )
    .map_err(|source| StoreError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Every notice (about `key_id`, or all), newest first.
pub fn notices(path: &Path, key_id: Option<&str>) -> Result<Vec<NoticeRow>, StoreError> {
    let conn = open_existing(path)?;
    read(
        &conn,
        "WHERE ?1 IS NULL OR key_id = ?1 ORDER BY queued_unix DESC, id, channel, target",
        params![key_id],
    )
    .map_err(|source| StoreError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn read(
    conn: &Connection,
    tail: &str,
    p: impl rusqlite::Params,
) -> rusqlite::Result<Vec<NoticeRow>> {
    conn.prepare(&format!(
        "SELECT id, channel, target, key_id, site_id, kind, body, queued_unix, attempts,
                next_unix, sent_unix, gave_up_unix, last_error
         FROM notices {tail}"
    ))?
    .query_map(p, |r| {
        Ok(NoticeRow {
            id: r.get(0)?,
            channel: r.get(1)?,
            target: r.get(2)?,
            key_id: r.get(3)?,
            site_id: r.get(4)?,
            kind: r.get(5)?,
            body: r.get(6)?,
            queued_unix: r.get(7)?,
            attempts: r.get(8)?,
            next_unix: r.get(9)?,
            sent_unix: r.get(10)?,
            gave_up_unix: r.get(11)?,
            last_error: r.get(12)?,
        })
    })?
    .collect()
}

/// Records an attempt at notice (`id`, `channel`, `target`) made at `now_unix`.
pub fn record(
    path: &Path,
    (id, channel, target): (&str, &str, &str),
    outcome: &Attempt,
    now_unix: i64,
) -> Result<(), StoreError> {
    let conn = open(path)?;
    let (sent, gave_up, next, error) = match outcome {
        Attempt::Sent => (Some(now_unix), None, now_unix, None),
        Attempt::Retry { error, next_unix } => (None, None, *next_unix, Some(error.as_str())),
        Attempt::GaveUp { error } => (None, Some(now_unix), now_unix, Some(error.as_str())),
    };
    conn.execute(
        "UPDATE notices SET attempts = attempts + 1, sent_unix = ?4, gave_up_unix = ?5,
                next_unix = ?6, last_error = COALESCE(?7, last_error)
         WHERE id = ?1 AND channel = ?2 AND target = ?3",
        params![id, channel, target, sent, gave_up, next, error],
    )
    .map(|_| ())
    .map_err(write_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(id: &str, target: &str) -> NewNotice {
        NewNotice {
            id: id.into(),
            channel: "email".into(),
            target: target.into(),
            key_id: "k1".into(),
            site_id: "s1".into(),
            kind: "install-passed".into(),
            body: "{}".into(),
        }
    }

    #[test]
    fn once_per_event_and_recipient_retried_then_kept() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("h.sqlite");
        assert_eq!(
            queue(&db, &[n("r1", "a@x.net"), n("r1", "b@x.net")], 100).unwrap(),
            2
        );
        // The same event again (a duplicate report, a restarted receiver): nothing new.
        assert_eq!(queue(&db, &[n("r1", "a@x.net")], 200).unwrap(), 0);
        assert!(queued(&db, "r1").unwrap() && !queued(&db, "r2").unwrap());
        assert_eq!(due(&db, 100, 10).unwrap().len(), 2);
        let a = ("r1", "email", "a@x.net");
        record(
            &db,
            a,
            &Attempt::Retry {
                error: "550 relay denied".into(),
                next_unix: 160,
            },
            100,
        )
        .unwrap();
        assert_eq!(due(&db, 150, 10).unwrap().len(), 1, "a waits for its retry");
        assert_eq!(due(&db, 160, 10).unwrap().len(), 2);
        record(
            &db,
            a,
            &Attempt::GaveUp {
                error: "timeout".into(),
            },
            160,
        )
        .unwrap();
        record(&db, ("r1", "email", "b@x.net"), &Attempt::Sent, 161).unwrap();
        assert!(due(&db, 10_000, 10).unwrap().is_empty());
        let all = notices(&db, Some("k1")).unwrap();
        let of = |t: &str| all.iter().find(|r| r.target == t).unwrap();
        assert_eq!(of("a@x.net").state(), "gave-up");
        assert_eq!(of("a@x.net").attempts, 2);
        assert_eq!(of("a@x.net").last_error.as_deref(), Some("timeout"));
        assert_eq!(of("b@x.net").state(), "sent");
        assert_eq!(of("b@x.net").sent_unix, Some(161));
        assert!(notices(&db, Some("other")).unwrap().is_empty());
    }
}
