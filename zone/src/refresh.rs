//! Refresh policy: when to poll the transfer servers next and whether the
//! zone being served has expired. Pure and time-injected.
//!
//! The root zone's SOA timers are refresh 1800 s, retry 900 s, expire
//! 604800 s (docs/facts.md, "The root zone"); operators poll at least every
//! refresh interval and on NOTIFY.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use crate::zone::Zone;

/// SOA refresh, retry and expire timers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoaTimers {
    /// Poll interval after a success.
    pub refresh: Duration,
    /// Poll interval after a failure.
    pub retry: Duration,
    /// Age after which an unrefreshed zone must no longer be served.
    pub expire: Duration,
}

impl SoaTimers {
    /// The root zone's published timers.
    pub const ROOT: SoaTimers = SoaTimers {
        refresh: Duration::from_secs(1800),
        retry: Duration::from_secs(900),
        expire: Duration::from_secs(604_800),
    };

    /// The timers of a zone's apex SOA, if it has one.
    pub fn from_zone(zone: &Zone) -> Option<SoaTimers> {
        let soa = zone.apex_soas().next()?;
        let rdata = &soa.rdata;
        // Skip MNAME and RNAME, then serial.
        let mut pos = 0;
        for _ in 0..2 {
            loop {
                let len = *rdata.get(pos)? as usize;
                pos += 1 + len;
                if len == 0 {
                    break;
                }
            }
        }
        let field = |i: usize| -> Option<Duration> {
            let b = rdata.get(pos + 4 * i..pos + 4 * i + 4)?;
            Some(Duration::from_secs(
                u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as u64,
            ))
        };
        Some(SoaTimers {
            refresh: field(1)?,
            retry: field(2)?,
            expire: field(3)?,
        })
    }
}

/// What happened so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RefreshState {
    /// Last time a zone was transferred (or found current) and verified.
    pub last_success: Option<Timestamp>,
    /// Last time a poll was attempted, successful or not.
    pub last_attempt: Option<Timestamp>,
    /// Last NOTIFY received.
    pub last_notify: Option<Timestamp>,
}

/// The decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefreshDecision {
    /// When to poll next (may be in the past: poll now).
    pub next_poll: Timestamp,
    /// Whether the served zone is expired (or there has never been one).
    pub expired: bool,
    /// When the served zone expires if not refreshed (`None` without a zone).
    pub expires_at: Option<Timestamp>,
}

fn add(t: Timestamp, d: Duration) -> Timestamp {
    t.saturating_add(SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX)
}

/// Decides when to poll next and whether the zone is expired at `now`.
pub fn decide(timers: SoaTimers, state: RefreshState, now: Timestamp) -> RefreshDecision {
    let expires_at = state.last_success.map(|s| add(s, timers.expire));
    let expired = expires_at.is_none_or(|e| now >= e);
    let failing = match (state.last_attempt, state.last_success) {
        (Some(a), Some(s)) => a > s,
        (Some(_), None) => true,
        _ => false,
    };
    let mut next_poll = match (state.last_success, state.last_attempt) {
        (None, None) => now,
        _ if failing => add(state.last_attempt.unwrap_or(now), timers.retry),
        (Some(s), _) => add(s, timers.refresh),
        (None, Some(a)) => add(a, timers.retry),
    };
    // A NOTIFY newer than the last attempt asks for a poll now.
    if let Some(n) = state.last_notify
        && state.last_attempt.is_none_or(|a| n > a)
    {
        next_poll = next_poll.min(n);
    }
    // Never let the zone expire without trying once more just before.
    if let Some(e) = expires_at {
        next_poll = next_poll.min(e);
    }
    RefreshDecision {
        next_poll,
        expired,
        expires_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_785_542_400 + s).unwrap()
    }

    #[test]
    fn table() {
        let r = SoaTimers::ROOT;
        struct Case {
            name: &'static str,
            state: RefreshState,
            now: i64,
            next: i64,
            expired: bool,
        }
        let s = |succ: Option<i64>, att: Option<i64>, notify: Option<i64>| RefreshState {
            last_success: succ.map(t),
            last_attempt: att.map(t),
            last_notify: notify.map(t),
        };
        let cases = [
            Case {
                name: "never tried",
                state: s(None, None, None),
                now: 0,
                next: 0,
                expired: true,
            },
            Case {
                name: "never succeeded, retry",
                state: s(None, Some(0), None),
                now: 10,
                next: 900,
                expired: true,
            },
            Case {
                name: "fresh success",
                state: s(Some(0), Some(0), None),
                now: 10,
                next: 1800,
                expired: false,
            },
            Case {
                name: "failing after success",
                state: s(Some(0), Some(1800), None),
                now: 1801,
                next: 2700,
                expired: false,
            },
            Case {
                name: "notify",
                state: s(Some(0), Some(0), Some(60)),
                now: 61,
                next: 60,
                expired: false,
            },
            Case {
                name: "old notify ignored",
                state: s(Some(100), Some(100), Some(60)),
                now: 101,
                next: 1900,
                expired: false,
            },
            Case {
                name: "expired",
                state: s(Some(0), Some(604_000), None),
                now: 604_800,
                next: 604_800,
                expired: true,
            },
            Case {
                name: "just before expiry",
                state: s(Some(0), Some(604_700), None),
                now: 604_799,
                next: 604_800,
                expired: false,
            },
        ];
        for c in cases {
            let d = decide(r, c.state, t(c.now));
            assert_eq!(d.next_poll, t(c.next), "{}", c.name);
            assert_eq!(d.expired, c.expired, "{}", c.name);
        }
    }

    #[test]
    fn timers_from_zone() {
        let z = Zone::from_text(b". 86400 IN SOA a.root-servers.net. nstld.verisign-grs.com. 2026073102 1800 900 604800 86400\n").unwrap();
        assert_eq!(SoaTimers::from_zone(&z), Some(SoaTimers::ROOT));
    }
}
