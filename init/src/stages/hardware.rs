//! Stage `hardware` (first boot only): the machine against the image's hardware profile
//! ([`crate::hardware`]); every check is logged, the report is kept for the state folder and
//! the installation report.

use std::time::Duration;

use crate::context::Context;
use crate::hardware;
use crate::log;
use crate::outcome::Outcome;
use crate::pid1::Role;

/// How long the hardware stage lets the kernel gather entropy (machine role).
const ENTROPY_WAIT: Duration = Duration::from_secs(10);

/// Makes the kernel's CRNG ready if it can be: on Linux 6.1 a blocking `getrandom` runs the
/// jitter entropy generator until it is. Bounded by [`ENTROPY_WAIT`]; the entropy check then
/// reads the result.
async fn wait_for_entropy() {
    let t = tokio::task::spawn_blocking(|| {
        let mut b = [0u8; 1];
        // SAFETY: getrandom writes at most `b.len()` bytes into the valid buffer `b`.
        unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) }
    });
    if tokio::time::timeout(ENTROPY_WAIT, t).await.is_err() {
        log::warn(format!(
            "kernel entropy not ready after {} s",
            ENTROPY_WAIT.as_secs()
        ));
    }
}

/// Runs every check against the profile.
pub async fn run(ctx: &mut Context) -> Outcome {
    let info = match &ctx.image {
        Ok(i) => i.clone(),
        Err(_) => return Outcome::Failed("no image info: no profile to check against".into()),
    };
    if ctx.role == Role::Machine {
        wait_for_entropy().await;
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
