//! `imrs-build inspect`: what an image is made of and what its size is made of. Every regular
//! file of the initramfs is attributed to the package it came from: `/init` to imrs-init, the
//! kernel's modules to the kernel package, a userland file to the Debian package whose `.deb`
//! (found in the package cache by the manifest's name, version and sha256) holds that path,
//! and the rest to the builder (accounts, keys, anchors, image metadata). Per package: files,
//! bytes, the package's files compressed alone with the image's zstd level, and that as a share
//! of the archive. Then the largest files. `--diff OTHER` compares two images file by file
//! (added, removed, grown or shrunk, changed) and package by package.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use imrs_config::image::Manifest;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::cache::{Cache, sha256_file};
use crate::cpio::Entry;
use crate::deb::DebArchive;
use crate::image_dir::INITRAMFS;
use crate::verify;

/// The owner of the static init.
pub const INIT_OWNER: &str = "imrs-init";
/// The owner of what the builder writes itself.
pub const BUILDER_OWNER: &str = "imrs-build (generated)";
/// The owner of a file no cached package explains.
pub const UNKNOWN_OWNER: &str = "(package not in the cache)";

/// One regular file of the initramfs.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct File {
    /// Its path (`/usr/sbin/nsd`).
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// The package it came from (or one of the owners above).
    pub package: String,
    /// sha256 of its content.
    #[serde(skip)]
    pub sha256: [u8; 32],
}

/// What one package contributes.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PackageSize {
    /// Package (or owner) name.
    pub package: String,
    /// Regular files.
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Their bytes compressed alone (zstd at the image's level).
    pub zstd_bytes: u64,
    /// Share of the compressed archive: this package's `zstd_bytes` over the sum of all.
    pub share: f64,
}

/// An image's size, explained.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    /// Image name and version.
    pub image: String,
    /// `initramfs.cpio.zst` bytes.
    pub archive_bytes: u64,
    /// Regular files in it.
    pub files: usize,
    /// Their bytes, uncompressed.
    pub bytes: u64,
    /// `vmlinuz` bytes.
    pub kernel_bytes: u64,
    /// The image's packages whose `.deb` is not in the cache (their files are not attributed).
    pub packages_missing_from_cache: Vec<String>,
    /// Per package, the largest share first.
    pub by_package: Vec<PackageSize>,
    /// Every regular file, the largest first.
    #[serde(skip)]
    pub all: Vec<File>,
}

/// Reads the image in `dir` and explains its size, attributing userland files through the
/// packages in `cache` (when given).
pub fn inspect(dir: &Path, cache: Option<&Cache>) -> Result<Inspection> {
    let m = verify::read_manifest(dir)?;
    let entries = verify::read_initramfs(&dir.join(INITRAMFS))?;
    explain(dir, &m, &entries, cache)
}

/// Explains the size of the image in `dir` whose manifest `m` and initramfs `entries` the
/// caller has read already.
pub fn explain(
    dir: &Path,
    m: &Manifest,
    entries: &[Entry],
    cache: Option<&Cache>,
) -> Result<Inspection> {
    let size_of = |name: &str| std::fs::metadata(dir.join(name)).map_or(0, |md| md.len());
    let kernel_pkg = m
        .packages
        .iter()
        .find(|p| p.name.starts_with("linux-image-"))
        .map_or_else(
            || format!("linux-image-{}", m.kernel_release),
            |p| p.name.clone(),
        );
    // Userland paths of every cached package (the kernel's modules go by path).
    let mut owners: BTreeMap<String, String> = BTreeMap::new();
    let mut missing = Vec::new();
    for p in m.packages.iter().filter(|p| p.name != kernel_pkg) {
        let Some(deb) = cache.and_then(|c| find_deb(c, &p.name, &p.version, &p.sha256)) else {
            missing.push(p.name.clone());
            continue;
        };
        let mut tree = crate::assemble::skeleton()?;
        DebArchive::open(&deb)
            .and_then(|d| d.extract_into(&mut tree, |_| true).map(|_| ()))
            .with_context(|| format!("reading {} {}", p.name, p.version))?;
        for (path, node) in tree.iter() {
            if node.data().is_some() {
                owners.entry(path.clone()).or_insert_with(|| p.name.clone());
            }
        }
    }
    let mut all: Vec<File> = Vec::new();
    let mut data_of: BTreeMap<String, Vec<&[u8]>> = BTreeMap::new();
    for e in entries.iter().filter(|e| e.mode & 0o170000 == 0o100000) {
        let package = owner(&e.name, &owners, &kernel_pkg, !missing.is_empty());
        data_of.entry(package.clone()).or_default().push(&e.data);
        all.push(File {
            path: format!("/{}", e.name),
            size: e.data.len() as u64,
            package,
            sha256: Sha256::digest(&e.data).into(),
        });
    }
    all.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.path.cmp(&b.path)));
    let mut by_package: Vec<PackageSize> = Vec::new();
    for (package, parts) in &data_of {
        let joined = parts.concat();
        let z = zstd::bulk::compress(&joined, crate::assemble::ZSTD_LEVEL)
            .with_context(|| format!("compressing {package}'s files"))?;
        by_package.push(PackageSize {
            package: package.clone(),
            files: parts.len(),
            bytes: joined.len() as u64,
            zstd_bytes: z.len() as u64,
            share: 0.0,
        });
    }
    let total_z: u64 = by_package.iter().map(|p| p.zstd_bytes).sum();
    for p in &mut by_package {
        p.share = if total_z == 0 {
            0.0
        } else {
            p.zstd_bytes as f64 / total_z as f64
        };
    }
    by_package.sort_by(|a, b| {
        b.zstd_bytes
            .cmp(&a.zstd_bytes)
            .then_with(|| a.package.cmp(&b.package))
    });
    Ok(Inspection {
        image: format!("{} {}", m.name, m.version),
        archive_bytes: size_of(INITRAMFS),
        files: all.len(),
        bytes: all.iter().map(|f| f.size).sum(),
        kernel_bytes: size_of(crate::image_dir::KERNEL),
        packages_missing_from_cache: missing,
        by_package,
        all,
    })
}

