//! Fleet commands: what ICANN's DNS engineering asks one appliance to do, signed with an
//! operations key (Ed25519, separate from the image key), bound to one device key, numbered and
//! short-lived, so that nothing on the path can forge, redirect or replay one.
//!
//! A [`Command`] travels as a [`SignedCommand`]: its canonical JSON ([`canonical_json`]) as a
//! string, the signature over exactly those bytes, and the signer's key id. [`admit`] is the
//! appliance's whole decision, in this order, each refusal a [`Refusal`] naming what failed:
//! the signer must be one of the operations keys the box trusts (its signed site config), the
//! signature must verify over the exact bytes, the text must be the canonical form of a command
//! of this schema, the command must name this box's device key, not be expired (nor issued in
//! the future beyond the clock skew allowed), and carry the next sequence number: the highest
//! executed plus one (a lower or equal one is a replay, a higher one a gap: commands run in
//! order, each at most once; the box persists the highest it executed).

use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::image::canonical_json;
use crate::keys;

/// The command schema version this build writes and understands.
pub const COMMAND_VERSION: u32 = 1;

/// How far in the future a command's `issued_unix` may be (the box's clock may be behind).
pub const MAX_CLOCK_SKEW_S: i64 = 300;

/// The longest a command may live (`expires_unix - issued_unix`).
pub const MAX_LIFETIME_S: i64 = 7 * 86_400;

/// Most console lines `collect-logs` may ask for: what one `command-result` report carries
/// (500 lines of at most 1 KiB fit the receiver's 1 MiB body limit).
pub const MAX_LOG_LINES: u32 = 500;

/// What the box is asked to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Action {
    /// Withdraw the specific prefixes (the covering ones stay) and keep answering.
    Drain {},
    /// Announce the specifics again (when healthy).
    Undrain {},
    /// Reboot.
    Reboot {},
    /// Download an image from the receiver, verify it with the image key, write the inactive
    /// slot, reboot into it (blessed only once healthy).
    Update {
        /// Path of the image payload on the receiver (`/v1/images/<sha256>`), same origin.
        path: String,
        /// sha256 of the image's signed manifest.
        manifest_sha256: String,
    },
    /// Boot the other slot (when it holds a bootable image).
    Rollback {},
    /// Put the last `lines` console lines into the next report.
    CollectLogs {
        /// How many lines (1 to [`MAX_LOG_LINES`]).
        lines: u32,
    },
    /// Send the RSSAC002 counts of the current UTC day so far (a `telemetry` report that is
    /// not complete; the day's complete one still follows after midnight).
    Telemetry {},
}

impl Action {
    /// The action's name as written.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Drain {} => "drain",
            Action::Undrain {} => "undrain",
            Action::Reboot {} => "reboot",
            Action::Update { .. } => "update",
            Action::Rollback {} => "rollback",
            Action::CollectLogs { .. } => "collect-logs",
            Action::Telemetry {} => "telemetry",
        }
    }
}

/// One command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    /// [`COMMAND_VERSION`].
    pub version: u32,
    /// The device key id (`keys::key_id`) of the one box this is for.
    pub device: String,
    /// The device's command sequence number: one more than the previous command's.
    pub sequence: u64,
    /// When it was signed, seconds since the Unix epoch.
    pub issued_unix: i64,
    /// After this it must not run.
    pub expires_unix: i64,
    /// What to do.
    pub action: Action,
}

/// A command as sent: the canonical command bytes, their signature and the signer's key id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedCommand {
    /// The command's canonical JSON, exactly the bytes signed.
    pub command: String,
    /// Ed25519 signature over `command`, 128 lowercase hex digits.
    pub signature: String,
    /// The operations key's id.
    pub signer: String,
}

