//! Typed reads of the receiver's database, each on its own connection (WAL lets them run beside
//! a serving receiver): the fleet view behind `home list`, the verified reports the lab
//! watches, the counts and one stored report as it was signed.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use imrs_config::report::SignedReport;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::rejected::RejectedCounts;
use super::{StoreError, open_existing};

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
    /// Zone serial in the latest report that says how the box is (not a `telemetry` or
    /// `command-result`, which may carry an older boot's sections).
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
    /// The key was enrolled when the latest report arrived (`false`: open enrolment).
    pub enrolled: bool,
    /// The latest report claims a serial that this other key claimed first (open enrolment).
    pub serial_held_by: Option<String>,
    /// Other keys that later claimed this device's serial (open enrolment), first claim first.
    pub serial_claimed_by: Vec<String>,
    /// The slot the latest report came from (`a`, `b`).
    pub slot: Option<String>,
    /// When the latest heartbeat arrived.
    pub last_heartbeat_unix: Option<i64>,
    /// Serials this device's zone is behind the newest any device reports (RFC 1982
    /// arithmetic; `None` without a serial).
    pub serial_lag: Option<u32>,
    /// Nothing arrived from it for longer than `home list --stale` asked.
    pub quiet: bool,
    /// The operator's drain switch, as the latest heartbeat says (`None`: no heartbeat yet).
    pub drained: Option<bool>,
    /// BGP sessions in the latest report that says how the box is (`None`: no BGP section).
    pub bgp_sessions: Option<u32>,
    /// Of those, how many were established: the state `Established`, or ending in it as the
    /// box reports BIRD's protocol state and BGP state (`up Established`).
    pub bgp_established: Option<u32>,
}

impl DeviceRow {
    /// The latest event in words: with the failed stage and reason of a failed installation.
    pub fn event_text(&self) -> String {
        match (&self.failed_stage, &self.failed_reason) {
            (Some(s), Some(r)) => format!("{} ({s}: {r})", self.last_event),
            _ => self.last_event.clone(),
        }
    }

    /// Whether nothing arrived from it for more than `secs` before `now_unix`.
    pub fn silent_for_more_than(&self, now_unix: i64, secs: u64) -> bool {
        now_unix.saturating_sub(self.received_unix) > i64::try_from(secs).unwrap_or(i64::MAX)
    }
}

/// One kept refused submission.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RejectedRow {
    /// Receiver's time.
    pub received_unix: i64,
    /// Peer address.
    pub peer: String,
    /// The client as the caps count it.
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
    /// Some value was cut to size (it ends with `… [truncated, N bytes]`).
    pub truncated: bool,
}

/// Refusals dropped from one source to stay within the caps.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SourceDrops {
    /// The source (IPv4 address or IPv6 /64).
    pub source: String,
    /// How many of its refusals were dropped.
    pub dropped: u64,
}

/// The fleet: one row per device key, the latest refused submissions and what was dropped.
#[derive(Debug, Clone, Serialize)]
pub struct Fleet {
    /// Devices, by site and instance.
    pub devices: Vec<DeviceRow>,
    /// Refused submissions, newest first (at most the limit asked for).
    pub rejected: Vec<RejectedRow>,
    /// Every refusal recorded: kept plus dropped.
    pub rejected_total: u64,
    /// Refusals kept.
    pub rejected_kept: u64,
    /// Refusals dropped, oldest first, to stay within the caps.
    pub rejected_dropped: u64,
    /// Sources whose refusals were dropped, most first (counters of sources with nothing left
    /// may have been pruned; their drops stay in `rejected_dropped`).
    pub rejected_dropped_by_source: Vec<SourceDrops>,
}

/// One stored (verified) report, as the lab follows them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReportRow {
    /// Report id.
    pub id: String,
    /// `install-passed`, `install-failed`, `boot`, `slot-changed`.
    pub event: String,
    /// Failed stage of an `install-failed`.
    pub failed_stage: Option<String>,
    /// Its reason.
    pub failed_reason: Option<String>,
    /// Zone serial in the report.
    pub zone_serial: Option<u32>,
    /// Receiver's time of arrival (Unix seconds).
    pub received_unix: i64,
    /// Device key id.
    pub device: String,
    /// The slot the report came from (`a`, `b`; report version 3 on).
    pub slot: Option<String>,
    /// Why the box fell back from a slot on trial, when it did.
    pub fallback: Option<String>,
    /// The slot a `slot-changed` report says the box ran before.
    pub previous_slot: Option<String>,
    /// sha256 of the manifest of the image the report came from.
    pub manifest_sha256: Option<String>,
}

