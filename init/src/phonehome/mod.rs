//! Phone home, device side: sign each report with the device key, keep it in the persistent
//! outbox, and deliver it to the site's receiver in the background until acknowledged.
//!
//! - [`identity`]: the device key (provisioned, or made on first boot).
//! - [`outbox`]: reports waiting, one file each, surviving reboots.
//! - [`deliver`]: the HTTPS sender (pinned CA, backoff, acknowledgement rules).
//!
//! The pipeline calls [`PhoneHome::start`] once the site config is verified (with the
//! persistent state folder, or `/run/imrs` when there is none), then [`PhoneHome::report`] for
//! `install-passed`, `install-failed` and `boot`; neither waits on the network. Reports queued
//! by an earlier boot are sent by the first round.

pub mod deliver;
pub mod identity;
pub mod outbox;

use std::path::{Path, PathBuf};

use imrs_config::report::{self, Report, ReportError};
use imrs_config::site::PhoneHome as SitePhoneHome;

pub use deliver::{Deliverer, DeliveryConfig, Status};
pub use identity::Identity;
pub use outbox::Outbox;

/// Phone home could not start or queue a report.
#[derive(Debug, thiserror::Error)]
pub enum PhoneHomeError {
    /// The device key.
    #[error("device identity")]
    Identity(#[from] identity::IdentityError),
    /// The outbox.
    #[error("phone-home outbox")]
    Outbox(#[from] outbox::OutboxError),
    /// The delivery thread.
    #[error("phone-home delivery")]
    Deliver(#[from] deliver::DeliverError),
    /// The report itself is not valid (it would be refused by every receiver).
    #[error("report not queued")]
    Report(#[from] ReportError),
}

/// The running phone-home service.
#[derive(Debug)]
pub struct PhoneHome {
    identity: Identity,
    outbox: Outbox,
    deliverer: Deliverer,
}

impl PhoneHome {
    /// Loads or makes the device key in `state_dir`, opens its outbox and starts delivering to
    /// the site's receiver. `log` receives one line per delivery and (rate-limited) failure.
    pub fn start(
        state_dir: &Path,
        site: &SitePhoneHome,
        log: deliver::Log,
    ) -> Result<PhoneHome, PhoneHomeError> {
        Self::start_with(state_dir, DeliveryConfig::new(site), log)
    }

    /// [`PhoneHome::start`] with explicit delivery timings (tests, labs).
    pub fn start_with(
        state_dir: &Path,
        cfg: DeliveryConfig,
        log: deliver::Log,
    ) -> Result<PhoneHome, PhoneHomeError> {
        let identity = identity::load_or_create(state_dir)?;
        let outbox = Outbox::open(state_dir)?;
        log(&format!(
            "phone home: device key {} ({}, {}); {} report(s) waiting; receiver {}",
            identity.key_id,
            if identity.generated {
                "generated now"
            } else {
                "provisioned"
            },
            identity.path.display(),
            outbox.len()?,
            cfg.url
        ));
        let deliverer = Deliverer::start(outbox.clone(), cfg, log)?;
        Ok(PhoneHome {
            identity,
            outbox,
            deliverer,
        })
    }

    /// The device key id (log it at start: it is how the fleet list names this device).
    pub fn key_id(&self) -> &str {
        &self.identity.key_id
    }

    /// Whether the device key was generated now (no key was provisioned).
    pub fn key_generated(&self) -> bool {
        self.identity.generated
    }

    /// Signs `report`, stores it in the outbox and wakes the deliverer. Returns the outbox file.
    pub fn report(&self, report: &Report) -> Result<PathBuf, PhoneHomeError> {
        let path = queue(&self.outbox, &self.identity, report)?;
        self.deliverer.wake();
        Ok(path)
    }

    /// The signed commands the receiver's answers carried since the last call, oldest first.
    pub fn take_commands(&self) -> Vec<imrs_config::command::SignedCommand> {
        self.deliverer.take_commands()
    }

    /// Whether report `id` still waits in the outbox (not yet acknowledged).
    pub fn waiting(&self, id: &str) -> bool {
        self.outbox.contains(id)
    }

    /// Asks for a delivery round now (e.g. the network just came up).
    pub fn wake(&self) {
        self.deliverer.wake();
    }

    /// What delivery has done so far (`pending` counts the reports still in the outbox).
    pub fn status(&self) -> Status {
        let mut s = self.deliverer.status();
        if let Ok(n) = self.outbox.len() {
            s.pending = n;
        }
        s
    }

    /// Stops delivering (reports still waiting stay in the outbox for the next boot).
    pub fn stop(self) {
        self.deliverer.stop();
    }
}

/// Validates and signs `report` with the device key and stores it in `outbox`.
pub fn queue(
    outbox: &Outbox,
    identity: &Identity,
    report: &Report,
) -> Result<PathBuf, PhoneHomeError> {
    report::validate(report)?;
    let signed = report::sign(report, &identity.key);
    Ok(outbox.put(report.id.as_str(), &signed)?)
}
