//! One word for how a device is, the same on the fleet page, its own page and `/metrics`.
//! The most urgent state wins: a failed install, then silence, then a BGP face with no
//! session up, then the operator's drain switch, then a zone behind the fleet's newest serial.

use crate::home::store::DeviceRow;

/// How a device is, most urgent first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum State {
    /// Its latest report is a failed installation.
    Failed,
    /// Nothing arrived from it for longer than the receiver's `--stale-after`.
    Quiet,
    /// It reports BGP sessions and none of them is established: not announcing.
    BgpDown,
    /// The operator's drain switch is on (withdrawn on purpose).
    Drained,
    /// Its zone serial is behind the newest in the fleet.
    Lagging,
    /// Serving, heard from recently, current.
    Live,
}

impl State {
    /// Every state, most urgent first.
    pub const ALL: [State; 6] = [
        State::Failed,
        State::Quiet,
        State::BgpDown,
        State::Drained,
        State::Lagging,
        State::Live,
    ];

    /// The state's name (a CSS class and a metrics label too).
    pub fn name(self) -> &'static str {
        match self {
            State::Failed => "failed",
            State::Quiet => "quiet",
            State::BgpDown => "bgp-down",
            State::Drained => "drained",
            State::Lagging => "lagging",
            State::Live => "live",
        }
    }
}

/// The state of `d` at `now` (Unix seconds), quiet after `stale_s` seconds of silence.
pub fn state_of(d: &DeviceRow, now: i64, stale_s: u64) -> State {
    if d.last_event == "install-failed" {
        State::Failed
    } else if d.silent_for_more_than(now, stale_s) {
        State::Quiet
    } else if d.bgp_sessions.is_some_and(|n| n > 0) && d.bgp_established == Some(0) {
        State::BgpDown
    } else if d.drained == Some(true) {
        State::Drained
    } else if d.serial_lag.is_some_and(|l| l > 0) {
        State::Lagging
    } else {
        State::Live
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A live device row for tests.
    pub(crate) fn row(device: &str) -> DeviceRow {
        DeviceRow {
            device: device.into(),
            serial: "SN1".into(),
            site_id: "site".into(),
            instance: "xx-1.l.root-servers.org".into(),
            last_event: "heartbeat".into(),
            failed_stage: None,
            failed_reason: None,
            zone_serial: Some(2026073102),
            image: "calypso 0.1.0".into(),
            lab: false,
            created_unix: 1000,
            received_unix: 1000,
            reports: 3,
            enrolled: true,
            serial_held_by: None,
            serial_claimed_by: Vec::new(),
            slot: Some("a".into()),
            last_heartbeat_unix: Some(1000),
            serial_lag: Some(0),
            quiet: false,
            drained: Some(false),
            bgp_sessions: Some(2),
            bgp_established: Some(2),
        }
    }

    #[test]
    fn the_most_urgent_state_wins() {
        let mut d = row("k");
        assert_eq!(state_of(&d, 1100, 600), State::Live);
        d.serial_lag = Some(1);
        assert_eq!(state_of(&d, 1100, 600), State::Lagging);
        d.drained = Some(true);
        assert_eq!(state_of(&d, 1100, 600), State::Drained);
        d.bgp_established = Some(0);
        assert_eq!(state_of(&d, 1100, 600), State::BgpDown);
        assert_eq!(state_of(&d, 1601, 600), State::Quiet);
        assert_eq!(
            state_of(&d, 1600, 600),
            State::BgpDown,
            "600 s is not more than 600"
        );
        d.last_event = "install-failed".into();
        assert_eq!(state_of(&d, 1601, 600), State::Failed);
        // No BGP section, or one with no sessions: not "down".
        let mut e = row("k2");
        e.bgp_sessions = None;
        e.bgp_established = None;
        assert_eq!(state_of(&e, 1000, 600), State::Live);
        e.bgp_sessions = Some(0);
        e.bgp_established = Some(0);
        assert_eq!(state_of(&e, 1000, 600), State::Live);
    }
}
