//! The disk slot this boot runs from, and blessing it once the node is healthy.
//!
//! systemd-boot tells the booted system which entry it started through EFI variables
//! (`LoaderEntrySelected`, and `LoaderBootCountPath` while the entry is being tried with a boot
//! counter, `imrs-b+2-1.conf`). The init mounts efivarfs, reads them at boot ([`read`]), and
//! when the node has become healthy (zone verified, DNS answering, BGP established with the
//! specifics announced: the `bgp` stage passed) renames the counted entry to its blessed name on
//! the `IMRS-ESP` partition ([`bless`], `imrs_disk`'s atomic rename): from then on that slot is
//! the one systemd-boot keeps. A slot that never gets there is never blessed, and once its
//! tries are spent systemd-boot boots the other slot again. Without efivarfs (a kernel booted
//! directly, firmware without the variables) the init says it cannot bless and does not pretend.

use std::path::{Path, PathBuf};

use imrs_disk::{Blessed, EntryName, Esp, Window, efivar};

/// How long a slot on trial has from boot to healthy before the init reboots (systemd-boot then
/// tries it again or, its tries spent, boots the other slot), in seconds: the site config's
/// `slots.health_deadline_s` once the site stage admitted it ([`set_deadline`]), the default
/// before.
static DEADLINE_S: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(imrs_config::site::DEFAULT_HEALTH_DEADLINE_S);

/// Sets the trial deadline (the site stage, from the admitted site config).
pub fn set_deadline(seconds: u64) {
    DEADLINE_S.store(seconds, std::sync::atomic::Ordering::SeqCst);
}

/// The trial deadline now in force.
pub fn deadline() -> std::time::Duration {
    std::time::Duration::from_secs(DEADLINE_S.load(std::sync::atomic::Ordering::SeqCst))
}

/// The console line when a slot on trial is given up for this boot.
pub fn giving_up(entry: &EntryName, why: &str) -> String {
    let left = entry.tries_left().unwrap_or(0);
    format!(
        "slot {} on trial ({entry}) did not become healthy: {why}; rebooting: {}",
        entry.slot,
        if left > 0 {
            format!("systemd-boot tries it again ({left} tries left)")
        } else {
            format!(
                "its tries are spent, systemd-boot boots slot {}",
                entry.slot.other()
            )
        }
    )
}

/// Where efivarfs is mounted, under the root.
pub const EFIVARS: &str = "sys/firmware/efi/efivars";

/// What the boot loader said about this boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootEntry {
    /// Not started through UEFI with our boot loader's variables; why.
    Unknown(String),
    /// Started from this entry.
    Started {
        /// The entry selected (`LoaderEntrySelected`).
        selected: Option<EntryName>,
        /// The counted entry being tried (`LoaderBootCountPath`), absent for a blessed entry.
        counting: Option<EntryName>,
    },
}

impl BootEntry {
    /// The counted entry this boot is a try of, if any.
    pub fn on_trial(&self) -> Option<EntryName> {
        match self {
            BootEntry::Started { counting, .. } => *counting,
            BootEntry::Unknown(_) => None,
        }
    }
}

impl std::fmt::Display for BootEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BootEntry::Unknown(why) => write!(f, "boot entry unknown ({why})"),
            BootEntry::Started {
                counting: Some(c), ..
            } => write!(
                f,
                "systemd-boot started {c}: slot {} on trial, {} tries left after this one",
                c.slot,
                c.tries_left().unwrap_or(0)
            ),
            BootEntry::Started {
                selected: Some(s), ..
            } => write!(f, "systemd-boot started {s}: slot {} (blessed)", s.slot),
            BootEntry::Started { .. } => {
                write!(f, "systemd-boot started an entry that is not ours")
            }
        }
    }
}

/// Reads one loader variable, `None` when it is absent.
fn var(dir: &Path, name: &str) -> Result<Option<Vec<u8>>, String> {
    let p = dir.join(efivar::efivarfs_name(name));
    match imrs_config::fsutil::read_limited(&p, efivar::MAX_VALUE_BYTES as u64) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", p.display())),
    }
}

/// Mounts efivarfs when `mount_allowed` (the machine's init) and reads the loader's variables
/// under `root`.
pub fn read(root: &Path, mount_allowed: bool) -> BootEntry {
    if !root.join("sys/firmware/efi").is_dir() {
        return BootEntry::Unknown("not booted through UEFI: no /sys/firmware/efi".into());
    }
    let dir = root.join(EFIVARS);
    if mount_allowed {
        let r = nix::mount::mount(
            Some("efivarfs"),
            &dir,
            Some("efivarfs"),
            nix::mount::MsFlags::MS_NOSUID
                | nix::mount::MsFlags::MS_NODEV
                | nix::mount::MsFlags::MS_NOEXEC,
            None::<&str>,
        );
        if let Err(e) = r
            && e != nix::errno::Errno::EBUSY
        {
            return BootEntry::Unknown(format!("efivarfs cannot be mounted ({e})"));
        }
    }
    let selected = match var(&dir, efivar::ENTRY_SELECTED) {
        Ok(Some(b)) => match efivar::entry_selected(&b) {
            Ok(e) => e,
            Err(e) => return BootEntry::Unknown(e.to_string()),
        },
        Ok(None) => {
            return BootEntry::Unknown(format!(
                "no {} variable: not started by systemd-boot, or efivarfs is empty",
                efivar::ENTRY_SELECTED
            ));
        }
        Err(e) => return BootEntry::Unknown(e),
    };
    let counting = match var(&dir, efivar::BOOT_COUNT_PATH) {
        Ok(Some(b)) => match efivar::boot_count_path(&b) {
            Ok(e) => e,
            Err(e) => return BootEntry::Unknown(e.to_string()),
        },
        Ok(None) => None,
        Err(e) => return BootEntry::Unknown(e),
    };
    BootEntry::Started { selected, counting }
}

