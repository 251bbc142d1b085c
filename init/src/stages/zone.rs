//! Stage `zone`: a root zone verified now (ZONEMD + DNSSEC against the image's trust anchors)
//! to serve, from the store or from the site's transfer servers ([`crate::rootzone`]).

use crate::context::Context;
use crate::log;
use crate::outcome::Outcome;
use crate::rootzone::{self, ZoneSetup};

/// Obtains the zone to serve.
pub async fn run(ctx: &mut Context) -> Outcome {
    let Some(site) = &ctx.site else {
        return Outcome::Failed("no site config".into());
    };
    let setup = ZoneSetup::new(&ctx.root, &ctx.state_dir, site);
    let servers: Vec<String> = setup.servers.iter().map(|s| s.to_string()).collect();
    log::info(format!(
        "zone: transfer servers {}, anchors {}",
        servers.join(", "),
        setup.anchors_path.display()
    ));
    let got = rootzone::obtain(&setup).await;
    let outcome = match got {
        Ok(o) => {
            let r = &o.record;
            // Only the first 16 digest characters: `chars`, never a byte slice (a string from
            // disk must not be able to panic the init).
            let digest: String = r.zonemd_digest.chars().take(16).collect();
            let msg = format!(
                "zone serial {} {} (ZONEMD {digest}... ok, {} signatures, anchors {:?}, verified {}, \
                 refreshed {} from {})",
                r.serial,
                if o.from_store {
                    "from the store, verified again now"
                } else {
                    "transferred and verified"
                },
                r.signatures_verified,
                r.anchors_used,
                r.verified_at,
                r.refreshed_at,
                r.source
            );
            log::info(&msg);
            ctx.notes.push(msg);
            ctx.serving.zone = Some(o.record);
            Outcome::Passed
        }
        Err(why) => Outcome::Failed(format!("no verified zone: {why}")),
    };
    ctx.serving.zone_setup = Some(setup);
    outcome
}
