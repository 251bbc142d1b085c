//! The command line as CI uses it, offline: `--json` prints exactly one object on success and on
//! failure (usage errors included), exit codes say whether an input could not be read (1) or was
//! read and is wrong (3), `verify` refuses symlinks and anything else that is not a regular file
//! in an image folder, unbounded inputs (`/dev/zero`) are refused, and `--version`,
//! `completions` and `manpage` come from the clap definitions.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use imrs_build::cpio;
use imrs_build::image_dir::{self, INITRAMFS, KERNEL, MANIFEST, SIGNATURE};
use imrs_build::tree::{Node, Tree};
use imrs_config::image::{MANIFEST_SCHEMA, Manifest};
use serde_json::Value;

/// Runs a command, killing it (and failing the test) if it takes longer than `limit`: a read
/// that blocks (a FIFO) or never ends (`/dev/zero`) must not hang the suite.
fn run_within(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let start = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let o = child.wait_with_output().expect("output");
            panic!("{cmd:?} still running after {limit:?}:\n{}", text(&o));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `imrs-build --json ARGS`: the exit code and the one JSON object on stdout.
fn json(args: &[&str]) -> (i32, Value, Output) {
    let o = run_within(bin().arg("--json").args(args), Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let v: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?}: stdout is not one JSON object ({e}), exit {:?}:\n{stdout}\nstderr:\n{}",
            o.status.code(),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o.status.code().expect("exit code"), v, o)
}

