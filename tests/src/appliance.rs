//! The real `imrs-init` as PID 1 of its own namespaces, against a fixture root: the fixture
//! tree, the binary, and a handle on the running init and its console. Shared by the
//! `init_pid1` and `init_serving` tests.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The fixture image's build epoch.
pub const EPOCH: i64 = 1_700_000_000;

/// Skips (or, under CI=true, fails) when the prerequisites are missing.
pub fn prerequisites() -> bool {
    // PID and mount namespaces need root; unshare comes from util-linux.
    crate::netns::require("init_pid1", true, &["/usr/bin/unshare"])
}

/// The imrs-init binary of this target directory, built if needed.
pub fn init_binary() -> PathBuf {
    static BUILT: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut g = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = g.as_ref() {
        return p.clone();
    }
    if let Ok(p) = std::env::var("IMRS_INIT_BIN") {
        *g = Some(PathBuf::from(p));
        return PathBuf::from(std::env::var("IMRS_INIT_BIN").unwrap_or_default());
    }
    // target/<profile>/deps/init_pid1-HASH -> target/<profile>/imrs-init
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let target_dir = profile_dir.parent().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", "imrs-init"])
        .env("CARGO_TARGET_DIR", target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let st = cmd.status().expect("run cargo build -p imrs-init");
    assert!(st.success(), "cargo build -p imrs-init failed");
    let bin = profile_dir.join("imrs-init");
    assert!(bin.exists(), "{} missing after the build", bin.display());
    *g = Some(bin.clone());
    bin
}

pub fn write(root: &Path, rel: &str, text: impl AsRef<[u8]>) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

pub fn script(path: &Path, body: &str) -> PathBuf {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_path_buf()
}

/// A fixture root: image.json for the qemu profile, a signing key, the signed lab site config,
/// and sysfs/procfs files of a machine that passes the qemu profile.
pub fn fixture(root: &Path) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let site = std::fs::read(repo.join("images/sites/lab.toml")).unwrap();
    fixture_with_site(root, &site);
}

/// [`fixture`] with the given site config (signed here with the fixture's key).
pub fn fixture_with_site(root: &Path, site: &[u8]) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let profile = imrs_config::profile::load(&repo.join("images/profiles/qemu.toml")).unwrap();
    let image = serde_json::json!({
        "name": "imrs-test", "version": "0.0.1", "source_date_epoch": EPOCH, "dns": "nsd",
        "kernel_release": "6.1.0-test", "modules": [], "profile": profile, "builder": "init_pid1",
    });
    write(
        root,
        "etc/imrs/image.json",
        serde_json::to_vec_pretty(&image).unwrap(),
    );
    let key = imrs_config::keys::generate().unwrap();
    write(
        root,
        "etc/imrs/site-signing.pub",
        imrs_config::keys::public_pem(&key.verifying_key()),
    );
    write(
        root,
        "etc/imrs/site.toml.sig",
        imrs_config::keys::sign_hex(&key, site),
    );
    write(root, "etc/imrs/site.toml", site);
    write(
        root,
        "etc/imrs/root-anchors.xml",
        std::fs::read(repo.join("images/files/root-anchors.xml")).unwrap(),
    );
    write(root, "sys/class/dmi/id/sys_vendor", "QEMU\n");
    write(
        root,
        "sys/class/dmi/id/product_name",
        "Standard PC (Q35 + ICH9, 2009)\n",
    );
    write(
        root,
        "proc/cpuinfo",
        "processor\t: 0\nflags\t\t: fpu sse sse2\n\n",
    );
    write(root, "proc/meminfo", "MemTotal:        1000000 kB\n");
    let drv = root.join("sys/bus/virtio/drivers/virtio_net");
    std::fs::create_dir_all(&drv).unwrap();
    std::fs::create_dir_all(root.join("sys/class/net/eth0/device")).unwrap();
    std::os::unix::fs::symlink(&drv, root.join("sys/class/net/eth0/device/driver")).unwrap();
    write(root, "sys/class/net/eth0/carrier", "1\n");
    write(
        root,
        "sys/class/rtc/rtc0/since_epoch",
        format!("{}\n", EPOCH + 100),
    );
    write(root, "proc/sys/kernel/random/entropy_avail", "256\n");
}

