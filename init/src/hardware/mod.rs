//! Hardware acceptance: the machine against its profile (`imrs_config::profile`). Every check
//! reads through a root path (`/` on the appliance, a fixture tree in tests) and gives pass, warn
//! or fail with the measured and the required value. The report is typed and serialisable: the
//! phone-home report carries it.
//!
//! Sources: DMI `sys/class/dmi/id`, `proc/cpuinfo`, `proc/meminfo`, EDAC
//! `sys/devices/system/edac/mc`, `sys/class/net`, `sys/class/block`, `sys/class/tpm`,
//! `sys/class/rtc/rtc0/since_epoch`, `proc/sys/kernel/random/entropy_avail` (on Linux 6.1 it
//! reads 256 once the CRNG is initialised: the proxy for "entropy ready"). Kernel modules that
//! did not load are reported here too, each as a failed check.

mod checks;
#[cfg(test)]
mod tests;

use std::path::Path;

use imrs_config::profile::{Need, Profile};

pub use checks::run_checks;

/// Result of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Meets the profile.
    Pass,
    /// Short of a preferred property; does not stop the boot.
    Warn,
    /// Short of a required property: the node stays off the air.
    Fail,
}

/// One check with what was measured and what the profile requires.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Check {
    /// Check name, e.g. `cpu.count`, `nic.eth0.speed`, `module:virtio_net`.
    pub name: String,
    /// Outcome.
    pub status: Status,
    /// What the machine has.
    pub measured: String,
    /// What the profile asks for.
    pub required: String,
}

/// The whole hardware report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    /// Profile checked against.
    pub profile: String,
    /// Every check in order.
    pub checks: Vec<Check>,
}

impl Report {
    /// No check failed.
    pub fn passed(&self) -> bool {
        !self.checks.iter().any(|c| c.status == Status::Fail)
    }

    /// The failed checks.
    pub fn failures(&self) -> Vec<&Check> {
        self.checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .collect()
    }

    /// The warnings.
    pub fn warnings(&self) -> Vec<&Check> {
        self.checks
            .iter()
            .filter(|c| c.status == Status::Warn)
            .collect()
    }
}

/// Status for a property that is `ok` or not, by how much the profile needs it. `None` when the
/// profile ignores it.
pub(crate) fn judge(ok: bool, need: Need) -> Option<Status> {
    match (ok, need) {
        (_, Need::Ignored) => None,
        (true, _) => Some(Status::Pass),
        (false, Need::Required) => Some(Status::Fail),
        (false, Need::Preferred) => Some(Status::Warn),
    }
}

/// Checks the machine under `root` against `profile`. `epoch` is the image's build time (the
/// RTC may not be earlier); `module_failures` are the modules the platform stage could not load.
pub fn check(
    root: &Path,
    profile: &Profile,
    epoch: i64,
    module_failures: &[crate::modules::ModuleFailure],
) -> Report {
    let mut checks = run_checks(root, profile, epoch);
    for f in module_failures {
        checks.push(Check {
            name: format!("module:{}", f.module),
            status: Status::Fail,
            measured: f.reason.clone(),
            required: "loaded".into(),
        });
    }
    Report {
        profile: profile.name.clone(),
        checks,
    }
}
