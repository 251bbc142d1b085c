//! Signals, set up before anything else: every signal PID 1 cares about is blocked and read from
//! a signalfd, so none can interrupt the init mid-step and none is lost.
//!
//! Meanings (also for `imrs-init poweroff|reboot|halt` and the `/sbin` links, which send them):
//!
//! | signal | meaning |
//! |---|---|
//! | SIGCHLD | reap every exited child |
//! | SIGTERM, SIGINT (Ctrl-Alt-Del) | orderly shutdown, then reboot |
//! | SIGUSR1 | orderly shutdown, then halt |
//! | SIGUSR2, SIGPWR | orderly shutdown, then power off |
//!
//! A shutdown runs once: later shutdown signals are logged and ignored.

use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};

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

/// Blocks the handled signals and returns a signalfd delivering them.
pub fn setup() -> nix::Result<SignalFd> {
    let mut set = SigSet::empty();
    for s in HANDLED {
        set.add(s);
    }
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)?;
    SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_meanings() {
        assert_eq!(meaning(Signal::SIGTERM), Request::Shutdown(Halt::Reboot));
        assert_eq!(meaning(Signal::SIGINT), Request::Shutdown(Halt::Reboot));
        assert_eq!(meaning(Signal::SIGUSR1), Request::Shutdown(Halt::Stop));
        assert_eq!(meaning(Signal::SIGUSR2), Request::Shutdown(Halt::Poweroff));
        assert_eq!(meaning(Signal::SIGPWR), Request::Shutdown(Halt::Poweroff));
        assert_eq!(meaning(Signal::SIGHUP), Request::Ignore);
        for how in [Halt::Reboot, Halt::Stop, Halt::Poweroff] {
            assert_eq!(meaning(signal_for(how)), Request::Shutdown(how));
        }
    }
}
