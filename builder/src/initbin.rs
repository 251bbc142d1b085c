//! The init that goes into the image: `imrs-init` compiled from the imrs workspace (found from
//! the recipe's folder or the current directory, [`crate::workspace`]) as a static binary
//! (`+crt-static`) with every build path remapped, so the bytes depend on the sources and the
//! toolchain only, not on where the checkout lives or who built it; or a prebuilt static init
//! (`--init BIN`). Either way the toolchain that compiled it is known ([`Init::toolchain`]): from
//! `rustc -vV` in the workspace (the toolchain `rust-toolchain.toml` pins), checked against the
//! `rustc version` line rustc leaves in the binary's `.comment` section, or from that line alone
//! for a prebuilt init.

use std::path::{Path, PathBuf};
use std::process::Command;

use imrs_config::image::Toolchain;
use object::{Object, ObjectSection};

use crate::workspace::{self, Workspace};

/// The init could not be built or read.
#[derive(Debug, thiserror::Error)]
pub enum InitBinError {
    /// No workspace to build from and no `--init` given.
    #[error(
        "cannot compile imrs-init: {not_found}; run imrs-build inside a checkout of imrs (or give \
         it a recipe inside one), or pass --init PATH to a static imrs-init binary"
    )]
    NoWorkspace {
        /// Where it was looked for.
        not_found: workspace::NotFound,
    },
    /// cargo could not be run.
    #[error("cannot run cargo")]
    Spawn(#[source] std::io::Error),
    /// cargo failed.
    #[error("building the static imrs-init failed (cargo exit status {status}):\n{stderr}")]
    Cargo {
        /// Exit status.
        status: String,
        /// cargo's output, tail.
        stderr: String,
    },
    /// `rustc -vV` could not be run or did not say what it is.
    #[error("{rustc} -vV in {dir}: {reason}")]
    Rustc {
        /// The rustc command.
        rustc: String,
        /// Where it was run.
        dir: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The binary could not be read.
    #[error("{path}: cannot read the init binary")]
    Read {
        /// Path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The binary is not statically linked.
    #[error("{path}: not a static ELF executable; the image has no dynamic loader for the init")]
    NotStatic {
        /// Path.
        path: PathBuf,
    },
    /// The binary does not say which rustc compiled it.
    #[error(
        "{path}: no `rustc version` line in the ELF .comment section, so the toolchain that \
         compiled the init cannot be recorded (rustc writes it; was the section stripped?)"
    )]
    NoToolchain {
        /// Path.
        path: PathBuf,
    },
    /// cargo compiled the init with another rustc than `rustc -vV` names.
    #[error(
        "{path}: compiled by rustc {found_release} ({found_hash}), but rustc -vV in the \
         workspace says {release} ({hash})"
    )]
    ToolchainMismatch {
        /// The binary.
        path: PathBuf,
        /// Its `.comment` release.
        found_release: String,
        /// Its `.comment` commit hash.
        found_hash: String,
        /// `rustc -vV` release.
        release: String,
        /// `rustc -vV` commit hash.
        hash: String,
    },
}

/// A static init and the toolchain that compiled it.
#[derive(Debug, Clone)]
pub struct Init {
    /// The executable.
    pub bytes: Vec<u8>,
    /// The Rust toolchain that compiled it.
    pub toolchain: Toolchain,
}

/// Rust target of the appliance.
pub const TARGET: &str = "x86_64-unknown-linux-gnu";

fn cargo_home() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
}

fn rust_sysroot(ws: &Path) -> Option<PathBuf> {
    let out = Command::new(rustc_command())
        .args(["--print", "sysroot"])
        .current_dir(ws)
        .output()
        .ok()?;
    Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// The rustc cargo runs in `dir`: `$RUSTC`, else `rustc` (through rustup, the toolchain
/// `rust-toolchain.toml` pins).
fn rustc_command() -> String {
    std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into())
}

/// Release and commit hash from `rustc -vV` output.
pub fn parse_rustc_vv(text: &str) -> Option<Toolchain> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    Some(Toolchain {
        release: field("release:")?,
        commit_hash: field("commit-hash:")?,
    })
}

