//! The slot history: which slot and image last became healthy, and the last slot on trial that
//! gave up and why. It decides when a boot that became healthy tells the operator with a
//! `slot-changed` report (an update took, or the box fell back to its old slot), and gives every
//! report its fallback reason.
//!
//! Kept in its own file (`slots.json` beside `state.json` on `IMRS-DATA`), written atomically:
//! both slots share the data partition, and an older image booted after a fallback must read
//! its own `state.json` unchanged (that file refuses unknown fields), so nothing slot-specific
//! is added there. A damaged or unknown `slots.json` is set aside with a warning: the history
//! is what reports say, never what decides how the box boots (systemd-boot's counters do).

use imrs_config::report::Event;
use serde::{Deserialize, Serialize};

use crate::context::Context;
use crate::log;
use crate::outcome::StageResult;
use crate::state::Store;

/// The history's file name in the state folder.
pub const HISTORY_FILE: &str = "slots.json";

/// [`History::version`] this build writes.
pub const HISTORY_VERSION: u32 = 1;

/// Largest history file read.
const MAX_HISTORY_BYTES: u64 = 64 * 1024;

/// Longest reason kept (reports carry at most 4096 bytes).
const MAX_WHY: usize = 2048;

/// A slot and the image in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotRun {
    /// `a` or `b`; `None` when booted without slots (kernel started directly).
    pub slot: Option<String>,
    /// The image's manifest sha256 (`imrs.manifest=`), empty when not given.
    pub manifest_sha256: String,
}

impl SlotRun {
    /// This boot's slot and image, from the command line.
    pub fn of(slot: Option<imrs_disk::Slot>, manifest: Option<&str>) -> SlotRun {
        SlotRun {
            slot: slot.map(|s| s.letter().to_string()),
            manifest_sha256: manifest.unwrap_or_default().to_string(),
        }
    }

    fn describe(&self) -> String {
        let image = if self.manifest_sha256.is_empty() {
            "unknown image".to_string()
        } else {
            format!(
                "image {}",
                self.manifest_sha256.get(..12).unwrap_or_default()
            )
        };
        match &self.slot {
            Some(s) => format!("slot {s} ({image})"),
            None => format!("no slot ({image})"),
        }
    }
}

/// A slot on trial that gave up a boot without becoming healthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailedTrial {
    /// The slot and image tried.
    pub run: SlotRun,
    /// The boot entry it was tried from (`imrs-b+1-1.conf`).
    pub entry: String,
    /// Why the last try gave up.
    pub why: String,
    /// Tries of this slot and image that gave up so far.
    pub tries_failed: u32,
    /// The state's boot number of the last try.
    pub boot: u64,
}

impl FailedTrial {
    /// `slot b (image ...) on trial (entry ...) gave up N boot(s)`: the start of every
    /// sentence about this trial.
    fn gave_up(&self) -> String {
        format!(
            "{} on trial (entry {}) gave up {} boot(s)",
            self.run.describe(),
            self.entry,
            self.tries_failed
        )
    }
}

/// The history file.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct History {
    /// [`HISTORY_VERSION`].
    pub version: u32,
    /// The slot and image of the last boot that became healthy.
    #[serde(default)]
    pub last_healthy: Option<SlotRun>,
    /// The last slot on trial that gave up, until a boot becomes healthy.
    #[serde(default)]
    pub failed_trial: Option<FailedTrial>,
}

/// What a boot that became healthy must tell: the slot it ran before, and why it is not on the
/// slot it was trying, if that is the case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The slot and image before this boot: the one on trial that failed, or the last healthy.
    pub previous: SlotRun,
    /// The fallback's reason, when this boot runs instead of a slot that failed its trial.
    pub fallback: Option<String>,
}

