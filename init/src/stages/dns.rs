//! Stage `dns`: the image's DNS daemon (NSD or Knot) under the supervisor with the generated
//! config (checked with `nsd-checkconf` / `knotc conf-check` first), ready when it answers
//! `. SOA` with AA, the verified serial and NSID over UDP and TCP on both service addresses.
//! When the site asks for telemetry, the RSSAC002 collector is started first and the daemon
//! writes dnstap to it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use imrs_config::recipe::DnsImpl;

use super::HELPER_TIMEOUT;
use crate::context::Context;
use crate::dns::{self, DnsConfig};
use crate::health::driver::{DnsProber, Prober};
use crate::outcome::Outcome;
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
    let name = match info.dns {
        DnsImpl::Nsd => "nsd",
        DnsImpl::Knot => "knot",
    };
    let mut cfg = DnsConfig::for_site(
        info.dns,
        site,
        &hw,
        setup.store.zone_path(),
        ctx.run_dir(name),
    );
    // The RSSAC002 collector listens before the daemon starts, so its first queries count.
    if site.telemetry.is_some() && ctx.telemetry.is_none() {
        let now = crate::clock::timestamp_now().as_second();
        match Keeper::start(site, &ctx.run_dir("telemetry"), &ctx.state_dir, now) {
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
    if let Err(e) = cfg.write() {
        return Outcome::Failed(log::chain(&e));
    }
    let (prog, args) = cfg.check_command();
    if let Err(e) = command::run(&ctx.reaper, &prog, &args, HELPER_TIMEOUT).await {
        return Outcome::Failed(format!("generated config rejected: {e}"));
    }
    let (program, args) = cfg.command();
    let mut spec = Spec::new(name, program);
    spec.args = args;
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
