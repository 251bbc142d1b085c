//! Image recipes (`images/*.toml`): which appliance, which kernel and modules, which daemons, which
//! files. A recipe plus its lock file fully determine an image.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Checker, ConfigError, parse_toml, read};
use crate::profile::Profile;

/// The recipe schema version this build understands.
pub const RECIPE_VERSION: u32 = 1;

/// DNS implementation served by the image (L-root runs both for diversity; facts.md).
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
    /// Package sources.
    #[serde(default)]
    pub apt: AptSource,
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
    /// Source, relative to the recipe's folder.
    pub source: PathBuf,
    /// Destination inside the image (absolute).
    pub dest: String,
    /// Expected sha256 of the source (hex); the build fails on a mismatch.
    pub sha256: String,
    /// Permission bits.
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
    /// Kernel modules: the profile's then the recipe's, deduplicated, in that order.
    pub modules: Vec<String>,
    /// sha256 of the recipe file's bytes.
    pub sha256: String,
}

impl ResolvedRecipe {
    /// The recipe's folder (sources of [`FileSpec`] are relative to it).
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// The default lock file path: `<recipe without .toml>.lock.json`.
    pub fn default_lock_path(&self) -> PathBuf {
        self.path.with_extension("lock.json")
    }
}

/// Loads and validates a recipe and its profile (`<recipe dir>/profiles/<profile>.toml`).
pub fn load(path: &Path) -> Result<ResolvedRecipe, ConfigError> {
    let text = read(path)?;
    let recipe: Recipe = parse_toml(path, &text)?;
    validate(path, &recipe)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let profile_path = dir
        .join("profiles")
        .join(format!("{}.toml", recipe.profile));
    if !profile_path.exists() {
        return Err(ConfigError::invalid(
            path,
            "profile",
            &recipe.profile,
            format!(
                "no such hardware profile ({} does not exist)",
                profile_path.display()
            ),
        ));
    }
    let profile = crate::profile::load(&profile_path)?;
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
        modules,
        sha256,
    })
}

fn is_package_name(s: &str) -> bool {
    s.len() >= 2
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
}

fn validate(path: &Path, r: &Recipe) -> Result<(), ConfigError> {
    let c = Checker { path };
    c.ensure(
        r.version == RECIPE_VERSION,
        "version",
        r.version,
        format!("this imrs-build understands recipe version {RECIPE_VERSION}"),
    )?;
    let name_ok = !r.name.is_empty()
        && r.name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch));
    c.ensure(
        name_ok,
        "name",
        &r.name,
        "letters, digits, '-', '_', '.' only",
    )?;
    c.ensure(
        !r.image_version.is_empty() && !r.image_version.contains(char::is_whitespace),
        "image_version",
        &r.image_version,
        "must be non-empty without spaces",
    )?;
    c.ensure(
        r.architecture == "amd64",
        "architecture",
        &r.architecture,
        "only amd64 appliances exist",
    )?;
    c.ensure(
        is_package_name(&r.kernel.package) && r.kernel.package.starts_with("linux-image-"),
        "kernel.package",
        &r.kernel.package,
        "must be a Debian linux-image-* package",
    )?;
    for (i, m) in r.kernel.modules.iter().enumerate() {
        c.ensure(
            !m.is_empty()
                && m.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-_".contains(ch)),
            format!("kernel.modules[{i}]"),
            m,
            "a module name (letters, digits, '-', '_')",
        )?;
    }
    c.ensure(
        !r.kernel.cmdline.contains('\n'),
        "kernel.cmdline",
        &r.kernel.cmdline,
        "one line",
    )?;
    for (i, p) in r.userland.packages.iter().enumerate() {
        c.ensure(
            is_package_name(p),
            format!("userland.packages[{i}]"),
            p,
            "a Debian package name",
        )?;
    }
    let dns_pkg = r.dns.package();
    c.ensure(
        r.userland.packages.iter().any(|p| p == dns_pkg),
        "userland.packages",
        format!("{:?}", r.userland.packages),
        format!("dns = \"{}\" needs the package {dns_pkg}", r.dns),
    )?;
    let other = match r.dns {
        crate::recipe::DnsImpl::Nsd => "knot",
        crate::recipe::DnsImpl::Knot => "nsd",
    };
    c.ensure(
        !r.userland.packages.iter().any(|p| p == other),
        "userland.packages",
        format!("{:?}", r.userland.packages),
        format!(
            "dns = \"{}\": the image carries one DNS daemon, not {other}",
            r.dns
        ),
    )?;
    c.ensure(
        r.userland.packages.iter().any(|p| p == "bird2"),
        "userland.packages",
        format!("{:?}", r.userland.packages),
        "BGP needs bird2",
    )?;
    for (i, b) in r.userland.binaries.iter().enumerate() {
        c.ensure(
            b.starts_with('/') && !b.contains(".."),
            format!("userland.binaries[{i}]"),
            b,
            "an absolute path inside a package",
        )?;
    }
    for (i, f) in r.files.iter().enumerate() {
        c.ensure(
            f.dest.starts_with('/') && !f.dest.contains("..") && f.dest.len() > 1,
            format!("files[{i}].dest"),
            &f.dest,
            "an absolute path inside the image",
        )?;
        c.ensure(
            f.sha256.len() == 64 && f.sha256.chars().all(|ch| ch.is_ascii_hexdigit()),
            format!("files[{i}].sha256"),
            &f.sha256,
            "64 hex digits",
        )?;
        c.ensure(
            f.mode <= 0o7777,
            format!("files[{i}].mode"),
            format!("{:o}", f.mode),
            "permission bits only",
        )?;
    }
    for (i, m) in r.apt.mirrors.iter().enumerate() {
        c.ensure(
            crate::lock::is_mirror_url(m),
            format!("apt.mirrors[{i}]"),
            m.escape_debug(),
            "an http:// or https:// archive base URL without a trailing slash, query or credentials",
        )?;
    }
    for (i, s) in r.apt.suites.iter().enumerate() {
        c.ensure(
            !s.is_empty()
                && s.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-_.+/".contains(ch)),
            format!("apt.suites[{i}]"),
            s.escape_debug(),
            "a suite name such as bookworm or bookworm-security",
        )?;
    }
    if let Some(s) = &r.apt.snapshot {
        c.ensure(
            s.starts_with("http://") || s.starts_with("https://") || s.starts_with("file://"),
            "apt.snapshot",
            s,
            "an http(s):// or file:// URL",
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
