//! Start-up order and the event loop of PID 1.
//!
//! Order of work: the handled signals are blocked first ([`signals`]); then, as the machine's
//! init, the kernel filesystems are mounted, the console is put on fds 0/1/2 and logging to
//! `/dev/kmsg` starts ([`pid1`], [`log`]); the panic hook (log, then reboot) is installed; the
//! banner is printed; then one tokio current-thread runtime runs the event loop: signals from a
//! signalfd, the reaper ([`reaper`]) on SIGCHLD and every second, the supervisor
//! ([`supervisor`]) and the boot pipeline ([`pipeline`], [`stages`]). A shutdown signal (or
//! `imrs.poweroff_after_boot=1` once the pipeline has gone as far as it can) runs the orderly
//! shutdown ([`shutdown`]) once. As the machine's PID 1 it never exits: it ends in `reboot(2)`.
//! Outside the machine role (tests, containers) it exits with a status instead.
//!
//! Invoked as `poweroff`, `reboot` or `halt` (the `/sbin` links in the image), or as
//! `imrs-init poweroff|reboot|halt`, it asks PID 1 to do so with the signal documented in
//! [`signals`] and exits. Kernel parameters and test hooks: [`cmdline`].

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::kill;
use nix::unistd::Pid;

use crate::cmdline::Settings;
use crate::context::{self, Context, Serving};
use crate::log::{Admit, RateLimit};
use crate::pid1::{Halt, Role};
use crate::reaper::Reaper;
use crate::retry::RetryPolicy;
use crate::signals::{Request, Signals};
use crate::slot_history::{History, SlotRun};
use crate::supervisor::{Spec, Supervisor};
use crate::{
    clock, cmdline, control, log, pid1, pipeline, shutdown, signals, stages, state, summary,
};

/// The reaper's safety net: reap at least this often even without SIGCHLD.
const REAP_INTERVAL: Duration = Duration::from_secs(1);

/// The `imrs-init` binary's `main`: a verb (`poweroff`, `reboot`, `halt`, `drain`, `undrain`,
/// `status`) is sent to the running PID 1; otherwise this process becomes the init and never
/// returns.
pub fn main() {
    let args: Vec<String> = std::env::args().collect();
    let argv0 = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // As PID 1 the arguments are whatever the kernel command line left over: never verbs.
    let verb = match argv0.as_str() {
        _ if std::process::id() == 1 => None,
        "poweroff" | "reboot" | "halt" => Some(argv0.clone()),
        _ => args.get(1).cloned(),
    };
    if let Some(verb) = verb {
        std::process::exit(request(&verb));
    }
    run()
}

/// `imrs-init poweroff|reboot|halt`: signal PID 1; `imrs-init drain|undrain|status [SOCKET]`:
/// ask it on the control socket ([`control`]).
fn request(verb: &str) -> i32 {
    let how = match verb {
        "poweroff" => Halt::Poweroff,
        "reboot" => Halt::Reboot,
        "halt" => Halt::Stop,
        "drain" | "undrain" | "status" => {
            let socket = std::env::args()
                .nth(2)
                .map_or_else(|| PathBuf::from(control::MACHINE_SOCKET), PathBuf::from);
            return control::client(verb, &socket);
        }
        other => {
            eprintln!(
                "usage: imrs-init [poweroff|reboot|halt] | imrs-init drain|undrain|status [SOCKET] (got {other:?})"
            );
            return 2;
        }
    };
    match kill(Pid::from_raw(1), signals::signal_for(how)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("imrs-init: cannot signal PID 1: {e}");
            1
        }
    }
}

/// The command-line text: `/proc/cmdline`, or the test hook outside the machine role.
fn cmdline_text(role: Role) -> String {
    if role != Role::Machine
        && let Ok(t) = std::env::var(cmdline::CMDLINE_ENV)
    {
        return t;
    }
    std::fs::read_to_string("/proc/cmdline").unwrap_or_default()
}

