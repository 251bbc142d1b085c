//! The boot pipeline as an explicit state machine: stages in a fixed order
//! ([`imrs_config::stage::Stage`]), each ending passed, failed (with the reason) or done
//! earlier. A stage that does not pass stops the pipeline there: the node stays off the air and
//! the console summary says exactly where and why. A first boot that stops at a failed stage
//! queues an `install-failed` report naming it ([`crate::installation`]), once.
//!
//! Then, unless the failed stage is `hardware` (final: a machine that fails acceptance must not
//! serve), the boot is on trial or the run is a one-pass test ([`Plan::retry`]), the failed stage
//! runs again after a capped, jittered delay ([`crate::retry`]) and the pipeline goes on from
//! there; a first boot that passes later queues `install-passed` as usual. Each attempt has
//! its own console lines (`stage zone: running` again, `attempt 2`) and its own record in the
//! state file.
//!
//! BIRD starts right after the network stage when the boot goes on to `bgp`
//! ([`stages::bgp::start_early`]): its sessions come up, announcing nothing, while clock, zone
//! and dns run; the summary says so on an `in parallel:` line.
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

use imrs_config::stage::{Stage, Status};

use crate::context::Context;
use crate::outcome::{Outcome, StageResult};
use crate::retry::{self, RetryPolicy};
use crate::state::{self, State, Store};
use crate::{installation, log, stages, summary};

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
    /// The delay after a failure is over: try the stage again.
    Retry,
}

/// The pipeline's transition function.
pub fn step(phase: Phase, event: &Event) -> Phase {
    match (phase, event) {
        (Phase::Run(s), Event::Ended(Outcome::Passed | Outcome::DoneEarlier)) => {
            s.next().map_or(Phase::Complete, Phase::Run)
        }
        (Phase::Run(s), Event::Ended(Outcome::Failed(_))) => Phase::Stopped(s),
        (Phase::Run(s), Event::Hold) => Phase::Held(s),
        (Phase::Stopped(s), Event::Retry) if retry::retryable(s) => Phase::Run(s),
        (p @ Phase::Run(_), Event::Retry) => p,
        (p @ (Phase::Held(_) | Phase::Stopped(_) | Phase::Complete), _) => p,
    }
}

/// One console line per finished stage, in the shared vocabulary's words (the lab follows the
/// boot by these).
fn log_end(stage: Stage, outcome: &Outcome, seconds: f64) {
    let line = format!("stage {stage}: {} ({seconds:.3} s)", outcome.status());
    match outcome.reason() {
        Some(why) => log::error(format!("{line}: {why}")),
        None => log::info(line),
    }
}

fn save(store: &Store, st: &State) {
    if let Err(e) = store.save(st) {
        log::error(log::chain(&e));
    }
}

/// A first boot stopped at `stage`: queue `install-failed`, bringing the management network up
/// first when the pipeline stopped before the network stage (no DNS, no BGP).
async fn report_failure(ctx: &mut Context, stage: Stage, why: &str, results: &[StageResult]) {
    if ctx.site.is_none() {
        return;
    }
    network_for_report(ctx, stage).await;
    let bgp = stages::bgp::report(ctx);
    installation::report_failure(ctx, stage, why, results, bgp);
}

/// Brings the management network up for a report when the pipeline stopped before the network
/// stage.
async fn network_for_report(ctx: &mut Context, stage: Stage) {
    if stage < Stage::Network {
        let net = stages::network::run(ctx).await;
        ctx.notes.clear();
        if let Outcome::Failed(why) = net {
            log::warn(format!(
                "network for the failure report: {why}; the report waits in the outbox"
            ));
        }
    }
}

/// How this boot's pipeline runs.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `imrs.hold`: wait before this stage.
    pub hold: Option<Stage>,
    /// `imrs.stop_after`: end after this stage passes.
    pub stop_after: Option<Stage>,
    /// Try failed stages again ([`crate::retry`]); `None`: the first failure ends the pipeline.
    pub retry: Option<RetryPolicy>,
    /// When the init started (the summary's time).
    pub started: Instant,
}

impl Plan {
    /// Whether the pipeline is meant to run `stage` (no hold or `stop_after` before it).
    pub fn reaches(&self, stage: Stage) -> bool {
        self.hold.is_none_or(|h| h > stage) && self.stop_after.is_none_or(|s| s >= stage)
    }
}

/// Every known stage in order, the ones not run as not reached (the summary's and the
/// reports' view).
fn complete(results: &[StageResult]) -> Vec<StageResult> {
    Stage::ALL
        .iter()
        .map(|&stage| {
            results
                .iter()
                .find(|r| r.stage == stage)
                .cloned()
                .unwrap_or(StageResult {
                    stage,
                    outcome: None,
                    seconds: 0.0,
                })
        })
        .collect()
}

