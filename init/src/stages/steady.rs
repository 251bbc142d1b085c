//! Stage `steady`: the zone refresh loop runs from here on ([`crate::rootzone::refresh_loop`]),
//! loading newer verified zones into the running daemon without dropping queries, the DNS
//! daemon follows the health loop's decision to serve the zone or not (an expired zone is no
//! longer served), and the clock is set again every few hours ([`crate::clock::Keeper`]).

use std::time::Duration;

use imrs_zone::accept::AcceptedRecord;
use tokio::sync::watch;

use super::HELPER_TIMEOUT;
use crate::context::Context;
use crate::dns::DnsConfig;
use crate::health::Desired;
use crate::outcome::Outcome;
use crate::rootzone;
use crate::{command, log};

/// Steady: the zone refresh loop runs from here on, loading newer verified zones into the
/// running daemon without dropping queries.
pub async fn run(ctx: &mut Context) -> Outcome {
    let (Some(setup), Some(zone), Some(cfg)) = (
        ctx.serving.zone_setup.clone(),
        ctx.serving.zone.clone(),
        ctx.serving.dns.clone(),
    ) else {
        return Outcome::Failed("no zone or DNS service to keep".into());
    };
    let reaper = ctx.reaper.clone();
    let telemetry = ctx.telemetry.clone();
    let targets = ctx.service_targets(cfg.port);
    let reload: rootzone::OnNewZone = Box::new(move |r: &AcceptedRecord, seen| {
        let (prog, args) = cfg.reload_command();
        log::info(format!(
            "zone serial {}: reloading the DNS daemon",
            r.serial
        ));
        let reaper = reaper.clone();
        let (telemetry, targets, serial) = (telemetry.clone(), targets.clone(), r.serial);
        Box::pin(async move {
            command::run(&reaper, &prog, &args, HELPER_TIMEOUT).await?;
            if let Some(k) = telemetry {
                tokio::spawn(load_time(k, targets, serial, seen));
            }
            Ok(())
        })
    });
    if let (Some(desired), Some(cfg)) = (ctx.serving.desired.clone(), ctx.serving.dns.clone()) {
        tokio::spawn(follow_serve_zone(desired, cfg, ctx.reaper.clone()));
    }
    let inputs = ctx.serving.inputs.clone();
    tokio::spawn(rootzone::refresh_loop(setup, zone, inputs, reload));
    // The clock, set once by the clock stage, is set again from the same servers every few
    // hours (no second keeper when this stage runs again).
    if let Some(keeper) = ctx.serving.clock_keeper.take() {
        tokio::spawn(keeper.keep(ctx.reaper.clone(), ctx.clock_resync));
    }
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let msg = format!(
        "serving; PID 1 resident {rss}; zone refresh every {} s; drain with `imrs-init drain`",
        ctx.serving
            .zone_setup
            .as_ref()
            .map_or(0, |s| s.timers.refresh.as_secs())
    );
    log::info(&msg);
    ctx.notes.push(msg);
    Outcome::Passed
}

/// How long a reloaded serial is waited for before its load time is given up.
const LOAD_TIME_LIMIT: Duration = Duration::from_secs(600);

/// RSSAC002 load time: from `seen` (the round that found `serial` at a transfer server began)
/// to the daemon answering it on every service address over UDP and TCP, in whole seconds,
/// recorded in the day it was answered.
async fn load_time(
    keeper: crate::telemetry::keeper::Keeper,
    targets: Vec<std::net::SocketAddr>,
    serial: u32,
    seen: jiff::Timestamp,
) {
    use crate::health::driver::{DnsProber, Prober};
    let give_up = std::time::Instant::now() + LOAD_TIME_LIMIT;
    while std::time::Instant::now() < give_up {
        let t = targets.clone();
        let answered =
            tokio::task::spawn_blocking(move || DnsProber::new(&t).probe(Some(serial)).is_ok())
                .await
                .unwrap_or(false);
        if answered {
            let now = crate::clock::timestamp_now();
            let secs = u64::try_from(now.as_second() - seen.as_second()).unwrap_or(0);
            keeper
                .collector()
                .load_time(crate::telemetry::day_of(now.as_second()), serial, secs);
            log::info(format!(
                "zone serial {serial} answered {secs} s after it was first seen"
            ));
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    log::warn(format!(
        "zone serial {serial} not answered within {} s of its reload: no load time recorded",
        LOAD_TIME_LIMIT.as_secs()
    ));
}

/// Stops serving an expired zone and serves again once a fresh one is verified: the health
/// loop's `serve_zone` decides; the daemon's config is rewritten without (or with) the zone and
/// applied in place (`nsd-control reconfig` / `knotc reload`), keeping its sockets.
async fn follow_serve_zone(
    mut desired: watch::Receiver<Desired>,
    mut cfg: DnsConfig,
    reaper: crate::reaper::Reaper,
) {
    let mut serving = true;
    loop {
        let want = desired.borrow_and_update().serve_zone;
        if want != serving {
            cfg.serve_zone = want;
            let applied = match cfg.write() {
                Err(e) => Err(log::chain(&e)),
                Ok(()) => {
                    let (prog, args) = cfg.reconfig_command();
                    command::run(&reaper, &prog, &args, HELPER_TIMEOUT)
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string())
                }
            };
            match applied {
                Ok(()) => {
                    serving = want;
                    if want {
                        log::info("zone fresh again: serving it");
                    } else {
                        log::error("zone expired: no longer serving it (queries for . refused)");
                    }
                }
                Err(e) => {
                    log::error(format!("changing what the DNS daemon serves: {e}"));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        if desired.changed().await.is_err() {
            return;
        }
    }
}
