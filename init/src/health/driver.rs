//! The health driver: once per [`Policy::interval`] it reads the operator and zone inputs, probes
//! the DNS service, feeds the [`Health`] machine and applies the [`Desired`] announcements
//! through BIRD ([`BirdAnnouncer`]). The two seams, probing and announcing, are traits so the
//! loop is tested with fakes and run with the real daemons.
//!
//! Announcements are re-applied every [`REASSERT_EVERY`] ticks even without a change, so a BIRD
//! restarted by the supervisor (which starts with every static protocol disabled) is brought back
//! to the desired state within seconds.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use imrs_config::imrs::PrefixKind;

use super::{Desired, Event, Health, Policy, Record};
use crate::bgp::{BgpError, Birdc, static_protocols};
use crate::dns::probe::{Probe, Transport};

/// Ticks between re-applying an unchanged announcement set.
pub const REASSERT_EVERY: u32 = 5;

/// Inputs that other parts of the init set: the zone pipeline and the operator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inputs {
    /// Serial of the verified zone the daemon should serve (`None`: any serial).
    pub serial: Option<u32>,
    /// When the served zone expires (its SOA expire after the last successful refresh);
    /// `None`: no zone loaded yet.
    pub zone_expires: Option<SystemTime>,
    /// The operator's drain switch.
    pub drained: bool,
    /// The last transfer failure not yet reported (taken by the driver).
    pub transfer_failure: Option<String>,
    /// When the zone was last confirmed current with a transfer server (set by the refresh
    /// loop; heartbeats report its age).
    pub zone_checked: Option<SystemTime>,
    /// The driver's last DNS probe: `None` before the first, `Some(None)` when it answered,
    /// `Some(Some(why))` when it did not (heartbeats report it).
    pub dns_probe: Option<Option<String>>,
}

/// Shared, updatable inputs.
pub type SharedInputs = Arc<Mutex<Inputs>>;

/// Sets the operator's drain switch; returns the previous value.
pub fn set_drained(inputs: &SharedInputs, drained: bool) -> bool {
    let mut g = inputs.lock().unwrap_or_else(|p| p.into_inner());
    std::mem::replace(&mut g.drained, drained)
}

/// Checks whether the DNS service is ready.
pub trait Prober {
    /// Probes once; `Err` says why the service is not ready.
    fn probe(&mut self, expected_serial: Option<u32>) -> Result<(), String>;
}

/// Applies an announcement set.
pub trait Announcer {
    /// Makes the announcements match `desired`.
    fn apply(&mut self, desired: &Desired) -> Result<(), String>;
}

/// The real prober: `. SOA` to every target (service addresses, UDP and TCP), all must pass.
#[derive(Debug, Clone)]
pub struct DnsProber {
    /// Addresses and transports to probe.
    pub targets: Vec<(SocketAddr, Transport)>,
    /// Per-probe timeout (keep it below the interval).
    pub timeout: Duration,
    /// Require NSID in answers.
    pub require_nsid: bool,
}

impl DnsProber {
    /// Probes each address over UDP and TCP with a 400 ms timeout, requiring NSID.
    pub fn new(addrs: &[SocketAddr]) -> DnsProber {
        let targets = addrs
            .iter()
            .flat_map(|a| [(*a, Transport::Udp), (*a, Transport::Tcp)])
            .collect();
        DnsProber {
            targets,
            timeout: Duration::from_millis(400),
            require_nsid: true,
        }
    }
}

impl Prober for DnsProber {
    fn probe(&mut self, expected_serial: Option<u32>) -> Result<(), String> {
        for (server, transport) in &self.targets {
            let mut p = Probe::new(*server, *transport, expected_serial);
            p.timeout = self.timeout;
            p.require_nsid = self.require_nsid;
            p.run().map_err(|e| error_chain(&e))?;
        }
        Ok(())
    }
}

/// An error with its causes, `a: b: c`, for one log line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s = format!("{s}: {c}");
        cur = c.source();
    }
    s
}

/// The real announcer: `birdc enable/disable` of the covering and specific static protocols.
/// `serve_zone` is not BGP's business: the init's supervisor acts on [`Driver::desired`].
#[derive(Debug, Clone)]
pub struct BirdAnnouncer {
    /// BIRD's control client.
    pub birdc: Birdc,
}

impl BirdAnnouncer {
    fn set(&self, kind: PrefixKind, on: bool) -> Result<(), BgpError> {
        for proto in static_protocols(kind) {
            if on {
                self.birdc.enable(proto)?;
            } else {
                self.birdc.disable(proto)?;
            }
        }
        Ok(())
    }
}

impl Announcer for BirdAnnouncer {
    fn apply(&mut self, d: &Desired) -> Result<(), String> {
        // Withdraw before announcing: never more announced than desired, even for a moment.
        let order = [
            (PrefixKind::Specific, d.specifics),
            (PrefixKind::Covering, d.covering),
        ];
        for (kind, on) in order.iter().filter(|(_, on)| !on) {
            self.set(*kind, *on).map_err(|e| error_chain(&e))?;
        }
        for (kind, on) in order.iter().rev().filter(|(_, on)| *on) {
            self.set(*kind, *on).map_err(|e| error_chain(&e))?;
        }
        Ok(())
    }
}

/// The probe-decide-apply loop.
pub struct Driver<P, A> {
    health: Health,
    prober: P,
    announcer: A,
    inputs: SharedInputs,
    applied: Option<Desired>,
    since_apply: u32,
    log: Box<dyn FnMut(&Record) + Send>,
    on_apply_error: Box<dyn FnMut(&str) + Send>,
}

