//! The lab's host organisation (the site's `[host]`): its inboxes run in the lab's namespace on
//! the receiver's address ([`crate::host::inbox`]: the webhook endpoint on the port of
//! `host.webhook`, aiosmtpd on 587 for `host.email`), the lab's receiver notifies them
//! (`home serve --sites --notice-key --smtp-relay --notice-ca`, this run's key and CA), and the
//! checks read what arrived as a host would: every webhook body and every e-mail's attached
//! `notice.json` verified against the lab's notice key, saying what the stored report says.
//! What arrived is kept in the work folder (`host/webhook-N.json`, `host/mail-N.eml`) for
//! `imrs-build home verify-notice FILE --notice-pubkey notice-key.pub`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ed25519_dalek::VerifyingKey;
use imrs_config::site::Host;
use mail_parser::MimeHeaders;

use super::plan::Plan;
use super::receiver::StoredReport;
use super::site::Tls;
use super::summary::Check;
use crate::home::notify::notice::{self, Kind, Notice};
use crate::host::inbox::{self, Answer, Mailbox, Smtp, Webhook};
use crate::host::netns::NetNs;
use crate::host::signal;

/// How long the checks wait for notices after the report was stored.
pub const WAIT: Duration = Duration::from_secs(30);

/// The host's notice settings of a lab run: its contacts, the receiver's notice key, where
/// the receiver reads the site.
#[derive(Debug, Clone)]
pub struct Notices {
    /// The site's `[host]`.
    pub host: Host,
    /// The receiver's notice key (`notice-key`; public half `notice-key.pub`).
    pub key: PathBuf,
    /// Its public half, which the checks verify with.
    pub public: VerifyingKey,
    /// The folder with the lab's site config (`home serve --sites`).
    pub sites: PathBuf,
}

impl Notices {
    /// For `site_path` (the signed lab site), when its `[host]` names anyone to tell: writes a
    /// fresh notice key and a folder holding the site config, in `work`.
    pub fn prepare(work: &Path, site_path: &Path, host: &Host) -> Result<Option<Notices>> {
        if !host.has_contacts() {
            return Ok(None);
        }
        let sites = work.join("sites");
        std::fs::create_dir_all(&sites).with_context(|| format!("{}: mkdir", sites.display()))?;
        let copy = sites.join("site.toml");
        std::fs::copy(site_path, &copy).with_context(|| {
            format!("cannot copy {} to {}", site_path.display(), copy.display())
        })?;
        let key = imrs_config::keys::generate()?;
        let path = work.join("notice-key");
        imrs_config::keys::write_keypair(&key, &path)?;
        Ok(Some(Notices {
            host: host.clone(),
            key: path,
            public: key.verifying_key(),
            sites,
        }))
    }

    /// The receiver's flags for these notices (relay `plan.smtp`, trusting only `ca`).
    pub fn receiver_args(&self, plan: &Plan, ca: &Path) -> Vec<std::ffi::OsString> {
        let mut a: Vec<std::ffi::OsString> = vec![
            "--sites".into(),
            self.sites.clone().into(),
            "--notice-key".into(),
            self.key.clone().into(),
            "--notice-ca".into(),
            ca.into(),
            "--notice-backoff".into(),
            "2".into(),
        ];
        if let Some(relay) = plan.smtp {
            a.extend(["--smtp-relay".into(), relay.to_string().into()]);
            a.extend(["--smtp-from".into(), "imrs-notices@lab.test".into()]);
        }
        a
    }
}

/// The host's inboxes, inside the lab's namespace; stopped when dropped.
#[derive(Debug)]
pub struct Inbox {
    webhook: Option<Webhook>,
    smtp: Option<Smtp>,
    dir: PathBuf,
}

impl Inbox {
    /// Starts the inboxes `plan` names (`plan.webhook`, `plan.smtp`) in `ns` with the
    /// receiver's certificate (they share its address); files in `dir`.
    pub fn start(ns: &NetNs, dir: &Path, plan: &Plan, tls: &Tls) -> Result<Inbox> {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: mkdir", dir.display()))?;
        let webhook = match plan.webhook {
            Some(addr) => {
                let listener = ns
                    .run_inside(|| TcpListener::bind(addr))?
                    .with_context(|| format!("the host's webhook endpoint: cannot bind {addr}"))?;
                Some(Webhook::serve(listener, &tls.cert, &tls.key, Answer::Ok)?)
            }
            None => None,
        };
        let smtp = match plan.smtp {
            Some(addr) => Some(
                Smtp::start(Some(ns), dir, addr, &tls.cert, &tls.key, Mailbox::Deliver)
                    .context("the host's SMTP relay")?,
            ),
            None => None,
        };
        Ok(Inbox {
            webhook,
            smtp,
            dir: dir.to_path_buf(),
        })
    }

