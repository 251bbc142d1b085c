//! The serving stages: `network` (interfaces through netlink), `zone` ([`crate::rootzone`]),
//! `dns` (NSD or Knot under the supervisor, ready when it answers the verified serial),
//! `bgp` (BIRD under the supervisor with the health loop deciding what is announced) and
//! `steady` (the zone refresh loop and the health loop keep running; the init's control
//! socket takes the operator's drain switch).
//!
//! Safety: BIRD starts with every prefix withdrawn; only the health loop enables them, and
//! only the five IMRS prefixes exist in its config (the site validation and the generated
//! export filter see to that, [`crate::bgp`]). A failure in any stage before `bgp` means BIRD
//! never starts; a DNS daemon that stops answering withdraws the specifics within two probes.
//!
//! Daemons and helper programs are the image's `/usr/sbin` ones (not under `imrs.root`: a test
//! fixture tree has no daemons); their private run folders are `/run/imrs/<daemon>` as the
//! machine's init and `<state>/run/<daemon>` otherwise (so tests do not share `/run`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use imrs_config::recipe::DnsImpl;
use imrs_config::report::{BgpReport, BgpSession, InterfaceReport};
use imrs_zone::accept::AcceptedRecord;
use tokio::sync::watch;

use crate::bgp::{self, BirdDaemon, BirdOptions};
use crate::dns::{self, DnsConfig};
use crate::health::driver::{BirdAnnouncer, DnsProber, Driver, Prober, SharedInputs};
use crate::health::{Desired, Policy};
use crate::pid1::Role;
use crate::pipeline::Outcome;
use crate::rootzone::{self, ZoneSetup};
use crate::stages::Context;
use crate::supervisor::{DaemonState, Spec};
use crate::{command, log, net};

