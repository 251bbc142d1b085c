//! The one reaper: the only code in the init that calls `waitpid`. It collects every exited
//! child (daemons and reparented orphans alike) and hands the statuses of the ones somebody
//! waits for to the caller, so no zombie is ever left and no exit status is stolen.

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// One exited child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Its pid.
    pub pid: Pid,
    /// Exit code, or 128 + signal number when killed by a signal.
    pub code: i32,
}

/// What one pass of the reaper found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reaped {
    /// Children that exited.
    pub exits: Vec<Exit>,
    /// No children are left at all (ECHILD).
    pub none_left: bool,
}

/// Reaps every child that has exited, without blocking.
pub fn reap_all() -> Reaped {
    let mut out = Reaped::default();
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => out.exits.push(Exit { pid, code }),
            Ok(WaitStatus::Signaled(pid, sig, _)) => out.exits.push(Exit {
                pid,
                code: 128 + sig as i32,
            }),
            Err(nix::errno::Errno::ECHILD) => {
                out.none_left = true;
                break;
            }
            Ok(WaitStatus::StillAlive) | Err(_) => break,
            Ok(_) => continue,
        }
    }
    out
}