/// Asserts a failure object: `ok` false, `exit_code` equal to the process's and to `code`, an
/// `error` that contains `needle`.
fn assert_failure(args: &[&str], code: i32, needle: &str) -> Value {
    let (rc, v, o) = json(args);
    assert_eq!(rc, code, "{args:?}: exit code:\n{}", text(&o));
    assert_eq!(v["ok"], false, "{args:?}: {v:#}");
    assert_eq!(v["exit_code"], code, "{args:?}: {v:#}");
    let err = v["error"].as_str().unwrap_or_default();
    assert!(
        err.contains(needle),
        "{args:?}: error lacks {needle:?}: {v:#}"
    );
    assert!(!v["causes"].as_array().unwrap().is_empty(), "{v:#}");
    v
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A tiny but complete signed image folder, built with the same code `build` uses: an initramfs
/// with `/init`, a "kernel", the manifest and its signature. Returns the public key's path.
fn tiny_image(dir: &Path, out: &Path) -> PathBuf {
    let key_path = keygen(dir, "image-key");
    let key = imrs_config::keys::read_secret(&key_path).unwrap();
    let mut tree = Tree::new();
    tree.insert("init", Node::file(b"#!init\n".to_vec(), 0o755))
        .unwrap();
    tree.insert("etc/imrs/image.json", Node::file(b"{}".to_vec(), 0o644))
        .unwrap();
    let raw = cpio::write(&tree, 1, Vec::new()).unwrap();
    let zst = cpio::compress_zstd(&raw, 3).unwrap();
    let (files_count, files_sha256) = image_dir::file_list_digest(&cpio::read(&raw).unwrap());
    let kernel = b"not really a kernel".to_vec();
    let manifest = Manifest {
        schema: MANIFEST_SCHEMA,
        name: "imrs-tiny".into(),
        version: "0.0.1".into(),
        profile: "qemu".into(),
        dns: imrs_config::recipe::DnsImpl::Nsd,
        builder: "test".into(),
        init_toolchain: imrs_config::image::Toolchain {
            release: "1.95.0".into(),
            commit_hash: "0".repeat(9),
        },
        source_date_epoch: 1,
        recipe_sha256: "0".repeat(64),
        lock_sha256: "0".repeat(64),
        kernel_release: "0.0.0".into(),
        cmdline: String::new(),
        artifacts: vec![
            image_dir::artifact(INITRAMFS, &zst),
            image_dir::artifact(KERNEL, &kernel),
        ],
        files_count,
        files_sha256,
        packages: vec![],
    };
    image_dir::write(
        out,
        &[(INITRAMFS, &zst[..]), (KERNEL, &kernel[..])],
        &manifest,
        &key,
    )
    .unwrap();
    PathBuf::from(format!("{}.pub", key_path.display()))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn mkfifo(path: &Path) {
    let ok = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(ok.success(), "mkfifo {}", path.display());
}

#[test]
fn verify_refuses_symlinks_fifos_and_folders_in_the_image_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let image = tmp.path().join("image");
    let pubkey = tiny_image(tmp.path(), &image);
    let verify = |dir: &Path| {
        run_within(
            bin().arg("verify").arg(dir).arg("--pubkey").arg(&pubkey),
            Duration::from_secs(30),
        )
    };
    let o = verify(&image);
    assert!(o.status.success(), "the clean image: {}", text(&o));
    // The folder itself may be named through a symlink: only what is inside is not followed.
    let link = tmp.path().join("image-link");
    std::os::unix::fs::symlink(&image, &link).unwrap();
    assert!(verify(&link).status.success());

    // Each artifact, the manifest and the signature replaced by a symlink to an identical copy
    // outside the folder: refused, naming the file (this verified before).
    for name in [KERNEL, INITRAMFS, MANIFEST, SIGNATURE] {
        let d = tmp.path().join(format!("symlinked-{name}"));
        copy_dir(&image, &d);
        let outside = tmp.path().join(format!("outside-{name}"));
        std::fs::rename(d.join(name), &outside).unwrap();
        std::os::unix::fs::symlink(&outside, d.join(name)).unwrap();
        let o = verify(&d);
        assert_eq!(o.status.code(), Some(3), "{name}: {}", text(&o));
        assert!(
            text(&o).contains(&format!(
                "{name}: not a regular file (it is a symbolic link)"
            )),
            "{name}: {}",
            text(&o)
        );
    }

    // A FIFO in place of an artifact: refused at once, not waited on.
    let d = tmp.path().join("fifo");
    copy_dir(&image, &d);
    std::fs::remove_file(d.join(KERNEL)).unwrap();
    mkfifo(&d.join(KERNEL));
    let o = verify(&d);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        text(&o).contains("vmlinuz: not a regular file (it is a FIFO)"),
        "{}",
        text(&o)
    );
    // A folder in place of the initramfs.
    let d = tmp.path().join("dir-artifact");
    copy_dir(&image, &d);
    std::fs::remove_file(d.join(INITRAMFS)).unwrap();
    std::fs::create_dir(d.join(INITRAMFS)).unwrap();
    let o = verify(&d);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        text(&o).contains("initramfs.cpio.zst: not a regular file (it is a directory)"),
        "{}",
        text(&o)
    );
    // Extra entries that are not regular files: a subfolder, a symlink, a FIFO.
    for (name, kind) in [
        ("extra-dir", "directory"),
        ("extra-link", "symbolic link"),
        ("extra-fifo", "FIFO"),
    ] {
        let d = tmp.path().join(name);
        copy_dir(&image, &d);
        match kind {
            "directory" => std::fs::create_dir(d.join(name)).unwrap(),
            "symbolic link" => std::os::unix::fs::symlink(d.join(KERNEL), d.join(name)).unwrap(),
            _ => mkfifo(&d.join(name)),
        }
        let o = verify(&d);
        assert_eq!(o.status.code(), Some(3), "{name}: {}", text(&o));
        assert!(
            text(&o).contains(&format!("{name}: not a regular file (it is a {kind})")),
            "{name}: {}",
            text(&o)
        );
    }
    // A missing artifact is the folder being wrong (3); a folder that is not there is not read (1).
    let d = tmp.path().join("missing-kernel");
    copy_dir(&image, &d);
    std::fs::remove_file(d.join(KERNEL)).unwrap();
    let o = verify(&d);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("vmlinuz: missing"), "{}", text(&o));
    let o = verify(&tmp.path().join("no-such-image"));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
}

