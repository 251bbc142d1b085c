//! Signed commands from the operations team, device side: what the box decides about each one
//! the receiver hands it, and the ledger that makes every command run at most once.
//!
//! The receiver's answer to a report carries the device's unresolved commands
//! ([`crate::phonehome::deliver`] collects them). Each is judged by
//! [`imrs_config::command::admit`] against the operations keys of the signed site config, this
//! box's device key and the ledger's highest processed sequence:
//!
//! - admitted (the next sequence, unexpired, for this key): recorded in the ledger as processed
//!   **before** it runs, so a reboot in the middle cannot run it twice; the boot after such a
//!   reboot reports it (done for `reboot`, failed "interrupted" otherwise);
//! - `update` and `rollback` write the other slot ([`crate::slot_update`], off the event loop)
//!   and, once it is written and the ledger says so, reboot into it; the first healthy boot
//!   after reports the result: done when it runs the slot and image written (blessed by then),
//!   failed when the new slot never became healthy and systemd-boot went back to the old one;
//! - expired or badly timed but otherwise genuine (signed, for this key, the next sequence):
//!   refused and its sequence consumed, so the commands queued after it can run;
//! - anything else (unknown signer, bad signature, malformed, another device, a gap, a replay):
//!   refused, nothing consumed;
//! - the same signed text again while the result of its first processing is still in the
//!   outbox: skipped silently (the receiver hands every unresolved command out with every
//!   answer until the result arrives). Once the result was delivered, the same text again is a
//!   replay and refused as one, once: every distinct signed text gets at most one refusal
//!   report, so a receiver that keeps handing one out cannot make the box report per answer.
//!
//! Every refusal and every execution comes back as a signed `command-result` report.

use std::collections::VecDeque;

use ed25519_dalek::VerifyingKey;
use imrs_config::command::{self, Action, Command, Refusal, SignedCommand};
use imrs_config::report::CommandOutcome;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::context::Context;
use crate::health::driver;
use crate::outcome::StageResult;
use crate::state::{StateError, Store};
use crate::{installation, log, slot_update};
use imrs_config::report::Event;

/// The ledger's file in the state folder.
pub const LEDGER_FILE: &str = "commands.json";
/// Ledger format version.
pub const LEDGER_VERSION: u32 = 1;
/// Processed commands remembered (for telling a redelivery from a replay).
pub const REMEMBERED: usize = 32;
/// Largest ledger file read.
const MAX_LEDGER_BYTES: u64 = 64 << 10;

/// One processed command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Processed {
    /// Its sequence.
    pub sequence: u64,
    /// sha256 of the signed text.
    pub digest: String,
    /// The id of the `command-result` report queued for it (empty while it runs).
    pub result_report: String,
    /// A refusal was reported for this text (at its first delivery, or when it came back
    /// after its result had been delivered: a replay). Once is enough: the same text again is
    /// skipped silently, so a receiver that keeps handing it out cannot make the box send a
    /// report per answer.
    #[serde(default)]
    pub refusal_reported: bool,
}

/// What the box has done with commands, in the state folder.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Ledger {
    /// [`LEDGER_VERSION`].
    pub version: u32,
    /// The highest sequence processed (executed, or refused as expired).
    pub last_sequence: u64,
    /// The latest processed commands, oldest first.
    pub recent: VecDeque<Processed>,
    /// A command that started and has no result yet (the box rebooted while it ran).
    pub running: Option<Running>,
}

/// A command being executed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Running {
    /// Its sequence.
    pub sequence: u64,
    /// Its action's name.
    pub action: String,
    /// For `update` and `rollback`: the slot written, once it was (the box then reboots into
    /// it; the boot that reaches health reports how it went).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written: Option<WrittenSlot>,
}

/// The slot an `update` or `rollback` wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrittenSlot {
    /// `a` or `b`.
    pub slot: String,
    /// sha256 of the manifest written there.
    pub manifest_sha256: String,
    /// "image NAME VERSION".
    pub image: String,
}

