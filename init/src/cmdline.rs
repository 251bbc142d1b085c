//! Kernel command-line parameters the init understands (all prefixed `imrs.`), and the one
//! environment hook for tests.
//!
//! | parameter | meaning |
//! |---|---|
//! | `imrs.poweroff_after_boot=1` | once the boot pipeline has gone as far as it can and the summary is printed, shut down cleanly and power off (CI and the QEMU boot test end this way); a failed stage is not tried again |
//! | `imrs.state=PATH` | state directory (default: the `IMRS-DATA` partition at `/var/lib/imrs`, else `/run/imrs`) |
//! | `imrs.root=PATH` | root under which the pipeline reads everything: `etc/imrs/*`, `lib/modules`, `sys`, `proc`, `dev`, `usr/sbin/chronyd` (default `/`; tests point it at a fixture tree) |
//! | `imrs.supervise=PATH` | supervise the program `PATH` (no arguments) as a daemon from boot; repeatable (tests; real daemons are started by their stages) |
//! | `imrs.stop_after=STAGE` | end the pipeline after `STAGE` passes (later stages "not reached", the summary printed as usual): a bench check of the hardware before shipment (`imrs.stop_after=hardware`), or a boot test without the lab network |
//! | `imrs.hold=STAGE` | stop before running `STAGE` and wait (tests: kill the init at a known stage) |
//! | `imrs.manifest=SHA256` | the sha256 of the image's signed manifest, as the boot loader (or `imrs-build boot`/`lab`) knows it; carried in phone-home reports (the manifest covers the initramfs, so the image cannot carry its own digest) |
//! | `imrs.slot=a\|b` | the disk slot the boot loader started this image from (its entry's `options`, written by `imrs_disk`); absent when the kernel was booted directly (`imrs-build boot`/`lab`) |
//! | `imrs.fake_time=UNIX` | test hook, ignored (with a warning) as the machine's init: the init's clock reads start at this Unix time (the real zone's signatures need a time inside their window; a network namespace cannot have its own clock) |
//! | `imrs.grace=SECONDS` | grace between SIGTERM and SIGKILL at shutdown (default 5) |
//! | `imrs.clock_resync=SECONDS` | how often the clock is set again from the site's NTS or NTP servers once the box serves (10 to 86400; default 21600, each wait moved by up to a tenth); the lab's NTS runs use 20 |
//!
//! Unknown or malformed `imrs.*` parameters are reported on the console, never ignored silently.
//!
//! Environment hook: when the init is *not* the machine's PID 1 (a PID namespace or a plain
//! child, see [`crate::pid1::Role`]), `IMRS_INIT_CMDLINE` is read instead of `/proc/cmdline`.
//! The machine's init ignores it: the kernel turns unknown `key=value` boot parameters into
//! environment variables, and those must not change behaviour.

use std::path::PathBuf;
use std::time::Duration;

use imrs_config::stage::Stage;

/// Environment variable read instead of `/proc/cmdline` outside the machine's PID 1.
pub const CMDLINE_ENV: &str = "IMRS_INIT_CMDLINE";

/// Default grace period between SIGTERM and SIGKILL at shutdown.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

/// A parameter that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmdlineError {
    /// An `imrs.*` key this build does not know.
    #[error("unknown kernel parameter {word}: ignored")]
    Unknown {
        /// The whole word.
        word: String,
    },
    /// A known key with a value that does not parse.
    #[error("kernel parameter {word}: {expected}; ignored")]
    BadValue {
        /// The whole word.
        word: String,
        /// What the value must be.
        expected: &'static str,
    },
}

