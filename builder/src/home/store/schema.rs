//! The tables of the receiver's database, and the upgrade of an older one in place.
//!
//! Version 4 (this build):
//! - `reports`: one verified report per id; `enrolled` says whether its key was enrolled when
//!   it arrived (0 under open enrolment), `serial_conflict` names the device key that held the
//!   report's serial first when an unenrolled key claims it.
//! - `rejected`: refused submissions, values cut to [`super::rejected::MAX_VALUE_BYTES`]
//!   (`truncated` set), `source` the client as the limits count it.
//! - `rejected_sources`, `rejected_totals`: how many refusals are kept and how many were
//!   dropped, per source and in all (see [`super::rejected`]).
//! - `commands`: signed commands queued for device keys, their delivery and the devices'
//!   results (see [`super::commands`]).
//! - `notices`: what the host organisations are told, one row per event, channel and
//!   recipient, and how its delivery went (see [`super::notices`]).
//!
//! Version 3 had no `notices` (nor the fleet view's indexes: reports by device key and event,
//! and the few reports with a serial conflict), version 2 no `commands` either; their upgrades
//! create them.
//! Version 1 had neither the two report columns nor the counters, and kept refused values
//! whole. Its upgrade adds the columns (old reports count as not enrolled: nobody knows), cuts
//! the stored values, derives each refusal's source from its peer address, counts, and then
//! compacts the file once (`VACUUM`), since a version 1 database may have been filled by
//! exactly the flood this version bounds.

use std::net::SocketAddr;
use std::path::Path;

use rusqlite::{Connection, Transaction, TransactionBehavior, params};

use super::StoreError;
use super::rejected;
use crate::home::source::Source;

/// Schema version stored in `PRAGMA user_version`.
pub const SCHEMA_VERSION: i64 = 4;

const REPORTS: &str = "
CREATE TABLE IF NOT EXISTS reports (
    id              TEXT PRIMARY KEY,
    key_id          TEXT NOT NULL,
    public_key      TEXT NOT NULL,
    serial          TEXT NOT NULL,
    profile         TEXT NOT NULL,
    site_id         TEXT NOT NULL,
    instance        TEXT NOT NULL,
    event           TEXT NOT NULL,
    failed_stage    TEXT,
    failed_reason   TEXT,
    zone_serial     INTEGER,
    image           TEXT NOT NULL,
    lab             INTEGER NOT NULL,
    created_unix    INTEGER NOT NULL,
    received_unix   INTEGER NOT NULL,
    peer            TEXT NOT NULL,
    report          TEXT NOT NULL,
    signature       TEXT NOT NULL,
    digest          TEXT NOT NULL,
    enrolled        INTEGER NOT NULL DEFAULT 0,
    serial_conflict TEXT
);
CREATE TABLE IF NOT EXISTS rejected (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    received_unix INTEGER NOT NULL,
    peer          TEXT NOT NULL,
    status        INTEGER NOT NULL,
    reason        TEXT NOT NULL,
    key_id        TEXT,
    report_id     TEXT,
    serial        TEXT,
    site_id       TEXT,
    source        TEXT NOT NULL DEFAULT '',
    truncated     INTEGER NOT NULL DEFAULT 0
);
";

/// Indexes and counters: created by both a fresh database and the upgrade.
const COMMON: &str = "
CREATE INDEX IF NOT EXISTS reports_by_key ON reports(key_id, received_unix);
CREATE INDEX IF NOT EXISTS reports_by_serial ON reports(serial);
CREATE INDEX IF NOT EXISTS reports_by_key_event ON reports(key_id, event, received_unix);
CREATE INDEX IF NOT EXISTS reports_conflicts ON reports(serial_conflict)
    WHERE serial_conflict IS NOT NULL;
