//! Network namespaces: `imrs-<tag>-<pid>-<n>` with its loopback up, commands run inside it,
//! addresses, tap devices (for QEMU), routes, veth pairs between two namespaces, and threads that
//! enter it so that their sockets live there. Everything (processes left inside included) goes
//! away when the [`NetNs`] is dropped.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};
use ipnet::IpNet;
use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::process::run;

/// Where `ip netns` keeps its namespace handles.
pub const NETNS_DIR: &str = "/run/netns";

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A network namespace, deleted with everything in it when dropped.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

/// Whether `tag` may stand in a namespace name: 1 to 16 ASCII letters, digits or `-`.
fn check_tag(tag: &str) -> Result<()> {
    if tag.is_empty()
        || tag.len() > 16
        || !tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        bail!(
            "namespace tag \"{}\": must be 1 to 16 ASCII letters, digits or '-'",
            imrs_config::escape(tag)
        );
    }
    Ok(())
}

impl NetNs {
    /// Creates `imrs-<tag>-<pid>-<n>` with its loopback up.
    pub fn create(tag: &str) -> Result<NetNs> {
        check_tag(tag)?;
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!("imrs-{tag}-{}-{n}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name])).with_context(|| {
            format!("cannot create network namespace {name} (root and iproute2 needed)")
        })?;
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

    /// A command that runs `program` inside the namespace (`ip netns exec` execs it, so the
    /// child's pid is the program's).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Wraps an already built command so that it runs inside the namespace (program, arguments,
    /// environment changes and working folder kept).
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

