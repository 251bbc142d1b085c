//! The supervisor: starts daemons, waits for their readiness, restarts them with exponential
//! backoff when they exit, and stops them in reverse start order at shutdown.
//!
//! - Exit statuses come from the [`Reaper`] (the one owner of `waitpid`), never from
//!   `tokio::process`.
//! - Each daemon runs in its own process group; stopping it sends SIGTERM to the group, waits
//!   the grace period, then SIGKILL.
//! - Backoff ([`Backoff`]): the first restart waits `initial`, each further one twice as long,
//!   capped at `max`; a run that lasted `stable` or longer resets it.
//! - Readiness: an optional async check polled every 100 ms; not ready within `ready_timeout`
//!   counts as a failed run (the daemon is stopped and restarted with backoff).
//! - Every daemon starts with `no_new_privs` and, when its [`Spec::sandbox`] has bind mounts,
//!   in a mount namespace of its own ([`crate::privilege`]).
//! - stdout and stderr are logged line by line as `NAME: line`, through a rate limit per daemon
//!   that survives restarts (10 lines/s, bursts of 50), so a crash loop cannot flood the console
//!   or `/dev/kmsg`; dropped lines are counted on the console.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::os::unix::process::CommandExt;
use tokio::io::AsyncBufReadExt;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::log::{self, Admit, RateLimit};
use crate::privilege::Sandbox;
use crate::reaper::{Exit, Reaper};

/// Output lines per second per daemon, on average.
const OUTPUT_RATE: f64 = 10.0;
/// Output burst per daemon.
const OUTPUT_BURST: f64 = 50.0;
/// How often a readiness check is repeated.
const READY_POLL: Duration = Duration::from_millis(100);
/// How long to wait for a SIGKILLed daemon's exit status.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// A supervision failure worth reporting.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// A daemon's output pipe could not be registered with the event loop.
    #[error("{daemon}: cannot read its output")]
    Output {
        /// The daemon.
        daemon: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// An async readiness check.
pub type ReadyCheck = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

/// Restart timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// Delay before the first restart.
    pub initial: Duration,
    /// Cap.
    pub max: Duration,
    /// A run at least this long resets the delay to `initial`.
    pub stable: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            stable: Duration::from_secs(60),
        }
    }
}

/// Exponential backoff state.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: BackoffPolicy,
    next: Duration,
}

impl Backoff {
    /// Fresh state.
    pub fn new(policy: BackoffPolicy) -> Backoff {
        Backoff {
            policy,
            next: policy.initial,
        }
    }

    /// The delay before restarting a daemon that ran for `ran`.
    pub fn after_exit(&mut self, ran: Duration) -> Duration {
        if ran >= self.policy.stable {
            self.next = self.policy.initial;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(self.policy.max);
        delay
    }
}

/// What to run.
#[derive(Clone)]
pub struct Spec {
    /// Name in logs.
    pub name: String,
    /// Program.
    pub program: PathBuf,
    /// Arguments.
    pub args: Vec<String>,
    /// Readiness check (none: ready once started).
    pub ready: Option<ReadyCheck>,
    /// How long readiness may take.
    pub ready_timeout: Duration,
    /// Restart timing.
    pub backoff: BackoffPolicy,
    /// `no_new_privs` always; bind mounts in a mount namespace of its own when given.
    pub sandbox: Sandbox,
}

impl Spec {
    /// A daemon with default timing and no readiness check.
    pub fn new(name: impl Into<String>, program: impl Into<PathBuf>) -> Spec {
        Spec {
            name: name.into(),
            program: program.into(),
            args: Vec::new(),
            ready: None,
            ready_timeout: Duration::from_secs(30),
            backoff: BackoffPolicy::default(),
            sandbox: Sandbox::default(),
        }
    }
}

/// Where a daemon is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaemonState {
    /// Started, readiness not confirmed.
    Running {
        /// Its pid.
        pid: i32,
        /// Times it was restarted so far.
        restarts: u64,
    },
    /// Started and ready.
    Ready {
        /// Its pid.
        pid: i32,
        /// Times it was restarted so far.
        restarts: u64,
    },
    /// Exited; restarting after the delay.
    Backoff {
        /// How the last run ended.
        last: String,
        /// Delay before the restart.
        delay: Duration,
        /// Restarts so far (this one included).
        restarts: u64,
    },
    /// Stopped by the supervisor.
    Stopped,
}