/// Whose file `name` (no leading `/`) is.
fn owner(
    name: &str,
    owners: &BTreeMap<String, String>,
    kernel_pkg: &str,
    some_missing: bool,
) -> String {
    if name == "init" {
        INIT_OWNER.into()
    } else if name.starts_with("usr/lib/modules/") || name.starts_with("lib/modules/") {
        kernel_pkg.into()
    } else if let Some(p) = owners.get(name) {
        p.clone()
    } else if some_missing && name.starts_with("usr/") {
        UNKNOWN_OWNER.into()
    } else {
        BUILDER_OWNER.into()
    }
}

/// The cached `.deb` of `name` `version` whose sha256 is `sha256`.
fn find_deb(cache: &Cache, name: &str, version: &str, sha256: &str) -> Option<PathBuf> {
    // As the cache names them (`LockedPackage::deb_name`: the epoch's colon as `%3a`).
    let prefix = format!("{name}_{}_", version.replace(':', "%3a"));
    let debs = cache.dir().join("debs");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&debs)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
        .collect();
    found.sort();
    found
        .into_iter()
        .find(|p| sha256_file(p).is_ok_and(|h| h == sha256))
}

/// One file that differs between two images.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Change {
    /// Path.
    pub path: String,
    /// Package (in the newer image, or the older one for a removed file).
    pub package: String,
    /// Bytes in the first image (absent: added).
    pub from: Option<u64>,
    /// Bytes in the second image (absent: removed).
    pub to: Option<u64>,
}

/// What changed from one image to another.
#[derive(Debug, Clone, Serialize)]
pub struct Diff {
    /// The two images.
    pub from: String,
    /// The second.
    pub to: String,
    /// Archive bytes: second minus first.
    pub archive_delta: i64,
    /// Uncompressed bytes: second minus first.
    pub bytes_delta: i64,
    /// Files only in the second.
    pub added: Vec<Change>,
    /// Files only in the first.
    pub removed: Vec<Change>,
    /// Files in both whose size differs.
    pub resized: Vec<Change>,
    /// Files in both with the same size and other content.
    pub changed: Vec<Change>,
    /// Per package: bytes in each (0 when absent), where they differ.
    pub packages: Vec<(String, u64, u64)>,
}

