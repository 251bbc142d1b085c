//! Booting an image under QEMU: an image folder's kernel directly, or an appliance disk through
//! UEFI firmware (OVMF) and its boot loader, as the appliance boots. TCG by default (nested KVM
//! on the build machines does not work; docs/lab-notes.md), KVM when asked for. The serial
//! console is streamed line by line to the caller and kept, and the VM is killed when it
//! overruns its time.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use imrs_config::image::Manifest;

use crate::image_dir::{INITRAMFS, KERNEL, MANIFEST};

/// Booting failed before or while the VM ran.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// The image folder lacks a file.
    #[error("{path}: missing or unreadable image file")]
    Image {
        /// Path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The manifest is unreadable.
    #[error("{path}: not a manifest: {detail}")]
    Manifest {
        /// Path.
        path: PathBuf,
        /// Parser message.
        detail: String,
    },
    /// QEMU could not be started.
    #[error("cannot start {binary} (install qemu-system-x86)")]
    Spawn {
        /// Binary.
        binary: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The UEFI firmware is not installed or its variable store cannot be copied.
    #[error("{path}: UEFI firmware missing or not copyable (install ovmf)")]
    Firmware {
        /// Path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A disk boots with its slot entry's command line: nothing can be appended.
    #[error(
        "an appliance disk boots with its boot entry's command line; put extra words on it \
             with `imrs-build disk --append`"
    )]
    AppendToDisk,
    /// The VM ran past its time limit and was killed.
    #[error("the VM did not finish within {seconds} s and was killed")]
    Timeout {
        /// Limit.
        seconds: u64,
    },
}

/// Debian `ovmf`'s firmware code (read-only, 4 MiB flash layout).
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// Debian `ovmf`'s empty variable store: each VM gets its own copy (the boot loader writes it).
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// An appliance disk booted through UEFI.
#[derive(Debug, Clone)]
pub struct Uefi {
    /// The disk image (written by the guest, as a real disk is).
    pub disk: PathBuf,
    /// This VM's own copy of the variable store ([`Uefi::vars_copy`]).
    pub vars: PathBuf,
}

impl Uefi {
    /// Copies [`OVMF_VARS`] into `dir` for one VM and checks the firmware is installed.
    pub fn vars_copy(disk: &Path, dir: &Path) -> Result<Uefi, QemuError> {
        for f in [OVMF_CODE, OVMF_VARS] {
            std::fs::metadata(f).map_err(|source| QemuError::Firmware {
                path: PathBuf::from(f),
                source,
            })?;
        }
        std::fs::metadata(disk).map_err(|source| QemuError::Image {
            path: disk.to_path_buf(),
            source,
        })?;
        let vars = dir.join("OVMF_VARS_4M.fd");
        std::fs::copy(OVMF_VARS, &vars).map_err(|source| QemuError::Firmware {
            path: vars.clone(),
            source,
        })?;
        Ok(Uefi {
            disk: disk.to_path_buf(),
            vars,
        })
    }
}

/// Accelerator choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// Software emulation (always works).
    Tcg,
    /// Hardware virtualisation (needs a working /dev/kvm).
    Kvm,
}

/// How to boot.
#[derive(Debug, Clone)]
pub struct BootOptions {
    /// Image folder.
    pub dir: PathBuf,
    /// Extra kernel command-line words after the manifest's.
    pub append: Vec<String>,
    /// Guest memory, MiB.
    pub memory_mib: u32,
    /// Guest CPUs.
    pub cpus: u32,
    /// Accelerator.
    pub accel: Accel,
    /// Give the guest one virtio NIC on QEMU's user network (isolated; nothing is configured to
    /// send anywhere).
    pub user_nic: bool,
    /// Extra QEMU arguments (disks, taps).
    pub extra: Vec<String>,
    /// Kill the VM after this long.
    pub timeout: Duration,
    /// Boot the ELF vmlinux inside the bzImage through its PVH entry (faster under TCG).
    pub pvh: bool,
    /// Boot this appliance disk through UEFI instead of `dir`'s kernel.
    pub uefi: Option<Uefi>,
}

impl BootOptions {
    /// Defaults for an image folder: TCG, 1 GiB, 1 CPU, a user-network NIC, 120 s.
    pub fn new(dir: &Path) -> Self {
        BootOptions {
            dir: dir.to_path_buf(),
            append: Vec::new(),
            memory_mib: 1024,
            cpus: 1,
            accel: Accel::Tcg,
            user_nic: true,
            extra: Vec::new(),
            timeout: Duration::from_secs(120),
            pvh: true,
            uefi: None,
        }
    }

    /// Defaults for an appliance disk booted through UEFI, as [`BootOptions::new`].
    pub fn disk(uefi: Uefi) -> Self {
        BootOptions {
            dir: uefi.disk.clone(),
            pvh: false,
            uefi: Some(uefi),
            ..BootOptions::new(Path::new(""))
        }
    }
}

/// What happened.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BootResult {
    /// QEMU's exit code (0 after a clean guest power-off).
    pub exit_code: Option<i32>,
    /// Every console line.
    pub console: Vec<String>,
    /// Wall time from QEMU start to exit.
    pub seconds: f64,
    /// The kernel panicked (QEMU also exits 0 then, because of `-no-reboot`).
    pub panicked: bool,
}

