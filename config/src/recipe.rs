//! Image recipes (`images/*.toml`): which appliance, which kernel and modules, which daemons, which
//! files. A recipe plus its lock file fully determine an image.
//!
//! A recipe is checked for more than its syntax ([`validate`]): the files it names stay inside
//! its folder ([`paths`]), the files it places keep their modes sane and stay off what the image
//! owns ([`crate::layout`]), and nothing gives the appliance a shell or a remote login
//! ([`shell`]) unless the recipe says `allow_shell = true` and why.

pub mod paths;
pub mod shell;
mod validate;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, parse_toml, read};
use crate::fsutil::limits;
use crate::profile::Profile;

/// The recipe schema version this build understands.
pub const RECIPE_VERSION: u32 = 1;

/// DNS implementation served by the image (L-root runs both for diversity; docs/facts.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsImpl {
    /// NLnet Labs NSD.
    Nsd,
    /// CZ.NIC Knot DNS.
    Knot,
}

impl DnsImpl {
    /// The Debian package providing the daemon.
    pub fn package(self) -> &'static str {
        match self {
            DnsImpl::Nsd => "nsd",
            DnsImpl::Knot => "knot",
        }
    }
}

impl std::fmt::Display for DnsImpl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DnsImpl::Nsd => "nsd",
            DnsImpl::Knot => "knot",
        })
    }
}

/// A recipe as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Schema version; must be [`RECIPE_VERSION`].
    pub version: u32,
    /// Image name, e.g. `imrs-qemu`.
    pub name: String,
    /// Image version, e.g. `0.1.0`.
    pub image_version: String,
    /// Hardware profile name: `images/profiles/<profile>.toml`.
    pub profile: String,
    /// DNS implementation.
    pub dns: DnsImpl,
    /// Debian architecture.
    #[serde(default = "default_arch")]
    pub architecture: String,
    /// Kernel selection.
    pub kernel: Kernel,
    /// Userland packages and the executables taken from them.
    pub userland: Userland,
    /// Extra files copied into the image.
    #[serde(default)]
    pub files: Vec<FileSpec>,
    /// The UEFI boot loader `imrs-build disk` puts on appliance disks; an image built from a
    /// recipe without it cannot become a disk.
    #[serde(default)]
    pub boot: Option<Boot>,
    /// Package sources.
    #[serde(default)]
    pub apt: AptSource,
    /// Allow packages, executables or files that give a shell or a remote login (a debugging
    /// image); refused unless set, and then [`Recipe::allow_shell_reason`] must say why.
    #[serde(default)]
    pub allow_shell: bool,
    /// Why this image may carry a shell (required with `allow_shell = true`).
    #[serde(default)]
    pub allow_shell_reason: Option<String>,
}

fn default_arch() -> String {
    "amd64".into()
}

/// Kernel package, modules and command line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kernel {
    /// Debian package, usually the meta package `linux-image-amd64`; the lock pins the versioned one.
    pub package: String,
    /// Modules wanted in addition to the profile's; the builder adds their dependencies.
    #[serde(default)]
    pub modules: Vec<String>,
    /// Kernel command line.
    pub cmdline: String,
}

/// The UEFI boot loader.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Boot {
    /// Debian package with systemd-boot (`systemd-boot-efi`), pinned in the lock with the role
    /// `bootloader`; only its EFI binary [`SYSTEMD_BOOT_EFI`] is used (it is carried into the
    /// image folder, not the initramfs).
    pub package: String,
}

/// Where systemd-boot's x86-64 EFI binary is in the `systemd-boot-efi` package.
pub const SYSTEMD_BOOT_EFI: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";

/// Userland packages.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Userland {
    /// Debian packages to install (their `Depends` closure is locked too).
    pub packages: Vec<String>,
    /// Executables (paths inside the packages) shipped with their `DT_NEEDED` library closure.
    pub binaries: Vec<String>,
    /// Packages never pulled in through `Depends` (maintainer-script tooling the image has no use for).
    #[serde(default)]
    pub exclude: Vec<String>,
}

/// A file from the repository copied into the image.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// Source, relative to the recipe's folder and inside it.
    pub source: PathBuf,
    /// Destination inside the image (absolute, normalised, not over anything the image owns).
    pub dest: String,
    /// Expected sha256 of the source (hex); the build fails on a mismatch.
    pub sha256: String,
    /// Permission bits (no setuid, setgid or sticky bit; not world-writable).
    #[serde(default = "default_mode")]
    pub mode: u32,
}

