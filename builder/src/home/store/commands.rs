//! Signed commands for devices, as the receiver keeps them.
//!
//! A command is queued by `imrs-build fleet command` on a connection of its own (the operator's
//! machine holds the operations key; the receiver never does): the next sequence for the device
//! key is taken and the signed command inserted in one write transaction, so two operators
//! cannot give two commands the same sequence. The writer thread hands every unresolved command
//! of a device to it in the answer to each of its reports, oldest first, and marks it delivered
//! in the report's transaction ([`deliver`]); an expired one is handed over too, since the box
//! must refuse it by sequence (and say so) before it takes the next. The device's signed
//! `command-result` report resolves it ([`resolve`]).
//!
//! States as `fleet status` shows them: `queued` (never delivered), `delivered` (handed to the
//! box, no result yet), `done`, `failed` or `refused` (with the box's reason), and `expired`
//! for a command past its expiry that no result resolved.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{StoreError, open, open_existing};

/// Most commands handed to a device in one answer.
pub const MAX_DELIVERED: i64 = 16;

/// A command queued for a device.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CommandRow {
    /// The device key id it is for.
    pub key_id: String,
    /// Its sequence for that key.
    pub sequence: u64,
    /// `drain`, `reboot`, ...
    pub action: String,
    /// When it was queued.
    pub queued_unix: i64,
    /// When it expires.
    pub expires_unix: i64,
    /// When it was first handed to the device.
    pub delivered_unix: Option<i64>,
    /// How many answers carried it.
    pub deliveries: u64,
    /// When the device's result arrived.
    pub result_unix: Option<i64>,
    /// `done`, `failed` or `refused`.
    pub outcome: Option<String>,
    /// The device's reason.
    pub reason: Option<String>,
    /// The device's log lines (`collect-logs`).
    pub logs: Vec<String>,
}

impl CommandRow {
    /// The state at `now_unix`: queued, delivered, done, failed, refused or expired.
    pub fn state(&self, now_unix: i64) -> &str {
        match (&self.outcome, self.delivered_unix) {
            (Some(o), _) => o,
            (None, _) if now_unix > self.expires_unix => "expired",
            (None, Some(_)) => "delivered",
            (None, None) => "queued",
        }
    }
}

/// Queues a command for `key_id`: `make` gets the sequence (one more than the highest the key
/// ever had) and returns (action, the signed command's JSON text, expiry); the row is inserted
/// in the same write transaction. Returns the sequence.
pub fn queue(
    path: &Path,
    key_id: &str,
    now_unix: i64,
    make: impl FnOnce(u64) -> anyhow::Result<(String, String, i64)>,
) -> anyhow::Result<u64> {
    let mut conn = open(path)?;
    let err = |source| StoreError::Read {
        path: path.to_path_buf(),
        source,
    };
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(err)?;
    let last: Option<i64> = tx
        .query_row(
            "SELECT MAX(sequence) FROM commands WHERE key_id = ?1",
            params![key_id],
            |r| r.get(0),
        )
        .map_err(err)?;
    let sequence = last.unwrap_or(0).max(0).unsigned_abs() + 1;
    let (action, signed, expires_unix) = make(sequence)?;
    tx.execute(
        "INSERT INTO commands (key_id, sequence, action, signed, queued_unix, expires_unix)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            key_id,
            i64::try_from(sequence)?,
            action,
            signed,
            now_unix,
            expires_unix
        ],
    )
    .map_err(err)?;
    tx.commit().map_err(err)?;
    Ok(sequence)
}

