//! The scenarios: what the lab does around the appliance's boots and what it expects to see.
//!
//! | scenario | the lab | expected |
//! |---|---|---|
//! | `normal` | everything up | every stage passes, serving, one `install-passed` report |
//! | `tampered-zone` | the transfer server serves the zone with one glue A record changed; once the box has reported and refused it twice, the good zone | zone stage fails and fails again when tried again, an `install-failed` report names stage `zone`, nothing is announced; then the zone passes, the box serves and reports `install-passed` (the host told both) |
//! | `xfr-down` | transfer server started ~30 s after QEMU | passes once the server is there |
//! | `nts` | everything up; the site's time from the lab's NTS server (chronyd with this run's certificate for `nts.lab.test`, an hour ahead of the guest's RTC); `imrs.clock_resync=20` | the clock stage sets the clock through NTS (moved by about an hour), every stage passes, serving, one `install-passed` report; the clock set again while serving (moved by no more than 2 s) |
//! | `receiver-down` | receiver started ~30 s after the box reaches phone-home | passes; the report arrives after the receiver starts |
//! | `power-cut` | QEMU killed when the zone stage starts (BIRD already runs in parallel), then booted again on the same disk | resumes (hardware done earlier, BIRD started again), passes, exactly one install report |
//! | `second-boot` | a normal pass, QEMU stopped, booted again on the same disk | serving again, no new install report, a heartbeat with the zone's serial |
//! | `update` (`--boot disk`) | a normal pass from slot A, the image written into slot B with a boot counter, booted again | B is tried, serves, is blessed; a `slot-changed` report names A as before |
//! | `rollback` (`--boot disk`) | a normal pass from slot A, slot B written with one try and an image that cannot become healthy (`imrs.stop_after=zone` on its entry: it never brings BGP up), booted until it is back on A | B is tried once, gives up, is not blessed; the box boots A again, serves, and a `slot-changed` report names B and why it fell back |
//! | `power-cut-update` (`--boot disk`) | a normal pass from slot A; while it still runs an update into slot B loses power half-way (its writes stop) and QEMU is killed; booted again | the box boots A, serves, B has no entry, no new report |
//! | `remote-update` (`--boot disk`) | a normal pass from slot A; once heartbeats arrive, a second image (the first one's kernel and initramfs under a manifest with another version, signed with the image key) published at the receiver and a signed `update` queued (`fleet command DEVICE update`) | the box picks it up within a heartbeat, downloads and verifies it, writes slot B and reboots; B is tried, serves, is blessed; the command's result says done and the heartbeats after it name slot B and the new manifest; then a signed `rollback`: slot A is written again from its own (re-verified) files, tried, serves, is blessed, the result says done and the heartbeats name A and the first manifest |
//! | `remote-drain` | a normal pass; once heartbeats arrive, a signed `drain` command queued at the receiver (`fleet command`), then `undrain` | the box picks each up with the answer to a report; the router loses the specifics within 2 s of the pickup while `. SOA` is still answered, gets them back after `undrain`; both commands done; then a genuine command past its expiry and drain's signed text handed out again are both refused (the expired one resolved as refused with the reason, the replay reported refused once) |
//!
//! "Serving" means: the router holds the specific prefixes (199.7.83.0/24, 2001:500:9f::/48)
//! from AS 20144 and the appliance answers `. SOA` on its IPv4 service address.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use imrs_config::imrs::{IMRS_ASN, IMRS_PREFIXES, PrefixKind};
use serde::Serialize;

use super::console::{Event, Status, Tracker};
use super::plan::Plan;
use super::probe::{self, SoaAnswer, Transport};
use super::receiver::{self, Receiver, StoredReport};
use super::site::Tls;
use super::summary::{BootOutcome, Check, Summary};
use super::telemetry::{self, Traffic};
use super::vm::{Vm, VmConfig};
use super::xfr::XfrServer;
use super::zone::LabZone;
use crate::host::netns::NetNs;
use crate::host::nts::{Nts, NtsConfig};
use crate::host::router::{self, Neighbor, Route, Router, RouterKind};
use crate::host::signal;
use crate::qemu::Accel;
use crate::ui::Ui;

/// The tap device's name inside the lab namespace.
pub const TAP: &str = "imrs-tap0";

/// What the lab simulates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Everything works: the full first boot.
    Normal,
    /// The full first boot with the site's time from the lab's NTS server.
    Nts,
    /// The transfer server serves a zone with one glue A record changed.
    TamperedZone,
    /// The transfer server comes up only ~30 s after boot.
    XfrDown,
    /// The receiver comes up only ~30 s after the box reaches phone-home.
    ReceiverDown,
    /// Power cut while the zone stage runs, then a boot on the same disk.
    PowerCut,
    /// A normal pass, then an update into slot B and a boot from it (`--boot disk` only).
    Update,
    /// A normal pass, then a signed `update` through the receiver (`--boot disk` only).
    RemoteUpdate,
    /// A normal pass, then a second boot on the same disk.
    SecondBoot,
    /// A normal pass, then slot B written with an image that cannot become healthy: tried,
    /// not blessed, the box goes back to A (`--boot disk` only).
    Rollback,
    /// A normal pass, then an update into slot B cut by a power cut half-way (`--boot disk`
    /// only).
    PowerCutUpdate,
    /// A normal pass, then signed `drain` and `undrain` commands through the receiver.
    RemoteDrain,
    /// The guest's clock starts shortly before midnight UTC: the day's traffic is reported
    /// after midnight and turned into RSSAC002 documents at the receiver.
    Telemetry,
}

impl Scenario {
    /// Every scenario.
    pub const ALL: [Scenario; 13] = [
        Scenario::Normal,
        Scenario::Nts,
        Scenario::TamperedZone,
        Scenario::XfrDown,
        Scenario::ReceiverDown,
        Scenario::PowerCut,
        Scenario::SecondBoot,
        Scenario::Update,
        Scenario::Rollback,
        Scenario::PowerCutUpdate,
        Scenario::RemoteDrain,
        Scenario::RemoteUpdate,
        Scenario::Telemetry,
    ];

    /// Whether it needs the appliance disk's slots (`--boot disk`).
    pub fn needs_disk(self) -> bool {
        matches!(
            self,
            Scenario::Update
                | Scenario::Rollback
                | Scenario::PowerCutUpdate
                | Scenario::RemoteUpdate
        )
    }

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Normal => "normal",
            Scenario::Nts => "nts",
            Scenario::TamperedZone => "tampered-zone",
            Scenario::XfrDown => "xfr-down",
            Scenario::ReceiverDown => "receiver-down",
            Scenario::PowerCut => "power-cut",
            Scenario::SecondBoot => "second-boot",
            Scenario::Update => "update",
            Scenario::Rollback => "rollback",
            Scenario::PowerCutUpdate => "power-cut-update",
            Scenario::RemoteDrain => "remote-drain",
            Scenario::RemoteUpdate => "remote-update",
            Scenario::Telemetry => "telemetry",
        }
    }

    /// What it expects, in one sentence.
    pub fn expectation(self) -> &'static str {
        match self {
            Scenario::Normal => {
                "every stage passes, the box serves (specifics at the router, . SOA answered) and one verified install-passed report arrives"
            }
            Scenario::Nts => {
                "with the site's time from the lab's NTS server (an hour ahead of the guest's RTC), the clock stage sets the clock through NTS, every stage passes, the box serves and one verified install-passed report arrives"
            }
            Scenario::TamperedZone => {
                "the box refuses the zone: stage zone fails (and again when tried again), nothing is announced, an install-failed report names stage zone; once the transfer server hands out the good zone the box passes, serves and reports install-passed"
            }
            Scenario::XfrDown => {
                "the zone stage waits for the transfer server that comes up late, then the box passes and serves"
            }
            Scenario::ReceiverDown => {
                "the box passes and serves; its report arrives once the late receiver is up"
            }
            Scenario::PowerCut => {
                "after a power cut during the zone stage the next boot resumes, passes and serves, with exactly one install report"
            }
            Scenario::SecondBoot => {
                "after a normal pass, a second boot on the same disk serves again without a new install report, and heartbeats arrive"
            }
            Scenario::Update => {
                "after a normal pass from slot A, the image written into slot B with a boot counter is tried, serves, is blessed by the init, and a slot-changed report names slot A as before"
            }
            Scenario::Rollback => {
                "slot B, written with an image that cannot become healthy, is tried, gives up and is not blessed; the box comes back on slot A, serves, and a slot-changed report says B fell back and why"
            }
            Scenario::PowerCutUpdate => {
                "an update into slot B cut by a power cut half-way leaves B without an entry: the box boots slot A again and serves"
            }
            Scenario::RemoteUpdate => {
                "a signed update command for a second image, queued at the receiver once heartbeats arrive, is picked up within a heartbeat; the box downloads and verifies the image, writes slot B, reboots into it, serves, blesses it, reports the command done, and its heartbeats name slot B and the new image; a signed rollback then brings it back to slot A the same way"
            }
            Scenario::Telemetry => {
                "with the guest's clock starting 90 s before midnight UTC, the box serves, the lab's queries are counted, and after midnight a complete telemetry report for the day that ended arrives; fleet rssac002 turns it into the five RSSAC002 documents (fleet and device) with exactly the lab's traffic"
            }
            Scenario::RemoteDrain => {
                "a signed drain command queued at the receiver is picked up with the answer to a report and the router loses the specifics within 2 s while . SOA is still answered; undrain brings them back; both results say done; an expired command and a replay of drain are refused with their reasons"
            }
        }
    }
}

/// Everything a scenario needs, prepared by [`super::run`].
#[derive(Debug, Clone)]
pub struct Lab {
    /// Work folder (logs, disk, databases).
    pub workdir: PathBuf,
    /// Image folder.
    pub image: PathBuf,
    /// The lab disk.
    pub disk: PathBuf,
    /// Network plan.
    pub plan: Plan,
    /// Receiver TLS.
    pub tls: Tls,
    /// Accelerator.
    pub accel: Accel,
    /// Time limit of one boot.
    pub boot_timeout: Duration,
    /// Delay of the late transfer server / receiver.
    pub late: Duration,
    /// The imrs-build binary (runs the receiver).
    pub exe: PathBuf,
    /// Guest memory, MiB.
    pub memory_mib: u32,
    /// Output settings.
    pub ui: Ui,
    /// Changed glue record (tampered-zone), filled in when the server starts.
    pub tampered: Option<String>,
    /// The zone the transfer server serves and the guest's clock (`--zone`).
    pub zone: LabZone,
    /// The host's router (`--router`).
    pub router: RouterKind,
    /// How the appliance boots (`--boot`).
    pub boot: super::LabBoot,
    /// This run's operations key (in the site config; `ops-key` in the work folder).
    pub ops: ed25519_dalek::SigningKey,
    /// The image's site-signing key (`--key`, the lab's own with a recipe); `remote-update`
    /// signs its second image with it, so it must also be the image's signing key.
    pub image_key: ed25519_dalek::SigningKey,
    /// The image's DNS daemon (what must listen on port 53).
    pub dns: imrs_config::recipe::DnsImpl,
    /// The host organisation's notices, when the site's `[host]` names anyone.
    pub notices: Option<super::notices::Notices>,
    /// The operators' token of this run (`operator-token`): the receiver serves its pages.
    pub operator_token: (PathBuf, String),
}

impl Lab {
    fn console_log(&self) -> PathBuf {
        self.workdir.join("console.log")
    }

    /// The console of one boot (the part after its header in the console log).
    fn console_of(&self, label: &str) -> String {
        let console = std::fs::read_to_string(self.console_log()).unwrap_or_default();
        console
            .rsplit(&super::vm::console_header(label))
            .next()
            .unwrap_or("")
            .to_string()
    }

    fn db(&self) -> PathBuf {
        self.workdir.join("receiver/reports.sqlite")
    }

    fn progress(&self, msg: impl AsRef<str>) {
        self.ui.info(msg);
    }
}

