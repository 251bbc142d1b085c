//! Reading the guest's serial console: the init's stage lines and its boot summary, parsed
//! tolerantly (log tags, carriage returns and kernel noise are ignored).
//!
//! Stage lines (printed as each stage starts and ends):
//! `imrs-init: stage zone: running`, `imrs-init: stage zone: PASSED (1.234 s)`,
//! `imrs-init: ERROR stage zone: FAILED (1.234 s): <reason>`, `... DONE EARLIER`
//! (the words of [`imrs_config::stage::Status`]). Summary block: `imrs-init: boot summary (...)` then one line per stage,
//! `  <stage>  <STATUS>  <secs> s  <reason>` (init/src/summary.rs).

use serde::Serialize;

use imrs_config::stage::Stage;
/// A stage's status as the console tells it: the init's own vocabulary.
pub use imrs_config::stage::Status;

/// Whether `name` is one of the pipeline's stages.
fn known(name: &str) -> bool {
    Stage::from_name(name).is_some()
}

/// One stage as the lab saw it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageReport {
    /// Stage name.
    pub name: String,
    /// Status.
    pub status: Status,
    /// Seconds the init measured, when it said.
    pub seconds: Option<f64>,
    /// Failure reason.
    pub reason: Option<String>,
    /// Seconds after QEMU start when the stage started (console time).
    pub started_at_s: Option<f64>,
    /// Seconds after QEMU start when it ended.
    pub ended_at_s: Option<f64>,
    /// Earlier attempts that failed (the init tried the stage again), oldest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed_attempts: Vec<FailedAttempt>,
}

/// An attempt at a stage that failed before the init tried it again.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailedAttempt {
    /// Seconds the init measured.
    pub seconds: Option<f64>,
    /// Why it failed.
    pub reason: Option<String>,
    /// Seconds after QEMU start when it started.
    pub started_at_s: Option<f64>,
    /// Seconds after QEMU start when it ended.
    pub ended_at_s: Option<f64>,
}

impl StageReport {
    /// How many attempts failed, the current one included when it failed.
    pub fn failures(&self) -> usize {
        self.failed_attempts.len() + usize::from(self.status == Status::Failed)
    }
}

/// What one console line says.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A stage started or ended.
    Stage {
        /// Stage name.
        name: String,
        /// New status.
        status: Status,
        /// Seconds, when given.
        seconds: Option<f64>,
        /// Reason, when given.
        reason: Option<String>,
        /// From the summary block (not a live line).
        summary: bool,
    },
    /// The summary block starts.
    SummaryStart,
    /// The kernel panicked.
    Panic,
    /// `listening: PROTO ADDR:PORT PROGRAM` (what the box accepts traffic on).
    Listening(String),
    /// `daemon: PROGRAM pid ...` (a process's identity).
    Daemon(String),
    /// `in parallel: ...` after the summary: what ran alongside the stages.
    InParallel(String),
}

/// The message after `imrs-init:` and its optional `ERROR`/`WARN` tag, or `None` for other
/// lines.
fn init_message(line: &str) -> Option<&str> {
    let line = line.trim_end_matches(['\r', '\n']);
    let at = line.find("imrs-init:")?;
    let mut msg = &line[at + "imrs-init:".len()..];
    let trimmed = msg.trim_start();
    for tag in ["ERROR", "WARN"] {
        if let Some(rest) = trimmed.strip_prefix(tag)
            && rest.starts_with(' ')
        {
            msg = rest;
        }
    }
    Some(msg)
}

/// Parses `(1.234 s)` / `1.234 s` / `-` at the start of `s`: (seconds, rest).
fn seconds(s: &str) -> (Option<f64>, &str) {
    let t = s.trim_start();
    let (inner, rest, paren) = match t.strip_prefix('(') {
        Some(r) => match r.find(')') {
            Some(end) => (&r[..end], &r[end + 1..], true),
            None => return (None, s),
        },
        None => (t, "", false),
    };
    let mut words = inner.split_whitespace();
    let Some(num) = words.next() else {
        return (None, s);
    };
    if num == "-" {
        let rest = if paren {
            rest
        } else {
            t.trim_start_matches('-')
        };
        return (None, rest);
    }
    let Ok(v) = num.trim_end_matches('s').parse::<f64>() else {
        return (None, s);
    };
    if paren {
        return (Some(v), rest);
    }
    // Unparenthesised: "1.234 s  reason".
    let after_num = &t[t.find(num).unwrap_or(0) + num.len()..];
    let after = after_num.trim_start();
    let rest = after.strip_prefix('s').unwrap_or(after);
    (Some(v), rest)
}