impl History {
    /// Reads the history from the state folder; absent, damaged or of another version: empty,
    /// with a warning for the last two.
    pub fn load(store: &Store, warn: &mut dyn FnMut(String)) -> History {
        let path = store.dir.join(HISTORY_FILE);
        let bytes = match imrs_config::fsutil::read_limited(&path, MAX_HISTORY_BYTES) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return History::fresh(),
            Err(e) => {
                warn(format!(
                    "{}: {e}; slot history starts afresh",
                    path.display()
                ));
                return History::fresh();
            }
        };
        match serde_json::from_slice::<History>(&bytes) {
            Ok(h) if h.version == HISTORY_VERSION => h,
            Ok(h) => {
                warn(format!(
                    "{}: version {} (this build: {HISTORY_VERSION}); slot history starts afresh",
                    path.display(),
                    h.version
                ));
                History::fresh()
            }
            Err(e) => {
                warn(format!(
                    "{}: {e}; slot history starts afresh",
                    path.display()
                ));
                History::fresh()
            }
        }
    }

    /// An empty history.
    pub fn fresh() -> History {
        History {
            version: HISTORY_VERSION,
            ..History::default()
        }
    }

    /// Writes the history atomically into the state folder.
    pub fn save(&self, store: &Store) -> Result<(), crate::state::StateError> {
        store.save_json(HISTORY_FILE, self)
    }

    /// Records that `run`, tried from `entry`, gave up this boot (`boot`) because of `why`.
    pub fn trial_failed(
        &mut self,
        run: SlotRun,
        entry: &imrs_disk::EntryName,
        why: &str,
        boot: u64,
    ) {
        let tries_failed = match &self.failed_trial {
            Some(f) if f.run == run => f.tries_failed.saturating_add(1),
            _ => 1,
        };
        self.failed_trial = Some(FailedTrial {
            run,
            entry: entry.file_name(),
            why: cut(why),
            tries_failed,
            boot,
        });
    }

    /// This boot became healthy as `now`: records it and returns what changed since the last
    /// healthy boot, if anything (nothing on the first healthy boot: the install report says
    /// it all). A failed trial of another slot or image is a fallback; the trial's own slot
    /// becoming healthy on a later try is not.
    pub fn healthy(&mut self, now: SlotRun) -> Option<Change> {
        let failed = self.failed_trial.take();
        let last = self.last_healthy.replace(now.clone());
        match failed {
            Some(f) if f.run != now => Some(Change {
                fallback: Some(format!(
                    "{} without becoming healthy, last: {}; systemd-boot went back to {}",
                    f.gave_up(),
                    f.why,
                    now.describe()
                )),
                previous: f.run,
            }),
            _ => match last {
                Some(prev) if prev != now => Some(Change {
                    previous: prev,
                    fallback: None,
                }),
                _ => None,
            },
        }
    }

    /// A failed trial of another slot or image than `now`.
    pub fn failed_other(&self, now: &SlotRun) -> Option<&FailedTrial> {
        self.failed_trial.as_ref().filter(|f| &f.run != now)
    }

    /// The fallback reason a report of this boot carries: a failed trial of another slot or
    /// image than `now`, before the boot is healthy.
    pub fn pending_fallback(&self, now: &SlotRun) -> Option<String> {
        self.failed_other(now)
            .map(|f| format!("{}, last: {}", f.gave_up(), f.why))
    }
}

/// The node became healthy (the `bgp` stage passed): records this slot and image as the last
/// healthy ones and, on a later boot where that changed the slot or image, or after a fallback,
/// queues a signed `slot-changed` report. On the first boot the installation report (queued
/// next, by the phone-home stage) carries the fallback instead.
pub fn after_healthy(
    ctx: &mut Context,
    store: &Store,
    first_boot_passed: bool,
    results: &[StageResult],
) {
    let now = SlotRun::of(ctx.slot, ctx.manifest_sha256.as_deref());
    let mut history = History::load(store, &mut |w| log::warn(w));
    let change = history.healthy(now.clone());
    if let Err(e) = history.save(store) {
        log::error(log::chain(&e));
    }
    let Some(change) = change else {
        return;
    };
    ctx.slot_fallback = change.fallback.clone();
    log::info(format!(
        "healthy on {} after {}{}",
        now.describe(),
        change.previous.describe(),
        change
            .fallback
            .as_ref()
            .map(|f| format!(" (fallback: {f})"))
            .unwrap_or_default()
    ));
    if !first_boot_passed {
        return;
    }
    let event = Event::SlotChanged {
        previous_slot: change.previous.slot,
        previous_manifest_sha256: change.previous.manifest_sha256,
    };
    let bgp = crate::stages::bgp::report(ctx);
    match crate::installation::queue(ctx, event, results, bgp) {
        Ok(id) => log::info(format!("slot-changed report {id} queued")),
        Err(e) => log::error(format!(
            "cannot queue the slot-changed report: {}",
            log::chain(&e)
        )),
    }
}

