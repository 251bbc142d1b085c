//! The stages' bodies, one module per stage, in pipeline order. Each takes the boot's
//! [`Context`] and ends in an [`Outcome`]; the pipeline ([`crate::pipeline`]) decides what runs
//! and records what happened.
//!
//! | stage | module | passes when |
//! |---|---|---|
//! | platform | [`platform`] | kernel filesystems mounted, the image describes itself (modules are loaded before the pipeline by [`platform::load_modules`]) |
//! | site | [`site`] | a signed site config for this appliance was found and verified |
//! | hardware | [`hardware`] | the machine matches the image's profile (first boot only) |
//! | network | [`network`] | interfaces, addresses, routes and service addresses applied; every IPv6 address usable (service addresses without DAD, management ones optimistic) |
//! | clock | [`clock`] | the clock is trustworthy (NTP, or the RTC on a lab site) |
//! | zone | [`zone`] | a root zone verified now (ZONEMD + DNSSEC) is ready to serve |
//! | dns | [`dns`] | NSD or Knot answers the verified serial with AA and NSID, UDP and TCP, v4 and v6 |
//! | bgp | [`bgp`] | BIRD's sessions are up and the health loop announces the specifics |
//! | phone-home | [`phone_home`] | the signed installation report is queued (first boot only) |
//! | steady | [`steady`] | the zone refresh loop runs |

pub mod bgp;
pub mod clock;
pub mod dns;
pub mod hardware;
pub mod network;
pub mod phone_home;
pub mod platform;
pub mod site;
pub mod steady;
pub mod zone;

use std::time::Duration;

use imrs_config::stage::Stage;

use crate::context::Context;
use crate::outcome::{Outcome, StageResult};

/// Helper programs (config checks, reloads) are killed after this long.
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a daemon a failed stage left running gets between SIGTERM and SIGKILL before the
/// stage runs again.
pub const RESET_GRACE: Duration = Duration::from_secs(5);

/// Undoes what a failed stage left running before it runs again ([`crate::retry`]): the DNS
/// daemon of `dns`, BIRD and the health loop of `bgp`. The other stages are idempotent (the
/// network is applied as a difference, the zone obtained anew, the report queued once).
pub async fn reset(stage: Stage, ctx: &mut Context) {
    match stage {
        Stage::Dns => dns::reset(ctx).await,
        Stage::Bgp => bgp::reset(ctx).await,
        _ => {}
    }
}

/// Runs one stage; `results` are the outcomes so far (for the phone-home report).
pub async fn run(stage: Stage, ctx: &mut Context, results: &[StageResult]) -> Outcome {
    match stage {
        Stage::Platform => platform::run(ctx),
        Stage::Site => site::run(ctx).await,
        Stage::Hardware => hardware::run(ctx).await,
        Stage::Network => network::run(ctx).await,
        Stage::Clock => clock::run(ctx).await,
        Stage::Zone => zone::run(ctx).await,
        Stage::Dns => dns::run(ctx).await,
        Stage::Bgp => bgp::run(ctx).await,
        Stage::PhoneHome => phone_home::run(ctx, results),
        Stage::Steady => steady::run(ctx).await,
    }
}
