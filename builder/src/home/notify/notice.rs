//! The notice a host organisation receives: the installation certificate (site, instance,
//! device, image, zone serial served, prefixes announced, time) with the device's own signed
//! report inside it, the whole signed by the receiver's notice key. The host checks both
//! signatures with `imrs-build home verify-notice`: the receiver's over the notice, the
//! device's over its report, and that the notice says what the report says.

use std::path::Path;

use ed25519_dalek::{SigningKey, VerifyingKey};
use imrs_config::keys;
use imrs_config::report::{self, Event, Report, SignedReport};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The notice format's version.
pub const NOTICE_VERSION: u32 = 1;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// The box passed its installation: it serves and announces.
    InstallPassed,
    /// The box's first boot stopped at a stage.
    InstallFailed,
    /// A box that was heard from has been silent for longer than the site allows.
    WentQuiet,
}

impl Kind {
    /// As written.
    pub fn name(self) -> &'static str {
        match self {
            Kind::InstallPassed => "install-passed",
            Kind::InstallFailed => "install-failed",
            Kind::WentQuiet => "went-quiet",
        }
    }

    /// In words, for a subject line.
    pub fn words(self) -> &'static str {
        match self {
            Kind::InstallPassed => "installation passed",
            Kind::InstallFailed => "installation failed",
            Kind::WentQuiet => "no report received",
        }
    }
}

/// The notice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notice {
    /// [`NOTICE_VERSION`].
    pub version: u32,
    /// Unique per event: the report's id, or `quiet-<key id>-<arrival of the last report>`.
    pub id: String,
    /// What happened.
    pub kind: Kind,
    /// When the receiver issued it (Unix seconds).
    pub issued_unix: i64,
    /// The host organisation, as its site config names it.
    pub organisation: String,
    /// Site id.
    pub site_id: String,
    /// Instance name.
    pub instance: String,
    /// Device key id.
    pub device_key: String,
    /// Device serial.
    pub serial: String,
    /// Appliance profile.
    pub profile: String,
    /// Image `name version`.
    pub image: String,
    /// sha256 of the image's signed manifest (empty when the box did not say).
    pub manifest_sha256: String,
    /// The zone serial the box served.
    pub zone_serial: Option<u32>,
    /// The prefixes the box announced.
    pub announced: Vec<IpNet>,
    /// The failed stage and why (install-failed).
    pub failed: Option<String>,
    /// When the report was made, by the box's clock.
    pub report_created_unix: i64,
    /// When the report arrived.
    pub report_received_unix: i64,
    /// Seconds since the last report arrived (went-quiet).
    pub silent_s: Option<u64>,
    /// The device's report, exactly as it signed it (for went-quiet: its last one).
    pub report: SignedReport,
}

impl Notice {
    /// The notice for `signed` (verified: `parsed` is what it says), issued at `now`.
    pub fn of_report(
        kind: Kind,
        id: String,
        organisation: &str,
        signed: &SignedReport,
        parsed: &Report,
        received_unix: i64,
        now: i64,
    ) -> Result<Notice, report::ReportError> {
        let key = signed.key()?;
        let zone_serial = match &parsed.event {
            Event::Heartbeat { zone_serial, .. } => *zone_serial,
            _ => parsed.zone.as_ref().map(|z| z.serial),
        };
        Ok(Notice {
            version: NOTICE_VERSION,
            id,
            kind,
            issued_unix: now,
            organisation: organisation.to_string(),
            site_id: parsed.site.site_id.clone(),
            instance: parsed.site.instance.clone(),
            device_key: keys::key_id(&key),
            serial: parsed.device.serial.clone(),
            profile: parsed.device.profile.clone(),
            image: format!("{} {}", parsed.image.name, parsed.image.version),
            manifest_sha256: parsed.image.manifest_sha256.clone(),
            zone_serial,
            announced: parsed.bgp.announced.clone(),
            failed: match &parsed.event {
                Event::InstallFailed { stage, reason } => Some(format!("{stage}: {reason}")),
                _ => None,
            },
            report_created_unix: parsed.created_unix,
            report_received_unix: received_unix,
            silent_s: (kind == Kind::WentQuiet)
                .then(|| now.saturating_sub(received_unix).max(0).unsigned_abs()),
            report: signed.clone(),
        })
    }

    /// The notice in words: the body of an e-mail (every value on one line, control and bidi
    /// characters escaped).
    pub fn text(&self) -> String {
        let e = |s: &str| imrs_config::escape_all(s).into_owned();
        let when = |u: i64| {
            jiff::Timestamp::from_second(u)
                .map(|t| t.to_string())
                .unwrap_or_else(|_| u.to_string())
        };
        let announced = if self.announced.is_empty() {
            "-".to_string()
        } else {
            let list: Vec<String> = self.announced.iter().map(ToString::to_string).collect();
            list.join(", ")
        };
        let mut lines = vec![
            format!(
                "{} ({}): {}.",
                e(&self.instance),
                e(&self.organisation),
                self.kind.words()
            ),
            String::new(),
            format!("Site:        {}", e(&self.site_id)),
            format!("Instance:    {}", e(&self.instance)),
            format!("Device key:  {}", e(&self.device_key)),
            format!("Serial:      {} ({})", e(&self.serial), e(&self.profile)),
            format!("Image:       {}", e(&self.image)),
            format!(
                "Manifest:    {}",
                if self.manifest_sha256.is_empty() {
                    "-".into()
                } else {
                    e(&self.manifest_sha256)
                }
            ),
            format!(
                "Zone serial: {}",
                self.zone_serial
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "-".into())
            ),
            format!("Announced:   {announced}"),
        ];
        if let Some(f) = &self.failed {
            lines.push(format!("Failed at:   {}", e(f)));
        }
        if let Some(s) = self.silent_s {
            lines.push(format!("Silent for:  {s} s"));
        }
        lines.push(format!(
            "Report:      made {} (device clock), received {}",
            when(self.report_created_unix),
            when(self.report_received_unix)
        ));
        lines.push(String::new());
        lines.push(
            "The signed notice is attached (notice.json); check it with:\n  imrs-build home \
             verify-notice notice.json --notice-pubkey RECEIVER.pub"
                .into(),
        );
        lines.join("\n") + "\n"
    }
}

