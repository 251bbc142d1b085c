//! `imrs-build fleet`: what ICANN's DNS engineering does to installed appliances, through the
//! receiver's database (the one `home serve` writes; SQLite in WAL mode lets both run at once).
//!
//! - `fleet command DEVICE ACTION --ops-key KEY --db DB`: signs a command with the operations
//!   key (the one whose public half the site configs list in `[fleet] ops_public_keys`), bound
//!   to the device's key, with the device's next sequence number and an expiry, and queues it.
//!   The device pulls it: the receiver's answer to its next report (a heartbeat at the latest)
//!   carries every unresolved command ([`crate::home::store::commands`]); the device's signed
//!   `command-result` report closes it. The receiver never holds the operations key.
//! - `fleet status [DEVICE] --db DB`: devices with their last report and heartbeat, and every
//!   command's state (queued, delivered, done, failed or refused with the box's reason,
//!   expired).
//!
//! - `fleet command DEVICE update IMAGE-DIR`: publishes the image's slot files beside the
//!   database ([`crate::home::images`], served by the receiver on its TLS port) and queues an
//!   `update` naming its manifest's sha256. The box downloads it, checks it against that sha256
//!   and its own image key, writes its other slot, reboots into it and reports the result from
//!   there once healthy (or from the old slot, when the new one never became healthy).
//! - `fleet command DEVICE rollback`: the box boots its other slot again (re-verified, tried
//!   with a boot counter, blessed once healthy).
//! - `fleet rssac002 --db DB --day YYYY-MM-DD --out DIR`: the RSSAC002 documents of a day from
//!   the devices' `telemetry` reports ([`imrs_config::rssac002`]), the fleet's and each
//!   device's.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use imrs_config::command::{self, Action, COMMAND_VERSION, Command, MAX_LIFETIME_S};
use imrs_config::{escape, keys};
use serde_json::json;

use crate::home::images;
use crate::home::store::{self, commands};

/// `imrs-build fleet ...`
#[derive(Debug, clap::Subcommand)]
pub enum FleetCommand {
    /// Queue a signed command for one device; it goes out with the receiver's answer to the
    /// device's next report, and the device's signed result closes it.
    Command {
        /// The device: its key id (as `home list` and `fleet status` show it), or its serial
        /// when one device key holds it.
        device: String,
        /// What to ask.
        #[command(subcommand)]
        action: ActionArg,
        /// The operations secret key (PKCS#8 PEM, from `imrs-build keygen`); required.
        #[arg(long, global = true)]
        ops_key: Option<PathBuf>,
        /// The receiver's database; required.
        #[arg(long, global = true)]
        db: Option<PathBuf>,
        /// Seconds the command stays valid (at most a week); past it the box refuses it.
        #[arg(long, global = true, default_value_t = 86_400)]
        expires_in: u64,
    },
    /// Write the RSSAC002 documents of one UTC day from the devices' telemetry reports: the
    /// fleet's (merged: counters added, unique sources united, load time the 95th percentile)
    /// under OUT in the published layout (`YYYY/MM/<metric>/l-root-YYYYMMDD-<metric>.yaml`), and
    /// each device's under `OUT/devices/<key id>/`.
    Rssac002 {
        /// The receiver's database.
        #[arg(long)]
        db: PathBuf,
        /// The UTC day, YYYY-MM-DD.
        #[arg(long, value_parser = parse_day)]
        day: jiff::civil::Date,
        /// Output folder (created if missing; documents already there are replaced).
        #[arg(long)]
        out: PathBuf,
    },
    /// Devices with their last report and heartbeat, and every command's state.
    Status {
        /// Only this device (key id or serial).
        device: Option<String>,
        /// The receiver's database.
        #[arg(long)]
        db: PathBuf,
    },
}

/// The actions `fleet command` queues.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ActionArg {
    /// Withdraw the specific prefixes (the covering ones stay announced); keep answering.
    Drain,
    /// Announce the specifics again (once healthy).
    Undrain,
    /// Reboot the box (its result comes from the boot after).
    Reboot,
    /// Send the last console lines back in the command's result.
    CollectLogs {
        /// How many lines (1 to 500).
        #[arg(long, default_value_t = 200)]
        lines: u32,
    },
    /// Install an image: the box downloads it from the receiver, verifies it with its image
    /// key, writes its other slot and boots it; the result comes once the new slot is healthy
    /// (or from the old one when it never was).
    Update {
        /// The image folder (from `imrs-build build`).
        image: PathBuf,
        /// Check the image's signature with this public key (PEM) before queueing it (the box
        /// checks it with its own image key either way).
        #[arg(long)]
        pubkey: Option<PathBuf>,
    },
    /// Boot the other slot again (the image the box ran before its last update), tried with a
    /// boot counter and kept once healthy.
    Rollback,
    /// Send the RSSAC002 counts of the current UTC day so far (a partial `telemetry` report;
    /// `fleet rssac002` for today then writes documents from it).
    Telemetry,
}

