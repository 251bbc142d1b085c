//! Phone-home reports: what an appliance tells ICANN after installing (passed or failed) and on
//! later boots, and the signed envelope it travels in.
//!
//! The report is serialised as canonical JSON ([`crate::image::canonical_json`]: sorted keys,
//! pretty-printed, trailing newline). The envelope [`SignedReport`] carries those exact bytes as
//! a JSON string next to a detached Ed25519 signature (hex) and the device's public key (SPKI
//! PEM). [`verify`] checks the signature over the exact bytes before parsing anything, then parses
//! with `deny_unknown_fields`, validates, and insists the bytes are the canonical form of what
//! they parse to, so one report has exactly one signed representation.
//!
//! The hardware report is kept as a free JSON value so the hardware module can evolve without a
//! schema bump here; everything else is typed.

use std::net::IpAddr;

use ed25519_dalek::{SigningKey, VerifyingKey};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::image::canonical_json;
use crate::keys;
pub use crate::stage::{Stage, Status};

/// The report schema version this build writes.
/// Version 2: stages and statuses are the shared vocabulary ([`crate::stage`]): `done-earlier`
/// and `not-reached` (was `skipped`), no `not-built-yet`.
/// Version 3: every report names the disk slot it runs from ([`Report::slot`]); the
/// `slot-changed` event.
pub const REPORT_VERSION: u32 = 3;

/// The oldest report version this build still accepts (reports queued in an outbox by the
/// previous image are delivered after an update).
pub const OLDEST_REPORT_VERSION: u32 = 2;

/// Bytes of randomness in a report id (shown as twice as many hex digits).
pub const REPORT_ID_BYTES: usize = 16;

/// A report could not be made, parsed or verified.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The envelope is not JSON of the envelope's shape.
    #[error("signed report envelope: {message}")]
    Envelope {
        /// The parser's message.
        message: String,
    },
    /// The envelope's public key is not an Ed25519 SPKI PEM key.
    #[error("signed report: public key unusable")]
    PublicKey {
        /// Why.
        #[source]
        source: keys::KeyError,
    },
    /// The envelope's signature is not 128 hex digits.
    #[error("signed report from device {key_id}: signature is not 128 hex digits")]
    SignatureFormat {
        /// The device key's id.
        key_id: String,
    },
    /// The signature does not match the report bytes and the public key.
    #[error("signed report from device {key_id}: signature does not verify")]
    BadSignature {
        /// The device key's id.
        key_id: String,
    },
    /// The (signed) report text is not a report of this schema.
    #[error("report from device {key_id}: {message}")]
    Parse {
        /// The device key's id.
        key_id: String,
        /// The parser's message (names the key).
        message: String,
    },
    /// A field breaks a rule.
    #[error("report {id}: {field} = {value}: {rule}")]
    Invalid {
        /// The report id as written.
        id: String,
        /// Dotted field path.
        field: String,
        /// The offending value.
        value: String,
        /// The rule it breaks.
        rule: String,
    },
    /// The signed bytes are not the canonical JSON of the report they contain.
    #[error("report {id}: signed bytes are not canonical JSON")]
    NotCanonical {
        /// The report id.
        id: String,
    },
    /// The kernel random source failed while making a report id.
    #[error("cannot get random bytes for a report id: {0}")]
    Random(String),
}

/// A report id: [`REPORT_ID_BYTES`] random bytes as lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ReportId(String);

impl ReportId {
    /// A fresh id from the kernel's random source.
    pub fn random() -> Result<ReportId, ReportError> {
        let mut b = [0u8; REPORT_ID_BYTES];
        getrandom::fill(&mut b).map_err(|e| ReportError::Random(e.to_string()))?;
        Ok(ReportId(hex::encode(b)))
    }

    /// The id as text (also a safe file name).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ReportId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let ok = s.len() == 2 * REPORT_ID_BYTES
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if ok {
            Ok(ReportId(s))
        } else {
            Err(format!(
                "report id {s:?} is not {} lowercase hex digits",
                2 * REPORT_ID_BYTES
            ))
        }
    }
}

