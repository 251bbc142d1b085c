//! Kernel modules: the image lists them (`image.json` `modules`, dependencies first, computed by
//! the builder from the modules' own `.modinfo`); the init loads each with `finit_module`.
//! Already loaded (`EEXIST`) is fine. A module that is missing or fails to load is a named
//! failure that the hardware stage reports as a failed check; it never stops the init.
//! Outside the machine role modules are only checked for presence, never loaded (a test must
//! not load modules into the host kernel).

use std::path::{Path, PathBuf};

/// One module that did not load.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// The file is missing or unreadable.
    #[error("{path}: cannot open")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused it.
    #[error("{path}: finit_module")]
    Load {
        /// The file.
        path: PathBuf,
        /// errno.
        #[source]
        source: nix::Error,
    },
}

/// A module failure as reported (the hardware report is serialisable).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ModuleFailure {
    /// Module path relative to the release folder.
    pub module: String,
    /// What went wrong.
    pub reason: String,
}

/// Modules whose init refuses with `ENODEV` when the firmware lacks what they serve:
/// `efivarfs` on a machine not started through UEFI (a kernel booted directly). That is not a
/// failure of the machine; the boot says so and goes on ([`crate::slots`] then reports that no
/// slot can be blessed).
pub const FIRMWARE_DEPENDENT: [&str; 1] = ["efivarfs"];

/// Whether `module` (a path ending in `NAME.ko`) may refuse with `ENODEV` without failing.
pub fn firmware_dependent(module: &str) -> bool {
    let name = module.rsplit('/').next().unwrap_or(module);
    FIRMWARE_DEPENDENT
        .iter()
        .any(|d| name.strip_suffix(".ko") == Some(d))
}

/// What loading did.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Modules loaded (or present), or firmware-dependent ones not for this machine.
    pub ok: usize,
    /// Firmware-dependent modules the kernel refused with `ENODEV` (not failures).
    pub not_applicable: Vec<String>,
    /// Those that were not.
    pub failures: Vec<ModuleFailure>,
    /// Seconds each took, slowest first (the boot-time budget is mostly here).
    pub timings: Vec<(String, f64)>,
}

/// Loads (or, with `load` false, only checks) `modules`, paths relative to
/// `root/lib/modules/<release>/`, in order.
pub fn load_all(root: &Path, release: &str, modules: &[String], load: bool) -> Loaded {
    let dir = root.join("lib/modules").join(release);
    let mut ok = 0;
    let mut failures = Vec::new();
    let mut not_applicable = Vec::new();
    let mut timings = Vec::new();
    for m in modules {
        let t = std::time::Instant::now();
        let path = dir.join(m);
        let result = std::fs::File::open(&path)
            .map_err(|source| ModuleError::Open {
                path: path.clone(),
                source,
            })
            .and_then(|f| {
                if !load {
                    return Ok(());
                }
                match nix::kmod::finit_module(&f, c"", nix::kmod::ModuleInitFlags::empty()) {
                    Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(()),
                    Err(nix::errno::Errno::ENODEV) if firmware_dependent(m) => {
                        not_applicable.push(m.clone());
                        Ok(())
                    }
                    Err(source) => Err(ModuleError::Load {
                        path: path.clone(),
                        source,
                    }),
                }
            });
        timings.push((m.clone(), t.elapsed().as_secs_f64()));
        match result {
            Ok(()) => ok += 1,
            Err(e) => failures.push(ModuleFailure {
                module: m.clone(),
                reason: crate::log::chain(&e),
            }),
        }
    }
    timings.sort_by(|a, b| b.1.total_cmp(&a.1));
    Loaded {
        ok,
        not_applicable,
        failures,
        timings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_firmware_dependent_modules_may_be_absent() {
        assert!(firmware_dependent("kernel/fs/efivarfs/efivarfs.ko"));
        assert!(!firmware_dependent("kernel/fs/ext4/ext4.ko"));
        assert!(!firmware_dependent("kernel/fs/efivarfs/notefivarfs.ko"));
    }

    #[test]
    fn missing_module_is_a_named_failure_and_present_ones_count() {
        let dir = tempfile::tempdir().unwrap();
        let rel = "kernel/drivers/net/virtio_net.ko";
        let p = dir.path().join("lib/modules/6.1.0-test").join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"\x7fELF").unwrap();
        let list = vec![rel.to_string(), "kernel/net/nope.ko".to_string()];
        let l = load_all(dir.path(), "6.1.0-test", &list, false);
        assert_eq!(l.timings.len(), 2);
        let (n, f) = (l.ok, l.failures);
        assert_eq!(n, 1);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].module, "kernel/net/nope.ko");
        assert!(
            f[0].reason.contains("nope.ko: cannot open: No such file"),
            "{}",
            f[0].reason
        );
    }
}