fn machine(opts: &BootOptions) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ])
    .args(["-machine", "q35", "-cpu", "max"])
    .args(["-m", &opts.memory_mib.to_string()])
    .args(["-smp", &opts.cpus.to_string()])
    .args(["-serial", "stdio", "-monitor", "none"])
    .args([
        "-accel",
        if opts.accel == Accel::Kvm {
            "kvm"
        } else {
            "tcg"
        },
    ])
    .args(["-device", "virtio-rng-pci"]);
    cmd
}

/// The QEMU command line for an appliance disk: OVMF's code read-only, the VM's own variable
/// store, the disk as a virtio disk.
fn uefi_command(opts: &BootOptions, u: &Uefi) -> Result<Command, QemuError> {
    if !opts.append.is_empty() {
        return Err(QemuError::AppendToDisk);
    }
    let mut cmd = machine(opts);
    let mut code = std::ffi::OsString::from("if=pflash,format=raw,unit=0,readonly=on,file=");
    code.push(OVMF_CODE);
    let mut vars = std::ffi::OsString::from("if=pflash,format=raw,unit=1,file=");
    vars.push(&u.vars);
    let mut disk = std::ffi::OsString::from("if=virtio,format=raw,file=");
    disk.push(&u.disk);
    cmd.arg("-drive").arg(code);
    cmd.arg("-drive").arg(vars);
    cmd.arg("-drive").arg(disk);
    if opts.user_nic {
        cmd.args(["-nic", "user,model=virtio-net-pci"]);
    }
    cmd.args(&opts.extra);
    Ok(cmd)
}

/// The QEMU command line for an image.
pub fn command(opts: &BootOptions) -> Result<Command, QemuError> {
    if let Some(u) = &opts.uefi {
        return uefi_command(opts, u);
    }
    let mpath = opts.dir.join(MANIFEST);
    let mbytes = std::fs::read(&mpath).map_err(|source| QemuError::Image {
        path: mpath.clone(),
        source,
    })?;
    let m: Manifest = serde_json::from_slice(&mbytes).map_err(|e| QemuError::Manifest {
        path: mpath.clone(),
        detail: e.to_string(),
    })?;
    for f in [KERNEL, INITRAMFS] {
        let p = opts.dir.join(f);
        std::fs::metadata(&p).map_err(|source| QemuError::Image { path: p, source })?;
    }
    let mut append = m.cmdline.clone();
    // What a boot loader that checked the image would pass: the manifest's digest, which the
    // init carries in its phone-home reports (the image cannot hold its own digest).
    append.push_str(" imrs.manifest=");
    append.push_str(&crate::image_dir::sha256_hex(&mbytes));
    for a in &opts.append {
        append.push(' ');
        append.push_str(a);
    }
    let kernel = if opts.pvh {
        pvh_kernel(&opts.dir.join(KERNEL)).unwrap_or_else(|| opts.dir.join(KERNEL))
    } else {
        opts.dir.join(KERNEL)
    };
    let mut cmd = machine(opts);
    cmd.arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(opts.dir.join(INITRAMFS))
        .args(["-append", &append]);
    if opts.user_nic {
        cmd.args(["-nic", "user,model=virtio-net-pci"]);
    }
    cmd.args(&opts.extra);
    Ok(cmd)
}

/// The vmlinux ELF for a bzImage, extracted once into the temp dir (keyed by the bzImage's
/// sha256). `None` (boot the bzImage) when it cannot be extracted.
fn pvh_kernel(bz_path: &Path) -> Option<PathBuf> {
    let bz = std::fs::read(bz_path).ok()?;
    let key = &crate::image_dir::sha256_hex(&bz)[..16];
    let path = std::env::temp_dir().join(format!("imrs-vmlinux-{key}"));
    if path.exists() {
        return Some(path);
    }
    let elf = crate::bzimage::vmlinux(&bz).ok()?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, elf).ok()?;
    std::fs::rename(&tmp, &path).ok()?;
    Some(path)
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Boots and waits for the VM to exit, calling `on_line` for each console line.
pub fn boot(opts: &BootOptions, mut on_line: impl FnMut(&str)) -> Result<BootResult, QemuError> {
    let mut cmd = command(opts)?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let start = Instant::now();
    let child = cmd.spawn().map_err(|source| QemuError::Spawn {
        binary: "qemu-system-x86_64".into(),
        source,
    })?;
    let mut child = KillOnDrop(child);
    let stdout = child.0.stdout.take();
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        if let Some(out) = stdout {
            let mut r = BufReader::new(out);
            let mut buf = Vec::new();
            while let Ok(n) = r.read_until(b'\n', &mut buf) {
                if n == 0 {
                    break;
                }
                let line = String::from_utf8_lossy(&buf)
                    .trim_end_matches(['\r', '\n'])
                    .to_string();
                buf.clear();
                if tx.send(line).is_err() {
                    break;
                }
            }
        }
    });
    let mut console = Vec::new();
    let exit_code = loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                on_line(&line);
                console.push(line);
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let st = child.0.wait().ok();
                break st.and_then(|s| s.code());
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if let Ok(Some(st)) = child.0.try_wait() {
            // Drain what is left.
            while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
                on_line(&line);
                console.push(line);
            }
            break st.code();
        }
        if start.elapsed() > opts.timeout {
            return Err(QemuError::Timeout {
                seconds: opts.timeout.as_secs(),
            });
        }
    };
    let _ = reader.join();
    let panicked = console.iter().any(|l| l.contains("Kernel panic"));
    Ok(BootResult {
        exit_code,
        panicked,
        console,
        seconds: start.elapsed().as_secs_f64(),
    })
}
