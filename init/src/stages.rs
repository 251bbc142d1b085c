//! The stages' bodies and what they share ([`Context`]): platform, site, hardware and clock
//! here; network, zone, dns, bgp and steady in [`crate::serve`]; phone-home in
//! [`crate::installation`].

use std::path::PathBuf;
use std::time::Duration;

use imrs_config::image::{IMAGE_INFO_PATH, ImageInfo};
use imrs_config::site::Site;

use crate::phonehome::PhoneHome;
use crate::pid1::Role;
use crate::pipeline::StageResult;
use crate::pipeline::{Outcome, Stage};
use crate::reaper::Reaper;
use crate::supervisor::Supervisor;
use crate::{clock, hardware, installation, log, modules, serve, site};

/// How long the hardware stage lets the kernel gather entropy (machine role).
const ENTROPY_WAIT: Duration = Duration::from_secs(10);

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
    pub serving: serve::Serving,
    /// How the clock was set (for the report).
    pub clock_source: String,
    /// The phone-home service, once started.
    pub phone: Option<PhoneHome>,
    /// The image manifest's sha256 when the boot loader passed it (`imrs.manifest=`).
    pub manifest_sha256: Option<String>,
}

/// Reads `image.json` under `root`.
pub fn read_image(root: &std::path::Path) -> Result<ImageInfo, String> {
    let path = root.join(IMAGE_INFO_PATH.trim_start_matches('/'));
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Runs one stage; `results` are the outcomes so far (for the phone-home report).
pub async fn run(stage: Stage, ctx: &mut Context, results: &[StageResult]) -> Outcome {
    match stage {
        Stage::Platform => platform(ctx),
        Stage::Site => site_stage(ctx),
        Stage::Hardware => hardware_stage(ctx).await,
        Stage::Network => serve::network_stage(ctx).await,
        Stage::Clock => clock_stage(ctx).await,
        Stage::Zone => serve::zone_stage(ctx).await,
        Stage::Dns => serve::dns_stage(ctx).await,
        Stage::Bgp => serve::bgp_stage(ctx).await,
        Stage::PhoneHome => installation::phone_home_stage(ctx, results),
        Stage::Steady => serve::steady_stage(ctx).await,
    }
}

/// Loads the image's kernel modules (machine role; elsewhere only checks they are there).
/// Runs before the pipeline: the data partition holding the state needs its disk and
/// filesystem drivers. Failures are kept for the hardware stage, which reports each as a
/// failed check.
pub async fn load_modules(ctx: &mut Context) {
    let Ok(info) = &ctx.image else { return };
    let info = info.clone();
    let root = ctx.root.clone();
    let load = ctx.role == Role::Machine;
    let t = std::time::Instant::now();
    let loaded = tokio::task::spawn_blocking(move || {
        modules::load_all(&root, &info.kernel_release, &info.modules, load)
    })
    .await
    .unwrap_or_else(|e| modules::Loaded {
        failures: vec![modules::ModuleFailure {
            module: "*".into(),
            reason: format!("module loader crashed: {e}"),
        }],
        ..Default::default()
    });
    for f in &loaded.failures {
        log::error(format!("kernel module {}: {}", f.module, f.reason));
    }
    let slowest: Vec<String> = loaded
        .timings
        .iter()
        .take(3)
        .map(|(m, s)| {
            let name = m.rsplit('/').next().unwrap_or(m);
            format!("{name} {:.0} ms", s * 1000.0)
        })
        .collect();
    log::info(format!(
        "{} kernel modules {} in {:.2} s (slowest: {})",
        loaded.ok,
        if load {
            "loaded"
        } else {
            "present (not loaded outside the machine role)"
        },
        t.elapsed().as_secs_f64(),
        slowest.join(", ")
    ));
    let failures = loaded.failures;
    ctx.module_failures = failures;
}

/// Mounts succeeded and the image describes itself. Module failures (loaded before the
/// pipeline by [`load_modules`]) are noted here and fail the hardware stage as named checks.
fn platform(ctx: &mut Context) -> Outcome {
    if !ctx.mount_errors.is_empty() {
        return Outcome::Failed(ctx.mount_errors.join("; "));
    }
    if let Err(e) = &ctx.image {
        return Outcome::Failed(format!("no image info: {e}"));
    }
    if !ctx.module_failures.is_empty() {
        ctx.notes.push(format!(
            "{} kernel modules failed (reported by the hardware stage)",
            ctx.module_failures.len()
        ));
    }
    Outcome::Passed
}

fn site_stage(ctx: &mut Context) -> Outcome {
    match site::load(&ctx.root, ctx.role == Role::Machine) {
        Ok((s, from)) => {
            log::info(format!(
                "site config from {from}: instance {}, site {}{}",
                s.instance,
                s.site_id,
                if s.lab { ", LAB SITE" } else { "" }
            ));
            ctx.notes.push(format!("from {from}"));
            ctx.site = Some(s);
            Outcome::Passed
        }
        Err(e) => Outcome::Failed(format!(
            "{}; staying off the air (no DNS, no BGP)",
            log::chain(&e)
        )),
    }
}

/// Makes the kernel's CRNG ready if it can be: on Linux 6.1 a blocking `getrandom` runs the
/// jitter entropy generator until it is. Bounded by [`ENTROPY_WAIT`]; the entropy check then
/// reads the result.
async fn wait_for_entropy() {
    let t = tokio::task::spawn_blocking(|| {
        let mut b = [0u8; 1];
        // SAFETY: getrandom writes at most `b.len()` bytes into the valid buffer `b`.
        unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) }
    });
    if tokio::time::timeout(ENTROPY_WAIT, t).await.is_err() {
        log::warn(format!(
            "kernel entropy not ready after {} s",
            ENTROPY_WAIT.as_secs()
        ));
    }
}

