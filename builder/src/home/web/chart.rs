//! Queries per second as the boxes counted them (their daily RSSAC002 `telemetry` reports),
//! drawn on the server as SVG: one stacked bar per UTC day, by transport and family, and by
//! response code. A day still running is averaged over the part that passed when the box
//! reported it.

use std::fmt::Write;

use imrs_config::rssac002::DayMetrics;

use super::html::esc;

/// One day of one box, or of the fleet summed.
#[derive(Debug, Clone, PartialEq)]
pub struct Day {
    /// `YYYY-MM-DD`.
    pub day: String,
    /// Seconds the counts cover (86,400 for a complete day).
    pub seconds: f64,
    /// What was counted.
    pub metrics: DayMetrics,
}

/// A series: its name, colour, and how to count it from a day.
type Series = (&'static str, &'static str, fn(&DayMetrics) -> u64);

/// By transport and family.
pub const TRANSPORTS: [Series; 4] = [
    ("UDP IPv4", "#4e79a7", |m| m.udp_queries[0]),
    ("UDP IPv6", "#a0cbe8", |m| m.udp_queries[1]),
    ("TCP IPv4", "#f28e2b", |m| m.tcp_queries[0]),
    ("TCP IPv6", "#ffbe7d", |m| m.tcp_queries[1]),
];

/// By response code.
pub const RCODES: [Series; 4] = [
    ("NOERROR", "#59a14f", |m| rcode(m, 0)),
    ("NXDOMAIN", "#e15759", |m| rcode(m, 3)),
    ("REFUSED", "#b07aa1", |m| rcode(m, 5)),
    ("other", "#9c755f", |m| {
        m.rcodes
            .iter()
            .filter(|(c, _)| ![0, 3, 5].contains(*c))
            .map(|(_, n)| n)
            .sum()
    }),
];

fn rcode(m: &DayMetrics, code: u16) -> u64 {
    m.rcodes.get(&code).copied().unwrap_or(0)
}

/// A round step for the axis: 1, 2 or 5 times a power of ten, at least `max / 4`.
fn step(max: f64) -> f64 {
    if max <= 0.0 {
        return 1.0;
    }
    let raw = max / 4.0;
    let pow = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * pow)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * pow)
}

fn qps(n: u64, seconds: f64) -> f64 {
    // Counts stay far below 2^53.
    #[allow(clippy::cast_precision_loss)]
    let n = n as f64;
    n / seconds.max(1.0)
}

