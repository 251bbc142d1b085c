//! The operators' pages as HTML, rendered on the server (no scripts): the fleet table, one
//! device's page, the login form. Every value that came from a device or the database goes
//! through [`esc`]; the pages' own markup is the only unescaped text.

use std::fmt::Write;

use super::chart::{self, Day};
use super::state::{State, state_of};
use crate::home::list::when;
use crate::home::store::device::DevicePage;
use crate::home::store::{DeviceRow, Fleet};

/// Text for an HTML element or a quoted attribute: control and invisible formatting
/// characters (bidi overrides) written as escapes first ([`imrs_config::escape_all`], as
/// `home list` shows them), then the markup characters as entities.
pub fn esc(s: &str) -> String {
    let s = imrs_config::escape_all(s);
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;font-size:0.9em}\
th,td{border:1px solid #ccc;padding:0.25em 0.5em;text-align:left;vertical-align:top}\
th{background:#eee}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.live{background:#d7f5d7}.lagging{background:#fff3c4}.drained{background:#dde6ff}\
.bgp-down{background:#ffd9b3}.quiet{background:#e6e6e6}.failed{background:#ffc9c9}\
.summary span{display:inline-block;margin-right:1em;padding:0.2em 0.6em}\
code{font-size:0.95em}";

fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{}</title><style>{STYLE}</style></head><body>\n{body}</body></html>\n",
        esc(title)
    )
}

/// "12 s ago", "5 min ago", ...
pub fn age(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..120 => format!("{s} s ago"),
        120..7200 => format!("{} min ago", s / 60),
        7200..172_800 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86_400),
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

fn bgp(d: &DeviceRow) -> String {
    match (d.bgp_established, d.bgp_sessions) {
        (Some(up), Some(all)) => format!("{up}/{all}"),
        _ => "-".into(),
    }
}

fn drained(d: &DeviceRow) -> &'static str {
    match d.drained {
        Some(true) => "yes",
        Some(false) => "no",
        None => "-",
    }
}

/// The fleet page: a count per state, then one row per device, the troubled first.
pub fn fleet(fleet: &Fleet, now: i64, stale_s: u64) -> String {
    let mut rows: Vec<(State, &DeviceRow)> = fleet
        .devices
        .iter()
        .map(|d| (state_of(d, now, stale_s), d))
        .collect();
    rows.sort_by_key(|(s, _)| *s);
    let mut b = String::with_capacity(600 * rows.len() + 2048);
    let _ = write!(
        b,
        "<h1>IMRS fleet</h1>\n<p>{} device(s); nothing heard for more than {stale_s} s counts \
         as quiet. Generated {}. <a href=\"/fleet/traffic\">Fleet traffic</a></p>\n\
         <p class=\"summary\">",
        rows.len(),
        when(now)
    );
    for s in State::ALL {
        let n = rows.iter().filter(|(r, _)| *r == s).count();
        let _ = write!(
            b,
            "<span class=\"{}\" id=\"count-{}\">{}: {n}</span>",
            s.name(),
            s.name(),
            s.name()
        );
    }
    b.push_str("</p>\n");
    b.push_str(
        "<table id=\"fleet\"><thead><tr><th>state</th><th>device</th><th>serial</th>\
         <th>site</th><th>instance</th><th>slot</th><th>image</th><th>zone serial</th>\
         <th>lag</th><th>BGP up</th><th>drained</th><th>last seen</th><th>last event</th>\
         </tr></thead><tbody>\n",
    );
    for (s, d) in rows {
        let mut site = esc(&d.site_id);
        if d.lab {
            site.push_str(" [lab]");
        }
        let mut device = format!(
            "<a href=\"/fleet/device/{}\">{}</a>",
            esc(&d.device),
            esc(&d.device)
        );
        if !d.enrolled {
            device.push_str(" [unenrolled]");
        }
        let _ = writeln!(
            b,
            "<tr class=\"{s}\" data-device=\"{dev}\"><td>{s}</td><td>{device}</td><td>{serial}</td>\
             <td>{site}</td><td>{inst}</td><td>{slot}</td><td>{image}</td>\
             <td class=\"n zone\">{zone}</td><td class=\"n\">{lag}</td><td class=\"n\">{bgp}</td>\
             <td>{drained}</td><td title=\"{at}\">{ago}</td><td>{event}</td></tr>",
            s = s.name(),
            dev = esc(&d.device),
            serial = esc(&d.serial),
            inst = esc(&d.instance),
            slot = esc(d.slot.as_deref().unwrap_or("-")),
            image = esc(&d.image),
            zone = opt(d.zone_serial),
            lag = opt(d.serial_lag),
            bgp = bgp(d),
            drained = drained(d),
            at = when(d.received_unix),
            ago = age(now - d.received_unix),
            event = esc(&d.event_text()),
        );
    }
    b.push_str("</tbody></table>\n");
    let _ = writeln!(
        b,
        "<p>Refused submissions: {} recorded ({} kept, {} dropped to stay within the caps).</p>",
        fleet.rejected_total, fleet.rejected_kept, fleet.rejected_dropped
    );
    page("IMRS fleet", &b)
}

