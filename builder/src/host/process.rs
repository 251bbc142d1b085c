//! Child processes of the host side: each daemon runs in its own process group with its output
//! in a log file, and is killed (the whole group, so forked workers such as NSD's go too) and
//! reaped when its [`Daemon`] is dropped, on success, on error and after Ctrl-C alike. Also the
//! polling loop every wait uses ([`wait_for`], which gives up on Ctrl-C) and [`run`], a command
//! run to completion that fails with its stderr.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// A process started in its own process group, killed with that group when dropped.
#[derive(Debug)]
pub struct Daemon {
    name: String,
    log: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    /// Starts `cmd` as `name` in a new process group, stdin from /dev/null, stdout and stderr
    /// to `log` (created or truncated).
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Result<Daemon> {
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

    /// Its process id (also its process group id), until it is killed. A program started
    /// through [`super::netns::NetNs::command`] has its own pid here: `ip netns exec` execs it.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// Its log so far (empty when unreadable).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines of its log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        last_lines(&self.log(), lines)
    }

    /// Fails with the end of its log unless it still runs.
    pub fn ensure_running(&mut self) -> Result<()> {
        if self.running() {
            return Ok(());
        }
        anyhow::bail!(
            "{} exited; the end of {}:\n{}",
            self.name,
            self.log.display(),
            self.log_tail(20)
        )
    }

    /// Asks it to stop (SIGTERM to the group), waits up to `grace`, then kills the group.
    pub fn stop(&mut self, grace: Duration) {
        let Some(c) = self.child.as_mut() else { return };
        signal_group(c.id(), Signal::SIGTERM);
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
            signal_group(c.id(), Signal::SIGKILL);
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

/// The last `n` lines of `text`.
pub fn last_lines(text: &str, n: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(n)..].join("\n")
}

/// Sends `sig` to the process group led by `pid`, a group of our own making ([`Daemon::spawn`],
/// or a child started with `process_group(0)`); never to pid 0 or 1.
pub fn signal_group(pid: u32, sig: Signal) {
    let Ok(pid) = i32::try_from(pid) else {
        return;
    };
    if pid <= 1 {
        return;
    }
    let _ = killpg(Pid::from_raw(pid), sig);
}

/// Polls `f` every `every` until it returns `Some`, `timeout` passes, or Ctrl-C arrives
/// ([`super::signal::interrupted`]); `None` in the two latter cases.
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

/// Runs a command to completion, stdin from /dev/null; fails naming the command line, its exit
/// status and its stderr unless it succeeds.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_daemon_and_its_group_are_killed_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sh.log");
        // The shell forks a worker (as NSD does) and both sleep.
        let mut d = Daemon::spawn(
            "sleeper",
            Command::new("sh").args(["-c", "sleep 60 & echo started; wait"]),
            &log,
        )
        .unwrap();
        let pid = d.pid().unwrap();
        assert!(d.running());
        wait_for(Duration::from_secs(5), Duration::from_millis(20), || {
            d.log().contains("started").then_some(())
        })
        .expect("the shell wrote to its log");
        let group = Pid::from_raw(i32::try_from(pid).unwrap());
        drop(d);
        // The whole group is gone: signal 0 to it finds nobody (the forked `sleep` included).
        let gone = wait_for(Duration::from_secs(5), Duration::from_millis(20), || {
            killpg(group, None).is_err().then_some(())
        });
        assert!(gone.is_some(), "process group {pid} still alive");
    }

    #[test]
    fn ensure_running_shows_the_end_of_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("fail.log");
        let mut d = Daemon::spawn(
            "failer",
            Command::new("sh").args(["-c", "echo one; echo 'bad config line 3' >&2; exit 1"]),
            &log,
        )
        .unwrap();
        wait_for(Duration::from_secs(5), Duration::from_millis(20), || {
            (!d.running()).then_some(())
        })
        .expect("it exits");
        let e = d.ensure_running().unwrap_err().to_string();
        assert!(e.starts_with("failer exited"), "{e}");
        assert!(e.contains("bad config line 3"), "{e}");
        assert_eq!(d.log_tail(1), "bad config line 3");
    }

    #[test]
    fn run_names_the_command_and_its_stderr() {
        let e = run(Command::new("sh").args(["-c", "echo nope >&2; exit 3"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`sh -c echo nope >&2; exit 3` failed"), "{e}");
        assert!(e.contains("exit status: 3"), "{e}");
        assert!(e.ends_with("nope"), "{e}");
        let out = run(Command::new("sh").args(["-c", "echo yes"])).unwrap();
        assert_eq!(out.stdout, b"yes\n");
    }

    #[test]
    fn wait_for_gives_up_at_the_timeout() {
        let t0 = Instant::now();
        let r: Option<()> = wait_for(
            Duration::from_millis(200),
            Duration::from_millis(20),
            || None,
        );
        assert!(r.is_none());
        assert!(t0.elapsed() >= Duration::from_millis(200));
        let mut n = 0;
        let r = wait_for(Duration::from_secs(5), Duration::from_millis(1), || {
            n += 1;
            (n == 3).then_some(n)
        });
        assert_eq!(r, Some(3));
    }
}