/// Parsed parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `imrs.poweroff_after_boot=1`.
    pub poweroff_after_boot: bool,
    /// `imrs.state=PATH`.
    pub state_dir: Option<PathBuf>,
    /// `imrs.root=PATH`.
    pub root: PathBuf,
    /// `imrs.supervise=PATH`, in order.
    pub supervise: Vec<PathBuf>,
    /// `imrs.hold=STAGE`.
    pub hold: Option<Stage>,
    /// `imrs.stop_after=STAGE`.
    pub stop_after: Option<Stage>,
    /// `imrs.grace=SECONDS`.
    pub grace: Duration,
    /// `imrs.manifest=SHA256`.
    pub manifest: Option<String>,
    /// `imrs.fake_time=UNIX`.
    pub fake_time: Option<i64>,
    /// `imrs.slot=a|b`.
    pub slot: Option<imrs_disk::Slot>,
    /// `imrs.clock_resync=SECONDS`.
    pub clock_resync: Duration,
    /// Parameters that could not be used.
    pub problems: Vec<CmdlineError>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            poweroff_after_boot: false,
            state_dir: None,
            root: PathBuf::from("/"),
            supervise: Vec::new(),
            hold: None,
            grace: DEFAULT_GRACE,
            manifest: None,
            stop_after: None,
            fake_time: None,
            slot: None,
            clock_resync: crate::clock::RESYNC_EVERY,
            problems: Vec::new(),
        }
    }
}

fn flag(value: &str) -> Option<bool> {
    match value {
        "1" | "yes" | "true" => Some(true),
        "0" | "no" | "false" => Some(false),
        _ => None,
    }
}

impl Settings {
    /// Drops every test hook (`imrs.root`, `imrs.supervise`, `imrs.hold`, `imrs.state`,
    /// `imrs.fake_time`) and returns the names of those that were given: as the machine's init
    /// of an image not built for tests, nothing on the boot loader's command line may swap the
    /// files the init trusts, start programs, hold the boot or shift its clock.
    pub fn drop_test_hooks(&mut self) -> Vec<&'static str> {
        let defaults = Settings::default();
        let mut dropped = Vec::new();
        if self.root != defaults.root {
            dropped.push("root");
            self.root = defaults.root;
        }
        if !self.supervise.is_empty() {
            dropped.push("supervise");
            self.supervise.clear();
        }
        if self.hold.take().is_some() {
            dropped.push("hold");
        }
        if self.state_dir.take().is_some() {
            dropped.push("state");
        }
        if self.fake_time.take().is_some() {
            dropped.push("fake_time");
        }
        dropped
    }
}

