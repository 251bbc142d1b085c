//! Stage `site`: the signed site config (`IMRS-CONFIG` partition, else the initramfs), verified
//! with the image's site-signing key ([`crate::site`]). Without it the node stays off the air.

use crate::context::Context;
use crate::log;
use crate::outcome::Outcome;
use crate::pid1::Role;

/// Finds, verifies and keeps the site config.
pub fn run(ctx: &mut Context) -> Outcome {
    match crate::site::load(&ctx.root, ctx.role == Role::Machine) {
        Ok((s, from)) => {
            log::info(format!(
                "site config from {from}: instance {}, site {}{}",
                s.instance,
                s.site_id,
                if s.lab { ", LAB SITE" } else { "" }
            ));
            ctx.notes.push(format!("from {from}"));
            ctx.site = Some(s);
            Outcome::Passed
        }
        Err(e) => Outcome::Failed(format!(
            "{}; staying off the air (no DNS, no BGP)",
            log::chain(&e)
        )),
    }
}
