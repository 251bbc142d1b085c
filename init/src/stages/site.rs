//! Stage `site`: the signed site config (`IMRS-CONFIG` partition, else the initramfs), verified
//! with the image's site-signing key ([`crate::site`]), then admitted on this appliance: it must
//! name this device (or `any`) and must not be older than the config applied last
//! ([`crate::site::binding`]). Without an admitted config the node stays off the air.

use crate::context::Context;
use crate::log;
use crate::outcome::Outcome;
use crate::pid1::Role;
use crate::site::binding;

/// Finds, verifies and keeps the site config.
pub async fn run(ctx: &mut Context) -> Outcome {
    match crate::site::load(&ctx.root, ctx.role == Role::Machine) {
        Ok((s, from)) => {
            // Admission needs the device key, made from the kernel's CRNG on the first boot:
            // never block on it for good.
            if ctx.role == Role::Machine && !crate::entropy::wait(crate::entropy::WAIT).await {
                return Outcome::Failed(format!(
                    "kernel entropy not ready after {} s: the device key cannot be made \
                     (a hardware random source is needed: RDRAND, a TPM, virtio-rng); \
                     staying off the air (no DNS, no BGP)",
                    crate::entropy::WAIT.as_secs()
                ));
            }
            let sys = ctx.root.join("sys");
            let this = match binding::admit_here(&s, &sys, &ctx.state_dir) {
                Ok(this) => this,
                Err(e) => {
                    return Outcome::Failed(format!(
                        "{from}: {}; staying off the air (no DNS, no BGP)",
                        log::chain(&e)
                    ));
                }
            };
            log::info(format!(
                "site config {} sequence {} admitted on this appliance ({this})",
                s.device, s.sequence
            ));
            log::info(format!(
                "site config from {from}: instance {}, site {}{}",
                s.instance,
                s.site_id,
                if s.lab { ", LAB SITE" } else { "" }
            ));
            ctx.notes.push(format!("from {from}"));
            crate::slots::set_deadline(s.slots.health_deadline_s);
            ctx.site = Some(s);
            Outcome::Passed
        }
        Err(e) => Outcome::Failed(format!(
            "{}; staying off the air (no DNS, no BGP)",
            log::chain(&e)
        )),
    }
}
