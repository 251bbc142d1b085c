//! Real daemons for tests, each from a private directory and killed in `Drop`: any process
//! ([`Daemon`]), FRR as the host's router ([`Frr`]: zebra + bgpd + vtysh queries), and polling
//! helpers.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::netns::NetNs;

/// FRR's zebra.
pub const ZEBRA: &str = "/usr/lib/frr/zebra";
/// FRR's bgpd.
pub const BGPD: &str = "/usr/lib/frr/bgpd";
/// FRR's shell.
pub const VTYSH: &str = "/usr/bin/vtysh";
/// BIRD 2.
pub const BIRD: &str = "/usr/sbin/bird";
/// NSD.
pub const NSD: &str = "/usr/sbin/nsd";
/// Knot DNS.
pub const KNOTD: &str = "/usr/sbin/knotd";

/// A process in its own process group, killed (SIGKILL to the whole group, so forked workers
/// such as NSD's go too) and reaped when dropped; its stdout and stderr go to a log file.
#[derive(Debug)]
pub struct Daemon {
    name: String,
    log: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    /// Starts `program args` (inside `ns` when given), logging to `log`.
    pub fn spawn(
        name: &str,
        ns: Option<&NetNs>,
        program: &Path,
        args: &[String],
        log: &Path,
    ) -> Daemon {
        let mut cmd = match ns {
            Some(ns) => ns.command(program),
            None => Command::new(program),
        };
        let out = File::create(log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let err = out.try_clone().unwrap();
        cmd.args(args)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({}): {e}", program.display()));
        Daemon {
            name: name.to_string(),
            log: log.to_path_buf(),
            child: Some(child),
        }
    }

    /// The process id (`ip netns exec` execs the program, so this is the daemon itself).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills it and its process group now (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", c.id())])
                .stderr(Stdio::null())
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Panics with the log unless it is running.
    pub fn assert_running(&mut self) {
        assert!(self.running(), "{} exited:\n{}", self.name, self.log());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `f` every 50 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// FRR (zebra + bgpd) as the host's router inside a namespace.
#[derive(Debug)]
pub struct Frr {
    dir: PathBuf,
    ns_name: String,
    // Field order: bgpd is dropped (killed) before zebra.
    bgpd: Daemon,
    zebra: Daemon,
}

/// A route as FRR's best path shows it: AS path and whether it is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrrRoute {
    /// AS path as FRR prints it (`"20144"`).
    pub path: String,
    /// Valid (next hop resolved).
    pub valid: bool,
}

impl Frr {
    /// Starts zebra and bgpd in `ns` from `dir` (created, owned by `frr`) with `bgpd_conf`.
    pub fn start(ns: &NetNs, dir: &Path, bgpd_conf: &str) -> Frr {
        std::fs::create_dir_all(dir).unwrap();
        let conf = dir.join("bgpd.conf");
        std::fs::write(&conf, bgpd_conf).unwrap();
        let chown = Command::new("chown")
            .args(["-R", "frr:frr"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(chown.success(), "chown frr {}", dir.display());
        let d = |p: &str| dir.join(p).to_string_lossy().into_owned();
        let zebra = Daemon::spawn(
            "zebra",
            Some(ns),
            Path::new(ZEBRA),
            &[
                "-u",
                "frr",
                "-g",
                "frr",
                "-z",
                &d("zserv.api"),
                "-i",
                &d("zebra.pid"),
                "--vty_socket",
                &d(""),
                "-P",
                "0",
            ]
            .map(String::from),
            &dir.join("zebra.log"),
        );
        // bgpd connects to zebra's socket: wait for it.
        let api = dir.join("zserv.api");
        wait_for(Duration::from_secs(10), || api.exists().then_some(()))
            .unwrap_or_else(|| panic!("zebra did not create {}", api.display()));
        let bgpd = Daemon::spawn(
            "bgpd",
            Some(ns),
            Path::new(BGPD),
            &[
                "-u",
                "frr",
                "-g",
                "frr",
                "-S",
                "-f",
                &d("bgpd.conf"),
                "-z",
                &d("zserv.api"),
                "-i",
                &d("bgpd.pid"),
                "--vty_socket",
                &d(""),
                "-P",
                "0",
            ]
            .map(String::from),
            &dir.join("bgpd.log"),
        );
        let mut frr = Frr {
            dir: dir.to_path_buf(),
            ns_name: ns.name().to_string(),
            bgpd,
            zebra,
        };
        if wait_for(Duration::from_secs(10), || frr.routes("ipv6")).is_none() {
            frr.assert_running();
            panic!("bgpd never answered vtysh:\n{}", frr.logs());
        }
        frr
    }

    /// Runs a vtysh command against this FRR and returns its output.
    pub fn vtysh(&self, command: &str) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns_name, VTYSH, "--vty_socket"])
            .arg(&self.dir)
            .args(["-c", command])
            .output()
            .expect("vtysh");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The BGP table of one family (`ipv4` or `ipv6`): prefix -> best route; `None` when bgpd
    /// does not answer yet.
    pub fn routes(&self, family: &str) -> Option<BTreeMap<String, FrrRoute>> {
        let text = self.vtysh(&format!("show bgp {family} unicast json"));
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        let mut out = BTreeMap::new();
        for (prefix, paths) in v.get("routes")?.as_object()? {
            for p in paths.as_array()? {
                let best = p.get("bestpath").and_then(|b| b.as_bool()).unwrap_or(false);
                if best || paths.as_array()?.len() == 1 {
                    out.insert(
                        prefix.clone(),
                        FrrRoute {
                            path: p.get("path").and_then(|s| s.as_str()).unwrap_or("").into(),
                            valid: p.get("valid").and_then(|b| b.as_bool()).unwrap_or(false),
                        },
                    );
                }
            }
        }
        Some(out)
    }

    /// Prefixes of one family that FRR holds as valid routes.
    pub fn prefixes(&self, family: &str) -> Vec<String> {
        self.routes(family)
            .map(|r| {
                r.into_iter()
                    .filter(|(_, r)| r.valid)
                    .map(|(p, _)| p)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Logs of zebra and bgpd, for failure messages.
    pub fn logs(&self) -> String {
        format!("zebra:\n{}\nbgpd:\n{}", self.zebra.log(), self.bgpd.log())
    }

    /// Panics with the logs unless both daemons run.
    pub fn assert_running(&mut self) {
        let logs = self.logs();
        assert!(self.zebra.running(), "zebra exited:\n{logs}");
        assert!(self.bgpd.running(), "bgpd exited:\n{logs}");
    }
}

/// A bgpd config: AS `asn`, router id `router_id`, eBGP neighbours (address, AS) each activated
/// in its own family only, no policy required, fast timers for tests.
pub fn frr_bgpd_conf(asn: u32, router_id: &str, neighbors: &[(&str, u32)]) -> String {
    let mut c = format!(
        "frr defaults traditional\nhostname host-router\nlog stdout informational\n!\nrouter bgp {asn}\n \
         bgp router-id {router_id}\n no bgp ebgp-requires-policy\n no bgp default ipv4-unicast\n"
    );
    for (addr, as_) in neighbors {
        c += &format!(
            " neighbor {addr} remote-as {as_}\n neighbor {addr} timers 3 9\n \
             neighbor {addr} timers connect 1\n"
        );
    }
    for fam in ["ipv4", "ipv6"] {
        c += &format!(" address-family {fam} unicast\n");
        for (addr, _) in neighbors {
            if addr.contains(':') == (fam == "ipv6") {
                c += &format!("  neighbor {addr} activate\n");
            }
        }
        c += " exit-address-family\n";
    }
    c + "!\n"
}