fn banner(image: &Result<imrs_config::image::ImageInfo, String>) -> String {
    match image {
        Ok(i) => format!(
            "imrs-init {}: {} {} ({}, profile {}, kernel {})",
            env!("CARGO_PKG_VERSION"),
            i.name,
            i.version,
            i.dns,
            i.profile.name,
            i.kernel_release
        ),
        Err(e) => format!(
            "imrs-init {}: not running from an imrs image ({e})",
            env!("CARGO_PKG_VERSION")
        ),
    }
}

fn run() -> ! {
    let start = Instant::now();
    // The kernel's share of the boot: CLOCK_BOOTTIME counts from the kernel's start.
    let kernel_s = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| Duration::from(t).as_secs_f64());
    // Signals first: nothing may be lost or interrupt the steps below.
    let blocked = signals::block();
    let role = Role::detect();
    let mut mount_errors = Vec::new();
    if role == Role::Machine {
        mount_errors = pid1::mount_kernel_filesystems()
            .iter()
            .map(|e| log::chain(e))
            .collect();
        // The kernel opened /dev/console from the initramfs already; reopen it on devtmpfs.
        let _ = pid1::setup_console();
        log::enable_kmsg();
    }
    std::panic::set_hook(Box::new(move |info| {
        log::error(format!("PANIC: {info}; rebooting"));
        pid1::finish(role, Halt::Reboot, pid1::PANIC_EXIT);
    }));
    let mut settings = cmdline::parse(&cmdline_text(role));
    let mut dropped_hooks = Vec::new();
    if role == Role::Machine {
        // The image itself (never the command line) says whether it was built for tests.
        let test_image = context::read_image(Path::new("/")).is_ok_and(|i| i.test_hooks);
        if !test_image {
            dropped_hooks = settings.drop_test_hooks();
        }
    }
    let image = context::read_image(&settings.root);
    // First line on the console.
    log::info(banner(&image));
    match settings.slot {
        Some(slot) => log::info(format!("started from disk slot {}", slot.letter())),
        None => log::info("started directly (no disk slot on the command line)"),
    }
    if role == Role::Machine
        && let Ok(k) = kernel_s
    {
        log::info(format!(
            "the kernel ran {k:.2} s before starting the init (CLOCK_BOOTTIME)"
        ));
    }
    if let Err(e) = blocked {
        log::error(log::chain(&e));
    }
    if role != Role::Machine {
        log::info(format!(
            "running as {} (pid {}): no kernel mounts, no module loading, no reboot(2)",
            role.name(),
            std::process::id()
        ));
    }
    for e in &mount_errors {
        log::error(e);
    }
    if let Err(e) = pid1::claim_children(role) {
        log::warn(log::chain(&e));
    }
    for p in &settings.problems {
        log::warn(p.to_string());
    }
    for hook in dropped_hooks {
        log::warn(format!(
            "imrs.{hook} is a test hook: ignored (this image was not built for tests)"
        ));
    }
    if let Some(t) = settings.fake_time {
        clock::set_fake_time(t);
        log::warn(format!(
            "imrs.fake_time={t}: the init's clock is shifted (test)"
        ));
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(2)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log::error(format!("cannot start the event loop: {e}; rebooting"));
            pid1::finish(role, Halt::Reboot, pid1::PANIC_EXIT)
        }
    };
    rt.block_on(event_loop(role, settings, image, mount_errors, start))
}

/// Reaps and logs orphans (rate limited: orphans are rare, a storm of them must not flood).
fn reap(reaper: &Reaper, limit: &mut RateLimit) {
    for (pid, how) in reaper.reap().orphans {
        if let Admit::Yes { dropped } = limit.admit(Instant::now()) {
            let more = if dropped > 0 {
                format!(" ({dropped} more not shown)")
            } else {
                String::new()
            };
            log::info(format!("reaped orphan pid {pid} ({how}){more}"));
        }
    }
}

