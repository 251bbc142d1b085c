//! Health gating: which IMRS prefixes the node announces, decided by a pure state machine.
//!
//! ICANN's practice (docs/facts.md, Routing): a node that is unhealthy (DNS failing, zone stale, or
//! marked non-operational) withdraws the specific prefixes and keeps the covering "failsafe"
//! prefixes, so traffic moves to healthy nodes while a covering route remains if every node is
//! sick; and a node does not fail over because the distribution layer (the transfer servers) is
//! unreachable while its own zone is still valid.
//!
//! The rules, as an exhaustive `match (phase, event)` in [`Health::step`], time injected:
//! - covering prefixes are announced from the first correct answer on;
//! - specifics need [`Policy::start_rise`] good probes in a row at start (by default one: the
//!   dns stage has already proved that the daemon answers with the verified serial, so the
//!   first probe that agrees is enough), and are withdrawn after [`Policy::fall`] failed probes
//!   in a row;
//! - after a withdrawal they come back only after `rise` good probes *and* a hold-down
//!   ([`Policy::hold_down`]) during which every probe is good;
//! - an expired zone withdraws the specifics and stops serving the stale zone until a valid zone
//!   is loaded (then the node recovers like after a failure);
//! - a transfer failure changes nothing;
//! - the operator's drain switch withdraws the specifics (covering stays) until undrained.
//!
//! Every change of phase, drain state or output yields a [`Record`] with its reason.
//! [`driver`] runs the probes, feeds the machine and applies [`Desired`] through BIRD.

pub mod driver;

use std::fmt;
use std::time::{Duration, Instant};

/// Thresholds and timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Time between probes (at most 1 s; docs/facts.md: 1 s to 5 s is the field's practice).
    pub interval: Duration,
    /// Failed probes in a row that withdraw the specifics.
    pub fall: u32,
    /// Good probes in a row needed before the first announcement since boot.
    pub start_rise: u32,
    /// Good probes in a row needed after a withdrawal before the hold-down.
    pub rise: u32,
    /// After recovery, how long every probe must stay good before re-announcing.
    pub hold_down: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            interval: Duration::from_secs(1),
            fall: 2,
            // The dns stage proved the daemon answers the verified serial before BGP started.
            start_rise: 1,
            rise: 3,
            hold_down: Duration::from_secs(10),
        }
    }
}

/// Where the node stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Not yet announced specifics since boot; `good` probes in a row so far.
    Starting {
        /// Good probes in a row.
        good: u32,
    },
    /// Healthy: specifics announced (unless drained).
    Up,
    /// Some failed probes in a row, fewer than `fall`: still announced.
    Failing {
        /// Failed probes in a row.
        failed: u32,
    },
    /// Unhealthy: specifics withdrawn; `good` probes in a row so far.
    Down {
        /// Good probes in a row.
        good: u32,
    },
    /// Recovered: waiting out the hold-down before re-announcing.
    HoldDown {
        /// When the specifics may come back.
        until: Instant,
    },
    /// The zone expired: specifics withdrawn and the stale zone no longer served.
    Expired,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Phase::Starting { good } => write!(f, "starting ({good} good)"),
            Phase::Up => f.write_str("up"),
            Phase::Failing { failed } => write!(f, "failing ({failed} failed)"),
            Phase::Down { good } => write!(f, "down ({good} good)"),
            Phase::HoldDown { .. } => f.write_str("hold-down"),
            Phase::Expired => f.write_str("zone expired"),
        }
    }
}

/// Something the machine learns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The readiness probe passed.
    ProbeOk,
    /// The readiness probe failed, with why.
    ProbeFailed(String),
    /// The served zone is valid (loaded, not expired).
    ZoneValid,
    /// The served zone has expired (SOA expire passed without a new verified zone).
    ZoneExpired,
    /// A zone transfer or refresh failed (the distribution layer): never a reason to withdraw.
    TransferFailed(String),
    /// The operator drains the node.
    Drain,
    /// The operator undrains the node.
    Undrain,
}

/// What should be announced and served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desired {
    /// Announce the covering prefixes (/23, /47).
    pub covering: bool,
    /// Announce the specific prefixes (/24, /48s).
    pub specifics: bool,
    /// Keep serving the zone (false once it has expired).
    pub serve_zone: bool,
}

/// One change, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// When.
    pub at: Instant,
    /// Phase before.
    pub from: Phase,
    /// Phase after.
    pub to: Phase,
    /// Output after.
    pub desired: Desired,
    /// Whether the node is drained after the change.
    pub drained: bool,
    /// Why.
    pub reason: String,
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let on = |b| if b { "on" } else { "off" };
        write!(
            f,
            "health: {} -> {}{}: {} (covering {}, specifics {}, serving {})",
            self.from,
            self.to,
            if self.drained { " [drained]" } else { "" },
            self.reason,
            on(self.desired.covering),
            on(self.desired.specifics),
            on(self.desired.serve_zone)
        )
    }
}

/// The gating state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    policy: Policy,
    phase: Phase,
    served: bool,
    drained: bool,
}

