//! Stage `bgp`: BIRD under the supervisor with the generated config (checked with `bird -p`),
//! every prefix withdrawn at start, and the health loop on its own thread deciding what is
//! announced; passes once every session is established and the specifics are announced.
//! BIRD itself is started early, right after the network stage ([`start_early`]), so its
//! sessions come up while the clock, zone and dns stages run; this stage starts it when that
//! did not happen.
//!
//! Safety: only the five IMRS prefixes exist in BIRD's config (the site validation and the
//! generated export filter see to that, [`crate::bgp`]); they stay withdrawn until the health
//! loop, started only here, enables them, so a failure in any stage before this one means
//! nothing is announced (BIRD may hold established, empty sessions); a DNS daemon that stops
//! answering withdraws the specifics within two probes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use imrs_config::report::{BgpReport, BgpSession};
use tokio::sync::watch;

use super::HELPER_TIMEOUT;
use crate::bgp::{self, BirdDaemon, BirdOptions};
use crate::context::Context;
use crate::health::driver::{BirdAnnouncer, DnsProber, Driver};
use crate::health::{Desired, Policy};
use crate::outcome::Outcome;
use crate::supervisor::{DaemonState, Spec};
use crate::{command, log};

/// How long the BGP sessions and the first announcement of the specifics may take.
pub const BGP_UP_TIMEOUT: Duration = Duration::from_secs(120);

/// Starts BIRD with the generated config (checked with `bird -p`) under the supervisor, every
/// prefix withdrawn; its state is kept in the context.
async fn start_bird(ctx: &mut Context) -> Result<(), String> {
    let Some(site) = ctx.site.clone() else {
        return Err("no site config".into());
    };
    let mut bird = BirdDaemon::new(ctx.run_dir("bird"));
    if crate::privilege::enabled(ctx.role) {
        bird.account = Some(imrs_config::accounts::BIRD);
    }
    let text = match bgp::render(&site, &BirdOptions::default()) {
        Ok(t) => t,
        Err(e) => return Err(log::chain(&e)),
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
                    message: message.to_string(),
                })
        })
    })
    .await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(log::chain(&e)),
        Err(e) => return Err(format!("writing bird.conf crashed: {e}")),
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
    ctx.serving.bird_state = Some(ctx.supervisor.start(spec));
    ctx.serving.bird = Some(bird);
    Ok(())
}

/// Starts BIRD as soon as the network is up (called by the pipeline after the network stage
/// when the boot goes on to `bgp`): its sessions come up, announcing nothing (every prefix is
/// withdrawn until the health loop, started by the bgp stage, enables them), while the clock,
/// zone and dns stages run. A failure here is only logged: the bgp stage starts BIRD itself
/// and fails with the reason.
pub async fn start_early(ctx: &mut Context) {
    if ctx.serving.bird.is_some() || ctx.site.is_none() {
        return;
    }
    let t = Instant::now();
    match start_bird(ctx).await {
        Ok(()) => {
            let msg = format!(
                "BIRD started after the network stage ({:.3} s): sessions come up while the \
                 next stages run; nothing is announced before the bgp stage's health loop",
                t.elapsed().as_secs_f64()
            );
            log::info(format!("bgp: {msg}"));
            ctx.serving.in_parallel.push(msg);
        }
        Err(why) => log::warn(format!(
            "bgp: BIRD not started early ({why}); the bgp stage tries"
        )),
    }
}

/// BGP: BIRD (started early, or now) and the health loop; passes once every session is
/// established and the specifics are announced.
pub async fn run(ctx: &mut Context) -> Outcome {
    let Some(site) = ctx.site.clone() else {
        return Outcome::Failed("no site config".into());
    };
    if let Err(why) = super::network::wait_for_dad(ctx).await {
        return Outcome::Failed(format!("management address not usable: {why}"));
    }
    if ctx.serving.bird_state.is_none()
        && let Err(why) = start_bird(ctx).await
    {
        return Outcome::Failed(why);
    }
    let (Some(bird), Some(mut state)) = (ctx.serving.bird.clone(), ctx.serving.bird_state.clone())
    else {
        return Outcome::Failed("BIRD did not start".into());
    };
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
    let mut wanted = desired.clone();
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
        let d = *wanted.borrow_and_update();
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
        // The sessions are usually up already (BIRD started early): the stage ends as soon as
        // the health loop's first good probe enables the specifics (or 200 ms later).
        let poll = Duration::from_millis(200);
        if let Ok(Err(_)) = tokio::time::timeout(poll, wanted.changed()).await {
            // The health loop is gone (its thread could not start): poll at the same pace.
            tokio::time::sleep(poll).await;
        }
    }
}

/// Starts the health loop on its own thread: probes the DNS service every second and applies
/// the announcements through BIRD. Returns what it currently wants.
fn start_health(ctx: &mut Context, bird: &BirdDaemon) -> watch::Receiver<Desired> {
    let targets = ctx
        .serving
        .dns
        .as_ref()
        .map(|c| ctx.service_targets(c.port))
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
    match spawned {
        Ok(handle) => ctx.serving.health_thread = Some(handle),
        Err(e) => log::error(format!("cannot start the health loop: {e}")),
    }
    rx
}

/// Before the stage runs again: the health loop ended (its thread joined, so it can never
/// talk to the next BIRD) and BIRD stopped; everything it announced is gone with it.
pub async fn reset(ctx: &mut Context) {
    ctx.serving.health_stop.store(true, Ordering::Relaxed);
    if let Some(thread) = ctx.serving.health_thread.take()
        && let Ok(Err(_)) = tokio::task::spawn_blocking(move || thread.join()).await
    {
        log::error("the health loop's thread had panicked");
    }
    ctx.serving.health_stop = Arc::new(AtomicBool::new(false));
    ctx.serving.desired = None;
    ctx.supervisor.stop("bird", super::RESET_GRACE).await;
    ctx.serving.bird = None;
    ctx.serving.bird_state = None;
}

/// The BGP part of the report: every session's state and what is announced.
pub fn report(ctx: &Context) -> BgpReport {
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
