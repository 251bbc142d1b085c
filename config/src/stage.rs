//! The boot pipeline's vocabulary, shared by every program that speaks of it: the init runs the
//! stages and prints their outcomes on the console, the installation report carries them, the
//! receiver stores them and the lab reads them back from the console.
//!
//! - [`Stage`]: the stages in pipeline order, with the names printed, saved and reported.
//! - [`Status`]: how far a stage got, with the words the console prints for each.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Pipeline stages, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// Mounts, image info, kernel modules.
    Platform,
    /// Signed site config.
    Site,
    /// Hardware acceptance against the profile.
    Hardware,
    /// Interfaces and routes.
    Network,
    /// A trustworthy clock.
    Clock,
    /// Root zone transfer and verification.
    Zone,
    /// The DNS service.
    Dns,
    /// BGP, gated on health.
    Bgp,
    /// The installation report.
    PhoneHome,
    /// Steady state.
    Steady,
}

impl Stage {
    /// Every stage in order.
    pub const ALL: [Stage; 10] = [
        Stage::Platform,
        Stage::Site,
        Stage::Hardware,
        Stage::Network,
        Stage::Clock,
        Stage::Zone,
        Stage::Dns,
        Stage::Bgp,
        Stage::PhoneHome,
        Stage::Steady,
    ];

    /// The stage after this one.
    pub fn next(self) -> Option<Stage> {
        let i = Stage::ALL.iter().position(|s| *s == self)?;
        Stage::ALL.get(i + 1).copied()
    }

    /// Runs on the first boot only: once passed, never repeated (hardware acceptance and the
    /// installation report). Every other stage sets up state a reboot loses, and runs on every
    /// boot.
    pub fn first_boot_only(self) -> bool {
        matches!(self, Stage::Hardware | Stage::PhoneHome)
    }

    /// Name as printed, saved and reported.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Platform => "platform",
            Stage::Site => "site",
            Stage::Hardware => "hardware",
            Stage::Network => "network",
            Stage::Clock => "clock",
            Stage::Zone => "zone",
            Stage::Dns => "dns",
            Stage::Bgp => "bgp",
            Stage::PhoneHome => "phone-home",
            Stage::Steady => "steady",
        }
    }

    /// The stage called `name`.
    pub fn from_name(name: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not a stage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a stage (one of platform, site, hardware, network, clock, zone, dns, bgp, phone-home, steady)"
)]
pub struct UnknownStage(pub String);

impl FromStr for Stage {
    type Err = UnknownStage;

    fn from_str(s: &str) -> Result<Stage, UnknownStage> {
        Stage::from_name(s).ok_or_else(|| UnknownStage(s.to_string()))
    }
}

/// How far a stage got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Started, not ended (if the boot is over, a power cut or a kill happened here).
    Running,
    /// Passed.
    Passed,
    /// Failed (a reason goes with it).
    Failed,
    /// A first-boot-only stage that passed in an earlier boot: not repeated.
    DoneEarlier,
    /// The pipeline stopped before it.
    NotReached,
}

impl Status {
    /// Every status.
    pub const ALL: [Status; 5] = [
        Status::Running,
        Status::Passed,
        Status::Failed,
        Status::DoneEarlier,
        Status::NotReached,
    ];

    /// The word the init prints on the console (`stage zone: PASSED (1.2 s)`, and in the boot
    /// summary).
    pub fn console_word(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Passed => "PASSED",
            Status::Failed => "FAILED",
            Status::DoneEarlier => "DONE EARLIER",
            Status::NotReached => "not reached",
        }
    }

    /// Reads a console word at the start of `text`: the status and the rest of the text.
    pub fn parse_console(text: &str) -> Option<(Status, &str)> {
        Status::ALL.into_iter().find_map(|st| {
            text.strip_prefix(st.console_word())
                .or_else(|| {
                    // Tolerate a different case (`RUNNING`).
                    let word = st.console_word();
                    let head = text.get(..word.len())?;
                    head.eq_ignore_ascii_case(word).then(|| &text[word.len()..])
                })
                .map(|rest| (st, rest))
        })
    }

    /// The pipeline goes on after a stage with this status.
    pub fn goes_on(self) -> bool {
        matches!(self, Status::Passed | Status::DoneEarlier)
    }

    /// The stage has ended (passed, failed or done earlier).
    pub fn ended(self) -> bool {
        matches!(self, Status::Passed | Status::Failed | Status::DoneEarlier)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.console_word())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_boot_classes() {
        for s in Stage::ALL {
            assert_eq!(Stage::from_name(s.name()), Some(s));
            assert_eq!(s.to_string().parse::<Stage>(), Ok(s));
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.name()));
        }
        let first: Vec<Stage> = Stage::ALL
            .into_iter()
            .filter(|s| s.first_boot_only())
            .collect();
        assert_eq!(first, [Stage::Hardware, Stage::PhoneHome]);
        assert_eq!(Stage::Steady.next(), None);
        assert_eq!(Stage::Platform.next(), Some(Stage::Site));
        assert!(
            "bogus"
                .parse::<Stage>()
                .unwrap_err()
                .to_string()
                .contains("\"bogus\"")
        );
    }

    #[test]
    fn console_words_parse_back() {
        for st in Status::ALL {
            let line = format!("{} (1.000 s)", st.console_word());
            assert_eq!(Status::parse_console(&line), Some((st, " (1.000 s)")));
        }
        assert_eq!(
            Status::parse_console("RUNNING"),
            Some((Status::Running, ""))
        );
        assert_eq!(Status::parse_console("NOT BUILT YET"), None);
        // Multi-byte text right after a short word must not panic.
        assert_eq!(Status::parse_console("é"), None);
    }

    #[test]
    fn statuses_serialise_kebab() {
        assert_eq!(
            serde_json::to_string(&Status::DoneEarlier).unwrap(),
            "\"done-earlier\""
        );
        assert_eq!(
            serde_json::to_string(&Status::NotReached).unwrap(),
            "\"not-reached\""
        );
    }
}