/// The fleet's traffic: every box's RSSAC002 counts summed, by day.
pub fn traffic(days: &[Day], now: i64) -> String {
    let mut b = format!(
        "<p><a href=\"/fleet\">&larr; fleet</a></p>\n<h1>Fleet traffic</h1>\n<p>Daily \
         averages of the queries the boxes counted (their RSSAC002 telemetry), summed over the \
         fleet; the last {} day(s) with reports. Generated {}.</p>\n",
        days.len(),
        when(now)
    );
    b.push_str(&chart::stacked(
        "Queries per second by transport",
        "fleet-transport",
        days,
        &chart::TRANSPORTS,
    ));
    b.push('\n');
    b.push_str(&chart::stacked(
        "Responses per second by response code",
        "fleet-rcode",
        days,
        &chart::RCODES,
    ));
    page("IMRS fleet traffic", &b)
}

/// One device's page: its row, its traffic, its timeline, its commands, its notices.
pub fn device(p: &DevicePage, traffic: &[Day], now: i64, stale_s: u64) -> String {
    let d = &p.row;
    let s = state_of(d, now, stale_s);
    let mut b = String::with_capacity(256 * (p.timeline.len() + p.commands.len()) + 4096);
    let _ = write!(
        b,
        "<p><a href=\"/fleet\">&larr; fleet</a></p>\n<h1>{} <span class=\"{}\" id=\"state\">{}</span></h1>\n",
        esc(&d.instance),
        s.name(),
        s.name()
    );
    b.push_str("<table id=\"device\">\n");
    let rows: [(&str, String); 14] = [
        ("device key", esc(&d.device)),
        ("enrolled", if d.enrolled { "yes" } else { "no" }.into()),
        ("serial", esc(&d.serial)),
        ("site", esc(&d.site_id)),
        ("instance", esc(&d.instance)),
        ("slot", esc(d.slot.as_deref().unwrap_or("-"))),
        ("image", esc(&d.image)),
        ("zone serial", opt(d.zone_serial)),
        ("serial lag", opt(d.serial_lag)),
        ("BGP sessions up", bgp(d)),
        ("drained", drained(d).into()),
        (
            "last seen",
            format!("{} ({})", when(d.received_unix), age(now - d.received_unix)),
        ),
        ("last event", esc(&d.event_text())),
        ("reports stored", d.reports.to_string()),
    ];
    for (k, v) in rows {
        let _ = writeln!(b, "<tr><th>{k}</th><td>{v}</td></tr>");
    }
    b.push_str("</table>\n<h2>Traffic</h2>\n");
    b.push_str(&chart::stacked(
        "Queries per second by transport",
        "transport",
        traffic,
        &chart::TRANSPORTS,
    ));
    b.push('\n');
    b.push_str(&chart::stacked(
        "Responses per second by response code",
        "rcode",
        traffic,
        &chart::RCODES,
    ));
    b.push_str("\n<h2>Timeline</h2>\n");
    b.push_str(
        "<table id=\"timeline\"><thead><tr><th>received</th><th>event</th><th>zone serial</th>\
         <th>slot</th><th>image</th><th>detail</th></tr></thead><tbody>\n",
    );
    for e in &p.timeline {
        let _ = writeln!(
            b,
            "<tr class=\"ev-{ev}\"><td title=\"device time {created}\">{at}</td><td>{ev}</td>\
             <td class=\"n\">{zone}</td><td>{slot}</td><td>{image}</td><td>{detail}</td></tr>",
            ev = esc(&e.event),
            created = when(e.created_unix),
            at = when(e.received_unix),
            zone = opt(e.zone_serial),
            slot = esc(e.slot.as_deref().unwrap_or("-")),
            image = esc(&e.image),
            detail = esc(&e.detail),
        );
    }
    b.push_str("</tbody></table>\n<h2>Commands</h2>\n");
    if p.commands.is_empty() {
        b.push_str("<p>None.</p>\n");
    } else {
        b.push_str(
            "<table id=\"commands\"><thead><tr><th>sequence</th><th>action</th><th>state</th>\
             <th>queued</th><th>delivered</th><th>result</th><th>reason</th></tr></thead><tbody>\n",
        );
        for c in &p.commands {
            let _ = writeln!(
                b,
                "<tr><td class=\"n\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
                 <td>{}</td><td>{}</td></tr>",
                c.sequence,
                esc(&c.action),
                esc(c.state(now)),
                when(c.queued_unix),
                c.delivered_unix.map(when).unwrap_or_else(|| "-".into()),
                c.result_unix.map(when).unwrap_or_else(|| "-".into()),
                esc(c.reason.as_deref().unwrap_or("")),
            );
        }
        b.push_str("</tbody></table>\n");
    }
    b.push_str("<h2>Notices to the host</h2>\n");
    if p.notices.is_empty() {
        b.push_str("<p>None.</p>\n");
    } else {
        b.push_str(
            "<table id=\"notices\"><thead><tr><th>queued</th><th>event</th><th>by</th>\
             <th>to</th><th>state</th><th>attempts</th><th>sent</th><th>last error</th></tr>\
             </thead><tbody>\n",
        );
        for n in &p.notices {
            let _ = writeln!(
                b,
                "<tr class=\"notice-{state}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
                 <td>{state}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td></tr>",
                when(n.queued_unix),
                esc(&n.kind),
                esc(&n.channel),
                esc(&n.target),
                n.attempts,
                n.sent_unix.map(when).unwrap_or_else(|| "-".into()),
                esc(n.last_error.as_deref().unwrap_or("")),
                state = n.state(),
            );
        }
        b.push_str("</tbody></table>\n");
    }
    page(&format!("IMRS {}", d.instance), &b)
}