/// A stacked bar chart of `series` over `days` (oldest first), as an `<svg>` element.
pub fn stacked(title: &str, id: &str, days: &[Day], series: &[Series]) -> String {
    const W: f64 = 720.0;
    const H: f64 = 220.0;
    const LEFT: f64 = 60.0;
    const TOP: f64 = 28.0;
    const BOTTOM: f64 = 40.0;
    let plot_h = H - TOP - BOTTOM;
    let plot_w = W - LEFT - 130.0;
    let totals: Vec<f64> = days
        .iter()
        .map(|d| {
            series
                .iter()
                .map(|s| qps((s.2)(&d.metrics), d.seconds))
                .sum()
        })
        .collect();
    let max = totals.iter().copied().fold(0.0, f64::max);
    let step = step(max);
    let top = (max / step).ceil().max(1.0) * step;
    let mut o = String::new();
    let _ = write!(
        o,
        "<svg id=\"{}\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{}\">\
         <text x=\"{LEFT}\" y=\"16\" font-size=\"13\" font-weight=\"bold\">{}</text>",
        esc(id),
        esc(title),
        esc(title)
    );
    if days.is_empty() {
        let _ = write!(
            o,
            "<text x=\"{LEFT}\" y=\"{}\" font-size=\"12\">No telemetry reported yet.</text></svg>",
            TOP + 20.0
        );
        return o;
    }
    let mut v = 0.0;
    while v <= top + step / 2.0 {
        let y = TOP + plot_h - v / top * plot_h;
        let _ = write!(
            o,
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"end\">{}</text>",
            LEFT + plot_w,
            LEFT - 4.0,
            y + 3.0,
            fmt_qps(v)
        );
        v += step;
    }
    #[allow(clippy::cast_precision_loss)]
    let slot = plot_w / days.len() as f64;
    let bar = (slot * 0.7).min(40.0);
    for (i, d) in days.iter().enumerate() {
        #[allow(clippy::cast_precision_loss)]
        let x = LEFT + slot * i as f64 + (slot - bar) / 2.0;
        let mut y = TOP + plot_h;
        for (name, colour, count) in series {
            let q = qps(count(&d.metrics), d.seconds);
            let h = q / top * plot_h;
            y -= h;
            let _ = write!(
                o,
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bar:.1}\" height=\"{h:.1}\" fill=\"{colour}\">\
                 <title>{} {name}: {} q/s</title></rect>",
                esc(&d.day),
                fmt_qps(q)
            );
        }
        // Every label when few days, else every seventh.
        if days.len() <= 8 || i % 7 == 0 || i + 1 == days.len() {
            let _ = write!(
                o,
                "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"middle\">{}</text>",
                x + bar / 2.0,
                TOP + plot_h + 14.0,
                esc(d.day.get(5..).unwrap_or(&d.day))
            );
        }
    }
    for (i, (name, colour, _)) in series.iter().enumerate() {
        #[allow(clippy::cast_precision_loss)]
        let y = TOP + 14.0 * i as f64;
        let _ = write!(
            o,
            "<rect x=\"{}\" y=\"{y}\" width=\"10\" height=\"10\" fill=\"{colour}\"/>\
             <text x=\"{}\" y=\"{}\" font-size=\"11\">{name}</text>",
            LEFT + plot_w + 16.0,
            LEFT + plot_w + 30.0,
            y + 9.0
        );
    }
    let _ = write!(
        o,
        "<text x=\"{LEFT}\" y=\"{}\" font-size=\"10\">queries per second, daily average (UTC days)</text></svg>",
        H - 6.0
    );
    o
}

fn fmt_qps(v: f64) -> String {
    if v >= 100.0 || v == 0.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(d: &str, udp4: u64, nx: u64) -> Day {
        let mut m = DayMetrics::default();
        m.udp_queries[0] = udp4;
        m.rcodes.insert(0, udp4 - nx);
        m.rcodes.insert(3, nx);
        Day {
            day: d.into(),
            seconds: 86_400.0,
            metrics: m,
        }
    }

    #[test]
    fn bars_are_as_tall_as_the_rates() {
        let days = [
            day("2026-11-27", 8_640_000, 864_000),
            day("2026-11-28", 4_320_000, 0),
        ];
        let svg = stacked("Queries", "q", &days, &TRANSPORTS);
        assert!(svg.starts_with("<svg id=\"q\"") && svg.ends_with("</svg>"));
        // 100 q/s and 50 q/s: the axis tops at 100, the second bar is half the first.
        assert!(
            svg.contains("<title>2026-11-27 UDP IPv4: 100 q/s</title>"),
            "{svg}"
        );
        assert!(
            svg.contains("<title>2026-11-28 UDP IPv4: 50.0 q/s</title>"),
            "{svg}"
        );
        let heights: Vec<f64> = svg
            .split("height=\"")
            .skip(2)
            .filter_map(|s| s.split('"').next()?.parse().ok())
            .filter(|h: &f64| *h > 0.0 && *h < 200.0)
            .collect();
        assert!(
            heights.contains(&152.0) && heights.contains(&76.0),
            "{heights:?}"
        );
        let r = stacked("Rcodes", "r", &days, &RCODES);
        assert!(r.contains("NXDOMAIN: 10.0 q/s"), "{r}");
        let empty = stacked("Queries", "q", &[], &TRANSPORTS);
        assert!(empty.contains("No telemetry reported yet."));
    }

    #[test]
    fn steps_are_round() {
        assert_eq!(step(100.0), 50.0);
        assert_eq!(step(7.0), 2.0);
        assert_eq!(step(0.0), 1.0);
        assert_eq!(step(12_345.0), 5_000.0);
    }
}
