//! What each subcommand does: load inputs, call the modules that do the work, print the result
//! for people (stderr) or machines (`--json`, stdout), and pick the exit code.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use imrs_config::{keys, lock, recipe, signed, site};
use serde_json::json;

use crate::cache::{Cache, CacheError};
use crate::cli::{BuildArgs, Cli, Command, Inputs, SiteCommand};
use crate::download::Sources;
use crate::ui::{Failure, Ui, print_ok};
use crate::verify::VerifyError;
use crate::{EXIT_ERROR, EXIT_GONE, apt, assemble, verify};

/// Maps an error to the documented exit code: the outermost cause that has one decides.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(f) = cause.downcast_ref::<Failure>() {
            return f.exit_code;
        }
        if let Some(e) = cause.downcast_ref::<VerifyError>() {
            return e.exit_code();
        }
        if matches!(
            cause.downcast_ref::<CacheError>(),
            Some(CacheError::Gone { .. })
        ) {
            return EXIT_GONE;
        }
    }
    EXIT_ERROR
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<u8> {
    let ui = Ui {
        quiet: cli.quiet,
        json: cli.json,
    };
    match cli.command {
        Command::Check { recipe } => check(&recipe, &ui),
        Command::Site(SiteCommand::Check { file }) => {
            let s = site::load(&file)?;
            let work = tempfile::tempdir().context("a scratch folder for the daemon checks")?;
            let daemons = crate::site_check::check(&s, work.path());
            let refused: Vec<String> = daemons
                .iter()
                .filter_map(|c| match &c.verdict {
                    crate::site_check::Verdict::Refused { message } => {
                        Some(format!("{}: {message}", c.daemon))
                    }
                    _ => None,
                })
                .collect();
            if !refused.is_empty() {
                return Err(Failure::new(
                    EXIT_ERROR,
                    format!(
                        "{}: the appliance's generated daemon configs are refused: {}",
                        file.display(),
                        refused.join("; ")
                    ),
                )
                .with_details(json!({"daemons": daemons}))
                .into());
            }
            for c in &daemons {
                if let crate::site_check::Verdict::Skipped { reason } = &c.verdict {
                    ui.info(format!("{}: not checked: {reason}", c.daemon));
                }
            }
            if ui.json {
                let mut v = serde_json::to_value(&s)?;
                v["daemons"] = serde_json::to_value(&daemons)?;
                print_ok(v)?;
            } else {
                ui.info(format!(
                    "{}: ok: instance {}, site {}{}, device {}, sequence {}, {} interface(s), \
                     {} BGP neighbour(s), announces {}",
                    file.display(),
                    s.instance,
                    s.site_id,
                    if s.lab { " (LAB)" } else { "" },
                    s.device,
                    s.sequence,
                    s.interfaces.len(),
                    s.bgp.neighbors.len(),
                    s.announced()
                        .iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join(" ")
                ));
            }
            Ok(0)
        }
        Command::Site(SiteCommand::Sign { file, key }) => {
            let k = keys::read_secret(&key)?;
            let sig = signed::sign(&file, &k)?;
            if ui.json {
                print_ok(json!({"file": file, "signature": sig,
                                "key_id": keys::key_id(&k.verifying_key())}))?;
            } else {
                ui.info(format!(
                    "{}: signed with key {} -> {}",
                    file.display(),
                    keys::key_id(&k.verifying_key()),
                    sig.display()
                ));
            }
            Ok(0)
        }
        Command::Lock {
            recipe,
            lock,
            epoch,
        } => lock_cmd(&recipe, lock, epoch, &ui),
        Command::Fetch { recipe, inputs } => {
            let r = recipe::load(&recipe)?;
            let (lock, _) = load_lock(&r, &inputs)?;
            let cache = open_cache(&inputs)?;
            let t = Instant::now();
            let s = cache.fetch(&lock, &sources(&r, &inputs)?, inputs.offline, &ui)?;
            if ui.json {
                print_ok(
                    json!({"cache": cache.dir(), "cached": s.cached, "downloaded": s.downloaded,
                           "bytes": s.bytes, "seconds": t.elapsed().as_secs_f64()}),
                )?;
            } else {
                ui.info(format!(
                    "{} packages ready in {}: {} cached, {} downloaded ({} bytes)",
                    lock.packages.len(),
                    cache.dir().display(),
                    s.cached,
                    s.downloaded,
                    s.bytes
                ));
            }
            Ok(0)
        }
        Command::Build(args) => build(args, &ui),
        Command::Lab(args) => crate::lab::run(args, &ui),
        Command::Keygen { out } => {
            let k = keys::generate()?;
            let p = keys::write_keypair(&k, &out)?;
            if ui.json {
                print_ok(
                    json!({"secret": out, "public": p, "key_id": keys::key_id(&k.verifying_key())}),
                )?;
            } else {
                ui.info(format!(
                    "wrote {} (secret, mode 0600) and {} (key id {})",
                    out.display(),
                    p.display(),
                    keys::key_id(&k.verifying_key())
                ));
            }
            Ok(0)
        }
        Command::Verify { dir, pubkey } => {
            let key = keys::read_public(&pubkey)?;
            let t = Instant::now();
            let m = verify::verify(&dir, &key)?;
            if ui.json {
                print_ok(json!({"name": m.name, "version": m.version,
                                "artifacts": m.artifacts, "files": m.files_count,
                                "key_id": keys::key_id(&key), "seconds": t.elapsed().as_secs_f64()}))?;
            } else {
                ui.info(format!(
                    "{}: ok: {} {} signed by key {}; {} artifacts and {} initramfs entries verified",
                    dir.display(),
                    m.name,
                    m.version,
                    keys::key_id(&key),
                    m.artifacts.len(),
                    m.files_count
                ));
            }
            Ok(0)
        }
        Command::Disk(args) => crate::disk::run(args, &ui),
        Command::Update(args) => crate::update::run(args, &ui),
        Command::Flash(args) => crate::flash::run(args, &ui),
        Command::VerifyDevice(args) => crate::flash::check::run(args, &ui),
        Command::Inspect {
            dir,
            cache,
            diff,
            top,
        } => inspect(&dir, cache, diff.as_deref(), top, &ui),
        Command::Home(h) => crate::home::run(h, cli.json),
        Command::Fleet(f) => crate::fleet::run(f, cli.json),
        Command::Zone(z) => crate::zone_cli::run(z, cli.json),
        Command::Completions { shell } => crate::manual::completions(shell, &ui),
        Command::Manpage { out } => crate::manual::manpages(out.as_deref(), &ui),
        Command::Boot {
            dir,
            append,
            accel,
            memory,
            timeout,
            expect,
            icount,
        } => {
            if icount && accel != crate::qemu::Accel::Tcg {
                return Err(Failure::new(
                    crate::EXIT_USAGE,
                    "--icount counts emulated instructions: it needs --accel tcg",
                )
                .into());
            }
            // A file is an appliance disk (`imrs-build disk`), booted through UEFI.
            let vars_dir = tempfile::tempdir().context("a temporary folder for UEFI variables")?;
            let mut opts = if dir.is_file() {
                crate::qemu::BootOptions::disk(crate::qemu::Uefi::vars_copy(&dir, vars_dir.path())?)
            } else {
                crate::qemu::BootOptions::new(&dir)
            };
            opts.append = append;
            opts.accel = accel;
            opts.memory_mib = memory;
            opts.timeout = std::time::Duration::from_secs(timeout);
            if icount {
                opts.extra
                    .extend(["-icount".to_string(), "shift=0,sleep=off".to_string()]);
            }
            let quiet = ui.quiet || ui.json;
            let res = crate::qemu::boot(&opts, |line| {
                if !quiet {
                    println!("{line}");
                }
            })?;
            let missing: Vec<&String> = expect
                .iter()
                .filter(|e| !res.console.iter().any(|l| l.contains(e.as_str())))
                .collect();
            // `exit_code` is the process's (0 only when the guest powered off with 0);
            // `guest_exit_code` is QEMU's, null when it was killed at the time limit.
            let details = json!({"exit_code": 0, "guest_exit_code": res.exit_code,
                                 "seconds": res.seconds, "panicked": res.panicked,
                                 "console": res.console, "missing": missing});
            if !ui.json {
                ui.info(format!(
                    "VM exited ({}) after {:.1} s",
                    res.exit_code
                        .map_or("killed".to_string(), |c| format!("code {c}")),
                    res.seconds
                ));
            }
            let failure = if res.panicked {
                Some("the guest kernel panicked (see the console)".to_string())
            } else if !missing.is_empty() {
                Some(format!("console never showed: {missing:?}"))
            } else if res.exit_code != Some(0) {
                Some(match res.exit_code {
                    Some(c) => format!("the guest exited with code {c}"),
                    None => format!("the guest was still running after {timeout} s and was killed"),
                })
            } else {
                None
            };
            if let Some(message) = failure {
                return Err(Failure::new(EXIT_ERROR, message)
                    .with_details(details)
                    .into());
            }
            if ui.json {
                print_ok(&details)?;
            }
            Ok(0)
        }
    }
}

