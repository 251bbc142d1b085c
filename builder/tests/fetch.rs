//! `fetch` without the host's apt: a local HTTP server on loopback plays the Debian mirror and the
//! snapshot archive (`$IMRS_SNAPSHOT_ARCHIVE`), the lock names made-up packages on it, and the
//! binary runs with a `PATH` whose `apt-get` and `apt-cache` only leave a mark. Covered: mirror
//! first; an unreachable mirror (closed port) with the snapshot serving the file; a package no
//! source has (exit 4, every URL named); a source serving wrong bytes (refused, nothing cached);
//! an old-schema lock. The last test runs `lock` through the host's real apt (skipped without it).

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};

use common::*;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const TS: &str = "20260731T000000Z";

/// A tiny HTTP/1.1 server on 127.0.0.1: serves `files` (path -> bytes), 404 otherwise, and logs
/// every request path (percent-escapes decoded).
struct Server {
    port: u16,
    files: Arc<Mutex<BTreeMap<String, Vec<u8>>>>,
    log: Arc<Mutex<Vec<String>>>,
}

fn serve_one(
    stream: TcpStream,
    files: &Mutex<BTreeMap<String, Vec<u8>>>,
    log: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
    }
    let raw = request.split_whitespace().nth(1).unwrap_or("/");
    // A raw '+' or '~' in a pool path would show that the client did not escape it.
    let path = imrs_build::apt::percent_decode(raw);
    log.lock().unwrap().push(format!("{raw} {path}"));
    let body = files.lock().unwrap().get(&path).cloned();
    let mut w = stream;
    match body {
        Some(b) => {
            write!(
                w,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                b.len()
            )?;
            w.write_all(&b)?;
        }
        None => w.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )?,
    }
    w.flush()
}

impl Server {
    fn start() -> Server {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let files = Arc::new(Mutex::new(BTreeMap::new()));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (f, g) = (files.clone(), log.clone());
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let _ = serve_one(s, &f, &g);
            }
        });
        Server { port, files, log }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn put(&self, path: &str, data: &[u8]) {
        self.files
            .lock()
            .unwrap()
            .insert(path.to_string(), data.to_vec());
    }

    fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// One made-up package: its lock entry and bytes.
struct Pkg {
    entry: Value,
    data: Vec<u8>,
}

fn pkg(name: &str, version: &str, role: &str, archive: &str, mirror: &str) -> Pkg {
    let data: Vec<u8> = format!("{name} {version} ")
        .bytes()
        .cycle()
        .take(3000 + name.len() * 97)
        .collect();
    let pool = if archive == "debian-security" {
        "pool/updates/main"
    } else {
        "pool/main"
    };
    let first = &name[..1];
    let file_version = version.split_once(':').map_or(version, |(_, v)| v);
    let entry = json!({
        "name": name, "version": version, "architecture": "amd64",
        "size": data.len(), "sha256": hex::encode(Sha256::digest(&data)),
        "mirror": format!("{mirror}/{archive}"), "archive": archive,
        "suite": if archive == "debian-security" { "bookworm-security" } else { "bookworm" },
        "component": "main",
        "filename": format!("{pool}/{first}/{name}/{name}_{file_version}_amd64.deb"),
        "role": role,
    });
    Pkg { entry, data }
}

/// The qemu recipe and a lock of made-up packages whose mirror is `mirror` (no trailing slash;
/// `/debian` or `/debian-security` is appended).
struct Fixture {
    dir: tempfile::TempDir,
    pkgs: Vec<Pkg>,
}

