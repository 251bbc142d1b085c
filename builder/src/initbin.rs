//! The init that goes into the image: `imrs-init` from this workspace, built as a static binary
//! (`+crt-static`) with every build path remapped, so the bytes depend on the sources and the
//! toolchain only, not on where the checkout lives or who built it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The init could not be built or read.
#[derive(Debug, thiserror::Error)]
pub enum InitBinError {
    /// No workspace to build from and no `--init` given.
    #[error(
        "cannot find the imrs workspace at {path} to build imrs-init; pass --init PATH to a \
         static imrs-init binary"
    )]
    NoWorkspace {
        /// Where it was looked for.
        path: PathBuf,
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
}

/// The workspace this builder was compiled from.
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Rust target of the appliance.
pub const TARGET: &str = "x86_64-unknown-linux-gnu";

fn cargo_home() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
}

fn rust_sysroot(ws: &Path) -> Option<PathBuf> {
    let out = Command::new("rustc")
        .args(["--print", "sysroot"])
        .current_dir(ws)
        .output()
        .ok()?;
    Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// Builds the static init with cargo (a no-op when up to date) and returns its bytes.
pub fn build(quiet: bool) -> Result<Vec<u8>, InitBinError> {
    let ws = workspace_dir();
    if !ws.join("init/Cargo.toml").exists() {
        return Err(InitBinError::NoWorkspace { path: ws });
    }
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
    remap(&ws, "/imrs");
    if let Some(h) = cargo_home() {
        remap(&h, "/cargo");
    }
    if let Some(s) = rust_sysroot(&ws) {
        remap(&s, "/rustc");
    }
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(&ws)
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
    read(&target_dir.join(TARGET).join("release/imrs-init"))
}

/// Reads a prebuilt init and checks that it is static.
pub fn read(path: &Path) -> Result<Vec<u8>, InitBinError> {
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