#[test]
fn json_failures_are_one_object_with_the_error_and_the_exit_code() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let missing = t.join("missing");
    let dir = t.join("a-folder");
    std::fs::create_dir(&dir).unwrap();
    let garbage = t.join("garbage");
    std::fs::write(&garbage, b"\x00\xff) not ( anything \x1b[2J\n").unwrap();
    let anchors = repo().join("images/files/root-anchors.xml");
    let anchors = s(&anchors);
    let image = t.join("image");
    let pubkey = tiny_image(t, &image);
    let pubkey = s(&pubkey);
    // A zone that parses but is not signed: read and wrong.
    let unsigned = t.join("unsigned.zone");
    std::fs::write(
        &unsigned,
        ". 86400 IN SOA a.root-servers.net. nstld.verisign-grs.com. 7 1800 900 604800 86400\n\
         . 518400 IN NS a.root-servers.net.\n",
    )
    .unwrap();
    // An image folder whose manifest is not one (for `inspect`, which does not verify).
    let bad_manifest = t.join("bad-manifest");
    copy_dir(&image, &bad_manifest);
    std::fs::write(bad_manifest.join(MANIFEST), b"{\"name\": 1}").unwrap();
    let key = keygen(t, "k");

    for (args, code, needle) in [
        // Not read: 1.
        (
            vec!["zone", "verify", "--anchors", anchors, s(&missing)],
            1,
            "missing not read",
        ),
        (
            vec!["zone", "verify", "--anchors", anchors, s(&dir)],
            1,
            "it is a directory",
        ),
        (
            vec!["zone", "verify", "--anchors", anchors, "/dev/zero"],
            1,
            "character device",
        ),
        (
            vec!["zone", "verify", "--anchors", "/dev/zero", s(&unsigned)],
            1,
            "trust anchors /dev/zero",
        ),
        (
            vec!["zone", "verify", "--anchors", s(&missing), s(&unsigned)],
            1,
            "trust anchors",
        ),
        (
            vec!["verify", "--pubkey", pubkey, s(&missing)],
            1,
            "missing: cannot read",
        ),
        (
            vec!["verify", "--pubkey", pubkey, s(&garbage)],
            1,
            "not a directory",
        ),
        (
            vec!["verify", "--pubkey", s(&missing), s(&image)],
            1,
            "missing",
        ),
        (vec!["inspect", s(&missing)], 1, "cannot read"),
        (vec!["check", s(&missing)], 1, "missing: cannot read"),
        (
            vec!["check", s(&dir)],
            1,
            "a-folder: the recipe is a directory, not a regular file",
        ),
        (vec!["check", s(&garbage)], 1, "garbage"),
        (
            vec!["site", "check", s(&missing)],
            1,
            "missing: cannot read",
        ),
        (
            vec!["site", "check", s(&dir)],
            1,
            "a-folder: the site config is a directory",
        ),
        (vec!["site", "check", s(&garbage)], 1, "garbage"),
        (vec!["keygen", "--out", s(&key)], 1, "refusing to overwrite"),
        (
            vec![
                "zone",
                "fetch",
                "--anchors",
                anchors,
                "--server",
                "127.0.0.1:1",
                "--out",
                s(&t.join("z")),
            ],
            1,
            "127.0.0.1:1",
        ),
        // Read and wrong: 3.
        (
            vec!["zone", "verify", "--anchors", anchors, s(&garbage)],
            3,
            "garbage: not a valid zone file",
        ),
        (
            vec!["zone", "verify", "--anchors", anchors, s(&unsigned)],
            3,
            "zone serial 7 did not verify",
        ),
        (
            vec!["verify", "--pubkey", pubkey, s(&dir)],
            3,
            "manifest.json: missing",
        ),
        (
            vec!["inspect", s(&bad_manifest)],
            3,
            "not an image manifest",
        ),
        (vec!["inspect", s(&dir)], 3, "manifest.json: missing"),
        // Usage errors: 2.
        (
            vec!["frobnicate"],
            2,
            "unrecognized subcommand 'frobnicate'",
        ),
        (vec!["verify"], 2, "required arguments were not provided"),
        (vec!["zone", "verify", "x", "--bogus"], 2, "--bogus"),
        (vec!["completions", "tcsh"], 2, "tcsh"),
        (vec!["manpage"], 2, "needs --out"),
        (
            vec!["boot", s(&dir), "--accel", "kvm", "--icount"],
            2,
            "it needs --accel tcg",
        ),
    ] {
        let v = assert_failure(&args, code, needle);
        if code != 2 || args[0] == "manpage" {
            let command = if args[0] == "zone" || args[0] == "site" {
                format!("{} {}", args[0], args[1])
            } else {
                args[0].to_string()
            };
            assert_eq!(v["command"], command.as_str(), "{args:?}: {v:#}");
        }
    }
    // The failure object of a zone that did not verify carries its report.
    let v = assert_failure(
        &["zone", "verify", "--anchors", anchors, s(&unsigned)],
        3,
        "DNSSEC",
    );
    assert_eq!(v["verified"], false);
    assert_eq!(v["serial"], 7);
    assert_eq!(v["zonemd"]["ok"], false);
    // Without --json the same failure is text on stderr and nothing machine-shaped on stdout.
    let o = run(bin()
        .args(["zone", "verify", "--anchors", anchors])
        .arg(&unsigned));
    assert_eq!(o.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&o.stdout).contains("NOT VERIFIED"));
    assert!(String::from_utf8_lossy(&o.stderr).contains("error: "));
    // `--json` after `--` is an argument, not the flag: the usage error is text only.
    let o = run(bin().args(["zone", "verify", "--", "--json"]));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(o.stdout.is_empty(), "{}", text(&o));
}

