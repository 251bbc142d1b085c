//! Whether a verified site config is for this appliance and not older than the last one it
//! applied (`imrs_config::site::admit`): a signed config for another box, or an old one replayed
//! over a newer one, keeps the node off the air.
//!
//! - **Identity**: the serials of the machine's disks (`/sys/block/*/serial`, virtio, and
//!   `/sys/block/*/device/serial`, SCSI/SATA/NVMe) and the device key's id (the key in the state
//!   folder, made here on the first boot so a config can name it).
//! - **Order**: the sequence of the last config applied is kept in `<state>/site-applied.json`,
//!   written atomically once a config is admitted. The state folder is on the data partition: it
//!   protects against replaying an old config over a newer one, not against whoever can rewrite
//!   that partition too.

use std::path::{Path, PathBuf};

use imrs_config::site::{DeviceIdentity, Site, SiteRefusal, admit};
use serde::{Deserialize, Serialize};

use crate::phonehome::identity;

/// The record of the last config applied, in the state folder.
pub const APPLIED_FILE: &str = "site-applied.json";
/// The largest record read.
const MAX_APPLIED_BYTES: u64 = 4096;
/// The longest disk serial taken from sysfs.
const MAX_SERIAL: usize = 128;

/// What was applied last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Applied {
    /// The config's sequence.
    pub sequence: u64,
    /// The config's site id (for the operator).
    pub site_id: String,
}