async fn hardware_stage(ctx: &mut Context) -> Outcome {
    let info = match &ctx.image {
        Ok(i) => i.clone(),
        Err(_) => return Outcome::Failed("no image info: no profile to check against".into()),
    };
    if ctx.role == Role::Machine {
        wait_for_entropy().await;
    }
    let root = ctx.root.clone();
    let failures = ctx.module_failures.clone();
    let report = match tokio::task::spawn_blocking(move || {
        hardware::check(&root, &info.profile, info.source_date_epoch, &failures)
    })
    .await
    {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(format!("hardware checks crashed: {e}")),
    };
    for c in &report.checks {
        let line = format!(
            "hardware {}: {} (required {})",
            c.name, c.measured, c.required
        );
        match c.status {
            hardware::Status::Fail => log::error(format!("{line}: FAIL")),
            hardware::Status::Warn => log::warn(line),
            hardware::Status::Pass => log::info(format!("{line}: ok")),
        }
    }
    let outcome = if report.passed() {
        log::info(format!(
            "hardware matches profile {} ({} checks, {} warnings)",
            report.profile,
            report.checks.len(),
            report.warnings().len()
        ));
        Outcome::Passed
    } else {
        let names: Vec<String> = report
            .failures()
            .iter()
            .map(|c| format!("{}: {}, required {}", c.name, c.measured, c.required))
            .collect();
        Outcome::Failed(format!("profile {}: {}", report.profile, names.join("; ")))
    };
    ctx.hardware = Some(report);
    outcome
}

async fn clock_stage(ctx: &mut Context) -> Outcome {
    let (Ok(info), Some(site)) = (&ctx.image, &ctx.site) else {
        return Outcome::Failed("no image info or site config".into());
    };
    let epoch = info.source_date_epoch;
    let now = clock::unix_now();
    if now < epoch {
        let msg = format!("clock {now} is behind the image build time {epoch}");
        if ctx.role == Role::Machine {
            match clock::set_floor(epoch) {
                Ok(()) => log::warn(format!("{msg}: set to it as a floor")),
                Err(e) => log::error(log::chain(&e)),
            }
        } else {
            log::warn(format!("{msg}: not set outside the machine role"));
        }
        ctx.notes.push(format!("{msg}: floor applied"));
    }
    let chronyd = ctx.root.join(clock::CHRONYD);
    let chronyd = chronyd.exists().then_some(chronyd);
    let run_dir = ctx.root.join("run/imrs");
    let _ = std::fs::create_dir_all(&run_dir);
    match clock::plan(now, epoch, &site.ntp, chronyd.as_deref(), &run_dir) {
        clock::Plan::Fail(e) => Outcome::Failed(e.to_string()),
        clock::Plan::TrustRtc => {
            let msg = format!(
                "clock {now} taken from the RTC without confirmation: trust_rtc = true (LAB)"
            );
            log::warn(&msg);
            ctx.notes.push(msg);
            ctx.clock_source = "rtc (trust_rtc = true, lab)".into();
            Outcome::Passed
        }
        clock::Plan::Ntp { program, args } => {
            let servers = site.ntp.servers.clone();
            log::info(format!(
                "setting the clock from NTP ({} servers)",
                servers.len()
            ));
            match clock::run_ntp(&ctx.reaper, &program, &args, &servers, clock::NTP_TIMEOUT).await {
                Err(e) => Outcome::Failed(e.to_string()),
                Ok(()) => {
                    let after = clock::unix_now();
                    if after < epoch {
                        return Outcome::Failed(
                            clock::ClockError::StillBehind { now: after, epoch }.to_string(),
                        );
                    }
                    ctx.notes.push(format!("clock set by NTP: {after}"));
                    let list: Vec<String> = servers.iter().map(|s| s.to_string()).collect();
                    ctx.clock_source = format!("ntp ({})", list.join(", "));
                    Outcome::Passed
                }
            }
        }
    }
}
