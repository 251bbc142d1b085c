//! One device as the operators' page shows it: its fleet row (its serial lag against the fleet
//! is the caller's to set: it needs the whole fleet), what happened to it (installs, boots, slot changes, command results, daily
//! telemetry, the newest heartbeats), the commands queued for it and the notices sent about it.

use std::path::Path;

use rusqlite::{Connection, params};
use serde::Serialize;

use super::commands::{self, CommandRow};
use super::notices::{self, NoticeRow};
use super::read::{DeviceRow, devices};
use super::{StoreError, open_existing};

/// Most non-heartbeat events on a device's page (newest first).
pub const MAX_EVENTS: i64 = 200;
/// Most heartbeats on a device's page (newest first).
pub const MAX_HEARTBEATS: i64 = 24;

/// One report in a device's timeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimelineEntry {
    /// When it arrived.
    pub received_unix: i64,
    /// The device's time for it.
    pub created_unix: i64,
    /// `install-passed`, `heartbeat`, ...
    pub event: String,
    /// Zone serial in it.
    pub zone_serial: Option<u32>,
    /// Slot it came from.
    pub slot: Option<String>,
    /// Image `name version`.
    pub image: String,
    /// What else the event says, in words (failed stage and reason, slot change, command
    /// outcome, drain switch, probe error, telemetry day); reporter-controlled, escape it.
    pub detail: String,
}

/// A device's page.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DevicePage {
    /// Its fleet row.
    pub row: DeviceRow,
    /// Newest first: up to [`MAX_EVENTS`] events and [`MAX_HEARTBEATS`] heartbeats, merged.
    pub timeline: Vec<TimelineEntry>,
    /// Commands for this key, by sequence.
    pub commands: Vec<CommandRow>,
    /// Notices about it to its host organisation, newest first.
    pub notices: Vec<NoticeRow>,
}

/// The page of device key `key_id`; `None` when no report came from that key.
pub fn device_page(path: &Path, key_id: &str) -> Result<Option<DevicePage>, StoreError> {
    let conn = open_existing(path)?;
    let err = |source| StoreError::Read {
        path: path.to_path_buf(),
        source,
    };
    let Some(row) = devices(&conn, Some(key_id)).map_err(err)?.pop() else {
        return Ok(None);
    };
    let timeline = timeline(&conn, key_id).map_err(err)?;
    let commands = commands::commands(path, Some(key_id))?;
    let notices = notices::notices(path, Some(key_id))?;
    Ok(Some(DevicePage {
        row,
        timeline,
        commands,
        notices,
    }))
}

fn timeline(conn: &Connection, key_id: &str) -> rusqlite::Result<Vec<TimelineEntry>> {
    let mut stmt = conn.prepare(
        "SELECT * FROM (
             SELECT received_unix, created_unix, event, zone_serial,
                    json_extract(report, '$.slot.running'), image, report, rowid
             FROM reports WHERE key_id = ?1 AND event != 'heartbeat'
             ORDER BY received_unix DESC, rowid DESC LIMIT ?2)
         UNION ALL
         SELECT * FROM (
             SELECT received_unix, created_unix, event, zone_serial,
                    json_extract(report, '$.slot.running'), image, report, rowid
             FROM reports WHERE key_id = ?1 AND event = 'heartbeat'
             ORDER BY received_unix DESC, rowid DESC LIMIT ?3)
         ORDER BY 1 DESC, 8 DESC",
    )?;
    stmt.query_map(params![key_id, MAX_EVENTS, MAX_HEARTBEATS], |r| {
        let report: String = r.get(6)?;
        Ok(TimelineEntry {
            received_unix: r.get(0)?,
            created_unix: r.get(1)?,
            event: r.get(2)?,
            zone_serial: r.get(3)?,
            slot: r.get(4)?,
            image: r.get(5)?,
            detail: detail(&report),
        })
    })?
    .collect()
}

/// The event's own fields in words (stored reports were verified on arrival; a field that
/// does not read is left out).
fn detail(report: &str) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(report) else {
        return String::new();
    };
    let e = &v["event"];
    let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
    let mut parts: Vec<String> = Vec::new();
    match e["kind"].as_str().unwrap_or_default() {
        "install-failed" => parts.push(format!("stage {}: {}", s("stage"), s("reason"))),
        "slot-changed" => {
            let prev = e["previous_slot"].as_str().unwrap_or("none");
            parts.push(format!("from slot {prev}"));
            if let Some(f) = v["slot"]["fallback"].as_str() {
                parts.push(format!("fell back: {f}"));
            }
        }
        "heartbeat" => {
            if e["drained"].as_bool() == Some(true) {
                parts.push("drained".into());
            }
            if let Some(p) = e["dns_probe_error"].as_str() {
                parts.push(format!("DNS probe: {p}"));
            }
            if let Some(l) = e["last_error"].as_str() {
                parts.push(format!("last error: {l}"));
            }
        }
        "command-result" => {
            parts.push(format!(
                "command {} {}: {}",
                e["sequence"].as_u64().unwrap_or_default(),
                s("action"),
                s("outcome")
            ));
            if let Some(r) = e["reason"].as_str() {
                parts.push(r.to_string());
            }
        }
        "telemetry" => parts.push(format!(
            "RSSAC002 day {}{}",
            s("day"),
            if e["complete"].as_bool() == Some(true) {
                ""
            } else {
                " (so far)"
            }
        )),
        _ => {}
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_say_what_each_event_adds() {
        assert_eq!(
            detail(r#"{"event":{"kind":"install-failed","stage":"zone","reason":"no ZONEMD"}}"#),
            "stage zone: no ZONEMD"
        );
        assert_eq!(
            detail(r#"{"event":{"kind":"heartbeat","drained":true,"dns_probe_error":"timeout"}}"#),
            "drained; DNS probe: timeout"
        );
        assert_eq!(
            detail(
                r#"{"event":{"kind":"command-result","sequence":3,"action":"drain","outcome":"refused","reason":"expired"}}"#
            ),
            "command 3 drain: refused; expired"
        );
        assert_eq!(
            detail(
                r#"{"event":{"kind":"slot-changed","previous_slot":"a"},"slot":{"fallback":"trial failed"}}"#
            ),
            "from slot a; fell back: trial failed"
        );
        assert_eq!(detail("not json"), "");
    }
}