/// Runs the pipeline as far as it goes, recording every outcome in `st` and saving it after
/// each stage, trying failed stages again when the plan says so. Returns the summary lines
/// once every stage passed, the pipeline stopped for good or ended as asked (`stop_after`);
/// never returns when held (`hold`).
pub async fn run(
    ctx: &mut Context,
    store: &Store,
    st: &mut State,
    plan: &Plan,
) -> Vec<StageResult> {
    let mut results: Vec<StageResult> = Vec::new();
    let mut phase = Phase::Run(Stage::Platform);
    // Failed attempts since a failed stage last passed; whether the failure was reported.
    let mut failures: u32 = 0;
    let mut reported = false;
    // The stage being tried again.
    let mut retrying: Option<Stage> = None;
    loop {
        match phase {
            Phase::Run(stage) if plan.hold == Some(stage) => {
                phase = step(phase, &Event::Hold);
            }
            Phase::Run(stage) => {
                let t = Instant::now();
                let outcome = if stage.first_boot_only() && st.passed(stage) {
                    Outcome::DoneEarlier
                } else {
                    st.start(stage);
                    save(store, st);
                    if retrying == Some(stage) {
                        log::info(format!(
                            "stage {stage}: {} (attempt {})",
                            Status::Running,
                            failures + 1
                        ));
                    } else {
                        log::info(format!("stage {stage}: {}", Status::Running));
                    }
                    stages::run(stage, ctx, &results).await
                };
                let seconds = t.elapsed().as_secs_f64();
                log_end(stage, &outcome, seconds);
                let note = std::mem::take(&mut ctx.notes);
                st.record(stage, &outcome, seconds, note);
                if stage == Stage::Bgp && outcome == Outcome::Passed {
                    // Healthy: zone verified, DNS answering, BGP established and announcing.
                    crate::slots::on_healthy(&ctx.root, &ctx.boot_entry, ctx.slot);
                }
                if stage == Stage::Network && outcome == Outcome::Passed && plan.reaches(Stage::Bgp)
                {
                    // BIRD's sessions come up (announcing nothing) while the next stages run.
                    stages::bgp::start_early(ctx).await;
                }
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
                if stage == Stage::Bgp && outcome == Outcome::Passed {
                    crate::slot_history::after_healthy(ctx, store, st.first_boot_passed, &results);
                }
                match &outcome {
                    Outcome::Failed(why) if !reported => {
                        reported = true;
                        if !st.first_boot_passed {
                            report_failure(ctx, stage, why, &results).await;
                        } else if ctx.boot_entry.on_trial().is_none()
                            && ctx.slot_fallback.is_some()
                            && ctx.site.is_some()
                        {
                            // The other slot failed its trial and this one fails too.
                            network_for_report(ctx, stage).await;
                            crate::slot_history::both_bad(ctx, store, stage, why, &results);
                        }
                    }
                    Outcome::Passed if retrying == Some(stage) => {
                        log::info(format!("stage {stage} passed on attempt {}", failures + 1));
                        retrying = None;
                        failures = 0;
                    }
                    _ => {}
                }
                if plan.stop_after == Some(stage)
                    && phase == Phase::Run(stage.next().unwrap_or(stage))
                {
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
            Phase::Stopped(stage) => {
                let Some(policy) = plan.retry.filter(|_| retry::retryable(stage)) else {
                    break;
                };
                failures += 1;
                if failures == 1 {
                    // Where and why, as a pipeline that ends here would say it.
                    summary::print(
                        &complete(&results),
                        plan.started.elapsed(),
                        &ctx.serving.in_parallel,
                    );
                }
                let delay = policy.next_delay(failures);
                let meanwhile = if stage <= Stage::Bgp {
                    "nothing is announced meanwhile"
                } else {
                    "the node serves meanwhile"
                };
                log::warn(format!(
                    "stage {stage} failed (attempt {failures}): trying it again in {:.1} s; \
                     {meanwhile}",
                    delay.as_secs_f64()
                ));
                stages::reset(stage, ctx).await;
                tokio::time::sleep(delay).await;
                results.retain(|r| r.stage < stage);
                retrying = Some(stage);
                phase = step(phase, &Event::Retry);
            }
            Phase::Complete => break,
        }
    }
    complete(&results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_reaches_what_no_hold_or_stop_comes_before() {
        let plan = |hold, stop_after| Plan {
            hold,
            stop_after,
            retry: None,
            started: Instant::now(),
        };
        assert!(plan(None, None).reaches(Stage::Bgp));
        assert!(plan(Some(Stage::PhoneHome), Some(Stage::Bgp)).reaches(Stage::Bgp));
        assert!(!plan(Some(Stage::Bgp), None).reaches(Stage::Bgp));
        assert!(!plan(None, Some(Stage::Zone)).reaches(Stage::Bgp));
    }

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
            (
                Phase::Stopped(Stage::Zone),
                Event::Retry,
                Phase::Run(Stage::Zone),
            ),
            (
                Phase::Stopped(Stage::Bgp),
                Event::Retry,
                Phase::Run(Stage::Bgp),
            ),
            // A machine that fails acceptance stays stopped.
            (
                Phase::Stopped(Stage::Hardware),
                Event::Retry,
                Phase::Stopped(Stage::Hardware),
            ),
            (Phase::Run(Stage::Dns), Event::Retry, Phase::Run(Stage::Dns)),
            (Phase::Complete, Event::Retry, Phase::Complete),
            (
                Phase::Held(Stage::Zone),
                Event::Retry,
                Phase::Held(Stage::Zone),
            ),
        ];
        for (from, event, to) in table {
            assert_eq!(step(from, &event), to, "{from:?} + {event:?}");
        }
    }
}
