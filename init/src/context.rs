//! What the boot knows, shared by the stages ([`Context`]), and what the serving stages built
//! for the ones after them ([`Serving`]).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use imrs_config::image::{IMAGE_INFO_PATH, ImageInfo};
use imrs_config::report::InterfaceReport;
use imrs_config::site::Site;
use imrs_zone::accept::AcceptedRecord;
use tokio::sync::watch;

use crate::bgp::BirdDaemon;
use crate::dns::DnsConfig;
use crate::hardware;
use crate::health::Desired;
use crate::health::driver::SharedInputs;
use crate::modules;
use crate::phonehome::PhoneHome;
use crate::pid1::Role;
use crate::reaper::Reaper;
use crate::rootzone::ZoneSetup;
use crate::supervisor::Supervisor;

/// What the boot knows, shared by the stages.
pub struct Context {
    /// Root of every file the stages read (`imrs.root`).
    pub root: PathBuf,
    /// The init's role.
    pub role: Role,
    /// The image's description of itself, or why it is unusable.
    pub image: Result<ImageInfo, String>,
    /// Kernel filesystems that failed to mount.
    pub mount_errors: Vec<String>,
    /// The verified site config.
    pub site: Option<Site>,
    /// Kernel modules that did not load (reported by the hardware stage).
    pub module_failures: Vec<modules::ModuleFailure>,
    /// The hardware report.
    pub hardware: Option<hardware::Report>,
    /// The one reaper, for helper commands.
    pub reaper: Reaper,
    /// Notes the running stage wants recorded in the state file.
    pub notes: Vec<String>,
    /// The state folder (persistent data partition, or volatile `/run/imrs`).
    pub state_dir: PathBuf,
    /// The daemons' supervisor.
    pub supervisor: Supervisor,
    /// What the serving stages built.
    pub serving: Serving,
    /// How the clock was set (for the report).
    pub clock_source: String,
    /// How often the clock is set again once serving (`imrs.clock_resync`).
    pub clock_resync: std::time::Duration,
    /// The phone-home service, once started.
    pub phone: Option<PhoneHome>,
    /// The image manifest's sha256 when the boot loader passed it (`imrs.manifest=`).
    pub manifest_sha256: Option<String>,
    /// The boot loader entry this boot was started from ([`crate::slots`]).
    pub boot_entry: crate::slots::BootEntry,
    /// The disk slot on the command line (`imrs.slot=`), absent when booted directly.
    pub slot: Option<imrs_disk::Slot>,
    /// Why this boot runs instead of a slot that failed its trial ([`crate::slot_history`]).
    pub slot_fallback: Option<String>,
    /// The RSSAC002 collector, when the site asks for telemetry ([`crate::telemetry`]).
    pub telemetry: Option<crate::telemetry::keeper::Keeper>,
}

/// What the serving stages built, for the later stages and the phone-home report.
#[derive(Default)]
pub struct Serving {
    /// Interfaces and addresses after the network stage.
    pub interfaces: Vec<InterfaceReport>,
    /// Where zones come from and go.
    pub zone_setup: Option<ZoneSetup>,
    /// The zone being served.
    pub zone: Option<AcceptedRecord>,
    /// The DNS daemon's configuration.
    pub dns: Option<DnsConfig>,
    /// Readiness detail (`None`: not ready).
    pub dns_ready: Option<String>,
    /// BIRD.
    pub bird: Option<BirdDaemon>,
    /// BIRD's state under the supervisor, once started (early, after the network stage, or by
    /// the bgp stage).
    pub bird_state: Option<tokio::sync::watch::Receiver<crate::supervisor::DaemonState>>,
    /// What ran alongside the stages, for the summary.
    pub in_parallel: Vec<String>,
    /// Inputs of the health loop (zone serial and expiry, drain switch).
    pub inputs: SharedInputs,
    /// What the health loop wants announced and served.
    pub desired: Option<watch::Receiver<Desired>>,
    /// Stops the health loop at shutdown.
    pub health_stop: Arc<AtomicBool>,
    /// The health loop's thread (joined when the bgp stage runs again).
    pub health_thread: Option<std::thread::JoinHandle<()>>,
    /// Duplicate address detection on the management links, still running after the network
    /// stage (optimistic addresses); its verdict: `Err` names a duplicate.
    pub dad: Option<tokio::task::JoinHandle<Result<(), String>>>,
    /// A duplicate the detection found (kept: the bgp stage fails on it every time).
    pub dad_failure: Option<String>,
    /// What sets the clock again while the box runs, when the clock stage set it from NTS or
    /// NTP (the steady stage starts it).
    pub clock_keeper: Option<crate::clock::Keeper>,
}

impl Context {
    /// A daemon's private run folder: `/run/imrs/<daemon>` as the machine's init,
    /// `<state>/run/<daemon>` otherwise (so tests do not share `/run`).
    pub fn run_dir(&self, daemon: &str) -> PathBuf {
        match self.role {
            Role::Machine => PathBuf::from("/run/imrs").join(daemon),
            _ => self.state_dir.join("run").join(daemon),
        }
    }

    /// The site's two service addresses on `port` (none before the site stage).
    pub fn service_targets(&self, port: u16) -> Vec<SocketAddr> {
        self.site
            .as_ref()
            .map(|s| {
                vec![
                    SocketAddr::new(IpAddr::V4(s.service.ipv4), port),
                    SocketAddr::new(IpAddr::V6(s.service.ipv6), port),
                ]
            })
            .unwrap_or_default()
    }
}

/// Reads `image.json` under `root`.
pub fn read_image(root: &Path) -> Result<ImageInfo, String> {
    let path = root.join(IMAGE_INFO_PATH.trim_start_matches('/'));
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}