struct Daemon {
    name: String,
    stop: Option<oneshot::Sender<Duration>>,
    task: JoinHandle<()>,
}

/// The supervisor.
pub struct Supervisor {
    reaper: Reaper,
    daemons: Vec<Daemon>,
}

impl Supervisor {
    /// A supervisor whose children are reaped by `reaper`.
    pub fn new(reaper: Reaper) -> Supervisor {
        Supervisor {
            reaper,
            daemons: Vec::new(),
        }
    }

    /// Starts supervising `spec` (needs the tokio runtime). Returns its state.
    pub fn start(&mut self, spec: Spec) -> watch::Receiver<DaemonState> {
        let (state_tx, state_rx) = watch::channel(DaemonState::Running {
            pid: 0,
            restarts: 0,
        });
        let (stop_tx, stop_rx) = oneshot::channel();
        let name = spec.name.clone();
        let task = tokio::spawn(supervise(spec, self.reaper.clone(), state_tx, stop_rx));
        self.daemons.push(Daemon {
            name,
            stop: Some(stop_tx),
            task,
        });
        state_rx
    }

    /// Names of the supervised daemons, in start order.
    pub fn names(&self) -> Vec<String> {
        self.daemons.iter().map(|d| d.name.clone()).collect()
    }

    /// Stops the daemons named `name` (a stage about to start its daemon again), with `grace`
    /// between SIGTERM and SIGKILL; they are no longer supervised.
    pub async fn stop(&mut self, name: &str, grace: Duration) {
        let (mine, others): (Vec<Daemon>, Vec<Daemon>) =
            self.daemons.drain(..).partition(|d| d.name == name);
        self.daemons = others;
        for d in mine.into_iter().rev() {
            d.stop(grace).await;
        }
    }

    /// Stops every daemon, last started first, each with `grace` between SIGTERM and SIGKILL.
    pub async fn stop_all(&mut self, grace: Duration) {
        while let Some(d) = self.daemons.pop() {
            d.stop(grace).await;
        }
    }
}

impl Daemon {
    /// Tells its supervising task to stop it and waits until it has.
    async fn stop(mut self, grace: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(grace);
        }
        if let Err(e) = (&mut self.task).await {
            log::error(format!("supervisor of {}: {e}", self.name));
        }
    }
}

fn describe(e: Option<Exit>) -> String {
    e.map_or_else(|| "exit status lost".to_string(), |e| e.to_string())
}

/// SIGTERM to the group, `grace`, SIGKILL; waits for the exit status.
async fn terminate(name: &str, pid: i32, grace: Duration, exit: &mut oneshot::Receiver<Exit>) {
    let group = Pid::from_raw(pid);
    let _ = killpg(group, Signal::SIGTERM);
    if let Ok(e) = tokio::time::timeout(grace, &mut *exit).await {
        log::info(format!("{name} stopped ({})", describe(e.ok())));
        return;
    }
    log::warn(format!(
        "{name} ignored SIGTERM for {:.1} s: SIGKILL",
        grace.as_secs_f64()
    ));
    let _ = killpg(group, Signal::SIGKILL);
    match tokio::time::timeout(KILL_WAIT, exit).await {
        Ok(e) => log::info(format!("{name} stopped ({})", describe(e.ok()))),
        Err(_) => log::error(format!("{name} (pid {pid}) did not die after SIGKILL")),
    }
}

