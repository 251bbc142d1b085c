//! Health state machine tests: scripted event sequences with injected time, checking the output
//! after every step.

use super::*;

const OFF: Desired = Desired {
    covering: false,
    specifics: false,
    serve_zone: true,
};
const COVER: Desired = Desired {
    covering: true,
    specifics: false,
    serve_zone: true,
};
const ALL: Desired = Desired {
    covering: true,
    specifics: true,
    serve_zone: true,
};
const EXPIRED: Desired = Desired {
    covering: true,
    specifics: false,
    serve_zone: false,
};

fn policy() -> Policy {
    Policy {
        interval: Duration::from_secs(1),
        fall: 2,
        start_rise: 3,
        rise: 3,
        hold_down: Duration::from_secs(10),
    }
}

fn fail() -> Event {
    Event::ProbeFailed("connection refused".into())
}

/// Runs `(seconds since start, event, desired after)` steps and returns the records.
fn script(h: &mut Health, steps: &[(u64, Event, Desired)]) -> Vec<Record> {
    let t0 = Instant::now();
    let mut records = Vec::new();
    for (i, (s, ev, want)) in steps.iter().enumerate() {
        if let Some(r) = h.step(t0 + Duration::from_secs(*s), ev.clone()) {
            records.push(r);
        }
        assert_eq!(
            h.desired(),
            *want,
            "step {i} ({ev:?} at {s}s) -> {}",
            h.phase()
        );
    }
    records
}

fn up(h: &mut Health) {
    script(
        h,
        &[
            (0, Event::ProbeOk, COVER),
            (1, Event::ProbeOk, COVER),
            (2, Event::ProbeOk, ALL),
        ],
    );
}

#[test]
fn start_announces_covering_first_then_specifics_after_rise() {
    let mut h = Health::new(policy());
    let r = script(
        &mut h,
        &[
            (0, fail(), OFF),
            (1, Event::ProbeOk, COVER),
            (2, fail(), COVER),
            (3, Event::ProbeOk, COVER),
            (4, Event::ProbeOk, COVER),
            (5, Event::ProbeOk, ALL),
        ],
    );
    assert_eq!(h.phase(), Phase::Up);
    assert!(r.iter().all(|r| !r.reason.is_empty()));
    assert_eq!(r.last().unwrap().reason, "3 good probes in a row");
}

/// The default policy: the first good probe after boot announces everything (the dns stage
/// has proved the daemon already); a recovery still needs three good probes and the hold-down.
#[test]
fn by_default_the_first_good_probe_announces_and_recovery_still_waits() {
    let mut h = Health::new(Policy::default());
    let r = script(
        &mut h,
        &[
            (0, fail(), OFF),
            (1, Event::ProbeOk, ALL),
            (2, fail(), ALL),
            (3, fail(), COVER),
            (4, Event::ProbeOk, COVER),
            (5, Event::ProbeOk, COVER),
            (6, Event::ProbeOk, COVER), // rise reached: hold-down until 16
            (15, Event::ProbeOk, COVER),
            (16, Event::ProbeOk, ALL),
        ],
    );
    assert!(
        r.iter().any(|r| r.reason == "1 good probe in a row"),
        "{r:?}"
    );
    assert_eq!(h.phase(), Phase::Up);
}

#[test]
fn two_failures_withdraw_three_goods_and_hold_down_reannounce() {
    let mut h = Health::new(policy());
    up(&mut h);
    let r = script(
        &mut h,
        &[
            (10, fail(), ALL),
            (11, Event::ProbeOk, ALL),
            (12, fail(), ALL),
            (13, fail(), COVER),
            (14, Event::ProbeOk, COVER),
            (15, Event::ProbeOk, COVER),
            (16, Event::ProbeOk, COVER), // rise reached: hold-down until 26
            (20, Event::ProbeOk, COVER),
            (25, Event::ProbeOk, COVER),
            (26, Event::ProbeOk, ALL),
        ],
    );
    let phases: Vec<String> = r
        .iter()
        .map(|r| format!("{} -> {}", r.from, r.to))
        .collect();
    assert_eq!(
        phases,
        [
            "up -> failing (1 failed)",
            "failing (1 failed) -> up",
            "up -> failing (1 failed)",
            "failing (1 failed) -> down (0 good)",
            "down (2 good) -> hold-down",
            "hold-down -> up",
        ]
    );
    assert!(
        r[3].reason
            .contains("2 failed probes in a row: connection refused")
    );
}

