//! What the box exposes, read back from the kernel (issue 18's proof): the IP sockets that
//! accept traffic (TCP in `LISTEN`, UDP not connected to a peer) with the process holding each,
//! and every process other than the init and the kernel's threads with its user, group,
//! effective capabilities, `no_new_privs` and seccomp mode.
//!
//! Printed on the console once the pipeline is healthy (`listening: ...`, `daemon: ...`
//! lines), where the lab reads them into its summary; read from `/proc` only.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

/// One socket that accepts traffic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Listener {
    /// `tcp` or `udp`.
    pub proto: &'static str,
    /// Local address and port.
    pub local: SocketAddr,
    /// The process holding it (`?` when none was found).
    pub process: String,
}

impl fmt::Display for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.proto, self.local, self.process)
    }
}

/// One process's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The program (its executable's file name; the process name when unreadable).
    pub name: String,
    /// The process name it gave itself (`Name:`; NSD names its processes `xfrd`,
    /// `nsd: main`, `server 1`).
    pub title: String,
    /// Pid.
    pub pid: u32,
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
    /// Effective capabilities, by name.
    pub caps: Vec<&'static str>,
    /// `no_new_privs` set.
    pub no_new_privs: bool,
    /// Seccomp mode (0 none, 1 strict, 2 filter).
    pub seccomp: u8,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let caps = if self.caps.is_empty() {
            "none".to_string()
        } else {
            self.caps.join(",")
        };
        write!(
            f,
            "{} pid {} ({}) uid {} gid {} caps {caps} nnp {} seccomp {}",
            self.name,
            self.pid,
            self.title,
            self.uid,
            self.gid,
            u8::from(self.no_new_privs),
            self.seccomp
        )
    }
}

/// Capability names by bit (linux/capability.h, 6.1).
const CAPS: [&str; 41] = [
    "chown",
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_bind_service",
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
];

/// Capability names in a `CapEff:` hex mask.
pub fn cap_names(mask: u64) -> Vec<&'static str> {
    (0..64)
        .filter(|b| mask & (1u64 << b) != 0)
        .map(|b| CAPS.get(b).copied().unwrap_or("unknown"))
        .collect()
}

/// Parses `/proc/PID/status` text.
pub fn parse_status(pid: u32, text: &str) -> Option<Identity> {
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
    };
    // `Uid:`/`Gid:` list real, effective, saved, filesystem.
    let second = |key: &str| -> Option<u32> { field(key)?.split_whitespace().nth(1)?.parse().ok() };
    let title = field("Name:")?;
    Some(Identity {
        name: title.clone(),
        title,
        pid,
        uid: second("Uid:")?,
        gid: second("Gid:")?,
        caps: cap_names(u64::from_str_radix(&field("CapEff:")?, 16).ok()?),
        no_new_privs: field("NoNewPrivs:").as_deref() == Some("1"),
        seccomp: field("Seccomp:").and_then(|s| s.parse().ok()).unwrap_or(0),
    })
}

fn pids(proc: &Path) -> Vec<u32> {
    let mut out: Vec<u32> = std::fs::read_dir(proc)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    out.sort_unstable();
    out
}

/// Every process except PID 1 and kernel threads (children of `kthreadd`, PID 2), by pid.
pub fn processes(proc: &Path) -> Vec<Identity> {
    pids(proc)
        .into_iter()
        .filter(|&pid| pid > 2)
        .filter_map(|pid| {
            let text = std::fs::read_to_string(proc.join(pid.to_string()).join("status")).ok()?;
            let ppid = text
                .lines()
                .find_map(|l| l.strip_prefix("PPid:"))
                .map(str::trim);
            if ppid == Some("2") {
                return None;
            }
            let mut id = parse_status(pid, &text)?;
            if let Some(program) = program(proc, pid) {
                id.name = program;
            }
            Some(id)
        })
        .collect()
}

/// The file name of a process's executable.
fn program(proc: &Path, pid: u32) -> Option<String> {
    let exe = std::fs::read_link(proc.join(pid.to_string()).join("exe")).ok()?;
    Some(exe.file_name()?.to_string_lossy().into_owned())
}

/// Socket inode -> name of the process holding it.
fn socket_owners(proc: &Path) -> HashMap<u64, String> {
    let mut out = HashMap::new();
    for pid in pids(proc) {
        let dir = proc.join(pid.to_string());
        let Ok(fds) = std::fs::read_dir(dir.join("fd")) else {
            continue;
        };
        let name = program(proc, pid).unwrap_or_else(|| pid.to_string());
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let t = target.to_string_lossy();
            if let Some(inode) = t
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
                .and_then(|s| s.parse().ok())
            {
                out.entry(inode).or_insert_with(|| name.clone());
            }
        }
    }
    out
}

