//! `imrs-build` installed away from its checkout: the binary copied to a temporary folder and run
//! from another temporary working directory (no imrs workspace above either), as a CI runner's
//! tool cache or `cargo install` would have it. It must find the workspace from the recipe it is
//! given (to compile the init), take `--init`, `--site` and `--zone` where there is none, and say
//! what to pass when it cannot: `check`, `build`, `verify` and one lab pass (`normal`, with the
//! real zone given as a FILE); `lab --zone live` inside a network namespace without a network
//! fails at once, naming ICANN's servers, and leaves nothing running.
//!
//! Building needs the Debian mirror's packages (apt lists) and the lab needs root, QEMU, FRR,
//! NSD and the disk tools (scripts/install-deps.sh): skipped with the reason when missing,
//! failed under CI=true.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// The binary copied out of the target folder, and the temporary folder holding it.
struct Installed {
    _dir: tempfile::TempDir,
    exe: PathBuf,
    /// A working directory with no imrs workspace above it.
    cwd: tempfile::TempDir,
}

impl Installed {
    fn new() -> Installed {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("bin/imrs-build");
        std::fs::create_dir_all(exe.parent().unwrap()).unwrap();
        std::fs::copy(env!("CARGO_BIN_EXE_imrs-build"), &exe).unwrap();
        let cwd = tempfile::tempdir().unwrap();
        for d in [dir.path(), cwd.path()] {
            assert!(
                imrs_build::workspace::find_from(d).is_none(),
                "{} lies inside a workspace: the test needs a folder outside one",
                d.display()
            );
        }
        Installed {
            _dir: dir,
            exe,
            cwd,
        }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.exe);
        c.current_dir(self.cwd.path());
        c
    }

    fn run(&self, args: &[&std::ffi::OsStr]) -> Output {
        run(self.cmd().args(args))
    }
}

fn os<S: AsRef<std::ffi::OsStr> + ?Sized>(s: &S) -> &std::ffi::OsStr {
    s.as_ref()
}

/// A copy of the qemu recipe (and what it names) in `dir`, outside the workspace.
fn recipe_outside(dir: &Path) -> PathBuf {
    let images = repo().join("images");
    for f in [
        "qemu.toml",
        "qemu.lock.json",
        "profiles/qemu.toml",
        "files/root-anchors.xml",
    ] {
        let to = dir.join(f);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(images.join(f), &to).unwrap();
    }
    dir.join("qemu.toml")
}

fn manifest(image: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(image.join("manifest.json")).unwrap()).unwrap()
}

/// `rustc -vV` in the repository (the toolchain rust-toolchain.toml pins).
fn rustc_vv() -> (String, String) {
    let o = run(Command::new("rustc").arg("-vV").current_dir(repo()));
    assert!(o.status.success(), "rustc -vV: {}", text(&o));
    let t = String::from_utf8_lossy(&o.stdout).into_owned();
    let field = |n: &str| {
        t.lines()
            .find_map(|l| l.strip_prefix(n))
            .unwrap()
            .trim()
            .to_string()
    };
    (field("release:"), field("commit-hash:"))
}

/// Processes whose command line mentions `needle` (the lab's work folder).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if !e
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains(needle) {
                found.push(format!("{}: {c}", e.file_name().to_string_lossy()));
            }
        }
    }
    found
}

fn netns_of(pid: u32) -> Vec<String> {
    let out = run(Command::new("ip").args(["netns", "list"]));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(&format!("imrs-lab-{pid}-")))
        .map(String::from)
        .collect()
}

fn lab_prerequisites() -> bool {
    let missing = imrs_build::lab::missing_prerequisites(imrs_build::host::router::RouterKind::Frr);
    require(
        missing.is_empty(),
        &format!("the lab needs {}", missing.join(", ")),
    )
}

#[test]
fn check_runs_from_anywhere() {
    let i = Installed::new();
    let o = i.run(&[os("check"), os(&repo().join("images/qemu.toml"))]);
    assert!(o.status.success(), "check: {}", text(&o));
    assert!(text(&o).contains("imrs-qemu"), "{}", text(&o));
}