/// A notice as sent: its JSON text, the receiver's signature over exactly those bytes, and the
/// receiver's public key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedNotice {
    /// The notice, as JSON text.
    pub notice: String,
    /// Ed25519 signature over `notice`, hex.
    pub signature: String,
    /// The receiver's notice key (SPKI PEM).
    pub public_key: String,
}

/// Signs a notice.
pub fn sign(notice: &Notice, key: &SigningKey) -> SignedNotice {
    let text = serde_json::to_string(notice).unwrap_or_default();
    SignedNotice {
        signature: keys::sign_hex(key, text.as_bytes()).trim_end().to_string(),
        notice: text,
        public_key: keys::public_pem(&key.verifying_key()),
    }
}

/// Why a notice does not check out.
#[derive(Debug, thiserror::Error)]
pub enum NoticeError {
    /// Not a signed notice.
    #[error("not a signed notice: {0}")]
    Envelope(String),
    /// The receiver's signature is malformed or wrong.
    #[error("the receiver's signature over the notice does not verify (key {key_id})")]
    Signature {
        /// The key it names.
        key_id: String,
    },
    /// Signed by another key than the one the host was given.
    #[error("signed by receiver key {found}, not by the expected {expected}")]
    WrongKey {
        /// The key in the notice.
        found: String,
        /// The expected key.
        expected: String,
    },
    /// The notice text is not a notice.
    #[error("the notice does not parse: {0}")]
    Parse(String),
    /// The device's report inside does not verify.
    #[error("the device's report inside the notice does not verify")]
    Report(#[source] report::ReportError),
    /// The notice says something its report does not.
    #[error("the notice's {field} ({notice}) differs from the device's report ({report})")]
    Mismatch {
        /// The field.
        field: &'static str,
        /// What the notice says.
        notice: String,
        /// What the report says.
        report: String,
    },
}

/// Checks a signed notice: the receiver's signature (against `expected` when given), then the
/// device's report inside, then that every field the notice takes from the report matches it.
pub fn verify(
    body: &[u8],
    expected: Option<&VerifyingKey>,
) -> Result<(Notice, Report), NoticeError> {
    let env: SignedNotice =
        serde_json::from_slice(body).map_err(|e| NoticeError::Envelope(e.to_string()))?;
    let origin = Path::new("<notice>");
    let key = keys::parse_public(&env.public_key, origin)
        .map_err(|e| NoticeError::Envelope(format!("public key: {e}")))?;
    let key_id = keys::key_id(&key);
    if let Some(exp) = expected
        && exp != &key
    {
        return Err(NoticeError::WrongKey {
            found: key_id,
            expected: keys::key_id(exp),
        });
    }
    let sig =
        keys::parse_signature(&env.signature, origin).map_err(|_| NoticeError::Signature {
            key_id: key_id.clone(),
        })?;
    keys::verify(&key, env.notice.as_bytes(), &sig)
        .map_err(|_| NoticeError::Signature { key_id })?;
    let notice: Notice =
        serde_json::from_str(&env.notice).map_err(|e| NoticeError::Parse(e.to_string()))?;
    let report = report::verify(&notice.report).map_err(NoticeError::Report)?;
    let again = Notice::of_report(
        notice.kind,
        notice.id.clone(),
        &notice.organisation,
        &notice.report,
        &report,
        notice.report_received_unix,
        notice.issued_unix,
    )
    .map_err(NoticeError::Report)?;
    let checks: [(&'static str, String, String); 10] = [
        ("site_id", notice.site_id.clone(), again.site_id),
        ("instance", notice.instance.clone(), again.instance),
        ("device_key", notice.device_key.clone(), again.device_key),
        ("serial", notice.serial.clone(), again.serial),
        ("image", notice.image.clone(), again.image),
        (
            "manifest_sha256",
            notice.manifest_sha256.clone(),
            again.manifest_sha256,
        ),
        (
            "zone_serial",
            format!("{:?}", notice.zone_serial),
            format!("{:?}", again.zone_serial),
        ),
        (
            "announced",
            format!("{:?}", notice.announced),
            format!("{:?}", again.announced),
        ),
        (
            "failed",
            format!("{:?}", notice.failed),
            format!("{:?}", again.failed),
        ),
        (
            "report_created_unix",
            notice.report_created_unix.to_string(),
            again.report_created_unix.to_string(),
        ),
    ];
    for (field, n, r) in checks {
        if n != r {
            return Err(NoticeError::Mismatch {
                field,
                notice: n,
                report: r,
            });
        }
    }
    let event_matches = match notice.kind {
        Kind::InstallPassed => matches!(report.event, Event::InstallPassed {}),
        Kind::InstallFailed => matches!(report.event, Event::InstallFailed { .. }),
        Kind::WentQuiet => true,
    };
    if !event_matches {
        return Err(NoticeError::Mismatch {
            field: "kind",
            notice: notice.kind.name().into(),
            report: report.event.name().into(),
        });
    }
    Ok((notice, report))
}
