//! Stage `hardware` (first boot only): the machine against the image's hardware profile
//! ([`crate::hardware`]); every check is logged, the report is kept for the state folder and
//! the installation report.

use crate::context::Context;
use crate::hardware;
use crate::log;
use crate::outcome::Outcome;
use crate::pid1::Role;

/// Runs every check against the profile.
pub async fn run(ctx: &mut Context) -> Outcome {
    let info = match &ctx.image {
        Ok(i) => i.clone(),
        Err(_) => return Outcome::Failed("no image info: no profile to check against".into()),
    };
    if ctx.role == Role::Machine && !crate::entropy::wait(crate::entropy::WAIT).await {
        log::warn(format!(
            "kernel entropy not ready after {} s",
            crate::entropy::WAIT.as_secs()
        ));
    }
    let root = ctx.root.clone();
    let failures = ctx.module_failures.clone();
    let report = match tokio::task::spawn_blocking(move || {
        hardware::check(&root, &info.profile, info.source_date_epoch, &failures)
    })
    .await
    {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(format!("hardware checks crashed: {e}")),
    };
    for c in &report.checks {
        let line = format!(
            "hardware {}: {} (required {})",
            c.name, c.measured, c.required
        );
        match c.status {
            hardware::Status::Fail => log::error(format!("{line}: FAIL")),
            hardware::Status::Warn => log::warn(line),
            hardware::Status::Pass => log::info(format!("{line}: ok")),
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