async fn event_loop(
    role: Role,
    settings: Settings,
    image: Result<imrs_config::image::ImageInfo, String>,
    mount_errors: Vec<String>,
    start: Instant,
) -> ! {
    let reaper = Reaper::new();
    let mut signals = match Signals::open() {
        Ok(s) => Some(s),
        Err(e) => {
            log::error(format!(
                "{}: shutdown signals cannot be received; reaping on a timer only",
                log::chain(&e)
            ));
            None
        }
    };
    let mut ctx = Context {
        root: settings.root.clone(),
        role,
        image,
        mount_errors,
        site: None,
        module_failures: Vec::new(),
        hardware: None,
        reaper: reaper.clone(),
        notes: Vec::new(),
        state_dir: PathBuf::new(),
        supervisor: Supervisor::new(reaper.clone()),
        serving: Serving::default(),
        clock_source: String::new(),
        clock_resync: settings.clock_resync,
        phone: None,
        manifest_sha256: settings.manifest.clone(),
        boot_entry: crate::slots::BootEntry::Unknown("not read yet".into()),
        slot: settings.slot,
        slot_fallback: None,
        telemetry: None,
    };
    // Disk and filesystem drivers first: the state may live on the data partition.
    stages::platform::load_modules(&mut ctx).await;
    // Which slot systemd-boot started (efivarfs is a module: after the modules).
    ctx.boot_entry = crate::slots::read(&settings.root, role == Role::Machine);
    log::info(ctx.boot_entry.to_string());
    let store = state::open(
        &settings.root,
        settings.state_dir.as_deref(),
        role == Role::Machine,
        &mut |w| log::warn(w),
    );
    let mut st = store.load(&mut |w| log::warn(w));
    st.boots += 1;
    log::info(format!(
        "state in {} ({}), boot {}{}",
        store.dir.display(),
        if store.persistent {
            "persistent"
        } else {
            "volatile"
        },
        st.boots,
        if st.first_boot_passed {
            ", first boot passed earlier"
        } else {
            ""
        }
    ));
    if let Err(e) = store.save(&st) {
        log::error(log::chain(&e));
    }
    ctx.state_dir = store.dir.clone();
    let this_run = SlotRun::of(settings.slot, settings.manifest.as_deref());
    ctx.slot_fallback = History::load(&store, &mut |w| log::warn(w)).pending_fallback(&this_run);
    if let Some(f) = &ctx.slot_fallback {
        log::warn(format!("fallback: {f}"));
    }
    for (i, program) in settings.supervise.iter().enumerate() {
        let name = program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("daemon{i}"));
        ctx.supervisor.start(Spec::new(name, program));
    }
    control::start(role, &store.dir, ctx.serving.inputs.clone());
    let mut orphan_log = RateLimit::new(5.0, 20.0);
    // A slot on trial that does not become healthy must give the boot back to systemd-boot,
    // which tries it again while it has tries and then boots the other slot.
    let trial = ctx.boot_entry.on_trial();
    let how = {
        // The pipeline says how it ended on `ended`, then (healthy) goes on with heartbeats.
        let (ended_tx, mut ended) = tokio::sync::oneshot::channel::<(bool, String)>();
        // A fleet command asks for a reboot on `halt`.
        let (halt_tx, mut halt) = tokio::sync::mpsc::channel::<String>(1);
        let poweroff_after_boot = settings.poweroff_after_boot;
        let plan = pipeline::Plan {
            hold: settings.hold,
            stop_after: settings.stop_after,
            // A slot on trial gives the boot back instead; a one-pass test ends at a failure.
            retry: (trial.is_none() && !poweroff_after_boot).then(RetryPolicy::default),
            started: start,
        };
        let pipeline = async {
            let results = pipeline::run(&mut ctx, &store, &mut st, &plan).await;
            summary::print(&results, start.elapsed(), &ctx.serving.in_parallel);
            // Healthy: the bgp stage passed (zone verified, DNS answering, announcing).
            let healthy = results.iter().any(|r| {
                r.stage == imrs_config::stage::Stage::Bgp
                    && r.outcome == Some(crate::outcome::Outcome::Passed)
            });
            if healthy && ctx.role == Role::Machine {
                // What the box exposes, read back from the kernel (the lab checks it).
                crate::exposure::print(std::path::Path::new("/proc"));
            }
            let _ = ended_tx.send((healthy, crate::slot_history::unhealthy_reason(&results)));
            if healthy && !poweroff_after_boot {
                crate::heartbeat::run(&mut ctx, &store, &results, start, halt_tx).await;
            }
            std::future::pending::<()>().await
        };
        let mut pipeline = std::pin::pin!(pipeline);
        let mut pipeline_done = false;
        let mut tick = tokio::time::interval(REAP_INTERVAL);
        // The trial deadline can change once the site config is read: checked every second.
        let mut trial_tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                () = &mut pipeline => {}
                r = &mut ended, if !pipeline_done => {
                    pipeline_done = true;
                    let (healthy, why) =
                        r.unwrap_or((false, "the boot pipeline ended without a word".into()));
                    if settings.poweroff_after_boot {
                        log::info("imrs.poweroff_after_boot=1: powering off");
                        break (Halt::Poweroff, None);
                    }
                    if let (Some(entry), false) = (&trial, healthy) {
                        log::error(crate::slots::giving_up(
                            entry,
                            &format!("the boot pipeline stopped: {why}"),
                        ));
                        break (Halt::Reboot, Some(why));
                    }
                }
                _ = trial_tick.tick(), if trial.is_some() && !pipeline_done
                    && !crate::slots::was_healthy() => {
                    let deadline = crate::slots::deadline();
                    if let Some(entry) = &trial
                        && start.elapsed() >= deadline
                    {
                        let why = format!(
                            "not healthy {} s after boot (slots.health_deadline_s)",
                            deadline.as_secs()
                        );
                        log::error(crate::slots::giving_up(entry, &why));
                        break (Halt::Reboot, Some(why));
                    }
                }
                Some(why) = halt.recv() => {
                    log::info(format!("{why}: rebooting"));
                    break (Halt::Reboot, None);
                }
                sig = next_signal(&mut signals) => match signals::meaning(sig) {
                    Request::Reap => reap(&reaper, &mut orphan_log),
                    Request::Shutdown(how) => {
                        log::info(format!("{} received", sig.as_str()));
                        break (how, None);
                    }
                    Request::Ignore => {}
                },
                _ = tick.tick() => reap(&reaper, &mut orphan_log),
            }
        }
    };
    let how = match (how, &trial) {
        ((how, Some(why)), Some(entry)) => {
            // Kept for the report of the boot that comes next (this slot again, or the other).
            let mut history = History::load(&store, &mut |w| log::warn(w));
            history.trial_failed(this_run, entry, &why, st.boots);
            if let Err(e) = history.save(&store) {
                log::error(log::chain(&e));
            }
            how
        }
        ((how, _), _) => how,
    };
    // Shutdown runs once: later requests are only logged.
    if let Some(mut s) = signals.take() {
        tokio::spawn(async move {
            loop {
                let sig = s.next().await;
                if let Request::Shutdown(_) = signals::meaning(sig) {
                    log::info(format!("{} ignored: shutdown in progress", sig.as_str()));
                }
            }
        });
    }
    ctx.serving
        .health_stop
        .store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(p) = ctx.phone.take() {
        p.stop();
    }
    shutdown::run(
        role,
        how,
        settings.grace,
        &mut ctx.supervisor,
        &reaper,
        &store,
        &mut st,
    )
    .await
}

async fn next_signal(signals: &mut Option<Signals>) -> nix::sys::signal::Signal {
    match signals {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}
