//! Network namespaces for tests: create one with a unique name (tag + pid), run commands in it,
//! connect two with a veth pair, and remove everything in `Drop`, also when the test panics.
//!
//! Also the prerequisite rule of the project: a missing prerequisite skips the test with a reason,
//! but under `CI=true` it fails it ([`require`]).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// Where `ip netns` keeps its namespace handles.
pub const NETNS_DIR: &str = "/run/netns";

/// Whether this process runs with effective uid 0.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Whether the CI rule applies (`CI=true`): missing prerequisites fail instead of skipping.
pub fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Checks prerequisites: root when `root` is set, and every listed executable. Returns `false`
/// (after printing why) when the test should skip; panics under `CI=true`.
pub fn require(test: &str, root: bool, executables: &[&str]) -> bool {
    let mut missing = Vec::new();
    if root && !is_root() {
        missing.push("root (network namespaces)".to_string());
    }
    for exe in executables {
        if !Path::new(exe).exists() {
            missing.push(exe.to_string());
        }
    }
    if missing.is_empty() {
        return true;
    }
    let reason = format!("{test}: missing prerequisites: {}", missing.join(", "));
    assert!(
        !in_ci(),
        "{reason} (CI=true: a missing prerequisite is a failure)"
    );
    eprintln!("SKIP {reason}");
    false
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A network namespace, deleted (with every process in it) when dropped.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl NetNs {
    /// Creates `imrs-<tag>-<pid>-<n>` and brings its loopback up.
    pub fn new(tag: &str) -> NetNs {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!("imrs-{tag}-{}-{n}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace handle (for `setns`).
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// A command running `program` inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs `ip -n NS ARGS...`, panicking with stderr on failure; returns stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let out = run(Command::new("ip").args(["-n", &self.name]).args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a program inside the namespace and returns its output (whatever the status).
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        self.command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program} in {}: {e}", self.name))
    }

    /// Adds addresses to an interface (IPv6 without duplicate address detection) and sets it up.
    pub fn addr(&self, ifname: &str, addrs: &[&str]) {
        for a in addrs {
            if a.contains(':') {
                self.ip(&["addr", "add", a, "dev", ifname, "nodad"]);
            } else {
                self.ip(&["addr", "add", a, "dev", ifname]);
            }
        }
        self.ip(&["link", "set", ifname, "up"]);
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Connects two namespaces with a veth pair `a_if` (in `a`) <-> `b_if` (in `b`); the links go
/// away with the namespaces.
pub fn veth(a: &NetNs, a_if: &str, b: &NetNs, b_if: &str) {
    run(Command::new("ip").args([
        "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns",
        &b.name,
    ]));
}
