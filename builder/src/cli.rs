//! The command line: every subcommand and flag of imrs-build, with clap.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{ArgMatches, Args, Parser, Subcommand};

/// Whether `--json` is among the arguments before a `--`: known even when the command line does
/// not parse, so that a usage error is reported as a JSON object too.
pub fn json_requested(args: &[OsString]) -> bool {
    args.iter()
        .skip(1)
        .take_while(|a| a.as_os_str() != "--")
        .any(|a| a.as_os_str() == "--json")
}

/// The subcommand path of parsed arguments, e.g. `zone verify`.
pub fn command_name(matches: &ArgMatches) -> String {
    let mut words = Vec::new();
    let mut m = matches;
    while let Some((name, sub)) = m.subcommand() {
        words.push(name.to_string());
        m = sub;
    }
    words.join(" ")
}

/// The version `--version` prints: the package version and the git commit it was built from
/// (short hash, `-dirty` when the tree had uncommitted changes, `unknown` without git; set by
/// `build.rs`). Only the command line shows it: the image manifest records
/// [`crate::assemble::BUILDER`], which has no commit, so images stay reproducible.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("IMRS_BUILD_COMMIT"),
    ")"
);

/// What the exit codes mean (the end of `--help` and of the man page).
pub const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  error, also an input that cannot be read (missing, no permission, not a regular file,
     too large)
  2  usage error
  3  verification failed: an input was read and is wrong (a bad signature, a tampered or
     malformed image folder, a zone file that does not parse or does not verify)
  4  a locked package has left the apt mirror (re-lock or use a snapshot)
With --json, stdout holds exactly one JSON object, also on failure: \"ok\": false, \"error\"
(the whole cause chain), \"exit_code\".";