impl ActionArg {
    /// The action to sign; an `update` publishes its image beside the database `db` first.
    fn action(&self, db: &std::path::Path) -> Result<Action> {
        Ok(match self {
            ActionArg::Drain => Action::Drain {},
            ActionArg::Undrain => Action::Undrain {},
            ActionArg::Reboot => Action::Reboot {},
            ActionArg::CollectLogs { lines } => Action::CollectLogs { lines: *lines },
            ActionArg::Rollback => Action::Rollback {},
            ActionArg::Telemetry => Action::Telemetry {},
            ActionArg::Update { image, pubkey } => {
                if let Some(p) = pubkey {
                    crate::verify::verify_loaded(image, &keys::read_public(p)?)?;
                }
                let (payload, _) = crate::home::images::publish(&images::dir_for(db), image)?;
                let sha = payload.manifest_sha256();
                Action::Update {
                    path: images::url_path(&sha),
                    manifest_sha256: sha,
                }
            }
        })
    }
}

fn parse_day(text: &str) -> Result<jiff::civil::Date, String> {
    text.parse::<jiff::civil::Date>()
        .ok()
        .filter(|_| text.len() == 10)
        .ok_or_else(|| format!("{}: a UTC day, YYYY-MM-DD", escape(text)))
}

/// Writes the documents of every metric for `m` under `dir`; returns how many.
fn write_documents(
    dir: &std::path::Path,
    day: jiff::civil::Date,
    m: &imrs_config::rssac002::DayMetrics,
) -> Result<usize> {
    use imrs_config::rssac002::{Metric, path, render};
    for metric in Metric::ALL {
        let file = dir.join(path(day, metric));
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("{}: cannot create", parent.display()))?;
        }
        imrs_config::fsutil::write_atomic(&file, render(metric, day, m).as_bytes(), 0o644)
            .with_context(|| format!("{}: cannot write", file.display()))?;
    }
    Ok(Metric::ALL.len())
}

/// `fleet rssac002`.
fn rssac002(
    db: &std::path::Path,
    day: jiff::civil::Date,
    out: &std::path::Path,
    json: bool,
) -> Result<u8> {
    let rows = store::telemetry(db, &day.to_string())?;
    if rows.is_empty() {
        bail!(
            "{}: no telemetry report for {day}: nothing to write",
            db.display()
        );
    }
    let mut fleet = imrs_config::rssac002::DayMetrics::default();
    let mut files = 0;
    for r in &rows {
        fleet.merge(&r.metrics);
        files += write_documents(&out.join("devices").join(&r.device), day, &r.metrics)?;
    }
    files += write_documents(out, day, &fleet)?;
    let partial = rows.iter().filter(|r| !r.complete).count();
    if json {
        crate::ui::print_ok(json!({
            "day": day.to_string(), "out": out, "files": files,
            "devices": rows.iter().map(|r| json!({
                "device": r.device, "serial": r.serial, "complete": r.complete,
            })).collect::<Vec<_>>(),
        }))?;
    } else {
        println!(
            "wrote {files} RSSAC002 documents for {day} under {}: the fleet's, and {} device(s)'{}",
            out.display(),
            rows.len(),
            if partial > 0 {
                format!(" ({partial} of them sent before the day ended: partial)")
            } else {
                String::new()
            }
        );
    }
    Ok(0)
}

/// The one device key `device` (a key id or a serial) names in `db`.
fn resolve_device(db: &std::path::Path, device: &str) -> Result<String> {
    let keys = commands::key_ids_for(db, device)?;
    match keys.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!(
            "{}: no device with key id or serial {} has reported",
            db.display(),
            escape(device)
        ),
        many => bail!(
            "{}: serial {} is held by {} device keys ({}): name one key id",
            db.display(),
            escape(device),
            many.len(),
            many.join(", ")
        ),
    }
}

