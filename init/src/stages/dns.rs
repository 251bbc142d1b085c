//! Stage `dns`: the image's DNS daemon (NSD or Knot) under the supervisor with the generated
//! config (checked with `nsd-checkconf` / `knotc conf-check` first), ready when it answers
//! `. SOA` with AA, the verified serial and NSID over UDP and TCP on both service addresses.
//! When the site asks for telemetry, the RSSAC002 collector is started first and the daemon
//! writes dnstap to it.
//!
//! As the machine's init the daemon runs under its own account (`nsd`, `knot`) with
//! `no_new_privs`, in a mount namespace where the zone store appears read-only under its run
//! directory (and the collector's socket directory beside it); NSD chroots into that run
//! directory ([`crate::privilege`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use imrs_config::accounts;
use imrs_config::recipe::DnsImpl;
use imrs_zone::store::{CURRENT, ZONE_FILE};

use super::HELPER_TIMEOUT;
use crate::context::Context;
use crate::dns::{self, DnsConfig};
use crate::health::driver::{DnsProber, Prober};
use crate::outcome::Outcome;
use crate::privilege::{self, Bind, Sandbox};
use crate::supervisor::Spec;
use crate::telemetry::keeper::Keeper;
use crate::{command, log};

/// How long the DNS daemon may take to answer the verified serial.
pub const DNS_READY_TIMEOUT: Duration = Duration::from_secs(120);

/// The readiness prober of the dns stage: the health loop's, with a longer timeout (a daemon
/// that has just started on a slow or emulated machine answers its first queries slowly).
fn readiness_prober(targets: &[SocketAddr]) -> DnsProber {
    let mut p = DnsProber::new(targets);
    p.timeout = Duration::from_secs(2);
    p
}
/// The supervisor's name for the daemon.
fn daemon_name(dns: DnsImpl) -> &'static str {
    match dns {
        DnsImpl::Nsd => "nsd",
        DnsImpl::Knot => "knot",
    }
}

/// Before the stage runs again: the daemon that did not become ready is stopped (the
/// collector, when there is one, stays and keeps counting).
pub async fn reset(ctx: &mut Context) {
    if let Ok(info) = &ctx.image {
        let name = daemon_name(info.dns);
        ctx.supervisor.stop(name, super::RESET_GRACE).await;
    }
    ctx.serving.dns = None;
    ctx.serving.dns_ready = None;
}

/// DNS: the recipe's daemon serving the verified zone, ready when it answers the serial with
/// AA and NSID over UDP and TCP on both service addresses.
pub async fn run(ctx: &mut Context) -> Outcome {
    let (Ok(info), Some(site), Some(zone), Some(setup)) = (
        &ctx.image,
        &ctx.site,
        &ctx.serving.zone,
        &ctx.serving.zone_setup,
    ) else {
        return Outcome::Failed("no image info, site config or verified zone".into());
    };
    let hw = dns::Hardware::detect(&ctx.root.join("proc"));
    let name = daemon_name(info.dns);
    let run_dir = ctx.run_dir(name);
    let mut cfg = DnsConfig::for_site(info.dns, site, &hw, setup.store.zone_path(), &run_dir);
    let account = privilege::enabled(ctx.role).then_some(match info.dns {
        DnsImpl::Nsd => accounts::NSD,
        DnsImpl::Knot => accounts::KNOT,
    });
    // The RSSAC002 collector listens before the daemon starts, so its first queries count.
    let telemetry_dir = ctx.run_dir("telemetry");
    if site.telemetry.is_some() && ctx.telemetry.is_none() {
        let now = crate::clock::timestamp_now().as_second();
        let writer = account.map(|a| a.gid());
        match Keeper::start(site, &telemetry_dir, &ctx.state_dir, now, writer) {
            Ok((keeper, warning)) => {
                if let Some(w) = warning {
                    log::warn(w);
                }
                log::info(format!(
                    "telemetry: RSSAC002 collector listening on {}",
                    keeper.socket().display()
                ));
                ctx.telemetry = Some(keeper);
            }
            // Serving matters more than counting: the daemon starts without dnstap.
            Err(e) => log::error(format!(
                "telemetry: {}; the DNS service runs uncounted",
                log::chain(&e)
            )),
        }
    }
    cfg.dnstap = ctx.telemetry.as_ref().map(|k| k.socket().to_path_buf());
    let mut sandbox = Sandbox::default();
    if let Some(account) = account {
        // The daemon's view (its own mount namespace): the zone store read-only and the
        // collector's socket directory under its run directory; NSD chroots there.
        cfg.account = Some(account);
        cfg.chroot = info.dns == DnsImpl::Nsd;
        let zone_view = run_dir.join("zone");
        cfg.zone_file = zone_view.join(CURRENT).join(ZONE_FILE);
        sandbox.binds.push(Bind {
            source: setup.store.dir.clone(),
            target: zone_view,
            read_only: true,
        });
        if let Some(k) = &ctx.telemetry
            && let Some(file) = k.socket().file_name()
        {
            let view = run_dir.join("telemetry");
            cfg.dnstap = Some(view.join(file));
            sandbox.binds.push(Bind {
                source: telemetry_dir.clone(),
                target: view,
                read_only: false,
            });
        }
    }
    if let Err(e) = cfg.write() {
        return Outcome::Failed(log::chain(&e));
    }
    for b in &sandbox.binds {
        if let Err(e) = privilege::make_dir(&b.target, None, 0o755) {
            return Outcome::Failed(format!("mount point {}: {e}", b.target.display()));
        }
    }
    let (prog, args) = cfg.check_command();
    if let Err(e) = command::run(&ctx.reaper, &prog, &args, HELPER_TIMEOUT).await {
        return Outcome::Failed(format!("generated config rejected: {e}"));
    }
    let (program, args) = cfg.command();
    let mut spec = Spec::new(name, program);
    spec.args = args;
    spec.sandbox = sandbox;
    let targets = ctx.service_targets(cfg.port);
    let probe_targets = targets.clone();
    let serial = zone.serial;
    spec.ready = Some(Arc::new(move || {
        let t = probe_targets.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || readiness_prober(&t).probe(Some(serial)).is_ok())
                .await
                .unwrap_or(false)
        })
    }));
    spec.ready_timeout = DNS_READY_TIMEOUT;
    ctx.supervisor.start(spec);
    log::info(format!(
        "dns: {name} started ({} workers), waiting for serial {serial} on {}",
        cfg.workers,
        targets
            .iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    ctx.serving.dns = Some(cfg);
    let deadline = Instant::now() + DNS_READY_TIMEOUT;
    let mut last: String;
    loop {
        let t = targets.clone();
        let r = tokio::task::spawn_blocking(move || readiness_prober(&t).probe(Some(serial))).await;
        match r {
            Ok(Ok(())) => {
                let msg = format!(
                    "{name} answers . SOA serial {serial} with AA and NSID over UDP and TCP, IPv4 and IPv6"
                );
                log::info(&msg);
                ctx.notes.push(msg.clone());
                ctx.serving.dns_ready = Some(msg);
                return Outcome::Passed;
            }
            Ok(Err(e)) => last = e,
            Err(e) => last = format!("probe crashed: {e}"),
        }
        if Instant::now() >= deadline {
            return Outcome::Failed(format!(
                "{name} not ready after {} s: {last}",
                DNS_READY_TIMEOUT.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