    /// What it listens on, for the progress line.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(w) = &self.webhook {
            parts.push(format!("webhook https://{}", w.addr()));
        }
        if let Some(s) = &self.smtp {
            parts.push(format!("SMTP (aiosmtpd, STARTTLS) {}", s.addr()));
        }
        parts.join(", ")
    }
}

/// Whether the lab can run the inboxes `plan` asks for: aiosmtpd is needed for e-mail.
pub fn missing(plan: &Plan) -> Option<String> {
    (plan.smtp.is_some() && !inbox::have_aiosmtpd()).then(|| {
        format!(
            "{} with aiosmtpd (python3-aiosmtpd), for the site's host.email",
            inbox::PYTHON
        )
    })
}

/// What one inbox got: the notices that verified, and what was wrong with the rest.
#[derive(Debug, Default)]
struct Got {
    notices: Vec<Notice>,
    problems: Vec<String>,
    files: Vec<PathBuf>,
}

/// Waits (up to [`WAIT`]) for the notices of the install reports `reports` (one, or a first
/// boot's `install-failed` and then its `install-passed`) and checks them: per report one
/// webhook notice and one e-mail per address, each verified against `n.public` and saying what
/// its report says (matched by report id), and nothing else.
pub fn checks(
    inbox: &Inbox,
    n: &Notices,
    reports: &[&StoredReport],
    label: &str,
) -> Result<Vec<Check>> {
    if reports.is_empty() {
        return Ok(vec![Check {
            what: format!("{label}: the host is notified"),
            ok: false,
            detail: "no installation report was stored, so nothing to notify".into(),
        }]);
    }
    let kinds: Vec<&str> = reports.iter().map(|r| kind_of(r).name()).collect();
    let kinds = kinds.join(" then ");
    let want_mails = n.host.email.len();
    let start = Instant::now();
    loop {
        signal::check()?;
        let hooks = inbox.webhook.as_ref().map_or(0, |w| w.bodies().len());
        let mails = inbox.smtp.as_ref().map_or(0, |s| s.messages().len());
        let done = (inbox.webhook.is_none() || hooks >= reports.len())
            && mails >= want_mails * reports.len();
        if done || start.elapsed() > WAIT {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // A moment more: a second (duplicate) notice would arrive now.
    std::thread::sleep(Duration::from_millis(500));
    let mut checks = Vec::new();
    let keyfile = imrs_config::keys::pub_path_for(&n.key);
    let verify_hint = |files: &[PathBuf]| {
        files
            .first()
            .map(|f| {
                format!(
                    "; check: imrs-build home verify-notice {} --notice-pubkey {}",
                    f.display(),
                    keyfile.display()
                )
            })
            .unwrap_or_default()
    };
    if let Some(w) = &inbox.webhook {
        let mut got = Got::default();
        for (i, body) in w.bodies().iter().enumerate() {
            let file = inbox.dir.join(format!("webhook-{}.json", i + 1));
            keep(&file, body, &mut got);
            take(body, "webhook", n, &mut got);
        }
        let ok = judge(&got, 1, reports);
        checks.push(Check {
            what: format!(
                "{label}: the host's webhook got one signed notice per report ({kinds}) that \
                 verifies"
            ),
            ok: ok.is_ok(),
            detail: match ok {
                Ok(d) => format!("{d}{}", verify_hint(&got.files)),
                Err(e) => e,
            },
        });
    }
    if let Some(s) = &inbox.smtp {
        let mut got = Got::default();
        let mut to: Vec<String> = Vec::new();
        for (i, raw) in s.messages().iter().enumerate() {
            keep(
                &inbox.dir.join(format!("mail-{}.eml", i + 1)),
                raw,
                &mut got,
            );
            let Some(m) = mail_parser::MessageParser::default().parse(raw) else {
                got.problems
                    .push(format!("e-mail {}: not a message", i + 1));
                continue;
            };
            if let Some(a) = m.to().and_then(|t| t.first()).and_then(|a| a.address()) {
                to.push(a.to_string());
            }
            let Some(att) = m
                .attachments()
                .find(|a| a.attachment_name() == Some("notice.json"))
            else {
                got.problems
                    .push(format!("e-mail {}: no notice.json attached", i + 1));
                continue;
            };
            let file = inbox.dir.join(format!("mail-{}-notice.json", i + 1));
            keep(&file, att.contents(), &mut got);
            take(att.contents(), &format!("e-mail {}", i + 1), n, &mut got);
        }
        to.sort();
        let mut want_to: Vec<String> = reports
            .iter()
            .flat_map(|_| n.host.email.iter().cloned())
            .collect();
        want_to.sort();
        let mut ok = judge(&got, want_mails, reports);
        if ok.is_ok() && to != want_to {
            ok = Err(format!(
                "addressed to {to:?}, the site names {:?} for each report",
                n.host.email
            ));
        }
        checks.push(Check {
            what: format!(
                "{label}: the host's mailbox got one e-mail per address and report ({kinds}) \
                 with the signed notice attached, verified"
            ),
            ok: ok.is_ok(),
            detail: match ok {
                Ok(d) => format!("to {}: {d}{}", to.join(", "), verify_hint(&got.files)),
                Err(e) => e,
            },
        });
    }
    Ok(checks)
}

/// The notice kind a stored install report makes.
fn kind_of(report: &StoredReport) -> Kind {
    if report.event == "install-passed" {
        Kind::InstallPassed
    } else {
        Kind::InstallFailed
    }
}

/// Writes what arrived to `file` (for a look, and for `home verify-notice`).
fn keep(file: &Path, data: &[u8], got: &mut Got) {
    match std::fs::write(file, data) {
        Ok(()) if file.extension().is_some_and(|e| e == "json") => got.files.push(file.into()),
        Ok(()) => {}
        Err(e) => got
            .problems
            .push(format!("{}: cannot keep: {e}", file.display())),
    }
}

/// Verifies one signed notice against the lab's notice key.
fn take(body: &[u8], from: &str, n: &Notices, got: &mut Got) {
    match notice::verify(body, Some(&n.public)) {
        Ok((notice, _)) => got.notices.push(notice),
        Err(e) => got.problems.push(format!("{from}: {e}")),
    }
}

/// Whether `got` is exactly `per` verified notices about each of `reports` (matched by
/// report id) saying what the report says, and nothing else; a description.
fn judge(got: &Got, per: usize, reports: &[&StoredReport]) -> Result<String, String> {
    if !got.problems.is_empty() {
        return Err(got.problems.join("; "));
    }
    let want = per * reports.len();
    if got.notices.len() != want {
        return Err(format!(
            "{} notice(s) within {} s, expected {want}",
            got.notices.len(),
            WAIT.as_secs()
        ));
    }
    let mut said = Vec::new();
    for report in reports {
        let kind = kind_of(report);
        let mine: Vec<&Notice> = got.notices.iter().filter(|nt| nt.id == report.id).collect();
        if mine.len() != per {
            return Err(format!(
                "{} notice(s) about report {} ({}), expected {per}",
                mine.len(),
                report.id,
                report.event
            ));
        }
        for nt in &mine {
            let differs = [
                ("kind", nt.kind.name().to_string(), kind.name().to_string()),
                ("device", nt.device_key.clone(), report.device.clone()),
                (
                    "zone serial",
                    format!("{:?}", nt.zone_serial),
                    format!("{:?}", report.zone_serial),
                ),
            ]
            .into_iter()
            .find(|(_, a, b)| a != b);
            if let Some((what, a, b)) = differs {
                return Err(format!(
                    "the notice's {what} is {a}, report {}'s {b}",
                    report.id
                ));
            }
        }
        let nt = mine[0];
        said.push(format!(
            "{} for {} (device {}, zone serial {}, {} prefixes announced, manifest {})",
            nt.kind.name(),
            nt.instance,
            nt.device_key,
            nt.zone_serial.map_or("none".into(), |s| s.to_string()),
            nt.announced.len(),
            nt.manifest_sha256.get(..12).unwrap_or_default()
        ));
    }
    Ok(said.join("; then "))
}
