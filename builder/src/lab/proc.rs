//! Child processes of the lab: each daemon runs in its own process group with its output in a
//! log file, and is killed (the whole group, so forked workers such as NSD's go too) and reaped
//! when its [`Daemon`] is dropped, on success, on error and after Ctrl-C alike.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// A process started by the lab, killed with its process group when dropped.
#[derive(Debug)]
pub struct Daemon {
    name: String,
    log: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    /// Starts `cmd` as `name` in a new process group, stdout and stderr to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Daemon> {
        let out = File::create(log).with_context(|| format!("{}: cannot create", log.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("{}: cannot duplicate", log.display()))?;
        cmd.process_group(0)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name} ({:?})", cmd.get_program()))?;
        Ok(Daemon {
            name: name.to_string(),
            log: log.to_path_buf(),
            child: Some(child),
        })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// The last `lines` lines of its log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Fails with the log's tail unless it still runs.
    pub fn ensure_running(&mut self) -> Result<()> {
        if self.running() {
            return Ok(());
        }
        anyhow::bail!(
            "{} exited early; the end of {}:\n{}",
            self.name,
            self.log.display(),
            self.log_tail(20)
        )
    }

    /// Asks it to stop (SIGTERM to the group), waits up to `grace`, then kills the group.
    pub fn stop(&mut self, grace: Duration) {
        let Some(c) = self.child.as_mut() else { return };
        signal_group(c.id(), libc::SIGTERM);
        let end = Instant::now() + grace;
        while Instant::now() < end {
            if !matches!(c.try_wait(), Ok(None)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
    }

    /// Kills the process group now (SIGKILL) and reaps the process.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal_group(c.id(), libc::SIGKILL);
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends `sig` to the process group led by `pid` (a group of our own making: see
/// [`Daemon::spawn`]).
pub fn signal_group(pid: u32, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    if pid <= 1 {
        return;
    }
    // SAFETY: kill(2) takes plain integers; a negative pid addresses the process group that
    // `spawn` created for this child, never a group we did not start.
    unsafe {
        libc::kill(-pid, sig);
    }
}

/// Polls `f` every `every` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end || super::signal::interrupted() {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// Runs a command to completion; fails naming the command and its stderr unless it succeeds.
pub fn run(cmd: &mut Command) -> Result<std::process::Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    if !out.status.success() {
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        anyhow::bail!(
            "`{} {}` failed ({}): {}",
            cmd.get_program().to_string_lossy(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}
