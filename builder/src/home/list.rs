//! `home list` for people: the fleet as a table, then the refused submissions and what was
//! dropped of them. Every value that came from a reporter (serial, site, instance, event,
//! reasons, refused values) goes through [`escape`], so nothing sent to the receiver reaches
//! the operator's terminal as a control sequence or a forged line. (`--json` prints the
//! [`Fleet`] with serde, whose escaping is exact.)

use std::fmt::Write;

use super::store::{DeviceRow, Fleet, RejectedRow};
use imrs_config::escape_all as escape;

/// Most names listed in one conflict note or one per-source drop line.
const MAX_NAMED: usize = 10;

/// A Unix time as `YYYY-MM-DD HH:MM:SSZ` (the number itself when out of range).
pub(crate) fn when(unix: i64) -> String {
    jiff::Timestamp::from_second(unix)
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%SZ").to_string())
        .unwrap_or_else(|_| unix.to_string())
}

/// `a, b, c` escaped, at most [`MAX_NAMED`], then how many more.
fn names<'a>(items: impl ExactSizeIterator<Item = &'a str>) -> String {
    let n = items.len();
    let mut out: Vec<String> = items
        .take(MAX_NAMED)
        .map(|s| escape(s).into_owned())
        .collect();
    if n > MAX_NAMED {
        out.push(format!("and {} more", n - MAX_NAMED));
    }
    out.join(", ")
}

fn device_cells(d: &DeviceRow) -> [String; 10] {
    let mut event = d.event_text();
    if d.quiet {
        event.insert_str(0, "[QUIET] ");
    }
    let mut device = d.device.clone();
    if !d.enrolled {
        device.push_str(" [unenrolled]");
    }
    let mut serial = escape(&d.serial).into_owned();
    if let Some(holder) = &d.serial_held_by {
        let _ = write!(serial, " [CONFLICT: {} claimed it first]", escape(holder));
    }
    if !d.serial_claimed_by.is_empty() {
        let _ = write!(
            serial,
            " [CONFLICT: also claimed by {}]",
            names(d.serial_claimed_by.iter().map(String::as_str))
        );
    }
    let mut site = escape(&d.site_id).into_owned();
    if d.lab {
        site.push_str(" [lab]");
    }
    [
        escape(&device).into_owned(),
        serial,
        site,
        escape(&d.instance).into_owned(),
        escape(&event).into_owned(),
        escape(d.slot.as_deref().unwrap_or("-")).into_owned(),
        d.zone_serial
            .map(|z| z.to_string())
            .unwrap_or_else(|| "-".into()),
        d.serial_lag
            .map(|l| l.to_string())
            .unwrap_or_else(|| "-".into()),
        when(d.received_unix),
        d.reports.to_string(),
    ]
}

fn rejected_line(r: &RejectedRow) -> String {
    let opt = |v: &Option<String>| escape(v.as_deref().unwrap_or("-")).into_owned();
    format!(
        "{}  {}  {}  device {}  report {}  serial {}  site {}  {}{}",
        when(r.received_unix),
        escape(&r.peer),
        r.status,
        opt(&r.key_id),
        opt(&r.report_id),
        opt(&r.serial),
        opt(&r.site_id),
        escape(&r.reason),
        if r.truncated { "  [truncated]" } else { "" }
    )
}