impl Health {
    /// A node that has just booted: nothing announced.
    pub fn new(policy: Policy) -> Health {
        Health {
            policy,
            phase: Phase::Starting { good: 0 },
            served: false,
            drained: false,
        }
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Whether the operator has drained the node.
    pub fn drained(&self) -> bool {
        self.drained
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// What should be announced and served now.
    pub fn desired(&self) -> Desired {
        Desired {
            covering: self.served,
            specifics: matches!(self.phase, Phase::Up | Phase::Failing { .. }) && !self.drained,
            serve_zone: self.phase != Phase::Expired,
        }
    }

    /// The phase after `rise` good probes from `Down`: hold-down, or up at once without one.
    fn recovered(&self, now: Instant) -> Phase {
        if self.policy.hold_down.is_zero() {
            Phase::Up
        } else {
            Phase::HoldDown {
                until: now + self.policy.hold_down,
            }
        }
    }

    /// Feeds one event at time `now`; returns a record when anything changed.
    pub fn step(&mut self, now: Instant, event: Event) -> Option<Record> {
        let before = (self.phase, self.drained, self.desired());
        let p = self.policy;
        let (phase, reason): (Phase, String) = match (self.phase, &event) {
            // Operator switch, in every phase: only the drain flag changes.
            (ph, Event::Drain) => (ph, "drained by the operator".into()),
            (ph, Event::Undrain) => (ph, "undrained by the operator".into()),
            // The distribution layer is not the node's health (docs/facts.md, ICANN practice).
            (ph, Event::TransferFailed(why)) => (
                ph,
                format!("transfer failed ({why}); local zone still valid, no change"),
            ),
            // An expired zone takes the node down wherever it was.
            (Phase::Expired, Event::ZoneExpired) => (Phase::Expired, "zone still expired".into()),
            (_, Event::ZoneExpired) => (Phase::Expired, "zone expired".into()),
            (Phase::Expired, Event::ZoneValid) => (
                Phase::Down { good: 0 },
                "valid zone loaded again; recovering".into(),
            ),
            (ph, Event::ZoneValid) => (ph, "zone valid".into()),
            // Probes do not count while the stale zone is not served.
            (Phase::Expired, Event::ProbeOk | Event::ProbeFailed(_)) => {
                (Phase::Expired, "zone expired; probe ignored".into())
            }

            (Phase::Starting { good }, Event::ProbeOk) if good + 1 >= p.start_rise => {
                let n = good + 1;
                let s = if n == 1 { "" } else { "s" };
                (Phase::Up, format!("{n} good probe{s} in a row"))
            }
            (Phase::Starting { good }, Event::ProbeOk) => (
                Phase::Starting { good: good + 1 },
                "answered correctly".into(),
            ),
            (Phase::Starting { .. }, Event::ProbeFailed(why)) => {
                (Phase::Starting { good: 0 }, format!("probe failed: {why}"))
            }

            (Phase::Up, Event::ProbeOk) => (Phase::Up, "probe ok".into()),
            (Phase::Up, Event::ProbeFailed(why)) if p.fall <= 1 => {
                (Phase::Down { good: 0 }, format!("probe failed: {why}"))
            }
            (Phase::Up, Event::ProbeFailed(why)) => {
                (Phase::Failing { failed: 1 }, format!("probe failed: {why}"))
            }

            (Phase::Failing { failed }, Event::ProbeOk) => {
                (Phase::Up, format!("probe ok again after {failed} failed"))
            }
            (Phase::Failing { failed }, Event::ProbeFailed(why)) if failed + 1 >= p.fall => (
                Phase::Down { good: 0 },
                format!("{} failed probes in a row: {why}", failed + 1),
            ),
            (Phase::Failing { failed }, Event::ProbeFailed(why)) => (
                Phase::Failing { failed: failed + 1 },
                format!("probe failed: {why}"),
            ),

            (Phase::Down { good }, Event::ProbeOk) if good + 1 >= p.rise => (
                self.recovered(now),
                format!(
                    "{} good probes in a row; hold-down {:?}",
                    good + 1,
                    p.hold_down
                ),
            ),
            (Phase::Down { good }, Event::ProbeOk) => {
                (Phase::Down { good: good + 1 }, "probe ok".into())
            }
            (Phase::Down { .. }, Event::ProbeFailed(why)) => {
                (Phase::Down { good: 0 }, format!("probe failed: {why}"))
            }

            (Phase::HoldDown { until }, Event::ProbeOk) if now >= until => {
                (Phase::Up, "hold-down over, probes good".into())
            }
            (Phase::HoldDown { until }, Event::ProbeOk) => (
                Phase::HoldDown { until },
                "probe ok during hold-down".into(),
            ),
            (Phase::HoldDown { .. }, Event::ProbeFailed(why)) => (
                Phase::Down { good: 0 },
                format!("probe failed during hold-down: {why}"),
            ),
        };
        match event {
            Event::Drain => self.drained = true,
            Event::Undrain => self.drained = false,
            _ => {}
        }
        self.phase = phase;
        if matches!(event, Event::ProbeOk) && phase != Phase::Expired {
            self.served = true;
        }
        let after = (self.phase, self.drained, self.desired());
        let changed = std::mem::discriminant(&before.0) != std::mem::discriminant(&after.0)
            || before.1 != after.1
            || before.2 != after.2;
        if !changed {
            return None;
        }
        Some(Record {
            at: now,
            from: before.0,
            to: self.phase,
            desired: after.2,
            drained: self.drained,
            reason,
        })
    }
}

#[cfg(test)]
mod tests;