/// How long the DNS daemon may take to answer the verified serial.
pub const DNS_READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the BGP sessions and the first announcement of the specifics may take.
pub const BGP_UP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long IPv6 duplicate address detection may take on the management interfaces (a
/// duplicate address never leaves the tentative state: the stage fails and says so).
pub const DAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Helper programs (config checks, reloads) are killed after this long.
const HELPER_TIMEOUT: Duration = Duration::from_secs(60);

/// What the serving stages built, for the later stages and the phone-home report.
#[derive(Default)]
pub struct Serving {
    /// Interfaces and addresses after the network stage.
    pub interfaces: Vec<InterfaceReport>,
    /// Where zones come from and go.
    pub zone_setup: Option<ZoneSetup>,
    /// The zone being served.
    pub zone: Option<AcceptedRecord>,
    /// The DNS daemon's configuration.
    pub dns: Option<DnsConfig>,
    /// Readiness detail (`None`: not ready).
    pub dns_ready: Option<String>,
    /// BIRD.
    pub bird: Option<BirdDaemon>,
    /// Inputs of the health loop (zone serial and expiry, drain switch).
    pub inputs: SharedInputs,
    /// What the health loop wants announced and served.
    pub desired: Option<watch::Receiver<Desired>>,
    /// Stops the health loop at shutdown.
    pub health_stop: Arc<AtomicBool>,
}

fn run_dir(ctx: &Context, daemon: &str) -> PathBuf {
    match ctx.role {
        Role::Machine => PathBuf::from("/run/imrs").join(daemon),
        _ => ctx.state_dir.join("run").join(daemon),
    }
}

/// Network: the site's interfaces, addresses and gateways, and the service addresses.
pub async fn network_stage(ctx: &mut Context) -> Outcome {
    let Some(site) = &ctx.site else {
        return Outcome::Failed("no site config".into());
    };
    if ctx.role == Role::Child {
        // Not PID 1 of anything: this is somebody's machine, whose network is not ours.
        return Outcome::Failed(
            "not the machine's or a namespace's PID 1: the network is left alone".into(),
        );
    }
    let plan = net::NetPlan::from_site(site);
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

/// Zone: a verified root zone to serve.
pub async fn zone_stage(ctx: &mut Context) -> Outcome {
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
            let msg = format!(
                "zone serial {} {} (ZONEMD {} ok, {} signatures, anchors {:?}, verified {} from {})",
                r.serial,
                if o.from_store {
                    "from the store, verified in an earlier boot"
                } else {
                    "transferred and verified"
                },
                &r.zonemd_digest[..16.min(r.zonemd_digest.len())],
                r.signatures_verified,
                r.anchors_used,
                r.verified_at,
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

/// The readiness prober of the dns stage: the health loop's, with a longer timeout (a daemon
/// that has just started on a slow or emulated machine answers its first queries slowly).
fn readiness_prober(targets: &[SocketAddr]) -> DnsProber {
    let mut p = DnsProber::new(targets);
    p.timeout = Duration::from_secs(2);
    p
}

fn service_targets(ctx: &Context, port: u16) -> Vec<SocketAddr> {
    ctx.site
        .as_ref()
        .map(|s| {
            vec![
                SocketAddr::new(IpAddr::V4(s.service.ipv4), port),
                SocketAddr::new(IpAddr::V6(s.service.ipv6), port),
            ]
        })
        .unwrap_or_default()
}

/// DNS: the recipe's daemon serving the verified zone, ready when it answers the serial with
/// AA and NSID over UDP and TCP on both service addresses.
pub async fn dns_stage(ctx: &mut Context) -> Outcome {
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
    let cfg = DnsConfig::for_site(
        info.dns,
        site,
        &hw,
        setup.store.zone_path.clone(),
        run_dir(ctx, name),
    );
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
    let targets = service_targets(ctx, cfg.port);
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

/// BGP: BIRD with the generated config (checked with `bird -p`) and the health loop; passes
/// once every session is established and the specifics are announced.
pub async fn bgp_stage(ctx: &mut Context) -> Outcome {
    let Some(site) = ctx.site.clone() else {
        return Outcome::Failed("no site config".into());
    };
    let bird = BirdDaemon::new(run_dir(ctx, "bird"));
    let text = match bgp::render(&site, &BirdOptions::default()) {
        Ok(t) => t,
        Err(e) => return Outcome::Failed(log::chain(&e)),
    };
    let (b, reaper, handle) = (
        bird.clone(),
        ctx.reaper.clone(),
        tokio::runtime::Handle::current(),
    );
    let written = tokio::task::spawn_blocking(move || {
        b.write_config_with(&text, |tmp| {
            let args = vec!["-p".into(), "-c".into(), tmp.to_string_lossy().into_owned()];
            handle
                .block_on(command::run(&reaper, &b.bird, &args, HELPER_TIMEOUT))
                .map(drop)
                .map_err(|message| bgp::BgpError::CheckFailed {
                    path: tmp.to_path_buf(),
                    message,
                })
        })
    })
    .await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Outcome::Failed(log::chain(&e)),
        Err(e) => return Outcome::Failed(format!("writing bird.conf crashed: {e}")),
    }
    let (program, args) = bird.command();
    let mut spec = Spec::new("bird", program);
    spec.args = args;
    let socket = bird.socket();
    spec.ready = Some(Arc::new(move || {
        let b = bgp::Birdc::new(socket.clone());
        Box::pin(async move {
            tokio::task::spawn_blocking(move || b.command("show status").is_ok())
                .await
                .unwrap_or(false)
        })
    }));
    let mut state = ctx.supervisor.start(spec);
    ctx.serving.bird = Some(bird.clone());
    // The health loop talks to BIRD: start it once BIRD's control socket answers.
    let ready = tokio::time::timeout(
        Duration::from_secs(30),
        state.wait_for(|s| matches!(s, DaemonState::Ready { .. })),
    )
    .await;
    if !matches!(ready, Ok(Ok(_))) {
        return Outcome::Failed(format!(
            "BIRD's control socket {} did not answer within 30 s",
            bird.socket().display()
        ));
    }
    let desired = start_health(ctx, &bird);
    ctx.serving.desired = Some(desired.clone());

    let deadline = Instant::now() + BGP_UP_TIMEOUT;
    let birdc = bird.birdc();
    loop {
        let b = birdc.clone();
        let sessions = tokio::task::spawn_blocking(move || b.protocols()).await;
        let (up, down): (Vec<String>, Vec<String>) = match sessions {
            Ok(Ok(p)) => {
                let mut up = Vec::new();
                let mut down = Vec::new();
                for n in &site.bgp.neighbors {
                    let name = bgp::session_name(n);
                    match p.iter().find(|x| x.name == name) {
                        Some(x) if x.is_up() => up.push(name),
                        Some(x) => down.push(format!("{name} {}", x.info)),
                        None => down.push(format!("{name} missing")),
                    }
                }
                (up, down)
            }
            Ok(Err(e)) => (Vec::new(), vec![log::chain(&e)]),
            Err(e) => (Vec::new(), vec![format!("birdc crashed: {e}")]),
        };
        let d = *desired.borrow();
        if down.is_empty() && d.specifics {
            let msg = format!(
                "BGP sessions established ({}), announcing the covering and specific prefixes",
                up.join(", ")
            );
            log::info(&msg);
            ctx.notes.push(msg);
            return Outcome::Passed;
        }
        if Instant::now() >= deadline {
            return Outcome::Failed(format!(
                "after {} s: sessions not established: [{}]; specifics {}",
                BGP_UP_TIMEOUT.as_secs(),
                down.join(", "),
                if d.specifics {
                    "announced"
                } else {
                    "withdrawn (DNS not healthy)"
                }
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Starts the health loop on its own thread: probes the DNS service every second and applies
/// the announcements through BIRD. Returns what it currently wants.
fn start_health(ctx: &mut Context, bird: &BirdDaemon) -> watch::Receiver<Desired> {
    let targets = ctx
        .serving
        .dns
        .as_ref()
        .map(|c| service_targets(ctx, c.port))
        .unwrap_or_default();
    let (tx, rx) = watch::channel(Desired {
        covering: false,
        specifics: false,
        serve_zone: true,
    });
    let mut driver = Driver::new(
        Policy::default(),
        DnsProber::new(&targets),
        BirdAnnouncer {
            birdc: bird.birdc(),
        },
        ctx.serving.inputs.clone(),
        |r| log::info(r.to_string()),
        {
            let mut limit = log::RateLimit::new(0.2, 3.0);
            move |e| {
                if let log::Admit::Yes { .. } = limit.admit(Instant::now()) {
                    log::warn(format!("health: announcing through BIRD failed: {e}"));
                }
            }
        },
    );
    let stop = ctx.serving.health_stop.clone();
    let spawned = std::thread::Builder::new()
        .name("health".into())
        .spawn(move || {
            driver.run_observed(&stop, crate::clock::wall_now, |d| {
                tx.send_if_modified(|cur| {
                    let changed = *cur != d;
                    *cur = d;
                    changed
                });
            });
        });
    if let Err(e) = spawned {
        log::error(format!("cannot start the health loop: {e}"));
    }
    rx
}

/// Steady: the zone refresh loop runs from here on, loading newer verified zones into the
/// running daemon without dropping queries.
pub async fn steady_stage(ctx: &mut Context) -> Outcome {
    let (Some(setup), Some(zone), Some(cfg)) = (
        ctx.serving.zone_setup.clone(),
        ctx.serving.zone.clone(),
        ctx.serving.dns.clone(),
    ) else {
        return Outcome::Failed("no zone or DNS service to keep".into());
    };
    let reaper = ctx.reaper.clone();
    let reload: rootzone::OnNewZone = Box::new(move |r: &AcceptedRecord| {
        let (prog, args) = cfg.reload_command();
        log::info(format!(
            "zone serial {}: reloading the DNS daemon",
            r.serial
        ));
        let reaper = reaper.clone();
        Box::pin(async move {
            command::run(&reaper, &prog, &args, HELPER_TIMEOUT)
                .await
                .map(drop)
        })
    });
    if let (Some(desired), Some(cfg)) = (ctx.serving.desired.clone(), ctx.serving.dns.clone()) {
        tokio::spawn(follow_serve_zone(desired, cfg, ctx.reaper.clone()));
    }
    let inputs = ctx.serving.inputs.clone();
    tokio::spawn(rootzone::refresh_loop(setup, zone, inputs, reload));
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(|l| l["VmRSS:".len()..].trim().to_string())
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

/// The BGP part of the report: every session's state and what is announced.
pub fn bgp_report(ctx: &Context) -> BgpReport {
    let (Some(site), Some(bird)) = (&ctx.site, &ctx.serving.bird) else {
        return BgpReport::default();
    };
    let protocols = bird.birdc().protocols().unwrap_or_default();
    let sessions = site
        .bgp
        .neighbors
        .iter()
        .map(|n| {
            let name = bgp::session_name(n);
            let state = protocols
                .iter()
                .find(|p| p.name == name)
                .map_or("unknown".to_string(), |p| {
                    format!("{} {}", p.state, p.info).trim().to_string()
                });
            BgpSession {
                name,
                address: n.address,
                asn: n.asn,
                state,
            }
        })
        .collect();
    let d = ctx
        .serving
        .desired
        .as_ref()
        .map(|d| *d.borrow())
        .unwrap_or(Desired {
            covering: false,
            specifics: false,
            serve_zone: false,
        });
    let announced = imrs_config::imrs::IMRS_PREFIXES
        .iter()
        .filter(|p| match p.kind {
            imrs_config::imrs::PrefixKind::Covering => d.covering,
            imrs_config::imrs::PrefixKind::Specific => d.specifics,
        })
        .map(|p| p.prefix)
        .collect();
    BgpReport {
        sessions,
        announced,
    }
}

/// Sets the operator's drain switch; returns the previous value.
pub fn set_drained(inputs: &SharedInputs, drained: bool) -> bool {
    let mut g = inputs.lock().unwrap_or_else(|p| p.into_inner());
    std::mem::replace(&mut g.drained, drained)
}

/// Shared inputs for a fresh boot.
#[cfg(test)]
pub fn new_inputs() -> SharedInputs {
    Arc::new(std::sync::Mutex::new(Default::default()))
}
