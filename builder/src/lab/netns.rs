//! The lab's network namespace: the host organisation's side of the appliance's cable. One
//! namespace per run (`imrs-lab-<pid>-<n>`), a tap device in it that QEMU attaches the guest's
//! NIC to, the router's, transfer server's and receiver's addresses on that tap, and host routes
//! to the appliance's service addresses through the guest. Everything (processes left inside
//! included) goes away when the [`NetNs`] is dropped.

use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};
use ipnet::IpNet;

use super::proc::run;

/// Where `ip netns` keeps its namespace handles.
pub const NETNS_DIR: &str = "/run/netns";

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A network namespace, deleted with everything in it when dropped.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `imrs-lab-<pid>-<n>` with its loopback up.
    pub fn create() -> Result<NetNs> {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!("imrs-lab-{}-{n}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]))
            .context("cannot create the lab's network namespace (root and iproute2 needed)")?;
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its handle under [`NETNS_DIR`].
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// `ip -n NS ARGS...`, failing with its stderr.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let out = run(Command::new("ip").args(["-n", &self.name]).args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A command that runs `program` inside the namespace (`ip netns exec` execs it, so the
    /// child's pid is the program's).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Wraps an already built command so that it runs inside the namespace.
    pub fn wrap(&self, cmd: &Command) -> Command {
        let mut c = self.command(cmd.get_program());
        c.args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        if let Some(d) = cmd.get_current_dir() {
            c.current_dir(d);
        }
        c
    }

    /// Creates tap `ifname` in the namespace with `addrs` (IPv6 without duplicate address
    /// detection) and sets it up. The link has no carrier until QEMU opens it.
    pub fn add_tap(&self, ifname: &str, addrs: &[IpNet]) -> Result<()> {
        self.ip(&["tuntap", "add", "dev", ifname, "mode", "tap"])
            .with_context(|| format!("cannot create tap {ifname} in {}", self.name))?;
        for a in addrs {
            let s = a.to_string();
            let mut args = vec!["addr", "add", s.as_str(), "dev", ifname];
            if matches!(a, IpNet::V6(_)) {
                args.push("nodad");
            }
            self.ip(&args)
                .with_context(|| format!("cannot add {s} to {ifname}"))?;
        }
        self.ip(&["link", "set", ifname, "up"])?;
        Ok(())
    }

    /// A host route to `dest` through `via` on `ifname` (`onlink`: valid before the tap has a
    /// carrier).
    pub fn add_route(&self, dest: IpAddr, via: IpAddr, ifname: &str) -> Result<()> {
        if dest.is_ipv4() != via.is_ipv4() {
            bail!("route to {dest} via {via}: address families differ");
        }
        let d = IpNet::from(dest).to_string();
        let v = via.to_string();
        self.ip(&["route", "add", &d, "via", &v, "dev", ifname, "onlink"])
            .with_context(|| format!("cannot route {d} via {v} in {}", self.name))?;
        Ok(())
    }

    /// Runs `f` on a thread that has entered the namespace, so that every socket `f` opens
    /// lives there (the lab itself stays in the host's namespace).
    pub fn run_inside<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        let path = self.path();
        let handle = std::thread::spawn(move || -> Result<T> {
            let file = std::fs::File::open(&path)
                .with_context(|| format!("{}: cannot open the namespace", path.display()))?;
            // SAFETY: setns(2) with a valid, open namespace fd and CLONE_NEWNET changes the
            // network namespace of this thread only; the thread ends when `f` returns.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("{}: setns", path.display()));
            }
            Ok(f())
        });
        handle
            .join()
            .map_err(|_| anyhow::anyhow!("a thread inside {} panicked", self.name))?
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Anything still running inside (a daemon whose guard leaked) goes first.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<libc::pid_t>()
                    && pid > 1
                {
                    // SAFETY: kill(2) with integers; the pid is a process inside the namespace
                    // this lab created.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(std::process::Stdio::null())
            .status();
    }
}