impl Fixture {
    fn new(mirror: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["profiles", "files", "cache", "bin"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        std::fs::copy(
            repo().join("images/qemu.toml"),
            dir.path().join("qemu.toml"),
        )
        .unwrap();
        std::fs::copy(
            repo().join("images/profiles/qemu.toml"),
            dir.path().join("profiles/qemu.toml"),
        )
        .unwrap();
        std::fs::copy(
            repo().join("images/files/root-anchors.xml"),
            dir.path().join("files/root-anchors.xml"),
        )
        .unwrap();
        // apt-get and apt-cache that only leave a mark: fetch must never run them.
        for tool in ["apt-get", "apt-cache"] {
            let p = dir.path().join("bin").join(tool);
            std::fs::write(
                &p,
                format!(
                    "#!/bin/sh\necho {tool} >> '{}'\nexit 100\n",
                    dir.path().join("apt-was-run").display()
                ),
            )
            .unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let pkgs = vec![
            pkg("bird2", "2.0.12-7", "userland", "debian", mirror),
            pkg("chrony", "4.3-2+deb12u3", "userland", "debian", mirror),
            // An epoch, '+' and '~': escaped in URLs, decoded by the server.
            pkg(
                "libfoo1",
                "1:2.0+dfsg-1~deb12u1",
                "dependency",
                "debian-security",
                mirror,
            ),
            pkg(
                "linux-image-6.1.0-99-amd64",
                "6.1.999-1",
                "kernel",
                "debian-security",
                mirror,
            ),
            pkg("nftables", "1.0.6-2+deb12u2", "userland", "debian", mirror),
            pkg("nsd", "4.6.1-1", "userland", "debian", mirror),
        ];
        let f = Fixture { dir, pkgs };
        f.write_lock(|_| {});
        f
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn write_lock(&self, edit: impl Fn(&mut Value)) {
        let mut lock = json!({
            "schema": 2, "source_date_epoch": 1_785_456_000, "snapshot": TS,
            "architecture": "amd64", "kernel_release": "6.1.0-99-amd64",
            "packages": self.pkgs.iter().map(|p| p.entry.clone()).collect::<Vec<_>>(),
        });
        edit(&mut lock);
        std::fs::write(
            self.path("qemu.lock.json"),
            serde_json::to_vec_pretty(&lock).unwrap(),
        )
        .unwrap();
    }

    fn get(&self, name: &str) -> &Pkg {
        self.pkgs.iter().find(|p| p.entry["name"] == name).unwrap()
    }

    /// Mirror path of a package (`/debian/pool/...`).
    fn mirror_path(&self, name: &str) -> String {
        let e = &self.get(name).entry;
        format!(
            "/{}/{}",
            e["archive"].as_str().unwrap(),
            e["filename"].as_str().unwrap()
        )
    }

    /// Snapshot path of a package (`/archive/debian/TS/pool/...`).
    fn snapshot_path(&self, name: &str) -> String {
        let e = &self.get(name).entry;
        format!(
            "/archive/{}/{TS}/{}",
            e["archive"].as_str().unwrap(),
            e["filename"].as_str().unwrap()
        )
    }

    fn cached(&self, name: &str) -> PathBuf {
        let e = &self.get(name).entry;
        self.path("cache/debs").join(format!(
            "{name}_{}_amd64.deb",
            e["version"].as_str().unwrap().replace(':', "%3a")
        ))
    }

    /// `imrs-build fetch` with apt absent from PATH (only the marking stand-ins), no proxy, and
    /// the snapshot archive at `snapshot_root`.
    fn fetch(&self, snapshot_root: &str, extra: &[&str]) -> Output {
        let mut c = bin();
        c.arg("fetch")
            .arg(self.path("qemu.toml"))
            .arg("--cache")
            .arg(self.path("cache"))
            .args(extra)
            .env("PATH", self.path("bin"))
            .env("IMRS_SNAPSHOT_ARCHIVE", snapshot_root);
        for v in [
            "http_proxy",
            "https_proxy",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "all_proxy",
        ] {
            c.env_remove(v);
        }
        run(&mut c)
    }

    fn assert_apt_never_ran(&self) {
        assert!(
            !self.path("apt-was-run").exists(),
            "fetch ran {}",
            std::fs::read_to_string(self.path("apt-was-run")).unwrap_or_default()
        );
    }

    /// Files in the cache's debs folder (names), temporary files included.
    fn cache_files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.path("cache/debs"))
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

fn sha256_of(p: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(p).unwrap()))
}

#[test]
fn fetch_downloads_from_the_mirror_without_apt() {
    let srv = Server::start();
    let f = Fixture::new(&srv.url(""));
    for p in &f.pkgs {
        srv.put(&f.mirror_path(p.entry["name"].as_str().unwrap()), &p.data);
    }
    let o = f.fetch(&srv.url("/archive"), &["--json"]);
    assert!(o.status.success(), "{}", text(&o));
    f.assert_apt_never_ran();
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let all = f.pkgs.len();
    assert_eq!(v["downloaded"], all, "{v}");
    for p in &f.pkgs {
        let name = p.entry["name"].as_str().unwrap();
        assert_eq!(
            sha256_of(&f.cached(name)),
            p.entry["sha256"].as_str().unwrap()
        );
    }
    let reqs = srv.requests();
    assert_eq!(reqs.len(), all, "{reqs:?}");
    assert!(
        reqs.iter().all(|r| !r.contains("/archive/")),
        "the snapshot was asked although the mirror had everything: {reqs:?}"
    );
    // '+' and '~' travel escaped.
    let foo = reqs.iter().find(|r| r.contains("libfoo1")).unwrap();
    assert!(
        foo.starts_with(
            "/debian-security/pool/updates/main/l/libfoo1/libfoo1_2.0%2Bdfsg-1%7Edeb12u1_amd64.deb "
        ),
        "{foo}"
    );
    // Everything is cached now: nothing is downloaded again.
    let o = f.fetch(&srv.url("/archive"), &["--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (v["cached"].as_u64(), v["downloaded"].as_u64()),
        (Some(all as u64), Some(0))
    );
    assert_eq!(srv.requests().len(), all);
}

#[test]
fn an_unreachable_mirror_falls_back_to_the_snapshot_archive() {
    let srv = Server::start();
    let dead = format!("http://127.0.0.1:{}", closed_port());
    let f = Fixture::new(&dead);
    for p in &f.pkgs {
        srv.put(&f.snapshot_path(p.entry["name"].as_str().unwrap()), &p.data);
    }
    let o = f.fetch(&srv.url("/archive"), &[]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    f.assert_apt_never_ran();
    for p in &f.pkgs {
        let name = p.entry["name"].as_str().unwrap();
        assert_eq!(
            sha256_of(&f.cached(name)),
            p.entry["sha256"].as_str().unwrap(),
            "{name}"
        );
    }
    // Each fallback is reported, naming the mirror URL that failed; the dead host is waited
    // for once, not once per package.
    assert!(
        t.contains(&format!("{dead}/debian/pool/main/b/bird2/")),
        "{t}"
    );
    assert!(t.contains("unreachable"), "{t}");
    assert!(t.contains("not tried, unreachable earlier"), "{t}");
    let reqs = srv.requests();
    assert_eq!(reqs.len(), f.pkgs.len(), "{reqs:?}");
    assert!(
        reqs.iter()
            .all(|r| r.starts_with("/archive/debian") && r.contains(&format!("/{TS}/pool/"))),
        "{reqs:?}"
    );

    // Nothing reachable at all: a network problem (exit 1), not a gone package (exit 4).
    std::fs::remove_file(f.cached("nsd")).unwrap();
    let o = f.fetch(&format!("http://127.0.0.1:{}/archive", closed_port()), &[]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("nsd 4.6.1-1: no source could be reached") && t.contains(&dead),
        "{t}"
    );
}

#[test]
fn a_package_no_source_has_exits_4_naming_every_url() {
    let srv = Server::start();
    let f = Fixture::new(&srv.url(""));
    // The mirror moved on (nothing there); the snapshot has all but libfoo1.
    for p in &f.pkgs {
        let name = p.entry["name"].as_str().unwrap();
        if name != "libfoo1" {
            srv.put(&f.snapshot_path(name), &p.data);
        }
    }
    let o = f.fetch(&srv.url("/archive"), &[]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(4), "{t}");
    f.assert_apt_never_ran();
    let mirror_url = srv.url(
        "/debian-security/pool/updates/main/l/libfoo1/libfoo1_2.0%2Bdfsg-1%7Edeb12u1_amd64.deb",
    );
    let snapshot_url = srv.url(&format!(
        "/archive/debian-security/{TS}/pool/updates/main/l/libfoo1/\
         libfoo1_2.0%2Bdfsg-1%7Edeb12u1_amd64.deb"
    ));
    assert!(
        t.contains("libfoo1 1:2.0+dfsg-1~deb12u1: no source has it"),
        "{t}"
    );
    assert!(t.contains(&format!("{mirror_url} (HTTP 404)")), "{t}");
    assert!(t.contains(&format!("{snapshot_url} (HTTP 404)")), "{t}");
    assert!(!f.cached("libfoo1").exists());

    // A third source (--snapshot) that lacks it too is named as well; one that has it serves it.
    let other = tempfile::tempdir().unwrap();
    let base = format!("file://{}", other.path().display());
    let o = f.fetch(&srv.url("/archive"), &["--snapshot", &base]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(4), "{t}");
    assert!(
        t.contains(&mirror_url) && t.contains(&snapshot_url) && t.contains(&base),
        "{t}"
    );
    let foo = f.get("libfoo1");
    let local = other.path().join(foo.entry["filename"].as_str().unwrap());
    std::fs::create_dir_all(local.parent().unwrap()).unwrap();
    std::fs::write(&local, &foo.data).unwrap();
    let o = f.fetch(&srv.url("/archive"), &["--snapshot", &base]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        sha256_of(&f.cached("libfoo1")),
        foo.entry["sha256"].as_str().unwrap()
    );
    f.assert_apt_never_ran();
}

#[test]
fn wrong_bytes_are_refused_and_nothing_is_cached() {
    let srv = Server::start();
    let f = Fixture::new(&srv.url(""));
    for p in &f.pkgs {
        let name = p.entry["name"].as_str().unwrap();
        if name != "nsd" {
            srv.put(&f.mirror_path(name), &p.data);
        }
    }
    // nsd: not on the mirror; the snapshot serves the right size with one byte changed.
    let nsd = f.get("nsd");
    let mut bad = nsd.data.clone();
    bad[1000] ^= 0x01;
    srv.put(&f.snapshot_path("nsd"), &bad);
    let o = f.fetch(&srv.url("/archive"), &[]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("nsd 4.6.1-1: no source served the locked bytes")
            && t.contains(&srv.url(&f.snapshot_path("nsd")))
            && t.contains(&format!(
                "refused: sha256 {}, the lock says {}",
                hex::encode(Sha256::digest(&bad)),
                nsd.entry["sha256"].as_str().unwrap()
            )),
        "{t}"
    );
    assert!(!f.cached("nsd").exists());
    // The others were stored; nothing else is in the cache (no temporary files either).
    let files = f.cache_files();
    assert_eq!(files.len(), f.pkgs.len() - 1, "{files:?}");
    assert!(
        files
            .iter()
            .all(|n| !n.starts_with("nsd") && n.ends_with(".deb")),
        "{files:?}"
    );

    // A longer body is cut off at the locked size and refused.
    let mut long = nsd.data.clone();
    long.extend_from_slice(&[0u8; 100_000]);
    srv.put(&f.snapshot_path("nsd"), &long);
    let o = f.fetch(&srv.url("/archive"), &[]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("refused: more than the locked"), "{t}");
    assert!(!f.cached("nsd").exists());
    assert_eq!(f.cache_files().len(), f.pkgs.len() - 1);

    // A corrupt cached file is replaced by a good download.
    srv.put(&f.snapshot_path("nsd"), &nsd.data);
    std::fs::write(f.cached("nsd"), &bad).unwrap();
    let o = f.fetch(&srv.url("/archive"), &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("downloading it again"), "{}", text(&o));
    assert_eq!(
        sha256_of(&f.cached("nsd")),
        nsd.entry["sha256"].as_str().unwrap()
    );
    f.assert_apt_never_ran();
}

#[test]
fn old_locks_and_bad_sources_are_refused_with_names() {
    let srv = Server::start();
    let f = Fixture::new(&srv.url(""));
    // Schema 1: no sources recorded.
    f.write_lock(|l| {
        l["schema"] = 1.into();
        let o = l.as_object_mut().unwrap();
        o.remove("snapshot");
    });
    let o = f.fetch(&srv.url("/archive"), &[]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("qemu.lock.json: schema = 1") && t.contains("re-lock"),
        "{t}"
    );
    // A snapshot root that is not a URL.
    f.write_lock(|_| {});
    let o = f.fetch("snapshot.example", &[]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("$IMRS_SNAPSHOT_ARCHIVE = snapshot.example"),
        "{t}"
    );
    let o = f.fetch(&srv.url("/archive"), &["--snapshot", "/not/a/url\n"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("--snapshot = /not/a/url\\n: not an http"), "{t}");
    assert!(srv.requests().is_empty());
    f.assert_apt_never_ran();
}

/// `lock` through the host's apt records where each package comes from, and re-locking the
/// committed lock while the mirror has the same versions changes nothing (same bytes).
#[test]
fn lock_records_mirror_suite_and_pool_path() {
    if !require(
        have_apt(),
        "apt package lists (run scripts/install-deps.sh)",
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let committed = repo().join("images/qemu.lock.json");
    let copy = tmp.path().join("qemu.lock.json");
    std::fs::copy(&committed, &copy).unwrap();
    let relock = |lock: &Path, recipe: &Path| {
        run(bin()
            .args(["--json", "lock"])
            .arg(recipe)
            .arg("--lock")
            .arg(lock))
    };
    let o = relock(&copy, &repo().join("images/qemu.toml"));
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let new: Value = serde_json::from_slice(&std::fs::read(&copy).unwrap()).unwrap();
    let old: Value = serde_json::from_slice(&std::fs::read(&committed).unwrap()).unwrap();
    let pins = |l: &Value| -> Vec<(Value, Value, Value)> {
        l["packages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["name"].clone(), p["version"].clone(), p["sha256"].clone()))
            .collect()
    };
    if pins(&new) == pins(&old) {
        assert_eq!(v["changed"], false, "{v}");
        assert_eq!(
            std::fs::read(&copy).unwrap(),
            std::fs::read(&committed).unwrap(),
            "re-locking the same packages must give the same bytes"
        );
    } else {
        eprintln!("the mirror moved on since the committed lock; checking the fields only");
    }
    assert_eq!(new["schema"], 2);
    let ts = new["snapshot"].as_str().unwrap();
    assert!(
        ts.len() == 16 && ts.ends_with('Z') && ts.as_bytes()[8] == b'T',
        "{ts}"
    );
    for p in new["packages"].as_array().unwrap() {
        let mirror = p["mirror"].as_str().unwrap();
        assert!(
            [
                "http://deb.debian.org/debian",
                "http://deb.debian.org/debian-security"
            ]
            .contains(&mirror),
            "{p}"
        );
        assert_eq!(
            p["archive"].as_str().unwrap(),
            mirror.rsplit('/').next().unwrap()
        );
        assert!(
            ["bookworm", "bookworm-updates", "bookworm-security"]
                .contains(&p["suite"].as_str().unwrap()),
            "{p}"
        );
        assert_eq!(p["component"], "main");
        assert!(p["filename"].as_str().unwrap().starts_with("pool/"), "{p}");
    }

    // A recipe that allows only bookworm-security cannot take bird2 from bookworm.
    let rdir = tmp.path().join("recipe");
    // The recipe's own files are read from beside it (profiles/, files/).
    for f in ["profiles/qemu.toml", "files/root-anchors.xml"] {
        let to = rdir.join(f);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(repo().join("images").join(f), to).unwrap();
    }
    let text_r = std::fs::read_to_string(repo().join("images/qemu.toml")).unwrap();
    let narrowed = text_r.replace(
        "suites = [\"bookworm\", \"bookworm-updates\", \"bookworm-security\"]",
        "suites = [\"bookworm-security\"]",
    );
    assert_ne!(narrowed, text_r);
    std::fs::write(rdir.join("qemu.toml"), narrowed).unwrap();
    let out = tmp.path().join("narrow.lock.json");
    let o = relock(&out, &rdir.join("qemu.toml"));
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("qemu.toml: apt.suites: apt would take")
            && t.contains("which apt.suites (bookworm-security) does not name"),
        "{t}"
    );
    assert!(!out.exists(), "no lock may be written");
}