/// Runs a `fleet` subcommand; `json` selects machine-readable output on stdout.
pub fn run(cmd: FleetCommand, json: bool) -> Result<u8> {
    match cmd {
        FleetCommand::Command {
            device,
            action,
            ops_key,
            db,
            expires_in,
        } => {
            let (Some(ops_key), Some(db)) = (ops_key, db) else {
                bail!("fleet command needs --ops-key KEY and --db FILE");
            };
            let lifetime = i64::try_from(expires_in).unwrap_or(i64::MAX);
            if !(60..=MAX_LIFETIME_S).contains(&lifetime) {
                bail!("--expires-in {expires_in}: from 60 s to {MAX_LIFETIME_S} s (a week)");
            }
            let ops = keys::read_secret(&ops_key)?;
            let key_id = resolve_device(&db, &device)?;
            let action = action.action(&db)?;
            let now = jiff::Timestamp::now().as_second();
            let expires_unix = now + lifetime;
            let mut signed_text = String::new();
            let name = action.name();
            let sequence = commands::queue(&db, &key_id, now, |sequence| {
                let cmd = Command {
                    version: COMMAND_VERSION,
                    device: key_id.clone(),
                    sequence,
                    issued_unix: now,
                    expires_unix,
                    action: action.clone(),
                };
                // What the box checks, checked here first.
                command::check_fields(&cmd).map_err(|e| anyhow::anyhow!("{e}"))?;
                let signed = command::sign(&cmd, &ops);
                signed_text = serde_json::to_string(&signed)?;
                Ok((name.to_string(), signed_text.clone(), expires_unix))
            })
            .with_context(|| format!("{}: queueing {name} for {key_id}", db.display()))?;
            if json {
                crate::ui::print_ok(json!({
                    "device": key_id, "sequence": sequence, "action": name,
                    "expires_unix": expires_unix,
                    "signer": keys::key_id(&ops.verifying_key()),
                    "signed": serde_json::from_str::<serde_json::Value>(&signed_text)?,
                }))?;
            } else {
                println!(
                    "queued {name} for device {key_id} as its command {sequence}, signed by \
                     operations key {}, valid until {}; it goes out with the answer to the \
                     device's next report",
                    keys::key_id(&ops.verifying_key()),
                    jiff::Timestamp::from_second(expires_unix)
                        .map(|t| t.to_string())
                        .unwrap_or_else(|_| expires_unix.to_string())
                );
            }
            Ok(0)
        }
        FleetCommand::Rssac002 { db, day, out } => rssac002(&db, day, &out, json),
        FleetCommand::Status { device, db } => {
            let fleet = store::fleet(&db, 0)?;
            let key = device
                .as_deref()
                .map(|d| resolve_device(&db, d))
                .transpose()?;
            let devices: Vec<_> = fleet
                .devices
                .iter()
                .filter(|d| key.as_ref().is_none_or(|k| *k == d.device))
                .collect();
            let cmds = commands::commands(&db, key.as_deref())?;
            let now = jiff::Timestamp::now().as_second();
            if json {
                let cmds: Vec<_> = cmds
                    .iter()
                    .map(|c| {
                        let mut v = serde_json::to_value(c).unwrap_or_default();
                        v["state"] = c.state(now).into();
                        v
                    })
                    .collect();
                crate::ui::print_ok(json!({"devices": devices, "commands": cmds}))?;
            } else {
                print!("{}", render_status(&devices, &cmds, now));
            }
            Ok(0)
        }
    }
}

/// `fleet status` as text: a line per device, its commands under it; every value a device
/// reported is escaped.
pub fn render_status(
    devices: &[&store::DeviceRow],
    cmds: &[commands::CommandRow],
    now: i64,
) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let ago = |t: Option<i64>| {
        t.map(|t| format!("{} s ago", (now - t).max(0)))
            .unwrap_or_else(|| "never".into())
    };
    for d in devices {
        let _ = writeln!(
            out,
            "{}  {} at {} ({})  {}  last report {}, last heartbeat {}{}",
            d.device,
            escape(&d.serial),
            escape(&d.site_id),
            escape(&d.instance),
            escape(&d.last_event),
            ago(Some(d.received_unix)),
            ago(d.last_heartbeat_unix),
            d.slot
                .as_deref()
                .map(|s| format!(", slot {}", escape(s)))
                .unwrap_or_default()
        );
        for c in cmds.iter().filter(|c| c.key_id == d.device) {
            let _ = writeln!(
                out,
                "    #{:<4} {:<13} {:<9} queued {}{}{}",
                c.sequence,
                c.action,
                c.state(now),
                ago(Some(c.queued_unix)),
                c.reason
                    .as_deref()
                    .map(|r| format!(": {}", escape(r)))
                    .unwrap_or_default(),
                if c.logs.is_empty() {
                    String::new()
                } else {
                    format!(" ({} log lines; --json shows them)", c.logs.len())
                }
            );
        }
    }
    if devices.is_empty() {
        out.push_str("no devices\n");
    }
    out
}