/// A running init and its console.
pub struct Init {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    /// When it was started.
    pub started: Instant,
}

impl Init {
    /// Starts the init in new PID, mount and network namespaces.
    pub fn start(root: &Path, state: &Path, extra: &str) -> Init {
        Init::start_in(None, root, state, extra)
    }

    /// Starts the init in new PID and mount namespaces inside the named network namespace
    /// `netns` (`ip netns exec`), or in a new empty one when `None`.
    pub fn start_in(netns: Option<&str>, root: &Path, state: &Path, extra: &str) -> Init {
        let cmdline = format!(
            "console=ttyS0 imrs.root={} imrs.state={} {extra}",
            root.display(),
            state.display()
        );
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "/usr/bin/unshare"]);
                c.args(["--pid", "--fork", "--mount-proc", "--kill-child", "--"]);
                c
            }
            None => {
                let mut c = Command::new("/usr/bin/unshare");
                // --net: the network stage configures the namespace's interfaces, never the
                // host's.
                c.args([
                    "--pid",
                    "--net",
                    "--fork",
                    "--mount-proc",
                    "--kill-child",
                    "--",
                ]);
                c
            }
        };
        let mut child = cmd
            .arg(init_binary())
            .env("IMRS_INIT_CMDLINE", cmdline)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start unshare");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                eprintln!("  | {line}");
                l.lock().unwrap().push(line);
            }
        });
        Init {
            child,
            lines,
            started: Instant::now(),
        }
    }

    pub fn console(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    pub fn count(&self, needle: &str) -> usize {
        self.console().iter().filter(|l| l.contains(needle)).count()
    }

    /// Waits until a console line contains `needle`.
    pub fn wait_for(&self, needle: &str, within: Duration) {
        self.wait_for_count(needle, 1, within);
    }

    /// Waits until `n` console lines contain `needle`.
    pub fn wait_for_count(&self, needle: &str, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.count(needle) >= n {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "{} console lines with {needle:?} within {within:?}, not {n}",
            self.count(needle)
        );
    }

    /// Host pid of the init: the first descendant of the started process that lives in
    /// another PID namespace (`unshare` forks it; `ip netns exec` may fork `unshare`).
    pub fn init_pid(&self) -> i32 {
        let own = std::fs::read_link("/proc/self/ns/pid").ok();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let procs = processes();
            let mut frontier = vec![self.child.id() as i32];
            while let Some(parent) = frontier.pop() {
                for p in procs.iter().filter(|p| p.ppid == parent) {
                    if p.pid_ns.is_some() && p.pid_ns != own {
                        return p.pid;
                    }
                    frontier.push(p.pid);
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the init did not start");
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill has no memory-safety preconditions.
        let rc = unsafe { libc::kill(self.init_pid(), sig) };
        assert_eq!(rc, 0, "kill({sig})");
    }

    pub fn wait(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                // Let the reader thread drain the pipe.
                std::thread::sleep(Duration::from_millis(100));
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "the init did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Init {
    fn drop(&mut self) {
        // --kill-child: killing unshare kills the namespace's PID 1 and with it everything in it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
pub struct Proc {
    pub pid: i32,
    pub ppid: i32,
    pub state: char,
    pub pid_ns: Option<PathBuf>,
}

pub fn processes() -> Vec<Proc> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let mut it = stat[close + 1..].split_whitespace();
        let state = it.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let pid_ns = std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
        out.push(Proc {
            pid,
            ppid,
            state,
            pid_ns,
        });
    }
    out
}

/// Processes in the PID namespace of host pid `init`.
pub fn namespace_of(init: i32) -> Vec<Proc> {
    let ns = std::fs::read_link(format!("/proc/{init}/ns/pid")).unwrap();
    processes()
        .into_iter()
        .filter(|p| p.pid_ns.as_deref() == Some(ns.as_path()))
        .collect()
}