/// The toolchain `rustc -vV` names when run in `dir`.
pub fn rustc_toolchain(dir: &Path) -> Result<Toolchain, InitBinError> {
    let rustc = rustc_command();
    let err = |reason: String| InitBinError::Rustc {
        rustc: rustc.clone(),
        dir: dir.to_path_buf(),
        reason,
    };
    let out = Command::new(&rustc)
        .arg("-vV")
        .current_dir(dir)
        .output()
        .map_err(|e| err(format!("cannot run: {e}")))?;
    if !out.status.success() {
        return Err(err(format!(
            "exit status {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    parse_rustc_vv(&text).ok_or_else(|| err("no release: or commit-hash: line".into()))
}

/// The toolchain an ELF binary names in its `.comment` section (`rustc version 1.95.0
/// (59807616e 2026-04-14)`: release and abbreviated commit hash).
pub fn comment_toolchain(elf: &[u8]) -> Option<Toolchain> {
    let file = object::File::parse(elf).ok()?;
    let data = file.section_by_name(".comment")?.data().ok()?;
    data.split(|b| *b == 0).find_map(|s| {
        let line = std::str::from_utf8(s)
            .ok()?
            .strip_prefix("rustc version ")?;
        let (release, rest) = line.split_once(' ')?;
        let hash = rest.strip_prefix('(')?.split([' ', ')']).next()?;
        (!release.is_empty() && !hash.is_empty()).then(|| Toolchain {
            release: release.to_string(),
            commit_hash: hash.to_string(),
        })
    })
}

/// Whether the `.comment` toolchain `found` is `full` (same release, hash a prefix of the full
/// hash).
fn same_toolchain(found: &Toolchain, full: &Toolchain) -> bool {
    found.release == full.release
        && found.commit_hash.len() >= 7
        && full.commit_hash.starts_with(&found.commit_hash)
}

/// Where a build's init comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A prebuilt static init (`--init`).
    Prebuilt(PathBuf),
    /// Compiled in this workspace.
    Workspace(Workspace),
}

impl Source {
    /// `--init` if given, else the workspace found from `recipe`'s folder or the current
    /// directory ([`workspace::find`]); without either, the error says to pass `--init`.
    pub fn for_build(init: Option<&Path>, recipe: &Path) -> Result<Source, InitBinError> {
        match init {
            Some(p) => Ok(Source::Prebuilt(p.to_path_buf())),
            None => workspace::find(Some(recipe))
                .map(Source::Workspace)
                .map_err(|not_found| InitBinError::NoWorkspace { not_found }),
        }
    }

    /// Reads or compiles the init.
    pub fn load(&self, quiet: bool) -> Result<Init, InitBinError> {
        match self {
            Source::Prebuilt(p) => read(p),
            Source::Workspace(ws) => build(ws, quiet),
        }
    }
}

/// Compiles the static init in `ws` with cargo (a no-op when up to date) and returns it with
/// the toolchain that compiled it.
pub fn build(ws: &Workspace, quiet: bool) -> Result<Init, InitBinError> {
    let ws = ws.root();
    let toolchain = rustc_toolchain(ws)?;
    let target_dir = ws.join("target/init-static");
    let mut flags = vec!["-C".to_string(), "target-feature=+crt-static".to_string()];
    let mut remap = |from: &Path, to: &str| {
        flags.push(format!("--remap-path-prefix={}={to}", from.display()));
        if let Ok(real) = from.canonicalize()
            && real != from
        {
            flags.push(format!("--remap-path-prefix={}={to}", real.display()));
        }
    };
    remap(ws, "/imrs");
    if let Some(h) = cargo_home() {
        remap(&h, "/cargo");
    }
    if let Some(s) = rust_sysroot(ws) {
        remap(&s, "/rustc");
    }
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(ws)
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "imrs-init",
            "--target",
            TARGET,
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        // Separate flags with \x1f so paths with spaces survive.
        .env("CARGO_ENCODED_RUSTFLAGS", flags.join("\u{1f}"))
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env("SOURCE_DATE_EPOCH", "0");
    if quiet {
        cmd.arg("--quiet");
    }
    let out = cmd.output().map_err(InitBinError::Spawn)?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(30).collect();
        return Err(InitBinError::Cargo {
            status: out.status.to_string(),
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    let path = target_dir.join(TARGET).join("release/imrs-init");
    let bytes = read_static(&path)?;
    match comment_toolchain(&bytes) {
        Some(found) if same_toolchain(&found, &toolchain) => Ok(Init { bytes, toolchain }),
        Some(found) => Err(InitBinError::ToolchainMismatch {
            path,
            found_release: found.release,
            found_hash: found.commit_hash,
            release: toolchain.release,
            hash: toolchain.commit_hash,
        }),
        None => Err(InitBinError::NoToolchain { path }),
    }
}

/// Reads a prebuilt init (`--init`), checks that it is static and takes its toolchain from its
/// `.comment` section.
pub fn read(path: &Path) -> Result<Init, InitBinError> {
    let bytes = read_static(path)?;
    let toolchain = comment_toolchain(&bytes).ok_or_else(|| InitBinError::NoToolchain {
        path: path.to_path_buf(),
    })?;
    Ok(Init { bytes, toolchain })
}

/// Reads an executable and checks that it is static.
fn read_static(path: &Path) -> Result<Vec<u8>, InitBinError> {
    let data = std::fs::read(path).map_err(|source| InitBinError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let deps = crate::elf::dependencies(&path.display().to_string(), &data);
    if deps.map(|d| d.interpreter.is_some()).unwrap_or(true) {
        return Err(InitBinError::NotStatic {
            path: path.to_path_buf(),
        });
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rustc_vv_fields() {
        let t = parse_rustc_vv(
            "rustc 1.95.0 (59807616e 2026-04-14)\nbinary: rustc\n\
             commit-hash: 59807616e1fa2540724bfbac14d7976d7e4a3860\ncommit-date: 2026-04-14\n\
             host: x86_64-unknown-linux-gnu\nrelease: 1.95.0\nLLVM version: 22.1.2\n",
        )
        .unwrap();
        assert_eq!(t.release, "1.95.0");
        assert_eq!(t.commit_hash, "59807616e1fa2540724bfbac14d7976d7e4a3860");
        assert!(parse_rustc_vv("rustc 1.95.0\nrelease: 1.95.0\n").is_none());
        assert!(parse_rustc_vv("commit-hash: abc\nrelease: \n").is_none());
    }

    /// This test program was compiled by rustc too: its `.comment` names the toolchain that
    /// `rustc -vV` names here.
    #[test]
    fn comment_of_a_rust_binary_names_its_toolchain() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let found = comment_toolchain(&exe).expect("a rustc version line");
        let full = rustc_toolchain(Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap();
        assert!(same_toolchain(&found, &full), "{found:?} vs {full:?}");
        assert_eq!(full.commit_hash.len(), 40, "{full:?}");
    }

    #[test]
    fn toolchains_compare_by_release_and_hash_prefix() {
        let full = Toolchain {
            release: "1.95.0".into(),
            commit_hash: "59807616e1fa2540724bfbac14d7976d7e4a3860".into(),
        };
        let short = |r: &str, h: &str| Toolchain {
            release: r.into(),
            commit_hash: h.into(),
        };
        assert!(same_toolchain(&short("1.95.0", "59807616e"), &full));
        assert!(!same_toolchain(&short("1.94.0", "59807616e"), &full));
        assert!(!same_toolchain(&short("1.95.0", "59807616f"), &full));
        assert!(!same_toolchain(&short("1.95.0", "598"), &full));
    }

    #[test]
    fn not_an_elf_has_no_toolchain() {
        assert!(comment_toolchain(b"#!/bin/sh\necho hi\n").is_none());
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("init");
        std::fs::write(&p, b"#!/bin/sh\n").unwrap();
        assert!(matches!(read(&p), Err(InitBinError::NotStatic { .. })));
    }
}
