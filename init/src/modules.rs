//! Kernel modules: the image lists them (`image.json` `modules`, dependencies first, computed by
//! the builder from the modules' own `.modinfo`); the init loads each with `finit_module`.
//! A module that is missing or fails to load is a named failure the platform stage reports; it
//! never stops the init.

use std::path::{Path, PathBuf};

/// One module that did not load.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ModuleFailure {
    /// Module path relative to the release folder.
    pub module: String,
    /// What went wrong.
    pub reason: String,
}

/// Loads `modules` (paths relative to `root/lib/modules/<release>/`) in order. Returns how many
/// were loaded (or already present) and the failures.
pub fn load_all(root: &Path, release: &str, modules: &[String]) -> (usize, Vec<ModuleFailure>) {
    let dir: PathBuf = root.join("lib/modules").join(release);
    let mut loaded = 0;
    let mut failures = Vec::new();
    for m in modules {
        let path = dir.join(m);
        let result = std::fs::File::open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))
            .and_then(|f| {
                match nix::kmod::finit_module(&f, c"", nix::kmod::ModuleInitFlags::empty()) {
                    Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(()),
                    Err(e) => Err(format!("finit_module: {e}")),
                }
            });
        match result {
            Ok(()) => loaded += 1,
            Err(reason) => failures.push(ModuleFailure {
                module: m.clone(),
                reason,
            }),
        }
    }
    (loaded, failures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_module_is_a_named_failure() {
        let dir = tempfile::tempdir().unwrap();
        let (n, f) = load_all(dir.path(), "6.1.0-test", &["kernel/net/nope.ko".into()]);
        assert_eq!(n, 0);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].module, "kernel/net/nope.ko");
        assert!(f[0].reason.contains("cannot open"), "{}", f[0].reason);
    }
}
