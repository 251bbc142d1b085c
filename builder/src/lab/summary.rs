//! The outcome of a lab run: what each boot showed, what the router, the DNS probes and the
//! receiver saw, and the scenario's checks. Printed for people (stderr) or as one JSON object
//! (`--json`, stdout).

use std::fmt::Write;
use std::path::PathBuf;

use serde::Serialize;

use super::console::StageReport;
use super::probe::SoaAnswer;
use super::receiver::StoredReport;
use crate::host::router::{Neighbor, Route, RouterKind};

/// One boot of the appliance.
#[derive(Debug, Clone, Serialize)]
pub struct BootOutcome {
    /// `boot 1`, `boot 2`.
    pub label: String,
    /// Stages as the console told them.
    pub stages: Vec<StageReport>,
    /// QEMU start to serving (specific prefixes at the router from AS 20144 and `. SOA`
    /// answered on the IPv4 service address).
    pub serving_s: Option<f64>,
    /// QEMU start to a new verified report at the receiver.
    pub report_s: Option<f64>,
    /// The specific prefixes reached the router at some point of this boot.
    pub specifics_seen: bool,
    /// When the router first held a specific prefix (seconds after QEMU start).
    pub specifics_first_s: Option<f64>,
    /// The lab pulled the plug (power cut) at this stage.
    pub killed_at: Option<String>,
    /// QEMU's exit code if the guest ended the VM itself (`null` inside: killed by a signal).
    pub exited: Option<Option<i32>>,
    /// The boot ran into the time limit.
    pub timed_out: bool,
    /// The kernel panicked.
    pub panicked: bool,
    /// Seconds the boot was observed.
    pub observed_s: f64,
    /// What the lab did during the boot, with times after QEMU start.
    pub actions: Vec<String>,
    /// Sockets accepting traffic once healthy, as the init read them (`PROTO ADDR:PORT
    /// PROGRAM`).
    pub listening: Vec<String>,
    /// Every process but the init, with its account and capabilities, once healthy.
    pub daemons: Vec<super::exposure::DaemonIdentity>,
    /// What ran alongside the stages, as the init's last summary said (`in parallel:`).
    pub in_parallel: Vec<String>,
}

/// One check of the scenario's expectation.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What is expected.
    pub what: String,
    /// Whether it held.
    pub ok: bool,
    /// What was seen.
    pub detail: String,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The scenario's expectation held.
    pub passed: bool,
    /// Scenario name.
    pub scenario: String,
    /// What the scenario expects, in one sentence.
    pub expectation: String,
    /// Each expectation and whether it held.
    pub checks: Vec<Check>,
    /// QEMU start to serving in the installing boot.
    pub boot_to_serving_s: Option<f64>,
    /// QEMU start to the verified installation report.
    pub boot_to_report_s: Option<f64>,
    /// QEMU start to serving in the second boot (second-boot scenario).
    pub second_boot_to_serving_s: Option<f64>,
    /// Stages of the installing boot.
    pub stages: Vec<StageReport>,
    /// The host's router (`frr`, `gobgp`).
    pub router: RouterKind,
    /// Routes the router held at the end of the installing boot.
    pub routes: Vec<Route>,
    /// The router's BGP sessions with the appliance at the end of the installing boot.
    pub sessions: Vec<Neighbor>,
    /// `. SOA` over UDP and TCP to both service addresses at the end of the installing boot.
    pub soa: Vec<SoaAnswer>,
    /// The serial all good answers agree on.
    pub soa_serial: Option<u32>,
    /// A verified installation report reached the receiver.
    pub report_verified: bool,
    /// Its event (`install-passed`, `install-failed`).
    pub report_event: Option<String>,
    /// The failed stage it names.
    pub report_failed_stage: Option<String>,
    /// The failure reason it gives.
    pub report_failed_reason: Option<String>,
    /// Every verified report the receiver stored.
    pub reports: Vec<StoredReport>,
    /// Submissions the receiver refused.
    pub rejected_reports: u64,
    /// Every boot.
    pub boots: Vec<BootOutcome>,
    /// Accelerator used.
    pub accel: String,
    /// Image folder booted.
    pub image: PathBuf,
    /// The serial console of every boot.
    pub console_log: PathBuf,
    /// The lab's work folder (logs of the router, NSD, the receiver).
    pub workdir: PathBuf,
    /// The glue record changed for tampered-zone.
    pub tampered: Option<String>,
    /// Sockets accepting traffic once the installing boot was healthy.
    pub listening: Vec<String>,
    /// The daemons then: program, account, capabilities.
    pub daemons: Vec<super::exposure::DaemonIdentity>,
    /// TCP probes of the closed face from the router side at the end of the installing boot.
    pub reach: Vec<super::reach::Probe>,
}

