//! Stage `network`: the site's interfaces, addresses and gateways, and the service addresses,
//! applied through netlink ([`crate::net`], idempotent); passes once IPv6 duplicate address
//! detection has finished, so nothing talks from a tentative address.
//!
//! As the machine's init it also sets the kernel's network settings for a host that is not a
//! router ([`net::sysctl`]) and loads the packet filter ([`net::filter`]); a filter that does
//! not load fails the stage.
//!
//! Outside a PID namespace (role `child`) the stage refuses to touch interfaces: they would be
//! the host's.

use std::path::Path;
use std::time::{Duration, Instant};

use imrs_config::report::InterfaceReport;

use super::HELPER_TIMEOUT;
use crate::context::Context;
use crate::outcome::Outcome;
use crate::pid1::Role;
use crate::{log, net};

/// How long IPv6 duplicate address detection may take on the management interfaces (a
/// duplicate address never leaves the tentative state: the stage fails and says so).
pub const DAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Renders the site's packet filter into `/run/imrs/filter/imrs.nft` and loads it with `nft`.
async fn load_filter(ctx: &Context, site: &imrs_config::site::Site) -> Result<(), String> {
    let plan = net::filter::FilterPlan::from_site(site);
    let nft = Path::new(net::filter::NFT);
    net::filter::load(
        &ctx.reaper,
        nft,
        &ctx.run_dir("filter"),
        &plan,
        HELPER_TIMEOUT,
    )
    .await?;
    log::info(format!(
        "network: packet filter loaded (table inet {}): DNS on {} addresses, BGP from {} \
         neighbours, everything else dropped",
        net::filter::TABLE,
        plan.dns.len(),
        plan.neighbors.len()
    ));
    Ok(())
}

/// Applies the site's network.
pub async fn run(ctx: &mut Context) -> Outcome {
    let Some(site) = ctx.site.clone() else {
        return Outcome::Failed("no site config".into());
    };
    if ctx.role == Role::Child {
        // Not PID 1 of anything: this is somebody's machine, whose network is not ours.
        return Outcome::Failed(
            "not the machine's or a namespace's PID 1: the network is left alone".into(),
        );
    }
    let plan = net::NetPlan::from_site(&site);
    let handle = match net::connect() {
        Ok(h) => h,
        Err(e) => return Outcome::Failed(log::chain(&e)),
    };
    let report = match net::apply(&handle, &plan).await {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(log::chain(&e)),
    };
    for c in &report.changes {
        log::info(format!("network: {c}"));
    }
    // A server, not a router: no forwarding, redirects or source routes; strict reverse-path
    // filtering on the management interfaces. The machine's own kernel only (a namespace
    // test's settings would be its host's where they are not per network namespace).
    if ctx.role == Role::Machine {
        let management: Vec<String> = report.links.iter().map(|(_, k)| k.clone()).collect();
        let settings = net::sysctl::settings(&management, &report.service_iface);
        if let Err(e) = net::sysctl::apply(Path::new("/proc/sys"), &settings) {
            return Outcome::Failed(log::chain(&e));
        }
        log::info(format!(
            "network: {} kernel settings applied (no forwarding, redirects or source routes; \
             rp_filter strict on {})",
            settings.len(),
            management.join(", ")
        ));
        // The packet filter, before any daemon listens; the box never serves unfiltered.
        if let Err(e) = load_filter(ctx, &site).await {
            return Outcome::Failed(format!("packet filter not loaded: {e}"));
        }
    }
    if report.service_fallback {
        let msg = format!(
            "no dummy interface driver: service addresses on {}",
            net::FALLBACK_IFACE
        );
        log::warn(&msg);
        ctx.notes.push(msg);
    }
    ctx.notes.push(format!(
        "{} changes; service addresses on {}",
        report.changes.len(),
        report.service_iface
    ));
    // Usable addresses before anything talks: wait out IPv6 duplicate address detection.
    let deadline = Instant::now() + DAD_TIMEOUT;
    for (_, kernel_name) in &report.links {
        loop {
            match net::tentative(&handle, kernel_name).await {
                Ok(t) if t.is_empty() => break,
                Ok(t) if Instant::now() >= deadline => {
                    let msg = format!(
                        "{kernel_name}: still tentative after {} s (duplicate address detection): {}",
                        DAD_TIMEOUT.as_secs(),
                        t.iter()
                            .map(|a| a.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                    return Outcome::Failed(msg);
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => return Outcome::Failed(log::chain(&e)),
            }
        }
    }
    let mut names: Vec<String> = report.links.iter().map(|(_, k)| k.clone()).collect();
    names.push(report.service_iface.clone());
    ctx.serving.interfaces.clear();
    for name in names {
        if let Ok(Some(l)) = net::link_state(&handle, &name).await {
            ctx.serving.interfaces.push(InterfaceReport {
                name: l.name,
                mac: (!l.mac.is_empty()).then_some(l.mac),
                up: l.up,
                addresses: l.addresses,
            });
        }
    }
    Outcome::Passed
}