impl ReportRow {
    /// An installation report (`install-passed` or `install-failed`).
    pub fn is_install(&self) -> bool {
        self.event.starts_with("install-")
    }
}

fn read_err(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |source| StoreError::Read {
        path: path.to_path_buf(),
        source,
    }
}

fn count(n: i64) -> u64 {
    n.max(0).unsigned_abs()
}

/// Reads the fleet view, with the latest `rejected_limit` refusals.
pub fn fleet(path: &Path, rejected_limit: usize) -> Result<Fleet, StoreError> {
    let conn = open_existing(path)?;
    let err = read_err(path);
    let mut devices = devices(&conn, None).map_err(&err)?;
    set_serial_lag(&mut devices);
    let claims = later_claims(&conn).map_err(&err)?;
    for d in &mut devices {
        if let Some(keys) = claims.get(&(d.device.clone(), d.serial.clone())) {
            d.serial_claimed_by = keys.clone();
        }
    }
    let limit = i64::try_from(rejected_limit).unwrap_or(i64::MAX);
    let rejected = conn
        .prepare(
            "SELECT received_unix, peer, source, status, reason, key_id, report_id, serial,
                    site_id, truncated
             FROM rejected ORDER BY seq DESC LIMIT ?1",
        )
        .and_then(|mut stmt| {
            stmt.query_map(params![limit], |row| {
                Ok(RejectedRow {
                    received_unix: row.get(0)?,
                    peer: row.get(1)?,
                    source: row.get(2)?,
                    status: row.get(3)?,
                    reason: row.get(4)?,
                    key_id: row.get(5)?,
                    report_id: row.get(6)?,
                    serial: row.get(7)?,
                    site_id: row.get(8)?,
                    truncated: row.get(9)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()
        })
        .map_err(&err)?;
    let counts = counts(&conn).map_err(&err)?;
    let by_source = conn
        .prepare(
            "SELECT source, dropped FROM rejected_sources WHERE dropped > 0
             ORDER BY dropped DESC, source",
        )
        .and_then(|mut stmt| {
            stmt.query_map([], |row| {
                Ok(SourceDrops {
                    source: row.get(0)?,
                    dropped: count(row.get(1)?),
                })
            })?
            .collect::<Result<Vec<_>, _>>()
        })
        .map_err(&err)?;
    Ok(Fleet {
        devices,
        rejected,
        rejected_total: counts.total(),
        rejected_kept: counts.kept,
        rejected_dropped: counts.dropped,
        rejected_dropped_by_source: by_source,
    })
}

/// Each device key's latest report, by site, instance and key.
/// The newest serial any device reports, in RFC 1982 serial arithmetic.
fn newest_serial(serials: impl Iterator<Item = u32>) -> Option<u32> {
    serials.reduce(|a, b| {
        if b != a && b.wrapping_sub(a) < 1 << 31 {
            b
        } else {
            a
        }
    })
}

fn set_serial_lag(devices: &mut [DeviceRow]) {
    let Some(newest) = newest_serial(devices.iter().filter_map(|d| d.zone_serial)) else {
        return;
    };
    for d in devices {
        d.serial_lag = d.zone_serial.map(|s| newest.wrapping_sub(s));
    }
}

/// Marks the devices nothing arrived from for more than `secs` before `now_unix`.
pub fn mark_quiet(fleet: &mut Fleet, now_unix: i64, secs: u64) {
    for d in &mut fleet.devices {
        d.quiet = d.silent_for_more_than(now_unix, secs);
    }
}

/// Reports that do not say how the box is (a telemetry day, a command's result): they may
/// carry an older boot's zone and BGP sections, so the fleet view reads those elsewhere.
const NOT_STATE: &str = "('telemetry', 'command-result')";

/// The devices (all, or the one key `only`), by site, instance and key.
pub(super) fn devices(conn: &Connection, only: Option<&str>) -> rusqlite::Result<Vec<DeviceRow>> {
    // One device: its key, if any report came from it (an index lookup, not a pass over
    // every key).
    // Every device: the keys by a skip scan of `reports_by_key` (one seek per key: 8 ms for
    // 1,000 keys over 289,000 reports where `SELECT DISTINCT` read the whole index, 34 ms).
    let keys = if only.is_some() {
        "SELECT ?1 WHERE EXISTS (SELECT 1 FROM reports WHERE key_id = ?1)"
    } else {
        "SELECT MIN(key_id) FROM reports WHERE ?1 IS NULL
         UNION ALL
         SELECT (SELECT MIN(key_id) FROM reports WHERE key_id > k.key_id) FROM k
         WHERE k.key_id IS NOT NULL"
    };
    let mut stmt = conn.prepare(&format!(
        // A few index lookups per device, not a pass over every report: with a day of
        // heartbeats from 1,000 devices (289,000 rows) the whole fleet view reads in ~40-55
        // ms where a window over all rows took ~2 s (bench/fleet-list.sh, fleet-page.sh).
        // `l`: the device's latest report (last seen, last event); `r`: its latest report
        // that says how the box is (not a telemetry day or a command result, which may carry
        // an older boot's zone and BGP sections): zone serial, slot, image, BGP.
        "WITH RECURSIVE k(key_id) AS ({keys}),
              p AS (SELECT k.key_id,
                       (SELECT rowid FROM reports x WHERE x.key_id = k.key_id
                        ORDER BY received_unix DESC, rowid DESC LIMIT 1) AS last,
                       (SELECT rowid FROM reports x WHERE x.key_id = k.key_id
                          AND x.event NOT IN {NOT_STATE}
                        ORDER BY received_unix DESC, rowid DESC LIMIT 1) AS state
                    FROM k WHERE k.key_id IS NOT NULL)
         SELECT r.key_id, r.serial, r.site_id, r.instance, l.event, l.failed_stage,
                l.failed_reason, r.zone_serial, r.image, r.lab, l.created_unix, l.received_unix,
                (SELECT COUNT(*) FROM reports c WHERE c.key_id = p.key_id),
                l.enrolled, l.serial_conflict, json_extract(r.report, '$.slot.running'),
                (SELECT MAX(received_unix) FROM reports h
                 WHERE h.key_id = p.key_id AND h.event = 'heartbeat'),
                (SELECT json_extract(h.report, '$.event.drained') FROM reports h
                 WHERE h.key_id = p.key_id AND h.event = 'heartbeat'
                 ORDER BY h.received_unix DESC, h.rowid DESC LIMIT 1),
                json_array_length(r.report, '$.bgp.sessions'),
                (SELECT COUNT(*) FROM json_each(r.report, '$.bgp.sessions')
                 WHERE json_extract(value, '$.state') = 'Established'
                    OR json_extract(value, '$.state') LIKE '% Established')
         FROM p JOIN reports l ON l.rowid = p.last
                JOIN reports r ON r.rowid = COALESCE(p.state, p.last)
         ORDER BY r.site_id, r.instance, r.key_id"
    ))?;
    stmt.query_map(params![only], |row| {
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
            reports: count(row.get(12)?),
            enrolled: row.get(13)?,
            serial_held_by: row.get(14)?,
            serial_claimed_by: Vec::new(),
            slot: row.get(15)?,
            last_heartbeat_unix: row.get(16)?,
            serial_lag: None,
            quiet: false,
            drained: row.get(17)?,
            bgp_sessions: row.get(18)?,
            bgp_established: row
                .get::<_, Option<u32>>(18)?
                .map(|_| row.get(19))
                .transpose()?,
        })
    })?
    .collect()
}

/// (holder key, serial) -> the keys flagged for claiming it later, first claim first.
fn later_claims(conn: &Connection) -> rusqlite::Result<HashMap<(String, String), Vec<String>>> {
    let mut stmt = conn.prepare(
        "SELECT serial_conflict, serial, key_id, MIN(rowid) AS first FROM reports
         WHERE serial_conflict IS NOT NULL
         GROUP BY serial_conflict, serial, key_id
         ORDER BY first",
    )?;
    let mut out: HashMap<(String, String), Vec<String>> = HashMap::new();
    let rows = stmt.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, String>(2)?,
        ))
    })?;
    for r in rows {
        let (holder, serial, key) = r?;
        out.entry((holder, serial)).or_default().push(key);
    }
    Ok(out)
}

