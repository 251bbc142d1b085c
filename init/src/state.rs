//! Persistent first-boot state: each stage's outcome and timing, saved atomically (temp file,
//! fsync, rename, fsync directory) after every stage, so a power cut resumes where it stopped
//! and a passed first boot is never repeated.
//!
//! Where: `imrs.state=PATH` on the kernel command line (tests), else the GPT partition named
//! `IMRS-DATA` (ext4) mounted at `/var/lib/imrs`, else volatile `/run/imrs` with a warning (the
//! first boot then repeats after a power cut). A state file that cannot be parsed is treated as
//! unknown with a warning, never a crash.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};

use crate::boot::{Outcome, Stage};

/// GPT partition name of the persistent data partition.
pub const DATA_PARTNAME: &str = "IMRS-DATA";
/// Where the data partition is mounted.
pub const DATA_MOUNT: &str = "/var/lib/imrs";
/// Volatile fallback.
pub const VOLATILE: &str = "/run/imrs";
/// State file name.
pub const STATE_FILE: &str = "first-boot.json";
/// State schema version.
pub const STATE_VERSION: u32 = 1;

/// One stage's saved outcome.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedStage {
    /// `passed`, `failed`, `not-built-yet`, `skipped`.
    pub status: String,
    /// Failure reason.
    #[serde(default)]
    pub reason: Option<String>,
    /// Seconds taken.
    pub seconds: f64,
    /// Boot number it was recorded in.
    pub boot: u64,
}

/// The saved state.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// Boots counted so far (this one included once started).
    pub boots: u64,
    /// The first boot passed every stage.
    pub first_boot_passed: bool,
    /// Latest outcome per stage.
    pub stages: BTreeMap<String, SavedStage>,
}

impl State {
    /// Whether `stage` passed in an earlier or this boot.
    pub fn passed(&self, stage: Stage) -> bool {
        self.stages
            .get(stage.name())
            .is_some_and(|s| s.status == "passed")
    }

    /// Records an outcome.
    pub fn record(&mut self, stage: Stage, outcome: &Outcome, seconds: f64) {
        let (status, reason) = match outcome {
            Outcome::Passed => ("passed", None),
            Outcome::Failed(r) => ("failed", Some(r.clone())),
            Outcome::NotBuiltYet => ("not-built-yet", None),
            Outcome::Skipped => ("skipped", None),
            Outcome::DoneEarlier => return,
        };
        self.stages.insert(
            stage.name().to_string(),
            SavedStage {
                status: status.into(),
                reason,
                seconds,
                boot: self.boots,
            },
        );
    }
}

/// A state directory and what is known about it.
#[derive(Debug)]
pub struct Store {
    /// The directory.
    pub dir: PathBuf,
    /// It survives reboots.
    pub persistent: bool,
}

/// Why state could not be saved.
#[derive(Debug, thiserror::Error)]
#[error("{path}: cannot save state")]
pub struct SaveError {
    /// File.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// Picks the state directory (see the module docs). `warn` receives what the console must say.
pub fn open(root: &Path, override_dir: Option<&str>, warn: &mut dyn FnMut(String)) -> Store {
    if let Some(d) = override_dir {
        let _ = std::fs::create_dir_all(d);
        return Store {
            dir: PathBuf::from(d),
            persistent: true,
        };
    }
    if let Some(dev) =
        crate::site::find_partition(&root.join("sys"), &root.join("dev"), DATA_PARTNAME)
    {
        let _ = std::fs::create_dir_all(DATA_MOUNT);
        match mount(
            Some(dev.as_path()),
            DATA_MOUNT,
            Some("ext4"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        ) {
            Ok(()) => {
                return Store {
                    dir: PathBuf::from(DATA_MOUNT),
                    persistent: true,
                };
            }
            Err(e) => warn(format!(
                "data partition {}: cannot mount ext4: {e}",
                dev.display()
            )),
        }
    }
    warn(format!(
        "no {DATA_PARTNAME} partition: state kept in volatile {VOLATILE}; a power cut repeats the first boot"
    ));
    let _ = std::fs::create_dir_all(VOLATILE);
    Store {
        dir: PathBuf::from(VOLATILE),
        persistent: false,
    }
}

impl Store {
    /// Loads the state; missing is fresh, unreadable or corrupt is fresh with a warning.
    pub fn load(&self, warn: &mut dyn FnMut(String)) -> State {
        let path = self.dir.join(STATE_FILE);
        let fresh = State {
            version: STATE_VERSION,
            ..State::default()
        };
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return fresh,
            Err(e) => {
                warn(format!(
                    "{}: unreadable ({e}); treating the state as unknown",
                    path.display()
                ));
                return fresh;
            }
        };
        match serde_json::from_slice::<State>(&bytes) {
            Ok(s) if s.version == STATE_VERSION => s,
            Ok(s) => {
                warn(format!(
                    "{}: state version {} unknown; treating the state as unknown",
                    path.display(),
                    s.version
                ));
                fresh
            }
            Err(e) => {
                warn(format!(
                    "{}: corrupt ({e}); treating the state as unknown",
                    path.display()
                ));
                fresh
            }
        }
    }

    /// Saves atomically: temp file, fsync, rename, fsync directory.
    pub fn save(&self, state: &State) -> Result<(), SaveError> {
        let path = self.dir.join(STATE_FILE);
        let tmp = self.dir.join(format!(".{STATE_FILE}.tmp"));
        let err = |source| SaveError {
            path: path.clone(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| err(std::io::Error::other(e)))?;
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(&bytes).map_err(err)?;
        f.sync_all().map_err(err)?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(err)?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_roundtrip_and_corrupt_is_unknown() {
        let d = tempfile::tempdir().unwrap();
        let mut warnings = Vec::new();
        let store = open(
            Path::new("/nonexistent"),
            Some(d.path().to_str().unwrap()),
            &mut |w| warnings.push(w),
        );
        let mut s = store.load(&mut |w| warnings.push(w));
        assert_eq!(
            s,
            State {
                version: STATE_VERSION,
                ..State::default()
            }
        );
        s.boots = 1;
        s.record(Stage::Platform, &Outcome::Passed, 0.5);
        s.record(Stage::Site, &Outcome::Failed("no site".into()), 0.1);
        store.save(&s).unwrap();
        let back = store.load(&mut |w| warnings.push(w));
        assert_eq!(back, s);
        assert!(back.passed(Stage::Platform) && !back.passed(Stage::Site));
        assert!(warnings.is_empty(), "{warnings:?}");
        std::fs::write(d.path().join(STATE_FILE), b"{\"version\": 1, \"boo").unwrap();
        let back = store.load(&mut |w| warnings.push(w));
        assert_eq!(back.boots, 0);
        assert!(warnings[0].contains("corrupt"), "{warnings:?}");
        assert!(!d.path().join(format!(".{STATE_FILE}.tmp")).exists());
    }
}
