//! Stage `phone-home` (first boot only): the signed `install-passed` report is queued in the
//! persistent outbox ([`crate::installation`]); delivery goes on in the background and the report
//! survives reboots until the receiver acknowledges it.

use imrs_config::report::Event;

use crate::context::Context;
use crate::outcome::{Outcome, StageResult};
use crate::{installation, log};

/// Queues the installation report.
pub fn run(ctx: &mut Context, results: &[StageResult]) -> Outcome {
    let bgp = super::bgp::report(ctx);
    match installation::queue(ctx, Event::InstallPassed {}, results, bgp) {
        Ok(id) => {
            let url = ctx
                .site
                .as_ref()
                .map(|s| s.phone_home.url.clone())
                .unwrap_or_default();
            let msg = format!("install-passed report {id} queued for {url}");
            log::info(&msg);
            ctx.notes.push(msg);
            Outcome::Passed
        }
        Err(e) => Outcome::Failed(format!(
            "cannot queue the installation report: {}",
            log::chain(&e)
        )),
    }
}
