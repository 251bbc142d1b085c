//! Which appliance a site config is for, and whether an appliance applies it.
//!
//! A signed site config names its device (`device = "serial:<disk serial>"`,
//! `"key:<device key id>"` or `"any"`) and carries a `sequence` that grows with every new config
//! for that device. [`admit`] is the init's pure decision: refuse a config made for another
//! device (a signed config replayed onto the wrong box) and one older than the last applied (a
//! rollback); the same sequence again is the same config after a reboot and is fine.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::Site;
use crate::error::escape;

/// Longest disk serial accepted in `device = "serial:..."`, in bytes.
pub const SERIAL_MAX: usize = 64;
/// Length of a device key id (`imrs_config::keys::key_id`): 16 lowercase hex digits.
pub const KEY_ID_LEN: usize = 16;

/// The device a site config is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DeviceBinding {
    /// Any appliance holding the site-signing key's trust (labs, a spare pool).
    Any,
    /// The appliance whose disk has this serial number (from the flash inventory).
    Serial(String),
    /// The appliance whose device key has this id (16 hex digits, as the receiver lists it).
    Key(String),
}

impl FromStr for DeviceBinding {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        const RULE: &str = "expected \"any\", \"serial:SERIAL\" (the disk serial: 1 to 64 \
                            printable ASCII characters, no spaces) or \"key:KEYID\" (the device \
                            key id: 16 hex digits)";
        if s == "any" {
            return Ok(DeviceBinding::Any);
        }
        if let Some(serial) = s.strip_prefix("serial:")
            && !serial.is_empty()
            && serial.len() <= SERIAL_MAX
            && serial.bytes().all(|b| b.is_ascii_graphic())
        {
            return Ok(DeviceBinding::Serial(serial.to_string()));
        }
        if let Some(id) = s.strip_prefix("key:")
            && id.len() == KEY_ID_LEN
            && id.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Ok(DeviceBinding::Key(id.to_ascii_lowercase()));
        }
        Err(format!("device = \"{}\": {RULE}", escape(s)))
    }
}

impl fmt::Display for DeviceBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceBinding::Any => f.write_str("any"),
            DeviceBinding::Serial(s) => write!(f, "serial:{s}"),
            DeviceBinding::Key(k) => write!(f, "key:{k}"),
        }
    }
}

impl Serialize for DeviceBinding {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceBinding {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What identifies the appliance the init runs on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceIdentity {
    /// Serial numbers of its disks (surrounding white space, as sysfs pads them, is ignored).
    pub disk_serials: Vec<String>,
    /// The id of its device key (`imrs_config::keys::key_id`), once it has one.
    pub key_id: Option<String>,
}

impl fmt::Display for DeviceIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = self
            .disk_serials
            .iter()
            .map(|s| format!("serial:{}", escape(s.trim())))
            .collect();
        if let Some(k) = &self.key_id {
            parts.push(format!("key:{}", escape(k)));
        }
        if parts.is_empty() {
            f.write_str("no disk serial and no device key")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// Why the appliance does not apply a (validly signed) site config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SiteRefusal {
    /// The config names another device.
    #[error("the site config is for device {wanted}, not this one ({this})")]
    OtherDevice {
        /// The config's `device`.
        wanted: DeviceBinding,
        /// This appliance's identity, as text.
        this: String,
    },
    /// The config is older than the one applied last.
    #[error(
        "the site config has sequence {sequence}, older than the last one applied \
         ({last_applied}): refusing to roll back"
    )]
    Older {
        /// The config's `sequence`.
        sequence: u64,
        /// The sequence of the config applied last.
        last_applied: u64,
    },
}

impl DeviceBinding {
    /// Whether this binding names `this` appliance.
    pub fn matches(&self, this: &DeviceIdentity) -> bool {
        match self {
            DeviceBinding::Any => true,
            DeviceBinding::Serial(want) => this.disk_serials.iter().any(|s| s.trim() == want),
            DeviceBinding::Key(want) => this
                .key_id
                .as_deref()
                .is_some_and(|k| k.eq_ignore_ascii_case(want)),
        }
    }
}

/// Whether the appliance `this_device`, which last applied the site config with sequence
/// `last_applied` (`None`: never applied one), applies `site`.
pub fn admit(
    site: &Site,
    this_device: &DeviceIdentity,
    last_applied: Option<u64>,
) -> Result<(), SiteRefusal> {
    if !site.device.matches(this_device) {
        return Err(SiteRefusal::OtherDevice {
            wanted: site.device.clone(),
            this: this_device.to_string(),
        });
    }
    if let Some(last) = last_applied
        && site.sequence < last
    {
        return Err(SiteRefusal::Older {
            sequence: site.sequence,
            last_applied: last,
        });
    }
    Ok(())
}
