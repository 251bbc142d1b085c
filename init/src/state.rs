//! Persistent boot state: each stage's outcome and timing, saved atomically (temp file, fsync,
//! rename, fsync directory) whenever it changes, so a power cut resumes where it stopped and a
//! passed first boot is never repeated (see [`crate::pipeline`] for which stages repeat).
//!
//! Where: `imrs.state=PATH` (tests), else the GPT partition named `IMRS-DATA` (ext4) mounted at
//! `/var/lib/imrs`, else volatile `/run/imrs` with a warning (the first boot then repeats after a
//! power cut). A state file that cannot be read or parsed is treated as unknown with a warning,
//! never a crash. Files: `state.json` ([`State`]) and `hardware-report.json` (the last hardware
//! report, for the phone-home report).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};

use imrs_config::stage::{Stage, Status};

use crate::outcome::Outcome;
use crate::pid1::Halt;

/// GPT partition name of the persistent data partition.
pub const DATA_PARTNAME: &str = "IMRS-DATA";
/// Where the data partition is mounted.
pub const DATA_MOUNT: &str = "/var/lib/imrs";
/// Volatile fallback.
pub const VOLATILE: &str = "/run/imrs";
/// State file name.
pub const STATE_FILE: &str = "state.json";
/// Hardware report file name.
pub const HARDWARE_REPORT: &str = "hardware-report.json";
/// State schema version.
pub const STATE_VERSION: u32 = 1;
/// The largest state file read (a state file is a few KiB): a larger one is unknown state.
pub const MAX_STATE_BYTES: u64 = 1024 * 1024;

/// Saving state failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Writing, syncing or renaming the file failed.
    #[error("{path}: cannot save")]
    Save {
        /// File.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The data partition could not be mounted.
    #[error("data partition {device}: cannot mount ext4 on {DATA_MOUNT}")]
    Mount {
        /// Device node.
        device: PathBuf,
        /// errno.
        #[source]
        source: nix::Error,
    },
}

/// One stage's saved outcome.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedStage {
    /// Status: `running`, `passed` or `failed` ("done earlier" keeps the earlier record).
    pub status: Status,
    /// Failure reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Something the stage wants recorded (e.g. the clock was taken from the RTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Seconds taken.
    pub seconds: f64,
    /// Boot number it was recorded in.
    pub boot: u64,
}

/// The last orderly shutdown.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shutdown {
    /// Boot it ended.
    pub boot: u64,
    /// `reboot`, `halt` or `poweroff`.
    pub how: String,
    /// Unix time.
    pub at: i64,
}

/// The saved state.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// Boots counted so far (this one included once started).
    pub boots: u64,
    /// The first boot passed every stage (written only after success).
    pub first_boot_passed: bool,
    /// Latest outcome per stage.
    pub stages: BTreeMap<String, SavedStage>,
    /// The last orderly shutdown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_shutdown: Option<Shutdown>,
}

impl State {
    /// Fresh state.
    pub fn fresh() -> State {
        State {
            version: STATE_VERSION,
            ..State::default()
        }
    }

    /// Whether `stage` passed in an earlier or this boot.
    pub fn passed(&self, stage: Stage) -> bool {
        self.stages
            .get(stage.name())
            .is_some_and(|s| s.status == Status::Passed)
    }

    /// Marks `stage` as running.
    pub fn start(&mut self, stage: Stage) {
        self.stages.insert(
            stage.name().to_string(),
            SavedStage {
                status: Status::Running,
                reason: None,
                note: None,
                seconds: 0.0,
                boot: self.boots,
            },
        );
    }

    /// Records an outcome ("done earlier" keeps the earlier record).
    pub fn record(&mut self, stage: Stage, outcome: &Outcome, seconds: f64, note: Vec<String>) {
        let (status, reason) = match outcome {
            Outcome::Passed => (Status::Passed, None),
            Outcome::Failed(r) => (Status::Failed, Some(r.clone())),
            Outcome::DoneEarlier => return,
        };
        self.stages.insert(
            stage.name().to_string(),
            SavedStage {
                status,
                reason,
                note: (!note.is_empty()).then(|| note.join("; ")),
                seconds,
                boot: self.boots,
            },
        );
    }

