//! Shared helpers for imrs-build's integration tests: run the binary, find the repository, build
//! the qemu image once per test binary (fetching with apt absent from `PATH`; re-locking into a
//! scratch lock with the host's apt only if no source has the committed lock's versions), and the
//! CI-aware skip rule.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The imrs-build binary under test.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_imrs-build"))
}

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Scratch space that survives between test runs (package cache).
pub fn scratch() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// Under CI=true a missing prerequisite fails; otherwise the test is skipped with the reason.
/// Returns true when the test should go on.
pub fn require(ok: bool, what: &str) -> bool {
    if ok {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("prerequisite missing under CI=true: {what}");
    }
    eprintln!("SKIP: {what}");
    false
}

/// Whether `program arg` can be run.
pub fn have(program: &str, arg: &str) -> bool {
    Command::new(program).arg(arg).output().is_ok()
}

/// QEMU and the UEFI firmware an appliance disk boots with (see [`require`]).
pub fn uefi_prerequisites() -> bool {
    require(
        have("qemu-system-x86_64", "--version"),
        "qemu-system-x86_64 (install qemu-system-x86)",
    ) && require(
        Path::new(imrs_build::qemu::OVMF_CODE).exists(),
        "OVMF firmware (install ovmf)",
    )
}

/// Runs a command, returning its output.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("spawn")
}

/// stdout + stderr as text.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The package cache shared by the tests.
pub fn cache() -> PathBuf {
    scratch().join("imrs-cache")
}

/// Whether the host's apt can be used (lists present).
pub fn have_apt() -> bool {
    Command::new("apt-cache")
        .args(["show", "--no-all-versions", "bird2"])
        .output()
        .map(|o| o.status.success() && !o.stdout.is_empty())
        .unwrap_or(false)
}

/// A folder to use as `PATH` that has no apt-get or apt-cache: `fetch` must not need them.
pub fn path_without_apt() -> PathBuf {
    let d = scratch().join("path-without-apt");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A lock usable for `recipe` now: the committed one if its packages can still be fetched (from
/// their mirror or the snapshot archive), else a fresh lock in scratch space, resolved with the
/// host's apt. Fetches into the shared cache with apt absent from `PATH`.
pub fn usable_lock(recipe: &str) -> Option<PathBuf> {
    let recipe_path = repo().join("images").join(recipe);
    let committed = recipe_path.with_extension("lock.json");
    let fetch = |lock: &Path| {
        run(bin()
            .args(["--quiet", "fetch"])
            .arg(&recipe_path)
            .arg("--lock")
            .arg(lock)
            .arg("--cache")
            .arg(cache())
            .env("PATH", path_without_apt()))
    };
    let o = fetch(&committed);
    if o.status.success() {
        return Some(committed);
    }
    assert_eq!(
        o.status.code(),
        Some(4),
        "fetch failed for another reason than a package no source has: {}",
        text(&o)
    );
    eprintln!(
        "committed lock is stale ({}); re-locking into scratch",
        text(&o).trim()
    );
    if !require(
        have_apt(),
        "apt package lists to re-lock (run scripts/install-deps.sh)",
    ) {
        return None;
    }
    let fresh = scratch().join(format!("{recipe}.lock.json"));
    let o = run(bin()
        .args(["--quiet", "lock"])
        .arg(&recipe_path)
        .arg("--lock")
        .arg(&fresh));
    assert!(o.status.success(), "lock: {}", text(&o));
    let o = fetch(&fresh);
    assert!(o.status.success(), "fetch: {}", text(&o));
    Some(fresh)
}

/// A key pair in `dir` named `name`.
pub fn keygen(dir: &Path, name: &str) -> PathBuf {
    let key = dir.join(name);
    let o = run(bin().args(["--quiet", "keygen", "--out"]).arg(&key));
    assert!(o.status.success(), "keygen: {}", text(&o));
    key
}

/// The qemu image with the signed lab site embedded, built once per test binary:
/// (image dir, secret key, lock).
pub fn qemu_image() -> Option<&'static (PathBuf, PathBuf, PathBuf)> {
    static IMAGE: OnceLock<Option<(PathBuf, PathBuf, PathBuf)>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let lock = usable_lock("qemu.toml")?;
            let dir = scratch().join(format!("qemu-image-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let key = keygen(&dir, "image-key");
            // The lab site config, signed with the image key (the default site public key), is
            // embedded so that the boot gets past the site stage.
            let site = dir.join("site.toml");
            std::fs::copy(repo().join("images/sites/lab.toml"), &site).unwrap();
            let o = run(bin()
                .args(["--quiet", "site", "sign"])
                .arg(&site)
                .arg("--key")
                .arg(&key));
            assert!(o.status.success(), "site sign: {}", text(&o));
            let out = dir.join("image");
            let o = run(bin()
                .args(["--quiet", "build"])
                .arg(repo().join("images/qemu.toml"))
                .arg("--lock")
                .arg(&lock)
                .arg("--cache")
                .arg(cache())
                .arg("--key")
                .arg(&key)
                .arg("--out")
                .arg(&out)
                .arg("--site")
                .arg(&site));
            assert!(o.status.success(), "build: {}", text(&o));
            Some((out, key, lock))
        })
        .as_ref()
}

/// Copies an image folder.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}
