//! Stage `network`: the site's interfaces, addresses and gateways, and the service addresses,
//! applied through netlink ([`crate::net`], idempotent); passes once every IPv6 address is
//! usable, so nothing talks from a tentative address. The service addresses skip duplicate
//! address detection (anycast: other instances have them too); the management addresses and
//! the link-local ones use optimistic detection (RFC 4429: usable at once,
//! [`net::sysctl::optimistic_dad`]), whose end is watched in the background while the next
//! stages run: a duplicate is logged as an error naming the address and fails the bgp stage
//! (the address stays unusable in the kernel, so until a reboot). Where the kernel does not
//! take the optimistic settings the stage waits for detection to end, as before.
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
    // Before any link comes up: its link-local address is made optimistic then.
    if let Err(e) = net::sysctl::apply(Path::new("/proc/sys"), &net::sysctl::optimistic_dad()) {
        log::warn(format!(
            "network: {}; waiting for duplicate address detection instead",
            log::chain(&e)
        ));
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
    let management: Vec<String> = report.links.iter().map(|(_, k)| k.clone()).collect();
    let mut names = management.clone();
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
    // Started last: the kernel refuses a second address dump on one netlink socket while
    // another runs (EBUSY), and the watcher shares the stage's socket.
    ctx.serving.dad_failure = None;
    ctx.serving.dad = Some(tokio::spawn(watch_dad(handle.clone(), management)));
    Outcome::Passed
}

/// Watches optimistic duplicate address detection to its end on `links` (up to
/// [`DAD_TIMEOUT`]) while the zone and DNS stages run: a duplicate is logged as an error naming
/// the address and returned, and the bgp stage fails on it ([`wait_for_dad`]): a box whose
/// management address is someone else's does not announce.
async fn watch_dad(handle: rtnetlink::Handle, links: Vec<String>) -> Result<(), String> {
    let deadline = Instant::now() + DAD_TIMEOUT;
    for link in links {
        loop {
            match net::dad_state(&handle, &link).await {
                Ok(st) if !st.failed.is_empty() => {
                    let why = format!(
                        "{link}: duplicate address detection failed for {}: another node on \
                         the link has it",
                        st.failed
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                    log::error(format!("network: {why}"));
                    return Err(why);
                }
                Ok(st) if st.settled() => break,
                Ok(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Ok(st) => {
                    log::warn(format!(
                        "network: {link}: duplicate address detection still running after {} s \
                         ({} optimistic)",
                        DAD_TIMEOUT.as_secs(),
                        st.optimistic.len()
                    ));
                    break;
                }
                // A dump refused or cut short: asked again until the deadline, so one bad
                // answer cannot end the watch before a duplicate shows.
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => {
                    log::warn(format!(
                        "network: {link}: duplicate address detection not followed to its end: {}",
                        log::chain(&e)
                    ));
                    break;
                }
            }
        }
    }
    Ok(())
}

/// The verdict of the background detection (waited for once, then kept): `Err` names a
/// duplicate management address.
pub async fn wait_for_dad(ctx: &mut Context) -> Result<(), String> {
    if let Some(watch) = ctx.serving.dad.take() {
        match watch.await {
            Ok(Err(why)) => ctx.serving.dad_failure = Some(why),
            Ok(Ok(())) => {}
            Err(e) => log::warn(format!("network: the address watcher crashed: {e}")),
        }
    }
    match &ctx.serving.dad_failure {
        Some(why) => Err(why.clone()),
        None => Ok(()),
    }
}
