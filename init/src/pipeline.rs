//! The boot pipeline as an explicit state machine: stages in a fixed order, each ending passed,
//! failed (with the reason) or not built yet. The first stage that does not pass stops the
//! pipeline: the node stays off the air and the console summary says exactly where and why.
//! A first boot that stops at a failed stage queues an
//! `install-failed` report naming it ([`crate::installation`]).
//!
//! Every outcome and its timing is saved in the state file ([`crate::state`]) as soon as it is
//! known, and a stage is marked `running` before it starts, so a power cut leaves a record of
//! where it happened.
//!
//! Which stages run on which boot:
//! - **first-boot-only**: `hardware` (acceptance) and `phone-home` (the installation report).
//!   Once passed they are never repeated: after a power cut the boot resumes past them.
//! - **boot-time** (every boot): `platform`, `site`, `network`, `clock`, `zone`, `dns`, `bgp`,
//!   `steady`. They set up this boot's state (modules, mounts, verified config, addresses, the
//!   clock, the zone, the daemons), which a reboot loses; all are idempotent.
//!
//! So a power cut during the first boot resumes at the first first-boot-only stage that has not
//! passed (after redoing the boot-time set-up before it), and once the first boot passed,
//! later boots run only the boot-time stages.

use std::time::Instant;

use crate::stages::{self, Context};
use crate::state::{self, State, Store};
use crate::{installation, log};

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

    /// Runs on the first boot only (see the module docs).
    pub fn first_boot_only(self) -> bool {
        matches!(self, Stage::Hardware | Stage::PhoneHome)
    }

    /// Name as printed and saved.
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

    /// The stage called `name`.
    pub fn from_name(name: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// How a stage ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done.
    Passed,
    /// Failed, with the reason.
    Failed(String),
    /// A first-boot-only stage that passed in an earlier boot: not repeated.
    DoneEarlier,
}

/// One line of the summary.
#[derive(Debug, Clone)]
pub struct StageResult {
    /// Which stage.
    pub stage: Stage,
    /// How it ended; `None`: not reached.
    pub outcome: Option<Outcome>,
    /// How long it took.
    pub seconds: f64,
}

/// Where the pipeline is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// About to run this stage.
    Run(Stage),
    /// Held before this stage (`imrs.hold`).
    Held(Stage),
    /// Stopped at this stage (it did not pass).
    Stopped(Stage),
    /// Every stage passed.
    Complete,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The running stage ended.
    Ended(Outcome),
    /// A hold was requested before the stage about to run.
    Hold,
}

/// The pipeline's transition function.
pub fn step(phase: Phase, event: &Event) -> Phase {
    match (phase, event) {
        (Phase::Run(s), Event::Ended(Outcome::Passed | Outcome::DoneEarlier)) => {
            s.next().map_or(Phase::Complete, Phase::Run)
        }
        (Phase::Run(s), Event::Ended(Outcome::Failed(_))) => Phase::Stopped(s),
        (Phase::Run(s), Event::Hold) => Phase::Held(s),
        (p @ (Phase::Held(_) | Phase::Stopped(_) | Phase::Complete), _) => p,
    }
}

/// One console line per finished stage (the lab follows the boot by these).
fn log_end(stage: Stage, outcome: &Outcome, seconds: f64) {
    let name = stage.name();
    match outcome {
        Outcome::Passed => log::info(format!("stage {name}: PASSED ({seconds:.3} s)")),
        Outcome::DoneEarlier => log::info(format!("stage {name}: DONE EARLIER ({seconds:.3} s)")),
        Outcome::Failed(why) => log::error(format!("stage {name}: FAILED ({seconds:.3} s): {why}")),
    }
}

fn save(store: &Store, st: &State) {
    if let Err(e) = store.save(st) {
        log::error(log::chain(&e));
    }
}