impl From<ReportId> for String {
    fn from(id: ReportId) -> String {
        id.0
    }
}

impl std::fmt::Display for ReportId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why the report was sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Event {
    /// The first boot passed every stage.
    InstallPassed {},
    /// The first boot stopped at a stage.
    InstallFailed {
        /// The stage that failed.
        stage: Stage,
        /// Why it failed.
        reason: String,
    },
    /// A later boot (the installation passed earlier).
    Boot {},
    /// A later boot became healthy on another slot or image than the box last ran healthy,
    /// or back on its slot after a slot on trial failed ([`SlotReport::fallback`] says why).
    SlotChanged {
        /// The slot the box ran before (`a`, `b`; absent when it booted without slots).
        #[serde(default)]
        previous_slot: Option<String>,
        /// The manifest sha256 of the image it ran there (empty when unknown).
        previous_manifest_sha256: String,
    },
    /// The box serves and says how it is, every `phone_home.heartbeat_s` (report version 3).
    Heartbeat {
        /// Seconds since the init started.
        uptime_s: u64,
        /// The serial of the zone being served, as the zone refresh loop keeps it.
        #[serde(default)]
        zone_serial: Option<u32>,
        /// Seconds since the zone was last confirmed current with a transfer server.
        #[serde(default)]
        zone_checked_s_ago: Option<u64>,
        /// Seconds until the served zone expires (negative: expired).
        #[serde(default)]
        zone_expires_in_s: Option<i64>,
        /// The operator's drain switch is on.
        drained: bool,
        /// Why the DNS service's last health probe failed (absent: it answered).
        #[serde(default)]
        dns_probe_error: Option<String>,
        /// The last error the init logged, if any.
        #[serde(default)]
        last_error: Option<String>,
        /// Heartbeats this boot dropped from the outbox, oldest first, because too many were
        /// waiting for the receiver.
        #[serde(default)]
        heartbeats_dropped: u64,
        /// The RSSAC002 collector, when it runs (absent from boxes without telemetry and from
        /// older boxes).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        telemetry: Option<CollectorHealth>,
    },
    /// The RSSAC002 metrics of one UTC day as this box counted them (report version 3): sent
    /// after the day ends, and on demand for the day so far; a later report for the same day
    /// supersedes an earlier one (the box counts the whole day).
    Telemetry {
        /// The UTC day, `YYYY-MM-DD`.
        day: String,
        /// Whether the day had ended when this was sent.
        complete: bool,
        /// What was counted.
        metrics: Box<crate::rssac002::DayMetrics>,
    },
    /// What became of a signed command from the operations team (report version 3).
    CommandResult {
        /// The command's sequence number (0 when the command was too malformed to say).
        sequence: u64,
        /// The command's action (`drain`, `reboot`, ...; `unknown` when it could not be read).
        action: String,
        /// How it ended.
        outcome: CommandOutcome,
        /// Why it failed or was refused.
        #[serde(default)]
        reason: Option<String>,
        /// `collect-logs`: the last console lines, oldest first.
        #[serde(default)]
        logs: Vec<String>,
    },
}

/// How a command ended on the box.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CommandOutcome {
    /// Executed.
    Done,
    /// Admitted, but executing it failed.
    Failed,
    /// Not admitted (signer, device, expiry, sequence): nothing was done.
    Refused,
}

impl CommandOutcome {
    /// The outcome as written.
    pub fn name(self) -> &'static str {
        match self {
            CommandOutcome::Done => "done",
            CommandOutcome::Failed => "failed",
            CommandOutcome::Refused => "refused",
        }
    }
}

/// Most console lines a `command-result` carries (what `collect-logs` may ask for).
pub const MAX_LOG_LINES: usize = crate::command::MAX_LOG_LINES as usize;

