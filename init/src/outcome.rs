//! How a stage ended, as the init knows it: the shared [`Status`] vocabulary plus the reason of
//! a failure, and the summary line of each stage.

use imrs_config::stage::{Stage, Status};

/// How a stage ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done.
    Passed,
    /// Failed, with the reason.
    Failed(String),
    /// A first-boot-only stage that passed in an earlier boot: not repeated.
    DoneEarlier,
}

impl Outcome {
    /// The shared status word for this outcome.
    pub fn status(&self) -> Status {
        match self {
            Outcome::Passed => Status::Passed,
            Outcome::Failed(_) => Status::Failed,
            Outcome::DoneEarlier => Status::DoneEarlier,
        }
    }

    /// The failure reason, if it failed.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Outcome::Failed(why) => Some(why),
            Outcome::Passed | Outcome::DoneEarlier => None,
        }
    }
}

/// One line of the summary.
#[derive(Debug, Clone)]
pub struct StageResult {
    /// Which stage.
    pub stage: Stage,
    /// How it ended; `None`: not reached.
    pub outcome: Option<Outcome>,
    /// How long it took.
    pub seconds: f64,
}

impl StageResult {
    /// The shared status word (`not reached` when it has no outcome).
    pub fn status(&self) -> Status {
        self.outcome
            .as_ref()
            .map_or(Status::NotReached, Outcome::status)
    }
}