/// A later boot, not on trial, stopped at `stage` while the other slot had failed its trial:
/// both slots are bad. Says so on the console and queues a signed `slot-changed` report whose
/// fallback names both (the caller has brought the management network up). The box stays off
/// the air: systemd-boot keeps booting this blessed slot, and nothing announces.
pub fn both_bad(
    ctx: &mut Context,
    store: &Store,
    stage: imrs_config::stage::Stage,
    why: &str,
    results: &[StageResult],
) {
    let now = SlotRun::of(ctx.slot, ctx.manifest_sha256.as_deref());
    let history = History::load(store, &mut |w| log::warn(w));
    let Some(failed) = history.failed_other(&now) else {
        return;
    };
    let text = format!(
        "BOTH SLOTS ARE BAD: {}, last: {}; {} is not healthy either: stage {stage} failed: \
         {why}; the box stays off the air (no DNS service, no BGP) until an operator acts",
        failed.gave_up(),
        failed.why,
        now.describe()
    );
    log::error(&text);
    ctx.slot_fallback = Some(cut(&text));
    let event = Event::SlotChanged {
        previous_slot: failed.run.slot.clone(),
        previous_manifest_sha256: failed.run.manifest_sha256.clone(),
    };
    let bgp = crate::stages::bgp::report(ctx);
    match crate::installation::queue(ctx, event, results, bgp) {
        Ok(id) => log::info(format!("slot-changed report {id} (both slots bad) queued")),
        Err(e) => log::error(format!(
            "cannot queue the slot-changed report: {}",
            log::chain(&e)
        )),
    }
}

/// Why a pipeline that ended did not make the node healthy, from its results.
pub fn unhealthy_reason(results: &[StageResult]) -> String {
    if let Some(r) = results
        .iter()
        .find(|r| matches!(r.outcome, Some(crate::outcome::Outcome::Failed(_))))
    {
        return format!(
            "stage {} failed: {}",
            r.stage,
            r.outcome.as_ref().and_then(|o| o.reason()).unwrap_or("")
        );
    }
    match results.iter().rev().find(|r| r.outcome.is_some()) {
        Some(last) => format!(
            "the pipeline ended after stage {} without reaching bgp",
            last.stage
        ),
        None => "the pipeline ran no stage".into(),
    }
}