impl Event {
    /// The event's name as written (`install-passed`, `install-failed`, `boot`).
    pub fn name(&self) -> &'static str {
        match self {
            Event::InstallPassed {} => "install-passed",
            Event::InstallFailed { .. } => "install-failed",
            Event::Boot {} => "boot",
            Event::SlotChanged { .. } => "slot-changed",
            Event::Heartbeat { .. } => "heartbeat",
            Event::CommandResult { .. } => "command-result",
            Event::Telemetry { .. } => "telemetry",
        }
    }
}

/// How the box's RSSAC002 collector is doing, in its heartbeats (counts since the boot).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorHealth {
    /// Connections from the DNS daemon accepted (one per daemon start).
    pub connections: u64,
    /// Queries and responses counted.
    pub counted: u64,
    /// Payloads that were not dnstap or lacked a field, and connections closed for breaking
    /// Frame Streams.
    pub bad: u64,
    /// Payloads for a day already reported or no longer held (a clock step).
    pub late: u64,
    /// The box's own queries (health probes), left out.
    pub own: u64,
}

/// One pipeline stage's outcome and timing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageOutcome {
    /// The stage.
    pub stage: Stage,
    /// How it ended.
    pub status: Status,
    /// Failure reason.
    #[serde(default)]
    pub reason: Option<String>,
    /// Seconds taken.
    pub seconds: f64,
}

/// The appliance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    /// DMI product serial (`sys/class/dmi/id/product_serial`).
    pub serial: String,
    /// Hardware profile name (`calypso`, `pandora`, `qemu`).
    pub profile: String,
}

/// Where the appliance is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteRef {
    /// The site config's `site_id`.
    pub site_id: String,
    /// The instance name.
    pub instance: String,
}

/// The image the appliance runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRef {
    /// Image name.
    pub name: String,
    /// Image version.
    pub version: String,
    /// sha256 (hex) of the signed manifest.
    pub manifest_sha256: String,
}

/// One network interface as configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterfaceReport {
    /// Kernel name.
    pub name: String,
    /// MAC address.
    #[serde(default)]
    pub mac: Option<String>,
    /// Link up.
    pub up: bool,
    /// Addresses with prefix length.
    pub addresses: Vec<IpNet>,
}

/// One BGP session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BgpSession {
    /// Neighbour name.
    pub name: String,
    /// Neighbour address.
    pub address: IpAddr,
    /// Neighbour AS.
    pub asn: u32,
    /// Session state as the box reads it from BIRD: the protocol state and the BGP state
    /// (`up Established`, `start Active`, ...).
    pub state: String,
}

/// BGP at report time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BgpReport {
    /// Sessions.
    pub sessions: Vec<BgpSession>,
    /// Prefixes announced.
    pub announced: Vec<IpNet>,
}

/// The root zone at report time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneReport {
    /// SOA serial of the zone being served.
    pub serial: u32,
    /// Verification summary (ZONEMD, DNSSEC), one line.
    pub verification: String,
}

/// The DNS service at report time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsReport {
    /// Answering authoritatively for the root.
    pub ready: bool,
    /// Daemon (`nsd`, `knot`).
    #[serde(default)]
    pub daemon: Option<String>,
    /// What is missing when not ready.
    #[serde(default)]
    pub detail: Option<String>,
}

/// The disk slot a report comes from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotReport {
    /// The slot the box runs (`a`, `b`); absent when its kernel was booted directly.
    #[serde(default)]
    pub running: Option<String>,
    /// What systemd-boot said about this boot (entry started, on trial or blessed), or why that
    /// is unknown.
    pub boot_entry: String,
    /// Why the box runs this slot and not the one it was trying: the slot on trial, its image
    /// and how it failed. Absent when there was no fallback.
    #[serde(default)]
    pub fallback: Option<String>,
}

