//! The fleet view behind `home list`: each device's latest report (by key), how many it has
//! sent, and the latest rejected submissions, read from the receiver's database on a separate
//! connection (WAL lets it run beside a serving receiver).

use std::path::Path;

use rusqlite::params;
use serde::Serialize;

use super::store::{Rejection, StoreError, open};

/// One device in the fleet view: its latest report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeviceRow {
    /// Device key id.
    pub device: String,
    /// DMI serial.
    pub serial: String,
    /// Site id.
    pub site_id: String,
    /// Instance name.
    pub instance: String,
    /// Latest event.
    pub last_event: String,
    /// Stage of a failed install.
    pub failed_stage: Option<String>,
    /// Reason of a failed install.
    pub failed_reason: Option<String>,
    /// Zone serial in the latest report.
    pub zone_serial: Option<u32>,
    /// Image `name version`.
    pub image: String,
    /// Lab site.
    pub lab: bool,
    /// Device's time of the latest report.
    pub created_unix: i64,
    /// When the latest report arrived.
    pub received_unix: i64,
    /// Reports stored from this device.
    pub reports: u64,
}

/// The fleet: one row per device key, and the latest `rejected_limit` rejections (newest first).
#[derive(Debug, Clone, Serialize)]
pub struct Fleet {
    /// Devices, by site and instance.
    pub devices: Vec<DeviceRow>,
    /// Rejected submissions, newest first.
    pub rejected: Vec<Rejection>,
    /// All rejected submissions ever recorded.
    pub rejected_total: u64,
}

/// Reads the fleet view from the database at `path`.
pub fn fleet(path: &Path, rejected_limit: usize) -> Result<Fleet, StoreError> {
    if !path.exists() {
        return Err(StoreError::Missing {
            path: path.to_path_buf(),
        });
    }
    let conn = open(path)?;
    let err = |source| StoreError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut stmt = conn
        .prepare(
            "SELECT key_id, serial, site_id, instance, event, failed_stage, failed_reason,
                    zone_serial, image, lab, created_unix, received_unix, n
             FROM (SELECT *, COUNT(*) OVER (PARTITION BY key_id) AS n,
                          ROW_NUMBER() OVER (PARTITION BY key_id
                                             ORDER BY received_unix DESC, rowid DESC) AS k
                   FROM reports)
             WHERE k = 1
             ORDER BY site_id, instance, key_id",
        )
        .map_err(err)?;
    let devices = stmt
        .query_map([], |row| {
            Ok(DeviceRow {
                device: row.get(0)?,
                serial: row.get(1)?,
                site_id: row.get(2)?,
                instance: row.get(3)?,
                last_event: row.get(4)?,
                failed_stage: row.get(5)?,
                failed_reason: row.get(6)?,
                zone_serial: row.get(7)?,
                image: row.get(8)?,
                lab: row.get(9)?,
                created_unix: row.get(10)?,
                received_unix: row.get(11)?,
                reports: row.get::<_, i64>(12)?.max(0).unsigned_abs(),
            })
        })
        .map_err(err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    let mut stmt = conn
        .prepare(
            "SELECT received_unix, peer, status, reason, key_id, report_id, serial, site_id
             FROM rejected ORDER BY seq DESC LIMIT ?1",
        )
        .map_err(err)?;
    let limit = i64::try_from(rejected_limit).unwrap_or(i64::MAX);
    let rejected = stmt
        .query_map(params![limit], |row| {
            Ok(Rejection {
                received_unix: row.get(0)?,
                peer: row.get(1)?,
                status: row.get(2)?,
                reason: row.get(3)?,
                key_id: row.get(4)?,
                report_id: row.get(5)?,
                serial: row.get(6)?,
                site_id: row.get(7)?,
            })
        })
        .map_err(err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    let rejected_total: i64 = conn
        .query_row("SELECT COUNT(*) FROM rejected", [], |r| r.get(0))
        .map_err(err)?;
    let rejected_total = rejected_total.max(0).unsigned_abs();
    Ok(Fleet {
        devices,
        rejected,
        rejected_total,
    })
}

/// Number of stored reports (tests and the benchmark).
pub fn count_reports(path: &Path) -> Result<u64, StoreError> {
    let conn = open(path)?;
    conn.query_row("SELECT COUNT(*) FROM reports", [], |r| r.get::<_, i64>(0))
        .map(|n| n.max(0).unsigned_abs())
        .map_err(|source| StoreError::Read {
            path: path.to_path_buf(),
            source,
        })
}