/// The unresolved commands of `key_id`, oldest first (at most [`MAX_DELIVERED`]), as signed
/// JSON texts; each is marked delivered at `now_unix` (first delivery kept) and counted.
pub(super) fn deliver(
    tx: &rusqlite::Transaction<'_>,
    key_id: &str,
    now_unix: i64,
) -> rusqlite::Result<Vec<String>> {
    let rows: Vec<(i64, String)> = tx
        .prepare_cached(
            "SELECT sequence, signed FROM commands WHERE key_id = ?1 AND outcome IS NULL
             ORDER BY sequence LIMIT ?2",
        )?
        .query_map(params![key_id, MAX_DELIVERED], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<Result<_, _>>()?;
    for (sequence, _) in &rows {
        tx.execute(
            "UPDATE commands SET delivered_unix = COALESCE(delivered_unix, ?3),
                 deliveries = deliveries + 1
             WHERE key_id = ?1 AND sequence = ?2",
            params![key_id, sequence, now_unix],
        )?;
    }
    Ok(rows.into_iter().map(|(_, s)| s).collect())
}

/// A device's result for one of its commands.
#[derive(Debug, Clone)]
pub struct Resolution {
    /// The sequence the result names.
    pub sequence: u64,
    /// `done`, `failed`, `refused`.
    pub outcome: String,
    /// Why.
    pub reason: Option<String>,
    /// `collect-logs` lines.
    pub logs: Vec<String>,
}

/// Records `key_id`'s result for one of its commands (the first result counts: a result
/// delivered twice changes nothing). A result for a sequence never queued for the key is kept
/// in the report only.
pub(super) fn resolve(
    tx: &rusqlite::Transaction<'_>,
    key_id: &str,
    r: &Resolution,
    now_unix: i64,
) -> rusqlite::Result<()> {
    let Ok(sequence) = i64::try_from(r.sequence) else {
        return Ok(());
    };
    let logs = serde_json::to_string(&r.logs).unwrap_or_else(|_| "[]".into());
    tx.execute(
        "UPDATE commands SET result_unix = ?3, outcome = ?4, reason = ?5, logs = ?6
         WHERE key_id = ?1 AND sequence = ?2 AND outcome IS NULL",
        params![key_id, sequence, now_unix, r.outcome, r.reason, logs],
    )?;
    Ok(())
}

/// Every command (of `key_id`, or all), by device and sequence.
pub fn commands(path: &Path, key_id: Option<&str>) -> Result<Vec<CommandRow>, StoreError> {
    let conn = open_existing(path)?;
    read(&conn, key_id).map_err(|source| StoreError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn read(conn: &Connection, key_id: Option<&str>) -> rusqlite::Result<Vec<CommandRow>> {
    let mut stmt = conn.prepare(
        "SELECT key_id, sequence, action, queued_unix, expires_unix, delivered_unix,
                deliveries, result_unix, outcome, reason, logs
         FROM commands WHERE ?1 IS NULL OR key_id = ?1 ORDER BY key_id, sequence",
    )?;
    stmt.query_map(params![key_id], |r| {
        let logs: Option<String> = r.get(10)?;
        Ok(CommandRow {
            key_id: r.get(0)?,
            sequence: r.get::<_, i64>(1)?.max(0).unsigned_abs(),
            action: r.get(2)?,
            queued_unix: r.get(3)?,
            expires_unix: r.get(4)?,
            delivered_unix: r.get(5)?,
            deliveries: r.get::<_, i64>(6)?.max(0).unsigned_abs(),
            result_unix: r.get(7)?,
            outcome: r.get(8)?,
            reason: r.get(9)?,
            logs: logs
                .and_then(|l| serde_json::from_str(&l).ok())
                .unwrap_or_default(),
        })
    })?
    .collect()
}

/// The device key ids the reports know for `device` (a key id, or a serial), newest first.
pub fn key_ids_for(path: &Path, device: &str) -> Result<Vec<String>, StoreError> {
    let conn = open_existing(path)?;
    let err = |source| StoreError::Read {
        path: path.to_path_buf(),
        source,
    };
    let exact: Option<String> = conn
        .query_row(
            "SELECT key_id FROM reports WHERE key_id = ?1 LIMIT 1",
            params![device],
            |r| r.get(0),
        )
        .optional()
        .map_err(err)?;
    if let Some(k) = exact {
        return Ok(vec![k]);
    }
    conn.prepare(
        "SELECT key_id FROM reports WHERE serial = ?1 GROUP BY key_id
         ORDER BY MAX(received_unix) DESC",
    )
    .and_then(|mut s| {
        s.query_map(params![device], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()
    })
    .map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_deliveries_results_and_states() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("home.sqlite");
        let q = |key: &str, action: &str, expires: i64| {
            queue(&db, key, 100, |seq| {
                Ok((action.into(), format!("{{\"seq\":{seq}}}"), expires))
            })
            .unwrap()
        };
        assert_eq!(q("k1", "drain", 1000), 1);
        assert_eq!(q("k1", "reboot", 150), 2);
        assert_eq!(q("k2", "drain", 1000), 1, "sequences are per device key");
        // A failing signer queues nothing and takes no sequence.
        assert!(queue(&db, "k1", 100, |_| anyhow::bail!("no key")).is_err());
        assert_eq!(q("k1", "undrain", 1000), 3);

        let mut conn = open(&db).unwrap();
        let tx = conn.transaction().unwrap();
        // Expired ones go out too: the box must refuse them by sequence.
        let sent = deliver(&tx, "k1", 200).unwrap();
        assert_eq!(sent, ["{\"seq\":1}", "{\"seq\":2}", "{\"seq\":3}"]);
        let res = |sequence, outcome: &str| Resolution {
            sequence,
            outcome: outcome.into(),
            reason: Some("why".into()),
            logs: vec!["l".into()],
        };
        resolve(&tx, "k1", &res(1, "done"), 210).unwrap();
        // The first result counts; a result for another key's or an unknown sequence is ignored.
        resolve(&tx, "k1", &res(1, "failed"), 220).unwrap();
        resolve(&tx, "k2", &res(3, "done"), 220).unwrap();
        resolve(&tx, "k1", &res(u64::MAX, "done"), 220).unwrap();
        assert_eq!(
            deliver(&tx, "k1", 300).unwrap(),
            ["{\"seq\":2}", "{\"seq\":3}"]
        );
        tx.commit().unwrap();

        let rows = commands(&db, Some("k1")).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(
            (
                rows[0].state(400),
                rows[0].result_unix,
                rows[0].logs.clone()
            ),
            ("done", Some(210), vec!["l".to_string()])
        );
        assert_eq!((rows[1].state(400), rows[1].deliveries), ("expired", 2));
        assert_eq!(
            (rows[2].state(400), rows[2].delivered_unix),
            ("delivered", Some(200))
        );
        let k2 = commands(&db, Some("k2")).unwrap();
        assert_eq!((k2[0].state(400), k2[0].outcome.clone()), ("queued", None));
        assert_eq!(commands(&db, None).unwrap().len(), 4);
    }
}