/// Logs a daemon's output stream through its rate limit.
fn forward(
    name: String,
    stream: Option<impl Into<std::os::fd::OwnedFd>>,
    limit: Arc<Mutex<RateLimit>>,
) {
    let Some(stream) = stream else { return };
    let rx = match tokio::net::unix::pipe::Receiver::from_owned_fd(stream.into()) {
        Ok(rx) => rx,
        Err(source) => {
            let e = SupervisorError::Output {
                daemon: name,
                source,
            };
            log::warn(log::chain(&e));
            return;
        }
    };
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(rx);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match lines.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let text = String::from_utf8_lossy(&buf);
            let text = text.trim_end();
            let admit = limit
                .lock()
                .map(|mut l| l.admit(Instant::now()))
                .unwrap_or(Admit::No);
            if let Admit::Yes { dropped } = admit {
                if dropped > 0 {
                    log::warn(format!(
                        "{name}: {dropped} output lines dropped (rate limit)"
                    ));
                }
                log::info(format!("{name}: {text}"));
            }
        }
    });
}

async fn wait_ready(check: Option<ReadyCheck>, timeout: Duration) -> bool {
    let Some(check) = check else {
        return std::future::pending().await;
    };
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

/// One daemon's life: start, readiness, restarts, stop.
async fn supervise(
    spec: Spec,
    reaper: Reaper,
    state: watch::Sender<DaemonState>,
    mut stop: oneshot::Receiver<Duration>,
) {
    let name = spec.name.as_str();
    let mut backoff = Backoff::new(spec.backoff);
    let limit = Arc::new(Mutex::new(RateLimit::new(OUTPUT_RATE, OUTPUT_BURST)));
    let mut restarts = 0u64;
    loop {
        let mut cmd = Command::new(&spec.program);
        cmd.args(&spec.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let started = Instant::now();
        let spawned = spec.sandbox.prepare().map(|sandbox| {
            // SAFETY: `Prepared::pre_exec` makes raw system calls on memory prepared before
            // the fork; it neither allocates nor takes locks.
            unsafe { cmd.pre_exec(move || sandbox.pre_exec()) };
        });
        let spawned = match spawned {
            Ok(()) => reaper.spawn(&mut cmd).map_err(|e| log::chain(&e)),
            Err(e) => Err(format!("cannot sandbox {}: {e}", spec.program.display())),
        };
        let last = match spawned {
            Err(e) => e,
            Ok((mut child, mut exit)) => {
                let pid = child.id() as i32;
                log::info(format!("{name} started (pid {pid})"));
                let _ = state.send(DaemonState::Running { pid, restarts });
                forward(name.to_string(), child.stdout.take(), limit.clone());
                forward(name.to_string(), child.stderr.take(), limit.clone());
                let ready = wait_ready(spec.ready.clone(), spec.ready_timeout);
                tokio::pin!(ready);
                let mut waiting_ready = true;
                loop {
                    tokio::select! {
                        e = &mut exit => break describe(e.ok()),
                        grace = &mut stop => {
                            terminate(name, pid, grace.unwrap_or(crate::cmdline::DEFAULT_GRACE), &mut exit).await;
                            let _ = state.send(DaemonState::Stopped);
                            return;
                        }
                        ok = &mut ready, if waiting_ready => {
                            waiting_ready = false;
                            if ok {
                                log::info(format!("{name} ready"));
                                let _ = state.send(DaemonState::Ready { pid, restarts });
                            } else {
                                log::warn(format!(
                                    "{name} not ready after {:.1} s: stopping it",
                                    spec.ready_timeout.as_secs_f64()
                                ));
                                terminate(name, pid, crate::cmdline::DEFAULT_GRACE, &mut exit).await;
                                break "not ready in time".to_string();
                            }
                        }
                    }
                }
            }
        };
        let ran = started.elapsed();
        let delay = backoff.after_exit(ran);
        restarts += 1;
        log::warn(format!(
            "{name} ended ({last}) after {:.1} s; restart {restarts} in {:.1} s",
            ran.as_secs_f64(),
            delay.as_secs_f64()
        ));
        let _ = state.send(DaemonState::Backoff {
            last,
            delay,
            restarts,
        });
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = &mut stop => {
                let _ = state.send(DaemonState::Stopped);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests;