fn secs(v: Option<f64>) -> String {
    v.map_or("-".into(), |s| format!("{s:.1} s"))
}

/// The summary for people.
pub fn render(s: &Summary) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "lab scenario {}: {}",
        s.scenario,
        if s.passed { "PASSED" } else { "FAILED" }
    );
    let _ = writeln!(o, "  expected: {}", s.expectation);
    for c in &s.checks {
        let _ = writeln!(
            o,
            "  [{}] {}: {}",
            if c.ok { "ok" } else { "FAIL" },
            c.what,
            c.detail
        );
    }
    let _ = writeln!(o, "  boot to serving      {}", secs(s.boot_to_serving_s));
    let _ = writeln!(o, "  boot to report       {}", secs(s.boot_to_report_s));
    if s.second_boot_to_serving_s.is_some() {
        let _ = writeln!(
            o,
            "  second boot serving  {}",
            secs(s.second_boot_to_serving_s)
        );
    }
    for b in &s.boots {
        let mut how = Vec::new();
        if let Some(k) = &b.killed_at {
            how.push(format!("power cut during {k}"));
        }
        if b.timed_out {
            how.push("time limit".into());
        }
        if b.panicked {
            how.push("KERNEL PANIC".into());
        }
        if let Some(code) = b.exited {
            how.push(format!(
                "VM exited ({})",
                code.map_or("signal".into(), |c| c.to_string())
            ));
        }
        let _ = writeln!(
            o,
            "  {}: observed {:.1} s, serving {}, report {}{}",
            b.label,
            b.observed_s,
            secs(b.serving_s),
            secs(b.report_s),
            if how.is_empty() {
                String::new()
            } else {
                format!(" ({})", how.join(", "))
            }
        );
        for st in &b.stages {
            let _ = writeln!(
                o,
                "      {:<11} {:<13} {:>9}{}",
                st.name,
                st.status.console_word(),
                st.seconds.map_or("-".into(), |v| format!("{v:.3} s")),
                st.reason
                    .as_ref()
                    .map(|r| format!("  {r}"))
                    .unwrap_or_default()
            );
        }
        for a in &b.actions {
            let _ = writeln!(o, "      lab: {a}");
        }
    }
    let _ = writeln!(
        o,
        "  router {}{}",
        s.router.product(),
        s.sessions
            .iter()
            .map(|n| format!(", session {} {}", n.address, n.state))
            .collect::<String>()
    );
    if s.routes.is_empty() {
        let _ = writeln!(o, "  routes: none at the router");
    }
    for r in &s.routes {
        let _ = writeln!(
            o,
            "  route {:<20} origin AS {:<6} path {:<12}{}",
            r.prefix,
            r.origin_as.map_or("-".into(), |a| a.to_string()),
            r.as_path,
            if r.valid { "" } else { " (invalid)" }
        );
    }
    for a in &s.soa {
        let detail = if a.ok() {
            format!(
                "serial {} AA NSID {}",
                a.serial.unwrap_or(0),
                a.nsid.as_deref().unwrap_or("(none)")
            )
        } else {
            a.error.clone().unwrap_or_else(|| "no answer".into())
        };
        let _ = writeln!(o, "  . SOA {:<24} {}  {detail}", a.server, a.transport);
    }
    for l in &s.listening {
        let _ = writeln!(o, "  listening {l}");
    }
    for d in &s.daemons {
        let caps = if d.caps.is_empty() {
            "none".to_string()
        } else {
            d.caps.join(",")
        };
        let _ = writeln!(
            o,
            "  daemon {:<8} {:<16} uid {:<5} gid {:<5} caps {caps}{}",
            d.program,
            d.title,
            d.uid,
            d.gid,
            if d.no_new_privs {
                ""
            } else {
                " (no_new_privs off)"
            }
        );
    }
    let _ = writeln!(
        o,
        "  report: {}{}",
        match (&s.report_event, s.report_verified) {
            (Some(e), true) => format!("{e} (verified)"),
            _ => "none".into(),
        },
        match (&s.report_failed_stage, &s.report_failed_reason) {
            (Some(st), Some(r)) => format!(", stage {st}: {r}"),
            _ => String::new(),
        }
    );
    let _ = writeln!(
        o,
        "  receiver: {} verified report(s) [{}], {} rejected",
        s.reports.len(),
        s.reports
            .iter()
            .map(|r| r.event.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        s.rejected_reports
    );
    if let Some(t) = &s.tampered {
        let _ = writeln!(o, "  tampered zone: {t}");
    }
    let _ = writeln!(o, "  accel {}, image {}", s.accel, s.image.display());
    let _ = writeln!(o, "  console log {}", s.console_log.display());
    let _ = writeln!(o, "  work folder {}", s.workdir.display());
    o
}