impl<P: Prober, A: Announcer> Driver<P, A> {
    /// A driver starting from a freshly booted node. `log` receives every [`Record`];
    /// `on_apply_error` every failure to apply announcements (retried next tick).
    pub fn new(
        policy: Policy,
        prober: P,
        announcer: A,
        inputs: SharedInputs,
        log: impl FnMut(&Record) + Send + 'static,
        on_apply_error: impl FnMut(&str) + Send + 'static,
    ) -> Self {
        Driver {
            health: Health::new(policy),
            prober,
            announcer,
            inputs,
            applied: None,
            since_apply: 0,
            log: Box::new(log),
            on_apply_error: Box::new(on_apply_error),
        }
    }

    /// The machine.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// What should be announced and served now.
    pub fn desired(&self) -> Desired {
        self.health.desired()
    }

    fn feed(&mut self, now: Instant, ev: Event) {
        if let Some(r) = self.health.step(now, ev) {
            (self.log)(&r);
        }
    }

    /// One round: inputs, zone, probe, apply. `now` and `wall` are injected for tests.
    pub fn tick(&mut self, now: Instant, wall: SystemTime) {
        let inputs = {
            let mut g = self.inputs.lock().unwrap_or_else(|p| p.into_inner());
            let snapshot = g.clone();
            g.transfer_failure = None;
            snapshot
        };
        if inputs.drained != self.health.drained() {
            let ev = if inputs.drained {
                Event::Drain
            } else {
                Event::Undrain
            };
            self.feed(now, ev);
        }
        if let Some(why) = inputs.transfer_failure {
            self.feed(now, Event::TransferFailed(why));
        }
        let expired = inputs.zone_expires.is_some_and(|t| wall >= t);
        self.feed(
            now,
            if expired {
                Event::ZoneExpired
            } else {
                Event::ZoneValid
            },
        );
        if !expired {
            let probe = self.prober.probe(inputs.serial);
            self.inputs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .dns_probe = Some(probe.clone().err());
            let ev = match probe {
                Ok(()) => Event::ProbeOk,
                Err(why) => Event::ProbeFailed(why),
            };
            self.feed(now, ev);
        }
        let desired = self.health.desired();
        self.since_apply += 1;
        if self.applied != Some(desired) || self.since_apply >= REASSERT_EVERY {
            match self.announcer.apply(&desired) {
                Ok(()) => {
                    self.applied = Some(desired);
                    self.since_apply = 0;
                }
                Err(e) => {
                    self.applied = None;
                    (self.on_apply_error)(&e);
                }
            }
        }
    }

    /// Ticks every interval until `stop` is set.
    pub fn run(&mut self, stop: &AtomicBool) {
        self.run_observed(stop, SystemTime::now, |_| {});
    }

    /// [`Driver::run`] with the wall clock given (`wall`) and `after` told what is desired
    /// after every tick.
    pub fn run_observed(
        &mut self,
        stop: &AtomicBool,
        wall: impl Fn() -> SystemTime,
        mut after: impl FnMut(Desired),
    ) {
        let interval = self.health.policy().interval;
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            self.tick(Instant::now(), wall());
            after(self.desired());
            next += interval;
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            } else {
                next = now;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    struct Script(VecDeque<Result<(), String>>);
    impl Prober for Script {
        fn probe(&mut self, _: Option<u32>) -> Result<(), String> {
            self.0.pop_front().unwrap_or(Ok(()))
        }
    }

    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Vec<Desired>>>, Arc<Mutex<u32>>);
    impl Announcer for Seen {
        fn apply(&mut self, d: &Desired) -> Result<(), String> {
            let mut fails = self.1.lock().unwrap();
            if *fails > 0 {
                *fails -= 1;
                return Err("bird down".into());
            }
            self.0.lock().unwrap().push(*d);
            Ok(())
        }
    }

    #[test]
    fn drives_the_machine_and_applies_changes() {
        let inputs: SharedInputs = Arc::default();
        let seen = Seen::default();
        *seen.1.lock().unwrap() = 1;
        let records = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(0));
        let (r2, e2) = (records.clone(), errors.clone());
        let probes = [
            Ok(()),
            Ok(()),
            Ok(()),
            Err("refused".into()),
            Err("refused".into()),
        ];
        let mut d = Driver::new(
            Policy {
                start_rise: 3,
                hold_down: Duration::from_secs(2),
                ..Policy::default()
            },
            Script(probes.into_iter().collect()),
            seen.clone(),
            inputs.clone(),
            move |r| r2.lock().unwrap().push(r.to_string()),
            move |_| *e2.lock().unwrap() += 1,
        );
        let t0 = Instant::now();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let at = |s: u64| t0 + Duration::from_secs(s);
        for s in 0..5 {
            d.tick(at(s), wall);
        }
        assert_eq!(
            *errors.lock().unwrap(),
            1,
            "first apply failed and was retried"
        );
        let specifics: Vec<bool> = seen.0.lock().unwrap().iter().map(|d| d.specifics).collect();
        assert_eq!(specifics, [false, true, false]);
        // Drain and a transfer failure are read from the inputs.
        inputs.lock().unwrap().drained = true;
        inputs.lock().unwrap().transfer_failure = Some("xfr timeout".into());
        d.tick(at(5), wall);
        assert!(inputs.lock().unwrap().transfer_failure.is_none());
        let log = records.lock().unwrap().join("\n");
        assert!(log.contains("drained by the operator"), "{log}");
        assert!(log.contains("2 failed probes in a row: refused"), "{log}");
        // Expiry: no probe, serving off.
        inputs.lock().unwrap().zone_expires = Some(wall);
        d.tick(at(6), wall);
        assert!(!d.desired().serve_zone);
        assert!(!seen.0.lock().unwrap().last().unwrap().serve_zone);
    }
}
