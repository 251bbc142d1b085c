//! Least privilege for the daemons the init starts (issue 18).
//!
//! - **Accounts**: each daemon runs under its own account from [`imrs_config::accounts`]
//!   (fixed ids, in the image's `/etc/passwd`); the daemon drops to it itself after binding
//!   its sockets (NSD `username`, Knot `user`, `bird -u -g`, `chronyd -u`), the way each is
//!   built to. Only the machine's init does this ([`enabled`]): tests that run the pipeline on
//!   a build host keep the host's root and paths.
//! - **Run directories** ([`make_dir`]): a daemon's run directory (`/run/imrs/<daemon>`) is
//!   root's and holds its config (`0644`, readable, not writable by the daemon); the one
//!   subdirectory `var/` is the daemon's (pidfile, its own state) with mode `0750`. A daemon that creates its control socket before dropping privileges (NSD, BIRD)
//!   gets it in `control/` (root's, `0700`): only root reaches it. Knot binds its socket after
//!   dropping them, so its socket is in its `var/`: root and Knot's own account only.
//! - **Sandbox** ([`Sandbox`], applied between fork and exec by [`Prepared::pre_exec`]):
//!   `no_new_privs` for every supervised daemon, and, when the daemon has bind mounts, its own
//!   mount namespace (propagation from the host only) where the zone store appears read-only
//!   under its run directory and the RSSAC002 collector's socket directory appears beside it.
//!   NSD then chroots into that run directory, which holds nothing but its config, the zone
//!   and its own state. The mounts vanish with the daemon: nothing stays mounted on the data
//!   partition.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use imrs_config::accounts::Account;

use crate::pid1::Role;

/// The daemon-owned subdirectory of a run directory.
pub const VAR: &str = "var";
/// The root-only subdirectory of a run directory holding the control socket of a daemon that
/// creates it before dropping privileges (NSD, BIRD): only root reaches it.
pub const CONTROL: &str = "control";

/// Whether daemons drop to their accounts: as the machine's init only.
pub fn enabled(role: Role) -> bool {
    role == Role::Machine
}

/// Creates `path` (and its parents), then gives it `owner` (root when `None`) and `mode`.
pub fn make_dir(path: &Path, owner: Option<Account>, mode: u32) -> io::Result<()> {
    fs::create_dir_all(path)?;
    let (uid, gid) = owner.map_or((0, 0), |a| (a.id, a.gid()));
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// A bind mount made in the daemon's mount namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// What appears.
    pub source: PathBuf,
    /// Where (an existing directory).
    pub target: PathBuf,
    /// Mounted read-only (and `nosuid`, `nodev`, `noexec`).
    pub read_only: bool,
}

/// What a daemon's process gets between fork and exec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sandbox {
    /// Bind mounts in a mount namespace of its own (none: the host's namespace).
    pub binds: Vec<Bind>,
}

/// A [`Sandbox`] with its paths as C strings, made before the fork (the child may not
/// allocate).
pub struct Prepared {
    binds: Vec<(CString, CString, bool)>,
}

fn c_path(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} holds a NUL byte", p.display()),
        )
    })
}

