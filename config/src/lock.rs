//! Package locks (`images/*.lock.json`): the exact Debian packages an image is built from, pinned
//! by version and sha256, where each one is downloaded from (mirror, suite, component, pool
//! path), the Debian snapshot archive timestamp that still serves them after the mirror moved on,
//! and the SOURCE_DATE_EPOCH of the image. A lock holds everything a download needs: fetching
//! never asks the host's apt.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Checker, ConfigError, read};

/// Lock schema version. Schema 1 had no download sources; it is refused with a hint to re-lock.
pub const LOCK_SCHEMA: u32 = 2;

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
    /// The UEFI boot loader (`boot.package`): its EFI binary is an artifact of its own, nothing
    /// of it goes into the initramfs.
    Bootloader,
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
    /// Base URL of the archive it was resolved from, no trailing slash
    /// (`http://deb.debian.org/debian`, `http://deb.debian.org/debian-security`).
    pub mirror: String,
    /// Name of that archive on the Debian snapshot service (`debian`, `debian-security`):
    /// `<snapshot>/archive/<archive>/<timestamp>/<filename>`.
    pub archive: String,
    /// Suite (`bookworm`, `bookworm-updates`, `bookworm-security`).
    pub suite: String,
    /// Component (`main`).
    pub component: String,
    /// Path in the archive's pool (`pool/main/b/bird2/bird2_....deb`): the download URL is
    /// `<mirror>/<filename>`.
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

    /// Whether two entries pin the same bytes (name, version, architecture, sha256), wherever
    /// they are downloaded from.
    pub fn same_pin(&self, other: &LockedPackage) -> bool {
        self.name == other.name
            && self.version == other.version
            && self.architecture == other.architecture
            && self.sha256 == other.sha256
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
    /// When the lock was resolved, `YYYYMMDDThhmmssZ` (UTC): the Debian snapshot archive at this
    /// time holds every locked package even after the mirror dropped it.
    pub snapshot: String,
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

    /// The boot loader package, if the recipe has one.
    pub fn bootloader(&self) -> Option<&LockedPackage> {
        self.packages.iter().find(|p| p.role == Role::Bootloader)
    }

    /// Finds a package by name.
    pub fn get(&self, name: &str) -> Option<&LockedPackage> {
        self.packages.iter().find(|p| p.name == name)
    }
}

/// What any lock schema says about the packages it pins: read from a previous lock when
/// re-locking, so that SOURCE_DATE_EPOCH (and the snapshot time) survive a re-lock that pins the
/// same bytes, even across a schema change.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Pins {
    /// Schema of the file.
    pub schema: u32,
    /// Its SOURCE_DATE_EPOCH.
    pub source_date_epoch: i64,
    /// Its snapshot timestamp (schema 2 and later).
    #[serde(default)]
    pub snapshot: Option<String>,
    /// Its packages, identity only.
    pub packages: Vec<Pin>,
}

/// A pinned package's identity.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Pin {
    /// Package name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Architecture.
    pub architecture: String,
    /// sha256 of the .deb.
    pub sha256: String,
}

impl Pins {
    /// Whether `lock` pins exactly these packages (same names, versions, architectures and
    /// sha256, in the same order).
    pub fn same_packages(&self, lock: &Lock) -> bool {
        self.packages.len() == lock.packages.len()
            && self.packages.iter().zip(&lock.packages).all(|(a, b)| {
                a.name == b.name
                    && a.version == b.version
                    && a.architecture == b.architecture
                    && a.sha256 == b.sha256
            })
    }
}

