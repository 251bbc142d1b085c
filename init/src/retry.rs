//! A boot that never gives up: a stage that fails (a transfer server handing out a bad zone or
//! not there yet, a DNS daemon that does not come up, a BGP neighbour that is not configured
//! yet) is run again after a capped, jittered exponential delay, from that stage, for as long
//! as the box runs; the node stays off the air meanwhile (nothing after the failed stage runs,
//! so BIRD announces nothing before the zone is verified and the daemon answers it).
//!
//! Only the `hardware` stage's failure is final: a machine that fails acceptance must not serve
//! until someone looks at it. Nothing is retried when the boot is on trial (its slot must give
//! the boot back to the loader instead, [`crate::slots`]) or with `imrs.poweroff_after_boot=1`
//! (the boot tests end after one pass).
//!
//! The delay doubles from [`RetryPolicy::initial`] up to [`RetryPolicy::max`] and is moved by up
//! to a quarter either way, so a fleet whose transfer server came back does not retry in step.
//! The count starts again once the stage that failed passes.

use std::time::Duration;

use imrs_config::stage::Stage;

/// Retry timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The delay before the first retry.
    pub initial: Duration,
    /// Cap of the (unjittered) delay.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial: Duration::from_secs(5),
            max: Duration::from_secs(300),
        }
    }
}

/// Whether a failure of `stage` is worth trying again.
pub fn retryable(stage: Stage) -> bool {
    stage != Stage::Hardware
}

impl RetryPolicy {
    /// The delay before retry number `attempt` (1 for the first), from `random` (uniform in
    /// `0..=u32::MAX`): `initial * 2^(attempt-1)`, capped at `max`, then moved by up to a quarter
    /// either way.
    pub fn delay(&self, attempt: u32, random: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(30);
        let base = self
            .initial
            .checked_mul(1u32 << doublings)
            .unwrap_or(self.max)
            .min(self.max);
        crate::jitter::spread(base, 0.25, random)
    }

    /// [`RetryPolicy::delay`] with fresh randomness ([`crate::jitter::random`]).
    pub fn next_delay(&self, attempt: u32) -> Duration {
        self.delay(attempt, crate::jitter::random())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_within_a_quarter() {
        let p = RetryPolicy::default();
        let mid = u32::MAX / 2;
        let secs = |attempt, random| p.delay(attempt, random).as_secs_f64();
        assert!((secs(1, mid) - 5.0).abs() < 0.01);
        assert!((secs(2, mid) - 10.0).abs() < 0.01);
        assert!((secs(4, mid) - 40.0).abs() < 0.01);
        assert!((secs(7, mid) - 300.0).abs() < 0.01, "capped");
        assert!((secs(1000, mid) - 300.0).abs() < 0.01, "no overflow");
        assert!((secs(1, 0) - 3.75).abs() < 0.01);
        assert!((secs(1, u32::MAX) - 6.25).abs() < 0.01);
        assert!((secs(u32::MAX, u32::MAX) - 375.0).abs() < 0.01);
        // A zero policy retries at once (never a negative delay).
        let zero = RetryPolicy {
            initial: Duration::ZERO,
            max: Duration::ZERO,
        };
        assert_eq!(zero.delay(3, 0), Duration::ZERO);
    }

    #[test]
    fn only_hardware_is_final() {
        for stage in Stage::ALL {
            assert_eq!(retryable(stage), stage != Stage::Hardware, "{stage}");
        }
    }
}
