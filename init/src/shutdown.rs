//! The orderly shutdown, run once: stop the supervised daemons in reverse start order, SIGTERM
//! to every other process, a grace period while reaping, SIGKILL to what is left, reap, record
//! the shutdown in the state file, sync, unmount the disks, then `reboot(2)` (machine role) or
//! exit with the status of [`crate::pid1::Halt::exit_code`].
//!
//! "Every other process": as a PID 1 (machine or namespace) `kill(-1, ...)`, which spares the
//! init itself; as a plain subreaper only its own children (found in `/proc`), repeated as
//! orphans are reparented to it, so a test never signals the host.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::pid1::{self, Halt, Role};
use crate::reaper::Reaper;
use crate::state::{State, Store};
use crate::supervisor::Supervisor;
use crate::{clock, log};

/// How long to wait for exit statuses after SIGKILL.
const KILL_REAP: Duration = Duration::from_secs(3);
/// Reaping interval while waiting.
const POLL: Duration = Duration::from_millis(20);

/// Parses `/proc/PID/stat` text: (ppid, state).
fn parse_stat(text: &str) -> Option<(i32, char)> {
    // "pid (comm) S ppid ...": comm may contain spaces and parentheses; the last ')' ends it.
    let (_, rest) = text.rsplit_once(')')?;
    let mut it = rest.split_whitespace();
    let state = it.next()?.chars().next()?;
    let ppid = it.next()?.parse().ok()?;
    Some((ppid, state))
}

/// Live (non-zombie) processes the shutdown must end, for `role`.
fn remaining(role: Role) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out: Vec<i32> = dir
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|&pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let Some((ppid, state)) = parse_stat(&stat) else {
                return false;
            };
            state != 'Z'
                && match role {
                    // Kernel threads (kthreadd and its children) are not ours to end.
                    Role::Machine => pid != 2 && ppid != 2,
                    Role::Namespace => true,
                    Role::Child => ppid == me,
                }
        })
        .collect();
    out.sort();
    out
}

fn signal_all(role: Role, sig: Signal, done: &mut BTreeSet<i32>) {
    match role {
        Role::Machine | Role::Namespace => {
            if done.insert(0) {
                let _ = kill(Pid::from_raw(-1), sig);
            }
        }
        Role::Child => {
            for pid in remaining(role) {
                if done.insert(pid) {
                    let _ = kill(Pid::from_raw(pid), sig);
                }
            }
        }
    }
}

/// Reaps until nothing is left or `within` passes; keeps signalling new children with `sig`.
async fn reap_until_gone(role: Role, reaper: &Reaper, sig: Signal, within: Duration) -> Vec<i32> {
    let mut signalled = BTreeSet::new();
    let deadline = Instant::now() + within;
    loop {
        signal_all(role, sig, &mut signalled);
        let r = reaper.reap();
        let left = remaining(role);
        if r.none_left || left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Runs the shutdown. Never returns.
pub async fn run(
    role: Role,
    how: Halt,
    grace: Duration,
    supervisor: &mut Supervisor,
    reaper: &Reaper,
    store: &Store,
    st: &mut State,
) -> ! {
    log::info(format!(
        "shutting down for {}: stopping daemons {:?}",
        how.name(),
        supervisor.names()
    ));
    // The event loop no longer runs: reap here so stopping daemons get their exit statuses.
    let r = reaper.clone();
    tokio::spawn(async move {
        loop {
            r.reap();
            tokio::time::sleep(POLL).await;
        }
    });
    supervisor.stop_all(grace).await;
    let left = reap_until_gone(role, reaper, Signal::SIGTERM, grace).await;
    if !left.is_empty() {
        log::warn(format!(
            "{} processes still running {:.1} s after SIGTERM: SIGKILL (pids {left:?})",
            left.len(),
            grace.as_secs_f64()
        ));
        let left = reap_until_gone(role, reaper, Signal::SIGKILL, KILL_REAP).await;
        if !left.is_empty() {
            log::error(format!("processes survive SIGKILL: {left:?}"));
        }
    }
    reaper.reap();
    st.shutdown(how, clock::unix_now());
    match store.save(st) {
        Ok(()) => log::info(format!("state saved in {}", store.dir.display())),
        Err(e) => log::error(log::chain(&e)),
    }
    nix::unistd::sync();
    for e in pid1::unmount_disks(role) {
        log::warn(log::chain(&e));
    }
    log::info(how.name());
    pid1::finish(role, how, how.exit_code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_survives_odd_command_names() {
        let table = [
            ("1 (init) S 0 1 1 0", Some((0, 'S'))),
            ("42 (a b) c)) Z 7 42 42", Some((7, 'Z'))),
            ("garbage", None),
        ];
        for (text, want) in table {
            assert_eq!(parse_stat(text), want, "{text}");
        }
        let me = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert_eq!(
            parse_stat(&me).map(|(p, _)| p),
            Some(nix::unistd::getppid().as_raw())
        );
    }
}