fn cut(s: &str) -> String {
    log::cut(s, MAX_WHY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Outcome;
    use imrs_config::stage::Stage;
    use imrs_disk::{EntryName, Slot};

    fn run(slot: Slot, m: char) -> SlotRun {
        SlotRun::of(Some(slot), Some(&m.to_string().repeat(64)))
    }

    #[test]
    fn an_update_that_took_is_a_change_without_fallback() {
        let mut h = History::fresh();
        assert_eq!(h.healthy(run(Slot::A, 'a')), None, "first healthy boot");
        assert_eq!(h.healthy(run(Slot::A, 'a')), None, "same slot again");
        let c = h.healthy(run(Slot::B, 'b')).unwrap();
        assert_eq!(c.previous, run(Slot::A, 'a'));
        assert_eq!(c.fallback, None);
        assert_eq!(h.last_healthy, Some(run(Slot::B, 'b')));
    }

    #[test]
    fn a_failed_trial_then_the_old_slot_is_a_fallback() {
        let mut h = History::fresh();
        h.healthy(run(Slot::A, 'a'));
        let entry = EntryName::parse("imrs-b+1-1.conf").unwrap();
        h.trial_failed(run(Slot::B, 'b'), &entry, "stage dns failed: x", 7);
        let entry = EntryName::parse("imrs-b+0-2.conf").unwrap();
        h.trial_failed(run(Slot::B, 'b'), &entry, "stage dns failed: y", 8);
        assert_eq!(h.failed_trial.as_ref().unwrap().tries_failed, 2);
        let pending = h.pending_fallback(&run(Slot::A, 'a')).unwrap();
        assert!(pending.contains("slot b (image bbbbbbbbbbbb)"), "{pending}");
        assert_eq!(h.pending_fallback(&run(Slot::B, 'b')), None);
        let c = h.healthy(run(Slot::A, 'a')).unwrap();
        assert_eq!(c.previous, run(Slot::B, 'b'));
        let f = c.fallback.unwrap();
        assert!(
            f.contains("(entry imrs-b+0-2.conf) gave up 2 boot(s)")
                && f.contains("stage dns failed: y")
                && f.ends_with("went back to slot a (image aaaaaaaaaaaa)"),
            "{f}"
        );
        assert_eq!(h.failed_trial, None);
        assert_eq!(h.healthy(run(Slot::A, 'a')), None, "reported once");
    }

    #[test]
    fn a_trial_healthy_on_a_later_try_is_no_fallback() {
        let mut h = History::fresh();
        h.healthy(run(Slot::A, 'a'));
        let entry = EntryName::parse("imrs-b+2-1.conf").unwrap();
        h.trial_failed(run(Slot::B, 'b'), &entry, "not healthy after 900 s", 3);
        let c = h.healthy(run(Slot::B, 'b')).unwrap();
        assert_eq!(c.fallback, None);
        assert_eq!(c.previous, run(Slot::A, 'a'));
    }

    #[test]
    fn damaged_history_starts_afresh_and_saves_atomically() {
        let t = tempfile::tempdir().unwrap();
        let store = Store {
            dir: t.path().to_path_buf(),
            persistent: true,
        };
        let mut warnings = Vec::new();
        assert_eq!(
            History::load(&store, &mut |w| warnings.push(w)),
            History::fresh()
        );
        assert!(warnings.is_empty());
        let mut h = History::fresh();
        h.healthy(run(Slot::A, 'a'));
        h.save(&store).unwrap();
        assert_eq!(History::load(&store, &mut |w| warnings.push(w)), h);
        for bad in [
            &b"{\"version\": 1, \"colour\": 1}"[..],
            b"\x00\xff",
            b"{\"version\": 9}",
        ] {
            std::fs::write(t.path().join(HISTORY_FILE), bad).unwrap();
            assert_eq!(
                History::load(&store, &mut |w| warnings.push(w)),
                History::fresh()
            );
        }
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(warnings.iter().all(|w| w.contains("slots.json")));
    }

    #[test]
    fn reasons_name_the_failed_stage_or_where_the_pipeline_ended() {
        let r = |stage, outcome| StageResult {
            stage,
            outcome,
            seconds: 0.0,
        };
        let failed = [
            r(Stage::Site, Some(Outcome::Passed)),
            r(Stage::Dns, Some(Outcome::Failed("nsd exited".into()))),
            r(Stage::Bgp, None),
        ];
        assert_eq!(unhealthy_reason(&failed), "stage dns failed: nsd exited");
        let stopped = [r(Stage::Zone, Some(Outcome::Passed)), r(Stage::Dns, None)];
        assert_eq!(
            unhealthy_reason(&stopped),
            "the pipeline ended after stage zone without reaching bgp"
        );
        assert!(cut(&"é".repeat(3000)).len() <= MAX_WHY);
    }
}