/// Parses command-line text.
pub fn parse(text: &str) -> Settings {
    let mut s = Settings::default();
    for word in text.split_whitespace() {
        let Some(rest) = word.strip_prefix("imrs.") else {
            continue;
        };
        let (key, value) = rest.split_once('=').unwrap_or((rest, "1"));
        let bad = |expected| CmdlineError::BadValue {
            word: word.to_string(),
            expected,
        };
        let absolute = |v: &str| {
            let p = PathBuf::from(v);
            p.is_absolute().then_some(p)
        };
        let result = match key {
            "poweroff_after_boot" => flag(value)
                .map(|b| s.poweroff_after_boot = b)
                .ok_or(bad("0 or 1")),
            "state" => absolute(value)
                .map(|p| s.state_dir = Some(p))
                .ok_or(bad("an absolute path")),
            "root" => absolute(value)
                .map(|p| s.root = p)
                .ok_or(bad("an absolute path")),
            "supervise" => absolute(value)
                .map(|p| s.supervise.push(p))
                .ok_or(bad("an absolute path")),
            "stop_after" => Stage::from_name(value)
                .map(|st| s.stop_after = Some(st))
                .ok_or(bad("a stage name")),
            "hold" => Stage::from_name(value)
                .map(|st| s.hold = Some(st))
                .ok_or(bad("a stage name")),
            "manifest" => Some(value)
                .filter(|v| {
                    v.len() == 64
                        && v.bytes()
                            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                })
                .map(|v| s.manifest = Some(v.to_string()))
                .ok_or(bad("64 lowercase hex digits")),
            "slot" => imrs_disk::Slot::parse(value)
                .map(|slot| s.slot = Some(slot))
                .ok_or(bad("a or b")),
            "fake_time" => value
                .parse::<i64>()
                .ok()
                .filter(|t| *t > 0)
                .map(|t| s.fake_time = Some(t))
                .ok_or(bad("Unix seconds")),
            "clock_resync" => value
                .parse::<u64>()
                .ok()
                .filter(|t| (10..=86_400).contains(t))
                .map(|t| s.clock_resync = Duration::from_secs(t))
                .ok_or(bad("seconds, 10 to 86400")),
            "grace" => value
                .parse::<f64>()
                .ok()
                .filter(|g| g.is_finite() && (0.0..=600.0).contains(g))
                .map(|g| s.grace = Duration::from_secs_f64(g))
                .ok_or(bad("seconds, 0 to 600")),
            _ => Err(CmdlineError::Unknown {
                word: word.to_string(),
            }),
        };
        if let Err(e) = result {
            s.problems.push(e);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_hooks_are_dropped_and_named() {
        let mut s = parse(
            "imrs.root=/tmp/fake imrs.supervise=/bin/sh imrs.hold=zone imrs.state=/tmp/s \
             imrs.fake_time=1 imrs.stop_after=hardware imrs.manifest=",
        );
        let dropped = s.drop_test_hooks();
        assert_eq!(dropped, ["root", "supervise", "hold", "state", "fake_time"]);
        assert_eq!(s.root, Settings::default().root);
        assert!(s.supervise.is_empty() && s.hold.is_none() && s.state_dir.is_none());
        assert!(s.fake_time.is_none());
        // Boot parameters that are not test hooks stay.
        assert_eq!(s.stop_after, Some(Stage::Hardware));
        assert!(
            parse("imrs.poweroff_after_boot=1")
                .drop_test_hooks()
                .is_empty()
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]
        /// Whatever the boot loader passes, parsing never panics.
        #[test]
        fn damaged_command_lines_never_panic(bytes in crate::fuzzing::damaged(
            b"console=ttyS0 imrs.state=/var/lib/imrs imrs.hold=zone imrs.stop_after=hardware \
              imrs.manifest=0123abcd imrs.fake_time=1785542400 imrs.grace=5 \
              imrs.poweroff_after_boot=1 imrs.supervise=/bin/x imrs.slot=a \
              imrs.clock_resync=60".to_vec()
        )) {
            let _ = parse(&String::from_utf8_lossy(&bytes));
        }
    }

    #[test]
    fn parses_known_and_reports_unknown_and_bad() {
        let s = parse(
            "console=ttyS0 imrs.poweroff_after_boot=1 imrs.state=/x imrs.colour=red quiet \
             imrs.root=/fx imrs.supervise=/a imrs.supervise=/b imrs.hold=clock imrs.grace=0.5 \
             imrs.state=relative imrs.hold=lunch imrs.slot=b imrs.slot=ab imrs.clock_resync=20 \
             imrs.clock_resync=5",
        );
        assert_eq!(s.clock_resync, Duration::from_secs(20));
        assert!(s.poweroff_after_boot);
        assert_eq!(s.state_dir, Some(PathBuf::from("/x")));
        assert_eq!(s.root, PathBuf::from("/fx"));
        assert_eq!(s.supervise, vec![PathBuf::from("/a"), PathBuf::from("/b")]);
        assert_eq!(s.hold, Some(Stage::Clock));
        assert_eq!(s.grace, Duration::from_millis(500));
        assert_eq!(s.slot, Some(imrs_disk::Slot::B));
        assert_eq!(
            s.problems,
            vec![
                CmdlineError::Unknown {
                    word: "imrs.colour=red".into()
                },
                CmdlineError::BadValue {
                    word: "imrs.state=relative".into(),
                    expected: "an absolute path"
                },
                CmdlineError::BadValue {
                    word: "imrs.hold=lunch".into(),
                    expected: "a stage name"
                },
                CmdlineError::BadValue {
                    word: "imrs.slot=ab".into(),
                    expected: "a or b"
                },
                CmdlineError::BadValue {
                    word: "imrs.clock_resync=5".into(),
                    expected: "seconds, 10 to 86400"
                },
            ]
        );
    }

    #[test]
    fn flags_and_defaults() {
        let table = [
            ("", false),
            ("imrs.poweroff_after_boot", true),
            ("imrs.poweroff_after_boot=1", true),
            ("imrs.poweroff_after_boot=0", false),
            ("imrs.poweroff_after_boot=maybe", false),
        ];
        for (text, want) in table {
            assert_eq!(parse(text).poweroff_after_boot, want, "{text}");
        }
        let d = parse("ro quiet");
        assert_eq!(d, Settings::default());
        assert_eq!(d.grace, DEFAULT_GRACE);
        assert_eq!(d.clock_resync, crate::clock::RESYNC_EVERY);
    }
}