/// The host side, stopped in field order when dropped: the host's inboxes, receiver, transfer
/// server, NTS server, router, then the namespace with the tap.
struct Services {
    inbox: Option<super::notices::Inbox>,
    receiver: Option<Receiver>,
    xfr: Option<XfrServer>,
    nts: Option<Nts>,
    router: Router,
    ns: NetNs,
}

/// What ends a boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Goal {
    /// The first boot's full pass: serving and an install report.
    Install,
    /// A later boot: serving, then a while to see whether a report comes.
    Serving,
    /// A later boot: serving and a new report (not a heartbeat) at the receiver.
    ServingReport,
    /// A later boot: serving and a heartbeat at the receiver.
    ServingHeartbeat,
    /// The box gives the boot up and reboots by itself (QEMU ends: `-no-reboot`).
    Reboots,
    /// Pull the plug when this stage starts.
    KillAt(&'static str),
    /// The full pass, then `drain` and `undrain` through the receiver ([`Remote`]).
    RemoteDrain,
    /// The full pass, then an `update` through the receiver; ends when the box reboots into
    /// the slot it wrote (QEMU ends: `-no-reboot`).
    RemoteUpdate,
    /// A later boot: once the commands are resolved, a `rollback` through the receiver; ends
    /// when the box reboots into the other slot.
    RemoteRollback,
    /// A later boot: serving, every command resolved, and a heartbeat.
    CommandsResolved,
    /// The full pass, the lab's traffic once serving, then a `telemetry` report.
    Telemetry,
}

/// The `remote-drain` steps, with when each was seen (seconds since QEMU start).
#[derive(Debug, Clone, Default)]
struct Remote {
    /// The device key the commands are for.
    device: String,
    drain_queued: Option<f64>,
    drain_picked: Option<f64>,
    withdrawn: Option<f64>,
    soa_drained: Option<String>,
    undrain_queued: Option<f64>,
    undrain_picked: Option<f64>,
    returned: Option<f64>,
    /// (sequence, action, state, reason) at the end.
    results: Vec<(u64, String, String, Option<String>)>,
    /// The signed text of `drain` (command 1), replayed later.
    drain_signed: String,
    /// An expired command and a replay of `drain`, queued once the specifics are back.
    bad_queued: Option<f64>,
    /// Refusals the box reported: (sequence, action, reason) from its `command-result`
    /// reports.
    refusals: Vec<(u64, String, String)>,
    /// A heartbeat arrived after the last `command-result` (so its answer, which hands the
    /// replay out again, has been seen by the box).
    heartbeat_after_results: bool,
    /// `remote-update`: sha256 of the second image's manifest, once published.
    update_manifest: Option<String>,
    /// The `update` (boot 1) or `rollback` (boot 2) command: its sequence, when it was queued
    /// and picked up.
    update_seq: u64,
    update_queued: Option<f64>,
    update_picked: Option<f64>,
    /// What the box served just before the update was queued (it reboots before the end).
    before_update: Option<Measured>,
}

/// The router's paths and sessions and the `. SOA` answers at one moment.
#[derive(Debug, Clone, Default)]
struct Measured {
    routes: Vec<Route>,
    sessions: Vec<Neighbor>,
    soa: Vec<SoaAnswer>,
    reach: Vec<super::reach::Probe>,
}

impl Remote {
    /// Waiting for a command to be picked up or to take effect: watch closely.
    fn busy(&self) -> bool {
        (self.drain_queued.is_some() && !self.done())
            || (self.update_queued.is_some() && self.update_picked.is_none())
    }

    /// Every command queued has its result.
    fn resolved(&self) -> bool {
        !self.results.is_empty()
            && self
                .results
                .iter()
                .all(|r| ["done", "failed", "refused", "expired"].contains(&r.2.as_str()))
    }

    fn done(&self) -> bool {
        self.returned.is_some()
            && self.bad_queued.is_some()
            && self
                .results
                .iter()
                .take(3)
                .all(|r| ["done", "failed", "refused", "expired"].contains(&r.2.as_str()))
            && self.results.len() == 4
            && self.refusals.len() >= 2
            && self.heartbeat_after_results
    }
}

struct BootPlan {
    label: String,
    goal: Goal,
    /// Just before QEMU is killed at the end of this boot: an update into slot B whose
    /// writes stop after this fraction (per mille) of them, a power cut while it writes.
    cut_update_at: Option<u32>,
    /// Start the transfer server this long after QEMU start.
    xfr_at: Option<f64>,
    /// Start the receiver this long after the box reaches phone-home.
    receiver_after_phone_home: Option<f64>,
    /// Once the `install-failed` report is stored and the zone stage has failed this many
    /// times, the transfer server hands out the good zone instead (`tampered-zone`).
    good_zone_after: Option<usize>,
    /// An install goal also waits for this console text (`nts`: the clock set again).
    until_console: Option<&'static str>,
}

impl BootPlan {
    /// A later boot of a scenario: every service already up.
    fn later(label: &str, goal: Goal) -> BootPlan {
        BootPlan {
            label: label.into(),
            goal,
            cut_update_at: None,
            xfr_at: None,
            receiver_after_phone_home: None,
            good_zone_after: None,
            until_console: None,
        }
    }
}

/// The end of one boot, measured before QEMU was stopped.
struct Final {
    routes: Vec<Route>,
    sessions: Vec<Neighbor>,
    soa: Vec<SoaAnswer>,
    /// TCP probes of the closed face from the router side.
    reach: Vec<super::reach::Probe>,
    reports: Vec<StoredReport>,
    rejected: u64,
    xfr_started_s: Option<f64>,
    receiver_started_s: Option<f64>,
    /// When the transfer server began handing out the good zone (`tampered-zone`).
    good_zone_s: Option<f64>,
    remote: Option<Remote>,
    /// What the lab sent (`telemetry`).
    traffic: Option<Traffic>,
}

fn specifics() -> Vec<String> {
    IMRS_PREFIXES
        .iter()
        .filter(|p| p.kind == PrefixKind::Specific)
        .map(|p| p.prefix.to_string())
        .collect()
}

fn phone_home_ended(t: &Tracker) -> bool {
    matches!(
        t.status("phone-home"),
        Some(Status::Passed | Status::DoneEarlier | Status::Failed)
    )
}

impl Lab {
    fn vm_config(&self) -> VmConfig {
        VmConfig {
            image: self.image.clone(),
            disk: self.disk.clone(),
            tap: TAP.into(),
            accel: self.accel,
            memory_mib: self.memory_mib,
            serial: format!("IMRS-LAB-{}", std::process::id()),
            rtc: self.zone.clock.qemu_base(),
            // An NTS site's box sets its clock again while the lab watches.
            append: if self.plan.nts.is_empty() {
                Vec::new()
            } else {
                vec![format!("imrs.clock_resync={NTS_RESYNC_S}")]
            },
            uefi_vars: (self.boot == super::LabBoot::Disk)
                .then(|| self.workdir.join("OVMF_VARS_4M.fd")),
        }
    }

    /// Queues a signed command for `device` at the receiver, as `fleet command` does, issued
    /// at the guest's time (`vm_s` seconds after QEMU start): the box checks its times against
    /// its own clock, which the lab pins to the zone's signatures.
    fn queue_command(
        &self,
        device: &str,
        action: imrs_config::command::Action,
        vm_s: f64,
    ) -> Result<u64> {
        self.queue_command_valid(device, action, vm_s, (0, 600))
            .map(|(seq, _)| seq)
    }

    /// [`Lab::queue_command`] valid from `valid.0` to `valid.1` seconds after the guest's
    /// time; also returns the signed text.
    fn queue_command_valid(
        &self,
        device: &str,
        action: imrs_config::command::Action,
        vm_s: f64,
        valid: (i64, i64),
    ) -> Result<(u64, String)> {
        use imrs_config::command::{COMMAND_VERSION, Command};
        let now = self.guest_now(vm_s);
        let name = action.name().to_string();
        let mut text = String::new();
        let seq = crate::home::store::commands::queue(&self.db(), device, now, |sequence| {
            let cmd = Command {
                version: COMMAND_VERSION,
                device: device.to_string(),
                sequence,
                issued_unix: now + valid.0,
                expires_unix: now + valid.1,
                action,
            };
            let signed = imrs_config::command::sign(&cmd, &self.ops);
            text = serde_json::to_string(&signed)?;
            Ok((name, text.clone(), now + valid.1))
        })?;
        Ok((seq, text))
    }

    /// The guest's time `vm_s` seconds after QEMU start, Unix seconds.
    fn guest_now(&self, vm_s: f64) -> i64 {
        match self.zone.clock {
            super::zone::GuestClock::Fixed(t) => t.as_second() + vm_s as i64,
            super::zone::GuestClock::Host => jiff::Timestamp::now().as_second(),
        }
    }

    /// The refusals the box reported: `(sequence, action, reason)` of each `command-result`
    /// report whose outcome is `refused`.
    fn refusals_reported(&self, reports: &[StoredReport]) -> Result<Vec<(u64, String, String)>> {
        let mut out = Vec::new();
        for r in reports.iter().filter(|r| r.event == "command-result") {
            let Some(s) = crate::home::store::signed_report(&self.db(), &r.id)? else {
                continue;
            };
            let v: serde_json::Value = serde_json::from_str(&s.report)?;
            let e = &v["event"];
            if e["outcome"] == "refused" {
                out.push((
                    e["sequence"].as_u64().unwrap_or(0),
                    e["action"].as_str().unwrap_or("").to_string(),
                    e["reason"].as_str().unwrap_or("").to_string(),
                ));
            }
        }
        Ok(out)
    }

    /// One look at the `remote-drain` steps: queue `drain` once serving with heartbeats, see
    /// it picked up and the specifics go, probe `. SOA`, queue `undrain`, see them return.
    #[allow(clippy::too_many_arguments)]
    fn remote_step(
        &self,
        svc: &Services,
        rm: &mut Remote,
        now: f64,
        serving: bool,
        held: &[bool],
        reports: &[StoredReport],
        label: &str,
    ) -> Result<()> {
        use imrs_config::command::Action;
        let say = |what: String| self.progress(format!("[{now:7.1} s] {label}: {what}"));
        if rm.drain_queued.is_none() {
            if !serving {
                return Ok(());
            }
            let Some(device) = reports.iter().rev().map(|r| r.device.clone()).next() else {
                return Ok(());
            };
            rm.device = device;
            let (seq, text) =
                self.queue_command_valid(&rm.device, Action::Drain {}, now, (0, 600))?;
            rm.drain_signed = text;
            rm.drain_queued = Some(now);
            say(format!("drain queued at the receiver (command {seq})"));
            return Ok(());
        }
        let delivered = self.refresh_results(rm)?;
        let delivered = |seq: u64| delivered.contains(&seq);
        if rm.drain_picked.is_none() && delivered(1) {
            rm.drain_picked = Some(now);
            say("drain picked up by the box".into());
        }
        if rm.drain_picked.is_some() && rm.withdrawn.is_none() && held.iter().all(|h| !h) {
            rm.withdrawn = Some(now);
            let service_v4 = std::net::SocketAddr::new(self.plan.service_v4.into(), 53);
            let a = svc.ns.run_inside(move || {
                probe::soa(service_v4, Transport::Udp, Duration::from_secs(1))
            })?;
            rm.soa_drained = Some(if a.ok() {
                format!("answered, serial {}", a.serial.unwrap_or(0))
            } else {
                format!("NOT answered: {}", a.error.clone().unwrap_or_default())
            });
            say(format!(
                "specifics withdrawn; . SOA on {service_v4}: {}",
                rm.soa_drained.clone().unwrap_or_default()
            ));
            let seq = self.queue_command(&rm.device, Action::Undrain {}, now)?;
            rm.undrain_queued = Some(now);
            say(format!("undrain queued (command {seq})"));
        }
        if rm.undrain_queued.is_some() && rm.undrain_picked.is_none() && delivered(2) {
            rm.undrain_picked = Some(now);
            say("undrain picked up by the box".into());
        }
        if rm.undrain_picked.is_some() && rm.returned.is_none() && held.iter().all(|h| *h) {
            rm.returned = Some(now);
            say("specifics announced again".into());
        }
        if rm.returned.is_some() && rm.bad_queued.is_none() {
            // What a box must refuse: a genuine command past its expiry, and the signed text
            // of `drain` handed out again (as a receiver that replays would).
            let (seq, _) =
                self.queue_command_valid(&rm.device, Action::Drain {}, now, (-700, -100))?;
            let text = rm.drain_signed.clone();
            let at = self.guest_now(now);
            let replay = crate::home::store::commands::queue(&self.db(), &rm.device, at, |_| {
                Ok(("drain".into(), text, at + 600))
            })?;
            rm.bad_queued = Some(now);
            say(format!(
                "an expired drain queued (command {seq}) and drain's signed text again (as \
                 command {replay})"
            ));
        }
        if rm.bad_queued.is_some() {
            rm.refusals = self.refusals_reported(reports)?;
            let last = |event: &str| reports.iter().rposition(|r| r.event == event);
            rm.heartbeat_after_results = rm.refusals.len() >= 2
                && matches!(
                    (last("command-result"), last("heartbeat")),
                    (Some(r), Some(h)) if h > r
                );
        }
        Ok(())
    }

