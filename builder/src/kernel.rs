//! The kernel and its modules from the locked `linux-image-*` package: `vmlinuz`, the dependency
//! closure of the wanted modules (in load order), and a `modules.dep` for exactly that set.
//!
//! Decompressing the kernel package (~70 MB of xz, ~400 MB of modules) dominates a build, so the
//! selection is cached under `CACHE/kernel/`, keyed by the package's sha256 and the module list,
//! and checked by sha256 when reused.

use std::path::Path;

use anyhow::{Context, Result, bail};
use imrs_config::lock::LockedPackage;
use sha2::{Digest, Sha256};

use crate::cache::Cache;
use crate::deb::DebArchive;
use crate::tree::{Node, Tree};
use crate::ui::Ui;
use crate::{cpio, kmod};

/// The kernel part of an image.
pub struct Kernel {
    /// The compressed kernel image (`boot/vmlinuz-<release>`).
    pub vmlinuz: Vec<u8>,
    /// `usr/lib/modules/<release>/...`: the selected modules and their index files.
    pub modules: Tree,
    /// Module paths relative to the release folder, dependencies first.
    pub load_order: Vec<String>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct CacheIndex {
    load_order: Vec<String>,
    vmlinuz_sha256: String,
    modules_sha256: String,
}

fn cache_key(kpkg: &LockedPackage, wanted: &[String]) -> String {
    let mut h = Sha256::new();
    h.update(kpkg.sha256.as_bytes());
    for w in wanted {
        h.update(b"\0");
        h.update(w.as_bytes());
    }
    hex::encode(&h.finalize()[..16])
}

/// Extracts (or reuses from the cache) the kernel and the closure of `wanted` modules. `cache`
/// must have been fetched (every sha256 checked) by the caller.
pub fn extract(
    cache: &Cache,
    kpkg: &LockedPackage,
    release: &str,
    wanted: &[String],
    ui: &Ui,
) -> Result<Kernel> {
    let dir = cache.dir().join("kernel").join(cache_key(kpkg, wanted));
    if let Some(k) = load_cached(&dir, release)? {
        return Ok(k);
    }
    // The caller fetched the cache just before: the package's sha256 is already checked.
    let deb_path = cache.path(kpkg);
    let deb = DebArchive::open(&deb_path)
        .with_context(|| format!("package {} {}", kpkg.name, kpkg.version))?;
    let sp = ui.spinner(format!("extracting {} (modules for {release})", kpkg.name));
    let mods_dir = format!("lib/modules/{release}/");
    let vmlinuz_path = format!("boot/vmlinuz-{release}");
    let mut all = Tree::new();
    deb.extract_into(&mut all, |p| {
        p == vmlinuz_path
            || (p.starts_with(&mods_dir)
                && (p.ends_with(".ko")
                    || p.ends_with(".ko.xz")
                    || p.ends_with(".ko.zst")
                    || p.rsplit('/')
                        .next()
                        .is_some_and(|f| f.starts_with("modules."))))
    })
    .with_context(|| format!("extracting {}", kpkg.name))?;
    sp.finish_and_clear();
    let vmlinuz = all
        .get(&vmlinuz_path)
        .and_then(Node::data)
        .map(<[u8]>::to_vec)
        .with_context(|| format!("{}: has no /{vmlinuz_path}", kpkg.name))?;
    // Debian's package has no modules.dep (depmod writes it at install): the index reads each
    // module's .modinfo instead.
    let index = kmod::ModuleIndex::from_tree(&all, release)
        .with_context(|| format!("{}: kernel modules", kpkg.name))?;
    let wanted_refs: Vec<&str> = wanted.iter().map(String::as_str).collect();
    let order = index
        .load_order(&wanted_refs)
        .with_context(|| format!("kernel {release}: modules wanted by the profile and recipe"))?;
    let load_order: Vec<String> = order.iter().map(|m| m.path.clone()).collect();
    let mut modules = Tree::new();
    let out_dir = format!("usr/lib/modules/{release}/");
    for rel in &load_order {
        let src = format!("{mods_dir}{rel}");
        let node = all.get(&src).cloned().with_context(|| {
            format!(
                "{}: modules.dep names /{src}, which the package lacks",
                kpkg.name
            )
        })?;
        modules.insert(&format!("{out_dir}{rel}"), node)?;
    }
    modules.insert(
        &format!("{out_dir}modules.dep"),
        Node::file(index.modules_dep(&order).into_bytes(), 0o644),
    )?;
    for name in [
        "modules.builtin",
        "modules.builtin.modinfo",
        "modules.order",
    ] {
        if let Some(node) = all.get(&format!("{mods_dir}{name}")) {
            modules.insert(&format!("{out_dir}{name}"), node.clone())?;
        }
    }
    store_cached(&dir, &vmlinuz, &modules, &load_order)?;
    Ok(Kernel {
        vmlinuz,
        modules,
        load_order,
    })
}

fn load_cached(dir: &Path, release: &str) -> Result<Option<Kernel>> {
    let Ok(idx) = std::fs::read(dir.join("index.json")) else {
        return Ok(None);
    };
    let Ok(idx) = serde_json::from_slice::<CacheIndex>(&idx) else {
        return Ok(None);
    };
    let (Ok(vmlinuz), Ok(mods)) = (
        std::fs::read(dir.join("vmlinuz")),
        std::fs::read(dir.join("modules.cpio")),
    ) else {
        return Ok(None);
    };
    if crate::image_dir::sha256_hex(&vmlinuz) != idx.vmlinuz_sha256
        || crate::image_dir::sha256_hex(&mods) != idx.modules_sha256
    {
        // A damaged cache entry is rebuilt, never used.
        let _ = std::fs::remove_dir_all(dir);
        return Ok(None);
    }
    let mut modules = Tree::new();
    for e in cpio::read(&mods).context("kernel cache entry")? {
        if e.mode & 0o170000 == 0o100000 {
            modules.insert(&e.name, Node::file(e.data.clone(), e.mode & 0o7777))?;
        }
    }
    if !modules.iter().any(|(p, _)| p.contains(release)) && !idx.load_order.is_empty() {
        bail!("{}: kernel cache entry for another release", dir.display());
    }
    Ok(Some(Kernel {
        vmlinuz,
        modules,
        load_order: idx.load_order,
    }))
}

fn store_cached(dir: &Path, vmlinuz: &[u8], modules: &Tree, load_order: &[String]) -> Result<()> {
    let mods = cpio::write(modules, 0, Vec::new())?;
    let idx = CacheIndex {
        load_order: load_order.to_vec(),
        vmlinuz_sha256: crate::image_dir::sha256_hex(vmlinuz),
        modules_sha256: crate::image_dir::sha256_hex(&mods),
    };
    let parent = dir.parent().context("kernel cache folder")?;
    std::fs::create_dir_all(parent)?;
    let tmp = parent.join(format!(".tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp)?;
    std::fs::write(tmp.join("vmlinuz"), vmlinuz)?;
    std::fs::write(tmp.join("modules.cpio"), &mods)?;
    std::fs::write(tmp.join("index.json"), serde_json::to_vec(&idx)?)?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&tmp, dir)
        .with_context(|| format!("{}: cannot store kernel cache", dir.display()))?;
    Ok(())
}
