//! Assembly: from locked, checked packages to the image folder. Takes the kernel and the closure
//! of the wanted modules, the recipe's executables with their `DT_NEEDED` closure, the static
//! init, the recipe's files and the image's own metadata; writes a sorted newc archive with fixed
//! metadata, compresses it with zstd, and signs the manifest.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use ed25519_dalek::{SigningKey, VerifyingKey};
use imrs_config::image::{
    ANCHORS_PATH, IMAGE_INFO_PATH, IMAGE_PUBKEY_PATH, ImageInfo, MANIFEST_SCHEMA, Manifest,
    ManifestPackage, SITE_PUBKEY_PATH, Toolchain, canonical_json,
};
use imrs_config::lock::{Lock, LockedPackage, Role};
use imrs_config::recipe::{ResolvedRecipe, SYSTEMD_BOOT_EFI};
use imrs_config::{accounts, keys};

use crate::cache::Cache;
use crate::deb::DebArchive;
use crate::image_dir::{self, BOOT_LOADER, INITRAMFS, KERNEL};
use crate::tree::{Node, Tree};
use crate::ui::Ui;
use crate::{cpio, elf};

/// zstd level of the initramfs: measured in BENCHMARKS.md (size vs warm rebuild time).
pub const ZSTD_LEVEL: i32 = 9;

/// `/etc/nsswitch.conf`: every database from the image's own files (`/etc/passwd`,
/// `/etc/group`, `/etc/hosts`); glibc's default would ask DNS first for host names.
pub const NSSWITCH: &str = "passwd: files\ngroup: files\nshadow: files\nhosts: files\n";

/// Builder identification recorded in images.
pub const BUILDER: &str = concat!("imrs-build ", env!("CARGO_PKG_VERSION"));

/// Everything a build reads.
pub struct Inputs<'a> {
    /// The recipe.
    pub recipe: &'a ResolvedRecipe,
    /// Its lock.
    pub lock: &'a Lock,
    /// sha256 of the lock file bytes.
    pub lock_sha256: String,
    /// The package cache, already fetched (`Cache::fetch` checked every sha256).
    pub cache: &'a Cache,
    /// The static init.
    pub init: &'a [u8],
    /// The Rust toolchain that compiled it.
    pub init_toolchain: &'a Toolchain,
    /// Public key site configs must be signed with.
    pub site_pubkey: &'a VerifyingKey,
    /// A signed site config to embed: (text, signature).
    pub site: Option<(&'a [u8], &'a str)>,
}

/// What a build produced.
pub struct Built {
    /// The manifest.
    pub manifest: Manifest,
    /// Its canonical bytes (what the signature covers).
    pub manifest_bytes: Vec<u8>,
    /// Seconds per stage.
    pub timings: serde_json::Map<String, serde_json::Value>,
}

/// Paths dropped from userland packages before anything is selected (documentation, locales).
fn wanted_from_userland(path: &str) -> bool {
    !(path.starts_with("usr/share/doc")
        || path.starts_with("usr/share/man")
        || path.starts_with("usr/share/locale")
        || path.starts_with("usr/share/lintian")
        || path.starts_with("usr/share/info"))
}

/// The merged-usr skeleton every tree starts from.
pub(crate) fn skeleton() -> Result<Tree> {
    let mut t = Tree::new();
    for d in ["usr/bin", "usr/sbin", "usr/lib", "usr/lib64"] {
        t.insert(d, Node::dir(0o755))?;
    }
    for (link, target) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        t.insert(link, Node::symlink(target))?;
    }
    Ok(t)
}

fn open_deb(cache: &Cache, p: &LockedPackage) -> Result<DebArchive> {
    // `Inputs::cache` has just been fetched: every locked .deb's sha256 was checked there.
    let path = cache.path(p);
    DebArchive::open(&path).with_context(|| format!("package {} {}", p.name, p.version))
}

/// Copies `path` (and, for a symlink, what it points to, recursively) from `src` into `dst`.
fn copy_resolved(dst: &mut Tree, src: &Tree, path: &str) -> Result<()> {
    let traced = src
        .resolve_traced(path)
        .with_context(|| format!("/{path}: not found in the packages"))?;
    for link in &traced.symlinks {
        dst.copy_from(src, link)?;
    }
    dst.copy_from(src, &traced.path)?;
    Ok(())
}