/// The decision on one signed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Run it (the ledger was updated first by [`Ledger::begin`]).
    Execute(Command),
    /// Refuse it and say why; `consume`: its sequence is used up.
    Refuse {
        /// The sequence it claims (0 when unreadable).
        sequence: u64,
        /// Its action's name (`unknown` when unreadable).
        action: String,
        /// Why.
        refusal: Refusal,
        /// Genuine but expired: the next sequence may run.
        consume: bool,
    },
    /// A redelivery of a command whose result is still on its way.
    Skip,
}

/// sha256 of a signed command's text, hex.
pub fn digest(signed: &SignedCommand) -> String {
    hex::encode(Sha256::digest(signed.command.as_bytes()))
}

/// What the signed text claims, without trusting it (for refusal reports only).
fn claimed(signed: &SignedCommand) -> (u64, String) {
    #[derive(Deserialize)]
    struct Claim {
        #[serde(default)]
        sequence: u64,
        #[serde(default)]
        action: Option<serde_json::Value>,
    }
    match serde_json::from_str::<Claim>(&signed.command) {
        Ok(c) => (
            c.sequence,
            c.action
                .and_then(|a| a.get("kind").and_then(|k| k.as_str()).map(str::to_string))
                .filter(|k| {
                    !k.is_empty()
                        && k.len() <= 32
                        && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
                })
                .unwrap_or_else(|| "unknown".into()),
        ),
        Err(_) => (0, "unknown".into()),
    }
}

impl Ledger {
    /// An empty ledger.
    pub fn fresh() -> Ledger {
        Ledger {
            version: LEDGER_VERSION,
            ..Ledger::default()
        }
    }