#[test]
fn failure_during_hold_down_starts_over() {
    let mut h = Health::new(policy());
    up(&mut h);
    script(
        &mut h,
        &[
            (10, fail(), ALL),
            (11, fail(), COVER),
            (12, Event::ProbeOk, COVER),
            (13, Event::ProbeOk, COVER),
            (14, Event::ProbeOk, COVER), // hold-down until 24
            (20, fail(), COVER),
            (25, Event::ProbeOk, COVER),
            (26, Event::ProbeOk, COVER),
            (27, Event::ProbeOk, COVER), // hold-down until 37
            (30, Event::ProbeOk, COVER),
            (37, Event::ProbeOk, ALL),
        ],
    );
}

#[test]
fn transfer_failures_never_withdraw() {
    let mut h = Health::new(policy());
    up(&mut h);
    let r = script(
        &mut h,
        &[
            (
                10,
                Event::TransferFailed("192.0.32.132: timeout".into()),
                ALL,
            ),
            (
                11,
                Event::TransferFailed("192.0.47.132: timeout".into()),
                ALL,
            ),
            (12, Event::ZoneValid, ALL),
            (13, Event::ProbeOk, ALL),
        ],
    );
    assert!(r.is_empty(), "{r:?}");
}

#[test]
fn expired_zone_withdraws_and_stops_serving_until_valid_again() {
    let mut h = Health::new(policy());
    up(&mut h);
    let r = script(
        &mut h,
        &[
            (10, Event::ZoneExpired, EXPIRED),
            (11, Event::ProbeOk, EXPIRED),
            (12, Event::ZoneExpired, EXPIRED),
            (13, Event::ZoneValid, COVER),
            (14, Event::ProbeOk, COVER),
            (15, Event::ProbeOk, COVER),
            (16, Event::ProbeOk, COVER),
            (26, Event::ProbeOk, ALL),
        ],
    );
    assert_eq!(r[0].reason, "zone expired");
    assert_eq!(r[1].reason, "valid zone loaded again; recovering");
    // Expired before ever serving: nothing announced at all.
    let mut h = Health::new(policy());
    script(
        &mut h,
        &[(
            0,
            Event::ZoneExpired,
            Desired {
                covering: false,
                ..EXPIRED
            },
        )],
    );
}

#[test]
fn drain_withdraws_specifics_in_any_phase() {
    let mut h = Health::new(policy());
    up(&mut h);
    let r = script(
        &mut h,
        &[
            (10, Event::Drain, COVER),
            (11, Event::ProbeOk, COVER),
            (12, fail(), COVER),
            (13, Event::ProbeOk, COVER),
            (14, Event::Undrain, ALL),
            (15, Event::Drain, COVER),
            (16, Event::Undrain, ALL),
        ],
    );
    assert_eq!(r[0].reason, "drained by the operator");
    assert!(r[0].drained);
    assert!(
        r.iter()
            .any(|r| r.reason == "undrained by the operator" && !r.drained)
    );
    // Undrain while down: specifics stay withdrawn until healthy.
    script(
        &mut h,
        &[
            (20, Event::Drain, COVER),
            (21, fail(), COVER),
            (22, fail(), COVER),
            (23, Event::Undrain, COVER),
        ],
    );
    assert_eq!(h.phase(), Phase::Down { good: 0 });
    // Draining before the first answer announces nothing, and undraining waits for rise.
    let mut h = Health::new(policy());
    script(
        &mut h,
        &[
            (0, Event::Drain, OFF),
            (1, Event::ProbeOk, COVER),
            (2, Event::ProbeOk, COVER),
            (3, Event::ProbeOk, COVER),
            (4, Event::Undrain, ALL),
        ],
    );
}

#[test]
fn zero_hold_down_and_fall_one() {
    let mut h = Health::new(Policy {
        fall: 1,
        start_rise: 1,
        rise: 1,
        hold_down: Duration::ZERO,
        ..policy()
    });
    script(
        &mut h,
        &[
            (0, Event::ProbeOk, ALL),
            (1, fail(), COVER),
            (2, Event::ProbeOk, ALL),
        ],
    );
}

#[test]
fn records_render_for_the_log() {
    let mut h = Health::new(policy());
    up(&mut h);
    let r = h.step(Instant::now(), Event::Drain).unwrap();
    assert_eq!(
        r.to_string(),
        "health: up -> up [drained]: drained by the operator \
         (covering on, specifics off, serving on)"
    );
}