/// Why a command was refused. Every refusal is reported back (`command-result`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The signer is not an operations key this box trusts.
    #[error("signed by key {signer}, which is not an operations key this box trusts")]
    UnknownSigner {
        /// The key id given.
        signer: String,
    },
    /// The signature is malformed or does not verify.
    #[error("signature does not verify with operations key {signer}")]
    BadSignature {
        /// The key id.
        signer: String,
    },
    /// The signed text is not a command of this schema (or not canonical).
    #[error("not a command this box understands: {detail}")]
    Malformed {
        /// What is wrong.
        detail: String,
    },
    /// For another device.
    #[error("command {sequence} is for device {for_device}, this is {this_device}")]
    OtherDevice {
        /// Its sequence.
        sequence: u64,
        /// The device it names.
        for_device: String,
        /// This box's.
        this_device: String,
    },
    /// Expired.
    #[error("command {sequence} expired at {expires_unix} (now {now_unix})")]
    Expired {
        /// Its sequence.
        sequence: u64,
        /// Its expiry.
        expires_unix: i64,
        /// The box's clock.
        now_unix: i64,
    },
    /// Issued in the future, or meant to live too long.
    #[error("command {sequence}: {detail}")]
    BadTimes {
        /// Its sequence.
        sequence: u64,
        /// What is wrong.
        detail: String,
    },
    /// Already executed (same or lower sequence).
    #[error("command {sequence} replayed: commands up to {last_executed} were executed already")]
    Replayed {
        /// Its sequence.
        sequence: u64,
        /// The highest executed.
        last_executed: u64,
    },
    /// Not the next one.
    #[error("command {sequence} out of order: the next one expected is {expected}")]
    Gap {
        /// Its sequence.
        sequence: u64,
        /// The one expected.
        expected: u64,
    },
}

/// Signs `cmd` with the operations key.
pub fn sign(cmd: &Command, ops: &SigningKey) -> SignedCommand {
    let text = String::from_utf8(canonical_json(cmd)).unwrap_or_default();
    SignedCommand {
        signature: keys::sign_hex(ops, text.as_bytes()).trim().to_string(),
        signer: keys::key_id(&ops.verifying_key()),
        command: text,
    }
}

fn malformed(detail: impl Into<String>) -> Refusal {
    Refusal::Malformed {
        detail: detail.into(),
    }
}

/// Checks the rules serde cannot express.
pub fn check_fields(c: &Command) -> Result<(), Refusal> {
    if c.version != COMMAND_VERSION {
        return Err(malformed(format!(
            "version {} (this build understands {COMMAND_VERSION})",
            c.version
        )));
    }
    match &c.action {
        Action::Update {
            path,
            manifest_sha256,
        } => {
            let hex = manifest_sha256.len() == 64
                && manifest_sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !hex {
                return Err(malformed(format!(
                    "update: manifest_sha256 {} is not 64 lowercase hex digits",
                    crate::escape(manifest_sha256)
                )));
            }
            let safe = path.starts_with("/v1/images/")
                && path.len() <= 256
                && path
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"/-_.".contains(&b))
                && !path.contains("..");
            if !safe {
                return Err(malformed(format!(
                    "update: path {} is not a /v1/images/ path on the receiver",
                    crate::escape(path)
                )));
            }
        }
        Action::CollectLogs { lines } if !(1..=MAX_LOG_LINES).contains(lines) => {
            return Err(malformed(format!(
                "collect-logs: {lines} lines (1 to {MAX_LOG_LINES})"
            )));
        }
        _ => {}
    }
    Ok(())
}