fn reason(rest: &str) -> Option<String> {
    let r = rest.trim().trim_start_matches(':').trim();
    (!r.is_empty()).then(|| r.to_string())
}

/// Parses one console line.
pub fn parse_line(line: &str) -> Option<Event> {
    if line.contains("Kernel panic") {
        return Some(Event::Panic);
    }
    let msg = init_message(line)?;
    let t = msg.trim();
    if t.starts_with("boot summary") {
        return Some(Event::SummaryStart);
    }
    if let Some(rest) = t.strip_prefix("listening: ") {
        return Some(Event::Listening(rest.trim().to_string()));
    }
    if let Some(rest) = t.strip_prefix("daemon: ") {
        return Some(Event::Daemon(rest.trim().to_string()));
    }
    if let Some(rest) = t.strip_prefix("in parallel: ") {
        return Some(Event::InParallel(rest.trim().to_string()));
    }
    // Live line: "stage NAME: STATUS ...".
    if let Some(rest) = t.strip_prefix("stage ") {
        let (name, after) = rest.split_once(':')?;
        let name = name.trim();
        if name.is_empty() || name.contains(' ') {
            return None;
        }
        let (status, after) = Status::parse_console(after.trim_start())?;
        let (secs, after) = seconds(after);
        return Some(Event::Stage {
            name: name.to_string(),
            status,
            seconds: secs,
            reason: if status == Status::Failed {
                reason(after)
            } else {
                None
            },
            summary: false,
        });
    }
    // Summary line: "  NAME  STATUS  1.234 s  reason" (only known stage names).
    let mut it = t.splitn(2, char::is_whitespace);
    let name = it.next()?;
    if !known(name) {
        return None;
    }
    let after = it.next()?.trim_start();
    let (status, after) = Status::parse_console(after)?;
    let (secs, after) = seconds(after);
    let why = match status {
        Status::Failed => reason(after),
        _ => None,
    };
    Some(Event::Stage {
        name: name.to_string(),
        status,
        seconds: secs,
        reason: why,
        summary: true,
    })
}

/// The stages of one boot, as the console has told them so far.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    stages: Vec<StageReport>,
    /// The summary block was printed.
    pub summary_seen: bool,
    /// The kernel panicked.
    pub panicked: bool,
    /// `listening:` lines, in order.
    pub listening: Vec<String>,
    /// `daemon:` lines, in order.
    pub daemons: Vec<String>,
    /// The last summary's `in parallel:` lines.
    pub in_parallel: Vec<String>,
}

impl Tracker {
    /// Feeds one line seen `at` seconds after QEMU start; returns the stage event it carried.
    pub fn feed(&mut self, line: &str, at: f64) -> Option<Event> {
        let ev = parse_line(line)?;
        match &ev {
            Event::Panic => self.panicked = true,
            Event::SummaryStart => {
                self.summary_seen = true;
                self.in_parallel.clear();
            }
            Event::InParallel(p) => self.in_parallel.push(p.clone()),
            Event::Listening(l) => self.listening.push(l.clone()),
            Event::Daemon(d) => self.daemons.push(d.clone()),
            Event::Stage {
                name,
                status,
                seconds,
                reason,
                summary,
            } => {
                let i = match self.stages.iter().position(|s| &s.name == name) {
                    Some(i) => i,
                    None => {
                        self.stages.push(StageReport {
                            name: name.clone(),
                            status: *status,
                            seconds: None,
                            reason: None,
                            started_at_s: None,
                            ended_at_s: None,
                            failed_attempts: Vec::new(),
                        });
                        self.stages.len() - 1
                    }
                };
                let s = &mut self.stages[i];
                if *status == Status::Running && !*summary && s.status == Status::Failed {
                    // The init tries a failed stage again: the failure becomes history, and
                    // the summary printed for it belongs to the attempt that stopped.
                    s.failed_attempts.push(FailedAttempt {
                        seconds: s.seconds.take(),
                        reason: s.reason.take(),
                        started_at_s: s.started_at_s.take(),
                        ended_at_s: s.ended_at_s.take(),
                    });
                    self.summary_seen = false;
                }
                if *status == Status::Running {
                    if !*summary {
                        s.started_at_s = Some(at);
                    }
                    // A summary's "running" never overrides an ending seen live.
                    if s.ended_at_s.is_none() {
                        s.status = Status::Running;
                    }
                } else {
                    s.status = *status;
                    if seconds.is_some() {
                        s.seconds = *seconds;
                    }
                    if reason.is_some() {
                        s.reason = reason.clone();
                    }
                    // A summary line dates an ending the live lines did not report.
                    if s.ended_at_s.is_none() && *status != Status::NotReached {
                        s.ended_at_s = Some(at);
                    }
                }
            }
        }
        Some(ev)
    }