/// The fleet as a text table for people.
pub fn render(f: &Fleet) -> String {
    let mut out = String::new();
    let head = [
        "DEVICE",
        "SERIAL",
        "SITE",
        "INSTANCE",
        "LAST EVENT",
        "SLOT",
        "ZONE",
        "LAG",
        "LAST SEEN",
        "REPORTS",
    ];
    let rows: Vec<[String; 10]> = f.devices.iter().map(device_cells).collect();
    let mut width = head.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(width).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                let _ = write!(s, "{c:<w$}  ");
            }
        }
        s.trim_end().to_string()
    };
    let unenrolled = f.devices.iter().filter(|d| !d.enrolled).count();
    let _ = write!(out, "{} device(s)", f.devices.len());
    if unenrolled > 0 {
        let _ = write!(out, ", {unenrolled} not enrolled (open enrolment)");
    }
    out.push('\n');
    if !rows.is_empty() {
        let _ = writeln!(out, "{}", line(&head));
        for r in &rows {
            let cells: Vec<&str> = r.iter().map(String::as_str).collect();
            let _ = writeln!(out, "{}", line(&cells));
        }
    }
    let _ = write!(
        out,
        "\n{} rejected submission(s): {} kept, {} dropped to stay within the caps",
        f.rejected_total, f.rejected_kept, f.rejected_dropped
    );
    if f.rejected.len() as u64 != f.rejected_kept {
        let _ = write!(out, "; latest {} shown", f.rejected.len());
    }
    out.push('\n');
    if !f.rejected_dropped_by_source.is_empty() {
        let shown: Vec<String> = f
            .rejected_dropped_by_source
            .iter()
            .map(|s| format!("{} {}", s.source, s.dropped))
            .collect();
        let _ = writeln!(
            out,
            "dropped per source: {}",
            names(shown.iter().map(String::as_str))
        );
    }
    for r in &f.rejected {
        let _ = writeln!(out, "{}", rejected_line(r));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::home::store::SourceDrops;

    fn device(serial: &str, site: &str) -> DeviceRow {
        DeviceRow {
            device: "k1".into(),
            serial: serial.into(),
            site_id: site.into(),
            instance: "i\u{202e}nstance".into(),
            last_event: "install-failed".into(),
            failed_stage: Some("zone".into()),
            failed_reason: Some("bad\r\nzone".into()),
            zone_serial: None,
            image: "qemu 0.1.0".into(),
            lab: false,
            created_unix: 0,
            received_unix: 0,
            reports: 1,
            enrolled: false,
            serial_held_by: Some("k0\x07".into()),
            serial_claimed_by: (0..12).map(|i| format!("c{i}")).collect(),
            slot: Some("b\x1b".into()),
            last_heartbeat_unix: None,
            drained: None,
            bgp_sessions: None,
            bgp_established: None,
            serial_lag: Some(2),
            quiet: true,
        }
    }

    #[test]
    fn nothing_reporter_controlled_reaches_the_terminal_raw() {
        let f = Fleet {
            devices: vec![device("SN-1\x1b[2J\nk9  SN-FORGED", "site\u{9b}1")],
            rejected: vec![RejectedRow {
                received_unix: 0,
                peer: "192.0.2.1:1".into(),
                source: "192.0.2.1".into(),
                status: 403,
                reason: "unknown-device: \x1b]0;pwned\x07".into(),
                key_id: Some("k\n".into()),
                report_id: None,
                serial: Some("\u{2066}x".into()),
                site_id: Some("s\t".into()),
                truncated: true,
            }],
            rejected_total: 5,
            rejected_kept: 1,
            rejected_dropped: 4,
            rejected_dropped_by_source: vec![SourceDrops {
                source: "weird\x1b".into(),
                dropped: 4,
            }],
        };
        let text = render(&f);
        let bad = |c: char| (c.is_control() && c != '\n') || ('\u{2066}'..='\u{2069}').contains(&c);
        assert!(!text.chars().any(bad), "{text:?}");
        assert!(!text.contains('\u{202e}'), "{text:?}");
        for want in [
            "SN-1\\u{1b}[2J\\nk9  SN-FORGED",
            "site\\u{9b}1",
            "i\\u{202e}nstance",
            "bad\\r\\nzone",
            "[CONFLICT: k0\\u{7} claimed it first]",
            "[CONFLICT: also claimed by c0, c1",
            "and 2 more]",
            "k1 [unenrolled]",
            "1 not enrolled (open enrolment)",
            "unknown-device: \\u{1b}]0;pwned\\u{7}  [truncated]",
            "device k\\n",
            "serial \\u{2066}x",
            "site s\\t",
            "5 rejected submission(s): 1 kept, 4 dropped",
            "dropped per source: weird\\u{1b} 4",
            "[QUIET] install-failed",
            "b\\u{1b}",
        ] {
            assert!(text.contains(want), "{want:?} in {text}");
        }
        // One line per device: the forged row is inside the first.
        assert_eq!(text.lines().filter(|l| l.contains("SN-FORGED")).count(), 1);
        assert_eq!(text.lines().count(), 7, "{text}");
    }
}
