//! Hardware profiles (`images/profiles/*.toml`): what first boot requires of an appliance.
//!
//! The exact hardware of Calypso and Pandora is not public (docs/facts.md): these files are editable
//! data, reviewed like code, not facts. The init's hardware stage checks the machine against them.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Checker, ConfigError, parse_toml, read};
use crate::fsutil::limits;

/// The profile schema version this build understands.
pub const PROFILE_VERSION: u32 = 1;

/// How strictly a property is required.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Need {
    /// Missing fails the hardware stage.
    Required,
    /// Missing is reported as a warning.
    #[default]
    Preferred,
    /// Not checked.
    Ignored,
}

/// A hardware profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Schema version; must be [`PROFILE_VERSION`].
    pub version: u32,
    /// Profile name (`calypso`, `pandora`, `qemu`); must match the file name.
    pub name: String,
    /// What the appliance is, for people.
    pub description: String,
    /// Kernel modules the hardware needs (NIC, disk, TPM drivers), loaded at boot in dependency order.
    #[serde(default)]
    pub modules: Vec<String>,
    /// DMI identity.
    #[serde(default)]
    pub dmi: Dmi,
    /// Processors.
    pub cpu: Cpu,
    /// Memory.
    pub memory: Memory,
    /// Network interfaces.
    pub nics: Nics,
    /// Disks.
    #[serde(default)]
    pub disks: Disks,
    /// TPM 2.0.
    #[serde(default)]
    pub tpm: Need,
    /// Kernel entropy pool initialised (`/proc/sys/kernel/random/...`).
    #[serde(default = "required")]
    pub entropy: Need,
    /// RTC not earlier than the image's build epoch.
    #[serde(default = "required")]
    pub rtc: Need,
}

fn required() -> Need {
    Need::Required
}

/// DMI identity (`/sys/class/dmi/id`). Empty lists accept anything.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dmi {
    /// Accepted `sys_vendor` values.
    #[serde(default)]
    pub vendors: Vec<String>,
    /// Accepted `product_name` values.
    #[serde(default)]
    pub products: Vec<String>,
    /// Whether a non-empty `product_serial` is required (it identifies the device in reports).
    #[serde(default)]
    pub serial: Need,
}

/// Processor requirements.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cpu {
    /// Minimum online CPUs.
    pub min_count: u32,
    /// CPU flags (`/proc/cpuinfo` `flags`) that must all be present.
    #[serde(default)]
    pub flags: Vec<String>,
}

/// Memory requirements.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Memory {
    /// Minimum `MemTotal`, MiB.
    pub min_mib: u64,
    /// ECC memory reported by EDAC (`/sys/devices/system/edac/mc/mc*`).
    #[serde(default)]
    pub ecc: Need,
}

/// Network interface requirements.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nics {
    /// Minimum number of physical (non-virtual) interfaces.
    pub min_count: u32,
    /// Accepted drivers; empty accepts any.
    #[serde(default)]
    pub drivers: Vec<String>,
    /// Minimum link speed of the interfaces used, Mbit/s (0: not checked).
    #[serde(default)]
    pub min_speed_mbps: u32,
    /// Carrier on at least `min_count` interfaces.
    #[serde(default)]
    pub carrier: Need,
}

/// Disk requirements.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disks {
    /// Minimum number of block devices that are disks (not partitions, loop or ram).
    #[serde(default)]
    pub min_count: u32,
    /// Minimum size of each counted disk, GiB.
    #[serde(default)]
    pub min_size_gib: u64,
}

/// Loads and validates a profile (at most [`limits::PROFILE`] bytes); its `name` must equal the
/// file stem.
pub fn load(path: &Path) -> Result<Profile, ConfigError> {
    let text = read(path, limits::PROFILE, "hardware profile")?;
    let p: Profile = parse_toml(path, &text)?;
    let c = Checker { path };
    c.ensure(
        p.version == PROFILE_VERSION,
        "version",
        p.version,
        format!("this build understands profile version {PROFILE_VERSION}"),
    )?;
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    c.ensure(
        p.name == stem,
        "name",
        &p.name,
        format!("must match the file name ({stem})"),
    )?;
    c.length("description", &p.description, 0, 1024)?;
    c.no_control("description", &p.description)?;
    for (key, list) in [
        ("dmi.vendors", &p.dmi.vendors),
        ("dmi.products", &p.dmi.products),
        ("cpu.flags", &p.cpu.flags),
        ("nics.drivers", &p.nics.drivers),
        ("modules", &p.modules),
    ] {
        c.count(key, list, 256)?;
        for (i, v) in list.iter().enumerate() {
            c.length(format!("{key}[{i}]"), v, 1, 128)?;
            c.no_control(format!("{key}[{i}]"), v)?;
        }
    }
    c.ensure(
        p.cpu.min_count >= 1,
        "cpu.min_count",
        p.cpu.min_count,
        "at least 1",
    )?;
    c.ensure(
        p.memory.min_mib >= 256,
        "memory.min_mib",
        p.memory.min_mib,
        "at least 256 (the whole OS and the root zone live in RAM)",
    )?;
    c.ensure(
        p.nics.min_count >= 1,
        "nics.min_count",
        p.nics.min_count,
        "an appliance needs a network interface",
    )?;
    for (i, m) in p.modules.iter().enumerate() {
        c.ensure(
            !m.is_empty()
                && m.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-_".contains(ch)),
            format!("modules[{i}]"),
            m,
            "a module name (letters, digits, '-', '_')",
        )?;
    }
    Ok(p)
}