    /// Reads the device's commands at the receiver into `rm.results`; returns the sequences
    /// delivered so far.
    fn refresh_results(&self, rm: &mut Remote) -> Result<Vec<u64>> {
        if rm.device.is_empty() {
            return Ok(Vec::new());
        }
        let rows = crate::home::store::commands::commands(&self.db(), Some(&rm.device))?;
        let unix = jiff::Timestamp::now().as_second();
        rm.results = rows
            .iter()
            .map(|c| {
                (
                    c.sequence,
                    c.action.clone(),
                    c.state(unix).to_string(),
                    c.reason.clone(),
                )
            })
            .collect();
        Ok(rows
            .iter()
            .filter(|c| c.delivered_unix.is_some())
            .map(|c| c.sequence)
            .collect())
    }

    /// The router's paths and sessions, `. SOA` over UDP and TCP on both service addresses
    /// and the closed-face probes, now.
    fn measure(&self, svc: &Services) -> Result<Measured> {
        let servers = [
            std::net::SocketAddr::new(self.plan.service_v4.into(), 53),
            std::net::SocketAddr::new(self.plan.service_v6.into(), 53),
        ];
        let probes = super::reach::planned(&self.plan);
        Ok(Measured {
            routes: svc.router.routes().unwrap_or_default(),
            sessions: svc.router.neighbor_states().unwrap_or_default(),
            soa: svc
                .ns
                .run_inside(move || probe::soa_all(&servers, Duration::from_secs(2)))?,
            reach: svc
                .ns
                .run_inside(move || super::reach::run(probes, Duration::from_secs(2)))?,
        })
    }

    /// The second image of `remote-update`: the lab image's files under a manifest whose
    /// version says so, signed with the lab's key (which must be the one the image's manifest
    /// is signed with: the box verifies updates with its image-signing key). A second full
    /// build would double the lab's build time; what the box does with it (download, verify,
    /// write, boot, bless) does not depend on what the kernel and initramfs hold.
    fn second_image(&self) -> Result<PathBuf> {
        let v = crate::verify::verify_loaded(&self.image, &self.image_key.verifying_key())
            .context(
                "remote-update signs a second image with --key, which must be the key the \
                 image's manifest is signed with",
            )?;
        let mut manifest = v.manifest.clone();
        manifest.version = format!("{}+remote-update", manifest.version);
        let files = manifest
            .artifacts
            .iter()
            .map(|a| {
                let p = self.image.join(&a.name);
                std::fs::read(&p)
                    .map(|d| (a.name.clone(), d))
                    .with_context(|| format!("{}: cannot read", p.display()))
            })
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<(&str, &[u8])> = files
            .iter()
            .map(|(n, d)| (n.as_str(), d.as_slice()))
            .collect();
        let out = self.workdir.join("image-2");
        crate::image_dir::write(&out, &refs, &manifest, &self.image_key)?;
        Ok(out)
    }

    /// One look at `remote-update`: once serving with heartbeats, measure and queue the
    /// command (boot 1: publish the second image and queue `update`; boot 2, `rollback`, once
    /// the update's result is in); then see it picked up.
    #[allow(clippy::too_many_arguments)]
    fn update_step(
        &self,
        svc: &Services,
        rm: &mut Remote,
        now: f64,
        serving: bool,
        reports: &[StoredReport],
        label: &str,
        rollback: bool,
    ) -> Result<()> {
        use crate::home::images;
        use imrs_config::command::Action;
        let say = |what: String| self.progress(format!("[{now:7.1} s] {label}: {what}"));
        if rm.update_queued.is_none() {
            if !serving {
                return Ok(());
            }
            let Some(device) = reports.iter().rev().map(|r| r.device.clone()).next() else {
                return Ok(());
            };
            rm.device = device;
            if rollback {
                self.refresh_results(rm)?;
                if !rm.resolved() {
                    return Ok(());
                }
            }
            rm.before_update = Some(self.measure(svc)?);
            let (action, what) = if rollback {
                (Action::Rollback {}, "rollback queued".to_string())
            } else {
                let second = self.second_image()?;
                let (payload, _) = images::publish(&images::dir_for(&self.db()), &second)?;
                let sha = payload.manifest_sha256();
                let what = format!(
                    "image {} {} published at the receiver (manifest {sha}); update queued",
                    payload.manifest().name,
                    payload.manifest().version
                );
                rm.update_manifest = Some(sha.clone());
                (
                    Action::Update {
                        path: images::url_path(&sha),
                        manifest_sha256: sha,
                    },
                    what,
                )
            };
            rm.update_seq = self.queue_command(&rm.device, action, now)?;
            say(format!("{what} (command {})", rm.update_seq));
            rm.update_queued = Some(now);
            return Ok(());
        }
        let delivered = self.refresh_results(rm)?;
        if rm.update_picked.is_none() && delivered.contains(&rm.update_seq) {
            rm.update_picked = Some(now);
            say(format!("command {} picked up by the box", rm.update_seq));
        }
        Ok(())
    }