/// The login form (and why the last attempt failed).
pub fn login(message: Option<&str>) -> String {
    let msg = message
        .map(|m| format!("<p id=\"error\"><strong>{}</strong></p>\n", esc(m)))
        .unwrap_or_default();
    page(
        "IMRS fleet: sign in",
        &format!(
            "<h1>IMRS fleet</h1>\n{msg}<form method=\"post\" action=\"/login\">\
             <label>Operators' token <input type=\"password\" name=\"token\" id=\"token\" \
             autocomplete=\"current-password\" required></label> \
             <button type=\"submit\" id=\"sign-in\">Sign in</button></form>\n"
        ),
    )
}

/// A plain error page.
pub fn error(title: &str, text: &str) -> String {
    page(
        title,
        &format!("<h1>{}</h1>\n<p>{}</p>\n", esc(title), esc(text)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_leaves_no_markup() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        assert_eq!(esc("a\u{1b}[31mb\u{202e}c"), "a\\u{1b}[31mb\\u{202e}c");
    }

    #[test]
    fn a_thousand_devices_one_row_each_counted_by_state() {
        use crate::home::web::state::tests::row;
        let devices: Vec<DeviceRow> = (0..1000)
            .map(|i| {
                let mut d = row(&format!("{i:016x}"));
                if i % 10 == 0 {
                    d.received_unix = 0;
                }
                d
            })
            .collect();
        let f = Fleet {
            devices,
            rejected: Vec::new(),
            rejected_total: 0,
            rejected_kept: 0,
            rejected_dropped: 0,
            rejected_dropped_by_source: Vec::new(),
        };
        let page = fleet(&f, 1000, 600);
        assert_eq!(page.matches("<tr class=").count(), 1000);
        assert!(
            page.contains("id=\"count-quiet\">quiet: 100<"),
            "quiet counted"
        );
        assert!(page.contains("id=\"count-live\">live: 900<"));
        // The quiet ones first.
        let first = page.find("<tr class=").unwrap();
        assert!(page[first..].starts_with("<tr class=\"quiet\""));
    }

    #[test]
    fn ages_read_naturally() {
        assert_eq!(age(-5), "0 s ago");
        assert_eq!(age(59), "59 s ago");
        assert_eq!(age(600), "10 min ago");
        assert_eq!(age(3 * 3600), "3 h ago");
        assert_eq!(age(3 * 86_400), "3 d ago");
    }
}