    /// Reads the ledger; absent is fresh. A damaged one is an error: starting afresh would let
    /// every command already executed run again.
    pub fn load(store: &Store) -> Result<Ledger, String> {
        let path = store.dir.join(LEDGER_FILE);
        let bytes = match imrs_config::fsutil::read_limited(&path, MAX_LEDGER_BYTES) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Ledger::fresh()),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        match serde_json::from_slice::<Ledger>(&bytes) {
            Ok(l) if l.version == LEDGER_VERSION => Ok(l),
            Ok(l) => Err(format!(
                "{}: ledger version {} (this build: {LEDGER_VERSION})",
                path.display(),
                l.version
            )),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Saves the ledger atomically.
    pub fn save(&self, store: &Store) -> Result<(), StateError> {
        store.save_json(LEDGER_FILE, self)
    }

    /// Decides on `signed` for device key `device` trusting `ops` at `now_unix`;
    /// `result_pending(report id)` says whether a result report is still in the outbox.
    pub fn decide(
        &self,
        signed: &SignedCommand,
        ops: &[VerifyingKey],
        device: &str,
        now_unix: i64,
        result_pending: &dyn Fn(&str) -> bool,
    ) -> Decision {
        let d = digest(signed);
        if let Some(p) = self.recent.iter().find(|p| p.digest == d)
            && (p.result_report.is_empty()
                || p.refusal_reported
                || result_pending(&p.result_report))
        {
            return Decision::Skip;
        }
        match command::admit(signed, ops, device, self.last_sequence, now_unix) {
            Ok(cmd) => Decision::Execute(cmd),
            Err(refusal) => {
                let (sequence, action) = claimed(signed);
                // Genuine (it got past signer, signature, form and device) and the next one.
                let consume = matches!(refusal, Refusal::Expired { .. } | Refusal::BadTimes { .. })
                    && sequence == self.last_sequence.saturating_add(1);
                Decision::Refuse {
                    sequence,
                    action,
                    refusal,
                    consume,
                }
            }
        }
    }

    /// Records `signed` (sequence `sequence`) as processed, running `action` when given,
    /// before anything is done about it.
    pub fn begin(&mut self, signed: &SignedCommand, sequence: u64, action: Option<&Action>) {
        self.last_sequence = self.last_sequence.max(sequence);
        self.recent.push_back(Processed {
            sequence,
            digest: digest(signed),
            result_report: String::new(),
            refusal_reported: false,
        });
        while self.recent.len() > REMEMBERED {
            self.recent.pop_front();
        }
        self.running = action.map(|a| Running {
            sequence,
            action: a.name().to_string(),
            written: None,
        });
    }

    /// Notes the result report queued for `signed`, and that nothing runs any more.
    pub fn finish(&mut self, signed: &SignedCommand, report_id: &str) {
        let d = digest(signed);
        if let Some(p) = self.recent.iter_mut().rev().find(|p| p.digest == d) {
            p.result_report = report_id.to_string();
        }
        self.running = None;
    }

    /// Remembers a refusal's result report too, so the same text delivered again while it is
    /// on its way is not refused (and reported) once per answer.
    pub fn refused(&mut self, signed: &SignedCommand, sequence: u64, report_id: &str) {
        let d = digest(signed);
        if let Some(p) = self.recent.iter_mut().find(|p| p.digest == d) {
            // A replay of a command processed before: its own result stays on record.
            p.refusal_reported = true;
            return;
        }
        self.recent.push_back(Processed {
            sequence,
            digest: d,
            result_report: report_id.to_string(),
            refusal_reported: true,
        });
        while self.recent.len() > REMEMBERED {
            self.recent.pop_front();
        }
    }

    /// After a boot: the command that was running when the box went down, with how it ended,
    /// this boot running from `slot` with manifest `manifest` (a `reboot` ended as asked; an
    /// `update` or `rollback` that wrote its slot ended well when this healthy boot runs what
    /// it wrote, and failed when the box is back on the slot it came from; anything else was
    /// interrupted).
    pub fn interrupted(
        &self,
        slot: Option<imrs_disk::Slot>,
        manifest: Option<&str>,
    ) -> Option<(u64, String, CommandOutcome, Option<String>)> {
        let r = self.running.as_ref()?;
        let (outcome, reason) = match (&r.written, r.action.as_str()) {
            (None, "reboot") => (CommandOutcome::Done, None),
            (None, _) => (
                CommandOutcome::Failed,
                Some("interrupted: the box restarted while it ran".to_string()),
            ),
            (Some(w), _) => {
                let now = slot.map_or_else(|| "no disk slot".to_string(), |s| s.to_string());
                if now == w.slot && manifest == Some(w.manifest_sha256.as_str()) {
                    (
                        CommandOutcome::Done,
                        Some(format!(
                            "running {} from slot {}, healthy (the slot is blessed)",
                            w.image, w.slot
                        )),
                    )
                } else {
                    (
                        CommandOutcome::Failed,
                        Some(format!(
                            "{} was written into slot {} but did not become healthy there; \
                             the box runs from {now} again",
                            w.image, w.slot
                        )),
                    )
                }
            }
        };
        Some((r.sequence, r.action.clone(), outcome, reason))
    }
}

/// What a command-result says.
struct Reply {
    sequence: u64,
    action: String,
    outcome: CommandOutcome,
    reason: Option<String>,
    logs: Vec<String>,
}

impl Reply {
    /// An outcome with a reason and no logs.
    fn said(sequence: u64, action: String, outcome: CommandOutcome, reason: String) -> Reply {
        Reply {
            sequence,
            action,
            outcome,
            reason: Some(reason),
            logs: Vec::new(),
        }
    }
}

/// Signs and queues a `command-result`; the report's id, or why it could not be queued.
fn report(ctx: &mut Context, results: &[StageResult], r: Reply) -> Result<String, String> {
    let event = Event::CommandResult {
        sequence: r.sequence,
        action: r.action,
        outcome: r.outcome,
        reason: r.reason.map(|t| log::cut(&t, 4000)),
        logs: r.logs,
    };
    let bgp = crate::stages::bgp::report(ctx);
    installation::start(ctx).map_err(|e| log::chain(&e))?;
    let rep = installation::build(ctx, event, results, bgp).map_err(|e| log::chain(&e))?;
    let id = rep.id.to_string();
    match &ctx.phone {
        Some(p) => p.report(&rep).map(|_| id).map_err(|e| log::chain(&e)),
        None => Err("phone home is not running".into()),
    }
}

/// Runs an `update` or `rollback` off the event loop ([`crate::slot_update`]): the slot written.
async fn write_other_slot(ctx: &Context, action: &Action) -> Result<WrittenSlot, String> {
    let job = match action {
        Action::Update {
            path,
            manifest_sha256,
        } => {
            let site = ctx
                .site
                .as_ref()
                .ok_or("no site config: no receiver to download from")?;
            slot_update::Job::Update {
                receiver: site.phone_home.url.clone(),
                ca_pem: site.phone_home.ca_pem.clone(),
                path: path.clone(),
                manifest_sha256: manifest_sha256.clone(),
            }
        }
        _ => slot_update::Job::Rollback,
    };
    let target = slot_update::Target {
        root: ctx.root.clone(),
        running: ctx.slot,
        profile: ctx.image.as_ref().ok().map(|i| i.profile.name.clone()),
    };
    let w = tokio::task::spawn_blocking(move || slot_update::run(&job, &target))
        .await
        .map_err(|e| format!("the slot writer stopped: {e}"))??;
    Ok(WrittenSlot {
        slot: w.slot.to_string(),
        manifest_sha256: w.manifest_sha256,
        image: w.image,
    })
}

/// The device side of fleet commands for one boot: the ledger (or why there is none) and the
/// state folder it lives in.
pub struct Commands {
    store: Store,
    ledger: Result<Ledger, String>,
}

impl Commands {
    /// Loads the ledger from the state folder. Without a persistent one, no command can be run
    /// at most once: every command is refused, saying so.
    pub fn open(store: &Store) -> Commands {
        let ledger = if store.persistent {
            Ledger::load(store)
        } else {
            Err(format!(
                "the state folder {} does not survive a reboot (no IMRS-DATA), so a command \
                 could run twice",
                store.dir.display()
            ))
        };
        if let Err(e) = &ledger {
            log::warn(format!("fleet commands will be refused: {e}"));
        }
        Commands {
            store: store.clone(),
            ledger,
        }
    }

