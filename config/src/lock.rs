//! Package locks (`images/*.lock.json`): the exact Debian packages an image is built from, pinned
//! by version and sha256, and the SOURCE_DATE_EPOCH of the image.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Checker, ConfigError, read};

/// Lock schema version.
pub const LOCK_SCHEMA: u32 = 1;

/// Why a package is in the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The versioned kernel image package.
    Kernel,
    /// Named by the recipe.
    Userland,
    /// Pulled in through `Depends`/`Pre-Depends`.
    Dependency,
}

/// One pinned package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedPackage {
    /// Package name.
    pub name: String,
    /// Exact version.
    pub version: String,
    /// Debian architecture (`amd64` or `all`).
    pub architecture: String,
    /// Size of the .deb in bytes.
    pub size: u64,
    /// sha256 of the .deb, lowercase hex.
    pub sha256: String,
    /// Path in the archive's pool (`pool/main/b/bird2/bird2_....deb`), for snapshot fetches.
    pub filename: String,
    /// Why it is here.
    pub role: Role,
}

impl LockedPackage {
    /// The file name the cache stores it under.
    pub fn deb_name(&self) -> String {
        format!(
            "{}_{}_{}.deb",
            self.name,
            self.version.replace(':', "%3a"),
            self.architecture
        )
    }
}

/// A lock file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    /// [`LOCK_SCHEMA`].
    pub schema: u32,
    /// Image build epoch (seconds since 1970): every timestamp in the image.
    pub source_date_epoch: i64,
    /// Debian architecture.
    pub architecture: String,
    /// Kernel release (`6.1.0-NN-amd64`).
    pub kernel_release: String,
    /// Pinned packages sorted by name.
    pub packages: Vec<LockedPackage>,
}

impl Lock {
    /// The kernel package.
    pub fn kernel(&self) -> Option<&LockedPackage> {
        self.packages.iter().find(|p| p.role == Role::Kernel)
    }

    /// Finds a package by name.
    pub fn get(&self, name: &str) -> Option<&LockedPackage> {
        self.packages.iter().find(|p| p.name == name)
    }
}

/// Loads and validates a lock file.
pub fn load(path: &Path) -> Result<Lock, ConfigError> {
    let text = read(path, crate::fsutil::limits::LOCK, "lock file")?;
    let lock: Lock = serde_json::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let c = Checker { path };
    c.ensure(
        lock.schema == LOCK_SCHEMA,
        "schema",
        lock.schema,
        format!("this build understands lock schema {LOCK_SCHEMA}"),
    )?;
    c.ensure(
        lock.source_date_epoch > 0,
        "source_date_epoch",
        lock.source_date_epoch,
        "seconds since 1970, positive",
    )?;
    c.ensure(
        lock.packages
            .iter()
            .filter(|p| p.role == Role::Kernel)
            .count()
            == 1,
        "packages",
        "(kernel)",
        "exactly one package with role \"kernel\"",
    )?;
    for (i, p) in lock.packages.iter().enumerate() {
        c.ensure(
            p.sha256.len() == 64 && p.sha256.chars().all(|ch| ch.is_ascii_hexdigit()),
            format!("packages[{i}].sha256"),
            &p.sha256,
            "64 hex digits",
        )?;
        c.ensure(
            !p.version.is_empty() && !p.name.is_empty(),
            format!("packages[{i}]"),
            &p.name,
            "name and version required",
        )?;
        c.ensure(
            p.filename.starts_with("pool/") && !p.filename.contains(".."),
            format!("packages[{i}].filename"),
            &p.filename,
            "a pool/ path",
        )?;
    }
    let mut names: Vec<&str> = lock.packages.iter().map(|p| p.name.as_str()).collect();
    names.dedup();
    c.ensure(
        names.len() == lock.packages.len()
            && lock.packages.windows(2).all(|w| w[0].name < w[1].name),
        "packages",
        "(order)",
        "sorted by name, each once",
    )?;
    Ok(lock)
}