/// Reads the pins of a lock of any schema (no validation beyond the JSON shape).
pub fn read_pins(path: &Path) -> Result<Pins, ConfigError> {
    let text = read(path, crate::fsutil::limits::LOCK, "lock file")?;
    serde_json::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Whether `s` is a mirror base URL a lock or recipe may name: `http://` or `https://`, a host,
/// no trailing slash, no query, fragment, credentials, spaces or control characters.
pub fn is_mirror_url(s: &str) -> bool {
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"));
    let Some(rest) = rest else {
        return false;
    };
    let host = rest.split('/').next().unwrap_or("");
    !host.is_empty()
        && !host.contains('@')
        && !s.ends_with('/')
        && s.chars()
            .all(|c| c.is_ascii_graphic() && !"?#\\\"<>`{}|^".contains(c))
        && !s.split('/').any(|seg| seg == "..")
}

/// Whether `s` is a snapshot timestamp `YYYYMMDDThhmmssZ` naming a real UTC time after 2000.
pub fn is_snapshot_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return false;
    }
    let digits = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = s.get(r)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    let (Some(y), Some(mo), Some(d), Some(h), Some(mi), Some(sec)) = (
        digits(0..4),
        digits(4..6),
        digits(6..8),
        digits(9..11),
        digits(11..13),
        digits(13..15),
    ) else {
        return false;
    };
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match mo {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => 0,
    };
    y >= 2000 && (1..=days).contains(&d) && h < 24 && mi < 60 && sec < 60
}

/// Whether `s` is a suite or component name (`bookworm-security`, `main`; old layouts have
/// `buster/updates`).
fn is_dist_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(['/', '.'])
        && !s.ends_with('/')
        && !s.contains("..")
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.+/".contains(c))
}

/// Whether `s` names a snapshot archive (`debian`, `debian-security`).
fn is_archive_name(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
}

#[derive(Deserialize)]
struct SchemaOnly {
    schema: u32,
}