    fn open_disk(&self) -> Result<std::fs::File> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.disk)
            .with_context(|| format!("{}: cannot open", self.disk.display()))
    }

    /// Writes the lab's image into slot B of the appliance disk with `tries`, as
    /// `imrs-build update` does, its entry's options followed by `extra`; returns what was
    /// written.
    fn update_slot_b(&self, tries: u32, extra: &[String]) -> Result<String> {
        let payload = imrs_disk::SlotPayload::from_folder(&self.image)?;
        let mut esp = imrs_disk::Esp::open(self.open_disk()?)?;
        let slot = imrs_disk::update_target(&esp.slots()?, None);
        let entry = esp.write_slot(slot, &payload, Some(tries), extra)?;
        Ok(format!(
            "slot {slot} written, entry {entry}{}",
            if extra.is_empty() {
                String::new()
            } else {
                format!(" with {}", extra.join(" "))
            }
        ))
    }

    /// The update of [`Lab::update_slot_b`] cut by a power cut after `per_mille` of its
    /// writes: the writes it takes are counted on an in-memory copy of the ESP first, then the
    /// disk's own update stops there ([`imrs_disk::CutAfter`]). Returns what happened.
    fn cut_update_slot_b(&self, per_mille: u32) -> Result<String> {
        let payload = imrs_disk::SlotPayload::from_folder(&self.image)?;
        let mut file = self.open_disk()?;
        let extent = imrs_disk::layout::find(&mut file, imrs_disk::layout::ESP_PARTNAME)?;
        let mut copy = vec![0u8; usize::try_from(extent.len)?];
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(extent.offset))?;
        std::io::Read::read_exact(&mut file, &mut copy)?;
        let len = extent.len;
        let mut counter = imrs_disk::CutAfter::in_memory(copy, usize::MAX);
        {
            let mut esp = imrs_disk::Esp::from_window(imrs_disk::Window::new(&mut counter, 0, len));
            let slot = imrs_disk::update_target(&esp.slots()?, None);
            esp.write_slot(slot, &payload, Some(3), &[])?;
        }
        let total = usize::MAX - counter.writes;
        let cut = total * per_mille as usize / 1000;
        let mut dev = imrs_disk::CutAfter::new(file, cut);
        let r = imrs_disk::Esp::open(&mut dev).and_then(|mut esp| {
            let slot = imrs_disk::update_target(&esp.slots()?, None);
            esp.write_slot(slot, &payload, Some(3), &[])
        });
        match r {
            Ok(e) => anyhow::bail!(
                "the update was meant to be cut after {cut} of {total} writes but completed \
                 ({e})"
            ),
            Err(e) => Ok(format!(
                "update into slot B cut after {cut} of its {total} writes ({e})"
            )),
        }
    }

    /// The boot entry files on the appliance disk's ESP.
    fn slot_entries(&self) -> Result<Vec<String>> {
        let file = std::fs::File::open(&self.disk)
            .with_context(|| format!("{}: cannot open", self.disk.display()))?;
        Ok(imrs_disk::Esp::open(file)?.entry_files()?)
    }

    fn start_xfr(&mut self, svc: &mut Services, tampered: bool) -> Result<()> {
        let x = XfrServer::start(
            &svc.ns,
            &self.workdir.join("xfr"),
            &self.plan,
            &self.zone,
            tampered,
        )
        .context("starting the transfer server (NSD)")?;
        if let Some(t) = &x.tampering {
            self.tampered = Some(format!("{} A {} served as {}", t.owner, t.from, t.to));
        }
        svc.xfr = Some(x);
        Ok(())
    }

    fn start_receiver(&self, svc: &mut Services) -> Result<()> {
        let r = Receiver::start(
            &svc.ns,
            &self.exe,
            &self.workdir.join("receiver"),
            &self.db(),
            self.plan.receiver,
            &self.tls,
            &self.receiver_args(),
        )
        .context("starting the phone-home receiver")?;
        svc.receiver = Some(r);
        Ok(())
    }

    /// The receiver's flags beyond the basics: the operators' pages, and the host's notices.
    fn receiver_args(&self) -> Vec<std::ffi::OsString> {
        let mut a: Vec<std::ffi::OsString> = vec![
            "--operator-token".into(),
            self.operator_token.0.clone().into(),
        ];
        if let Some(n) = &self.notices {
            a.extend(n.receiver_args(&self.plan, &self.workdir.join("ca.pem")));
        }
        a
    }

    /// What the host and the operators were shown of the first boot's install reports: the
    /// host's notices (when the site names contacts; a first boot that failed and then passed
    /// told both) and, when the last one passed, the operators' pages showing the device live.
    fn told_checks(&self, svc: &Services, fin: &Final, label: &str) -> Result<Vec<Check>> {
        let reports: Vec<&StoredReport> = fin.reports.iter().filter(|r| r.is_install()).collect();
        let mut checks = Vec::new();
        if let (Some(n), Some(inbox)) = (&self.notices, &svc.inbox) {
            checks.extend(super::notices::checks(inbox, n, &reports, label)?);
        }
        if let Some(r) = reports.last().filter(|r| r.event == "install-passed") {
            checks.push(super::operators::check(
                &svc.ns,
                self.plan.receiver,
                &self.workdir.join("ca.pem"),
                &self.operator_token.1,
                &r.device,
                self.zone.serial,
                label,
            ));
        }
        Ok(checks)
    }

    /// The first boot of a scenario with later boots: boots, checks the full pass, keeps the
    /// outcome; returns what it measured and whether every check so far passed.
    fn install_boot(
        &mut self,
        svc: &mut Services,
        plan: &BootPlan,
        checks: &mut Vec<Check>,
        boots: &mut Vec<BootOutcome>,
    ) -> Result<(Final, bool)> {
        let (b, t, fin) = self.boot(svc, plan, 0)?;
        install_checks(checks, &b, &t, &fin, 0, self);
        boots.push(b);
        Ok((fin, checks.iter().all(|c| c.ok)))
    }

    /// Boots once and watches until the plan's goal is met, the VM ends or the time is up.
    fn boot(
        &mut self,
        svc: &mut Services,
        plan: &BootPlan,
        baseline: usize,
    ) -> Result<(BootOutcome, Tracker, Final)> {
        let label = plan.label.clone();
        self.progress(format!("{label}: starting QEMU ({:?})", self.accel));
        let mut vm = Vm::start(&svc.ns, &self.vm_config(), &self.console_log(), &label)?;
        let mut tracker = Tracker::default();
        let mut out = BootOutcome {
            label: label.clone(),
            stages: Vec::new(),
            serving_s: None,
            report_s: None,
            specifics_seen: false,
            specifics_first_s: None,
            killed_at: None,
            exited: None,
            timed_out: false,
            panicked: false,
            observed_s: 0.0,
            actions: Vec::new(),
            listening: Vec::new(),
            daemons: Vec::new(),
            in_parallel: Vec::new(),
        };
        let spec = specifics();
        let service_v4 = std::net::SocketAddr::new(self.plan.service_v4.into(), 53);
        let mut last_poll = -1.0f64;
        let mut settle_until: Option<f64> = None;
        let mut xfr_started_s = None;
        let mut receiver_started_s = None;
        let mut good_zone_s = None;
        let mut install_passed_s: Option<f64> = None;
        let mut reports: Vec<StoredReport> = Vec::new();
        let mut rejected = 0;
        let mut remote = matches!(
            plan.goal,
            Goal::RemoteDrain | Goal::RemoteUpdate | Goal::RemoteRollback | Goal::CommandsResolved
        )
        .then(Remote::default);
        let mut traffic = (plan.goal == Goal::Telemetry).then(Traffic::default);
        let limit = self.boot_timeout.as_secs_f64();
        loop {
            signal::check()?;
            for l in vm.lines(Duration::from_millis(250)) {
                let Some(ev) = tracker.feed(&l.text, l.at) else {
                    continue;
                };
                match ev {
                    Event::Stage {
                        name,
                        status,
                        seconds,
                        reason,
                        summary: false,
                    } => {
                        self.progress(format!(
                            "[{:7.1} s] {label}: stage {name}: {}{}{}",
                            l.at,
                            status.console_word(),
                            seconds.map(|s| format!(" ({s:.3} s)")).unwrap_or_default(),
                            reason.map(|r| format!(": {r}")).unwrap_or_default()
                        ));
                        if let Goal::KillAt(stage) = plan.goal
                            && name == stage
                            && status == Status::Running
                            && out.killed_at.is_none()
                        {
                            vm.kill();
                            out.killed_at = Some(stage.to_string());
                            let msg = format!(
                                "{:.1} s: power cut (QEMU killed) as stage {stage} started",
                                l.at
                            );
                            self.progress(format!("[{:7.1} s] {label}: power cut", l.at));
                            out.actions.push(msg);
                        }
                    }
                    Event::SummaryStart => {
                        self.progress(format!("[{:7.1} s] {label}: boot summary printed", l.at));
                    }
                    Event::Panic => {
                        self.progress(format!("[{:7.1} s] {label}: KERNEL PANIC", l.at));
                    }
                    Event::InParallel(p) => {
                        self.progress(format!("[{:7.1} s] {label}: in parallel: {p}", l.at));
                    }
                    Event::Listening(_) | Event::Daemon(_) => {}
                    Event::Stage {
                        name,
                        status,
                        seconds,
                        reason,
                        summary: true,
                    } => {
                        self.progress(format!(
                            "[{:7.1} s] {label}: summary: {name} {}{}{}",
                            l.at,
                            status.console_word(),
                            seconds.map(|s| format!(" ({s:.3} s)")).unwrap_or_default(),
                            reason.map(|r| format!(": {r}")).unwrap_or_default()
                        ));
                    }
                }
            }
            if out.killed_at.is_some() {
                break;
            }
            let now = vm.elapsed();

            // Late services.
            if let Some(at) = plan.xfr_at
                && svc.xfr.is_none()
                && now >= at
            {
                self.start_xfr(svc, false)?;
                let t = vm.elapsed();
                xfr_started_s = Some(t);
                out.actions
                    .push(format!("{t:.1} s: transfer server started (late)"));
                self.progress(format!("[{t:7.1} s] {label}: transfer server started"));
            }
            if let Some(delay) = plan.receiver_after_phone_home
                && svc.receiver.is_none()
                && let Some(reached) = tracker
                    .get("phone-home")
                    .and_then(|s| s.started_at_s.or(s.ended_at_s))
                && now >= reached + delay
            {
                self.start_receiver(svc)?;
                let t = vm.elapsed();
                receiver_started_s = Some(t);
                out.actions.push(format!(
                    "{t:.1} s: receiver started (late; phone-home reached at {reached:.1} s)"
                ));
                self.progress(format!("[{t:7.1} s] {label}: receiver started"));
            }

            // Observations, once a second; four times a second while a command is on its way,
            // and from the dns stage until the box is first seen serving and its first report
            // has arrived (for at most 15 s): boot-to-serving and boot-to-report are measured
            // to a quarter second, not to the next poll.
            let awaiting_first = (out.serving_s.is_none() || out.report_s.is_none())
                && tracker
                    .get("dns")
                    .and_then(|s| s.started_at_s)
                    .is_some_and(|t| now < t + 15.0);
            let every = if awaiting_first || remote.as_ref().is_some_and(Remote::busy) {
                0.25
            } else {
                1.0
            };
            if now - last_poll >= every {
                last_poll = now;
                // A host-side daemon that died would make the box look guilty: stop instead.
                svc.router
                    .ensure_running()
                    .context("the lab's router stopped")?;
                if let Some(x) = svc.xfr.as_mut() {
                    x.ensure_running()
                        .context("the lab's transfer server stopped")?;
                }
                if let Some(r) = svc.receiver.as_mut() {
                    r.ensure_running().context("the lab's receiver stopped")?;
                }
                let routes = svc.router.routes().unwrap_or_default();
                let held: Vec<bool> = spec
                    .iter()
                    .map(|p| router::holds(&routes, p, IMRS_ASN))
                    .collect();
                if routes.iter().any(|r| spec.contains(&r.prefix)) {
                    out.specifics_seen = true;
                    out.specifics_first_s.get_or_insert(now);
                }
                if out.serving_s.is_none() && held.iter().all(|h| *h) {
                    let a = svc.ns.run_inside(move || {
                        probe::soa(service_v4, Transport::Udp, Duration::from_secs(1))
                    })?;
                    if a.ok() {
                        out.serving_s = Some(now);
                        self.progress(format!(
                            "[{now:7.1} s] {label}: SERVING (specifics from AS {IMRS_ASN} at the router, . SOA serial {} on {service_v4})",
                            a.serial.unwrap_or(0)
                        ));
                    }
                }
                if let Some(tr) = traffic.as_mut()
                    && out.serving_s.is_some()
                    && tr.sent_at.is_none()
                {
                    let v6 = std::net::SocketAddr::new(self.plan.service_v6.into(), 53);
                    *tr = svc.ns.run_inside(move || telemetry::send(service_v4, v6))?;
                    tr.sent_at = Some(now);
                    self.progress(format!(
                        "[{now:7.1} s] {label}: lab traffic sent (. SOA answered {:?}, NXDOMAIN {}); waiting for midnight and the telemetry report",
                        tr.soa, tr.nxdomain
                    ));
                }
                let (r, rej) = receiver::reports(&self.db()).unwrap_or_default();
                reports = r;
                rejected = rej;
                // The day so far, on demand, once the box has reported (its key is known).
                if let Some(tr) = traffic.as_mut()
                    && tr.sent_at.is_some()
                    && tr.command.is_none()
                    && let Some(r) = reports.last()
                {
                    tr.device = r.device.clone();
                    let seq = self.queue_command(
                        &tr.device,
                        imrs_config::command::Action::Telemetry {},
                        now,
                    )?;
                    tr.command = Some(seq);
                    self.progress(format!(
                        "[{now:7.1} s] {label}: telemetry command {seq} queued (the day so far)"
                    ));
                }
                if let Some(rm) = remote.as_mut() {
                    let serving = out.serving_s.is_some()
                        && reports
                            .iter()
                            .skip(baseline)
                            .any(|r| r.event == "heartbeat");
                    match plan.goal {
                        Goal::RemoteDrain => {
                            self.remote_step(svc, rm, now, serving, &held, &reports, &label)?
                        }
                        Goal::RemoteUpdate | Goal::RemoteRollback => self.update_step(
                            svc,
                            rm,
                            now,
                            serving,
                            &reports,
                            &label,
                            plan.goal == Goal::RemoteRollback,
                        )?,
                        _ => {
                            if rm.device.is_empty()
                                && let Some(r) = reports.last()
                            {
                                rm.device = r.device.clone();
                            }
                            self.refresh_results(rm)?;
                        }
                    }
                }
                if install_passed_s.is_none()
                    && reports
                        .iter()
                        .skip(baseline)
                        .any(|r| r.event == "install-passed")
                {
                    install_passed_s = Some(now);
                }
                if let Some(failures) = plan.good_zone_after
                    && good_zone_s.is_none()
                    && tracker.get("zone").map_or(0, |z| z.failures()) >= failures
                    && reports
                        .iter()
                        .skip(baseline)
                        .any(|r| r.event == "install-failed")
                {
                    svc.xfr = None;
                    self.start_xfr(svc, false)?;
                    let t = vm.elapsed();
                    good_zone_s = Some(t);
                    out.actions.push(format!(
                        "{t:.1} s: the transfer server hands out the good zone (after the \
                         install-failed report and {failures} refusals)"
                    ));
                    self.progress(format!(
                        "[{t:7.1} s] {label}: transfer server restarted with the good zone"
                    ));
                }
                if out.report_s.is_none()
                    && let Some(new) = reports.get(baseline)
                {
                    out.report_s = Some(now);
                    self.progress(format!(
                        "[{now:7.1} s] {label}: verified report {}{} at the receiver",
                        new.event,
                        new.failed_stage
                            .as_ref()
                            .map(|s| format!(" (stage {s})"))
                            .unwrap_or_default()
                    ));
                }
            }

            // The end.
            if let Some(code) = vm.exited() {
                out.exited = Some(code);
                self.progress(format!("[{now:7.1} s] {label}: the VM exited"));
                break;
            }
            if now > limit {
                out.timed_out = true;
                self.progress(format!(
                    "[{now:7.1} s] {label}: time limit ({limit:.0} s) reached"
                ));
                break;
            }
            let new_install = reports.iter().skip(baseline).any(StoredReport::is_install);
            let new_any = reports.len() > baseline;
            let new_event = reports
                .iter()
                .skip(baseline)
                .any(|r| r.event != "heartbeat");
            let new_heartbeat = reports
                .iter()
                .skip(baseline)
                .any(|r| r.event == "heartbeat");
            if settle_until.is_none() {
                let stop = tracker.stopped_at().map(|s| s.ended_at_s.unwrap_or(now));
                let networked = tracker.status("network") == Some(Status::Passed);
                // After the pipeline stopped: wait for a report only if one can come.
                let grace = if networked { 90.0 } else { 5.0 };
                settle_until = match plan.goal {
                    // The summary and the init's exposure lines follow phone-home: waited for.
                    Goal::Install if out.serving_s.is_some() && new_install => {
                        let passed = install_passed_s.unwrap_or(now);
                        if install_passed_s.is_some()
                            && ((phone_home_ended(&tracker) && tracker.summary_seen)
                                || now >= passed + 10.0)
                            && plan
                                .until_console
                                .is_none_or(|t| self.console_of(&plan.label).contains(t))
                        {
                            Some(now + 2.0)
                        } else {
                            None
                        }
                    }
                    Goal::ServingReport
                        if out.serving_s.is_some()
                            && new_event
                            && (tracker.summary_seen
                                || now >= out.report_s.unwrap_or(now) + 10.0) =>
                    {
                        Some(now + 2.0)
                    }
                    Goal::ServingHeartbeat if out.serving_s.is_some() && new_heartbeat => {
                        Some(now + 1.0)
                    }
                    // The on-demand report, then the day's complete one after midnight.
                    Goal::Telemetry
                        if reports
                            .iter()
                            .skip(baseline)
                            .filter(|r| r.event == "telemetry")
                            .count()
                            >= 2 =>
                    {
                        Some(now + 1.0)
                    }
                    Goal::RemoteDrain if remote.as_ref().is_some_and(Remote::done) => {
                        Some(now + 2.0)
                    }
                    // Ends when the box reboots into the slot it wrote, or at the time limit.
                    Goal::RemoteUpdate | Goal::RemoteRollback => None,
                    Goal::CommandsResolved
                        if out.serving_s.is_some()
                            && new_heartbeat
                            && remote.as_ref().is_some_and(Remote::resolved) =>
                    {
                        Some(now + 1.0)
                    }
                    Goal::Serving if out.serving_s.is_some() => {
                        let since = out.serving_s.unwrap_or(now);
                        if phone_home_ended(&tracker) || now >= since + 20.0 {
                            Some(now + 5.0)
                        } else {
                            None
                        }
                    }
                    // The init tries a failed stage again: a stop is not the end when the
                    // lab is about to hand out the good zone.
                    _ if plan.good_zone_after.is_some() => None,
                    _ => match stop {
                        Some(_)
                            if new_any
                                && !matches!(
                                    plan.goal,
                                    Goal::Serving | Goal::ServingReport | Goal::ServingHeartbeat
                                ) =>
                        {
                            Some(now + 2.0)
                        }
                        Some(at) if now >= at + grace => Some(now),
                        _ => None,
                    },
                };
            }
            if let Some(t) = settle_until
                && now >= t
            {
                break;
            }
        }
        out.panicked = tracker.panicked;
        out.observed_s = vm.elapsed();
        // Measure while the box still runs.
        let mut fin = Final {
            routes: Vec::new(),
            sessions: Vec::new(),
            soa: Vec::new(),
            reach: Vec::new(),
            reports,
            rejected,
            xfr_started_s,
            receiver_started_s,
            good_zone_s,
            remote,
            traffic,
        };
        let measured = if out.killed_at.is_none() && vm.exited().is_none() {
            Some(self.measure(svc)?)
        } else {
            // The box rebooted into an update: what it served before.
            fin.remote.as_ref().and_then(|r| r.before_update.clone())
        };
        if let Some(m) = measured {
            fin.routes = m.routes;
            fin.sessions = m.sessions;
            fin.soa = m.soa;
            fin.reach = m.reach;
        }
        if let Some(per_mille) = plan.cut_update_at {
            // The power goes while the update writes slot B: its writes stop, then QEMU dies.
            let what = self.cut_update_slot_b(per_mille)?;
            let t = vm.elapsed();
            self.progress(format!(
                "[{t:7.1} s] {label}: {what}; power cut (QEMU killed)"
            ));
            out.actions
                .push(format!("{t:.1} s: {what}; power cut (QEMU killed)"));
        }
        vm.kill();
        // A last look at the receiver (a report may have landed meanwhile).
        if let Ok((r, rej)) = receiver::reports(&self.db()) {
            if out.report_s.is_none() && r.len() > baseline {
                out.report_s = Some(out.observed_s);
            }
            fin.reports = r;
            fin.rejected = rej;
        }
        out.stages = tracker.report();
        out.listening = tracker.listening.clone();
        out.in_parallel = tracker.in_parallel.clone();
        out.daemons = tracker
            .daemons
            .iter()
            .filter_map(|d| super::exposure::parse_daemon(d))
            .collect();
        Ok((out, tracker, fin))
    }
}

