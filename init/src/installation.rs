//! The installation report: what the appliance tells its operator when its first boot passed
//! (the `phone-home` stage, event `install-passed`) or stopped (event `install-failed` naming
//! the stage and reason), built from what the boot knows ([`Context`]) and handed to the
//! phone-home service ([`crate::phonehome`]), which signs it with the device key, keeps it in
//! the persistent outbox and delivers it in the background: nothing here waits on the network.
//!
//! A first boot that fails before the `network` stage has the pipeline bring the interfaces up
//! first (only the management addresses and routes the site gives; no DNS, no BGP) so the
//! failure can be reported; when even that fails the report waits in the outbox for a boot
//! with a network.

use imrs_config::report::{
    BgpReport, DnsReport, Event, ImageRef, REPORT_VERSION, Report, ReportId, SiteRef, SlotReport,
    StageOutcome, ZoneReport,
};
use imrs_config::stage::Stage;

use crate::context::Context;
use crate::outcome::StageResult;
use crate::phonehome::{PhoneHome, PhoneHomeError, deliver};
use crate::{clock, log};

/// An installation report could not be queued.
#[derive(Debug, thiserror::Error)]
pub enum InstallReportError {
    /// The boot has no verified site config, so nowhere to report to.
    #[error("no site config: nowhere to report to")]
    NoSite,
    /// The image does not describe itself.
    #[error("no image info: {0}")]
    NoImage(String),
    /// No random report id.
    #[error("cannot make a report id")]
    Id(#[source] imrs_config::report::ReportError),
    /// The phone-home service could not start or take the report.
    #[error("phone home")]
    PhoneHome(#[source] PhoneHomeError),
}

/// Longest reason carried in a report (the schema's limit).
const MAX_REASON: usize = 4096;

/// Starts the phone-home service once (device key, outbox, delivery thread); logs the device
/// key. Idempotent: a second call only wakes the deliverer.
pub fn start(ctx: &mut Context) -> Result<(), InstallReportError> {
    if let Some(p) = &ctx.phone {
        p.wake();
        return Ok(());
    }
    let Some(site) = &ctx.site else {
        return Err(InstallReportError::NoSite);
    };
    let log_line: deliver::Log = Box::new(|l: &str| log::info(l));
    let p = PhoneHome::start(&ctx.state_dir, &site.phone_home, log_line)
        .map_err(InstallReportError::PhoneHome)?;
    ctx.phone = Some(p);
    Ok(())
}

fn truncate(s: &str) -> String {
    log::cut(s, MAX_REASON)
}

fn stage_outcomes(results: &[StageResult]) -> Vec<StageOutcome> {
    results
        .iter()
        .map(|r| {
            StageOutcome {
                stage: r.stage,
                status: r.status(),
                reason: r.outcome.as_ref().and_then(|o| o.reason()).map(truncate),
                // Milliseconds are plenty, and short decimals read back exactly.
                seconds: (r.seconds.max(0.0) * 1000.0).round() / 1000.0,
            }
        })
        .collect()
}

/// The report for `event`, from everything the boot has found so far and the BGP state the
/// caller read.
pub fn build(
    ctx: &Context,
    event: Event,
    results: &[StageResult],
    bgp: BgpReport,
) -> Result<Report, InstallReportError> {
    let site = ctx.site.as_ref().ok_or(InstallReportError::NoSite)?;
    let info = ctx
        .image
        .as_ref()
        .map_err(|e| InstallReportError::NoImage(e.clone()))?;
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
        id: ReportId::random().map_err(InstallReportError::Id)?,
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
        bgp,
        zone,
        dns,
        slot: Some(SlotReport {
            running: ctx.slot.map(|s| s.letter().to_string()),
            boot_entry: truncate(&ctx.boot_entry.to_string()),
            fallback: ctx.slot_fallback.as_deref().map(truncate),
        }),
    })
}

/// Builds, signs and queues a report (any event: the installation's, `slot-changed`); `Ok`
/// with the report id.
pub fn queue(
    ctx: &mut Context,
    event: Event,
    results: &[StageResult],
    bgp: BgpReport,
) -> Result<String, InstallReportError> {
    start(ctx)?;
    let report = build(ctx, event, results, bgp)?;
    if let Some(p) = &ctx.phone {
        p.report(&report).map_err(InstallReportError::PhoneHome)?;
    }
    Ok(report.id.to_string())
}

/// A first boot stopped at `stage`: report `install-failed` when there is a site to report to
/// (the pipeline has brought the management network up first when it stopped before it), with
/// the BGP state the caller read.
pub fn report_failure(
    ctx: &mut Context,
    stage: Stage,
    reason: &str,
    results: &[StageResult],
    bgp: BgpReport,
) {
    if ctx.site.is_none() {
        return;
    }
    let event = Event::InstallFailed {
        stage,
        reason: truncate(reason),
    };
    match queue(ctx, event, results, bgp) {
        Ok(id) => log::info(format!("install-failed report {id} (stage {stage}) queued")),
        Err(e) => log::error(format!(
            "cannot queue the install-failed report: {}",
            log::chain(&e)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_cut_on_a_character_boundary() {
        // Two-byte characters: the limit falls inside one.
        let long = "é".repeat(MAX_REASON);
        let cut = truncate(&long);
        assert!(
            cut.len() <= MAX_REASON && cut.ends_with("..."),
            "{}",
            cut.len()
        );
        assert!(cut.trim_end_matches("...").chars().all(|c| c == 'é'));
        assert_eq!(truncate("short"), "short");
    }
}