/// Compares `a` with `b` file by file and package by package.
pub fn diff(a: &Inspection, b: &Inspection) -> Diff {
    let index = |i: &Inspection| -> BTreeMap<String, File> {
        i.all.iter().map(|f| (f.path.clone(), f.clone())).collect()
    };
    let (ia, ib) = (index(a), index(b));
    let mut d = Diff {
        from: a.image.clone(),
        to: b.image.clone(),
        archive_delta: b.archive_bytes as i64 - a.archive_bytes as i64,
        bytes_delta: b.bytes as i64 - a.bytes as i64,
        added: Vec::new(),
        removed: Vec::new(),
        resized: Vec::new(),
        changed: Vec::new(),
        packages: Vec::new(),
    };
    for (path, f) in &ib {
        match ia.get(path) {
            None => d.added.push(Change {
                path: path.clone(),
                package: f.package.clone(),
                from: None,
                to: Some(f.size),
            }),
            Some(old) if old.size != f.size => d.resized.push(Change {
                path: path.clone(),
                package: f.package.clone(),
                from: Some(old.size),
                to: Some(f.size),
            }),
            Some(old) if old.sha256 != f.sha256 => d.changed.push(Change {
                path: path.clone(),
                package: f.package.clone(),
                from: Some(old.size),
                to: Some(f.size),
            }),
            Some(_) => {}
        }
    }
    for (path, f) in &ia {
        if !ib.contains_key(path) {
            d.removed.push(Change {
                path: path.clone(),
                package: f.package.clone(),
                from: Some(f.size),
                to: None,
            });
        }
    }
    let sizes = |i: &Inspection| -> BTreeMap<String, u64> {
        i.by_package
            .iter()
            .map(|p| (p.package.clone(), p.bytes))
            .collect()
    };
    let (pa, pb) = (sizes(a), sizes(b));
    let names: std::collections::BTreeSet<&String> = pa.keys().chain(pb.keys()).collect();
    for n in names {
        let (x, y) = (
            pa.get(n).copied().unwrap_or(0),
            pb.get(n).copied().unwrap_or(0),
        );
        if x != y {
            d.packages.push((n.clone(), x, y));
        }
    }
    // The biggest movements first.
    let delta = |c: &Change| c.to.unwrap_or(0).abs_diff(c.from.unwrap_or(0));
    for list in [&mut d.added, &mut d.removed, &mut d.resized] {
        list.sort_by(|x, y| delta(y).cmp(&delta(x)).then_with(|| x.path.cmp(&y.path)));
    }
    d
}

/// Bytes for people: `8.15 MB`, `512 kB`, `97 B` (decimal units).
pub fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e6 {
        format!("{:.2} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.0} kB", b / 1e3)
    } else {
        format!("{bytes} B")
    }
}

/// A signed byte difference for people.
pub fn human_delta(delta: i64) -> String {
    let sign = if delta < 0 { "-" } else { "+" };
    format!("{sign}{}", human(delta.unsigned_abs()))
}

/// The size report as text: totals, per package, the `top` largest files.
pub fn render(i: &Inspection, top: usize) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "size: initramfs {} compressed ({} files, {} uncompressed), kernel {}",
        human(i.archive_bytes),
        i.files,
        human(i.bytes),
        human(i.kernel_bytes)
    );
    if !i.packages_missing_from_cache.is_empty() {
        let _ = writeln!(
            o,
            "  not in the package cache (their files are not attributed; give --cache): {}",
            i.packages_missing_from_cache.join(", ")
        );
    }
    let _ = writeln!(
        o,
        "by package (compressed alone with the image's zstd level; share of the archive):"
    );
    let w = i
        .by_package
        .iter()
        .map(|p| p.package.len())
        .max()
        .unwrap_or(0)
        .max(7);
    let _ = writeln!(
        o,
        "  {:w$} {:>6} {:>10} {:>10} {:>7}",
        "package", "files", "bytes", "zstd", "share"
    );
    for p in &i.by_package {
        let _ = writeln!(
            o,
            "  {:w$} {:>6} {:>10} {:>10} {:>6.1}%",
            p.package,
            p.files,
            human(p.bytes),
            human(p.zstd_bytes),
            p.share * 100.0
        );
    }
    let _ = writeln!(o, "largest files:");
    for f in i.all.iter().take(top) {
        let _ = writeln!(o, "  {:>10}  {}  ({})", human(f.size), f.path, f.package);
    }
    o
}