/// systemd-boot's EFI binary from the locked boot loader package, when the recipe names one.
fn boot_loader(inp: &Inputs<'_>) -> Result<Option<Vec<u8>>> {
    let r = inp.recipe;
    let Some(boot) = &r.recipe.boot else {
        return Ok(None);
    };
    let Some(p) = inp.lock.bootloader().filter(|p| p.name == boot.package) else {
        bail!(
            "{}: boot.package {} is not in the lock as its boot loader; re-run `imrs-build lock {}`",
            r.path.display(),
            boot.package,
            r.path.display()
        );
    };
    let files = open_deb(inp.cache, p)?
        .files()
        .with_context(|| format!("reading {} {}", p.name, p.version))?;
    let path = SYSTEMD_BOOT_EFI.trim_start_matches('/');
    let data = files
        .resolve(path)
        .ok()
        .and_then(|at| files.get(&at))
        .and_then(|n| n.data())
        .with_context(|| {
            format!(
                "package {} {} has no {SYSTEMD_BOOT_EFI} (boot.package must be systemd-boot-efi)",
                p.name, p.version
            )
        })?;
    Ok(Some(data.to_vec()))
}

/// Builds the image into `out`.
pub fn build_image(
    inp: &Inputs<'_>,
    out: &std::path::Path,
    key: &SigningKey,
    ui: &Ui,
) -> Result<Built> {
    let mut timings = serde_json::Map::new();
    let mut lap = Instant::now();
    let mut time = |name: &str, lap: &mut Instant| {
        timings.insert(name.into(), lap.elapsed().as_secs_f64().into());
        *lap = Instant::now();
    };
    let r = inp.recipe;
    let lock = inp.lock;
    let release = &lock.kernel_release;

    // 1. Userland packages into a staging tree.
    let mut staging = skeleton()?;
    let userland: Vec<&LockedPackage> = lock
        .packages
        .iter()
        .filter(|p| matches!(p.role, Role::Userland | Role::Dependency))
        .collect();
    let pb = ui.count(userland.len() as u64, "extracting packages");
    for p in &userland {
        pb.set_message(p.name.clone());
        open_deb(inp.cache, p)?
            .extract_into(&mut staging, wanted_from_userland)
            .with_context(|| format!("extracting {} {}", p.name, p.version))?;
        pb.inc(1);
    }
    pb.finish_and_clear();
    time("extract_userland", &mut lap);

    // 2. Kernel and modules.
    let kpkg = lock.kernel().context("the lock has no kernel package")?;
    let kernel = crate::kernel::extract(inp.cache, kpkg, release, &r.modules, ui)?;
    time("extract_kernel", &mut lap);

    // 2b. The boot loader's EFI binary: an artifact of its own (for `disk`), not in the
    // initramfs.
    let loader = boot_loader(inp)?;
    time("extract_boot_loader", &mut lap);

    // 3. The image tree.
    let mut img = skeleton()?;
    for d in ["dev", "proc", "sys", "run", "etc/imrs", "var/lib/imrs"] {
        img.insert(d, Node::dir(0o755))?;
    }
    img.insert("tmp", Node::dir(0o1777))?;
    img.insert("root", Node::dir(0o700))?;
    img.insert("dev/console", Node::char_device(5, 1, 0o600))?;
    img.insert("dev/null", Node::char_device(1, 3, 0o666))?;
    img.insert("init", Node::file(inp.init.to_vec(), 0o755))?;
    for name in ["poweroff", "reboot", "halt"] {
        img.insert(&format!("usr/sbin/{name}"), Node::symlink("/init"))?;
    }
    // One account per daemon, fixed ids (imrs_config::accounts).
    img.insert(
        "etc/passwd",
        Node::file(accounts::passwd().into_bytes(), 0o644),
    )?;
    img.insert(
        "etc/group",
        Node::file(accounts::group().into_bytes(), 0o644),
    )?;
    img.insert("etc/hostname", Node::file(b"imrs\n".to_vec(), 0o644))?;
    // No resolver on the box: names come from /etc/hosts only (the init writes the site's NTS
    // servers there), never from DNS.
    img.insert(
        "etc/nsswitch.conf",
        Node::file(NSSWITCH.as_bytes().to_vec(), 0o644),
    )?;
    // Executables and their libraries.
    let mut binaries: Vec<String> = Vec::new();
    for b in &r.recipe.userland.binaries {
        let p = b.trim_start_matches('/').to_string();
        if staging.resolve(&p).is_err() {
            bail!(
                "{}: userland.binaries: {b} is in none of the packages {}",
                r.path.display(),
                r.recipe.userland.packages.join(", ")
            );
        }
        binaries.push(p);
    }
    let bins: Vec<&str> = binaries.iter().map(String::as_str).collect();
    let closure = elf::needed_closure(&staging, &bins)
        .with_context(|| format!("{}: library closure of userland.binaries", r.path.display()))?;
    for p in &closure.paths {
        copy_resolved(&mut img, &staging, p)?;
    }
    // Kernel modules.
    for (path, node) in kernel.modules.iter() {
        img.insert(path, node.clone())?;
    }
    // Recipe files, checked against their pinned digests.
    for f in &r.recipe.files {
        let src = r.dir().join(&f.source);
        let data =
            std::fs::read(&src).with_context(|| format!("{}: cannot read", src.display()))?;
        let got = image_dir::sha256_hex(&data);
        if got != f.sha256.to_lowercase() {
            bail!(
                "{}: files: {} has sha256 {got}, the recipe pins {}",
                r.path.display(),
                src.display(),
                f.sha256
            );
        }
        img.insert(&f.dest, Node::file(data, f.mode))?;
    }
    if !img.contains(ANCHORS_PATH) {
        bail!(
            "{}: the image needs the IANA trust anchors at {ANCHORS_PATH} (files)",
            r.path.display()
        );
    }
    img.insert(
        SITE_PUBKEY_PATH,
        Node::file(keys::public_pem(inp.site_pubkey).into_bytes(), 0o644),
    )?;
    img.insert(
        IMAGE_PUBKEY_PATH,
        Node::file(keys::public_pem(&key.verifying_key()).into_bytes(), 0o644),
    )?;
    if let Some((text, sig)) = inp.site {
        img.insert("etc/imrs/site.toml", Node::file(text.to_vec(), 0o644))?;
        img.insert(
            "etc/imrs/site.toml.sig",
            Node::file(sig.as_bytes().to_vec(), 0o644),
        )?;
    }
    let info = ImageInfo {
        name: r.recipe.name.clone(),
        version: r.recipe.image_version.clone(),
        source_date_epoch: lock.source_date_epoch,
        dns: r.recipe.dns,
        kernel_release: release.clone(),
        modules: kernel.load_order.clone(),
        profile: r.profile.clone(),
        builder: BUILDER.into(),
        // No recipe builds a test image yet: the machine's init ignores test hooks.
        test_hooks: false,
    };
    img.insert(IMAGE_INFO_PATH, Node::file(canonical_json(&info), 0o644))?;
    time("assemble", &mut lap);

    // 4. Archive and compress.
    let epoch = u32::try_from(lock.source_date_epoch)
        .context("SOURCE_DATE_EPOCH does not fit the newc format (1970..2106)")?;
    let raw = cpio::write(
        &img,
        epoch,
        Vec::with_capacity(img.total_size() as usize + (1 << 20)),
    )
    .context("writing the initramfs archive")?;
    time("cpio", &mut lap);
    let sp = ui.spinner(format!(
        "compressing initramfs ({} MiB, zstd -{ZSTD_LEVEL})",
        raw.len() >> 20
    ));
    let zst = cpio::compress_zstd(&raw, ZSTD_LEVEL).context("compressing the initramfs")?;
    sp.finish_and_clear();
    time("compress", &mut lap);
    let entries = cpio::read(&raw).context("re-reading the archive just written")?;
    let (files_count, files_sha256) = image_dir::file_list_digest(&entries);

    // 5. Manifest, signature, atomic output.
    let mut artifacts = vec![
        image_dir::artifact(INITRAMFS, &zst),
        image_dir::artifact(KERNEL, &kernel.vmlinuz),
    ];
    if let Some(efi) = &loader {
        artifacts.push(image_dir::artifact(BOOT_LOADER, efi));
    }
    artifacts.sort_by(|a, b| a.name.cmp(&b.name));
    let manifest = Manifest {
        schema: MANIFEST_SCHEMA,
        name: r.recipe.name.clone(),
        version: r.recipe.image_version.clone(),
        profile: r.profile.name.clone(),
        dns: r.recipe.dns,
        builder: BUILDER.into(),
        init_toolchain: inp.init_toolchain.clone(),
        source_date_epoch: lock.source_date_epoch,
        recipe_sha256: r.sha256.clone(),
        lock_sha256: inp.lock_sha256.clone(),
        kernel_release: release.clone(),
        cmdline: r.recipe.kernel.cmdline.clone(),
        artifacts,
        files_count,
        files_sha256,
        packages: lock
            .packages
            .iter()
            .map(|p| ManifestPackage {
                name: p.name.clone(),
                version: p.version.clone(),
                sha256: p.sha256.clone(),
            })
            .collect(),
    };
    let mut files: Vec<(&str, &[u8])> = vec![(KERNEL, &kernel.vmlinuz), (INITRAMFS, &zst)];
    if let Some(efi) = &loader {
        files.push((BOOT_LOADER, efi));
    }
    let manifest_bytes = image_dir::write(out, &files, &manifest, key)?;
    time("write", &mut lap);
    Ok(Built {
        manifest,
        manifest_bytes,
        timings,
    })
}
