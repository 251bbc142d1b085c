//! The kernel's random number generator, before anything draws from it. The device key is made
//! in the site stage and the hardware stage checks the entropy pool; on a machine without a
//! hardware source (a VM without virtio-rng, some boards early in boot) the CRNG may not be
//! ready, and a blocking draw would hang the boot for good. [`wait`] bounds the wait; callers
//! that cannot go on without randomness check [`ready`] and fail with a reason instead.

use std::time::Duration;

/// How long a stage lets the kernel gather entropy (machine role).
pub const WAIT: Duration = Duration::from_secs(10);

/// Whether the kernel's CRNG is ready: a non-blocking `getrandom` succeeds.
pub fn ready() -> bool {
    let mut b = [0u8; 1];
    // SAFETY: getrandom writes at most `b.len()` bytes into the valid buffer `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), libc::GRND_NONBLOCK) };
    n == 1
}

/// Makes the kernel's CRNG ready if it can be: on Linux 6.1 a blocking `getrandom` runs the
/// jitter entropy generator until it is. Gives up after `limit` (the blocked draw is left to
/// finish on its own thread) and returns whether the CRNG is ready.
pub async fn wait(limit: Duration) -> bool {
    if ready() {
        return true;
    }
    let t = tokio::task::spawn_blocking(|| {
        let mut b = [0u8; 1];
        // SAFETY: getrandom writes at most `b.len()` bytes into the valid buffer `b`.
        unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) }
    });
    let _ = tokio::time::timeout(limit, t).await;
    ready()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_booted_host_has_entropy() {
        // Any machine that runs the tests has long had its CRNG seeded.
        assert!(ready());
        assert!(wait(Duration::from_millis(1)).await);
    }
}