/// Blessing failed.
#[derive(Debug, thiserror::Error)]
pub enum BlessError {
    /// No `IMRS-ESP` partition.
    #[error(
        "no partition named {} (the boot disk's ESP)",
        imrs_disk::layout::ESP_PARTNAME
    )]
    NoEsp,
    /// The ESP could not be opened.
    #[error("{path}: cannot open the ESP")]
    Open {
        /// Device node.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The rename failed.
    #[error("{path}: blessing")]
    Disk {
        /// Device node.
        path: PathBuf,
        /// Why.
        #[source]
        source: imrs_disk::DiskError,
    },
}

/// Renames the counted entry `entry` to its blessed name on the `IMRS-ESP` partition found
/// under `root` (sysfs `PARTNAME=`, its device node under `root/dev`).
pub fn bless(root: &Path, entry: &EntryName) -> Result<Blessed, BlessError> {
    let node = crate::site::find_partition(
        &root.join("sys"),
        &root.join("dev"),
        imrs_disk::layout::ESP_PARTNAME,
    )
    .ok_or(BlessError::NoEsp)?;
    let open = |source| BlessError::Open {
        path: node.clone(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&node)
        .map_err(open)?;
    let len = std::io::Seek::seek(&mut file, std::io::SeekFrom::End(0)).map_err(open)?;
    let mut esp = Esp::from_window(Window::new(file, 0, len));
    esp.bless(entry).map_err(|source| BlessError::Disk {
        path: node.clone(),
        source,
    })
}

/// Set once this boot has been healthy ([`on_healthy`]): the trial deadline no longer applies.
static HEALTHY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this boot has been healthy.
pub fn was_healthy() -> bool {
    HEALTHY.load(std::sync::atomic::Ordering::SeqCst)
}

/// Called once the node is healthy: blesses the entry on trial, or says why nothing is done.
/// `slot` is the command line's (`imrs.slot=`): started from a disk slot without readable
/// loader variables, the init cannot know whether the slot is on trial and says it cannot bless
/// rather than pretend.
pub fn on_healthy(root: &Path, boot: &BootEntry, slot: Option<imrs_disk::Slot>) {
    HEALTHY.store(true, std::sync::atomic::Ordering::SeqCst);
    match boot {
        BootEntry::Started {
            counting: Some(c), ..
        } => match bless(root, c) {
            Ok(Blessed::Renamed { from, to }) => crate::log::info(format!(
                "healthy: slot {} blessed ({from} renamed to {to}); it stays the slot that boots",
                c.slot
            )),
            Ok(Blessed::Already) => {
                crate::log::info(format!("healthy: slot {} was already blessed", c.slot))
            }
            Err(e) => crate::log::error(format!(
                "healthy, but slot {} cannot be blessed: {}; systemd-boot will fall back once \
                 its tries are spent",
                c.slot,
                crate::log::chain(&e)
            )),
        },
        BootEntry::Started { selected, .. } => crate::log::info(format!(
            "healthy: {} needs no blessing",
            selected
                .as_ref()
                .map_or("the entry".to_string(), |s| format!(
                    "{s} (slot {})",
                    s.slot
                ))
        )),
        BootEntry::Unknown(why) => match slot {
            Some(s) => crate::log::error(format!(
                "healthy, but slot {s} cannot be blessed: {why}; if it is on trial, \
                 systemd-boot will fall back to slot {} once its tries are spent",
                s.other()
            )),
            None => crate::log::info(format!("healthy; no slot to bless: {why}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utf16(text: &str) -> Vec<u8> {
        let mut b = vec![7, 0, 0, 0];
        for u in text.encode_utf16().chain([0]) {
            b.extend(u.to_le_bytes());
        }
        b
    }

    #[test]
    fn reads_what_systemd_boot_left() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        assert!(
            matches!(read(r, false), BootEntry::Unknown(w) if w.contains("not booted through UEFI"))
        );
        let dir = r.join(EFIVARS);
        std::fs::create_dir_all(&dir).unwrap();
        assert!(
            matches!(read(r, false), BootEntry::Unknown(w) if w.contains("LoaderEntrySelected"))
        );
        std::fs::write(
            dir.join(efivar::efivarfs_name(efivar::ENTRY_SELECTED)),
            utf16("imrs-b+2-1.conf"),
        )
        .unwrap();
        std::fs::write(
            dir.join(efivar::efivarfs_name(efivar::BOOT_COUNT_PATH)),
            utf16("\\loader\\entries\\imrs-b+2-1.conf"),
        )
        .unwrap();
        let b = read(r, false);
        let BootEntry::Started {
            counting: Some(c), ..
        } = &b
        else {
            panic!("{b:?}")
        };
        assert_eq!(c.file_name(), "imrs-b+2-1.conf");
        assert_eq!(
            b.to_string(),
            "systemd-boot started imrs-b+2-1.conf: slot b on trial, 2 tries left after this one"
        );
        assert_eq!(b.on_trial().as_ref(), Some(c));
        assert!(
            giving_up(c, "x").ends_with("rebooting: systemd-boot tries it again (2 tries left)")
        );
        let spent = EntryName::parse("imrs-b+0-3.conf").unwrap();
        assert!(giving_up(&spent, "x").ends_with("systemd-boot boots slot a"));
        // Blessing without an ESP partition says so.
        let e = bless(r, c).unwrap_err();
        assert!(e.to_string().contains("no partition named IMRS-ESP"), "{e}");
    }
}