fn default_mode() -> u32 {
    0o644
}

/// Where packages come from.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AptSource {
    /// Archive base URLs (`http://deb.debian.org/debian`) `lock` may take packages from; empty:
    /// any source the host's apt uses. The lock records each package's mirror.
    #[serde(default)]
    pub mirrors: Vec<String>,
    /// Suites (`bookworm`, `bookworm-security`) `lock` may take packages from; empty: any.
    #[serde(default)]
    pub suites: Vec<String>,
    /// A base URL tried last, as `<URL>/<pool path>`, for packages that neither their mirror nor
    /// the snapshot archive at the lock's time serve (e.g. a later snapshot,
    /// `https://snapshot.debian.org/archive/debian/20260101T000000Z`, or a local mirror).
    #[serde(default)]
    pub snapshot: Option<String>,
}

/// A recipe with its profile loaded and everything checked.
#[derive(Debug, Clone, Serialize)]
pub struct ResolvedRecipe {
    /// Where the recipe was read from.
    pub path: PathBuf,
    /// The recipe.
    pub recipe: Recipe,
    /// Its hardware profile.
    pub profile: Profile,
    /// Where the profile was read from (inside the recipe's folder).
    pub profile_path: PathBuf,
    /// The files' sources, resolved (canonical, inside the recipe's folder), in the order of
    /// [`Recipe::files`].
    pub sources: Vec<PathBuf>,
    /// Kernel modules: the profile's then the recipe's, deduplicated, in that order.
    pub modules: Vec<String>,
    /// sha256 of the recipe file's bytes.
    pub sha256: String,
}

impl ResolvedRecipe {
    /// The recipe's folder (sources of [`FileSpec`] are relative to it).
    pub fn dir(&self) -> &Path {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        }
    }

    /// Reads the source of `files[index]` (checked again to be inside the recipe's folder, at
    /// most [`limits::RECIPE_FILE`] bytes).
    pub fn read_source(&self, index: usize) -> Result<Vec<u8>, ConfigError> {
        let Some(f) = self.recipe.files.get(index) else {
            return Err(ConfigError::invalid(
                &self.path,
                "files",
                index,
                "no such entry",
            ));
        };
        let folder = paths::Folder::of(&self.path)?;
        let key = format!("files[{index}].source");
        let src = folder.resolve(&key, "file", f.source.display(), f.source.clone())?;
        Ok(crate::fsutil::read_bounded(
            &src,
            limits::RECIPE_FILE,
            "file named by the recipe",
        )?)
    }

    /// The default lock file path: `<recipe without .toml>.lock.json`.
    pub fn default_lock_path(&self) -> PathBuf {
        self.path.with_extension("lock.json")
    }
}

/// Loads and validates a recipe (at most [`limits::RECIPE`] bytes) and its profile
/// (`<recipe folder>/profiles/<profile>.toml`). Every path the recipe names is resolved
/// relative to the recipe's folder and must stay inside it (see [`paths`]).
pub fn load(path: &Path) -> Result<ResolvedRecipe, ConfigError> {
    let text = read(path, limits::RECIPE, "recipe")?;
    let recipe: Recipe = parse_toml(path, &text)?;
    validate::validate(path, &recipe)?;
    let folder = paths::Folder::of(path)?;
    let profile_path = folder.resolve(
        "profile",
        "hardware profile",
        &recipe.profile,
        Path::new("profiles").join(format!("{}.toml", recipe.profile)),
    )?;
    let profile = crate::profile::load(&profile_path)?;
    let mut sources = Vec::with_capacity(recipe.files.len());
    for (i, f) in recipe.files.iter().enumerate() {
        let key = format!("files[{i}].source");
        sources.push(folder.resolve(&key, "file", f.source.display(), f.source.clone())?);
    }
    let mut modules: Vec<String> = Vec::new();
    for m in profile.modules.iter().chain(&recipe.kernel.modules) {
        let norm = m.replace('-', "_");
        if !modules.contains(&norm) {
            modules.push(norm);
        }
    }
    use sha2::Digest;
    let sha256 = hex::encode(sha2::Sha256::digest(text.as_bytes()));
    Ok(ResolvedRecipe {
        path: path.to_path_buf(),
        recipe,
        profile,
        profile_path,
        sources,
        modules,
        sha256,
    })
}

#[cfg(test)]
mod tests;