fn counts(conn: &Connection) -> rusqlite::Result<RejectedCounts> {
    conn.query_row(
        "SELECT kept, dropped FROM rejected_totals WHERE one = 1",
        [],
        |r| {
            Ok(RejectedCounts {
                kept: count(r.get(0)?),
                dropped: count(r.get(1)?),
            })
        },
    )
}

/// Every verified report, oldest first.
pub fn reports(path: &Path) -> Result<Vec<ReportRow>, StoreError> {
    let conn = open_existing(path)?;
    conn.prepare(
        "SELECT id, event, failed_stage, failed_reason, zone_serial, received_unix, key_id,
                json_extract(report, '$.slot.running'), json_extract(report, '$.slot.fallback'),
                json_extract(report, '$.event.previous_slot'),
                json_extract(report, '$.image.manifest_sha256')
         FROM reports ORDER BY received_unix, rowid",
    )
    .and_then(|mut stmt| {
        stmt.query_map([], |r| {
            Ok(ReportRow {
                id: r.get(0)?,
                event: r.get(1)?,
                failed_stage: r.get(2)?,
                failed_reason: r.get(3)?,
                zone_serial: r.get(4)?,
                received_unix: r.get(5)?,
                device: r.get(6)?,
                slot: r.get(7)?,
                fallback: r.get(8)?,
                previous_slot: r.get(9)?,
                manifest_sha256: r.get(10)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()
    })
    .map_err(read_err(path))
}

/// How many refused submissions are kept and how many were dropped.
pub fn rejected_counts(path: &Path) -> Result<RejectedCounts, StoreError> {
    let conn = open_existing(path)?;
    counts(&conn).map_err(read_err(path))
}

/// Whether the database opens and answers (the receiver's `/healthz`).
pub fn ping(path: &Path) -> Result<(), StoreError> {
    let conn = open_existing(path)?;
    conn.query_row("SELECT COUNT(*) FROM rejected_totals", [], |r| {
        r.get::<_, i64>(0)
    })
    .map(|_| ())
    .map_err(read_err(path))
}

/// Number of stored reports.
pub fn count_reports(path: &Path) -> Result<u64, StoreError> {
    let conn = open_existing(path)?;
    conn.query_row("SELECT COUNT(*) FROM reports", [], |r| r.get::<_, i64>(0))
        .map(count)
        .map_err(read_err(path))
}

/// One device's RSSAC002 metrics for a day: its latest `telemetry` report for that day (the
/// box counts the whole day, so a later report supersedes an earlier, partial one).
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryRow {
    /// Device key id.
    pub device: String,
    /// Its serial.
    pub serial: String,
    /// Whether the day had ended when the box sent it.
    pub complete: bool,
    /// What it counted.
    pub metrics: imrs_config::rssac002::DayMetrics,
}

/// Every device's latest `telemetry` report for `day` (`YYYY-MM-DD`), by device key id.
pub fn telemetry(path: &Path, day: &str) -> Result<Vec<TelemetryRow>, StoreError> {
    let conn = open_existing(path)?;
    let rows: Vec<(String, String, String)> = conn
        .prepare(
            "SELECT key_id, serial, report FROM reports AS r
             WHERE event = 'telemetry' AND json_extract(report, '$.event.day') = ?1
               AND created_unix = (SELECT MAX(created_unix) FROM reports
                   WHERE key_id = r.key_id AND event = 'telemetry'
                     AND json_extract(report, '$.event.day') = ?1)
             ORDER BY key_id, received_unix DESC",
        )
        .and_then(|mut stmt| {
            stmt.query_map(params![day], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect()
        })
        .map_err(read_err(path))?;
    let mut out: Vec<TelemetryRow> = Vec::new();
    for (device, serial, report) in rows {
        // Two reports created in the same second: the one received last counts.
        if out.last().is_some_and(|l| l.device == device) {
            continue;
        }
        // Stored reports were verified on arrival; one that no longer parses is a damaged
        // database, named as such.
        let parsed: imrs_config::report::Report =
            serde_json::from_str(&report).map_err(|e| StoreError::Damaged {
                path: path.to_path_buf(),
                detail: format!("telemetry report of {device}: {e}"),
            })?;
        if let imrs_config::report::Event::Telemetry {
            complete, metrics, ..
        } = parsed.event
        {
            out.push(TelemetryRow {
                device,
                serial,
                complete,
                metrics: *metrics,
            });
        }
    }
    Ok(out)
}

/// The latest report of device key `key_id` exactly as it was signed, and when it arrived.
pub fn latest_signed(path: &Path, key_id: &str) -> Result<Option<(SignedReport, i64)>, StoreError> {
    let conn = open_existing(path)?;
    conn.query_row(
        "SELECT report, signature, public_key, received_unix FROM reports WHERE key_id = ?1
         ORDER BY received_unix DESC, rowid DESC LIMIT 1",
        params![key_id],
        |r| {
            Ok((
                SignedReport {
                    report: r.get(0)?,
                    signature: r.get(1)?,
                    public_key: r.get(2)?,
                },
                r.get(3)?,
            ))
        },
    )
    .optional()
    .map_err(read_err(path))
}

/// One device's (`Some(key)`) or the whole fleet's (`None`) RSSAC002 counts of the newest
/// `days` UTC days that have telemetry, oldest first: per device its latest report of each day
/// (a later one supersedes), the fleet's the sum of the devices'. Each day comes with the
/// seconds it covers: all of it once complete, else up to the latest report's creation. One
/// pass over the telemetry reports (a device's through its index).
pub fn telemetry_days(
    path: &Path,
    key_id: Option<&str>,
    days: usize,
) -> Result<Vec<(String, f64, imrs_config::rssac002::DayMetrics)>, StoreError> {
    use imrs_config::report::{Event, Report};
    let conn = open_existing(path)?;
    let err = read_err(path);
    let sql = if key_id.is_some() {
        "SELECT key_id, json_extract(report, '$.event.day'), created_unix, report FROM reports
         WHERE key_id = ?1 AND event = 'telemetry' ORDER BY rowid"
    } else {
        "SELECT key_id, json_extract(report, '$.event.day'), created_unix, report FROM reports
         WHERE ?1 IS NULL AND event = 'telemetry' ORDER BY rowid"
    };
    // (day, key) -> (created, report): the latest report of each device and day.
    let mut latest: BTreeMap<(String, String), (i64, String)> = BTreeMap::new();
    conn.prepare(sql)
        .and_then(|mut stmt| {
            let rows = stmt.query_map(params![key_id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })?;
            for row in rows {
                let (key, day, created, report) = row?;
                let Some(day) = day else { continue };
                let slot = latest.entry((day, key)).or_insert((created, String::new()));
                // Created in the same second: the one received last counts.
                if created >= slot.0 {
                    *slot = (created, report);
                }
            }
            Ok(())
        })
        .map_err(&err)?;
    let mut all_days: Vec<&String> = latest.keys().map(|(d, _)| d).collect();
    all_days.dedup();
    let first = all_days
        .len()
        .checked_sub(days)
        .and_then(|i| all_days.get(i).map(|d| (*d).clone()));
    let mut by_day: BTreeMap<String, (imrs_config::rssac002::DayMetrics, bool, i64)> =
        BTreeMap::new();
    for ((day, key), (created, text)) in &latest {
        if first.as_ref().is_some_and(|f| day < f) {
            continue;
        }
        // Stored reports were verified on arrival; one that no longer parses is a damaged
        // database, named as such.
        let parsed: Report = serde_json::from_str(text).map_err(|e| StoreError::Damaged {
            path: path.to_path_buf(),
            detail: format!("telemetry report of {key}: {e}"),
        })?;
        if let Event::Telemetry {
            complete, metrics, ..
        } = parsed.event
        {
            let e = by_day
                .entry(day.clone())
                .or_insert_with(|| (Default::default(), true, i64::MIN));
            e.0.merge(&metrics);
            e.1 &= complete;
            e.2 = e.2.max(*created);
        }
    }
    Ok(by_day
        .into_iter()
        .map(|(day, (metrics, complete, latest))| {
            let start = day
                .parse::<jiff::civil::Date>()
                .ok()
                .and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC).ok())
                .map(|z| z.timestamp().as_second());
            let seconds = match (complete, start) {
                (false, Some(s)) => (latest - s).clamp(1, 86_400),
                _ => 86_400,
            };
            // At most 86,400: exact in f64.
            #[allow(clippy::cast_precision_loss)]
            (day, seconds as f64, metrics)
        })
        .collect())
}

/// The stored report `id` exactly as the device signed it (report text, signature, key), so
/// it can be verified again; `None` when no report has this id.
pub fn signed_report(path: &Path, id: &str) -> Result<Option<SignedReport>, StoreError> {
    let conn = open_existing(path)?;
    conn.query_row(
        "SELECT report, signature, public_key FROM reports WHERE id = ?1",
        params![id],
        |r| {
            Ok(SignedReport {
                report: r.get(0)?,
                signature: r.get(1)?,
                public_key: r.get(2)?,
            })
        },
    )
    .optional()
    .map_err(read_err(path))
}
