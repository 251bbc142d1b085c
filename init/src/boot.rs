//! The first-boot pipeline: stages in a fixed order, each ending passed, failed (with the reason)
//! or not built yet. The first stage that does not pass stops the pipeline: the node stays off
//! the air and the console summary says exactly where and why. Stages that later work implements
//! report "not built yet" and stop the pipeline: never a fake pass.

use std::path::Path;
use std::time::{Duration, Instant};

use imrs_config::image::{IMAGE_INFO_PATH, ImageInfo};

use crate::{log, modules, site};

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

/// Runs the pipeline from the first stage until one does not pass.
pub fn run(
    root: &Path,
    ctx: &mut Context,
    mount_errors: &[crate::pid1::MountError],
) -> Vec<StageResult> {
    let mut results = Vec::new();
    let mut stopped = false;
    for stage in Stage::ALL {
        if stopped {
            results.push(StageResult {
                stage,
                outcome: Outcome::Skipped,
                seconds: 0.0,
            });
            continue;
        }
        let t = Instant::now();
        let outcome = match stage {
            Stage::Platform => platform(root, ctx, mount_errors),
            Stage::Site => site_stage(root, ctx),
            Stage::Hardware
            | Stage::Network
            | Stage::Clock
            | Stage::Zone
            | Stage::Dns
            | Stage::Bgp
            | Stage::PhoneHome
            | Stage::Steady => Outcome::NotBuiltYet,
        };
        stopped = outcome != Outcome::Passed;
        results.push(StageResult {
            stage,
            outcome,
            seconds: t.elapsed().as_secs_f64(),
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