/// A phone-home report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// Schema version; must be [`REPORT_VERSION`].
    pub version: u32,
    /// Random id; retries of one report share it.
    pub id: ReportId,
    /// Why it was sent.
    pub event: Event,
    /// Creation time, seconds since the Unix epoch (UTC) by the device clock.
    pub created_unix: i64,
    /// Where the device clock came from (`ntp`, `rtc`, `none`).
    pub clock_source: String,
    /// A lab site.
    pub lab: bool,
    /// The appliance.
    pub device: Device,
    /// Its site.
    pub site: SiteRef,
    /// Its image.
    pub image: ImageRef,
    /// Every stage's outcome in pipeline order.
    pub stages: Vec<StageOutcome>,
    /// The hardware report as the hardware module serialised it.
    pub hardware: serde_json::Value,
    /// Interfaces and their addresses.
    pub interfaces: Vec<InterfaceReport>,
    /// BGP sessions and announced prefixes.
    pub bgp: BgpReport,
    /// The root zone, when one was loaded.
    #[serde(default)]
    pub zone: Option<ZoneReport>,
    /// DNS readiness.
    pub dns: DnsReport,
    /// The disk slot (version 3 on; absent in version 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<SlotReport>,
}

/// A report as sent: the canonical report bytes, their signature, and the signer's public key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedReport {
    /// The report's canonical JSON, exactly the bytes signed.
    pub report: String,
    /// Ed25519 signature over `report`'s UTF-8 bytes, 128 lowercase hex digits.
    pub signature: String,
    /// The device public key, SPKI PEM.
    pub public_key: String,
}

impl SignedReport {
    /// Parses an envelope (as received over HTTP or read from an outbox file).
    pub fn from_json(bytes: &[u8]) -> Result<SignedReport, ReportError> {
        serde_json::from_slice(bytes).map_err(|e| ReportError::Envelope {
            message: e.to_string(),
        })
    }

    /// The envelope as JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The signer's public key.
    pub fn key(&self) -> Result<VerifyingKey, ReportError> {
        keys::parse_public(
            &self.public_key,
            std::path::Path::new("<report public_key>"),
        )
        .map_err(|source| ReportError::PublicKey { source })
    }
}

/// Signs `report`'s canonical JSON with the device key.
pub fn sign(report: &Report, key: &SigningKey) -> SignedReport {
    let bytes = canonical_json(report);
    let text = String::from_utf8(bytes).unwrap_or_default();
    SignedReport {
        signature: keys::sign_hex(key, text.as_bytes()).trim_end().to_string(),
        report: text,
        public_key: keys::public_pem(&key.verifying_key()),
    }
}

/// Checks the signature over the exact report bytes, then parses and validates the report.
/// Nothing in the report is looked at before the signature verifies.
pub fn verify(signed: &SignedReport) -> Result<Report, ReportError> {
    let key = signed.key()?;
    let key_id = keys::key_id(&key);
    let origin = std::path::Path::new("<report signature>");
    let sig = keys::parse_signature(&signed.signature, origin).map_err(|_| {
        ReportError::SignatureFormat {
            key_id: key_id.clone(),
        }
    })?;
    keys::verify(&key, signed.report.as_bytes(), &sig).map_err(|_| ReportError::BadSignature {
        key_id: key_id.clone(),
    })?;
    let report: Report = serde_json::from_str(&signed.report).map_err(|e| ReportError::Parse {
        key_id: key_id.clone(),
        message: e.to_string(),
    })?;
    validate(&report)?;
    if canonical_json(&report) != signed.report.as_bytes() {
        return Err(ReportError::NotCanonical {
            id: report.id.to_string(),
        });
    }
    Ok(report)
}

/// Longest free-text field accepted (reasons, names).
const MAX_TEXT: usize = 4096;

