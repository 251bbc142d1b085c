//! Helpers shared by the integration tests: paths to the real data and the
//! prerequisite rule (skip with a reason, but fail under `CI=true`).

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The shared real root zone data.
pub fn data_dir() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    for candidate in [
        here.join("../../shared/data/rootzone"),
        here.join("../shared/data/rootzone"),
        PathBuf::from("/work/shared/data/rootzone"),
    ] {
        if candidate.join("root.zone.2026073102").exists() {
            return candidate;
        }
    }
    panic!("real root zone data not found next to {}", here.display());
}

/// Whether a prerequisite binary exists. Missing: prints why the test skips,
/// or panics when `CI=true`.
pub fn have(binary: &str) -> bool {
    if Path::new(binary).exists() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("prerequisite {binary} is missing (CI=true: this is a failure, not a skip)");
    }
    eprintln!("SKIP: {binary} is not installed");
    false
}