/// A recipe outside any workspace, run from outside one, without `--init`: the build stops
/// before downloading anything and says what to pass.
#[test]
fn build_without_workspace_or_init_says_what_to_pass() {
    let i = Installed::new();
    let t = tempfile::tempdir().unwrap();
    let recipe = recipe_outside(&t.path().join("recipe"));
    let key = t.path().join("key");
    let o = i.run(&[os("keygen"), os("--out"), os(&key)]);
    assert!(o.status.success(), "keygen: {}", text(&o));
    let cache = t.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let o = i.run(&[
        os("build"),
        os(&recipe),
        os("--key"),
        os(&key),
        os("--cache"),
        os(&cache),
        os("--out"),
        os(&t.path().join("image")),
    ]);
    let msg = text(&o);
    assert_eq!(o.status.code(), Some(1), "{msg}");
    assert!(msg.contains("cannot compile imrs-init"), "{msg}");
    assert!(msg.contains("no imrs workspace"), "{msg}");
    assert!(msg.contains("--init PATH"), "{msg}");
    // Both folders searched are named: the recipe's and the working directory.
    for d in [
        recipe.parent().unwrap().to_path_buf(),
        i.cwd.path().canonicalize().unwrap(),
    ] {
        assert!(
            msg.contains(&d.display().to_string()),
            "{} not named: {msg}",
            d.display()
        );
    }
    assert_eq!(
        std::fs::read_dir(&cache).unwrap().count(),
        0,
        "something was downloaded before the error"
    );
    assert!(!t.path().join("image").exists());
}

