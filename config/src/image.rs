//! What an image says about itself: `image.json` inside the initramfs (read by the init) and the
//! signed `manifest.json` next to the artifacts (read by `verify`, flashing and reports).
//!
//! Both are written canonically (sorted keys, two-space indentation, trailing newline) so that the
//! same inputs always give the same bytes, and read within a size limit ([`load_manifest`],
//! [`load_info`]).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::ConfigError;
use crate::fsutil::{limits, read_bounded};

use crate::profile::Profile;
use crate::recipe::DnsImpl;

/// Manifest schema version.
pub const MANIFEST_SCHEMA: u32 = 1;

/// Path of [`ImageInfo`] inside the image.
pub const IMAGE_INFO_PATH: &str = "/etc/imrs/image.json";
/// Path of the IANA trust anchors inside the image.
pub const ANCHORS_PATH: &str = "/etc/imrs/root-anchors.xml";
/// Path of the public key that site configs must be signed with, inside the image.
pub const SITE_PUBKEY_PATH: &str = "/etc/imrs/site-signing.pub";
/// Path of the public half of the key the image's manifest is signed with, inside the image: the
/// key a remote update's image must verify with.
pub const IMAGE_PUBKEY_PATH: &str = "/etc/imrs/image-signing.pub";

/// Facts about the image that the init needs at boot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageInfo {
    /// Image name from the recipe.
    pub name: String,
    /// Image version from the recipe.
    pub version: String,
    /// Build epoch (SOURCE_DATE_EPOCH of the lock): the clock may never be earlier.
    pub source_date_epoch: i64,
    /// DNS implementation.
    pub dns: DnsImpl,
    /// Kernel release (`uname -r`), the folder under `/lib/modules`.
    pub kernel_release: String,
    /// Module files to load at boot, relative to `/lib/modules/<release>/`, dependencies first.
    pub modules: Vec<String>,
    /// The hardware profile the init checks.
    pub profile: Profile,
    /// The builder that made the image.
    pub builder: String,
    /// Built for tests: the init honours its test hooks (`imrs.root`, `imrs.supervise`,
    /// `imrs.hold`, `imrs.state`, `imrs.fake_time`) as the machine's PID 1. Never in an image
    /// that ships; absent from `image.json` when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub test_hooks: bool,
}

/// One output file of a build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// File name inside the image folder.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// sha256, lowercase hex.
    pub sha256: String,
}

/// A package the image was built from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestPackage {
    /// Package name.
    pub name: String,
    /// Version.
    pub version: String,
    /// sha256 of the .deb.
    pub sha256: String,
}

/// The Rust toolchain that compiled the image's init (the init is the only code of ours in the
/// image: the same sources and the same toolchain give the same bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Toolchain {
    /// The rustc release (`release:` of `rustc -vV`), such as `1.95.0`.
    pub release: String,
    /// The rustc commit: the full `commit-hash:` of `rustc -vV` when the builder compiled the
    /// init; for a prebuilt init (`--init`), the abbreviated hash its `.comment` section names.
    pub commit_hash: String,
}

/// The signed description of an image folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`MANIFEST_SCHEMA`].
    pub schema: u32,
    /// Image name.
    pub name: String,
    /// Image version.
    pub version: String,
    /// Hardware profile name.
    pub profile: String,
    /// DNS implementation.
    pub dns: DnsImpl,
    /// Builder name and version.
    pub builder: String,
    /// The Rust toolchain that compiled the init.
    pub init_toolchain: Toolchain,
    /// SOURCE_DATE_EPOCH used for every timestamp.
    pub source_date_epoch: i64,
    /// sha256 of the recipe file.
    pub recipe_sha256: String,
    /// sha256 of the lock file.
    pub lock_sha256: String,
    /// Kernel release.
    pub kernel_release: String,
    /// Kernel command line.
    pub cmdline: String,
    /// Output files (not the manifest and signature themselves), sorted by name.
    pub artifacts: Vec<Artifact>,
    /// Number of entries in the initramfs.
    pub files_count: u64,
    /// sha256 over the sorted initramfs file list (`mode size sha256 path` lines).
    pub files_sha256: String,
    /// Packages used, sorted by name.
    pub packages: Vec<ManifestPackage>,
}

impl Artifact {
    /// The entry for file `name` holding `data`.
    pub fn of(name: &str, data: &[u8]) -> Artifact {
        use sha2::Digest;
        Artifact {
            name: name.into(),
            size: data.len() as u64,
            sha256: hex::encode(sha2::Sha256::digest(data)),
        }
    }
}