CREATE INDEX IF NOT EXISTS rejected_by_source ON rejected(source, seq);
CREATE TABLE IF NOT EXISTS rejected_sources (
    source  TEXT PRIMARY KEY,
    kept    INTEGER NOT NULL,
    dropped INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rejected_sources_idle ON rejected_sources(kept, dropped);
CREATE TABLE IF NOT EXISTS rejected_totals (
    one     INTEGER PRIMARY KEY CHECK (one = 1),
    kept    INTEGER NOT NULL,
    dropped INTEGER NOT NULL,
    sources INTEGER NOT NULL
);
INSERT OR IGNORE INTO rejected_totals (one, kept, dropped, sources) VALUES (1, 0, 0, 0);
CREATE TABLE IF NOT EXISTS commands (
    key_id         TEXT NOT NULL,
    sequence       INTEGER NOT NULL,
    action         TEXT NOT NULL,
    signed         TEXT NOT NULL,
    queued_unix    INTEGER NOT NULL,
    expires_unix   INTEGER NOT NULL,
    delivered_unix INTEGER,
    deliveries     INTEGER NOT NULL DEFAULT 0,
    result_unix    INTEGER,
    outcome        TEXT,
    reason         TEXT,
    logs           TEXT,
    PRIMARY KEY (key_id, sequence)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS notices (
    id           TEXT NOT NULL,
    channel      TEXT NOT NULL,
    target       TEXT NOT NULL,
    key_id       TEXT NOT NULL,
    site_id      TEXT NOT NULL,
    kind         TEXT NOT NULL,
    body         TEXT NOT NULL,
    queued_unix  INTEGER NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_unix    INTEGER NOT NULL,
    sent_unix    INTEGER,
    gave_up_unix INTEGER,
    last_error   TEXT,
    PRIMARY KEY (id, channel, target)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS notices_due ON notices(next_unix) WHERE sent_unix IS NULL AND gave_up_unix IS NULL;
CREATE INDEX IF NOT EXISTS notices_by_key ON notices(key_id, queued_unix);
";

const UPGRADE_V1: &str = "
ALTER TABLE reports ADD COLUMN enrolled INTEGER NOT NULL DEFAULT 0;
ALTER TABLE reports ADD COLUMN serial_conflict TEXT;
ALTER TABLE rejected ADD COLUMN source TEXT NOT NULL DEFAULT '';
ALTER TABLE rejected ADD COLUMN truncated INTEGER NOT NULL DEFAULT 0;
";

fn version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
}

/// Creates the tables of a new database or upgrades an older one; refuses a newer one.
pub(super) fn prepare(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let open_err = |source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    };
    let found = version(conn).map_err(open_err)?;
    if found == SCHEMA_VERSION {
        return Ok(());
    }
    if found > SCHEMA_VERSION {
        return Err(StoreError::Schema {
            path: path.to_path_buf(),
            found,
        });
    }
    // Another process may be doing the same: decide under the write lock.
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(open_err)?;
    let found = version(&tx).map_err(open_err)?;
    let upgrade_err = |source| StoreError::Upgrade {
        path: path.to_path_buf(),
        from: found,
        source,
    };
    let vacuum = match found {
        0 => {
            tx.execute_batch(REPORTS).map_err(open_err)?;
            tx.execute_batch(COMMON).map_err(open_err)?;
            false
        }
        1 => {
            upgrade_v1(&tx).map_err(upgrade_err)?;
            true
        }
        2 | 3 => {
            tx.execute_batch(COMMON).map_err(upgrade_err)?;
            false
        }
        SCHEMA_VERSION => false,
        _ => {
            return Err(StoreError::Schema {
                path: path.to_path_buf(),
                found,
            });
        }
    };
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(open_err)?;
    tx.commit().map_err(open_err)?;
    if vacuum {
        // In WAL mode the file shrinks only once the log is checkpointed.
        conn.execute_batch("VACUUM; PRAGMA wal_checkpoint(TRUNCATE);")
            .map_err(upgrade_err)?;
    }
    Ok(())
}

/// The source a version 1 peer string (`ip:port`) counts as; the peer itself if it does not
/// parse.
fn source_of(peer: &str) -> String {
    peer.parse::<SocketAddr>()
        .map(|a| Source::from(a.ip()).to_string())
        .unwrap_or_else(|_| peer.to_string())
}

fn upgrade_v1(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(UPGRADE_V1)?;
    tx.execute_batch(COMMON)?;
    let rows: Vec<(i64, String)> = tx
        .prepare("SELECT seq, peer FROM rejected")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (seq, peer) in rows {
        type Texts = (
            String,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let (reason, key_id, report_id, serial, site_id): Texts = tx.query_row(
            "SELECT reason, key_id, report_id, serial, site_id FROM rejected WHERE seq = ?1",
            params![seq],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )?;
        let mut cut_any = false;
        let mut cut = |v: &str| {
            let (s, c) = rejected::bounded(v);
            cut_any |= c;
            s.into_owned()
        };
        let reason = cut(&reason);
        let key_id = key_id.as_deref().map(&mut cut);
        let report_id = report_id.as_deref().map(&mut cut);
        let serial = serial.as_deref().map(&mut cut);
        let site_id = site_id.as_deref().map(&mut cut);
        let source = cut(&source_of(&peer));
        let peer = cut(&peer);
        tx.execute(
            "UPDATE rejected SET reason = ?2, key_id = ?3, report_id = ?4, serial = ?5,
                 site_id = ?6, peer = ?7, source = ?8, truncated = ?9 WHERE seq = ?1",
            params![
                seq, reason, key_id, report_id, serial, site_id, peer, source, cut_any
            ],
        )?;
    }
    rejected::recount(tx)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The version 1 schema as the receiver wrote it before.
    const V1: &str = "
    CREATE TABLE reports (
        id TEXT PRIMARY KEY, key_id TEXT NOT NULL, public_key TEXT NOT NULL,
        serial TEXT NOT NULL, profile TEXT NOT NULL, site_id TEXT NOT NULL,
        instance TEXT NOT NULL, event TEXT NOT NULL, failed_stage TEXT, failed_reason TEXT,
        zone_serial INTEGER, image TEXT NOT NULL, lab INTEGER NOT NULL,
        created_unix INTEGER NOT NULL, received_unix INTEGER NOT NULL, peer TEXT NOT NULL,
        report TEXT NOT NULL, signature TEXT NOT NULL, digest TEXT NOT NULL);
    CREATE INDEX reports_by_key ON reports(key_id, received_unix);
    CREATE TABLE rejected (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, received_unix INTEGER NOT NULL,
        peer TEXT NOT NULL, status INTEGER NOT NULL, reason TEXT NOT NULL, key_id TEXT,
        report_id TEXT, serial TEXT, site_id TEXT);
    PRAGMA user_version = 1;
    ";

    #[test]
    fn upgrades_a_version_2_database_with_a_commands_table() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("v2.sqlite");
        {
            let c = Connection::open(&db).unwrap();
            c.execute_batch(REPORTS).unwrap();
            let v2_common = COMMON
                .split("CREATE TABLE IF NOT EXISTS commands")
                .next()
                .unwrap();
            c.execute_batch(v2_common).unwrap();
            c.pragma_update(None, "user_version", 2).unwrap();
            let tables: i64 = c
                .query_row(
                    "SELECT COUNT(*) FROM sqlite_master WHERE name = 'commands'",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(tables, 0);
        }
        let conn = super::super::open(&db).unwrap();
        assert_eq!(version(&conn).unwrap(), SCHEMA_VERSION);
        conn.execute(
            "INSERT INTO commands (key_id, sequence, action, signed, queued_unix, expires_unix)
             VALUES ('k', 1, 'drain', '{}', 1, 2)",
            [],
        )
        .unwrap();
    }

    #[test]
    fn upgrades_a_version_1_database_cutting_what_it_kept() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("v1.sqlite");
        {
            let c = Connection::open(&db).unwrap();
            c.execute_batch(V1).unwrap();
            c.execute(
                "INSERT INTO reports VALUES ('r1', 'k1', 'pk', 'SN-1', 'qemu', 'lab-1', 'i',
                 'boot', NULL, NULL, 7, 'qemu 0.1.0', 1, 1, 2, '192.0.2.9:4000', '{}', 's', 'd')",
                [],
            )
            .unwrap();
            let huge = "x".repeat(500_000);
            for peer in ["192.0.2.10:1", "192.0.2.10:2", "[2001:db8::5]:9", "weird"] {
                c.execute(
                    "INSERT INTO rejected (received_unix, peer, status, reason, serial)
                     VALUES (1, ?1, 422, ?2, ?2)",
                    params![peer, huge],
                )
                .unwrap();
            }
        }
        let before = std::fs::metadata(&db).unwrap().len();
        let conn = super::super::open(&db).unwrap();
        assert_eq!(version(&conn).unwrap(), SCHEMA_VERSION);
        let after = std::fs::metadata(&db).unwrap().len();
        assert!(after * 10 < before, "compacted: {before} -> {after} bytes");
        let longest: i64 = conn
            .query_row(
                "SELECT MAX(MAX(LENGTH(reason)), MAX(LENGTH(serial))) FROM rejected",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(longest < 400, "{longest}");
        let sources: Vec<(String, i64, i64)> = conn
            .prepare("SELECT source, kept, dropped FROM rejected_sources ORDER BY source")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            sources,
            [
                ("192.0.2.10".to_string(), 2, 0),
                ("2001:db8::/64".to_string(), 1, 0),
                ("weird".to_string(), 1, 0)
            ]
        );
        let (enrolled, conflict): (bool, Option<String>) = conn
            .query_row(
                "SELECT enrolled, serial_conflict FROM reports WHERE id = 'r1'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((enrolled, conflict), (false, None));
        drop(conn);
        // Opening again changes nothing.
        let conn = super::super::open(&db).unwrap();
        let totals: (i64, i64, i64) = conn
            .query_row(
                "SELECT kept, dropped, sources FROM rejected_totals",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(totals, (4, 0, 3));
    }
}
