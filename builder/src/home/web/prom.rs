//! `/metrics` in Prometheus' text exposition format (version 0.0.4): devices by state, and per
//! device its serial lag and the age of what was last heard from it; the receiver's answers
//! since it started; the refusals the database recorded.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use super::state::{State, state_of};
use crate::home::receiver::Answered;
use crate::home::store::Fleet;

/// A label value: backslash, double quote and line feed escaped, as the format asks.
fn label(v: &str) -> String {
    let mut o = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '"' => o.push_str("\\\""),
            '\n' => o.push_str("\\n"),
            c => o.push(c),
        }
    }
    o
}

fn head(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The metrics text.
pub fn render(fleet: &Fleet, answered: &Answered, now: i64, stale_s: u64) -> String {
    let mut o = String::with_capacity(300 * fleet.devices.len() + 2048);
    let states: Vec<State> = fleet
        .devices
        .iter()
        .map(|d| state_of(d, now, stale_s))
        .collect();
    head(&mut o, "imrs_fleet_devices", "gauge", "Devices by state.");
    for s in State::ALL {
        let n = states.iter().filter(|x| **x == s).count();
        let _ = writeln!(o, "imrs_fleet_devices{{state=\"{}\"}} {n}", s.name());
    }
    let id = |d: &crate::home::store::DeviceRow| {
        format!(
            "device=\"{}\",site=\"{}\",instance=\"{}\"",
            label(&d.device),
            label(&d.site_id),
            label(&d.instance)
        )
    };
    head(
        &mut o,
        "imrs_fleet_serial_lag",
        "gauge",
        "Zone serials the device is behind the newest in the fleet.",
    );
    for d in &fleet.devices {
        if let Some(l) = d.serial_lag {
            let _ = writeln!(o, "imrs_fleet_serial_lag{{{}}} {l}", id(d));
        }
    }
    head(
        &mut o,
        "imrs_fleet_last_seen_age_seconds",
        "gauge",
        "Seconds since the device's latest report arrived.",
    );
    for d in &fleet.devices {
        let _ = writeln!(
            o,
            "imrs_fleet_last_seen_age_seconds{{{}}} {}",
            id(d),
            now.saturating_sub(d.received_unix).max(0)
        );
    }
    head(
        &mut o,
        "imrs_fleet_heartbeat_age_seconds",
        "gauge",
        "Seconds since the device's latest heartbeat arrived.",
    );
    for d in &fleet.devices {
        if let Some(h) = d.last_heartbeat_unix {
            let _ = writeln!(
                o,
                "imrs_fleet_heartbeat_age_seconds{{{}}} {}",
                id(d),
                now.saturating_sub(h).max(0)
            );
        }
    }
    head(
        &mut o,
        "imrs_home_reports_total",
        "counter",
        "Submissions this receiver answered since it started, by outcome.",
    );
    for (outcome, n) in [
        ("stored", &answered.stored),
        ("duplicate", &answered.duplicate),
        ("refused", &answered.refused),
        ("unavailable", &answered.unavailable),
    ] {
        let _ = writeln!(
            o,
            "imrs_home_reports_total{{outcome=\"{outcome}\"}} {}",
            n.load(Ordering::Relaxed)
        );
    }
    head(
        &mut o,
        "imrs_home_refusals_recorded",
        "gauge",
        "Refused submissions in the database: kept, and dropped to stay within the caps.",
    );
    let _ = writeln!(
        o,
        "imrs_home_refusals_recorded{{kept=\"yes\"}} {}\nimrs_home_refusals_recorded{{kept=\"no\"}} {}",
        fleet.rejected_kept, fleet.rejected_dropped
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::home::web::state::tests::row;

    #[test]
    fn metrics_text() {
        let mut quiet = row("k\"2\\\n");
        quiet.received_unix = 0;
        quiet.last_heartbeat_unix = None;
        let fleet = Fleet {
            devices: vec![row("k1"), quiet],
            rejected: Vec::new(),
            rejected_total: 5,
            rejected_kept: 3,
            rejected_dropped: 2,
            rejected_dropped_by_source: Vec::new(),
        };
        let a = Answered::default();
        a.stored.fetch_add(7, Ordering::Relaxed);
        let t = render(&fleet, &a, 1000, 600);
        for line in [
            "imrs_fleet_devices{state=\"live\"} 1",
            "imrs_fleet_devices{state=\"quiet\"} 1",
            "imrs_fleet_devices{state=\"failed\"} 0",
            "imrs_fleet_serial_lag{device=\"k1\",site=\"site\",instance=\"xx-1.l.root-servers.org\"} 0",
            "imrs_fleet_last_seen_age_seconds{device=\"k\\\"2\\\\\\n\",site=\"site\",instance=\"xx-1.l.root-servers.org\"} 1000",
            "imrs_fleet_heartbeat_age_seconds{device=\"k1\",site=\"site\",instance=\"xx-1.l.root-servers.org\"} 0",
            "imrs_home_reports_total{outcome=\"stored\"} 7",
            "imrs_home_refusals_recorded{kept=\"no\"} 2",
            "# TYPE imrs_home_reports_total counter",
        ] {
            assert!(t.lines().any(|l| l == line), "missing {line:?} in\n{t}");
        }
        // No heartbeat, no heartbeat age; every sample line is name{labels} value.
        assert_eq!(t.matches("imrs_fleet_heartbeat_age_seconds{").count(), 1);
        for l in t.lines().filter(|l| !l.starts_with('#')) {
            assert!(l.rsplit_once(' ').unwrap().1.parse::<f64>().is_ok(), "{l}");
        }
    }
}
