//! Signals, set up before anything else: every signal PID 1 handles is blocked first and later
//! read from a signalfd on the event loop, so none can interrupt the init mid-step and none is
//! lost. Every other signal keeps its default disposition, which for PID 1 means "ignored" (the
//! kernel does not deliver unhandled signals to init).
//!
//! Meanings (also for `imrs-init poweroff|reboot|halt` and the `/sbin` links, which send them):
//!
//! | signal | meaning |
//! |---|---|
//! | SIGCHLD | reap every exited child |
//! | SIGTERM, SIGINT (Ctrl-Alt-Del, via `reboot(RB_DISABLE_CAD)`) | orderly shutdown, then reboot |
//! | SIGUSR1 | orderly shutdown, then halt |
//! | SIGUSR2, SIGPWR | orderly shutdown, then power off |
//!
//! A shutdown runs once: later shutdown signals are logged and ignored.

use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::pid1::Halt;

/// Signals the init handles.
pub const HANDLED: [Signal; 6] = [
    Signal::SIGCHLD,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGPWR,
];

/// Setting up signal handling failed.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// `sigprocmask` failed.
    #[error("sigprocmask(SIG_BLOCK)")]
    Block(#[source] nix::Error),
    /// `signalfd` failed.
    #[error("signalfd")]
    Fd(#[source] nix::Error),
    /// Registering the signalfd with the event loop failed.
    #[error("registering the signalfd with the event loop")]
    Register(#[source] std::io::Error),
}

/// What a signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Reap children.
    Reap,
    /// Shut down, then do this.
    Shutdown(Halt),
    /// Nothing we handle.
    Ignore,
}

/// The meaning of a signal.
pub fn meaning(sig: Signal) -> Request {
    match sig {
        Signal::SIGCHLD => Request::Reap,
        Signal::SIGTERM | Signal::SIGINT => Request::Shutdown(Halt::Reboot),
        Signal::SIGUSR1 => Request::Shutdown(Halt::Stop),
        Signal::SIGUSR2 | Signal::SIGPWR => Request::Shutdown(Halt::Poweroff),
        _ => Request::Ignore,
    }
}

/// The signal that asks PID 1 for `how`.
pub fn signal_for(how: Halt) -> Signal {
    match how {
        Halt::Reboot => Signal::SIGTERM,
        Halt::Stop => Signal::SIGUSR1,
        Halt::Poweroff => Signal::SIGUSR2,
    }
}

fn handled_set() -> SigSet {
    let mut set = SigSet::empty();
    for s in HANDLED {
        set.add(s);
    }
    set
}

/// Blocks the handled signals in this thread (and every thread it creates later). Call first.
pub fn block() -> Result<(), SignalError> {
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&handled_set()), None).map_err(SignalError::Block)
}

/// Unblocks them again: for children, between fork and exec (std's `Command` keeps the
/// parent's mask otherwise, and a daemon with SIGTERM blocked could not be stopped).
pub fn unblock_in_child() -> nix::Result<()> {
    sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&handled_set()), None)
}

/// The blocked signals as an async stream (needs the tokio runtime).
pub struct Signals {
    fd: AsyncFd<SignalFd>,
}

impl Signals {
    /// Opens the signalfd for the blocked signals (pending ones are delivered too).
    pub fn open() -> Result<Signals, SignalError> {
        let fd = SignalFd::with_flags(
            &handled_set(),
            SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK,
        )
        .map_err(SignalError::Fd)?;
        // SAFETY: the signalfd is owned by the AsyncFd for its whole life: it stays open and
        // `as_raw_fd` always returns the same descriptor.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(|e| SignalError::Register(e.into()))?;
        Ok(Signals { fd })
    }

    /// The next signal.
    pub async fn next(&mut self) -> Signal {
        loop {
            let Ok(mut guard) = self.fd.readable_mut().await else {
                continue;
            };
            match guard.get_inner_mut().read_signal() {
                Ok(Some(info)) => {
                    if let Ok(sig) = Signal::try_from(info.ssi_signo as i32) {
                        return sig;
                    }
                }
                Ok(None) => guard.clear_ready(),
                Err(_) => guard.clear_ready(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_meanings() {
        let table = [
            (Signal::SIGCHLD, Request::Reap),
            (Signal::SIGTERM, Request::Shutdown(Halt::Reboot)),
            (Signal::SIGINT, Request::Shutdown(Halt::Reboot)),
            (Signal::SIGUSR1, Request::Shutdown(Halt::Stop)),
            (Signal::SIGUSR2, Request::Shutdown(Halt::Poweroff)),
            (Signal::SIGPWR, Request::Shutdown(Halt::Poweroff)),
            (Signal::SIGHUP, Request::Ignore),
            (Signal::SIGQUIT, Request::Ignore),
        ];
        for (sig, want) in table {
            assert_eq!(meaning(sig), want, "{sig:?}");
        }
        for how in [Halt::Reboot, Halt::Stop, Halt::Poweroff] {
            assert_eq!(meaning(signal_for(how)), Request::Shutdown(how));
        }
    }
}