/// The whole chain from an installed binary: build by recipe path inside the workspace (the
/// init compiled there), verify, the same image from a recipe outside with `--init`, and one
/// lab pass with `--site` and the real zone as a FILE.
#[test]
fn installed_binary_builds_verifies_and_boots() {
    let Some(lock) = usable_lock("qemu.toml") else {
        return;
    };
    let i = Installed::new();
    let t = tempfile::tempdir().unwrap();
    let key = t.path().join("image-key");
    let o = i.run(&[os("--quiet"), os("keygen"), os("--out"), os(&key)]);
    assert!(o.status.success(), "keygen: {}", text(&o));
    let pubkey = t.path().join("image-key.pub");

    // 1. By recipe path inside the workspace: the init is compiled in it.
    let a = t.path().join("a");
    let o = i.run(&[
        os("--quiet"),
        os("build"),
        os(&repo().join("images/qemu.toml")),
        os("--lock"),
        os(&lock),
        os("--cache"),
        os(&cache()),
        os("--key"),
        os(&key),
        os("--out"),
        os(&a),
    ]);
    assert!(o.status.success(), "build: {}", text(&o));
    let o = i.run(&[os("verify"), os(&a), os("--pubkey"), os(&pubkey)]);
    assert!(o.status.success(), "verify: {}", text(&o));
    let (release, hash) = rustc_vv();
    let m = manifest(&a);
    assert_eq!(m["init_toolchain"]["release"], release.as_str(), "{m}");
    assert_eq!(m["init_toolchain"]["commit_hash"], hash.as_str(), "{m}");

    // 2. A recipe outside any workspace with the init given: the same image.
    let init = repo().join("target/init-static/x86_64-unknown-linux-gnu/release/imrs-init");
    assert!(init.is_file(), "{} not built by step 1", init.display());
    let recipe = recipe_outside(&t.path().join("recipe"));
    let b = t.path().join("b");
    let o = i.run(&[
        os("--quiet"),
        os("build"),
        os(&recipe),
        os("--lock"),
        os(&lock),
        os("--cache"),
        os(&cache()),
        os("--key"),
        os(&key),
        os("--out"),
        os(&b),
        os("--init"),
        os(&init),
    ]);
    assert!(o.status.success(), "build --init: {}", text(&o));
    let o = i.run(&[os("verify"), os(&b), os("--pubkey"), os(&pubkey)]);
    assert!(o.status.success(), "verify: {}", text(&o));
    // The same artifacts (names, sizes, sha256), so the same bytes.
    let mb = manifest(&b);
    assert_eq!(mb["artifacts"], m["artifacts"]);
    assert_eq!(mb["files_sha256"], m["files_sha256"]);
    assert_eq!(mb["init_toolchain"]["release"], release.as_str(), "{mb}");
    let short = mb["init_toolchain"]["commit_hash"].as_str().unwrap();
    assert!(
        short.len() >= 7 && hash.starts_with(short),
        "{short} is not the .comment's abbreviation of {hash}"
    );

    // 3. The lab, with nothing found by itself: no workspace above the image or the working
    //    directory, so the site must be given; then one normal pass on the real zone as a FILE.
    if !lab_prerequisites() {
        return;
    }
    let o = i.run(&[os("lab"), os(&a), os("--key"), os(&key)]);
    let msg = text(&o);
    assert_eq!(o.status.code(), Some(1), "{msg}");
    assert!(msg.contains("pass --site FILE"), "{msg}");
    let work = t.path().join("lab");
    let o = i.run(&[
        os("--json"),
        os("lab"),
        os(&a),
        os("--key"),
        os(&key),
        os("--site"),
        os(&repo().join("images/sites/lab.toml")),
        os("--zone"),
        os(&repo().join("testdata/rootzone/root.zone.2026073102")),
        os("--timeout"),
        os("240"),
        os("--keep"),
        os(&work),
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    let v: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("lab: not one JSON object ({e}): {}", text(&o)));
    let failed: Vec<String> = v["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["ok"] != true)
        .map(|c| format!("{}: {}", c["what"], c["detail"]))
        .collect();
    assert!(
        o.status.success() && v["passed"] == true,
        "lab failed:\n  {}\n{}",
        failed.join("\n  "),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(v["soa_serial"], 2026073102);
    // The clock came from the zone's signatures: an hour after the latest inception.
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("guest clock 2026-07-31T20:00:00Z (pinned)"),
        "{stderr}"
    );
    // The receiver ran from the installed binary.
    assert!(v["report_verified"] == true, "{v}");
}

/// `lab --zone live` in a network namespace with nothing but a loopback that is down: every
/// connect fails locally (ENETUNREACH, no packet leaves), the run stops at once with exit 1
/// naming each server tried, and nothing is left: no namespace, no work folder, no process.
#[test]
fn lab_live_without_a_network_fails_fast_and_leaves_nothing() {
    if !lab_prerequisites() || !require(Path::new("/usr/bin/unshare").exists(), "unshare") {
        return;
    }
    let i = Installed::new();
    let start = Instant::now();
    let child = Command::new("/usr/bin/unshare")
        .arg("--net")
        .arg("--")
        .arg(&i.exe)
        .args(["lab"])
        .arg(repo().join("images/qemu.toml"))
        .args(["--zone", "live"])
        .current_dir(i.cwd.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn unshare");
    // unshare execs the program: same process id (the lab's names carry it).
    let pid = child.id();
    let o = child.wait_with_output().unwrap();
    let took = start.elapsed();
    let msg = text(&o);
    assert_eq!(o.status.code(), Some(1), "{msg}");
    assert!(took < Duration::from_secs(30), "took {took:?}: {msg}");
    for name in [
        "lax.xfr.dns.icann.org",
        "iad.xfr.dns.icann.org",
        "192.0.32.132:53",
        "[2620:0:2d0:202::132]:53",
        "192.0.47.132:53",
        "[2620:0:2830:202::132]:53",
    ] {
        assert!(msg.contains(name), "{name} not named: {msg}");
    }
    assert!(msg.contains("Network is unreachable"), "{msg}");
    assert!(msg.contains("--zone bundled"), "{msg}");
    assert!(!msg.contains("lab: building"), "an image was built: {msg}");
    assert!(
        netns_of(pid).is_empty(),
        "namespaces left: {:?}",
        netns_of(pid)
    );
    let work = std::env::temp_dir().join(format!("imrs-lab-{pid}"));
    assert!(!work.exists(), "{} left behind", work.display());
    let left = processes_mentioning(&format!("imrs-lab-{pid}"));
    assert!(left.is_empty(), "processes left: {left:?}");
}