    /// The stage named `name`.
    pub fn get(&self, name: &str) -> Option<&StageReport> {
        self.stages.iter().find(|s| s.name == name)
    }

    /// The status of `name`, if the console mentioned it.
    pub fn status(&self, name: &str) -> Option<Status> {
        self.get(name).map(|s| s.status)
    }

    /// The first stage that ended without letting the pipeline go on (FAILED).
    pub fn stopped_at(&self) -> Option<&StageReport> {
        self.stages.iter().find(|s| {
            !s.status.goes_on() && !matches!(s.status, Status::Running | Status::NotReached)
        })
    }

    /// Every stage in pipeline order (unknown names after the known ones), the unmentioned
    /// known stages as "not reached" once the pipeline has stopped or summarised.
    pub fn report(&self) -> Vec<StageReport> {
        let mut out: Vec<StageReport> = Vec::new();
        let over = self.summary_seen || self.stopped_at().is_some();
        for name in Stage::ALL.map(Stage::name) {
            match self.get(name) {
                Some(s) => out.push(s.clone()),
                None if over => out.push(StageReport {
                    name: name.to_string(),
                    status: Status::NotReached,
                    seconds: None,
                    reason: None,
                    started_at_s: None,
                    ended_at_s: None,
                    failed_attempts: Vec::new(),
                }),
                None => {}
            }
        }
        for s in &self.stages {
            if !known(&s.name) {
                out.push(s.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(line: &str) -> (String, Status, Option<f64>, Option<String>, bool) {
        match parse_line(line) {
            Some(Event::Stage {
                name,
                status,
                seconds,
                reason,
                summary,
            }) => (name, status, seconds, reason, summary),
            other => panic!("{line:?}: {other:?}"),
        }
    }

    #[test]
    fn live_stage_lines() {
        assert_eq!(
            stage("imrs-init: stage zone: running"),
            ("zone".into(), Status::Running, None, None, false)
        );
        assert_eq!(
            stage("imrs-init: stage zone: PASSED (1.234 s)\r"),
            ("zone".into(), Status::Passed, Some(1.234), None, false)
        );
        assert_eq!(
            stage("imrs-init: ERROR stage zone: FAILED (12.5 s): ZONEMD digest mismatch: x"),
            (
                "zone".into(),
                Status::Failed,
                Some(12.5),
                Some("ZONEMD digest mismatch: x".into()),
                false
            )
        );
        // Not a word of the init's vocabulary: not a stage line.
        assert_eq!(parse_line("imrs-init: stage network: NOT BUILT YET"), None);
        assert_eq!(
            stage("imrs-init: stage phone-home: DONE EARLIER (0.000 s)"),
            (
                "phone-home".into(),
                Status::DoneEarlier,
                Some(0.0),
                None,
                false
            )
        );
        assert_eq!(parse_line("imrs-init: stage x y: running"), None);
        assert_eq!(
            parse_line("[    1.0] virtio_net virtio0 eth0: renamed"),
            None
        );
    }

    #[test]
    fn summary_lines_as_the_init_prints_them() {
        assert_eq!(
            parse_line("imrs-init: boot summary (1.50 s since init start):"),
            Some(Event::SummaryStart)
        );
        assert_eq!(
            stage("imrs-init:   platform    PASSED          0.250 s"),
            ("platform".into(), Status::Passed, Some(0.25), None, true)
        );
        assert_eq!(
            stage("imrs-init: ERROR   site        FAILED          0.010 s  no site config"),
            (
                "site".into(),
                Status::Failed,
                Some(0.01),
                Some("no site config".into()),
                true
            )
        );
        assert_eq!(
            stage("imrs-init:   hardware    not reached           -"),
            ("hardware".into(), Status::NotReached, None, None, true)
        );
        assert_eq!(
            stage(
                "imrs-init:   hardware    DONE EARLIER    0.000 s  (first-boot stage passed in an earlier boot)"
            ),
            (
                "hardware".into(),
                Status::DoneEarlier,
                Some(0.0),
                None,
                true
            )
        );
        // Other init messages are not stages.
        assert_eq!(
            parse_line("imrs-init: site config from partition IMRS-CONFIG"),
            None
        );
    }

    #[test]
    fn tracker_merges_live_and_summary() {
        let mut t = Tracker::default();
        t.feed("imrs-init: stage platform: running", 1.0);
        t.feed("imrs-init: stage platform: PASSED (0.100 s)", 1.1);
        t.feed("imrs-init: stage site: running", 1.2);
        assert_eq!(t.status("site"), Some(Status::Running));
        assert!(t.stopped_at().is_none());
        t.feed(
            "imrs-init: ERROR stage site: FAILED (0.010 s): bad signature",
            1.3,
        );
        t.feed("imrs-init: boot summary (2.00 s since init start):", 1.4);
        t.feed("imrs-init: listening: tcp 0.0.0.0:179 bird", 1.4);
        t.feed(
            "imrs-init: daemon: bird pid 9 (bird) uid 101 gid 101 caps none nnp 1 seccomp 0",
            1.4,
        );
        assert_eq!(t.listening, ["tcp 0.0.0.0:179 bird"]);
        assert_eq!(t.daemons.len(), 1);
        t.feed("imrs-init:   platform    PASSED          0.100 s", 1.4);
        t.feed(
            "imrs-init: ERROR   site        FAILED          0.010 s  bad signature",
            1.4,
        );
        t.feed("imrs-init:   hardware    not reached           -", 1.4);
        t.feed(
            "imrs-init:   in parallel: BIRD started after the network stage (0.120 s)",
            1.4,
        );
        assert_eq!(
            t.in_parallel,
            ["BIRD started after the network stage (0.120 s)"]
        );
        let r = t.report();
        assert_eq!(r.len(), 10);
        assert_eq!(r[1].status, Status::Failed);
        assert_eq!(r[1].reason.as_deref(), Some("bad signature"));
        assert_eq!(r[1].started_at_s, Some(1.2));
        assert_eq!(r[1].ended_at_s, Some(1.3));
        assert_eq!(r[2].status, Status::NotReached);
        assert_eq!(r[9].status, Status::NotReached);
        assert_eq!(t.stopped_at().unwrap().name, "site");
    }

    #[test]
    fn a_stage_tried_again_keeps_its_failures() {
        let mut t = Tracker::default();
        t.feed("imrs-init: stage zone: running", 5.0);
        t.feed(
            "imrs-init: ERROR stage zone: FAILED (0.900 s): no verified zone: ZONEMD mismatch",
            5.9,
        );
        t.feed("imrs-init: boot summary (6.00 s since init start):", 6.0);
        t.feed(
            "imrs-init: ERROR   zone        FAILED          0.900 s  no verified zone: ZONEMD mismatch",
            6.0,
        );
        t.feed("imrs-init:   dns         not reached           -", 6.0);
        assert!(t.summary_seen);
        assert_eq!(t.stopped_at().unwrap().name, "zone");
        assert_eq!(t.get("zone").unwrap().failures(), 1);
        // The retry: the failure becomes history, the pipeline goes on.
        t.feed("imrs-init: stage zone: running (attempt 2)", 11.0);
        assert!(!t.summary_seen, "the summary was the stopped attempt's");
        assert!(t.stopped_at().is_none());
        assert_eq!(t.status("zone"), Some(Status::Running));
        t.feed("imrs-init: stage zone: PASSED (0.800 s)", 11.8);
        t.feed("imrs-init: stage dns: running", 11.8);
        let z = t.get("zone").unwrap();
        assert_eq!(
            (z.status, z.seconds, z.started_at_s, z.ended_at_s),
            (Status::Passed, Some(0.8), Some(11.0), Some(11.8))
        );
        assert_eq!(z.reason, None);
        assert_eq!(
            z.failed_attempts,
            [FailedAttempt {
                seconds: Some(0.9),
                reason: Some("no verified zone: ZONEMD mismatch".into()),
                started_at_s: Some(5.0),
                ended_at_s: Some(5.9),
            }]
        );
        assert_eq!(z.failures(), 1);
        assert_eq!(t.status("dns"), Some(Status::Running));
    }
}
