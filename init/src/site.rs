//! Finding and checking the signed site config.
//!
//! Sources, in this order:
//! 1. a GPT partition named `IMRS-CONFIG` (ext4 or vfat, found through `PARTNAME=` in
//!    `/sys/class/block/*/uevent`), mounted read-only at `/run/imrs/config` just long enough to
//!    read `site.toml` and `site.toml.sig`. A partition that exists but cannot be mounted is a
//!    failure (it is never silently passed over); one without `site.toml` falls through.
//! 2. `/etc/imrs/site.toml` and `.sig` added to the initramfs at provisioning time.
//!
//! The signature is checked (`imrs_config::signed::verify_text`) against
//! `/etc/imrs/site-signing.pub`, baked into the image. Missing, unsigned or invalid: the node
//! stays off the air and the console says exactly why. ext4 and vfat are modules in Debian's
//! 6.1 kernel (`CONFIG_EXT4_FS=m`, `CONFIG_VFAT_FS=m`): the image lists them in `image.json`
//! `modules`; when the kernel does not know the filesystem the failure says so.

pub mod binding;

use std::path::{Path, PathBuf};

use imrs_config::image::SITE_PUBKEY_PATH;
use imrs_config::signed::{self, SignedSiteError};
use imrs_config::site::Site;
use nix::mount::{MntFlags, MsFlags, mount, umount2};

/// GPT partition name of the config partition.
pub const CONFIG_PARTNAME: &str = "IMRS-CONFIG";
/// Where the config partition is mounted.
pub const CONFIG_MOUNT: &str = "/run/imrs/config";
/// The site config inside the initramfs.
pub const INITRAMFS_SITE: &str = "etc/imrs/site.toml";
/// Filesystems the config partition may have, tried in order.
pub const CONFIG_FSTYPES: [&str; 2] = ["ext4", "vfat"];

/// Why there is no usable site config.
#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    /// No source holds a site config.
    #[error(
        "no site config: no partition named {CONFIG_PARTNAME} with site.toml, and no /{INITRAMFS_SITE}"
    )]
    Missing,
    /// The image's public key is unreadable.
    #[error("the image's site-signing key ({SITE_PUBKEY_PATH}) is unusable")]
    Key(#[source] imrs_config::keys::KeyError),
    /// The config partition exists but cannot be mounted.
    #[error("partition {CONFIG_PARTNAME} ({device}): {reason}")]
    Partition {
        /// Device node.
        device: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The config is unsigned, wrongly signed or invalid.
    #[error("{origin}: refused")]
    Refused {
        /// Which source.
        origin: String,
        /// Why.
        #[source]
        source: SignedSiteError,
    },
}

/// The device node of the partition with GPT name `partname`, from sysfs `uevent` files.
pub fn find_partition(sys: &Path, dev: &Path, partname: &str) -> Option<PathBuf> {
    let entries = std::fs::read_dir(sys.join("class/block")).ok()?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let uevent = std::fs::read_to_string(e.path().join("uevent")).ok()?;
            let mut name = None;
            let mut devname = None;
            for l in uevent.lines() {
                if let Some(v) = l.strip_prefix("PARTNAME=") {
                    name = Some(v.to_string());
                }
                if let Some(v) = l.strip_prefix("DEVNAME=") {
                    devname = Some(v.to_string());
                }
            }
            let devname = devname?;
            (name.as_deref() == Some(partname)).then(|| dev.join(devname))
        })
        .collect();
    found.sort();
    found.into_iter().next()
}

/// Filesystems the running kernel knows (`/proc/filesystems` text).
fn known_filesystems(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|l| l.split_whitespace().last())
        .collect()
}

fn mount_ro(proc_filesystems: &str, devnode: &Path, target: &str) -> Result<(), String> {
    let known = known_filesystems(proc_filesystems);
    let usable: Vec<&str> = CONFIG_FSTYPES
        .into_iter()
        .filter(|f| known.contains(f))
        .collect();
    if usable.is_empty() {
        return Err(format!(
            "filesystem not available: the kernel knows neither {} (modules not loaded?)",
            CONFIG_FSTYPES.join(" nor ")
        ));
    }
    std::fs::create_dir_all(target).map_err(|e| format!("{target}: {e}"))?;
    let mut tried = Vec::new();
    for fstype in usable {
        match mount(
            Some(devnode),
            target,
            Some(fstype),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        ) {
            Ok(()) => return Ok(()),
            Err(e) => tried.push(format!("{fstype}: {e}")),
        }
    }
    Err(format!("cannot mount read-only ({})", tried.join("; ")))
}

/// Reads `dir/site.toml` and its signature (within their size limits) and verifies them.
/// `Ok(None)`: no `site.toml`.
fn verify_in(
    dir: &Path,
    origin: &str,
    key: &ed25519_dalek::VerifyingKey,
) -> Result<Option<Site>, SiteError> {
    signed::load_if_present(&dir.join("site.toml"), key).map_err(|source| SiteError::Refused {
        origin: origin.to_string(),
        source,
    })
}

/// Finds the site config under `root` and verifies it. Returns the site and where it came from.
/// `mount_allowed`: only the machine's init mounts the config partition.
pub fn load(root: &Path, mount_allowed: bool) -> Result<(Site, String), SiteError> {
    let key = imrs_config::keys::read_public(&root.join(SITE_PUBKEY_PATH.trim_start_matches('/')))
        .map_err(SiteError::Key)?;
    if let Some(dev) = find_partition(&root.join("sys"), &root.join("dev"), CONFIG_PARTNAME) {
        let origin = format!("partition {CONFIG_PARTNAME} ({})", dev.display());
        if !mount_allowed {
            return Err(SiteError::Partition {
                device: dev,
                reason: "not mounted outside the machine role".into(),
            });
        }
        let fs = std::fs::read_to_string(root.join("proc/filesystems")).unwrap_or_default();
        mount_ro(&fs, &dev, CONFIG_MOUNT).map_err(|reason| SiteError::Partition {
            device: dev.clone(),
            reason,
        })?;
        let found = verify_in(Path::new(CONFIG_MOUNT), &origin, &key);
        if let Err(e) = umount2(CONFIG_MOUNT, MntFlags::empty()) {
            crate::log::warn(format!("unmount {CONFIG_MOUNT}: {e}"));
        }
        if let Some(site) = found? {
            return Ok((site, origin));
        }
        crate::log::info(format!("{origin} has no site.toml: trying the initramfs"));
    }
    let dir = root
        .join(INITRAMFS_SITE)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    match verify_in(&dir, &format!("initramfs /{INITRAMFS_SITE}"), &key)? {
        Some(site) => Ok((site, format!("initramfs /{INITRAMFS_SITE}"))),
        None => Err(SiteError::Missing),
    }
}

#[cfg(test)]
mod tests;