/// A sha256 as 64 lowercase hex digits, or empty (unknown).
fn digest_or_empty(m: &str) -> bool {
    m.is_empty()
        || (m.len() == 64
            && m.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

/// Checks the rules serde cannot express.
pub fn validate(r: &Report) -> Result<(), ReportError> {
    let bad = |field: &str, value: &dyn std::fmt::Display, rule: &str| ReportError::Invalid {
        id: r.id.to_string(),
        field: field.to_string(),
        value: value.to_string(),
        rule: rule.to_string(),
    };
    if !(OLDEST_REPORT_VERSION..=REPORT_VERSION).contains(&r.version) {
        return Err(bad(
            "version",
            &r.version,
            &format!(
                "this build understands report versions {OLDEST_REPORT_VERSION} to \
                 {REPORT_VERSION}"
            ),
        ));
    }
    if r.version >= 3 && r.slot.is_none() {
        return Err(bad("slot", &"absent", "required from report version 3"));
    }
    if r.version < 3
        && (r.slot.is_some()
            || matches!(
                r.event,
                Event::SlotChanged { .. }
                    | Event::Heartbeat { .. }
                    | Event::CommandResult { .. }
                    | Event::Telemetry { .. }
            ))
    {
        return Err(bad(
            "version",
            &r.version,
            "slot, slot-changed, heartbeat, command-result and telemetry need report version 3",
        ));
    }
    if let Event::Telemetry { day, .. } = &r.event
        && (day.len() != 10 || day.parse::<jiff::civil::Date>().is_err())
    {
        return Err(bad(
            "event.day",
            &crate::escape(day),
            "a UTC day, YYYY-MM-DD",
        ));
    }
    if let Event::CommandResult {
        action,
        reason,
        logs,
        ..
    } = &r.event
    {
        if action.is_empty()
            || action.len() > 32
            || !action.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
        {
            return Err(bad(
                "event.action",
                &crate::escape(action),
                "a command action name (a-z and -, at most 32)",
            ));
        }
        if reason.as_ref().is_some_and(|t| t.len() > MAX_TEXT) {
            return Err(bad(
                "event.reason",
                &reason.as_ref().map_or(0, String::len),
                "at most 4096 bytes",
            ));
        }
        if logs.len() > MAX_LOG_LINES {
            return Err(bad(
                "event.logs",
                &logs.len(),
                &format!("at most {MAX_LOG_LINES} lines"),
            ));
        }
        if let Some(l) = logs.iter().find(|l| l.len() > 1024) {
            return Err(bad("event.logs", &l.len(), "lines of at most 1024 bytes"));
        }
    }
    if let Event::Heartbeat {
        dns_probe_error,
        last_error,
        ..
    } = &r.event
    {
        for (field, v) in [
            ("event.dns_probe_error", dns_probe_error),
            ("event.last_error", last_error),
        ] {
            if v.as_ref().is_some_and(|t| t.len() > MAX_TEXT) {
                return Err(bad(
                    field,
                    &v.as_ref().map_or(0, String::len),
                    "at most 4096 bytes",
                ));
            }
        }
    }
    let slot_letter = |v: &Option<String>| v.as_deref().is_none_or(|l| l == "a" || l == "b");
    if let Some(slot) = &r.slot {
        if !slot_letter(&slot.running) {
            return Err(bad(
                "slot.running",
                &slot.running.as_deref().unwrap_or_default(),
                "a or b",
            ));
        }
        for (field, v) in [
            ("slot.boot_entry", Some(&slot.boot_entry)),
            ("slot.fallback", slot.fallback.as_ref()),
        ] {
            if v.is_some_and(|t| t.len() > MAX_TEXT) {
                return Err(bad(field, &v.map_or(0, String::len), "at most 4096 bytes"));
            }
        }
    }
    if let Event::SlotChanged {
        previous_slot,
        previous_manifest_sha256,
    } = &r.event
    {
        if !slot_letter(previous_slot) {
            return Err(bad(
                "event.previous_slot",
                &previous_slot.as_deref().unwrap_or_default(),
                "a or b",
            ));
        }
        if !digest_or_empty(previous_manifest_sha256) {
            return Err(bad(
                "event.previous_manifest_sha256",
                previous_manifest_sha256,
                "64 lowercase hex digits (or empty when unknown)",
            ));
        }
    }
    let texts = [
        ("device.serial", r.device.serial.as_str(), false),
        ("device.profile", r.device.profile.as_str(), false),
        ("site.site_id", r.site.site_id.as_str(), true),
        ("site.instance", r.site.instance.as_str(), true),
        ("clock_source", r.clock_source.as_str(), true),
    ];
    for (field, value, required) in texts {
        if (required && value.trim().is_empty()) || value.len() > MAX_TEXT {
            return Err(bad(field, &value, "non-empty text of at most 4096 bytes"));
        }
    }
    if let Event::InstallFailed { reason, .. } = &r.event
        && reason.len() > MAX_TEXT
    {
        return Err(bad("event.reason", &reason.len(), "at most 4096 bytes"));
    }
    let m = &r.image.manifest_sha256;
    if !digest_or_empty(m) {
        return Err(bad(
            "image.manifest_sha256",
            m,
            "64 lowercase hex digits (or empty when unknown)",
        ));
    }
    for (i, s) in r.stages.iter().enumerate() {
        if !(s.seconds.is_finite() && s.seconds >= 0.0) {
            return Err(bad(
                &format!("stages[{i}].seconds"),
                &s.seconds,
                "a non-negative number",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        Report {
            version: REPORT_VERSION,
            id: ReportId::random().unwrap(),
            event: Event::InstallPassed {},
            created_unix: 1_767_225_600,
            clock_source: "ntp".into(),
            lab: true,
            device: Device {
                serial: "SN-0001".into(),
                profile: "qemu".into(),
            },
            site: SiteRef {
                site_id: "lab-1".into(),
                instance: "xx-lab-01.l.root-servers.org".into(),
            },
            image: ImageRef {
                name: "qemu".into(),
                version: "0.1.0".into(),
                manifest_sha256: "ab".repeat(32),
            },
            stages: vec![StageOutcome {
                stage: Stage::Hardware,
                status: Status::Passed,
                reason: None,
                seconds: 0.25,
            }],
            hardware: serde_json::json!({"profile": "qemu", "checks": [{"name": "cpu.count"}]}),
            interfaces: vec![InterfaceReport {
                name: "eth0".into(),
                mac: Some("52:54:00:12:34:56".into()),
                up: true,
                addresses: vec!["192.0.2.10/24".parse().unwrap()],
            }],
            bgp: BgpReport {
                sessions: vec![BgpSession {
                    name: "r1".into(),
                    address: "192.0.2.1".parse().unwrap(),
                    asn: 64512,
                    state: "Established".into(),
                }],
                announced: vec!["199.7.83.0/24".parse().unwrap()],
            },
            zone: Some(ZoneReport {
                serial: 2026010100,
                verification: "zonemd ok, dnssec ok".into(),
            }),
            dns: DnsReport {
                ready: true,
                daemon: Some("nsd".into()),
                detail: None,
            },
            slot: Some(SlotReport {
                running: Some("a".into()),
                boot_entry: "systemd-boot started imrs-a.conf: slot a (blessed)".into(),
                fallback: None,
            }),
        }
    }

    #[test]
    fn floats_with_long_mantissas_stay_canonical() {
        // Stage timings and hardware measurements are f64: every one must read back to the
        // same bits, or a real device's report fails the canonical-form check (it did, in the
        // lab, before serde_json's exact float parsing was switched on).
        let key = keys::generate().unwrap();
        let mut r = sample();
        for (i, s) in r.stages.iter_mut().enumerate() {
            // 1.8975236519999998: a dns stage time from the lab that serde_json's fast float
            // parser reads back one ulp off.
            s.seconds = 1.8975236519999998 + i as f64 / 3.0;
        }
        r.hardware = serde_json::json!({"x": [1.8975236519999998, 1.0 / 3.0, 2.0_f64.sqrt()]});
        assert_eq!(verify(&sign(&r, &key)).unwrap(), r);
    }

    #[test]
    fn roundtrip_through_envelope() {
        let key = keys::generate().unwrap();
        let r = sample();
        let signed = sign(&r, &key);
        let wire = signed.to_json();
        let back = SignedReport::from_json(&wire).unwrap();
        assert_eq!(verify(&back).unwrap(), r);
        // A failure report too.
        let mut f = sample();
        f.event = Event::InstallFailed {
            stage: Stage::Zone,
            reason: "AXFR from 192.0.2.53: connection refused".into(),
        };
        assert_eq!(verify(&sign(&f, &key)).unwrap(), f);
        assert!(signed.report.contains("\"kind\": \"install-passed\""));
        // A slot change after a fallback.
        let mut c = sample();
        c.event = Event::SlotChanged {
            previous_slot: Some("b".into()),
            previous_manifest_sha256: "cd".repeat(32),
        };
        c.slot = Some(SlotReport {
            running: Some("a".into()),
            boot_entry: "systemd-boot started imrs-a.conf: slot a (blessed)".into(),
            fallback: Some("slot b on trial stopped at stage dns".into()),
        });
        assert_eq!(verify(&sign(&c, &key)).unwrap(), c);
        assert_eq!(c.event.name(), "slot-changed");
        // A heartbeat.
        let mut h = sample();
        h.event = Event::Heartbeat {
            uptime_s: 3600,
            zone_serial: Some(2026010100),
            zone_checked_s_ago: Some(120),
            zone_expires_in_s: Some(-5),
            drained: true,
            dns_probe_error: None,
            last_error: Some("zone refresh: no transfer server answered".into()),
            heartbeats_dropped: 3,
            telemetry: Some(CollectorHealth {
                connections: 1,
                counted: 20,
                bad: 0,
                late: 2,
                own: 40,
            }),
        };
        assert_eq!(verify(&sign(&h, &key)).unwrap(), h);
        assert_eq!(h.event.name(), "heartbeat");
        // Without a collector the field is absent, as in older boxes' heartbeats.
        let mut plain = h.clone();
        if let Event::Heartbeat { telemetry, .. } = &mut plain.event {
            *telemetry = None;
        }
        assert!(!serde_json::to_string(&plain).unwrap().contains("telemetry"));
        assert_eq!(verify(&sign(&plain, &key)).unwrap(), plain);
        // A command's result, and results that say too much or name no action.
        let mut c = sample();
        c.event = Event::CommandResult {
            sequence: 7,
            action: "collect-logs".into(),
            outcome: CommandOutcome::Done,
            reason: None,
            logs: vec!["imrs-init: serving".into()],
        };
        assert_eq!(verify(&sign(&c, &key)).unwrap(), c);
        assert_eq!(c.event.name(), "command-result");
        let result = |action: &str, logs: Vec<String>| {
            let mut r = sample();
            r.event = Event::CommandResult {
                sequence: 7,
                action: action.into(),
                outcome: CommandOutcome::Refused,
                reason: Some("replayed".into()),
                logs,
            };
            verify(&sign(&r, &key))
        };
        for (action, logs, field) in [
            ("", vec![], "event.action"),
            ("Drain\n", vec![], "event.action"),
            (
                "collect-logs",
                vec![String::new(); MAX_LOG_LINES + 1],
                "event.logs",
            ),
            ("collect-logs", vec!["x".repeat(1025)], "event.logs"),
        ] {
            match result(action, logs) {
                Err(ReportError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{action}: {other:?}"),
            }
        }
        // A version 2 report (queued by the previous image) is still accepted as it was.
        let mut old = sample();
        old.version = 2;
        old.slot = None;
        let signed_old = sign(&old, &key);
        assert!(!signed_old.report.contains("\"slot\""));
        assert_eq!(verify(&signed_old).unwrap(), old);
    }

    #[test]
    fn tampering_and_wrong_keys_are_rejected() {
        let key = keys::generate().unwrap();
        let signed = sign(&sample(), &key);
        // One field changed after signing.
        let mut t = signed.clone();
        t.report = t.report.replace("SN-0001", "SN-0002");
        assert_ne!(t.report, signed.report);
        assert!(matches!(verify(&t), Err(ReportError::BadSignature { .. })));
        // Whitespace alone changes the bytes.
        let mut t = signed.clone();
        t.report.push(' ');
        assert!(matches!(verify(&t), Err(ReportError::BadSignature { .. })));
        // Another key's public half next to the original signature.
        let other = keys::generate().unwrap();
        let mut t = signed.clone();
        t.public_key = keys::public_pem(&other.verifying_key());
        assert!(matches!(verify(&t), Err(ReportError::BadSignature { .. })));
        // Garbage signature and key.
        let mut t = signed.clone();
        t.signature = "abcd".into();
        assert!(matches!(
            verify(&t),
            Err(ReportError::SignatureFormat { .. })
        ));
        let mut t = signed;
        t.public_key = "not a key".into();
        assert!(matches!(verify(&t), Err(ReportError::PublicKey { .. })));
    }

    #[test]
    fn unknown_fields_and_bad_values_are_rejected_even_when_signed() {
        let key = keys::generate().unwrap();
        let resign = |v: serde_json::Value| {
            let text = String::from_utf8(canonical_json(&v)).unwrap();
            SignedReport {
                signature: keys::sign_hex(&key, text.as_bytes()).trim().to_string(),
                report: text,
                public_key: keys::public_pem(&key.verifying_key()),
            }
        };
        let base = serde_json::to_value(sample()).unwrap();
        type Edit = Box<dyn Fn(&mut serde_json::Value)>;
        let cases: Vec<(&str, Edit)> = vec![
            ("top-level extra", Box::new(|v| v["extra"] = 1.into())),
            (
                "nested extra",
                Box::new(|v| v["device"]["color"] = "red".into()),
            ),
            ("event extra", Box::new(|v| v["event"]["why"] = "x".into())),
            (
                "unknown event",
                Box::new(|v| v["event"]["kind"] = "reboot".into()),
            ),
            (
                "bad status",
                Box::new(|v| v["stages"][0]["status"] = "ok".into()),
            ),
            ("bad id", Box::new(|v| v["id"] = "XYZ".into())),
            ("version", Box::new(|v| v["version"] = 9.into())),
            (
                "neg seconds",
                Box::new(|v| v["stages"][0]["seconds"] = (-1.0).into()),
            ),
            ("empty site", Box::new(|v| v["site"]["site_id"] = "".into())),
            (
                "digest",
                Box::new(|v| v["image"]["manifest_sha256"] = "zz".into()),
            ),
            (
                "v3 without slot",
                Box::new(|v| {
                    v.as_object_mut().unwrap().remove("slot");
                }),
            ),
            ("v2 with slot", Box::new(|v| v["version"] = 2.into())),
            (
                "heartbeat with a huge error",
                Box::new(|v| {
                    v["event"] = serde_json::json!({"kind": "heartbeat", "uptime_s": 1,
                        "drained": false, "last_error": "x".repeat(5000)})
                }),
            ),
            ("slot c", Box::new(|v| v["slot"]["running"] = "c".into())),
            (
                "slot-changed from slot c",
                Box::new(|v| {
                    v["event"] = serde_json::json!({"kind": "slot-changed",
                        "previous_slot": "c", "previous_manifest_sha256": ""})
                }),
            ),
            (
                "slot-changed with a bad digest",
                Box::new(|v| {
                    v["event"] = serde_json::json!({"kind": "slot-changed",
                        "previous_slot": "a", "previous_manifest_sha256": "AB"})
                }),
            ),
        ];
        for (name, edit) in cases {
            let mut v = base.clone();
            edit(&mut v);
            let err = verify(&resign(v)).expect_err(name);
            assert!(
                matches!(err, ReportError::Parse { .. } | ReportError::Invalid { .. }),
                "{name}: {err}"
            );
        }
        // Signed but not canonical (compact JSON): rejected.
        let compact = serde_json::to_string(&sample()).unwrap();
        let s = SignedReport {
            signature: keys::sign_hex(&key, compact.as_bytes()).trim().to_string(),
            report: compact,
            public_key: keys::public_pem(&key.verifying_key()),
        };
        assert!(matches!(verify(&s), Err(ReportError::NotCanonical { .. })));
        // Unknown envelope field.
        let mut env = serde_json::to_value(sign(&sample(), &key)).unwrap();
        env["note"] = "hi".into();
        let bytes = serde_json::to_vec(&env).unwrap();
        assert!(matches!(
            SignedReport::from_json(&bytes),
            Err(ReportError::Envelope { .. })
        ));
    }
}