/// Why a verified site config is not applied.
#[derive(Debug, thiserror::Error)]
pub enum BindingError {
    /// It names another device, or is older than the last one applied.
    #[error(transparent)]
    Refused(#[from] SiteRefusal),
    /// The device key could not be read or made.
    #[error("the device key")]
    Identity(#[source] identity::IdentityError),
    /// The record of the last config applied is unreadable or malformed: the order cannot be
    /// checked, so nothing is applied.
    #[error("{path}: {reason}; remove it only if this appliance is to accept any sequence again")]
    Record {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The record could not be written.
    #[error("{path}: cannot record the config applied")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Serials of the disks under `sys` (`<sys>/block/*/serial`, `<sys>/block/*/device/serial`).
pub fn disk_serials(sys: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(sys.join("block")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.filter_map(Result::ok) {
        for file in [e.path().join("serial"), e.path().join("device/serial")] {
            let Ok(bytes) = imrs_config::fsutil::read_limited(&file, 4096) else {
                continue;
            };
            let serial: String = String::from_utf8_lossy(&bytes)
                .trim()
                .chars()
                .filter(|c| !c.is_control())
                .take(MAX_SERIAL)
                .collect();
            if !serial.is_empty() && !out.contains(&serial) {
                out.push(serial);
            }
        }
    }
    out.sort();
    out
}

/// The last config applied, if any.
pub fn last_applied(state_dir: &Path) -> Result<Option<Applied>, BindingError> {
    let path = state_dir.join(APPLIED_FILE);
    let bad = |reason: String| BindingError::Record {
        path: path.clone(),
        reason,
    };
    match imrs_config::fsutil::read_limited(&path, MAX_APPLIED_BYTES) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| bad(format!("malformed ({e})"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(bad(format!("unreadable ({e})"))),
    }
}

/// Admits `site` on this appliance (disks under `sys`, device key and record in `state_dir`) and
/// records it as applied. Returns this appliance's identity.
pub fn admit_here(
    site: &Site,
    sys: &Path,
    state_dir: &Path,
) -> Result<DeviceIdentity, BindingError> {
    let key = identity::load_or_create(state_dir).map_err(BindingError::Identity)?;
    let this = DeviceIdentity {
        disk_serials: disk_serials(sys),
        key_id: Some(key.key_id),
    };
    let last = last_applied(state_dir)?;
    admit(site, &this, last.as_ref().map(|a| a.sequence))?;
    if last.as_ref().map(|a| a.sequence) != Some(site.sequence) {
        let path = state_dir.join(APPLIED_FILE);
        let record = Applied {
            sequence: site.sequence,
            site_id: site.site_id.clone(),
        };
        let mut bytes = serde_json::to_vec_pretty(&record).map_err(|e| BindingError::Write {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        bytes.push(b'\n');
        imrs_config::fsutil::write_atomic(&path, &bytes, 0o644)
            .map_err(|source| BindingError::Write { path, source })?;
    }
    Ok(this)
}

#[cfg(test)]
mod tests {
    use super::*;
    use imrs_config::site::DeviceBinding;

    fn lab_site() -> Site {
        let text =
            std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/sites/lab.toml"))
                .unwrap();
        imrs_config::site::parse(Path::new("lab.toml"), &String::from_utf8(text).unwrap()).unwrap()
    }

    fn sys_with_disk(serial: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("block/vda")).unwrap();
        std::fs::write(d.path().join("block/vda/serial"), format!("{serial}\n")).unwrap();
        std::fs::create_dir_all(d.path().join("block/sda/device")).unwrap();
        std::fs::write(d.path().join("block/sda/device/serial"), "  SATA-7 \n").unwrap();
        d
    }

    #[test]
    fn a_config_for_this_disk_is_applied_and_recorded() {
        let sys = sys_with_disk("IMRS-SN-0042");
        let state = tempfile::tempdir().unwrap();
        assert_eq!(disk_serials(sys.path()), ["IMRS-SN-0042", "SATA-7"]);
        let mut site = lab_site();
        site.device = DeviceBinding::Serial("IMRS-SN-0042".into());
        site.sequence = 7;
        let this = admit_here(&site, sys.path(), state.path()).unwrap();
        assert!(this.key_id.is_some());
        assert_eq!(last_applied(state.path()).unwrap().unwrap().sequence, 7);
        // The same config again (a reboot) is fine; a newer one moves the record.
        admit_here(&site, sys.path(), state.path()).unwrap();
        site.sequence = 8;
        admit_here(&site, sys.path(), state.path()).unwrap();
        assert_eq!(last_applied(state.path()).unwrap().unwrap().sequence, 8);
    }

    #[test]
    fn another_devices_config_and_an_older_one_are_refused() {
        let sys = sys_with_disk("IMRS-SN-0042");
        let state = tempfile::tempdir().unwrap();
        let mut site = lab_site();
        site.device = DeviceBinding::Serial("IMRS-SN-9999".into());
        let e = admit_here(&site, sys.path(), state.path()).unwrap_err();
        assert!(
            matches!(e, BindingError::Refused(SiteRefusal::OtherDevice { .. })),
            "{e}"
        );
        assert!(
            last_applied(state.path()).unwrap().is_none(),
            "nothing recorded"
        );
        // Bound to this box's device key: applied.
        let key = identity::load_or_create(state.path()).unwrap();
        site.device = DeviceBinding::Key(key.key_id.clone());
        site.sequence = 5;
        admit_here(&site, sys.path(), state.path()).unwrap();
        // An older config replayed over it: refused, the record stays.
        site.sequence = 4;
        let e = admit_here(&site, sys.path(), state.path()).unwrap_err();
        assert!(
            matches!(e, BindingError::Refused(SiteRefusal::Older { .. })),
            "{e}"
        );
        assert_eq!(last_applied(state.path()).unwrap().unwrap().sequence, 5);
    }

    #[test]
    fn a_damaged_record_refuses_rather_than_forgetting_the_order() {
        let sys = sys_with_disk("X");
        let state = tempfile::tempdir().unwrap();
        std::fs::write(state.path().join(APPLIED_FILE), "{\"sequence\": \"lots\"").unwrap();
        let e = admit_here(&lab_site(), sys.path(), state.path()).unwrap_err();
        assert!(matches!(e, BindingError::Record { .. }), "{e}");
    }
}