/// The console line that says which boot entry started, for a check's detail.
fn boot_entry_line(console: &str) -> String {
    console
        .lines()
        .find(|l| l.contains("systemd-boot started") || l.contains("boot entry"))
        .unwrap_or("no boot entry line")
        .trim()
        .to_string()
}

/// A verified `slot-changed` report arrived in this boot: running `slots.0`, previously
/// `slots.1`, with a fallback reason exactly when `fallback`.
fn slot_changed_check(
    checks: &mut Vec<Check>,
    label: &str,
    fin: &Final,
    baseline: usize,
    slots: (&str, &str),
    fallback: bool,
) {
    let new = fin.reports.get(baseline..).unwrap_or_default();
    let hit = new.iter().find(|r| r.event == "slot-changed");
    check(
        checks,
        &format!(
            "{label}: a verified slot-changed report: slot {} now, {} before{}",
            slots.0,
            slots.1,
            if fallback {
                ", with the fallback's reason"
            } else {
                ""
            }
        ),
        hit.is_some_and(|r| {
            r.slot.as_deref() == Some(slots.0)
                && r.previous_slot.as_deref() == Some(slots.1)
                && r.fallback.is_some() == fallback
        }),
        hit.map_or_else(
            || {
                format!(
                    "new report(s): [{}]",
                    new.iter()
                        .map(|r| r.event.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
            |r| {
                format!(
                    "slot {} previous {} fallback {}",
                    r.slot.as_deref().unwrap_or("-"),
                    r.previous_slot.as_deref().unwrap_or("-"),
                    r.fallback.as_deref().unwrap_or("-")
                )
            },
        ),
    );
}

/// The lab site's heartbeat period (`images/sites/lab.toml`): a command waits at most this long
/// (jittered by a tenth) for the next report's answer.
const LAB_HEARTBEAT_S: f64 = 10.0;

/// The longest a queued command may wait for its pickup and still count as "within a heartbeat
/// period": the period with its jitter, plus the heartbeat's own exchange (a TLS handshake and a
/// signed report inside the emulated guest, seconds on a loaded host) and the lab's look at the
/// receiver's database.
const WITHIN_A_HEARTBEAT_S: f64 = LAB_HEARTBEAT_S * 1.1 + 3.0;

/// What `remote-drain` must have seen.
fn remote_checks(checks: &mut Vec<Check>, rm: Option<&Remote>) {
    let rm = rm.cloned().unwrap_or_default();
    let gap = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let picked = gap(rm.drain_queued, rm.drain_picked);
    check(
        checks,
        "drain picked up with the answer to a report, within a heartbeat period",
        picked.is_some_and(|d| d <= WITHIN_A_HEARTBEAT_S),
        format!(
            "queued at {}, picked up at {} (heartbeats every {LAB_HEARTBEAT_S} s)",
            opt_s(rm.drain_queued),
            opt_s(rm.drain_picked)
        ),
    );
    let withdrawn = gap(rm.drain_picked, rm.withdrawn);
    check(
        checks,
        "the router lost the specifics within 2 s of the pickup",
        withdrawn.is_some_and(|d| d <= 2.0),
        format!(
            "picked up at {}, specifics gone at {} (watched every 0.25 s)",
            opt_s(rm.drain_picked),
            opt_s(rm.withdrawn)
        ),
    );
    check(
        checks,
        ". SOA answered while drained",
        rm.soa_drained
            .as_deref()
            .is_some_and(|s| s.starts_with("answered")),
        rm.soa_drained
            .clone()
            .unwrap_or_else(|| "not probed".into()),
    );
    check(
        checks,
        "undrain brought the specifics back",
        rm.returned.is_some(),
        format!(
            "undrain queued at {}, picked up at {}, specifics back at {}",
            opt_s(rm.undrain_queued),
            opt_s(rm.undrain_picked),
            opt_s(rm.returned)
        ),
    );
    let expired = rm.results.get(2);
    check(
        checks,
        "an expired command is refused, saying it expired",
        expired.is_some_and(|r| {
            r.2 == "refused" && r.3.as_deref().is_some_and(|w| w.contains("expired"))
        }),
        expired.map_or_else(
            || "not queued".to_string(),
            |(seq, _, state, reason)| {
                format!(
                    "command {seq}: {state}: {}",
                    reason.as_deref().unwrap_or("-")
                )
            },
        ),
    );
    let replay = rm
        .refusals
        .iter()
        .find(|r| r.0 == 1 && r.2.contains("replayed"));
    check(
        checks,
        "drain's signed text handed out again is refused as a replay, once",
        replay.is_some() && rm.refusals.iter().filter(|r| r.0 == 1).count() == 1,
        format!(
            "refusals reported: [{}]",
            rm.refusals
                .iter()
                .map(|(seq, action, why)| format!("{seq} {action}: {why}"))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    );
    check(
        checks,
        "the box reported both commands done",
        rm.results.len() >= 2 && rm.results.iter().take(2).all(|r| r.2 == "done"),
        rm.results
            .iter()
            .map(|(seq, action, state, reason)| {
                format!(
                    "{seq} {action}: {state}{}",
                    reason
                        .as_deref()
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
    );
}

/// What `remote-update` must have seen when it queued `action` (`update` in boot 1,
/// `rollback` in boot 2): picked up within a heartbeat, slot `slot` written and the box
/// rebooting by itself.
fn update_pickup_checks(
    checks: &mut Vec<Check>,
    label: &str,
    action: &str,
    slot: char,
    rm: &Remote,
    console: &str,
    boot: Option<&BootOutcome>,
) {
    let picked = match (rm.update_queued, rm.update_picked) {
        (Some(q), Some(p)) => Some(p - q),
        _ => None,
    };
    check(
        checks,
        &format!(
            "{label}: {action} picked up with the answer to a report, within a heartbeat period"
        ),
        picked.is_some_and(|d| d <= WITHIN_A_HEARTBEAT_S),
        format!(
            "queued at {}, picked up at {} (heartbeats every {LAB_HEARTBEAT_S} s)",
            opt_s(rm.update_queued),
            opt_s(rm.update_picked)
        ),
    );
    let line = console
        .lines()
        .find(|l| l.contains("written into slot") || l.contains(&format!("({action}):")))
        .map_or_else(
            || format!("no line about the {action}"),
            |l| l.trim().to_string(),
        );
    check(
        checks,
        &format!(
            "{label}: the box verified the image, wrote slot {} and rebooted by itself",
            slot.to_ascii_uppercase()
        ),
        line.contains(&format!("written into slot {slot}; rebooting into it"))
            && boot.is_some_and(|b| b.exited.is_some()),
        format!(
            "{line}; QEMU {}",
            match boot.and_then(|b| b.exited) {
                Some(c) => format!("exited ({})", c.map_or("signal".into(), |c| c.to_string())),
                None => "did not exit".into(),
            }
        ),
    );
}

/// A boot from `slot` after a remote command: started on trial, healthy, blessed on the disk.
fn slot_trial_checks(
    checks: &mut Vec<Check>,
    label: &str,
    slot: char,
    console: &str,
    entries: &[String],
) {
    check(
        checks,
        &format!(
            "{label}: started from slot {} on trial",
            slot.to_ascii_uppercase()
        ),
        console.contains(&format!("started from disk slot {slot}"))
            && console.contains(&format!("slot {slot} on trial")),
        boot_entry_line(console),
    );
    check(
        checks,
        &format!(
            "{label}: healthy, slot {} blessed on the disk",
            slot.to_ascii_uppercase()
        ),
        console.contains(&format!("slot {slot} blessed"))
            && entries.iter().any(|e| *e == format!("imrs-{slot}.conf")),
        format!("entries now: {}", entries.join(" ")),
    );
}

/// What `remote-update` must have seen from the slot a command booted
/// (`(action, slot, manifest)`): the command done, and heartbeats naming the slot and the
/// image's manifest.
fn update_result_checks(
    checks: &mut Vec<Check>,
    (action, slot, manifest): (&str, char, &str),
    rm: &Remote,
    fin: &Final,
    baseline: usize,
) {
    let result = rm.results.iter().find(|r| r.1 == action);
    let upper = slot.to_ascii_uppercase();
    check(
        checks,
        &format!("the {action}'s result: done, running from slot {upper}"),
        result.is_some_and(|r| {
            r.2 == "done"
                && r.3
                    .as_deref()
                    .is_some_and(|w| w.contains(&format!("from slot {slot}")))
        }),
        result.map_or_else(
            || format!("no {action} command at the receiver"),
            |(seq, _, state, reason)| {
                format!(
                    "command {seq}: {state}: {}",
                    reason.as_deref().unwrap_or("-")
                )
            },
        ),
    );
    let beats: Vec<&StoredReport> = fin
        .reports
        .iter()
        .skip(baseline)
        .filter(|r| r.event == "heartbeat")
        .collect();
    check(
        checks,
        &format!("heartbeats after the {action} name slot {upper} and its image's manifest"),
        !beats.is_empty()
            && beats.iter().all(|r| {
                r.slot.as_deref() == Some(slot.to_string().as_str())
                    && r.manifest_sha256.as_deref() == Some(manifest)
            }),
        format!(
            "{} heartbeat(s): [{}]; expected manifest {manifest}",
            beats.len(),
            beats
                .iter()
                .map(|r| format!(
                    "slot {} manifest {}",
                    r.slot.as_deref().unwrap_or("-"),
                    r.manifest_sha256.as_deref().unwrap_or("-")
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
}

/// How far the lab's NTS server is ahead of the guest's RTC: a clock set through NTS shows.
pub const NTS_AHEAD: jiff::SignedDuration = jiff::SignedDuration::from_hours(1);

/// How often a box with NTS servers sets its clock again in the lab (`imrs.clock_resync`;
/// hours on a real site).
pub const NTS_RESYNC_S: u64 = 20;

/// The console line of the clock set again while serving.
const NTS_AGAIN: &str = "clock set again by nts";

/// The lab's NTS server on the site's `ntp.nts` addresses (on the tap), serving the guest's
/// clock plus [`NTS_AHEAD`] with this run's certificate for their names.
fn start_nts(lab: &Lab, ns: &NetNs) -> Result<Nts> {
    let Some((cert, key)) = lab.tls.nts.clone() else {
        anyhow::bail!("the site has NTS servers but this run made no certificate for them");
    };
    let mut ports: Vec<u16> = lab.plan.nts.iter().map(|(_, a)| a.port()).collect();
    ports.sort_unstable();
    ports.dedup();
    let [port] = ports[..] else {
        anyhow::bail!(
            "site ntp.nts: NTS-KE ports {ports:?}; the lab's one NTS server has one port"
        );
    };
    let base = match lab.zone.clock {
        super::zone::GuestClock::Fixed(t) => t,
        super::zone::GuestClock::Host => jiff::Timestamp::now(),
    };
    let time = base
        .checked_add(NTS_AHEAD)
        .context("the NTS server's time")?;
    let nts = Nts::start(
        ns,
        &lab.workdir.join("nts"),
        &NtsConfig {
            cert,
            key,
            port,
            time: Some(time),
        },
    )?;
    lab.progress(format!(
        "lab: NTS server (chronyd) for {} on port {port}, serving {time} (the guest's clock + {} s)",
        lab.plan
            .nts
            .iter()
            .map(|(n, a)| format!("{n} at {}", a.ip()))
            .collect::<Vec<_>>()
            .join(", "),
        NTS_AHEAD.as_secs()
    ));
    Ok(nts)
}

/// `nts`: the clock stage set the clock through the lab's NTS server, which moved it by
/// [`NTS_AHEAD`] plus the time between the server's start and QEMU's (the transfer server and
/// the receiver start in between), which the check allows up to ten minutes of.
fn nts_checks(checks: &mut Vec<Check>, console: &str, plan: &Plan) {
    let servers: Vec<String> = plan
        .nts
        .iter()
        .map(|(n, a)| format!("NTS {n} ({})", a.ip()))
        .collect();
    let asked = format!("setting the clock from NTS ({})", servers.join(", "));
    check(
        checks,
        "the clock stage asked the lab's NTS server",
        console.contains(&asked),
        format!("console line {asked:?}"),
    );
    // "... (moved +3600.123 s)" after `marker` on a console line.
    let moved_after = |marker: &str| {
        console.lines().find_map(|l| {
            let rest = l.split(marker).nth(1)?;
            let n = rest.split("(moved ").nth(1)?.split(' ').next()?;
            n.parse::<f64>().ok()
        })
    };
    let shown = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:+.3}"));
    let moved = moved_after("clock set by nts: ");
    let want = NTS_AHEAD.as_secs_f64();
    check(
        checks,
        "NTS moved the guest's clock by the hour the server is ahead",
        moved.is_some_and(|m| (want - 5.0..=want + 600.0).contains(&m)),
        format!("moved {} s (want about {want} s)", shown(moved)),
    );
    // Once serving, the keeper sets it again: the server and the box agree by then.
    let again = moved_after(NTS_AGAIN);
    check(
        checks,
        "NTS set the clock again while the box served",
        again.is_some_and(|m| m.abs() <= 2.0),
        format!(
            "{NTS_AGAIN:?} (every {NTS_RESYNC_S} s in the lab): moved {} s",
            shown(again)
        ),
    );
}

fn check(checks: &mut Vec<Check>, what: &str, ok: bool, detail: impl Into<String>) {
    checks.push(Check {
        what: what.into(),
        ok,
        detail: detail.into(),
    });
}

fn stage_detail(t: &Tracker, name: &str) -> String {
    match t.get(name) {
        Some(s) => format!(
            "{}{}",
            s.status.console_word(),
            s.reason
                .as_ref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        ),
        None => "not reached".into(),
    }
}

/// Checks of a full first-boot pass: stages, serving, DNS answers, what the box exposes,
/// report.
fn install_checks(
    checks: &mut Vec<Check>,
    b: &BootOutcome,
    t: &Tracker,
    fin: &Final,
    baseline: usize,
    lab: &Lab,
) {
    let serial = lab.zone.serial;
    stages_pass(
        checks,
        &format!("{}: stages platform..phone-home pass", b.label),
        t,
    );
    serving_checks(checks, b, fin, serial);
    exposure_checks(checks, b, fin, lab);
    let new: Vec<&StoredReport> = fin.reports.iter().skip(baseline).collect();
    let installs: Vec<&&StoredReport> = new.iter().filter(|r| r.is_install()).collect();
    check(
        checks,
        &format!("{}: one verified install-passed report", b.label),
        installs.len() == 1 && installs[0].event == "install-passed",
        format!(
            "{} new report(s): [{}]",
            new.len(),
            new.iter()
                .map(|r| r.event.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
}

/// `tampered-zone`: the zone stage refused the tampered zone (twice, reported once, nothing
/// announced), then passed on the good one; the box serves and reported `install-passed`
/// after the `install-failed`.
fn tampered_checks(checks: &mut Vec<Check>, b: &BootOutcome, t: &Tracker, fin: &Final, lab: &Lab) {
    let zone = t.get("zone");
    let refusals: Vec<String> = zone
        .map(|z| {
            z.failed_attempts
                .iter()
                .map(|a| a.reason.clone().unwrap_or_default())
                .collect()
        })
        .unwrap_or_default();
    check(
        checks,
        "boot 1: stage zone refuses the tampered zone, and again when it tries again",
        refusals.len() >= 2 && refusals.iter().take(2).all(|r| r.contains("ZONEMD")),
        format!("{} refusals: {}", refusals.len(), refusals.join(" | ")),
    );
    let good = fin.good_zone_s;
    check(
        checks,
        "boot 1: the specific prefixes are not announced before the good zone",
        good.is_some() && b.specifics_first_s.is_none_or(|s| Some(s) > good),
        format!(
            "good zone served from {}, specifics first seen {}",
            opt_s(good),
            opt_s(b.specifics_first_s)
        ),
    );
    let installs: Vec<&StoredReport> = fin.reports.iter().filter(|r| r.is_install()).collect();
    let failed = installs.first();
    check(
        checks,
        "boot 1: a verified install-failed report names stage zone",
        failed.is_some_and(|r| {
            r.event == "install-failed" && r.failed_stage.as_deref() == Some("zone")
        }),
        failed.map_or("no install report".into(), |r| {
            format!(
                "{} stage {} reason {}",
                r.event,
                r.failed_stage.as_deref().unwrap_or("-"),
                r.failed_reason.as_deref().unwrap_or("-")
            )
        }),
    );
    let events: Vec<&str> = installs.iter().map(|r| r.event.as_str()).collect();
    check(
        checks,
        "boot 1: then, on the good zone, it passes and reports install-passed (the failure once)",
        events == ["install-failed", "install-passed"]
            && zone.is_some_and(|z| z.status == Status::Passed),
        format!(
            "install reports [{}]; zone {}",
            events.join(", "),
            stage_detail(t, "zone")
        ),
    );
    stages_pass(
        checks,
        "boot 1: stages platform..phone-home pass in the end",
        t,
    );
    serving_checks(checks, b, fin, lab.zone.serial);
    exposure_checks(checks, b, fin, lab);
}

/// Every stage up to phone-home passed or was done earlier (steady follows on its own).
fn stages_pass(checks: &mut Vec<Check>, what: &str, t: &Tracker) {
    let must = imrs_config::stage::Stage::ALL.map(imrs_config::stage::Stage::name);
    let bad: Vec<String> = must[..must.len() - 1]
        .iter()
        .filter(|s| !t.status(s).is_some_and(Status::goes_on))
        .map(|s| format!("{s} {}", stage_detail(t, s)))
        .collect();
    check(
        checks,
        what,
        bad.is_empty(),
        if bad.is_empty() {
            "all passed".to_string()
        } else {
            bad.join("; ")
        },
    );
}

/// The sockets the box accepts traffic on are exactly DNS on the site's addresses and BGP;
/// every daemon runs under its own account with `no_new_privs` and no spare capability.
fn exposure_checks(checks: &mut Vec<Check>, b: &BootOutcome, fin: &Final, lab: &Lab) {
    let program = match lab.dns {
        imrs_config::recipe::DnsImpl::Nsd => "nsd",
        imrs_config::recipe::DnsImpl::Knot => "knotd",
    };
    let p = &lab.plan;
    let addresses = [
        p.service_v4.into(),
        p.service_v6.into(),
        p.guest_v4.addr(),
        p.guest_v6.addr(),
    ];
    let want = super::exposure::expected_listening(&addresses, program);
    let got: std::collections::BTreeSet<String> = b.listening.iter().cloned().collect();
    let missing: Vec<&String> = want.difference(&got).collect();
    let extra: Vec<&String> = got.difference(&want).collect();
    check(
        checks,
        &format!(
            "{}: listening exactly on DNS 53 (service and management addresses) and BGP 179",
            b.label
        ),
        missing.is_empty() && extra.is_empty(),
        if missing.is_empty() && extra.is_empty() {
            format!("{} sockets as expected", got.len())
        } else {
            format!("missing {missing:?}; unexpected {extra:?}")
        },
    );
    let answered: Vec<String> = fin
        .reach
        .iter()
        .filter(|p| p.outcome != super::reach::Outcome::Silent)
        .map(|p| format!("{} {} -> {}: {:?}", p.what, p.from, p.to, p.outcome))
        .collect();
    check(
        checks,
        &format!(
            "{}: from the router side, BGP from a non-neighbour, BGP to a service address and \
             other TCP ports get no answer",
            b.label
        ),
        !fin.reach.is_empty() && answered.is_empty(),
        if answered.is_empty() {
            format!("{} probes, all silent", fin.reach.len())
        } else {
            answered.join("; ")
        },
    );
    let problems = super::exposure::daemon_problems(&b.daemons, program);
    check(
        checks,
        &format!(
            "{}: every daemon under its own account, no_new_privs, no spare capability",
            b.label
        ),
        problems.is_empty(),
        if problems.is_empty() {
            b.daemons
                .iter()
                .map(|d| format!("{} uid {} caps [{}]", d.program, d.uid, d.caps.join(",")))
                .collect::<Vec<_>>()
                .join("; ")
        } else {
            problems.join("; ")
        },
    );
}

fn serving_checks(checks: &mut Vec<Check>, b: &BootOutcome, fin: &Final, serial: u32) {
    check(
        checks,
        &format!(
            "{}: serving (specifics from AS {IMRS_ASN}, . SOA answered)",
            b.label
        ),
        b.serving_s.is_some(),
        b.serving_s.map_or_else(
            || {
                format!(
                    "never; the router holds [{}]; sessions [{}]",
                    fin.routes
                        .iter()
                        .map(|r| format!("{} from {:?}", r.prefix, r.origin_as))
                        .collect::<Vec<_>>()
                        .join(", "),
                    sessions_text(&fin.sessions)
                )
            },
            |s| format!("after {s:.1} s"),
        ),
    );
    let good = fin
        .soa
        .iter()
        .filter(|a| a.ok() && a.serial == Some(serial) && a.nsid.is_some())
        .count();
    check(
        checks,
        &format!(
            "{}: . SOA serial {serial} with AA and NSID over UDP+TCP, IPv4+IPv6",
            b.label
        ),
        good == 4 && fin.soa.len() == 4,
        fin.soa
            .iter()
            .map(|a| {
                format!(
                    "{}/{}: {}",
                    a.server,
                    a.transport,
                    if a.ok() {
                        format!(
                            "serial {} nsid {}",
                            a.serial.unwrap_or(0),
                            a.nsid.as_deref().unwrap_or("NONE")
                        )
                    } else {
                        a.error.clone().unwrap_or_default()
                    }
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
    );
}

/// Runs `scenario` in a fresh namespace and returns its summary.
pub fn run(lab: &mut Lab, scenario: Scenario) -> Result<Summary> {
    if scenario.needs_disk() && lab.boot != super::LabBoot::Disk {
        anyhow::bail!(
            "scenario {} needs --boot disk (slots live on the appliance disk)",
            scenario.name()
        );
    }
    if scenario == Scenario::Telemetry {
        lab.zone.clock = telemetry::clock_before_midnight(lab.zone.clock)?;
    }
    let ns = NetNs::create("lab")?;
    ns.add_tap(TAP, &lab.plan.tap_addresses())?;
    for (dest, via) in lab.plan.service_routes() {
        ns.add_route(dest, via, TAP)?;
    }
    lab.progress(format!(
        "lab: namespace {} with tap {TAP} ({})",
        ns.name(),
        lab.plan
            .tap_addresses()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    ));
    let router = Router::start(
        lab.router,
        &ns,
        &lab.workdir.join(lab.router.name()),
        &lab.plan.router_config(),
    )?;
    lab.progress(format!(
        "lab: router {} AS {} at {} / {}",
        lab.router.product(),
        lab.plan.router_asn,
        lab.plan.router_v4,
        lab.plan.router_v6
    ));
    let inbox = match &lab.notices {
        Some(_) => {
            let i =
                super::notices::Inbox::start(&ns, &lab.workdir.join("host"), &lab.plan, &lab.tls)?;
            lab.progress(format!("lab: the host's inboxes: {}", i.describe()));
            Some(i)
        }
        None => None,
    };
    let nts = if lab.plan.nts.is_empty() {
        None
    } else {
        Some(start_nts(lab, &ns)?)
    };
    let mut svc = Services {
        inbox,
        receiver: None,
        xfr: None,
        nts,
        router,
        ns,
    };
    if scenario != Scenario::XfrDown {
        lab.start_xfr(&mut svc, scenario == Scenario::TamperedZone)?;
        lab.progress(format!(
            "lab: transfer server (NSD) serving {} on {}{}",
            lab.zone.serial,
            lab.plan
                .xfr
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" "),
            lab.tampered
                .as_ref()
                .map(|t| format!(" (TAMPERED: {t})"))
                .unwrap_or_default()
        ));
    }
    if scenario != Scenario::ReceiverDown {
        lab.start_receiver(&mut svc)?;
        lab.progress(format!("lab: receiver on https://{}", lab.plan.receiver));
    }
    let late = lab.late.as_secs_f64();
    let one = |goal| BootPlan {
        label: "boot 1".into(),
        goal,
        cut_update_at: None,
        xfr_at: (scenario == Scenario::XfrDown).then_some(late),
        receiver_after_phone_home: (scenario == Scenario::ReceiverDown).then_some(late),
        // Refused twice (reported once), then the transfer server hands out the good zone.
        good_zone_after: (scenario == Scenario::TamperedZone).then_some(2),
        // With NTS servers the box sets its clock again while it serves (every
        // NTS_RESYNC_S in the lab): seen before the boot ends.
        until_console: (!lab.plan.nts.is_empty()).then_some(NTS_AGAIN),
    };
    let mut checks = Vec::new();
    let mut boots = Vec::new();
    let mut second_serving = None;
    let (install_boot, fin) = match scenario {
        Scenario::Normal | Scenario::Nts | Scenario::XfrDown | Scenario::ReceiverDown => {
            let (b, t, fin) = lab.boot(&mut svc, &one(Goal::Install), 0)?;
            install_checks(&mut checks, &b, &t, &fin, 0, lab);
            checks.extend(lab.told_checks(&svc, &fin, "boot 1")?);
            if let Some(nts) = svc.nts.as_mut() {
                nts.ensure_running()?;
                nts_checks(&mut checks, &lab.console_of("boot 1"), &lab.plan);
            }
            if scenario == Scenario::XfrDown {
                let zone_end = t.get("zone").and_then(|s| s.ended_at_s);
                check(
                    &mut checks,
                    "zone stage passed only after the late transfer server came up",
                    matches!((zone_end, fin.xfr_started_s), (Some(z), Some(x)) if z >= x)
                        && t.status("zone") == Some(Status::Passed),
                    format!(
                        "transfer server up at {}, zone stage ended at {}",
                        opt_s(fin.xfr_started_s),
                        opt_s(zone_end)
                    ),
                );
            }
            if scenario == Scenario::ReceiverDown {
                check(
                    &mut checks,
                    "the report arrived after the late receiver came up",
                    matches!((b.report_s, fin.receiver_started_s), (Some(r), Some(s)) if r >= s),
                    format!(
                        "receiver up at {}, report at {}",
                        opt_s(fin.receiver_started_s),
                        opt_s(b.report_s)
                    ),
                );
            }
            boots.push(b);
            (0, fin)
        }
        Scenario::Telemetry => {
            let (b, t, fin) = lab.boot(&mut svc, &one(Goal::Telemetry), 0)?;
            install_checks(&mut checks, &b, &t, &fin, 0, lab);
            let day = telemetry::ending_day(lab.zone.clock)?;
            checks.extend(telemetry::checks(
                &lab.exe,
                &lab.db(),
                &lab.workdir.join("rssac002"),
                day,
                fin.traffic.as_ref().unwrap_or(&Traffic::default()),
            ));
            boots.push(b);
            (0, fin)
        }
        Scenario::RemoteDrain => {
            let (b, t, fin) = lab.boot(&mut svc, &one(Goal::RemoteDrain), 0)?;
            install_checks(&mut checks, &b, &t, &fin, 0, lab);
            remote_checks(&mut checks, fin.remote.as_ref());
            boots.push(b);
            (0, fin)
        }
        Scenario::RemoteUpdate => {
            let (fin1, first_ok) =
                lab.install_boot(&mut svc, &one(Goal::RemoteUpdate), &mut checks, &mut boots)?;
            let base = fin1.reports.len();
            let rm1 = fin1.remote.clone().unwrap_or_default();
            let boot1 = lab.console_of("boot 1");
            update_pickup_checks(
                &mut checks,
                "boot 1",
                "update",
                'b',
                &rm1,
                &boot1,
                boots.last(),
            );
            let rebooted = |b: &[BootOutcome]| b.last().is_some_and(|b| b.exited.is_some());
            if !(first_ok && rm1.update_picked.is_some() && rebooted(&boots)) {
                (0, fin1)
            } else {
                // Boot 2: slot B; once the update's result is in, `rollback`.
                let two = BootPlan::later("boot 2", Goal::RemoteRollback);
                let (b2, _t2, fin2) = lab.boot(&mut svc, &two, base)?;
                serving_checks(&mut checks, &b2, &fin2, lab.zone.serial);
                let boot2 = lab.console_of("boot 2");
                slot_trial_checks(&mut checks, "boot 2", 'b', &boot2, &lab.slot_entries()?);
                slot_changed_check(&mut checks, "boot 2", &fin2, base, ("b", "a"), false);
                let rm2 = fin2.remote.clone().unwrap_or_default();
                let new_manifest = rm1.update_manifest.clone().unwrap_or_default();
                update_result_checks(
                    &mut checks,
                    ("update", 'b', &new_manifest),
                    &rm2,
                    &fin2,
                    base,
                );
                update_pickup_checks(
                    &mut checks,
                    "boot 2",
                    "rollback",
                    'a',
                    &rm2,
                    &boot2,
                    Some(&b2),
                );
                let base2 = fin2.reports.len();
                let go_on = rm2.update_picked.is_some() && b2.exited.is_some();
                second_serving = b2.serving_s;
                boots.push(b2);
                if go_on {
                    // Boot 3: slot A again, tried and blessed; the rollback's result.
                    let three = BootPlan::later("boot 3", Goal::CommandsResolved);
                    let (b3, _t3, fin3) = lab.boot(&mut svc, &three, base2)?;
                    serving_checks(&mut checks, &b3, &fin3, lab.zone.serial);
                    let boot3 = lab.console_of("boot 3");
                    slot_trial_checks(&mut checks, "boot 3", 'a', &boot3, &lab.slot_entries()?);
                    slot_changed_check(&mut checks, "boot 3", &fin3, base2, ("a", "b"), false);
                    let first_manifest = crate::image_dir::sha256_hex(
                        &std::fs::read(lab.image.join(crate::image_dir::MANIFEST))
                            .context("the lab image's manifest")?,
                    );
                    update_result_checks(
                        &mut checks,
                        ("rollback", 'a', &first_manifest),
                        fin3.remote.as_ref().unwrap_or(&Remote::default()),
                        &fin3,
                        base2,
                    );
                    boots.push(b3);
                    (0, fin1_with(fin1, &fin3))
                } else {
                    (0, fin1_with(fin1, &fin2))
                }
            }
        }
        Scenario::TamperedZone => {
            let (b, t, fin) = lab.boot(&mut svc, &one(Goal::Install), 0)?;
            tampered_checks(&mut checks, &b, &t, &fin, lab);
            checks.extend(lab.told_checks(&svc, &fin, "boot 1")?);
            boots.push(b);
            (0, fin)
        }
        Scenario::PowerCut => {
            let (b1, _t1, fin1) = lab.boot(&mut svc, &one(Goal::KillAt("zone")), 0)?;
            check(
                &mut checks,
                "boot 1: power cut while the zone stage runs",
                b1.killed_at.as_deref() == Some("zone"),
                b1.killed_at.as_ref().map_or_else(
                    || {
                        format!(
                            "the zone stage never started ({})",
                            b1.stages
                                .iter()
                                .find(|s| !s.status.goes_on())
                                .map(|s| format!(
                                    "stopped at {} {}",
                                    s.name,
                                    s.status.console_word()
                                ))
                                .unwrap_or_else(|| "no stage lines".into())
                        )
                    },
                    |k| format!("killed as {k} started"),
                ),
            );
            // The cut falls while stages run in parallel: BIRD was started right after the
            // network stage and holds its (empty) sessions while the zone stage runs.
            let bird_early = "bgp: BIRD started after the network stage";
            let boot1 = lab.console_of("boot 1");
            check(
                &mut checks,
                "boot 1: BIRD ran in parallel with the zone stage when the power went",
                boot1.contains(bird_early),
                format!("console line {bird_early:?} before the cut"),
            );
            let cut_ok = b1.killed_at.is_some();
            boots.push(b1);
            let base = fin1.reports.len();
            if cut_ok {
                let two = BootPlan::later("boot 2", Goal::Install);
                let (b2, t2, fin2) = lab.boot(&mut svc, &two, base)?;
                check(
                    &mut checks,
                    "boot 2: resumes (hardware done in boot 1)",
                    t2.status("hardware") == Some(Status::DoneEarlier),
                    format!("hardware {}", stage_detail(&t2, "hardware")),
                );
                check(
                    &mut checks,
                    "boot 2: BIRD started again in parallel after the network stage",
                    lab.console_of("boot 2").contains(bird_early),
                    format!("console line {bird_early:?}"),
                );
                install_checks(&mut checks, &b2, &t2, &fin2, base, lab);
                let installs = fin2.reports.iter().filter(|r| r.is_install()).count();
                check(
                    &mut checks,
                    "exactly one install report over both boots",
                    installs == 1,
                    format!("{installs} install report(s)"),
                );
                boots.push(b2);
                (1, fin2)
            } else {
                (0, fin1)
            }
        }
        Scenario::Update => {
            let (fin1, first_ok) =
                lab.install_boot(&mut svc, &one(Goal::Install), &mut checks, &mut boots)?;
            let base = fin1.reports.len();
            if first_ok {
                let written = lab.update_slot_b(3, &[])?;
                lab.progress(format!("lab: {written}"));
                let two = BootPlan::later("boot 2", Goal::ServingReport);
                let (b2, _t2, fin2) = lab.boot(&mut svc, &two, base)?;
                serving_checks(&mut checks, &b2, &fin2, lab.zone.serial);
                let boot2 = lab.console_of("boot 2");
                check(
                    &mut checks,
                    "boot 2: started from slot B on trial",
                    boot2.contains("started from disk slot b") && boot2.contains("slot b on trial"),
                    boot_entry_line(&boot2),
                );
                let entries = lab.slot_entries()?;
                check(
                    &mut checks,
                    "boot 2: healthy, slot B blessed on the disk",
                    boot2.contains("slot b blessed") && entries.iter().any(|e| e == "imrs-b.conf"),
                    format!("entries now: {}", entries.join(" ")),
                );
                slot_changed_check(&mut checks, "boot 2", &fin2, base, ("b", "a"), false);
                second_serving = b2.serving_s;
                boots.push(b2);
                (0, fin1_with(fin1, &fin2))
            } else {
                (0, fin1)
            }
        }
        Scenario::Rollback => {
            let (fin1, first_ok) =
                lab.install_boot(&mut svc, &one(Goal::Install), &mut checks, &mut boots)?;
            let base = fin1.reports.len();
            if first_ok {
                // An image that cannot become healthy: its pipeline ends before DNS and BGP.
                let written = lab.update_slot_b(1, &["imrs.stop_after=zone".to_string()])?;
                lab.progress(format!("lab: {written}"));
                let two = BootPlan::later("boot 2", Goal::Reboots);
                let (b2, _t2, fin2) = lab.boot(&mut svc, &two, base)?;
                let boot2 = lab.console_of("boot 2");
                check(
                    &mut checks,
                    "boot 2: slot B on trial gives up and reboots by itself",
                    boot2.contains("slot b on trial")
                        && boot2.contains("did not become healthy")
                        && b2.exited.is_some(),
                    boot2
                        .lines()
                        .find(|l| l.contains("did not become healthy"))
                        .map(str::trim)
                        .map_or_else(
                            || format!("no give-up line; {}", boot_entry_line(&boot2)),
                            str::to_string,
                        ),
                );
                check(
                    &mut checks,
                    "boot 2: the specific prefixes are never announced from slot B",
                    !b2.specifics_seen,
                    if b2.specifics_seen {
                        "the router saw a specific prefix".to_string()
                    } else {
                        "none seen".to_string()
                    },
                );
                let after_b = lab.slot_entries()?;
                check(
                    &mut checks,
                    "boot 2: slot B not blessed, its tries spent",
                    !after_b.iter().any(|e| e == "imrs-b.conf")
                        && after_b.iter().any(|e| e.starts_with("imrs-b+0-")),
                    format!("entries now: {}", after_b.join(" ")),
                );
                let base2 = fin2.reports.len();
                boots.push(b2);
                let three = BootPlan::later("boot 3", Goal::ServingReport);
                let (b3, _t3, fin3) = lab.boot(&mut svc, &three, base2)?;
                serving_checks(&mut checks, &b3, &fin3, lab.zone.serial);
                let boot3 = lab.console_of("boot 3");
                check(
                    &mut checks,
                    "boot 3: back on slot A (blessed)",
                    boot3.contains("started from disk slot a") && boot3.contains("(blessed)"),
                    boot_entry_line(&boot3),
                );
                slot_changed_check(&mut checks, "boot 3", &fin3, base2, ("a", "b"), true);
                second_serving = b3.serving_s;
                boots.push(b3);
                (0, fin1_with(fin1, &fin3))
            } else {
                (0, fin1)
            }
        }
        Scenario::PowerCutUpdate => {
            let mut plan = one(Goal::Install);
            plan.cut_update_at = Some(500);
            let (b1, t1, fin1) = lab.boot(&mut svc, &plan, 0)?;
            install_checks(&mut checks, &b1, &t1, &fin1, 0, lab);
            let cut = b1
                .actions
                .iter()
                .any(|a| a.contains("update into slot B cut"));
            check(
                &mut checks,
                "boot 1: an update into slot B loses power half-way",
                cut,
                b1.actions.last().cloned().unwrap_or_default(),
            );
            let entries = lab.slot_entries()?;
            check(
                &mut checks,
                "after the cut: slot B has no entry, slot A's is untouched",
                entries == ["imrs-a.conf"],
                format!("entries: {}", entries.join(" ")),
            );
            let first_ok = checks.iter().all(|c| c.ok);
            let base = fin1.reports.len();
            boots.push(b1);
            if first_ok {
                let two = BootPlan::later("boot 2", Goal::Serving);
                let (b2, _t2, fin2) = lab.boot(&mut svc, &two, base)?;
                serving_checks(&mut checks, &b2, &fin2, lab.zone.serial);
                let boot2 = lab.console_of("boot 2");
                check(
                    &mut checks,
                    "boot 2: slot A boots again (blessed)",
                    boot2.contains("started from disk slot a") && boot2.contains("(blessed)"),
                    boot_entry_line(&boot2),
                );
                let new: Vec<&str> = fin2.reports[base..]
                    .iter()
                    .map(|r| r.event.as_str())
                    .filter(|e| *e != "heartbeat")
                    .collect();
                check(
                    &mut checks,
                    "boot 2: no new report but heartbeats (nothing changed on the running slot)",
                    new.is_empty(),
                    format!("new report(s): [{}]", new.join(", ")),
                );
                second_serving = b2.serving_s;
                boots.push(b2);
                (0, fin1_with(fin1, &fin2))
            } else {
                (0, fin1)
            }
        }
        Scenario::SecondBoot => {
            let (fin1, first_ok) =
                lab.install_boot(&mut svc, &one(Goal::Install), &mut checks, &mut boots)?;
            let base = fin1.reports.len();
            if first_ok {
                let two = BootPlan::later("boot 2", Goal::ServingHeartbeat);
                let (b2, t2, fin2) = lab.boot(&mut svc, &two, base)?;
                serving_checks(&mut checks, &b2, &fin2, lab.zone.serial);
                for s in ["hardware", "phone-home"] {
                    check(
                        &mut checks,
                        &format!("boot 2: {s} not repeated"),
                        t2.status(s) == Some(Status::DoneEarlier),
                        format!("{s} {}", stage_detail(&t2, s)),
                    );
                }
                let new_installs: Vec<&StoredReport> = fin2
                    .reports
                    .iter()
                    .skip(base)
                    .filter(|r| r.is_install())
                    .collect();
                check(
                    &mut checks,
                    "boot 2: no new install report",
                    new_installs.is_empty(),
                    format!(
                        "{} new report(s) in boot 2: [{}]",
                        fin2.reports.len() - base,
                        fin2.reports
                            .iter()
                            .skip(base)
                            .map(|r| r.event.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
                let beat = fin2
                    .reports
                    .iter()
                    .skip(base)
                    .find(|r| r.event == "heartbeat");
                check(
                    &mut checks,
                    &format!(
                        "boot 2: a verified heartbeat with zone serial {}",
                        lab.zone.serial
                    ),
                    beat.is_some_and(|r| r.zone_serial == Some(lab.zone.serial)),
                    beat.map_or("no heartbeat".to_string(), |r| {
                        format!("heartbeat with zone serial {:?}", r.zone_serial)
                    }),
                );
                second_serving = b2.serving_s;
                boots.push(b2);
                (0, fin1_with(fin1, &fin2))
            } else {
                (0, fin1)
            }
        }
    };
    drop(svc);
    if lab.boot == super::LabBoot::Disk {
        let boot1 = lab.console_of("boot 1");
        let grown: Vec<&str> = boot1
            .lines()
            .filter(|l| l.contains("IMRS-DATA") && l.contains("grown"))
            .map(str::trim)
            .collect();
        check(
            &mut checks,
            "boot 1: IMRS-DATA grown to the disk's end (table and file system)",
            grown.iter().any(|l| l.contains("grown to the end"))
                && grown.iter().any(|l| l.contains("file system grown online")),
            if grown.is_empty() {
                "no growth line on the console".to_string()
            } else {
                grown.join(" | ")
            },
        );
    }
    let ib = &boots[install_boot];
    let install_report = fin.reports.iter().find(|r| r.is_install());
    let good: Vec<u32> = fin
        .soa
        .iter()
        .filter(|a| a.ok())
        .filter_map(|a| a.serial)
        .collect();
    let soa_serial = match good.first() {
        Some(s) if good.iter().all(|x| x == s) => Some(*s),
        _ => None,
    };
    let passed = !checks.is_empty() && checks.iter().all(|c| c.ok);
    Ok(Summary {
        passed,
        scenario: scenario.name().into(),
        expectation: scenario.expectation().into(),
        checks,
        boot_to_serving_s: ib.serving_s,
        boot_to_report_s: install_report.and(ib.report_s),
        second_boot_to_serving_s: second_serving,
        stages: ib.stages.clone(),
        router: lab.router,
        routes: fin.routes,
        sessions: fin.sessions,
        soa: fin.soa,
        soa_serial,
        report_verified: install_report.is_some(),
        report_event: install_report.map(|r| r.event.clone()),
        report_failed_stage: install_report.and_then(|r| r.failed_stage.clone()),
        report_failed_reason: install_report.and_then(|r| r.failed_reason.clone()),
        reports: fin.reports,
        rejected_reports: fin.rejected,
        accel: format!("{:?}", lab.accel).to_lowercase(),
        image: lab.image.clone(),
        console_log: lab.console_log(),
        workdir: lab.workdir.clone(),
        tampered: lab.tampered.clone(),
        listening: ib.listening.clone(),
        daemons: ib.daemons.clone(),
        reach: fin.reach,
        boots,
    })
}

/// The first boot's measurements with the receiver's final view.
fn fin1_with(mut fin1: Final, fin2: &Final) -> Final {
    fin1.reports = fin2.reports.clone();
    fin1.rejected = fin2.rejected;
    fin1
}

fn opt_s(v: Option<f64>) -> String {
    v.map_or("never".into(), |s| format!("{s:.1} s"))
}

/// `192.0.2.10 established, 2001:db8:1::10 active`.
fn sessions_text(sessions: &[Neighbor]) -> String {
    sessions
        .iter()
        .map(|n| format!("{} {}", n.address, n.state))
        .collect::<Vec<_>>()
        .join(", ")
}