    /// `ip -n NS ARGS...`, failing with its stderr; returns its stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let out = run(Command::new("ip").args(["-n", &self.name]).args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `program args` inside the namespace and returns its output, whatever its exit
    /// status; fails only when it cannot be started.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<Output> {
        self.command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {program} in {}", self.name))
    }

    /// Adds `addrs` to `ifname` (IPv6 without duplicate address detection) and sets it up.
    pub fn addr(&self, ifname: &str, addrs: &[IpNet]) -> Result<()> {
        for a in addrs {
            let s = a.to_string();
            let mut args = vec!["addr", "add", s.as_str(), "dev", ifname];
            if matches!(a, IpNet::V6(_)) {
                args.push("nodad");
            }
            self.ip(&args)
                .with_context(|| format!("cannot add {s} to {ifname} in {}", self.name))?;
        }
        self.ip(&["link", "set", ifname, "up"])
            .with_context(|| format!("cannot set {ifname} up in {}", self.name))?;
        Ok(())
    }

    /// Creates tap `ifname` in the namespace with `addrs` and sets it up. The link has no
    /// carrier until QEMU opens it.
    pub fn add_tap(&self, ifname: &str, addrs: &[IpNet]) -> Result<()> {
        self.ip(&["tuntap", "add", "dev", ifname, "mode", "tap"])
            .with_context(|| format!("cannot create tap {ifname} in {}", self.name))?;
        self.addr(ifname, addrs)
    }

    /// A host route to `dest` through `via` on `ifname` (`onlink`: valid before the link has a
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
    /// lives there (the caller stays in its own namespace). `f` may borrow: the thread ends
    /// before this returns.
    pub fn run_inside<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let path = self.path();
        std::thread::scope(|s| {
            s.spawn(|| -> Result<T> {
                let file = std::fs::File::open(&path)
                    .with_context(|| format!("{}: cannot open the namespace", path.display()))?;
                // Only this thread changes namespace; it ends when `f` returns.
                setns(&file, CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("{}: setns", path.display()))?;
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("a thread inside {} panicked", self.name))?
        })
    }

    /// The processes inside the namespace (`ip netns pids`).
    pub fn pids(&self) -> Result<Vec<Pid>> {
        let out = run(Command::new("ip").args(["netns", "pids", &self.name]))?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
            .filter(|p| *p > 1)
            .map(Pid::from_raw)
            .collect())
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Anything still running inside (a daemon whose guard leaked) goes first.
        for pid in self.pids().unwrap_or_default() {
            let _ = kill(pid, Signal::SIGKILL);
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Connects two namespaces with a veth pair: `a_if` in `a`, `b_if` in `b`. The links go away
/// with the namespaces.
pub fn veth(a: &NetNs, a_if: &str, b: &NetNs, b_if: &str) -> Result<()> {
    run(Command::new("ip").args([
        "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns",
        &b.name,
    ]))
    .with_context(|| {
        format!(
            "cannot connect {}:{a_if} and {}:{b_if} with a veth pair",
            a.name, b.name
        )
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::time::Duration;

    /// Root is needed for namespaces: skipped without it, failed under `CI=true`.
    fn root() -> bool {
        if nix::unistd::geteuid().is_root() {
            return true;
        }
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true: network namespace tests need root"
        );
        eprintln!("SKIP: network namespace tests need root");
        false
    }

    #[test]
    fn two_namespaces_talk_over_a_veth_and_go_away_with_their_processes() {
        if !root() {
            return;
        }
        let a = NetNs::create("ut-a").unwrap();
        let b = NetNs::create("ut-b").unwrap();
        assert!(
            a.name()
                .starts_with(&format!("imrs-ut-a-{}-", std::process::id()))
        );
        assert!(a.path().exists());
        veth(&a, "v0", &b, "v1").unwrap();
        a.addr("v0", &["192.0.2.1/24".parse().unwrap()]).unwrap();
        b.addr("v1", &["192.0.2.2/24".parse().unwrap()]).unwrap();
        assert!(
            b.ip(&["-br", "addr", "show", "v1"])
                .unwrap()
                .contains("192.0.2.2/24")
        );
        let e = a
            .addr("nosuch0", &["192.0.2.9/24".parse().unwrap()])
            .unwrap_err();
        assert!(
            format!("{e:#}").contains("cannot add 192.0.2.9/24 to nosuch0"),
            "{e:#}"
        );
        // run_inside's thread is in the namespace (it sees v1), the caller is not.
        let devs = || std::fs::read_to_string("/proc/thread-self/net/dev").unwrap();
        assert!(b.run_inside(devs).unwrap().contains("v1:"));
        assert!(!devs().contains("v1:"));
        // So are the sockets it opens.
        let rx = b
            .run_inside(|| UdpSocket::bind("192.0.2.2:0"))
            .unwrap()
            .unwrap();
        let to = rx.local_addr().unwrap();
        let sent = a
            .run_inside(|| UdpSocket::bind("192.0.2.1:0")?.send_to(b"imrs", to))
            .unwrap()
            .unwrap();
        assert_eq!(sent, 4);
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = rx.recv_from(&mut buf).unwrap();
        assert_eq!(
            (&buf[..n], from.ip()),
            (&b"imrs"[..], "192.0.2.1".parse::<IpAddr>().unwrap())
        );
        // A process left inside is killed with the namespace, which is deleted.
        let mut child = a.command("sleep").arg("60").spawn().unwrap();
        let pid = Pid::from_raw(i32::try_from(child.id()).unwrap());
        let seen = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            a.pids().unwrap().contains(&pid)
        });
        assert!(seen, "sleep is not in {}", a.name());
        let path = a.path();
        drop(a);
        assert!(!path.exists(), "{} still there", path.display());
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "{status}"
        );
    }

    #[test]
    fn tags_are_checked() {
        for good in ["lab", "bgp-f", "A1", "abcdefghijklmnop"] {
            check_tag(good).unwrap();
        }
        for bad in ["", "a b", "a/b", "a\nb", "abcdefghijklmnopq", "ü"] {
            let e = check_tag(bad).unwrap_err().to_string();
            assert!(e.contains("namespace tag"), "{bad:?}: {e}");
            assert!(!e.contains('\n'), "{bad:?}: {e}");
        }
    }
}
