//! The first-boot pipeline: stages in a fixed order, each ending passed, failed (with the reason)
//! or not built yet. The first stage that does not pass stops the pipeline: the node stays off
//! the air and the console summary says exactly where and why. Stages that later work implements
//! report "not built yet" and stop the pipeline: never a fake pass.

use std::path::Path;
use std::time::{Duration, Instant};

use imrs_config::image::{IMAGE_INFO_PATH, ImageInfo};

use crate::{hardware, log, modules, site, state};

/// Pipeline stages, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// Mounts, image info, kernel modules.
    Platform,
    /// Signed site config.
    Site,
    /// Hardware acceptance against the profile.
    Hardware,
    /// Interfaces and routes.
    Network,
    /// A trustworthy clock.
    Clock,
    /// Root zone transfer and verification.
    Zone,
    /// The DNS service.
    Dns,
    /// BGP, gated on health.
    Bgp,
    /// The installation report.
    PhoneHome,
    /// Steady state.
    Steady,
}

impl Stage {
    /// Every stage in order.
    pub const ALL: [Stage; 10] = [
        Stage::Platform,
        Stage::Site,
        Stage::Hardware,
        Stage::Network,
        Stage::Clock,
        Stage::Zone,
        Stage::Dns,
        Stage::Bgp,
        Stage::PhoneHome,
        Stage::Steady,
    ];

    /// The stage after this one.
    pub fn next(self) -> Option<Stage> {
        let i = Stage::ALL.iter().position(|s| *s == self)?;
        Stage::ALL.get(i + 1).copied()
    }

    /// Stages that run on the first boot only (once passed, later boots skip them): hardware
    /// acceptance and the installation report. Every other stage sets up this boot's state
    /// (mounts, modules, interfaces, clock, zone, daemons) and runs on every boot; all are
    /// idempotent.
    pub fn first_boot_only(self) -> bool {
        matches!(self, Stage::Hardware | Stage::PhoneHome)
    }

    /// Name as printed.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Platform => "platform",
            Stage::Site => "site",
            Stage::Hardware => "hardware",
            Stage::Network => "network",
            Stage::Clock => "clock",
            Stage::Zone => "zone",
            Stage::Dns => "dns",
            Stage::Bgp => "bgp",
            Stage::PhoneHome => "phone-home",
            Stage::Steady => "steady",
        }
    }
}

/// How a stage ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "status", content = "reason", rename_all = "kebab-case")]
pub enum Outcome {
    /// Done.
    Passed,
    /// Failed, with the reason.
    Failed(String),
    /// Not implemented in this image yet.
    NotBuiltYet,
    /// Not reached because an earlier stage did not pass.
    Skipped,
    /// A first-boot-only stage that passed in an earlier boot: not repeated.
    DoneEarlier,
}

/// One line of the summary.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StageResult {
    /// Which stage.
    pub stage: Stage,
    /// How it ended.
    pub outcome: Outcome,
    /// How long it took.
    pub seconds: f64,
}

/// What the boot learned, for later stages.
#[derive(Debug, Default)]
pub struct Context {
    /// The image's description of itself.
    pub image: Option<ImageInfo>,
    /// The verified site config.
    pub site: Option<imrs_config::site::Site>,
    /// Kernel modules that did not load (reported by the hardware stage).
    pub module_failures: Vec<modules::ModuleFailure>,
    /// The hardware report.
    pub hardware: Option<hardware::Report>,
}

/// Where the pipeline is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Running this stage.
    Run(Stage),
    /// Stopped at this stage (it did not pass).
    Stopped(Stage),
    /// Every stage passed.
    Complete,
}

/// What happened to the running stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The stage ended.
    Ended(Outcome),
}

/// The pipeline's transition function.
pub fn step(phase: Phase, event: &Event) -> Phase {
    match (phase, event) {
        (Phase::Run(s), Event::Ended(Outcome::Passed | Outcome::DoneEarlier)) => {
            s.next().map_or(Phase::Complete, Phase::Run)
        }
        (
            Phase::Run(s),
            Event::Ended(Outcome::Failed(_) | Outcome::NotBuiltYet | Outcome::Skipped),
        ) => Phase::Stopped(s),
        (p @ (Phase::Stopped(_) | Phase::Complete), _) => p,
    }
}

fn platform(root: &Path, ctx: &mut Context, mount_errors: &[crate::pid1::MountError]) -> Outcome {
    if let Some(e) = mount_errors.first() {
        return Outcome::Failed(format!("{e}: {}", e.source));
    }
    let Some(info) = ctx.image.as_ref() else {
        return Outcome::Failed(format!("{IMAGE_INFO_PATH}: missing or unreadable"));
    };
    let (n, failures) = modules::load_all(root, &info.kernel_release, &info.modules);
    if !failures.is_empty() {
        let list: Vec<String> = failures
            .iter()
            .map(|f| format!("{} ({})", f.module, f.reason))
            .collect();
        return Outcome::Failed(format!("kernel modules failed: {}", list.join("; ")));
    }
    log::info(format!("loaded {n} kernel modules"));
    Outcome::Passed
}

fn site_stage(root: &Path, ctx: &mut Context) -> Outcome {
    match site::load(root) {
        Ok((s, from)) => {
            log::info(format!(
                "site config from {from}: instance {}, site {}{}",
                s.instance,
                s.site_id,
                if s.lab { ", LAB SITE" } else { "" }
            ));
            ctx.site = Some(s);
            Outcome::Passed
        }
        Err(e) => {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                src = s.source();
            }
            Outcome::Failed(format!("{msg}; staying off the air (no DNS, no BGP)"))
        }
    }
}

