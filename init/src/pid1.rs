//! The process-level duties of PID 1: knowing which role it plays, the early kernel mounts, the
//! console on fds 0/1/2, Ctrl-Alt-Del handling or child subreaping, and the final `reboot(2)`.
//!
//! Roles ([`Role`]):
//! - **machine**: PID 1 in the initial PID namespace (the appliance). Mounts the kernel
//!   filesystems, takes `/dev/console`, logs to `/dev/kmsg`, ends with `reboot(2)`.
//! - **namespace**: PID 1 of a nested PID namespace (tests, containers). Orphans come to it as to
//!   any PID 1; it mounts nothing, keeps its stdio, and ends by exiting with a status.
//! - **child**: not PID 1. Becomes a child subreaper (`PR_SET_CHILD_SUBREAPER`) and ends by
//!   exiting with a status.
//!
//! Exit statuses outside the machine role: poweroff 0, reboot 2, halt 3, panic 101.

use std::path::Path;

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::reboot::{RebootMode, reboot, set_cad_enabled};

use crate::log;

/// Inode of the initial PID namespace (`PROC_PID_INIT_INO` in the kernel).
const INIT_PID_NS: &str = "pid:[4026531836]";

/// Kernel filesystems mounted at boot, in order: (source, target, fstype, flags, data).
/// `/proc` first (the mount table lives there), then `/sys`, `devtmpfs` (Debian kernels do not
/// auto-mount it), the rest.
const MOUNTS: &[(&str, &str, &str, MsFlags, &str)] = &[
    ("proc", "/proc", "proc", MOUNT_SAFE, ""),
    ("sysfs", "/sys", "sysfs", MOUNT_SAFE, ""),
    (
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        "mode=0755",
    ),
    (
        "devpts",
        "/dev/pts",
        "devpts",
        MOUNT_NOEXEC,
        "gid=5,mode=0620,ptmxmode=0666",
    ),
    ("tmpfs", "/dev/shm", "tmpfs", MOUNT_SAFE, "mode=1777"),
    ("tmpfs", "/run", "tmpfs", MOUNT_NOEXEC, "mode=0755"),
    ("cgroup2", "/sys/fs/cgroup", "cgroup2", MOUNT_SAFE, ""),
];

const MOUNT_SAFE: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);
const MOUNT_NOEXEC: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC);

/// Filesystems unmounted at shutdown (the ones the init mounted from disks), innermost first.
pub const DISK_MOUNTS: &[&str] = &["/run/imrs/config", "/var/lib/imrs"];

/// A PID 1 duty that failed.
#[derive(Debug, thiserror::Error)]
pub enum Pid1Error {
    /// A kernel filesystem could not be mounted.
    #[error("mount {fstype} on {target}")]
    Mount {
        /// Mount point.
        target: String,
        /// Filesystem type.
        fstype: String,
        /// errno.
        #[source]
        source: nix::Error,
    },
    /// `/dev/console` could not be opened.
    #[error("open /dev/console")]
    Console(#[source] std::io::Error),
    /// Ctrl-Alt-Del could not be turned into SIGINT.
    #[error("reboot(RB_DISABLE_CAD)")]
    DisableCad(#[source] nix::Error),
    /// `PR_SET_CHILD_SUBREAPER` failed.
    #[error("prctl(PR_SET_CHILD_SUBREAPER)")]
    Subreaper(#[source] nix::Error),
    /// Unmounting at shutdown failed.
    #[error("unmount {target}")]
    Unmount {
        /// Mount point.
        target: String,
        /// errno.
        #[source]
        source: nix::Error,
    },
}

/// Which PID 1 this process is (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// PID 1 of the machine.
    Machine,
    /// PID 1 of a nested PID namespace.
    Namespace,
    /// Not PID 1.
    Child,
}

impl Role {
    /// Works out the role. As the machine's init `/proc` is not mounted yet: PID 1 without
    /// `/proc/self` is the machine.
    pub fn detect() -> Role {
        if std::process::id() != 1 {
            return Role::Child;
        }
        match std::fs::read_link("/proc/self/ns/pid") {
            Err(_) => Role::Machine,
            Ok(link) if link.as_os_str() == INIT_PID_NS => Role::Machine,
            Ok(_) => Role::Namespace,
        }
    }

    /// Short name for the console.
    pub fn name(self) -> &'static str {
        match self {
            Role::Machine => "machine",
            Role::Namespace => "pid-namespace",
            Role::Child => "subreaper",
        }
    }
}

/// Points fds 0, 1 and 2 at `/dev/console`.
pub fn setup_console() -> Result<(), Pid1Error> {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
        .map_err(Pid1Error::Console)?;
    let fd = f.as_raw_fd();
    for target in 0..3 {
        if fd == target {
            continue;
        }
        // SAFETY: dup2 of a valid open fd onto the standard descriptors; no Rust object owns
        // 0/1/2 as an OwnedFd, so replacing them cannot invalidate one.
        unsafe {
            libc::dup2(fd, target);
        }
    }
    if fd <= 2 {
        // The console landed on a standard descriptor (they were closed): keep it open.
        std::mem::forget(f);
    }
    Ok(())
}

/// Whether `target` is a mount point according to `mounts` (`/proc/self/mounts` text).
fn is_mounted(mounts: &str, target: &str) -> bool {
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(target))
}