/// Loads and validates a lock file.
pub fn load(path: &Path) -> Result<Lock, ConfigError> {
    let text = read(path, crate::fsutil::limits::LOCK, "lock file")?;
    let parse_error = |e: serde_json::Error| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let c = Checker { path };
    // The schema first: an old lock lacks fields the full parse would complain about.
    let schema = serde_json::from_str::<SchemaOnly>(&text)
        .map_err(parse_error)?
        .schema;
    c.ensure(
        schema == LOCK_SCHEMA,
        "schema",
        schema,
        if schema < LOCK_SCHEMA {
            format!(
                "lock schema {schema} does not record where each package is downloaded from \
                 (this build reads schema {LOCK_SCHEMA}); re-lock with `imrs-build lock RECIPE \
                 --lock {}` (SOURCE_DATE_EPOCH is kept when the packages stay the same)",
                path.display()
            )
        } else {
            format!("this build understands lock schema {LOCK_SCHEMA}; use a newer imrs-build")
        },
    )?;
    let lock: Lock = serde_json::from_str(&text).map_err(parse_error)?;
    c.ensure(
        lock.source_date_epoch > 0,
        "source_date_epoch",
        lock.source_date_epoch,
        "seconds since 1970, positive",
    )?;
    c.ensure(
        is_snapshot_timestamp(&lock.snapshot),
        "snapshot",
        &lock.snapshot,
        "a UTC time YYYYMMDDThhmmssZ (e.g. 20260731T000000Z)",
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
            p.filename.starts_with("pool/")
                && !p.filename.split('/').any(|s| s == ".." || s.is_empty())
                && p.filename.chars().all(|ch| ch.is_ascii_graphic()),
            format!("packages[{i}].filename"),
            &p.filename,
            "a pool/ path (printable ASCII, no empty or `..` segments)",
        )?;
        c.ensure(
            is_mirror_url(&p.mirror),
            format!("packages[{i}].mirror"),
            &p.mirror,
            "an http:// or https:// base URL without a trailing slash, query or credentials",
        )?;
        c.ensure(
            is_archive_name(&p.archive),
            format!("packages[{i}].archive"),
            &p.archive,
            "a snapshot archive name such as debian or debian-security",
        )?;
        c.ensure(
            is_dist_name(&p.suite),
            format!("packages[{i}].suite"),
            &p.suite,
            "a suite name such as bookworm or bookworm-security",
        )?;
        c.ensure(
            is_dist_name(&p.component),
            format!("packages[{i}].component"),
            &p.component,
            "a component name such as main",
        )?;
    }
    c.ensure(
        lock.packages
            .iter()
            .filter(|p| p.role == Role::Bootloader)
            .count()
            <= 1,
        "packages",
        "(bootloader)",
        "at most one package with role \"bootloader\"",
    )?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(name: &str, role: Role) -> LockedPackage {
        LockedPackage {
            name: name.into(),
            version: "1.0-1".into(),
            architecture: "amd64".into(),
            size: 10,
            sha256: "ab".repeat(32),
            mirror: "http://deb.debian.org/debian".into(),
            archive: "debian".into(),
            suite: "bookworm".into(),
            component: "main".into(),
            filename: format!("pool/main/x/{name}/{name}_1.0-1_amd64.deb"),
            role,
        }
    }

    fn good() -> Lock {
        Lock {
            schema: LOCK_SCHEMA,
            source_date_epoch: 1_785_456_000,
            snapshot: "20260731T000000Z".into(),
            architecture: "amd64".into(),
            kernel_release: "6.1.0-1-amd64".into(),
            packages: vec![pkg("a", Role::Userland), pkg("linux-image-x", Role::Kernel)],
        }
    }

    fn write(dir: &Path, json: &serde_json::Value) -> std::path::PathBuf {
        let p = dir.join("x.lock.json");
        std::fs::write(&p, serde_json::to_vec_pretty(json).unwrap()).unwrap();
        p
    }

    #[test]
    fn shipped_locks_load() {
        let images = Path::new(env!("CARGO_MANIFEST_DIR")).join("../images");
        for name in ["qemu", "qemu-knot", "calypso", "pandora"] {
            let l = load(&images.join(format!("{name}.lock.json"))).unwrap();
            assert!(l.packages.iter().all(|p| p.mirror.starts_with("http")));
            assert_eq!(
                l.bootloader().map(|p| p.name.as_str()),
                Some("systemd-boot-efi"),
                "{name}"
            );
        }
    }

    #[test]
    fn a_good_lock_round_trips() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), &serde_json::to_value(good()).unwrap());
        assert_eq!(load(&p).unwrap(), good());
        let pins = read_pins(&p).unwrap();
        assert!(pins.same_packages(&good()));
        let mut other = good();
        other.packages[0].sha256 = "cd".repeat(32);
        assert!(!pins.same_packages(&other));
        // Moving a package to another mirror keeps its pin.
        let mut moved = good();
        moved.packages[0].mirror = "http://mirror.example.org/debian".into();
        assert!(pins.same_packages(&moved));
        assert!(moved.packages[0].same_pin(&good().packages[0]));
    }

    #[test]
    fn an_old_schema_says_to_relock_and_keeps_its_pins() {
        let d = tempfile::tempdir().unwrap();
        let old = serde_json::json!({
            "schema": 1, "source_date_epoch": 1_785_456_000, "architecture": "amd64",
            "kernel_release": "6.1.0-1-amd64",
            "packages": [{"name": "a", "version": "1.0-1", "architecture": "amd64", "size": 10,
                          "sha256": "ab".repeat(32), "filename": "pool/main/a/a/a.deb",
                          "role": "userland"}]
        });
        let p = write(d.path(), &old);
        let e = load(&p).unwrap_err().to_string();
        assert!(e.contains("schema = 1") && e.contains("re-lock"), "{e}");
        assert!(e.contains("imrs-build lock"), "{e}");
        let pins = read_pins(&p).unwrap();
        assert_eq!(pins.schema, 1);
        assert_eq!(pins.source_date_epoch, 1_785_456_000);
        assert_eq!(pins.snapshot, None);
        assert_eq!(pins.packages[0].name, "a");
        let newer = serde_json::json!({"schema": 3});
        let e = load(&write(d.path(), &newer)).unwrap_err().to_string();
        assert!(e.contains("newer imrs-build"), "{e}");
    }

    #[test]
    fn bad_fields_are_named_with_their_value_escaped() {
        let d = tempfile::tempdir().unwrap();
        type Edit = dyn Fn(&mut serde_json::Value);
        let cases: &[(&Edit, &str)] = &[
            (
                &|v| v["snapshot"] = "2026-07-31".into(),
                "snapshot = 2026-07-31",
            ),
            (&|v| v["snapshot"] = "20260231T000000Z".into(), "snapshot"),
            (&|v| v["snapshot"] = "20260731T240000Z".into(), "snapshot"),
            (
                &|v| v["packages"][0]["mirror"] = "ftp://deb.debian.org/debian".into(),
                "packages[0].mirror = ftp://deb.debian.org/debian",
            ),
            (
                &|v| v["packages"][0]["mirror"] = "http://deb.debian.org/debian/".into(),
                "packages[0].mirror",
            ),
            (
                &|v| v["packages"][0]["mirror"] = "http://u:p@deb.debian.org/debian".into(),
                "packages[0].mirror",
            ),
            (
                &|v| v["packages"][0]["mirror"] = "http://x/debian\n\u{1b}[31m".into(),
                "packages[0].mirror = http://x/debian\\n\\u{1b}[31m",
            ),
            (
                &|v| v["packages"][1]["archive"] = "Debian Security".into(),
                "packages[1].archive",
            ),
            (
                &|v| v["packages"][0]["suite"] = "".into(),
                "packages[0].suite",
            ),
            (
                &|v| v["packages"][0]["component"] = "../main".into(),
                "packages[0].component",
            ),
            (
                &|v| v["packages"][0]["filename"] = "pool/../../etc/passwd".into(),
                "packages[0].filename",
            ),
            (
                &|v| v["packages"][0]["filename"] = "pool/main/a b.deb".into(),
                "packages[0].filename",
            ),
            (
                &|v| v["packages"][0]["sha256"] = "zz".into(),
                "packages[0].sha256",
            ),
            (
                &|v| {
                    v["packages"][0].as_object_mut().unwrap().remove("suite");
                },
                "missing field `suite`",
            ),
        ];
        for (edit, want) in cases {
            let mut v = serde_json::to_value(good()).unwrap();
            edit(&mut v);
            let p = write(d.path(), &v);
            let e = load(&p).unwrap_err().to_string();
            assert!(e.contains(want), "want {want:?} in: {e}");
            assert!(e.contains("x.lock.json"), "{e}");
            assert!(!e.contains('\n') && !e.contains('\u{1b}'), "{e}");
        }
    }

    #[test]
    fn timestamps_and_urls() {
        for ok in ["20260731T000000Z", "20240229T235959Z", "20000101T000000Z"] {
            assert!(is_snapshot_timestamp(ok), "{ok}");
        }
        for bad in [
            "20230229T000000Z",
            "20261301T000000Z",
            "20260731T000060Z",
            "2026073T0000000Z",
            "20260731t000000Z",
            "19991231T000000Z",
            "+0260731T000000Z",
        ] {
            assert!(!is_snapshot_timestamp(bad), "{bad}");
        }
        for ok in [
            "http://deb.debian.org/debian",
            "https://deb.debian.org/debian-security",
            "http://127.0.0.1:8080/mirror/debian",
        ] {
            assert!(is_mirror_url(ok), "{ok}");
        }
        for bad in [
            "deb.debian.org/debian",
            "http://",
            "http:///debian",
            "http://x/debian?y",
            "http://x/debian#y",
            "http://x/a b",
            "http://x/../debian",
            "file:///srv/debian",
        ] {
            assert!(!is_mirror_url(bad), "{bad}");
        }
    }
}
