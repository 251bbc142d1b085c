//! Ctrl-C and SIGTERM: the handler only sets a flag; every wait loop of the host side
//! ([`super::process::wait_for`]) and of the lab polls [`interrupted`] and returns, so the normal
//! `Drop` guards (QEMU, the router, NSD, the receiver, the namespace) clean up exactly as they do
//! on any other error. Children run in their own process groups, so the terminal's SIGINT
//! reaches only this program. Nothing installs the handler but [`install`] (the lab does; the
//! tests do not).

use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: std::ffi::c_int) {
    // Async-signal-safe: one atomic store.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Installs the handler for SIGINT and SIGTERM (idempotent).
pub fn install() -> nix::Result<()> {
    let act = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler performs one atomic store, which is async-signal-safe, and touches
        // no other state; the previous handler returned is not used.
        unsafe { sigaction(sig, &act) }?;
    }
    Ok(())
}

/// Whether Ctrl-C or SIGTERM arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// An error when interrupted, for `?` in wait loops.
pub fn check() -> anyhow::Result<()> {
    if interrupted() {
        anyhow::bail!("interrupted (Ctrl-C or SIGTERM): stopping and cleaning up");
    }
    Ok(())
}
