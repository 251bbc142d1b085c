//! The one reaper: the only code in the init that calls `waitpid`. It collects every exited child
//! (daemons, helper commands and reparented orphans alike) on SIGCHLD and on a periodic safety
//! net, and hands each exit status to whoever registered for that pid.
//!
//! Why not `tokio::process`: a global `waitpid(-1)` steals the statuses `tokio::process` waits
//! for, and PID 1 must reap orphans it never started. So children are started only through
//! [`Reaper::spawn`], which starts the process and registers its pid under the same lock the
//! reaper takes to reap: a child that exits at once still finds its waiter.

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::sync::oneshot;

/// Starting a child failed.
#[derive(Debug, thiserror::Error)]
pub enum ReaperError {
    /// `fork`/`exec` failed.
    #[error("cannot start {program}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

impl Exit {
    /// Exited with code 0.
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signal(s) => match nix::sys::signal::Signal::try_from(*s) {
                Ok(sig) => write!(f, "killed by {}", sig.as_str()),
                Err(_) => write!(f, "killed by signal {s}"),
            },
        }
    }
}

/// What one pass of the reaper found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reaped {
    /// Children somebody waited for.
    pub claimed: usize,
    /// Orphans and other children nobody waited for: (pid, how).
    pub orphans: Vec<(i32, Exit)>,
    /// No children are left at all (ECHILD).
    pub none_left: bool,
}

/// The registry of waiters; cheap to clone.
#[derive(Clone, Default)]
pub struct Reaper {
    waiters: Arc<Mutex<HashMap<i32, oneshot::Sender<Exit>>>>,
}

impl Reaper {
    /// An empty registry.
    pub fn new() -> Reaper {
        Reaper::default()
    }

    /// Starts `cmd` with the init's blocked signals unblocked, and registers for its exit.
    pub fn spawn(
        &self,
        cmd: &mut Command,
    ) -> Result<(Child, oneshot::Receiver<Exit>), ReaperError> {
        // SAFETY: the closure runs in the child between fork and exec and only calls
        // sigprocmask, which is async-signal-safe; it touches no locks or allocations.
        unsafe {
            cmd.pre_exec(|| crate::signals::unblock_in_child().map_err(std::io::Error::from));
        }
        let mut waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        let child = cmd.spawn().map_err(|source| ReaperError::Spawn {
            program: cmd.get_program().to_string_lossy().into_owned(),
            source,
        })?;
        let (tx, rx) = oneshot::channel();
        waiters.insert(child.id() as i32, tx);
        Ok((child, rx))
    }

    /// Reaps every child that has exited, without blocking, and hands out the statuses.
    pub fn reap(&self) -> Reaped {
        let mut waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Reaped::default();
        loop {
            let (pid, how) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, Exit::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, Exit::Signal(sig as i32)),
                Ok(WaitStatus::StillAlive) => break,
                Err(nix::errno::Errno::ECHILD) => {
                    out.none_left = true;
                    break;
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break,
                Ok(_) => continue,
            };
            match waiters.remove(&pid.as_raw()) {
                Some(tx) => {
                    out.claimed += 1;
                    // The waiter may have given up (receiver dropped): the child is reaped anyway.
                    let _ = tx.send(how);
                }
                None => out.orphans.push((pid.as_raw(), how)),
            }
        }
        out
    }

    /// Pids somebody is waiting for.
    #[cfg(test)]
    pub fn waited_for(&self) -> usize {
        self.waiters.lock().map(|w| w.len()).unwrap_or(0)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Tests that start children share the process's children: run them one at a time.
    pub(crate) static CHILDREN: Mutex<()> = Mutex::new(());

    /// Runs `body` on a current-thread runtime with a reaper whose children's statuses are
    /// collected every 10 ms, holding [`CHILDREN`] meanwhile.
    pub(crate) fn with_reaper<F: std::future::Future>(body: impl FnOnce(Reaper) -> F) -> F::Output {
        let _g = CHILDREN.lock().unwrap_or_else(|p| p.into_inner());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let reaper = Reaper::new();
            let r = reaper.clone();
            let pump = tokio::spawn(async move {
                loop {
                    r.reap();
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            });
            let out = body(reaper).await;
            pump.abort();
            out
        })
    }

    #[test]
    fn hands_exit_statuses_to_their_waiters_and_reaps_the_rest() {
        let _g = CHILDREN.lock().unwrap_or_else(|p| p.into_inner());
        let r = Reaper::new();
        let (_c1, mut rx1) = r
            .spawn(Command::new("/bin/sh").args(["-c", "exit 7"]))
            .unwrap();
        let (_c2, mut rx2) = r
            .spawn(Command::new("/bin/sh").args(["-c", "kill -TERM $$"]))
            .unwrap();
        // An unregistered child: the reaper must reap it and report it as an orphan.
        #[allow(
            clippy::zombie_processes,
            reason = "the reaper under test must reap it"
        )]
        let stray = Command::new("/bin/true").spawn().unwrap();
        let mut orphans = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let stray_pid = stray.id() as i32;
        while (rx1.is_empty()
            || rx2.is_empty()
            || !orphans.iter().any(|o: &(i32, Exit)| o.0 == stray_pid))
            && std::time::Instant::now() < deadline
        {
            orphans.extend(r.reap().orphans);
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(rx1.try_recv().unwrap(), Exit::Code(7));
        assert_eq!(rx2.try_recv().unwrap(), Exit::Signal(libc::SIGTERM));
        // Other tests' leftovers may show up too; the stray must be among the orphans.
        assert!(orphans.contains(&(stray_pid, Exit::Code(0))), "{orphans:?}");
        assert_eq!(r.waited_for(), 0);
        assert!(r.reap().none_left);
        assert_eq!(Exit::Signal(9).to_string(), "killed by SIGKILL");
        assert!(matches!(
            r.spawn(&mut Command::new("/nonexistent/prog")),
            Err(ReaperError::Spawn { .. })
        ));
    }
}