    /// Reports the command the box was running when it went down (a `reboot` it was asked
    /// for, an `update` or `rollback` that rebooted into the slot it wrote, or one a power cut
    /// interrupted).
    pub fn report_interrupted(&mut self, ctx: &mut Context, results: &[StageResult]) {
        let Ok(ledger) = &mut self.ledger else {
            return;
        };
        let Some((sequence, action, outcome, reason)) =
            ledger.interrupted(ctx.slot, ctx.manifest_sha256.as_deref())
        else {
            return;
        };
        let how = if outcome == CommandOutcome::Done {
            "ended as asked"
        } else {
            "failed"
        };
        log::info(format!(
            "fleet command {sequence} ({action}) {how}{}",
            reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        ));
        match report(
            ctx,
            results,
            Reply {
                sequence,
                action,
                outcome,
                reason,
                logs: Vec::new(),
            },
        ) {
            Ok(id) => {
                if let Some(p) = ledger
                    .recent
                    .iter_mut()
                    .rev()
                    .find(|p| p.sequence == sequence)
                {
                    p.result_report = id;
                }
                ledger.running = None;
                if let Err(e) = ledger.save(&self.store) {
                    log::error(log::chain(&e));
                }
            }
            Err(e) => log::warn(format!("command {sequence}: result not queued: {e}")),
        }
    }

