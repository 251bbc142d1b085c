//! Running a helper program to completion from the init (`nsd-checkconf`, `knotc`, `bird -p`,
//! `nsd-control reload`): started through the [`Reaper`] so its exit status is not lost to the
//! reaper's `waitpid(-1)` (a plain `Command::output` would race with it), output collected,
//! bounded by a timeout after which it is killed.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::reaper::Reaper;

/// How a helper program failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// It could not be started.
    #[error("{0}")]
    Start(String),
    /// It ran and failed, or was killed at the timeout.
    #[error("{how}{}", if tail.is_empty() { String::new() } else { format!(": {tail}") })]
    Ended {
        /// Exit status, signal, or the timeout.
        how: String,
        /// Its last output lines, `|`-separated (empty when it printed nothing).
        tail: String,
    },
}

/// Runs `program args`; `Ok` with its output (stdout then stderr) when it exits 0.
pub async fn run_checked(
    reaper: &Reaper,
    program: &Path,
    args: &[String],
    timeout: Duration,
) -> Result<String, Failure> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (mut child, exit) = reaper
        .spawn(&mut cmd)
        .map_err(|e| Failure::Start(crate::log::chain(&e)))?;
    let mut readers = Vec::new();
    let out: [Option<std::os::fd::OwnedFd>; 2] = [
        child.stdout.take().map(Into::into),
        child.stderr.take().map(Into::into),
    ];
    for fd in out.into_iter().flatten() {
        if let Ok(rx) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
            readers.push(tokio::spawn(async move {
                let mut buf = Vec::new();
                let _ = tokio::io::BufReader::new(rx).read_to_end(&mut buf).await;
                buf
            }));
        }
    }
    let pid = child.id() as i32;
    let how = match tokio::time::timeout(timeout, exit).await {
        Ok(Ok(e)) if e.success() => None,
        Ok(Ok(e)) => Some(e.to_string()),
        Ok(Err(_)) => Some("exit status lost".to_string()),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            Some(format!("no answer within {} s", timeout.as_secs()))
        }
    };
    let mut text = String::new();
    for r in readers {
        if let Ok(Ok(b)) = tokio::time::timeout(Duration::from_secs(1), r).await {
            text.push_str(&String::from_utf8_lossy(&b));
        }
    }
    match how {
        None => Ok(text),
        Some(how) => {
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
            Err(Failure::Ended { how, tail })
        }
    }
}

/// A helper program failed: which one, with its arguments, and how.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{command}: {failure}")]
pub struct CommandError {
    /// The program and its arguments, as run.
    pub command: String,
    /// How it failed.
    pub failure: Failure,
}

/// [`run_checked`] with the failure naming the command.
pub async fn run(
    reaper: &Reaper,
    program: &Path,
    args: &[String],
    timeout: Duration,
) -> Result<String, CommandError> {
    run_checked(reaper, program, args, timeout)
        .await
        .map_err(|failure| CommandError {
            command: format!("{} {}", program.display(), args.join(" ")),
            failure,
        })
}
