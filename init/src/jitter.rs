//! Spreading timers so that a fleet started together does not act in step (heartbeats, retries
//! of a failed stage): a duration moved by up to a fraction of itself either way.

use std::time::Duration;

/// A uniform draw from the kernel (the middle value when it has none).
pub fn random() -> u32 {
    let mut r = [0u8; 4];
    getrandom::fill(&mut r).map_or(u32::MAX / 2, |()| u32::from_le_bytes(r))
}

/// `d` moved by up to `fraction` of it either way, from `random` (uniform in `0..=u32::MAX`:
/// 0 is the earliest, `u32::MAX` the latest); never negative.
pub fn spread(d: Duration, fraction: f64, random: u32) -> Duration {
    let most = d.as_secs_f64() * fraction;
    let offset = (f64::from(random) / f64::from(u32::MAX) * 2.0 - 1.0) * most;
    Duration::from_secs_f64((d.as_secs_f64() + offset).max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_within_the_fraction() {
        let d = Duration::from_secs(100);
        assert_eq!(spread(d, 0.1, 0), Duration::from_secs(90));
        assert_eq!(spread(d, 0.1, u32::MAX), Duration::from_secs(110));
        assert!((spread(d, 0.25, u32::MAX / 2).as_secs_f64() - 100.0).abs() < 0.01);
        assert_eq!(spread(Duration::ZERO, 0.25, 0), Duration::ZERO);
    }
}
