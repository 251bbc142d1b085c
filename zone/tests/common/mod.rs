//! Helpers shared by the integration tests: the path to the real data and the
//! prerequisite rule (skip with a reason, but fail under `CI=true`).

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The real root zone data in the repository (`testdata/rootzone`, see its README).
pub fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/rootzone")
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