fn check(path: &Path, ui: &Ui) -> Result<u8> {
    let r = recipe::load(path)?;
    if ui.json {
        print_ok(&r)?;
        return Ok(0);
    }
    let rr = &r.recipe;
    println!("recipe      {} (sha256 {})", r.path.display(), r.sha256);
    println!("image       {} {}", rr.name, rr.image_version);
    println!("profile     {}: {}", r.profile.name, r.profile.description);
    println!("dns         {}", rr.dns);
    println!("kernel      {} ({})", rr.kernel.package, rr.kernel.cmdline);
    println!("modules     {}", r.modules.join(" "));
    println!("packages    {}", rr.userland.packages.join(" "));
    println!("binaries    {}", rr.userland.binaries.join(" "));
    for f in &rr.files {
        println!("file        {} -> {}", f.source.display(), f.dest);
    }
    if rr.allow_shell {
        println!(
            "shell       ALLOWED: {}",
            imrs_config::escape(rr.allow_shell_reason.as_deref().unwrap_or(""))
        );
    }
    let lock_path = r.default_lock_path();
    match lock::load(&lock_path) {
        Ok(l) => println!(
            "lock        {}: {} packages, kernel {}, epoch {}",
            lock_path.display(),
            l.packages.len(),
            l.kernel_release,
            l.source_date_epoch
        ),
        Err(e) => println!("lock        none usable ({e})"),
    }
    Ok(0)
}