/// Build, sign, verify and inspect IMRS appliance images.
#[derive(Debug, Parser)]
#[command(
    name = "imrs-build",
    version = VERSION,
    about,
    long_about = None,
    after_help = EXIT_CODES
)]
pub struct Cli {
    /// No progress bars or status lines (errors and warnings still go to stderr).
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// Print one machine-readable JSON object on stdout, also on failure (`"ok": false`, the
    /// error and the exit code).
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a recipe and its hardware profile and print the resolved recipe.
    Check {
        /// Recipe file (images/*.toml).
        recipe: PathBuf,
    },
    /// Site configs: check or sign.
    #[command(subcommand)]
    Site(SiteCommand),
    /// Resolve the recipe's Debian packages through the host's apt and write the lock (with each
    /// package's mirror, suite and pool path, and the snapshot time).
    Lock {
        /// Recipe file.
        recipe: PathBuf,
        /// Lock file to write (default: next to the recipe, RECIPE.lock.json).
        #[arg(long)]
        lock: Option<PathBuf>,
        /// SOURCE_DATE_EPOCH for the image (default: keep the current lock's if the package set
        /// is unchanged, else $SOURCE_DATE_EPOCH, else now).
        #[arg(long)]
        epoch: Option<i64>,
    },
    /// Download exactly the locked packages into the cache and check every sha256: from each
    /// package's mirror, then the Debian snapshot archive at the lock's time, then --snapshot;
    /// never through apt.
    Fetch {
        /// Recipe file.
        recipe: PathBuf,
        /// Package inputs.
        #[command(flatten)]
        inputs: Inputs,
    },
    /// Build the signed image folder from the recipe and its lock.
    Build(BuildArgs),
    /// Write a new Ed25519 key pair: PATH (secret, mode 0600) and PATH.pub.
    Keygen {
        /// Secret key path.
        #[arg(long)]
        out: PathBuf,
    },
    /// Check an image folder's signature and every artifact; names the first thing wrong.
    Verify {
        /// Image folder.
        dir: PathBuf,
        /// Public key (PEM) the manifest must be signed with.
        #[arg(long)]
        pubkey: PathBuf,
    },
    /// Make the appliance's bootable disk image (GPT: IMRS-ESP with systemd-boot and the image in
    /// slot A, IMRS-CONFIG, IMRS-DATA) from a verified image folder; bit-for-bit reproducible.
    Disk(crate::disk::DiskArgs),
    /// Flash one appliance: verify the image, check the disk is idle, write only the used
    /// ranges, read every one back (O_DIRECT), put the site config and a new device key on it,
    /// and print the signed flash record.
    Flash(crate::flash::FlashArgs),
    /// Check a flashed disk without writing: verify SOURCE as flash does, then read every range
    /// flash writes back from DEVICE (O_DIRECT) and compare sha256s, naming every wrong range;
    /// IMRS-CONFIG and IMRS-DATA are compared with the signed flash record (--record), else
    /// checked by content. `flash --check` is the same check.
    VerifyDevice(crate::flash::check::VerifyDeviceArgs),
    /// Write a verified image into the inactive slot of an appliance disk (file or block
    /// device), to be tried on the next boot with a boot counter; the running slot stays the
    /// fallback.
    Update(crate::update::UpdateArgs),
    /// What an image is made of: its size by package (every file attributed to the package
    /// it came from, compressed alone for its share of the archive), the largest files, the
    /// packages and every file; `--diff OTHER` compares two images.
    Inspect {
        /// Image folder.
        dir: PathBuf,
        /// Package cache the image's packages are found in, to attribute files (default: the
        /// build's: $IMRS_CACHE, else $XDG_CACHE_HOME/imrs, else ~/.cache/imrs).
        #[arg(long)]
        cache: Option<PathBuf>,
        /// Compare with this image folder: files added, removed, resized or changed, and the
        /// bytes per package, from DIR to OTHER.
        #[arg(long, value_name = "OTHER")]
        diff: Option<PathBuf>,
        /// How many of the largest files (or changes per kind) to list.
        #[arg(long, default_value_t = 15)]
        top: usize,
    },
    /// Phone-home receiver: serve reports over HTTPS, list the fleet.
    #[command(subcommand)]
    Home(crate::home::HomeCommand),
    /// Run installed appliances: queue signed commands, see their state.
    #[command(subcommand)]
    Fleet(crate::fleet::FleetCommand),
    /// Root zone: verify a zone file, or transfer, verify and write one.
    #[command(subcommand)]
    Zone(crate::zone_cli::ZoneCommand),
    /// Boot an image folder (its kernel directly) or an appliance disk image (through UEFI
    /// firmware, Debian's ovmf, and the disk's boot loader) under QEMU with its serial console on
    /// stdout; returns when the guest powers off (exit 0) or the time limit passes.
    Boot {
        /// Image folder, or a disk image from `imrs-build disk` (the guest writes to it).
        dir: PathBuf,
        /// Extra kernel command-line words (e.g. imrs.poweroff_after_boot=1).
        #[arg(long = "append", value_name = "WORD")]
        append: Vec<String>,
        /// Accelerator: tcg always works; kvm needs a working /dev/kvm.
        #[arg(long, value_enum, default_value = "tcg")]
        accel: crate::qemu::Accel,
        /// Guest memory in MiB.
        #[arg(long, default_value_t = 1024)]
        memory: u32,
        /// Kill the VM after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// Fail unless this text appears on the console.
        #[arg(long)]
        expect: Vec<String>,
        /// Count instructions (TCG only, for benchmarks): the guest's clock advances 1 ns per
        /// guest instruction and skips idle time, so the times the guest prints measure the
        /// work it did, the same on an idle and on a loaded machine.
        #[arg(long)]
        icount: bool,
    },
    /// Boot an image in a simulated host network (router, transfer server, phone-home
    /// receiver) and report what the host sees: stages, routes, DNS answers, the report.
    Lab(crate::lab::LabArgs),
    /// Print a shell completion script on stdout (e.g. `imrs-build completions bash >
    /// /etc/bash_completion.d/imrs-build`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Man pages generated from these definitions: the main page on stdout, or with --out one
    /// page per command (imrs-build.1, imrs-build-zone-verify.1, ...) written into a folder.
    Manpage {
        /// Folder to write the pages into (created if missing).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Where package inputs come from.
#[derive(Debug, Args, Clone)]
pub struct Inputs {
    /// Lock file (default: RECIPE.lock.json next to the recipe).
    #[arg(long)]
    pub lock: Option<PathBuf>,
    /// Package cache folder (default: $IMRS_CACHE, else $XDG_CACHE_HOME/imrs, else ~/.cache/imrs).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Base URL tried last, as URL/POOL-PATH, for packages neither their mirror nor the snapshot
    /// archive serves (overrides the recipe's apt.snapshot). The snapshot archive itself is
    /// https://snapshot.debian.org/archive, or $IMRS_SNAPSHOT_ARCHIVE.
    #[arg(long)]
    pub snapshot: Option<String>,
    /// Never touch the network: use only the cache.
    #[arg(long)]
    pub offline: bool,
}

/// `build` arguments.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Recipe file.
    pub recipe: PathBuf,
    /// Secret key that signs the manifest.
    #[arg(long)]
    pub key: PathBuf,
    /// Output image folder (replaced atomically).
    #[arg(long)]
    pub out: PathBuf,
    /// Package inputs.
    #[command(flatten)]
    pub inputs: Inputs,
    /// Use this static imrs-init instead of building it from the workspace.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Public key that site configs must be signed with (default: the --key's public half).
    #[arg(long)]
    pub site_pubkey: Option<PathBuf>,
    /// A signed site config to embed (`FILE` and `FILE.sig`), for provisioning without a config
    /// partition.
    #[arg(long)]
    pub site: Option<PathBuf>,
}

/// `site` subcommands.
#[derive(Debug, Subcommand)]
pub enum SiteCommand {
    /// Validate a site config.
    Check {
        /// Site config file.
        file: PathBuf,
    },
    /// Validate and sign a site config, writing FILE.sig.
    Sign {
        /// Site config file.
        file: PathBuf,
        /// Secret key.
        #[arg(long)]
        key: PathBuf,
    },
}