    /// Decides on and runs the commands the receiver's answers carried since the last call.
    /// Returns why the box must reboot now, when a `reboot` was admitted (its result goes out
    /// from the next boot).
    pub async fn poll(&mut self, ctx: &mut Context, results: &[StageResult]) -> Option<String> {
        let signed = ctx
            .phone
            .as_ref()
            .map(|p| p.take_commands())
            .unwrap_or_default();
        for s in signed {
            if let Some(why) = self.one(ctx, results, &s).await {
                return Some(why);
            }
        }
        None
    }

    async fn one(
        &mut self,
        ctx: &mut Context,
        results: &[StageResult],
        signed: &SignedCommand,
    ) -> Option<String> {
        let device = ctx.phone.as_ref()?.key_id().to_string();
        let ops = ctx
            .site
            .as_ref()
            .map(|s| s.fleet.ops_keys())
            .unwrap_or_default();
        let now = jiff::Timestamp::now().as_second();
        let ledger = match &mut self.ledger {
            Ok(l) => l,
            Err(why) => {
                let (sequence, action) = claimed(signed);
                let why = why.clone();
                let r = Reply::said(sequence, action, CommandOutcome::Refused, why);
                self.result(ctx, results, signed, r, false);
                return None;
            }
        };
        let pending = |id: &str| ctx.phone.as_ref().is_some_and(|p| p.waiting(id));
        match ledger.decide(signed, &ops, &device, now, &pending) {
            Decision::Skip => None,
            Decision::Refuse {
                sequence,
                action,
                refusal,
                consume,
            } => {
                log::warn(format!("fleet command refused: {refusal}"));
                if consume {
                    ledger.begin(signed, sequence, None);
                }
                let r = Reply::said(
                    sequence,
                    action,
                    CommandOutcome::Refused,
                    refusal.to_string(),
                );
                self.result(ctx, results, signed, r, consume);
                None
            }
            Decision::Execute(cmd) => {
                ledger.begin(signed, cmd.sequence, Some(&cmd.action));
                // Recorded before it runs, or not run at all.
                if let Err(e) = ledger.save(&self.store) {
                    let why = format!("cannot record it before running it: {}", log::chain(&e));
                    log::error(format!("fleet command {}: {why}", cmd.sequence));
                    ledger.running = None;
                    let r = Reply::said(
                        cmd.sequence,
                        cmd.action.name().into(),
                        CommandOutcome::Failed,
                        why,
                    );
                    self.result(ctx, results, signed, r, true);
                    return None;
                }
                log::info(format!(
                    "fleet command {} from operations key {}: {}",
                    cmd.sequence,
                    signed.signer,
                    cmd.action.name()
                ));
                let inputs = &ctx.serving.inputs;
                let (outcome, reason, logs) = match &cmd.action {
                    Action::Drain {} | Action::Undrain {} => {
                        let drain = cmd.action == Action::Drain {};
                        let was = driver::set_drained(inputs, drain);
                        let what = if drain { "drained" } else { "undrained" };
                        let note = if was == drain {
                            format!("already {what}")
                        } else {
                            what.to_string()
                        };
                        (CommandOutcome::Done, Some(note), Vec::new())
                    }
                    Action::CollectLogs { lines } => (
                        CommandOutcome::Done,
                        None,
                        log::recent(usize::try_from(*lines).unwrap_or(usize::MAX)),
                    ),
                    Action::Telemetry {} => {
                        match crate::heartbeat::telemetry_so_far(ctx, results) {
                            Ok(note) => (CommandOutcome::Done, Some(note), Vec::new()),
                            Err(why) => (CommandOutcome::Failed, Some(why), Vec::new()),
                        }
                    }
                    Action::Reboot {} => {
                        // The result goes out from the next boot (the ledger says it ran).
                        return Some(format!("fleet command {}: reboot", cmd.sequence));
                    }
                    Action::Update {
                        manifest_sha256, ..
                    } if ctx.manifest_sha256.as_deref() == Some(manifest_sha256) => (
                        CommandOutcome::Done,
                        Some(format!(
                            "already running this image (slot {}); nothing written",
                            ctx.slot
                                .map_or_else(|| "none".to_string(), |s| s.to_string())
                        )),
                        Vec::new(),
                    ),
                    Action::Rollback {} | Action::Update { .. } => {
                        match write_other_slot(ctx, &cmd.action).await {
                            Ok(w) => {
                                let why = format!(
                                    "fleet command {}: {} written into slot {}; rebooting into it",
                                    cmd.sequence, w.image, w.slot
                                );
                                log::info(&why);
                                if let Some(r) = &mut ledger.running {
                                    r.written = Some(w);
                                }
                                // Its result comes from the boot that reaches health.
                                match ledger.save(&self.store) {
                                    Ok(()) => return Some(why),
                                    Err(e) => (
                                        CommandOutcome::Failed,
                                        Some(format!(
                                            "the slot was written, but the ledger cannot \
                                             record it: {}; not rebooting into it",
                                            log::chain(&e)
                                        )),
                                        Vec::new(),
                                    ),
                                }
                            }
                            Err(why) => {
                                log::error(format!(
                                    "fleet command {} ({}): {why}",
                                    cmd.sequence,
                                    cmd.action.name()
                                ));
                                (CommandOutcome::Failed, Some(why), Vec::new())
                            }
                        }
                    }
                };
                let r = Reply {
                    sequence: cmd.sequence,
                    action: cmd.action.name().into(),
                    outcome,
                    reason,
                    logs,
                };
                self.result(ctx, results, signed, r, true);
                None
            }
        }
    }