fn lock_cmd(path: &Path, out: Option<PathBuf>, epoch: Option<i64>, ui: &Ui) -> Result<u8> {
    let r = recipe::load(path)?;
    let out = out.unwrap_or_else(|| r.default_lock_path());
    let spinner = ui.spinner("resolving packages with apt");
    let mut new = apt::resolve(&r, 0, &apt::snapshot_now())?;
    spinner.finish_and_clear();
    // The previous lock, of any schema: the same pinned bytes keep its SOURCE_DATE_EPOCH (and
    // snapshot time), so re-locking alone never changes the image.
    let pins = if out.exists() {
        match lock::read_pins(&out) {
            Ok(p) => Some(p),
            Err(e) => {
                ui.warn(format!("{e}; not keeping anything from it"));
                None
            }
        }
    } else {
        None
    };
    let previous = lock::load(&out).ok();
    let same = pins.as_ref().filter(|p| p.same_packages(&new));
    if let Some(ts) = same.and_then(|p| p.snapshot.clone()) {
        new.snapshot = ts;
    }
    let env_epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse::<i64>().ok());
    new.source_date_epoch = match (epoch, same) {
        (Some(e), _) => e,
        (None, Some(p)) => p.source_date_epoch,
        _ => env_epoch.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(1)
        }),
    };
    let changed = previous.as_ref() != Some(&new);
    let bytes = imrs_config::image::canonical_json(&new);
    imrs_config::fsutil::write_atomic(&out, &bytes, 0o644)
        .with_context(|| format!("{}: cannot write", out.display()))?;
    if ui.json {
        print_ok(
            json!({"lock": out, "packages": new.packages.len(), "kernel_release": new.kernel_release,
                   "source_date_epoch": new.source_date_epoch, "snapshot": new.snapshot,
                   "changed": changed}),
        )?;
    } else {
        ui.info(format!(
            "{}: {} packages, kernel {}, SOURCE_DATE_EPOCH {}, snapshot {}{}",
            out.display(),
            new.packages.len(),
            new.kernel_release,
            new.source_date_epoch,
            new.snapshot,
            if changed { "" } else { " (unchanged)" }
        ));
    }
    Ok(0)
}