fn hardware_stage(root: &Path, ctx: &mut Context) -> Outcome {
    let Some(info) = ctx.image.as_ref() else {
        return Outcome::Failed("no image info: no profile to check against".into());
    };
    let report = hardware::check(
        root,
        &info.profile,
        info.source_date_epoch,
        &ctx.module_failures,
    );
    for c in &report.checks {
        let line = format!(
            "hardware {}: {} (required {})",
            c.name, c.measured, c.required
        );
        match c.status {
            hardware::Status::Fail => log::error(format!("{line}: FAIL")),
            hardware::Status::Warn => log::warn(line),
            hardware::Status::Pass => {}
        }
    }
    let outcome = if report.passed() {
        log::info(format!(
            "hardware matches profile {} ({} checks, {} warnings)",
            report.profile,
            report.checks.len(),
            report.warnings().len()
        ));
        Outcome::Passed
    } else {
        let names: Vec<String> = report
            .failures()
            .iter()
            .map(|c| format!("{}: {}, required {}", c.name, c.measured, c.required))
            .collect();
        Outcome::Failed(format!("profile {}: {}", report.profile, names.join("; ")))
    };
    ctx.hardware = Some(report);
    outcome
}

/// Runs the pipeline as far as it goes, recording every outcome in `state` and saving it after
/// each stage. First-boot-only stages that passed in an earlier boot are not repeated.
pub fn run(
    root: &Path,
    ctx: &mut Context,
    mount_errors: &[crate::pid1::MountError],
    store: &state::Store,
    state: &mut state::State,
) -> Vec<StageResult> {
    let mut results = Vec::new();
    let mut phase = Phase::Run(Stage::Platform);
    for stage in Stage::ALL {
        if phase != Phase::Run(stage) {
            results.push(StageResult {
                stage,
                outcome: Outcome::Skipped,
                seconds: 0.0,
            });
            continue;
        }
        let t = Instant::now();
        let outcome = match stage {
            _ if stage.first_boot_only() && state.passed(stage) => Outcome::DoneEarlier,
            Stage::Platform => platform(root, ctx, mount_errors),
            Stage::Site => site_stage(root, ctx),
            Stage::Hardware => hardware_stage(root, ctx),
            Stage::Network
            | Stage::Clock
            | Stage::Zone
            | Stage::Dns
            | Stage::Bgp
            | Stage::PhoneHome
            | Stage::Steady => Outcome::NotBuiltYet,
        };
        let seconds = t.elapsed().as_secs_f64();
        state.record(stage, &outcome, seconds);
        if stage == Stage::PhoneHome && matches!(outcome, Outcome::Passed | Outcome::DoneEarlier) {
            state.first_boot_passed = true;
        }
        if let Err(e) = store.save(state) {
            log::error(format!("{e}: {}", e.source));
        }
        phase = step(phase, &Event::Ended(outcome.clone()));
        results.push(StageResult {
            stage,
            outcome,
            seconds,
        });
    }
    results
}

/// Prints the console summary: one line per stage with status, time and reason.
pub fn print_summary(results: &[StageResult], since_start: Duration) {
    log::info(format!(
        "boot summary ({:.2} s since init start):",
        since_start.as_secs_f64()
    ));
    for r in results {
        let (status, reason) = match &r.outcome {
            Outcome::Passed => ("PASSED", String::new()),
            Outcome::Failed(why) => ("FAILED", format!("  {why}")),
            Outcome::NotBuiltYet => ("NOT BUILT YET", "  (stops the pipeline)".into()),
            Outcome::Skipped => ("skipped", String::new()),
            Outcome::DoneEarlier => ("DONE EARLIER", "  (first boot passed it)".into()),
        };
        let line = format!(
            "  {:<11} {:<13} {:>7.3} s{reason}",
            r.stage.name(),
            status,
            r.seconds
        );
        match r.outcome {
            Outcome::Failed(_) => log::error(line),
            _ => log::info(line),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions() {
        let p = step(Phase::Run(Stage::Platform), &Event::Ended(Outcome::Passed));
        assert_eq!(p, Phase::Run(Stage::Site));
        let p = step(
            Phase::Run(Stage::Hardware),
            &Event::Ended(Outcome::DoneEarlier),
        );
        assert_eq!(p, Phase::Run(Stage::Network));
        let p = step(
            Phase::Run(Stage::Site),
            &Event::Ended(Outcome::Failed("x".into())),
        );
        assert_eq!(p, Phase::Stopped(Stage::Site));
        let p = step(Phase::Run(Stage::Zone), &Event::Ended(Outcome::NotBuiltYet));
        assert_eq!(p, Phase::Stopped(Stage::Zone));
        let p = step(Phase::Run(Stage::Steady), &Event::Ended(Outcome::Passed));
        assert_eq!(p, Phase::Complete);
        assert_eq!(
            step(Phase::Complete, &Event::Ended(Outcome::Passed)),
            Phase::Complete
        );
        assert_eq!(
            step(Phase::Stopped(Stage::Site), &Event::Ended(Outcome::Passed)),
            Phase::Stopped(Stage::Site)
        );
    }
}