/// Parses `ADDR:PORT` of `/proc/net/{tcp,udp}{,6}` (hex, address in host byte order per
/// 32-bit word).
fn parse_addr(s: &str) -> Option<SocketAddr> {
    let (a, p) = s.split_once(':')?;
    let port = u16::from_str_radix(p, 16).ok()?;
    let ip = match a.len() {
        8 => IpAddr::V4(Ipv4Addr::from(
            u32::from_str_radix(a, 16).ok()?.to_le_bytes(),
        )),
        32 => {
            let mut b = [0u8; 16];
            for w in 0..4 {
                let word = u32::from_str_radix(a.get(w * 8..w * 8 + 8)?, 16).ok()?;
                b[w * 4..w * 4 + 4].copy_from_slice(&word.to_le_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The accepting sockets in one `/proc/net` table: (local address, inode).
pub fn parse_table(text: &str, tcp: bool) -> Vec<(SocketAddr, u64)> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local = parse_addr(f.get(1)?)?;
            let remote = parse_addr(f.get(2)?)?;
            let state = *f.get(3)?;
            let accepting = if tcp {
                state == "0A"
            } else {
                remote.ip().is_unspecified() && remote.port() == 0
            };
            accepting.then_some((local, f.get(9)?.parse().ok()?))
        })
        .collect()
}

/// The sockets accepting traffic in the init's network namespace, sorted.
pub fn listening(proc: &Path) -> Vec<Listener> {
    let owners = socket_owners(proc);
    let mut out = Vec::new();
    for (file, proto, tcp) in [
        ("tcp", "tcp", true),
        ("tcp6", "tcp", true),
        ("udp", "udp", false),
        ("udp6", "udp", false),
    ] {
        let Ok(text) = std::fs::read_to_string(proc.join("net").join(file)) else {
            continue;
        };
        for (local, inode) in parse_table(&text, tcp) {
            out.push(Listener {
                proto,
                local,
                process: owners.get(&inode).cloned().unwrap_or_else(|| "?".into()),
            });
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Prints the `listening:` and `daemon:` lines.
pub fn print(proc: &Path) {
    for l in listening(proc) {
        crate::log::info(format!("listening: {l}"));
    }
    for p in processes(proc) {
        crate::log::info(format!("daemon: {p}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_gives_effective_ids_and_capabilities() {
        let text = "Name:\tbird\nUmask:\t0022\nState:\tS (sleeping)\nPPid:\t1\n\
                    Uid:\t0\t101\t101\t101\nGid:\t0\t101\t101\t101\n\
                    CapInh:\t0000000000000000\nCapPrm:\t0000000000003400\n\
                    CapEff:\t0000000000003400\nNoNewPrivs:\t1\nSeccomp:\t0\n";
        let id = parse_status(42, text).unwrap();
        assert_eq!((id.uid, id.gid), (101, 101));
        assert_eq!(id.caps, ["net_bind_service", "net_admin", "net_raw"]);
        assert!(id.no_new_privs);
        assert_eq!(
            id.to_string(),
            "bird pid 42 (bird) uid 101 gid 101 caps net_bind_service,net_admin,net_raw nnp 1 \
             seccomp 0"
        );
        assert_eq!(cap_names(0), Vec::<&str>::new());
        assert_eq!(cap_names(1 << 25), ["sys_time"]);
    }

    #[test]
    fn proc_net_tables_as_the_kernel_writes_them() {
        // 198.51.100.42:53 LISTEN, 0.0.0.0:179 LISTEN, one established connection (not
        // accepting), and UDP: one bound socket, one connected.
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 2A6433C6:0035 00000000:0000 0A 00000000:00000000 00:00000000 00000000   104        0 1111 1 0 100 0 0 10 0\n\
   1: 00000000:00B3 00000000:0000 0A 00000000:00000000 00:00000000 00000000   101        0 2222 1 0 100 0 0 10 0\n\
   2: 0A0200C0:00B3 0B0200C0:C350 01 00000000:00000000 00:00000000 00000000   101        0 3333 1 0 100 0 0 10 0\n";
        let got = parse_table(tcp, true);
        assert_eq!(
            got,
            [
                ("198.51.100.42:53".parse().unwrap(), 1111),
                ("0.0.0.0:179".parse().unwrap(), 2222)
            ]
        );
        let udp6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
  10: B80D0120000042000000000042000000:0035 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000   104        0 4444 2 0 0\n\
  11: B80D0120000042000000000042000000:D431 B80D0120000042000000000042000000:0035 01 00000000:00000000 00:00000000 00000000     0        0 5555 2 0 0\n";
        let got = parse_table(udp6, false);
        assert_eq!(got, [("[2001:db8:42::42]:53".parse().unwrap(), 4444)]);
    }

    #[test]
    fn this_process_is_listed_with_its_socket() {
        let sock = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = sock.local_addr().unwrap().port();
        let me = std::fs::read_link("/proc/self/exe").unwrap();
        let me = me.file_name().unwrap().to_string_lossy();
        let found = listening(Path::new("/proc"))
            .into_iter()
            .find(|l| l.proto == "tcp" && l.local.port() == port)
            .expect("our listener");
        assert_eq!(found.process, me);
        let pid = std::process::id();
        if pid > 2 {
            assert!(processes(Path::new("/proc")).iter().any(|p| p.pid == pid));
        }
    }
}