/// Download sources besides each package's mirror: the snapshot archive (`$IMRS_SNAPSHOT_ARCHIVE`
/// or snapshot.debian.org) and `--snapshot`, else the recipe's `apt.snapshot`.
fn sources(r: &recipe::ResolvedRecipe, inputs: &Inputs) -> Result<Sources> {
    let extra = match (&inputs.snapshot, &r.recipe.apt.snapshot) {
        (Some(s), _) => Some(("--snapshot".to_string(), s.as_str())),
        (None, Some(s)) => Some((format!("{}: apt.snapshot", r.path.display()), s.as_str())),
        (None, None) => None,
    };
    Ok(Sources::new(
        extra.as_ref().map(|(what, url)| (what.as_str(), *url)),
    )?)
}

fn open_cache(inputs: &Inputs) -> Result<Cache> {
    Ok(Cache::open(&cache_dir(inputs))?)
}

/// The package cache folder `inputs` name, or the default.
fn cache_dir(inputs: &Inputs) -> PathBuf {
    match &inputs.cache {
        Some(d) => d.clone(),
        None => match std::env::var_os("IMRS_CACHE") {
            Some(d) => PathBuf::from(d),
            None => match std::env::var_os("XDG_CACHE_HOME") {
                Some(d) => PathBuf::from(d).join("imrs"),
                None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()))
                    .join(".cache/imrs"),
            },
        },
    }
}

/// Loads the lock for a recipe and checks that it covers the recipe; returns it with its bytes.
fn load_lock(r: &recipe::ResolvedRecipe, inputs: &Inputs) -> Result<(lock::Lock, Vec<u8>)> {
    let path = inputs.lock.clone().unwrap_or_else(|| r.default_lock_path());
    if !path.exists() {
        bail!(
            "{}: no lock file for {}; run `imrs-build lock {}` first",
            path.display(),
            r.path.display(),
            r.path.display()
        );
    }
    let l = lock::load(&path)?;
    for p in &r.recipe.userland.packages {
        if l.get(p).is_none() {
            bail!(
                "{}: the lock has no package {p}, which {} asks for; re-run `imrs-build lock`",
                path.display(),
                r.path.display()
            );
        }
    }
    if l.architecture != r.recipe.architecture {
        bail!(
            "{}: locked for {}, the recipe wants {}",
            path.display(),
            l.architecture,
            r.recipe.architecture
        );
    }
    let bytes = std::fs::read(&path).with_context(|| format!("{}: cannot read", path.display()))?;
    Ok((l, bytes))
}

/// `build`: the signed image folder from a recipe and its lock (also used by `lab`).
pub(crate) fn build(args: BuildArgs, ui: &Ui) -> Result<u8> {
    let t0 = Instant::now();
    let r = recipe::load(&args.recipe)?;
    let (lock, lock_bytes) = load_lock(&r, &args.inputs)?;
    // Keys first: a missing key must fail before any work.
    let key = keys::read_secret(&args.key)?;
    // Where the init comes from, before any download: the workspace to compile it in, or --init.
    let init_src = crate::initbin::Source::for_build(args.init.as_deref(), &args.recipe)?;
    let site_pub = match &args.site_pubkey {
        Some(p) => keys::read_public(p)?,
        None => key.verifying_key(),
    };
    let site = match &args.site {
        Some(p) => {
            let text = std::fs::read(p).with_context(|| format!("{}: cannot read", p.display()))?;
            let sig_path = signed::sig_path_for(p);
            let sig = std::fs::read_to_string(&sig_path).with_context(|| {
                format!("{}: cannot read the site signature", sig_path.display())
            })?;
            signed::verify_text(p, &text, &sig, &site_pub)
                .context("the site config to embed does not verify with the site public key")?;
            Some((text, sig))
        }
        None => None,
    };
    let cache = open_cache(&args.inputs)?;
    let fetched = cache.fetch(&lock, &sources(&r, &args.inputs)?, args.inputs.offline, ui)?;
    let t_fetch = t0.elapsed();
    let init = match &init_src {
        crate::initbin::Source::Workspace(_) => {
            let sp = ui.spinner("building static imrs-init");
            let b = init_src.load(true)?;
            sp.finish_and_clear();
            b
        }
        crate::initbin::Source::Prebuilt(_) => init_src.load(true)?,
    };
    let inputs = assemble::Inputs {
        recipe: &r,
        lock: &lock,
        lock_sha256: crate::image_dir::sha256_hex(&lock_bytes),
        cache: &cache,
        init: &init.bytes,
        init_toolchain: &init.toolchain,
        site_pubkey: &site_pub,
        site: site.as_ref().map(|(t, s)| (t.as_slice(), s.as_str())),
    };
    let out = assemble::build_image(&inputs, &args.out, &key, ui)?;
    let secs = t0.elapsed().as_secs_f64();
    if ui.json {
        print_ok(json!({
                "out": args.out, "name": out.manifest.name, "version": out.manifest.version,
                "artifacts": out.manifest.artifacts, "files": out.manifest.files_count,
                "packages": out.manifest.packages.len(), "downloaded": fetched.downloaded,
                "seconds": secs, "seconds_fetch": t_fetch.as_secs_f64(),
                "stages": out.timings,
                "manifest_sha256": crate::image_dir::sha256_hex(&out.manifest_bytes),
        }))?;
    } else {
        for a in &out.manifest.artifacts {
            ui.info(format!(
                "  {:22} {:>10} bytes  sha256 {}",
                a.name, a.size, a.sha256
            ));
        }
        ui.info(format!(
            "built {} {} into {} in {:.1} s ({} files, manifest signed by key {})",
            out.manifest.name,
            out.manifest.version,
            args.out.display(),
            secs,
            out.manifest.files_count,
            keys::key_id(&key.verifying_key())
        ));
    }
    Ok(0)
}