/// The appliance's decision on `signed`: the command to execute, or why not. `ops` are the
/// operations keys the box trusts, `device` its own key id, `last_executed` the highest
/// sequence it executed (0: none), `now_unix` its clock.
pub fn admit(
    signed: &SignedCommand,
    ops: &[VerifyingKey],
    device: &str,
    last_executed: u64,
    now_unix: i64,
) -> Result<Command, Refusal> {
    let Some(key) = ops.iter().find(|k| keys::key_id(k) == signed.signer) else {
        return Err(Refusal::UnknownSigner {
            signer: crate::escape(&signed.signer),
        });
    };
    let bad_sig = || Refusal::BadSignature {
        signer: signed.signer.clone(),
    };
    let bytes = hex::decode(&signed.signature).map_err(|_| bad_sig())?;
    let sig = Signature::from_slice(&bytes).map_err(|_| bad_sig())?;
    key.verify_strict(signed.command.as_bytes(), &sig)
        .map_err(|_| bad_sig())?;
    let cmd: Command =
        serde_json::from_str(&signed.command).map_err(|e| malformed(e.to_string()))?;
    if canonical_json(&cmd) != signed.command.as_bytes() {
        return Err(malformed(
            "the signed text is not the command's canonical form",
        ));
    }
    check_fields(&cmd)?;
    if cmd.device != device {
        return Err(Refusal::OtherDevice {
            sequence: cmd.sequence,
            for_device: crate::escape(&cmd.device),
            this_device: device.to_string(),
        });
    }
    if now_unix > cmd.expires_unix {
        return Err(Refusal::Expired {
            sequence: cmd.sequence,
            expires_unix: cmd.expires_unix,
            now_unix,
        });
    }
    if cmd.issued_unix > now_unix.saturating_add(MAX_CLOCK_SKEW_S) {
        return Err(Refusal::BadTimes {
            sequence: cmd.sequence,
            detail: format!(
                "issued at {}, more than {MAX_CLOCK_SKEW_S} s after this box's clock ({now_unix})",
                cmd.issued_unix
            ),
        });
    }
    if cmd.expires_unix.saturating_sub(cmd.issued_unix) > MAX_LIFETIME_S {
        return Err(Refusal::BadTimes {
            sequence: cmd.sequence,
            detail: format!(
                "lives {} s, longer than {MAX_LIFETIME_S} s",
                cmd.expires_unix.saturating_sub(cmd.issued_unix)
            ),
        });
    }
    if cmd.sequence <= last_executed {
        return Err(Refusal::Replayed {
            sequence: cmd.sequence,
            last_executed,
        });
    }
    let expected = last_executed.saturating_add(1);
    if cmd.sequence != expected {
        return Err(Refusal::Gap {
            sequence: cmd.sequence,
            expected,
        });
    }
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_785_542_400;

    fn cmd(device: &str, sequence: u64, action: Action) -> Command {
        Command {
            version: COMMAND_VERSION,
            device: device.into(),
            sequence,
            issued_unix: NOW - 10,
            expires_unix: NOW + 3600,
            action,
        }
    }

    #[test]
    fn a_signed_command_for_this_box_in_order_is_admitted() {
        let ops = keys::generate().unwrap();
        let trusted = [ops.verifying_key()];
        for (i, action) in [
            Action::Drain {},
            Action::Undrain {},
            Action::Reboot {},
            Action::Update {
                path: format!("/v1/images/{}", "ab".repeat(32)),
                manifest_sha256: "ab".repeat(32),
            },
            Action::Rollback {},
            Action::CollectLogs { lines: 200 },
        ]
        .into_iter()
        .enumerate()
        {
            let c = cmd("dev1", i as u64 + 1, action);
            let s = sign(&c, &ops);
            assert!(
                s.command
                    .contains(&format!("\"kind\": \"{}\"", c.action.name()))
            );
            assert_eq!(admit(&s, &trusted, "dev1", i as u64, NOW), Ok(c));
        }
    }

    #[test]
    fn forged_redirected_stale_replayed_and_out_of_order_commands_are_refused() {
        let ops = keys::generate().unwrap();
        let image_key = keys::generate().unwrap();
        let trusted = [ops.verifying_key()];
        let good = cmd("dev1", 5, Action::Drain {});
        let at = |s: &SignedCommand, last: u64, now: i64| admit(s, &trusted, "dev1", last, now);
        // Signed by another key (the image key).
        let r = at(&sign(&good, &image_key), 4, NOW).unwrap_err();
        assert!(matches!(r, Refusal::UnknownSigner { .. }), "{r}");
        // The image key's signature under the ops key's id.
        let mut s = sign(&good, &image_key);
        s.signer = keys::key_id(&ops.verifying_key());
        assert!(matches!(at(&s, 4, NOW), Err(Refusal::BadSignature { .. })));
        // One byte changed after signing.
        let mut s = sign(&good, &ops);
        s.command = s.command.replace("drain", "reboot");
        assert!(matches!(at(&s, 4, NOW), Err(Refusal::BadSignature { .. })));
        // Garbage signature.
        let mut s = sign(&good, &ops);
        s.signature = "zz".into();
        assert!(matches!(at(&s, 4, NOW), Err(Refusal::BadSignature { .. })));
        let s = sign(&good, &ops);
        // For another device.
        let r = admit(&s, &trusted, "dev2", 4, NOW).unwrap_err();
        assert_eq!(r.to_string(), "command 5 is for device dev1, this is dev2");
        // Expired.
        let r = at(&s, 4, NOW + 3601).unwrap_err();
        assert_eq!(
            r.to_string(),
            format!("command 5 expired at {} (now {})", NOW + 3600, NOW + 3601)
        );
        // Replayed (same sequence as the last executed) and a gap.
        let r = at(&s, 5, NOW).unwrap_err();
        assert_eq!(
            r.to_string(),
            "command 5 replayed: commands up to 5 were executed already"
        );
        let r = at(&s, 2, NOW).unwrap_err();
        assert_eq!(
            r.to_string(),
            "command 5 out of order: the next one expected is 3"
        );
        // Issued far in the future, or meant to live for ever.
        let mut f = good.clone();
        f.issued_unix = NOW + 3600;
        f.expires_unix = NOW + 7200;
        assert!(matches!(
            at(&sign(&f, &ops), 4, NOW),
            Err(Refusal::BadTimes { .. })
        ));
        let mut f = good.clone();
        f.expires_unix = NOW + MAX_LIFETIME_S;
        assert!(matches!(
            at(&sign(&f, &ops), 4, NOW),
            Err(Refusal::BadTimes { .. })
        ));
        // Fields serde cannot check.
        for action in [
            Action::Update {
                path: "/v1/images/../../etc/shadow".into(),
                manifest_sha256: "ab".repeat(32),
            },
            Action::Update {
                path: "https://evil.example/x".into(),
                manifest_sha256: "ab".repeat(32),
            },
            Action::Update {
                path: "/v1/images/x".into(),
                manifest_sha256: "AB".repeat(32),
            },
            Action::CollectLogs { lines: 0 },
        ] {
            let r = at(&sign(&cmd("dev1", 5, action), &ops), 4, NOW).unwrap_err();
            assert!(matches!(r, Refusal::Malformed { .. }), "{r}");
        }
        // Unknown fields, an unknown action, non-canonical text: signed, still refused.
        for text in [
            r#"{"version":1,"device":"dev1","sequence":5,"issued_unix":1,"expires_unix":2,"action":"drain"}"#
                .to_string(),
            String::from_utf8(canonical_json(&serde_json::json!({"version": 1, "device": "dev1",
                "sequence": 5, "issued_unix": NOW, "expires_unix": NOW + 1,
                "action": {"kind": "self-destruct"}}))).unwrap(),
            String::from_utf8(canonical_json(&serde_json::json!({"version": 1, "device": "dev1",
                "sequence": 5, "issued_unix": NOW, "expires_unix": NOW + 1,
                "action": {"kind": "drain", "also": "announce 0.0.0.0/0"}}))).unwrap(),
        ] {
            let s = SignedCommand {
                signature: keys::sign_hex(&ops, text.as_bytes()).trim().to_string(),
                signer: keys::key_id(&ops.verifying_key()),
                command: text,
            };
            let r = at(&s, 4, NOW).unwrap_err();
            assert!(matches!(r, Refusal::Malformed { .. }), "{r}");
        }
    }
}