/// Runs the pipeline as far as it goes, recording every outcome in `st` and saving it after
/// each stage. Returns the summary lines, or never returns when held (`hold`).
pub async fn run(
    ctx: &mut Context,
    store: &Store,
    st: &mut State,
    hold: Option<Stage>,
    stop_after: Option<Stage>,
) -> Vec<StageResult> {
    let mut results: Vec<StageResult> = Vec::new();
    let mut phase = Phase::Run(Stage::Platform);
    loop {
        match phase {
            Phase::Run(stage) if hold == Some(stage) => {
                phase = step(phase, &Event::Hold);
            }
            Phase::Run(stage) => {
                let t = Instant::now();
                let outcome = if stage.first_boot_only() && st.passed(stage) {
                    Outcome::DoneEarlier
                } else {
                    st.start(stage);
                    save(store, st);
                    log::info(format!("stage {}: running", stage.name()));
                    stages::run(stage, ctx, &results).await
                };
                let seconds = t.elapsed().as_secs_f64();
                log_end(stage, &outcome, seconds);
                let note = std::mem::take(&mut ctx.notes);
                st.record(stage, &outcome, seconds, note);
                if stage == Stage::PhoneHome && outcome == Outcome::Passed {
                    // The first boot passed: this marker is written only after success.
                    st.first_boot_passed = true;
                }
                save(store, st);
                if stage == Stage::Hardware
                    && let Some(report) = &ctx.hardware
                {
                    let r = store.save_json(state::HARDWARE_REPORT, report);
                    if let Err(e) = r {
                        log::error(log::chain(&e));
                    }
                }
                phase = step(phase, &Event::Ended(outcome.clone()));
                results.push(StageResult {
                    stage,
                    outcome: Some(outcome.clone()),
                    seconds,
                });
                if let (Outcome::Failed(why), false) = (&outcome, st.first_boot_passed) {
                    installation::report_failure(ctx, stage, why, &results).await;
                }
                if stop_after == Some(stage) && phase == Phase::Run(stage.next().unwrap_or(stage)) {
                    log::info(format!(
                        "imrs.stop_after={}: the pipeline ends here, as asked",
                        stage.name()
                    ));
                    break;
                }
            }
            Phase::Held(stage) => {
                log::info(format!(
                    "imrs.hold={}: holding before stage {} (state saved)",
                    stage.name(),
                    stage.name()
                ));
                std::future::pending::<()>().await;
            }
            Phase::Stopped(_) | Phase::Complete => break,
        }
    }
    for stage in Stage::ALL {
        if !results.iter().any(|r| r.stage == stage) {
            results.push(StageResult {
                stage,
                outcome: None,
                seconds: 0.0,
            });
        }
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions() {
        let failed = Event::Ended(Outcome::Failed("x".into()));
        let table = [
            (
                Phase::Run(Stage::Platform),
                Event::Ended(Outcome::Passed),
                Phase::Run(Stage::Site),
            ),
            (
                Phase::Run(Stage::Hardware),
                Event::Ended(Outcome::DoneEarlier),
                Phase::Run(Stage::Network),
            ),
            (
                Phase::Run(Stage::Site),
                failed.clone(),
                Phase::Stopped(Stage::Site),
            ),
            (
                Phase::Run(Stage::Zone),
                Event::Ended(Outcome::Failed("refused".into())),
                Phase::Stopped(Stage::Zone),
            ),
            (
                Phase::Run(Stage::Steady),
                Event::Ended(Outcome::Passed),
                Phase::Complete,
            ),
            (
                Phase::Run(Stage::Clock),
                Event::Hold,
                Phase::Held(Stage::Clock),
            ),
            (
                Phase::Complete,
                Event::Ended(Outcome::Passed),
                Phase::Complete,
            ),
            (
                Phase::Stopped(Stage::Site),
                Event::Ended(Outcome::Passed),
                Phase::Stopped(Stage::Site),
            ),
            (Phase::Held(Stage::Dns), failed, Phase::Held(Stage::Dns)),
        ];
        for (from, event, to) in table {
            assert_eq!(step(from, &event), to, "{from:?} + {event:?}");
        }
    }

    #[test]
    fn names_round_trip_and_boot_classes() {
        for s in Stage::ALL {
            assert_eq!(Stage::from_name(s.name()), Some(s));
        }
        let first: Vec<Stage> = Stage::ALL
            .into_iter()
            .filter(|s| s.first_boot_only())
            .collect();
        assert_eq!(first, [Stage::Hardware, Stage::PhoneHome]);
        assert_eq!(Stage::Steady.next(), None);
    }
}
