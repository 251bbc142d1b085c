//! `imrs-build lab`: boots an appliance image under QEMU inside a simulated host organisation
//! network and reports what a host would see (issue #7, "the lab").
//!
//! The run: obtain the root zone to serve ([`zone`]: the bundled one, a file, or the live one
//! from ICANN); build the image (from a recipe) or take an image folder; verify the zone against
//! the image's anchors at the guest's clock; write a signed copy of the lab site config with a
//! fresh phone-home CA ([`site`]); make the guest's disk with the config
//! and data partitions ([`disk`]); create a network namespace with a tap (addresses from
//! [`plan`]); start the router (`--router`: FRR or GoBGP), the transfer server (NSD, [`xfr`]) and
//! the phone-home receiver ([`receiver`]) with the operators' pages ([`operators`]) and the
//! host organisation's inboxes for its notices ([`notices`]); boot QEMU in the namespace
//! ([`vm`]), follow the console's stage lines ([`console`]), poll the router, the service
//! addresses ([`probe`]) and the receiver, as the scenario says ([`scenario`]); then print the
//! outcome ([`summary`]).
//! The namespace, the processes, the router and NSD are the host side of the cable that the
//! tests use too ([`crate::host`]). Everything started is stopped by `Drop` guards, on success,
//! on error and on Ctrl-C ([`crate::host::signal`]).
//!
//! The lab's defaults (the site config `images/sites/lab.toml`, the bundled zone in
//! `testdata/rootzone`) are read from the imrs workspace found above the recipe or image folder,
//! else above the current directory ([`crate::workspace`]), never from where this binary was
//! compiled.
//!
//! The lab never sends a packet to a public address: every address comes from the site config
//! and must be a documentation address ([`plan`]). The one exception is asked for by name:
//! `--zone live` transfers the root zone from ICANN's transfer servers, from the host, before
//! anything else starts.

pub mod console;
pub mod disk;
pub mod exposure;
pub mod notices;
pub mod operators;
pub mod plan;
pub mod probe;
pub mod reach;
pub mod receiver;
pub mod scenario;
pub mod site;
pub mod summary;
pub mod telemetry;
pub mod vm;
pub mod xfr;
pub mod zone;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use imrs_config::keys;

use crate::host::router::RouterKind;
use crate::host::signal;
use crate::qemu::Accel;
use crate::ui::Ui;
pub use scenario::Scenario;

/// Accelerator choice for the lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LabAccel {
    /// KVM if a probe VM shows it works, else TCG.
    Auto,
    /// Software emulation.
    Tcg,
    /// Hardware virtualisation (fails where nested KVM is broken).
    Kvm,
}

/// How the lab boots the appliance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LabBoot {
    /// The image's kernel, started by QEMU.
    Kernel,
    /// The appliance disk, through UEFI.
    Disk,
}

/// `imrs-build lab` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct LabArgs {
    /// A recipe (`*.toml`: the image is built first, with a fresh key, from the lock next to it)
    /// or an image folder (needs --key).
    pub target: PathBuf,
    /// Site config to boot with (default: images/sites/lab.toml of the imrs workspace found
    /// above the recipe or image folder, else above the current directory); must be a lab site.
    #[arg(long)]
    pub site: Option<PathBuf>,
    /// The root zone the transfer server serves: `bundled` (the repository's zone 2026073102,
    /// guest clock pinned inside its signature window), `live` (transferred now from ICANN's
    /// transfer servers, guest clock = real time), or a zone FILE (guest clock set inside its
    /// signatures' window). Verified against the image's trust anchors before use.
    #[arg(long, value_name = "bundled|live|FILE", default_value = "bundled")]
    pub zone: zone::ZoneChoice,
    /// The image's site-signing secret key (the `build --key`); required with an image folder.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// What to simulate.
    #[arg(long, value_enum, default_value = "normal")]
    pub scenario: Scenario,
    /// The host's router, the appliance's BGP peer: FRR (zebra + bgpd) or GoBGP (gobgpd).
    #[arg(long, value_enum, default_value = "frr")]
    pub router: RouterKind,
    /// How the appliance boots: `kernel` (QEMU starts the image's kernel directly; the disk holds
    /// IMRS-CONFIG and IMRS-DATA) or `disk` (the appliance disk of `imrs-build disk`, site
    /// config on it, booted through UEFI firmware (OVMF) and systemd-boot, as on the appliance).
    #[arg(long, value_enum, default_value = "kernel")]
    pub boot: LabBoot,
    /// Time limit of each boot, seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Keep the work folder (disk, console log, daemon logs, report database) in DIR; without
    /// it a temporary folder is used, removed after a passed run and kept after a failed one.
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
    /// Accelerator.
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: LabAccel,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 1024)]
    pub memory: u32,
    /// Seconds the late transfer server (xfr-down) or receiver (receiver-down) waits.
    #[arg(long, default_value_t = 30)]
    pub late: u64,
    /// With a recipe: use this static imrs-init instead of building it from the workspace.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// With a recipe: package cache folder (as for `build`).
    #[arg(long)]
    pub cache: Option<PathBuf>,
}