impl Manifest {
    /// A manifest of image `imrs-test` `version` for `profile` listing only `artifacts`: no
    /// packages, zero recipe, lock and file-list digests. A fixture for tests of what carries
    /// manifests (slots, downloads, the receiver's image store); never what a build writes.
    pub fn fixture(version: &str, profile: &str, artifacts: Vec<Artifact>) -> Manifest {
        Manifest {
            schema: MANIFEST_SCHEMA,
            name: "imrs-test".into(),
            version: version.into(),
            profile: profile.into(),
            dns: DnsImpl::Nsd,
            builder: "test".into(),
            init_toolchain: Toolchain {
                release: "1".into(),
                commit_hash: "0".into(),
            },
            source_date_epoch: 1_785_456_000,
            recipe_sha256: "0".repeat(64),
            lock_sha256: "0".repeat(64),
            kernel_release: "6.1".into(),
            cmdline: "console=ttyS0".into(),
            artifacts,
            files_count: 0,
            files_sha256: "0".repeat(64),
            packages: vec![],
        }
    }
}

/// Serialises any value canonically: keys sorted, two-space indentation, trailing newline.
pub fn canonical_json<T: Serialize>(value: &T) -> Vec<u8> {
    // serde_json's Map is a BTreeMap (no preserve_order feature): converting to a Value sorts keys.
    let v = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
    let mut out = serde_json::to_vec_pretty(&v).unwrap_or_default();
    out.push(b'\n');
    out
}

fn load_json<T: serde::de::DeserializeOwned>(
    path: &Path,
    limit: u64,
    what: &'static str,
) -> Result<(Vec<u8>, T), ConfigError> {
    let bytes = read_bounded(path, limit, what)?;
    let value = serde_json::from_slice(&bytes)
        .map_err(|e| ConfigError::parse(path, &format!("not a valid {what}: {e}")))?;
    Ok((bytes, value))
}

/// Reads a `manifest.json` (at most [`limits::MANIFEST`] bytes): its exact bytes (what the
/// signature covers) and the parsed manifest.
pub fn load_manifest(path: &Path) -> Result<(Vec<u8>, Manifest), ConfigError> {
    load_json(path, limits::MANIFEST, "manifest")
}

/// Reads an image's `image.json` (at most [`limits::IMAGE_INFO`] bytes).
pub fn load_info(path: &Path) -> Result<ImageInfo, ConfigError> {
    load_json(path, limits::IMAGE_INFO, "image info").map(|(_, info)| info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_are_read_within_their_limit() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("manifest.json");
        let m = Manifest {
            schema: MANIFEST_SCHEMA,
            name: "imrs-qemu".into(),
            version: "0.1.0".into(),
            profile: "qemu".into(),
            dns: DnsImpl::Nsd,
            builder: "imrs-build 0.1.0".into(),
            init_toolchain: Toolchain {
                release: "1.95.0".into(),
                commit_hash: "59807616e".into(),
            },
            source_date_epoch: 1,
            recipe_sha256: "0".repeat(64),
            lock_sha256: "0".repeat(64),
            kernel_release: "6.1.0-44-amd64".into(),
            cmdline: "console=ttyS0".into(),
            artifacts: vec![],
            files_count: 0,
            files_sha256: "0".repeat(64),
            packages: vec![],
        };
        let bytes = canonical_json(&m);
        std::fs::write(&p, &bytes).unwrap();
        assert_eq!(load_manifest(&p).unwrap(), (bytes, m));
        std::fs::write(&p, "{\"schema\": 1}").unwrap();
        let e = load_manifest(&p).unwrap_err().to_string();
        assert!(
            e.contains("manifest.json: not a valid manifest: missing field"),
            "{e}"
        );
        std::fs::File::create(&p).unwrap().set_len(1 << 30).unwrap();
        let e = load_manifest(&p).unwrap_err().to_string();
        assert!(
            e.ends_with("the manifest is larger than the limit of 4194304 bytes"),
            "{e}"
        );
        let e = load_info(Path::new("/dev/zero")).unwrap_err().to_string();
        assert!(e.contains("the image info is a character device"), "{e}");
    }

    #[test]
    fn canonical_sorts_keys_and_is_stable() {
        #[derive(Serialize)]
        struct S {
            zeta: u32,
            alpha: &'static str,
        }
        let a = canonical_json(&S {
            zeta: 1,
            alpha: "x",
        });
        let text = String::from_utf8(a.clone()).unwrap();
        assert!(text.find("alpha").unwrap() < text.find("zeta").unwrap());
        assert!(text.ends_with("}\n"));
        assert_eq!(
            a,
            canonical_json(&S {
                zeta: 1,
                alpha: "x"
            })
        );
    }
}