    /// Queues the result and notes it in the ledger (`processed`: the command's sequence was
    /// recorded by [`Ledger::begin`]).
    fn result(
        &mut self,
        ctx: &mut Context,
        results: &[StageResult],
        signed: &SignedCommand,
        r: Reply,
        processed: bool,
    ) {
        let sequence = r.sequence;
        let refusal = r.outcome == CommandOutcome::Refused;
        let id = match report(ctx, results, r) {
            Ok(id) => id,
            Err(e) => {
                log::warn(format!("command {sequence}: result not queued: {e}"));
                String::new()
            }
        };
        let Ok(ledger) = &mut self.ledger else {
            return;
        };
        if processed {
            ledger.finish(signed, &id);
            if refusal && !id.is_empty() {
                // Expired: refused and consumed; the same text again is not reported again.
                ledger.refused(signed, sequence, &id);
            }
        } else if !id.is_empty() {
            ledger.refused(signed, sequence, &id);
        }
        if let Err(e) = ledger.save(&self.store) {
            log::error(log::chain(&e));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imrs_config::command::COMMAND_VERSION;
    use imrs_config::keys;

    const NOW: i64 = 1_785_542_400;

    fn cmd(device: &str, sequence: u64, expires: i64, action: Action) -> Command {
        Command {
            version: COMMAND_VERSION,
            device: device.into(),
            sequence,
            issued_unix: NOW - 10,
            expires_unix: expires,
            action,
        }
    }

    #[test]
    fn each_command_runs_once_in_order_and_refusals_say_why() {
        let ops = keys::generate().unwrap();
        let image = keys::generate().unwrap();
        let opk = [ops.verifying_key()];
        let dev = "dev1";
        let sign = |c: &Command| command::sign(c, &ops);
        let mut l = Ledger::fresh();
        let none_pending = |_: &str| false;
        let all_pending = |_: &str| true;

        // The next one runs; it is recorded before it runs.
        let c1 = sign(&cmd(dev, 1, NOW + 60, Action::Drain {}));
        let d = l.decide(&c1, &opk, dev, NOW, &none_pending);
        assert!(
            matches!(&d, Decision::Execute(c) if c.sequence == 1),
            "{d:?}"
        );
        l.begin(&c1, 1, Some(&Action::Drain {}));
        assert_eq!(l.last_sequence, 1);
        assert_eq!(l.running.as_ref().unwrap().action, "drain");
        // Delivered again while it runs or while its result is on the way: skipped.
        assert_eq!(l.decide(&c1, &opk, dev, NOW, &none_pending), Decision::Skip);
        l.finish(&c1, "report-1");
        assert_eq!(l.running, None);
        assert_eq!(l.decide(&c1, &opk, dev, NOW, &all_pending), Decision::Skip);
        // Once the result was delivered, the same text again is a replay.
        match l.decide(&c1, &opk, dev, NOW, &none_pending) {
            Decision::Refuse {
                sequence: 1,
                refusal: Refusal::Replayed { .. },
                consume: false,
                action,
            } => assert_eq!(action, "drain"),
            other => panic!("{other:?}"),
        }
        // The replay's refusal is reported once; the same text after that is skipped (a
        // receiver handing it out with every answer cannot make a report per answer), and
        // the command's own result stays on record.
        l.refused(&c1, 1, "report-1-replay");
        assert_eq!(l.decide(&c1, &opk, dev, NOW, &none_pending), Decision::Skip);
        assert_eq!(l.recent.back().unwrap().result_report, "report-1");
        let junk_once = SignedCommand {
            command: "{}".into(),
            signature: "00".into(),
            signer: "nobody".into(),
        };
        assert!(matches!(
            l.decide(&junk_once, &opk, dev, NOW, &none_pending),
            Decision::Refuse { .. }
        ));
        l.refused(&junk_once, 0, "report-junk");
        assert_eq!(
            l.decide(&junk_once, &opk, dev, NOW, &none_pending),
            Decision::Skip
        );

        // Expired, the next sequence: refused, its sequence used up.
        let c2 = sign(&cmd(dev, 2, NOW - 1, Action::Reboot {}));
        match l.decide(&c2, &opk, dev, NOW, &none_pending) {
            Decision::Refuse {
                refusal: Refusal::Expired { .. },
                consume: true,
                ..
            } => {}
            other => panic!("{other:?}"),
        }
        l.begin(&c2, 2, None);
        l.finish(&c2, "report-2");
        // So 3 may run; 5 is a gap (refused, nothing consumed).
        let c5 = sign(&cmd(dev, 5, NOW + 60, Action::Undrain {}));
        assert!(matches!(
            l.decide(&c5, &opk, dev, NOW, &none_pending),
            Decision::Refuse {
                refusal: Refusal::Gap { expected: 3, .. },
                consume: false,
                ..
            }
        ));
        let c3 = sign(&cmd(dev, 3, NOW + 60, Action::Undrain {}));
        assert!(matches!(
            l.decide(&c3, &opk, dev, NOW, &none_pending),
            Decision::Execute(_)
        ));
        // Expired but not the next: not consumed (a gap would be skipped over).
        let c9 = sign(&cmd(dev, 9, NOW - 1, Action::Reboot {}));
        assert!(matches!(
            l.decide(&c9, &opk, dev, NOW, &none_pending),
            Decision::Refuse { consume: false, .. }
        ));

        // Signed by the image key, for another device, tampered: refused, nothing consumed.
        let forged = command::sign(&cmd(dev, 3, NOW + 60, Action::Reboot {}), &image);
        assert!(matches!(
            l.decide(&forged, &opk, dev, NOW, &none_pending),
            Decision::Refuse {
                refusal: Refusal::UnknownSigner { .. },
                consume: false,
                ..
            }
        ));
        let other = sign(&cmd("dev2", 3, NOW + 60, Action::Reboot {}));
        assert!(matches!(
            l.decide(&other, &opk, dev, NOW, &none_pending),
            Decision::Refuse {
                refusal: Refusal::OtherDevice { .. },
                ..
            }
        ));
        let mut tampered = c3.clone();
        tampered.command = tampered.command.replace("undrain", "reboot");
        match l.decide(&tampered, &opk, dev, NOW, &none_pending) {
            Decision::Refuse {
                refusal: Refusal::BadSignature { .. },
                action,
                sequence: 3,
                ..
            } => assert_eq!(action, "reboot", "what it claims, for the report"),
            other => panic!("{other:?}"),
        }
        let junk = SignedCommand {
            command: "\u{1b}[2J not json".into(),
            signature: "00".into(),
            signer: keys::key_id(&ops.verifying_key()),
        };
        assert!(matches!(
            l.decide(&junk, &opk, dev, NOW, &none_pending),
            Decision::Refuse { sequence: 0, ref action, .. } if action == "unknown"
        ));
        assert_eq!(l.last_sequence, 2, "no refusal moved the sequence");
    }

    #[test]
    fn the_ledger_survives_a_reboot_and_a_damaged_one_is_not_forgotten() {
        let d = tempfile::tempdir().unwrap();
        let store = crate::state::open(
            std::path::Path::new("/nonexistent"),
            Some(d.path()),
            false,
            &mut |w| panic!("{w}"),
        );
        assert_eq!(Ledger::load(&store).unwrap(), Ledger::fresh());
        let ops = keys::generate().unwrap();
        let c = command::sign(&cmd("dev1", 1, NOW + 60, Action::Reboot {}), &ops);
        let mut l = Ledger::fresh();
        l.begin(&c, 1, Some(&Action::Reboot {}));
        l.save(&store).unwrap();
        let back = Ledger::load(&store).unwrap();
        assert_eq!(back, l);
        assert_eq!(
            back.interrupted(None, None),
            Some((1, "reboot".into(), CommandOutcome::Done, None))
        );
        let c2 = command::sign(&cmd("dev1", 2, NOW + 60, Action::Drain {}), &ops);
        let mut l2 = back.clone();
        l2.begin(&c2, 2, Some(&Action::Drain {}));
        assert!(matches!(
            l2.interrupted(None, None),
            Some((2, _, CommandOutcome::Failed, Some(_)))
        ));
        // An update: cut before its slot was written, it was interrupted; written, it ended
        // well only when the healthy boot runs the slot and manifest it wrote.
        let update = Action::Update {
            path: format!("/v1/images/{}", "ab".repeat(32)),
            manifest_sha256: "ab".repeat(32),
        };
        let c3 = command::sign(&cmd("dev1", 3, NOW + 60, update.clone()), &ops);
        let mut l3 = l2.clone();
        l3.begin(&c3, 3, Some(&update));
        let (_, _, o, why) = l3.interrupted(Some(imrs_disk::Slot::A), None).unwrap();
        assert_eq!(o, CommandOutcome::Failed);
        assert!(why.unwrap().starts_with("interrupted"));
        l3.running.as_mut().unwrap().written = Some(WrittenSlot {
            slot: "b".into(),
            manifest_sha256: "ab".repeat(32),
            image: "image imrs 2".into(),
        });
        l3.save(&store).unwrap();
        let l3 = Ledger::load(&store).unwrap();
        let b = imrs_disk::Slot::B;
        let (_, a, o, why) = l3.interrupted(Some(b), Some(&"ab".repeat(32))).unwrap();
        assert_eq!((a.as_str(), o), ("update", CommandOutcome::Done));
        assert_eq!(
            why.unwrap(),
            "running image imrs 2 from slot b, healthy (the slot is blessed)"
        );
        let back_on_a = l3.interrupted(Some(imrs_disk::Slot::A), Some(&"cd".repeat(32)));
        let (_, _, o, why) = back_on_a.unwrap();
        assert_eq!(o, CommandOutcome::Failed);
        assert!(why.unwrap().ends_with("the box runs from a again"));
        std::fs::write(d.path().join(LEDGER_FILE), b"{ torn").unwrap();
        let e = Ledger::load(&store).unwrap_err();
        assert!(e.contains(LEDGER_FILE), "{e}");
    }
}