impl Sandbox {
    /// The paths as C strings; fails on a path with a NUL byte or a missing mount point.
    pub fn prepare(&self) -> io::Result<Prepared> {
        let mut binds = Vec::new();
        for b in &self.binds {
            for p in [&b.source, &b.target] {
                if !p.is_dir() {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("bind mount: {} is not a directory", p.display()),
                    ));
                }
            }
            binds.push((c_path(&b.source)?, c_path(&b.target)?, b.read_only));
        }
        Ok(Prepared { binds })
    }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl Prepared {
    /// Runs in the child between fork and exec: `no_new_privs`, then the mount namespace and
    /// its bind mounts. Only raw system calls on memory prepared before the fork.
    pub fn pre_exec(&self) -> io::Result<()> {
        // SAFETY: plain system calls with pointers into C strings this struct owns.
        unsafe {
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
            if self.binds.is_empty() {
                return Ok(());
            }
            check(libc::unshare(libc::CLONE_NEWNS))?;
            // Nothing mounted here travels back to the host.
            check(libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_SLAVE,
                std::ptr::null(),
            ))?;
            for (source, target, read_only) in &self.binds {
                check(libc::mount(
                    source.as_ptr(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ))?;
                let mut flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_NOSUID | libc::MS_NODEV;
                if *read_only {
                    flags |= libc::MS_RDONLY | libc::MS_NOEXEC;
                }
                check(libc::mount(
                    std::ptr::null(),
                    target.as_ptr(),
                    std::ptr::null(),
                    flags,
                    std::ptr::null(),
                ))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepare_refuses_missing_mount_points_and_nul_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let ok = Sandbox {
            binds: vec![Bind {
                source: dir.path().to_path_buf(),
                target: dir.path().to_path_buf(),
                read_only: true,
            }],
        };
        assert_eq!(ok.prepare().unwrap().binds.len(), 1);
        let missing = Sandbox {
            binds: vec![Bind {
                source: dir.path().join("absent"),
                target: dir.path().to_path_buf(),
                read_only: true,
            }],
        };
        let e = missing.prepare().err().unwrap().to_string();
        assert!(e.contains("absent is not a directory"), "{e}");
        assert!(c_path(Path::new("a\0b")).is_err());
    }

    /// A daemon in its sandbox cannot write the zone (read-only mount: not even as root) nor,
    /// under its account, its config (root's) - but can write its own `var/`. Needs root
    /// (mount namespaces, bind mounts, setuid); CI has it.
    #[test]
    fn a_sandboxed_daemon_cannot_write_its_zone_or_config() {
        use std::os::unix::process::CommandExt;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI runs as root"
            );
            eprintln!("skip: needs root");
            return;
        }
        let _g = crate::reaper::tests::CHILDREN
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let dir = tempfile::tempdir().unwrap();
        make_dir(dir.path(), None, 0o755).unwrap();
        let store = dir.path().join("store");
        fs::create_dir(&store).unwrap();
        fs::write(store.join("root.zone"), ". SOA\n").unwrap();
        let run = dir.path().join("run");
        make_dir(&run, None, 0o755).unwrap();
        fs::write(run.join("nsd.conf"), "server:\n").unwrap();
        let nobody = Account {
            name: "nobody",
            id: 65534,
            home: "/nonexistent",
            what: "test",
        };
        make_dir(&run.join(VAR), Some(nobody), 0o750).unwrap();
        let view = run.join("zone");
        make_dir(&view, None, 0o755).unwrap();
        let sandbox = Sandbox {
            binds: vec![Bind {
                source: store.clone(),
                target: view.clone(),
                read_only: true,
            }],
        };
        let sh = |script: String, uid: Option<u32>| {
            let prepared = sandbox.prepare().unwrap();
            let mut cmd = std::process::Command::new("/bin/sh");
            cmd.arg("-c").arg(script);
            // SAFETY: as in the supervisor: raw system calls on prepared memory. Then, like a
            // daemon dropping to its account, the ids (std's own uid() would come before the
            // sandbox, which needs root).
            unsafe {
                cmd.pre_exec(move || prepared.pre_exec());
                if let Some(id) = uid {
                    cmd.pre_exec(move || {
                        check(libc::setgroups(0, std::ptr::null()))?;
                        check(libc::setresgid(id, id, id))?;
                        check(libc::setresuid(id, id, id))
                    });
                }
            }
            let out = cmd.output().unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        let zone = view.join("root.zone");
        let (ok, err) = sh(format!("echo forged >> {}", zone.display()), None);
        assert!(
            !ok && err.contains("Read-only file system"),
            "root wrote the zone: {err}"
        );
        let (ok, err) = sh(
            format!("echo x >> {}", run.join("nsd.conf").display()),
            Some(65534),
        );
        assert!(
            !ok && err.contains("Permission denied"),
            "the daemon wrote its config: {err}"
        );
        let (ok, err) = sh(
            format!("echo 1 > {}", run.join(VAR).join("pid").display()),
            Some(65534),
        );
        assert!(ok, "the daemon's own directory: {err}");
        // The zone is readable through the view, and nothing stayed mounted on the host.
        let (ok, err) = sh(format!("grep -q SOA {}", zone.display()), Some(65534));
        assert!(ok, "{err}");
        assert!(
            !zone.exists(),
            "the bind mount leaked into the host's mount namespace"
        );
        assert_eq!(
            fs::read_to_string(store.join("root.zone")).unwrap(),
            ". SOA\n"
        );
    }

    #[test]
    fn make_dir_sets_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("a/var");
        make_dir(&d, None, 0o750).unwrap();
        let m = fs::metadata(&d).unwrap().permissions().mode() & 0o7777;
        assert_eq!(m, 0o750);
    }
}
