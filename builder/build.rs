//! Names the git commit imrs-build is built from, for `--version`: sets `IMRS_BUILD_COMMIT` to
//! the short hash, with `-dirty` when tracked files differ from it, or `unknown` when there is no
//! git or no repository (a source tarball still builds). `IMRS_BUILD_COMMIT` in the environment
//! overrides it (a packager building from a tarball of a known commit).
//!
//! Cargo re-runs this script when HEAD moves: on the git folder's `HEAD`, the ref it points to
//! and `packed-refs` (found through `git rev-parse --git-dir` and `--git-common-dir`, so a
//! worktree, whose HEAD and refs live in different folders, works), on the index, and on the
//! workspace's own folders (an edited file makes the tree dirty). The image is not affected: the
//! init is another crate, and the manifest records the package version only.

use std::path::{Path, PathBuf};
use std::process::Command;

const OVERRIDE: &str = "IMRS_BUILD_COMMIT";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed={OVERRIDE}");
    let commit = match std::env::var(OVERRIDE) {
        Ok(v) if !v.trim().is_empty() => v.trim().to_string(),
        _ => from_git().unwrap_or_else(|| "unknown".to_string()),
    };
    println!("cargo:rustc-env={OVERRIDE}={commit}");
}

/// Runs git in the workspace; its trimmed stdout if it succeeded.
fn git(workspace: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        // Never write the index (a refreshed index would look like a change to Cargo).
        .arg("--no-optional-locks")
        .arg("-C")
        .arg(workspace)
        .args(args)
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A path git printed, relative to the workspace unless absolute.
fn git_path(workspace: &Path, printed: &str) -> PathBuf {
    let p = Path::new(printed);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        workspace.join(p)
    }
}

/// Asks Cargo to re-run this script when `path` changes, if it exists (a missing path would
/// make Cargo re-run it on every build).
fn watch(path: &Path) {
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

fn from_git() -> Option<String> {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir.parent()?.to_path_buf();
    // Only this workspace's own repository counts, not one it happens to be unpacked inside.
    let top = git(&workspace, &["rev-parse", "--show-toplevel"])?;
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if !same(Path::new(&top), &workspace) {
        return None;
    }
    let git_dir = git_path(&workspace, &git(&workspace, &["rev-parse", "--git-dir"])?);
    let common_dir = git_path(
        &workspace,
        &git(&workspace, &["rev-parse", "--git-common-dir"])?,
    );
    watch(&git_dir.join("HEAD"));
    watch(&git_dir.join("index"));
    watch(&common_dir.join("packed-refs"));
    if let Some(r) = git(&workspace, &["symbolic-ref", "-q", "HEAD"]) {
        watch(&common_dir.join(&r));
        watch(&git_dir.join(&r));
    }
    // The workspace's folders and top-level files, not the build output or the git folder.
    if let Ok(entries) = std::fs::read_dir(&workspace) {
        for e in entries.flatten() {
            let name = e.file_name();
            if name != "target" && name != ".git" {
                watch(&e.path());
            }
        }
    }
    let hash = git(&workspace, &["rev-parse", "--short=12", "HEAD"])?;
    let dirty = git(
        &workspace,
        &["status", "--porcelain", "--untracked-files=no"],
    )
    .is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{hash}-dirty") } else { hash })
}