/// The comparison as text.
pub fn render_diff(d: &Diff, top: usize) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{} -> {}: initramfs {} compressed, {} uncompressed; {} added, {} removed, {} resized, \
         {} changed",
        d.from,
        d.to,
        human_delta(d.archive_delta),
        human_delta(d.bytes_delta),
        d.added.len(),
        d.removed.len(),
        d.resized.len(),
        d.changed.len()
    );
    if !d.packages.is_empty() {
        let _ = writeln!(o, "packages:");
        for (n, x, y) in &d.packages {
            let _ = writeln!(
                o,
                "  {n:34} {:>10} -> {:>10} ({})",
                human(*x),
                human(*y),
                human_delta(*y as i64 - *x as i64)
            );
        }
    }
    let mut section = |title: &str, list: &[Change]| {
        if list.is_empty() {
            return;
        }
        let _ = writeln!(o, "{title}:");
        for c in list.iter().take(top) {
            let size = match (c.from, c.to) {
                (None, Some(t)) => format!("+{}", human(t)),
                (Some(f), None) => format!("-{}", human(f)),
                (Some(f), Some(t)) if f == t => human(t),
                (Some(f), Some(t)) => format!("{} -> {}", human(f), human(t)),
                (None, None) => String::new(),
            };
            let _ = writeln!(o, "  {size:>22}  {}  ({})", c.path, c.package);
        }
        if list.len() > top {
            let _ = writeln!(o, "  ... and {} more", list.len() - top);
        }
    };
    section("added", &d.added);
    section("removed", &d.removed);
    section("resized", &d.resized);
    section("changed (same size)", &d.changed);
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, size: u64, package: &str, fill: u8) -> File {
        File {
            path: path.into(),
            size,
            package: package.into(),
            sha256: [fill; 32],
        }
    }

    fn image(name: &str, files: Vec<File>) -> Inspection {
        let mut by: BTreeMap<String, (usize, u64)> = BTreeMap::new();
        for f in &files {
            let e = by.entry(f.package.clone()).or_default();
            e.0 += 1;
            e.1 += f.size;
        }
        Inspection {
            image: name.into(),
            archive_bytes: files.iter().map(|f| f.size).sum::<u64>() / 2,
            files: files.len(),
            bytes: files.iter().map(|f| f.size).sum(),
            kernel_bytes: 0,
            packages_missing_from_cache: Vec::new(),
            by_package: by
                .into_iter()
                .map(|(package, (files, bytes))| PackageSize {
                    package,
                    files,
                    bytes,
                    zstd_bytes: bytes / 2,
                    share: 0.0,
                })
                .collect(),
            all: files,
        }
    }

    #[test]
    fn owners_by_path() {
        let owners: BTreeMap<String, String> =
            [("usr/sbin/nsd".to_string(), "nsd".to_string())].into();
        let k = "linux-image-6.1.0-56-amd64";
        assert_eq!(owner("init", &owners, k, false), INIT_OWNER);
        assert_eq!(
            owner("usr/lib/modules/6.1/kernel/net/x.ko", &owners, k, false),
            k
        );
        assert_eq!(owner("usr/sbin/nsd", &owners, k, false), "nsd");
        assert_eq!(owner("etc/passwd", &owners, k, false), BUILDER_OWNER);
        assert_eq!(owner("usr/lib/libx.so", &owners, k, true), UNKNOWN_OWNER);
        assert_eq!(owner("etc/passwd", &owners, k, true), BUILDER_OWNER);
    }

    #[test]
    fn a_diff_names_every_kind_of_change() {
        let a = image(
            "a 1",
            vec![
                file("/init", 8_672_080, INIT_OWNER, 1),
                file("/usr/lib/libring.so", 500, "libring", 2),
                file("/etc/passwd", 100, BUILDER_OWNER, 3),
                file("/etc/group", 50, BUILDER_OWNER, 4),
            ],
        );
        let b = image(
            "a 2",
            vec![
                file("/init", 8_153_904, INIT_OWNER, 5),
                file("/etc/passwd", 100, BUILDER_OWNER, 6),
                file("/etc/group", 50, BUILDER_OWNER, 4),
                file("/usr/sbin/new", 10, "new", 7),
            ],
        );
        let d = diff(&a, &b);
        assert_eq!(d.bytes_delta, 10 - 518_176 - 500);
        assert_eq!(
            d.added,
            [Change {
                path: "/usr/sbin/new".into(),
                package: "new".into(),
                from: None,
                to: Some(10)
            }]
        );
        assert_eq!(d.removed.len(), 1);
        assert_eq!(d.removed[0].path, "/usr/lib/libring.so");
        assert_eq!(d.resized.len(), 1);
        assert_eq!(d.resized[0].path, "/init");
        assert_eq!(d.changed.len(), 1, "same size, other content");
        assert_eq!(d.changed[0].path, "/etc/passwd");
        assert!(d.packages.contains(&("libring".into(), 500, 0)));
        assert!(
            d.packages
                .contains(&(INIT_OWNER.into(), 8_672_080, 8_153_904))
        );
        let text = render_diff(&d, 10);
        assert!(
            text.contains("1 added, 1 removed, 1 resized, 1 changed"),
            "{text}"
        );
        assert!(text.contains("8.67 MB -> 8.15 MB"), "{text}");
        // An image against itself: nothing.
        let same = diff(&a, &a);
        assert!(same.added.is_empty() && same.removed.is_empty() && same.resized.is_empty());
        assert!(same.changed.is_empty() && same.packages.is_empty());
        assert_eq!((same.bytes_delta, same.archive_delta), (0, 0));
    }

    #[test]
    fn sizes_for_people() {
        assert_eq!(human(8_153_904), "8.15 MB");
        assert_eq!(human(512_000), "512 kB");
        assert_eq!(human(97), "97 B");
        assert_eq!(human_delta(-518_176), "-518 kB");
        assert_eq!(human_delta(10), "+10 B");
    }
}
