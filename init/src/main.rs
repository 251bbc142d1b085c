//! imrs-init: PID 1 of the IMRS appliance.
//!
//! Order of work: signals first (blocked, read from a signalfd), console, mounts, `/dev/kmsg`
//! logging, panic hook, then the banner and the boot pipeline ([`boot`]), then the event loop:
//! reap children, shut down on request. It never exits as PID 1: a shutdown ends in `reboot(2)`.
//! When it is not PID 1 (tests, containers) it becomes a child subreaper and exits instead.
//!
//! Invoked as `poweroff`, `reboot` or `halt` (the `/sbin` links in the image), or as
//! `imrs-init poweroff|reboot|halt`, it asks PID 1 to do so with the signal documented in
//! [`signals`] and exits.

mod boot;
mod cmdline;
mod hardware;
mod log;
mod modules;
mod pid1;
mod reaper;
mod signals;
mod site;
mod state;

use std::path::Path;
use std::time::{Duration, Instant};

use imrs_config::image::{IMAGE_INFO_PATH, ImageInfo};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::pid1::Halt;
use crate::signals::Request;

/// Grace period between SIGTERM and SIGKILL at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let argv0 = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // As PID 1 the arguments are whatever the kernel command line left over: never verbs.
    let verb = match argv0.as_str() {
        _ if pid1::is_pid1() => None,
        "poweroff" | "reboot" | "halt" => Some(argv0.clone()),
        _ => args.get(1).cloned(),
    };
    if let Some(verb) = verb {
        std::process::exit(request(&verb));
    }
    run();
}

/// `imrs-init poweroff|reboot|halt`: signal PID 1.
fn request(verb: &str) -> i32 {
    let how = match verb {
        "poweroff" => Halt::Poweroff,
        "reboot" => Halt::Reboot,
        "halt" => Halt::Stop,
        other => {
            eprintln!("usage: imrs-init [poweroff|reboot|halt] (got {other:?})");
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

fn run() {
    let start = Instant::now();
    // Signals first: PID 1 ignores any signal it has no handler for, and we want none lost.
    let sigfd = match signals::setup() {
        Ok(fd) => Some(fd),
        Err(e) => {
            eprintln!("imrs-init: cannot set up signal handling: {e}");
            None
        }
    };
    pid1::setup_console();
    let mount_errors = if pid1::is_pid1() {
        pid1::mount_kernel_filesystems()
    } else {
        Vec::new()
    };
    log::enable_kmsg();
    std::panic::set_hook(Box::new(|info| {
        log::error(format!("PANIC: {info}; rebooting"));
        pid1::finish(Halt::Reboot);
    }));
    pid1::claim_children();

    let root = Path::new("/");
    let image: Option<ImageInfo> = std::fs::read(IMAGE_INFO_PATH)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    match &image {
        Some(i) => log::info(format!(
            "imrs-init {}: {} {} ({}, profile {}, kernel {})",
            env!("CARGO_PKG_VERSION"),
            i.name,
            i.version,
            i.dns,
            i.profile.name,
            i.kernel_release
        )),
        None => log::info(format!(
            "imrs-init {}: no {IMAGE_INFO_PATH}; not running from an imrs image",
            env!("CARGO_PKG_VERSION")
        )),
    }
    let cmdline = cmdline::parse(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default());
    for w in &cmdline.unknown {
        log::warn(format!("unknown kernel parameter {w} ignored"));
    }
    let store = state::open(root, cmdline.state_dir.as_deref(), &mut |w| log::warn(w));
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
    let mut ctx = boot::Context {
        image,
        ..Default::default()
    };
    let results = boot::run(root, &mut ctx, &mount_errors, &store, &mut st);
    boot::print_summary(&results, start.elapsed());

    if cmdline.poweroff_after_boot {
        log::info("imrs.poweroff_after_boot=1: powering off");
        shutdown(Halt::Poweroff);
    }
    event_loop(sigfd);
}

/// Waits for signals forever: reaps on SIGCHLD, shuts down on request (once).
fn event_loop(sigfd: Option<nix::sys::signalfd::SignalFd>) -> ! {
    let Some(fd) = sigfd else {
        // No signalfd: still reap, on a timer.
        loop {
            reaper::reap_all();
            std::thread::sleep(Duration::from_secs(1));
        }
    };
    loop {
        match fd.read_signal() {
            Ok(Some(info)) => {
                let sig = Signal::try_from(info.ssi_signo as i32).ok();
                match sig.map(signals::meaning) {
                    Some(Request::Reap) => {
                        reaper::reap_all();
                    }
                    Some(Request::Shutdown(how)) => {
                        log::info(format!("{:?} received: shutting down ({how:?})", sig));
                        shutdown(how);
                    }
                    Some(Request::Ignore) | None => {}
                }
            }
            Ok(None) => {}
            Err(e) => {
                log::warn(format!("reading signals failed: {e}"));
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        // Safety net: a coalesced SIGCHLD must not leave zombies.
        reaper::reap_all();
    }
}

/// Orderly shutdown, run once: TERM to everyone, grace period while reaping, KILL, reap, sync,
/// then reboot(2) (PID 1) or exit.
fn shutdown(how: Halt) -> ! {
    let everyone = Pid::from_raw(-1);
    if pid1::is_pid1() {
        let _ = kill(everyone, Signal::SIGTERM);
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        while Instant::now() < deadline {
            if reaper::reap_all().none_left {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = kill(everyone, Signal::SIGKILL);
        reaper::reap_all();
    }
    log::info(format!("{how:?}"));
    pid1::finish(how)
}