/// Host programs the lab needs whatever the router ([`RouterKind::programs`] adds its own).
pub const PROGRAMS: [&str; 8] = [
    "ip",
    "qemu-system-x86_64",
    crate::host::xfr::NSD,
    "sfdisk",
    "mkfs.vfat",
    "mcopy",
    "mkfs.ext4",
    "chown",
];

/// Whether `program` is an executable file (absolute path) or found on `PATH`.
pub fn have_program(program: &str) -> bool {
    let p = Path::new(program);
    if p.is_absolute() {
        return p.is_file();
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// Missing programs (see [`PROGRAMS`], and those of `router`) and root, as a list of what to
/// install.
pub fn missing_prerequisites(router: RouterKind) -> Vec<String> {
    let mut m: Vec<String> = PROGRAMS
        .iter()
        .chain(router.programs())
        .filter(|p| !have_program(p))
        .map(|p| p.to_string())
        .collect();
    if !nix::unistd::geteuid().is_root() {
        m.push("root (network namespaces, taps)".into());
    }
    m
}

/// The work folder, removed on drop unless kept.
struct WorkDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn is_recipe(p: &Path) -> bool {
    p.is_file() && p.extension().is_some_and(|e| e == "toml")
}

/// Builds the recipe's image into `work/image` with a fresh key `work/image-key`.
fn build_image(recipe: &Path, work: &Path, args: &LabArgs, ui: &Ui) -> Result<(PathBuf, PathBuf)> {
    let key = work.join("image-key");
    let k = keys::generate()?;
    keys::write_keypair(&k, &key)?;
    let out = work.join("image");
    let build = crate::cli::BuildArgs {
        recipe: recipe.to_path_buf(),
        key: key.clone(),
        out: out.clone(),
        inputs: crate::cli::Inputs {
            lock: None,
            cache: args.cache.clone(),
            snapshot: None,
            offline: false,
        },
        init: args.init.clone(),
        site_pubkey: None,
        site: None,
    };
    ui.info(format!(
        "lab: building {} into {}",
        recipe.display(),
        out.display()
    ));
    let quiet = Ui {
        quiet: ui.quiet,
        json: false,
    };
    crate::cmd::build(build, &quiet)
        .with_context(|| format!("building the image from {}", recipe.display()))?;
    Ok((out, key))
}

/// Runs `imrs-build lab`; returns the exit code (0: the scenario's expectation held).
pub fn run(args: LabArgs, ui: &Ui) -> Result<u8> {
    signal::install().context("cannot install the Ctrl-C handler")?;
    let missing = missing_prerequisites(args.router);
    if !missing.is_empty() {
        bail!(
            "the lab needs: {} (scripts/install-deps.sh installs the packages; run as root)",
            missing.join(", ")
        );
    }
    let mut work = match &args.keep {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("{}: mkdir", d.display()))?;
            WorkDir {
                path: std::fs::canonicalize(d)
                    .with_context(|| format!("{}: cannot resolve", d.display()))?,
                keep: true,
            }
        }
        None => {
            let p = std::env::temp_dir().join(format!("imrs-lab-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).with_context(|| format!("{}: mkdir", p.display()))?;
            WorkDir {
                path: p,
                keep: false,
            }
        }
    };
    // FRR drops to the frr user: the folders above its state must be searchable.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&work.path, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("{}: chmod", work.path.display()))?;
    }
    let result = run_in(&args, ui, &work.path);
    match &result {
        Ok(s) if s.passed => {}
        _ => {
            let empty = std::fs::read_dir(&work.path).map_or(true, |mut d| d.next().is_none());
            if !work.keep && !empty {
                work.keep = true;
                ui.info(format!(
                    "lab: keeping the work folder {} for a look",
                    work.path.display()
                ));
            }
        }
    }
    let s = result?;
    if !ui.json {
        eprint!("{}", summary::render(&s));
    }
    if !s.passed {
        let failed: Vec<&str> = s
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.what.as_str())
            .collect();
        let message = format!(
            "scenario {}: the expectation did not hold (failed: {})",
            s.scenario,
            failed.join("; ")
        );
        return Err(crate::ui::Failure::new(crate::EXIT_ERROR, message)
            .with_details(serde_json::to_value(&s)?)
            .into());
    }
    if ui.json {
        crate::ui::print_ok(&s)?;
    }
    Ok(0)
}

