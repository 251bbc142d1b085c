//! Booting an image folder under QEMU: TCG by default (nested KVM on the build machines does not
//! work; docs/lab-notes.md), KVM when asked for. The serial console is streamed line by line to the
//! caller and kept, and the VM is killed when it overruns its time.

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
    /// The VM ran past its time limit and was killed.
    #[error("the VM did not finish within {seconds} s and was killed")]
    Timeout {
        /// Limit.
        seconds: u64,
    },
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

/// The QEMU command line for an image.
pub fn command(opts: &BootOptions) -> Result<Command, QemuError> {
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
    .arg("-kernel")
    .arg(kernel)
    .arg("-initrd")
    .arg(opts.dir.join(INITRAMFS))
    .args(["-append", &append])
    .args(["-device", "virtio-rng-pci"]);
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