/// Mounts the kernel filesystems, skipping what is already mounted. Returns the failures (the
/// boot goes on; the platform stage reports them).
pub fn mount_kernel_filesystems() -> Vec<Pid1Error> {
    let mut errors = Vec::new();
    for (src, target, fstype, flags, data) in MOUNTS {
        let already = if *target == "/proc" {
            Path::new("/proc/self").exists()
        } else {
            is_mounted(
                &std::fs::read_to_string("/proc/self/mounts").unwrap_or_default(),
                target,
            )
        };
        if already {
            continue;
        }
        let _ = std::fs::create_dir_all(target);
        let data = if data.is_empty() { None } else { Some(*data) };
        if let Err(e) = mount(Some(*src), *target, Some(*fstype), *flags, data) {
            errors.push(Pid1Error::Mount {
                target: target.to_string(),
                fstype: fstype.to_string(),
                source: e,
            });
        }
    }
    errors
}

/// As the machine: Ctrl-Alt-Del becomes SIGINT instead of an immediate reboot. As a child:
/// become a child subreaper so orphans are reparented to us. A namespace PID 1 needs neither.
pub fn claim_children(role: Role) -> Result<(), Pid1Error> {
    match role {
        Role::Machine => set_cad_enabled(false).map_err(Pid1Error::DisableCad),
        Role::Child => nix::sys::prctl::set_child_subreaper(true).map_err(Pid1Error::Subreaper),
        Role::Namespace => Ok(()),
    }
}

/// Unmounts the disk filesystems the init mounted (machine role only), after every process
/// is gone. Not mounted is fine.
pub fn unmount_disks(role: Role) -> Vec<Pid1Error> {
    if role != Role::Machine {
        return Vec::new();
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    DISK_MOUNTS
        .iter()
        .filter(|t| is_mounted(&mounts, t))
        .filter_map(|t| {
            umount2(*t, MntFlags::empty())
                .err()
                .map(|source| Pid1Error::Unmount {
                    target: t.to_string(),
                    source,
                })
        })
        .collect()
}

/// What the final step of a shutdown does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Halt {
    /// Restart.
    Reboot,
    /// Stop the CPU (halt).
    Stop,
    /// Switch off.
    Poweroff,
}

impl Halt {
    /// Name as printed and saved: `reboot`, `halt`, `poweroff`.
    pub fn name(self) -> &'static str {
        match self {
            Halt::Reboot => "reboot",
            Halt::Stop => "halt",
            Halt::Poweroff => "poweroff",
        }
    }

    /// Exit status outside the machine role.
    pub fn exit_code(self) -> i32 {
        match self {
            Halt::Poweroff => 0,
            Halt::Reboot => 2,
            Halt::Stop => 3,
        }
    }
}

/// Exit status after a panic outside the machine role.
pub const PANIC_EXIT: i32 = 101;

/// Ends the system (machine) or the process (elsewhere, with `code`). Never returns.
pub fn finish(role: Role, how: Halt, code: i32) -> ! {
    nix::unistd::sync();
    if role == Role::Machine {
        let mode = match how {
            Halt::Reboot => RebootMode::RB_AUTOBOOT,
            Halt::Stop => RebootMode::RB_HALT_SYSTEM,
            Halt::Poweroff => RebootMode::RB_POWER_OFF,
        };
        let err = reboot(mode);
        log::error(format!("reboot({mode:?}) failed: {err:?}; halting here"));
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
    std::process::exit(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_table_lookup() {
        let t = "proc /proc proc rw 0 0\nsysfs /sys sysfs rw 0 0\n";
        assert!(is_mounted(t, "/proc"));
        assert!(is_mounted(t, "/sys"));
        assert!(!is_mounted(t, "/dev"));
        assert!(!is_mounted(t, "/sy"));
    }

    #[test]
    fn test_runner_is_not_the_machine() {
        assert_eq!(Role::detect(), Role::Child);
        let codes = [Halt::Poweroff, Halt::Reboot, Halt::Stop].map(Halt::exit_code);
        assert_eq!(codes, [0, 2, 3]);
    }
}