    /// Records an orderly shutdown.
    pub fn shutdown(&mut self, how: Halt, at: i64) {
        self.last_shutdown = Some(Shutdown {
            boot: self.boots,
            how: how.name().to_string(),
            at,
        });
    }
}

/// A state directory and what is known about it.
#[derive(Debug, Clone)]
pub struct Store {
    /// The directory.
    pub dir: PathBuf,
    /// It survives reboots.
    pub persistent: bool,
}

/// Picks the state directory (see the module docs). `mount_allowed`: the machine's init may
/// mount the data partition; tests and containers may not. `warn` receives what the console
/// must say.
pub fn open(
    root: &Path,
    override_dir: Option<&Path>,
    mount_allowed: bool,
    warn: &mut dyn FnMut(String),
) -> Store {
    if let Some(d) = override_dir {
        if let Err(e) = std::fs::create_dir_all(d) {
            warn(format!("{}: cannot create ({e})", d.display()));
        }
        return Store {
            dir: d.to_path_buf(),
            persistent: true,
        };
    }
    if let Some(dev) =
        crate::site::find_partition(&root.join("sys"), &root.join("dev"), DATA_PARTNAME)
    {
        if !mount_allowed {
            warn(format!(
                "data partition {} found but not mounted outside the machine role",
                dev.display()
            ));
        } else {
            // A disk bigger than the image: IMRS-DATA grows to its end first.
            if let Some(line) = crate::data_grow::grow_table(root, &dev) {
                crate::log::info(line);
            }
            let _ = std::fs::create_dir_all(DATA_MOUNT);
            match mount(
                Some(dev.as_path()),
                DATA_MOUNT,
                Some("ext4"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                None::<&str>,
            ) {
                Ok(()) => {
                    if let Some(line) = crate::data_grow::grow_fs(&dev, Path::new(DATA_MOUNT)) {
                        crate::log::info(line);
                    }
                    return Store {
                        dir: PathBuf::from(DATA_MOUNT),
                        persistent: true,
                    };
                }
                Err(source) => warn(crate::log::chain(&StateError::Mount {
                    device: dev,
                    source,
                })),
            }
        }
    }
    warn(format!(
        "no usable {DATA_PARTNAME} partition: state kept in volatile {VOLATILE}; a power cut repeats the first boot"
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
        let bytes = match imrs_config::fsutil::read_limited(&path, MAX_STATE_BYTES) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return State::fresh(),
            Err(e) => {
                warn(format!(
                    "{}: unreadable ({e}); treating the state as unknown",
                    path.display()
                ));
                return State::fresh();
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
                State::fresh()
            }
            Err(e) => {
                warn(format!(
                    "{}: corrupt ({e}); treating the state as unknown",
                    path.display()
                ));
                State::fresh()
            }
        }
    }

    /// Saves the state atomically.
    pub fn save(&self, state: &State) -> Result<(), StateError> {
        self.save_json(STATE_FILE, state)
    }

    /// Saves any value as JSON under `name`, atomically: temp file, fsync, rename, fsync dir.
    pub fn save_json<T: serde::Serialize>(&self, name: &str, value: &T) -> Result<(), StateError> {
        let path = self.dir.join(name);
        let err = |source| StateError::Save {
            path: path.clone(),
            source,
        };
        let mut bytes =
            serde_json::to_vec_pretty(value).map_err(|e| err(std::io::Error::other(e)))?;
        bytes.push(b'\n');
        imrs_config::fsutil::write_atomic(&path, &bytes, 0o644).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(d: &Path) -> Store {
        open(Path::new("/nonexistent"), Some(d), false, &mut |w| {
            panic!("unexpected warning {w}")
        })
    }

    #[test]
    fn save_load_roundtrip() {
        let d = tempfile::tempdir().unwrap();
        let store = store(d.path());
        let mut s = store.load(&mut |w| panic!("{w}"));
        assert_eq!(s, State::fresh());
        s.boots = 1;
        s.record(Stage::Platform, &Outcome::Passed, 0.5, vec![]);
        s.start(Stage::Site);
        store.save(&s).unwrap();
        s.record(
            Stage::Site,
            &Outcome::Failed("no site".into()),
            0.1,
            vec!["n".into()],
        );
        s.record(Stage::Hardware, &Outcome::DoneEarlier, 0.0, vec![]);
        s.shutdown(Halt::Reboot, 1_800_000_000);
        store.save(&s).unwrap();
        let back = store.load(&mut |w| panic!("{w}"));
        assert_eq!(back, s);
        assert!(back.passed(Stage::Platform) && !back.passed(Stage::Site));
        assert!(!back.stages.contains_key("hardware"));
        assert_eq!(back.last_shutdown.unwrap().how, "reboot");
        assert!(!d.path().join(format!(".{STATE_FILE}.tmp")).exists());
    }

    #[test]
    fn unusable_state_is_unknown_with_a_warning() {
        let cases: [(&str, &[u8], &str); 4] = [
            ("truncated", b"{\"version\": 1, \"boo", "corrupt"),
            ("not json", b"\x00\x01garbage", "corrupt"),
            ("unknown field", b"{\"version\":1,\"boots\":3,\"first_boot_passed\":false,\"stages\":{},\"extra\":1}", "corrupt"),
            ("future version", b"{\"version\":9,\"boots\":3,\"first_boot_passed\":true,\"stages\":{}}", "version 9"),
        ];
        for (what, bytes, expect) in cases {
            let d = tempfile::tempdir().unwrap();
            std::fs::write(d.path().join(STATE_FILE), bytes).unwrap();
            let mut warnings = Vec::new();
            let s = store(d.path()).load(&mut |w| warnings.push(w));
            assert_eq!(s, State::fresh(), "{what}");
            assert!(
                warnings.len() == 1 && warnings[0].contains(expect),
                "{what}: {warnings:?}"
            );
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]
        /// Whatever the disk holds in state.json, loading never panics: it is the saved state
        /// or unknown (fresh) state with a warning.
        #[test]
        fn damaged_state_files_never_panic(
            bytes in crate::fuzzing::damaged(valid_state_bytes())
        ) {
            let d = tempfile::tempdir().unwrap();
            std::fs::write(d.path().join(STATE_FILE), &bytes).unwrap();
            let mut warnings = Vec::new();
            let s = store(d.path()).load(&mut |w| warnings.push(w));
            proptest::prop_assert!(s.version == STATE_VERSION);
            proptest::prop_assert!(warnings.len() <= 1);
        }
    }

    fn valid_state_bytes() -> Vec<u8> {
        let mut s = State::fresh();
        s.boots = 3;
        s.record(Stage::Platform, &Outcome::Passed, 0.5, vec!["n".into()]);
        s.record(
            Stage::Zone,
            &Outcome::Failed("ZONEMD é".into()),
            1.25,
            vec![],
        );
        s.start(Stage::Dns);
        s.shutdown(Halt::Reboot, 1_800_000_000);
        serde_json::to_vec_pretty(&s).unwrap()
    }

    #[test]
    fn an_oversized_state_file_is_unknown_state() {
        let d = tempfile::tempdir().unwrap();
        let mut big = valid_state_bytes();
        big.resize(MAX_STATE_BYTES as usize + 1, b' ');
        std::fs::write(d.path().join(STATE_FILE), &big).unwrap();
        let mut warnings = Vec::new();
        assert_eq!(
            store(d.path()).load(&mut |w| warnings.push(w)),
            State::fresh()
        );
        assert!(warnings[0].contains("unreadable"), "{warnings:?}");
    }

    #[test]
    fn save_into_a_missing_directory_names_the_file() {
        let s = Store {
            dir: PathBuf::from("/nonexistent/imrs"),
            persistent: false,
        };
        let e = s.save(&State::fresh()).unwrap_err();
        assert!(
            e.to_string().contains("/nonexistent/imrs/state.json"),
            "{e}"
        );
    }
}
