//! The installation report: what the appliance tells its operator when its first boot passed
//! (the `phone-home` stage, event `install-passed`) or stopped (event `install-failed` naming
//! the stage and reason), built from what the boot knows ([`Context`]) and handed to the
//! phone-home service ([`crate::phonehome`]), which signs it with the device key, keeps it in
//! the persistent outbox and delivers it in the background: nothing here waits on the network.
//!
//! A first boot that fails before the `network` stage still brings the interfaces up (only the
//! management addresses and routes the site gives; no DNS, no BGP) so the failure can be
//! reported; when even that fails the report waits in the outbox for a boot with a network.

use imrs_config::report::{
    DnsReport, Event, ImageRef, REPORT_VERSION, Report, ReportId, SiteRef, StageOutcome,
    StageStatus, ZoneReport,
};

use crate::phonehome::{PhoneHome, deliver};
use crate::pipeline::{Outcome, Stage, StageResult};
use crate::stages::Context;
use crate::{clock, log, serve};

/// Longest reason carried in a report (the schema's limit).
const MAX_REASON: usize = 4096;

/// Starts the phone-home service once (device key, outbox, delivery thread); logs the device
/// key. Idempotent: a second call only wakes the deliverer.
pub fn start(ctx: &mut Context) -> Result<(), String> {
    if let Some(p) = &ctx.phone {
        p.wake();
        return Ok(());
    }
    let Some(site) = &ctx.site else {
        return Err("no site config: nowhere to report to".into());
    };
    let log_line: deliver::Log = Box::new(|l: &str| log::info(l));
    let p =
        PhoneHome::start(&ctx.state_dir, &site.phone_home, log_line).map_err(|e| log::chain(&e))?;
    ctx.phone = Some(p);
    Ok(())
}

fn truncate(s: &str) -> String {
    if s.len() <= MAX_REASON {
        return s.to_string();
    }
    let mut end = MAX_REASON - 3;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

fn stage_outcomes(results: &[StageResult]) -> Vec<StageOutcome> {
    results
        .iter()
        .map(|r| {
            let (status, reason) = match &r.outcome {
                Some(Outcome::Passed) | Some(Outcome::DoneEarlier) => (StageStatus::Passed, None),
                Some(Outcome::Failed(why)) => (StageStatus::Failed, Some(truncate(why))),
                None => (StageStatus::Skipped, None),
            };
            StageOutcome {
                stage: r.stage.name().to_string(),
                status,
                reason,
                // Milliseconds are plenty, and short decimals read back exactly.
                seconds: (r.seconds.max(0.0) * 1000.0).round() / 1000.0,
            }
        })
        .collect()
}

/// The report for `event`, from everything the boot has found so far.
pub fn build(ctx: &Context, event: Event, results: &[StageResult]) -> Result<Report, String> {
    let site = ctx.site.as_ref().ok_or("no site config")?;
    let info = ctx
        .image
        .as_ref()
        .map_err(|e| format!("no image info: {e}"))?;
    let serial = std::fs::read_to_string(ctx.root.join("sys/class/dmi/id/product_serial"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string());
    let zone = ctx.serving.zone.as_ref().map(|z| ZoneReport {
        serial: z.serial,
        verification: format!(
            "ZONEMD scheme {} hash {} digest {}; {} RRSIGs verified; anchors {:?}; verified at {} from {}",
            z.zonemd_scheme,
            z.zonemd_hash_algorithm,
            z.zonemd_digest,
            z.signatures_verified,
            z.anchors_used,
            z.verified_at,
            z.source
        ),
    });
    let dns = DnsReport {
        ready: ctx.serving.dns_ready.is_some(),
        daemon: ctx
            .serving
            .dns
            .as_ref()
            .map(|c| format!("{:?}", c.implementation).to_lowercase()),
        detail: ctx.serving.dns_ready.clone(),
    };
    Ok(Report {
        version: REPORT_VERSION,
        id: ReportId::random().map_err(|e| log::chain(&e))?,
        event,
        created_unix: clock::unix_now(),
        clock_source: if ctx.clock_source.is_empty() {
            "not set (clock stage not reached)".into()
        } else {
            ctx.clock_source.clone()
        },
        lab: site.lab,
        device: imrs_config::report::Device {
            serial,
            profile: info.profile.name.clone(),
        },
        site: SiteRef {
            site_id: site.site_id.clone(),
            instance: site.instance.clone(),
        },
        image: ImageRef {
            name: info.name.clone(),
            version: info.version.clone(),
            manifest_sha256: ctx.manifest_sha256.clone().unwrap_or_default(),
        },
        stages: stage_outcomes(results),
        hardware: ctx
            .hardware
            .as_ref()
            .and_then(|h| serde_json::to_value(h).ok())
            .unwrap_or(serde_json::Value::Null),
        interfaces: ctx.serving.interfaces.clone(),
        bgp: serve::bgp_report(ctx),
        zone,
        dns,
    })
}

/// Builds, signs and queues a report; `Ok` with the report id.
fn queue(ctx: &mut Context, event: Event, results: &[StageResult]) -> Result<String, String> {
    start(ctx)?;
    let report = build(ctx, event, results)?;
    let Some(p) = &ctx.phone else {
        return Err("phone home not started".into());
    };
    p.report(&report).map_err(|e| log::chain(&e))?;
    Ok(report.id.to_string())
}

/// The phone-home stage: queues `install-passed` (delivery goes on in the background; the
/// report survives reboots in the outbox until the receiver acknowledges it).
pub fn phone_home_stage(ctx: &mut Context, results: &[StageResult]) -> Outcome {
    match queue(ctx, Event::InstallPassed {}, results) {
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
        Err(e) => Outcome::Failed(format!("cannot queue the installation report: {e}")),
    }
}

/// A first boot stopped at `stage`: report `install-failed` when there is a site to report to,
/// bringing the management network up first when the pipeline stopped before it.
pub async fn report_failure(
    ctx: &mut Context,
    stage: Stage,
    reason: &str,
    results: &[StageResult],
) {
    if ctx.site.is_none() {
        return;
    }
    if stage < Stage::Network {
        let net = serve::network_stage(ctx).await;
        ctx.notes.clear();
        if let Outcome::Failed(why) = net {
            log::warn(format!(
                "network for the failure report: {why}; the report waits in the outbox"
            ));
        }
    }
    let event = Event::InstallFailed {
        stage: stage.name().to_string(),
        reason: truncate(reason),
    };
    match queue(ctx, event, results) {
        Ok(id) => log::info(format!(
            "install-failed report {id} (stage {}) queued",
            stage.name()
        )),
        Err(e) => log::error(format!("cannot queue the install-failed report: {e}")),
    }
}