fn run_in(args: &LabArgs, ui: &Ui, work: &Path) -> Result<summary::Summary> {
    let is_recipe = is_recipe(&args.target);
    if !is_recipe && !args.target.is_dir() {
        bail!(
            "{}: neither a recipe (*.toml) nor an image folder",
            args.target.display()
        );
    }
    if is_recipe && args.key.is_some() {
        bail!(
            "--key is for an image folder; with a recipe the lab makes its own key ({})",
            args.target.display()
        );
    }
    // Inputs first, so that a missing one fails before anything is built or started.
    let ws = crate::workspace::find(Some(&args.target));
    let site_src = match (&args.site, &ws) {
        (Some(p), _) => p.clone(),
        (None, Ok(w)) => w.lab_site(),
        (None, Err(e)) => bail!(
            "no --site given, and the default lab site ({}) is in the imrs repository, but {e}; \
             run inside a checkout (or give a recipe or image folder inside one), or pass --site FILE",
            crate::workspace::LAB_SITE
        ),
    };
    let parsed = imrs_config::site::load(&site_src)?;
    let plan = plan::Plan::from_site(&parsed)?;
    if let Some(m) = notices::missing(&plan) {
        bail!("the lab needs {m} (scripts/install-deps.sh installs it)");
    }
    ui.info(format!("lab: zone {}", args.zone));
    let obtained = zone::obtain(&args.zone, ws.as_ref())?;
    ui.info(format!(
        "lab: zone serial {} from {} ({} records)",
        obtained.zone.serial(),
        obtained.source,
        obtained.zone.len()
    ));

    let (image, key_path) = if is_recipe {
        build_image(&args.target, work, args, ui)?
    } else {
        let key = args.key.clone().ok_or_else(|| {
            anyhow::anyhow!(
                "{}: an image folder needs --key, its site-signing secret key (the key given \
                 to `build --key`)",
                args.target.display()
            )
        })?;
        (args.target.clone(), key)
    };
    let key = keys::read_secret(&key_path)?;
    site::check_key_matches(&image, &key, &key_path)?;

    // Two boots at most, each up to the time limit, plus the late services.
    let budget = Duration::from_secs(args.timeout.saturating_mul(2).saturating_add(args.late));
    let facts = zone::image_facts(&image)?;
    let served = zone::prepare(obtained, &facts, &work.join("zone"), budget)?;
    ui.info(format!(
        "lab: zone serial {} verified at {} (ZONEMD + DNSSEC, the image's anchors); guest clock {}",
        served.serial, served.verified_at, served.clock
    ));
    // This run's CA and certificates (receiver, NTS server), written only once every input
    // is there (a failure before leaves the work folder empty, so it goes); the `nts`
    // scenario's site is the given one with its time from the lab's NTS server.
    let nts_names: Vec<String> = if args.scenario == Scenario::Nts {
        vec![site::NTS_NAME.to_string()]
    } else {
        plan.nts.iter().map(|(name, _)| name.clone()).collect()
    };
    let tls = site::make_tls(work, plan.receiver.ip(), &nts_names)?;
    let (site_src, parsed, plan) = if args.scenario == Scenario::Nts {
        let derived = work.join("site-nts-source.toml");
        site::nts_site(&site_src, &derived, &tls.ca_pem)?;
        let parsed = imrs_config::site::load(&derived)?;
        let plan = plan::Plan::from_site(&parsed)?;
        (derived, parsed, plan)
    } else {
        (site_src, parsed, plan)
    };
    let site_path = work.join("site.toml");
    // The operations key of this run: fleet commands to the box (`fleet command --ops-key`).
    let ops = keys::generate()?;
    keys::write_keypair(&ops, &work.join("ops-key"))?;
    site::write_signed_site(
        &site_src,
        &site_path,
        &tls.ca_pem,
        &ops.verifying_key(),
        &key,
    )?;
    ui.info(format!(
        "lab: site {} signed with key {} (phone-home CA of this run)",
        site_path.display(),
        keys::key_id(&key.verifying_key())
    ));
    let notices = notices::Notices::prepare(work, &site_path, &parsed.host)?;
    let operator_token = operators::token(work)?;
    let site_sig = imrs_config::signed::sig_path_for(&site_path);
    let disk = match args.boot {
        LabBoot::Kernel => disk::build(&work.join("disk.img"), &site_path, &site_sig)?,
        LabBoot::Disk => disk::appliance(&work.join("disk.img"), &image, &site_path, &site_sig)?,
    };
    let accel = match args.accel {
        LabAccel::Tcg => Accel::Tcg,
        LabAccel::Kvm => Accel::Kvm,
        LabAccel::Auto => {
            if vm::kvm_works(work) {
                Accel::Kvm
            } else {
                Accel::Tcg
            }
        }
    };
    ui.info(format!(
        "lab: disk {} ({}), accelerator {accel:?}, scenario {}, router {}",
        disk.display(),
        match args.boot {
            LabBoot::Kernel => "IMRS-CONFIG + IMRS-DATA, kernel booted directly",
            LabBoot::Disk => "the appliance disk, booted through OVMF + systemd-boot",
        },
        args.scenario.name(),
        args.router.product()
    ));
    let exe = std::env::current_exe().context("cannot find this program (for the receiver)")?;
    let mut lab = scenario::Lab {
        workdir: work.to_path_buf(),
        image,
        disk,
        plan,
        tls,
        accel,
        boot_timeout: Duration::from_secs(args.timeout),
        late: Duration::from_secs(args.late),
        exe,
        memory_mib: args.memory,
        ui: Ui {
            quiet: ui.quiet,
            json: false,
        },
        tampered: None,
        zone: served,
        router: args.router,
        boot: args.boot,
        ops,
        image_key: key,
        dns: facts.dns,
        notices,
        operator_token,
    };
    scenario::run(&mut lab, args.scenario)
}
