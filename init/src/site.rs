//! Finding and checking the signed site config.
//!
//! Sources, in this order (the first that holds a `site.toml` wins):
//! 1. a GPT partition named `IMRS-CONFIG` (ext4 or vfat), mounted read-only at
//!    `/run/imrs/config`, holding `site.toml` and `site.toml.sig`;
//! 2. `/etc/imrs/site.toml` and `.sig` added to the initramfs at provisioning time.
//!
//! The signature is checked against `/etc/imrs/site-signing.pub`, baked into the image. Missing,
//! unsigned or invalid: the node stays off the air and the reason is printed.

use std::path::{Path, PathBuf};

use imrs_config::image::SITE_PUBKEY_PATH;
use imrs_config::signed::{self, SignedSiteError};
use imrs_config::site::Site;
use nix::mount::{MsFlags, mount};

/// GPT partition name of the config partition.
pub const CONFIG_PARTNAME: &str = "IMRS-CONFIG";
/// Where the config partition is mounted.
pub const CONFIG_MOUNT: &str = "/run/imrs/config";
/// The site config inside the initramfs.
pub const INITRAMFS_SITE: &str = "/etc/imrs/site.toml";

/// Why there is no usable site config.
#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    /// No source holds a site config.
    #[error(
        "no site config: no partition named {CONFIG_PARTNAME} with site.toml, and no {INITRAMFS_SITE}"
    )]
    Missing,
    /// The image's public key is unreadable.
    #[error("{SITE_PUBKEY_PATH}: the image's site-signing key is unusable")]
    Key(#[source] imrs_config::keys::KeyError),
    /// The config is unsigned, wrongly signed or invalid.
    #[error("{source_name}: refused")]
    Refused {
        /// Which source.
        source_name: String,
        /// Why.
        #[source]
        source: SignedSiteError,
    },
}

/// The device node of the partition with GPT name `partname`, from sysfs.
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

fn mount_ro(devnode: &Path, target: &str) -> Result<(), String> {
    std::fs::create_dir_all(target).map_err(|e| format!("{target}: {e}"))?;
    let mut last = String::new();
    for fstype in ["ext4", "vfat"] {
        match mount(
            Some(devnode),
            target,
            Some(fstype),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        ) {
            Ok(()) => return Ok(()),
            Err(e) => last = format!("{fstype}: {e}"),
        }
    }
    Err(format!(
        "cannot mount {} read-only ({last})",
        devnode.display()
    ))
}

/// Finds the site config and verifies it. Returns the site and the source it came from.
pub fn load(root: &Path) -> Result<(Site, String), SiteError> {
    let key = imrs_config::keys::read_public(&root.join(SITE_PUBKEY_PATH.trim_start_matches('/')))
        .map_err(SiteError::Key)?;
    let mut candidates: Vec<(PathBuf, String)> = Vec::new();
    if let Some(dev) = find_partition(&root.join("sys"), &root.join("dev"), CONFIG_PARTNAME) {
        match mount_ro(&dev, CONFIG_MOUNT) {
            Ok(()) => candidates.push((
                Path::new(CONFIG_MOUNT).join("site.toml"),
                format!("partition {CONFIG_PARTNAME} ({})", dev.display()),
            )),
            Err(e) => crate::log::warn(format!("config partition {}: {e}", dev.display())),
        }
    }
    candidates.push((
        root.join(INITRAMFS_SITE.trim_start_matches('/')),
        format!("initramfs {INITRAMFS_SITE}"),
    ));
    for (path, name) in candidates {
        if !path.exists() {
            continue;
        }
        return signed::load(&path, &key)
            .map(|s| (s, name.clone()))
            .map_err(|source| SiteError::Refused {
                source_name: name,
                source,
            });
    }
    Err(SiteError::Missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_partition_by_gpt_name() {
        let d = tempfile::tempdir().unwrap();
        for (dev, extra) in [
            ("vda", ""),
            ("vda1", "PARTNAME=IMRS-DATA\n"),
            ("vda2", "PARTNAME=IMRS-CONFIG\n"),
        ] {
            let p = d.path().join("sys/class/block").join(dev);
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(
                p.join("uevent"),
                format!("MAJOR=254\nDEVNAME={dev}\n{extra}"),
            )
            .unwrap();
        }
        let found = find_partition(&d.path().join("sys"), Path::new("/dev"), CONFIG_PARTNAME);
        assert_eq!(found, Some(PathBuf::from("/dev/vda2")));
        assert_eq!(
            find_partition(&d.path().join("sys"), Path::new("/dev"), "NOPE"),
            None
        );
    }
}