fn inspect(
    dir: &Path,
    cache: Option<PathBuf>,
    other: Option<&Path>,
    top: usize,
    ui: &Ui,
) -> Result<u8> {
    let m = verify::read_manifest(dir)?;
    let entries = verify::read_initramfs(&dir.join(crate::image_dir::INITRAMFS))?;
    // Read only: the default cache folder is not created when missing (nothing is attributed
    // then); a folder given with --cache must be a package cache.
    let given = cache.is_some();
    let folder = cache_dir(&Inputs {
        lock: None,
        cache,
        snapshot: None,
        offline: true,
    });
    let is_cache = folder.join("debs").is_dir();
    if given && !is_cache {
        bail!(
            "--cache {}: not a package cache (no debs/ folder in it)",
            folder.display()
        );
    }
    let cache = is_cache.then(|| Cache::open(&folder)).transpose()?;
    let sizes = crate::inspect::explain(dir, &m, &entries, cache.as_ref())?;
    let compared = match other {
        Some(o) => Some(crate::inspect::diff(
            &sizes,
            &crate::inspect::inspect(o, cache.as_ref())?,
        )),
        None => None,
    };
    if ui.json {
        let owner: std::collections::BTreeMap<String, &str> = sizes
            .all
            .iter()
            .map(|f| (f.path.clone(), f.package.as_str()))
            .collect();
        let files: Vec<_> = entries
            .iter()
            .map(|e| {
                let path = format!("/{}", e.name);
                json!({"mode": format!("{:o}", e.mode), "size": e.data.len(),
                       "package": owner.get(&path), "path": path})
            })
            .collect();
        print_ok(
            json!({"manifest": m, "size": sizes, "largest": sizes.all.iter().take(top).collect::<Vec<_>>(),
                        "files": files, "diff": compared}),
        )?;
        return Ok(0);
    }
    if let Some(d) = &compared {
        print!("{}", crate::inspect::render_diff(d, top));
        return Ok(0);
    }
    println!(
        "{} {} (profile {}, dns {}, kernel {}, epoch {}, init by rustc {} {})",
        m.name,
        m.version,
        m.profile,
        m.dns,
        m.kernel_release,
        m.source_date_epoch,
        m.init_toolchain.release,
        m.init_toolchain.commit_hash
    );
    print!("{}", crate::inspect::render(&sizes, top));
    println!("packages:");
    for p in &m.packages {
        println!("  {:32} {}", p.name, p.version);
    }
    println!("files:");
    for e in &entries {
        let kind = match e.mode & 0o170000 {
            0o040000 => 'd',
            0o120000 => 'l',
            0o020000 => 'c',
            _ => '-',
        };
        let extra = if kind == 'l' {
            format!(" -> {}", String::from_utf8_lossy(&e.data))
        } else {
            String::new()
        };
        println!(
            "  {kind}{:04o} {:>10}  /{}{extra}",
            e.mode & 0o7777,
            e.data.len(),
            e.name
        );
    }
    Ok(0)
}
