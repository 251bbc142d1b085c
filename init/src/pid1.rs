//! The process-level duties of PID 1: the console on fds 0/1/2, the early mounts, child
//! subreaping when not PID 1, Ctrl-Alt-Del handling, and the final `reboot(2)`.

use std::path::Path;

use nix::mount::{MsFlags, mount};
use nix::sys::reboot::{RebootMode, reboot, set_cad_enabled};

use crate::log;

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

/// A mount failed.
#[derive(Debug, thiserror::Error)]
#[error("mount {fstype} on {target}")]
pub struct MountError {
    /// Mount point.
    pub target: String,
    /// Filesystem type.
    pub fstype: String,
    /// errno.
    #[source]
    pub source: nix::Error,
}

/// Whether this process is PID 1.
pub fn is_pid1() -> bool {
    std::process::id() == 1
}

/// Points fds 0, 1 and 2 at `/dev/console` (only as PID 1; elsewhere the caller's stdio stays).
pub fn setup_console() {
    use std::os::fd::AsRawFd;
    if !is_pid1() {
        return;
    }
    if let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        let fd = f.as_raw_fd();
        for target in 0..3 {
            // SAFETY: dup2 on a valid open fd onto the standard descriptors; no Rust object owns
            // 0/1/2 as an OwnedFd, so replacing them cannot invalidate one.
            unsafe {
                libc::dup2(fd, target);
            }
        }
    }
}

fn mounted(target: &str) -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .map(|t| {
            t.lines()
                .any(|l| l.split_whitespace().nth(1) == Some(target))
        })
        .unwrap_or(false)
}

/// Mounts the kernel filesystems, skipping what is already mounted. Returns the failures (the
/// boot goes on; the platform stage reports them).
pub fn mount_kernel_filesystems() -> Vec<MountError> {
    let mut errors = Vec::new();
    for (src, target, fstype, flags, data) in MOUNTS {
        let already = if *target == "/proc" {
            Path::new("/proc/self").exists()
        } else {
            mounted(target)
        };
        if already {
            continue;
        }
        let _ = std::fs::create_dir_all(target);
        let data = if data.is_empty() { None } else { Some(*data) };
        if let Err(e) = mount(Some(*src), *target, Some(*fstype), *flags, data) {
            errors.push(MountError {
                target: target.to_string(),
                fstype: fstype.to_string(),
                source: e,
            });
        }
    }
    errors
}

/// As PID 1: Ctrl-Alt-Del becomes SIGINT instead of an immediate reboot. Elsewhere: become a
/// child subreaper so orphans are reparented to us (tests run the init in a PID namespace or
/// as a plain child).
pub fn claim_children() {
    if is_pid1() {
        if let Err(e) = set_cad_enabled(false) {
            log::warn(format!("cannot disable Ctrl-Alt-Del: {e}"));
        }
    } else if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        log::warn(format!("cannot become a child subreaper: {e}"));
    }
}

/// What the final step of a shutdown does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Halt {
    /// Restart.
    Reboot,
    /// Stop the CPU.
    Stop,
    /// Switch off.
    Poweroff,
}

/// Ends the system (PID 1) or the process (elsewhere). Never returns.
pub fn finish(how: Halt) -> ! {
    nix::unistd::sync();
    if is_pid1() {
        let mode = match how {
            Halt::Reboot => RebootMode::RB_AUTOBOOT,
            Halt::Stop => RebootMode::RB_HALT_SYSTEM,
            Halt::Poweroff => RebootMode::RB_POWER_OFF,
        };
        let err = reboot(mode);
        log::error(format!("reboot({mode:?}) failed: {err:?}; halting"));
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
    std::process::exit(0)
}