#[test]
fn json_successes_say_ok() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let image = t.join("image");
    let pubkey = tiny_image(t, &image);
    let (rc, v, _) = json(&["verify", s(&image), "--pubkey", s(&pubkey)]);
    assert_eq!(
        (rc, &v["ok"], &v["name"]),
        (0, &Value::Bool(true), &"imrs-tiny".into())
    );
    let (rc, v, _) = json(&["inspect", s(&image)]);
    assert_eq!((rc, &v["ok"]), (0, &Value::Bool(true)));
    assert_eq!(v["files"].as_array().unwrap().len(), 5, "{v:#}");
    let (rc, v, _) = json(&["keygen", "--out", s(&t.join("k2"))]);
    assert_eq!((rc, &v["ok"]), (0, &Value::Bool(true)));
    assert_eq!(v["key_id"].as_str().unwrap().len(), 16, "{v:#}");
    let recipe = repo().join("images/qemu.toml");
    let (rc, v, _) = json(&["check", s(&recipe)]);
    assert_eq!((rc, &v["ok"]), (0, &Value::Bool(true)));
    let site = t.join("lab.toml");
    std::fs::copy(repo().join("images/sites/lab.toml"), &site).unwrap();
    let (rc, v, _) = json(&["site", "check", s(&site)]);
    assert_eq!((rc, &v["ok"]), (0, &Value::Bool(true)));
    // `site sign` printed nothing with --json before; now its one object.
    let (rc, v, _) = json(&["site", "sign", s(&site), "--key", s(&t.join("k2"))]);
    assert_eq!((rc, &v["ok"]), (0, &Value::Bool(true)));
    assert!(v["signature"].as_str().unwrap().ends_with("lab.toml.sig"));
    let (rc, v, _) = json(&["--version"]);
    assert_eq!((rc, &v["ok"]), (0, &Value::Bool(true)));
    assert!(v["version"].as_str().unwrap().contains("(commit "), "{v:#}");
}

#[test]
fn version_names_the_git_commit() {
    let o = run(bin().arg("--version"));
    assert!(o.status.success());
    let version = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert!(
        version.starts_with(&format!(
            "imrs-build {} (commit ",
            env!("CARGO_PKG_VERSION")
        )),
        "{version}"
    );
    let head = Command::new("git")
        .arg("-C")
        .arg(repo())
        .args(["rev-parse", "--short=12", "HEAD"])
        .output();
    match head {
        Ok(h) if h.status.success() => {
            let hash = String::from_utf8_lossy(&h.stdout).trim().to_string();
            assert!(
                version.contains(&format!("(commit {hash}")),
                "{version} does not name HEAD {hash}"
            );
        }
        // A source tree without git: the build says so instead of failing.
        _ => assert!(version.ends_with("(commit unknown)"), "{version}"),
    }
}

#[test]
fn completions_and_man_pages_come_from_the_command_line() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let o = run(bin().args(["completions", shell]));
        assert!(o.status.success(), "{shell}: {}", text(&o));
        let script = String::from_utf8_lossy(&o.stdout);
        for word in ["imrs-build", "verify", "inspect", "zone", "lab", "manpage"] {
            assert!(script.contains(word), "{shell} script lacks {word}");
        }
    }
    let o = run(bin().arg("manpage"));
    assert!(o.status.success(), "{}", text(&o));
    let page = String::from_utf8_lossy(&o.stdout);
    assert!(
        page.starts_with(".ie") || page.contains(".TH imrs-build 1"),
        "{page}"
    );
    for word in ["verify", "zone", "completions", "Exit codes"] {
        assert!(page.contains(word), "main page lacks {word}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("man");
    let (rc, v, _) = json(&["manpage", "--out", s(&out)]);
    assert_eq!((rc, &v["ok"]), (0, &Value::Bool(true)));
    for name in [
        "imrs-build.1",
        "imrs-build-verify.1",
        "imrs-build-zone-verify.1",
        "imrs-build-zone-fetch.1",
        "imrs-build-site-check.1",
        "imrs-build-completions.1",
    ] {
        let p = out.join(name);
        let page = std::fs::read_to_string(&p).unwrap_or_default();
        assert!(page.contains(".TH"), "{}: {page}", p.display());
    }
    assert_eq!(
        v["pages"].as_array().unwrap().len(),
        std::fs::read_dir(&out).unwrap().count()
    );
}
