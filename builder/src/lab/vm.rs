//! The appliance under QEMU inside the lab namespace: the command line of [`crate::qemu`]
//! (PVH vmlinux, `-no-reboot`, serial console on stdout) without a user-network NIC, plus the
//! lab's tap NIC, the lab disk, the RTC the lab's zone needs ([`super::zone::GuestClock`]) and a
//! serial number; the console streamed line by line to the lab and written to `console.log`.
//! Also the accelerator choice: KVM only when a probe VM shows it works (nested KVM on some
//! build machines aborts at vCPU setup).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::host::netns::NetNs;
use crate::host::process::signal_group;
use crate::qemu::{Accel, BootOptions, Uefi};

/// The guest NIC's MAC address.
pub const MAC: &str = "52:54:00:1a:b0:10";

/// How to boot the appliance in the lab.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Image folder.
    pub image: PathBuf,
    /// The lab disk.
    pub disk: PathBuf,
    /// Tap device inside the namespace.
    pub tap: String,
    /// Accelerator.
    pub accel: Accel,
    /// Guest memory, MiB.
    pub memory_mib: u32,
    /// DMI serial.
    pub serial: String,
    /// The guest's clock at power-on (QEMU's `-rtc base=`: a UTC time or `utc`).
    pub rtc: String,
    /// Extra kernel command-line words.
    pub append: Vec<String>,
    /// Boot `disk` through UEFI with this variable store (copied from OVMF's on first use and
    /// kept across the boots of a scenario, as a machine's NVRAM is).
    pub uefi_vars: Option<PathBuf>,
}

/// The QEMU options for `cfg` (the lab's additions to [`crate::qemu::command`]).
pub fn boot_options(cfg: &VmConfig) -> BootOptions {
    let mut o = match &cfg.uefi_vars {
        Some(vars) => BootOptions::disk(Uefi {
            disk: cfg.disk.clone(),
            vars: vars.clone(),
        }),
        None => BootOptions::new(&cfg.image),
    };
    o.user_nic = false;
    o.accel = cfg.accel;
    o.memory_mib = cfg.memory_mib;
    o.append = cfg.append.clone();
    o.extra = vec![
        "-rtc".into(),
        format!("base={}", cfg.rtc),
        "-smbios".into(),
        format!("type=1,manufacturer=QEMU,serial={}", cfg.serial),
        "-netdev".into(),
        format!("tap,id=n0,ifname={},script=no,downscript=no", cfg.tap),
        "-device".into(),
        format!("virtio-net-pci,netdev=n0,mac={MAC}"),
    ];
    if cfg.uefi_vars.is_none() {
        o.extra.extend([
            "-drive".into(),
            format!(
                "file={},format=raw,if=none,id=d0,cache=writeback",
                cfg.disk.display()
            ),
            "-device".into(),
            "virtio-blk-pci,drive=d0".into(),
        ]);
    }
    o
}

/// The line `console.log` has before each boot's console.
pub fn console_header(boot: &str) -> String {
    format!("===== imrs-build lab: {boot} =====")
}

/// A console line with its time after QEMU start.
#[derive(Debug, Clone)]
pub struct Line {
    /// Seconds after QEMU start.
    pub at: f64,
    /// The text (no line end).
    pub text: String,
}

/// A running VM, killed when dropped.
#[derive(Debug)]
pub struct Vm {
    child: Option<Child>,
    lines: mpsc::Receiver<Line>,
    /// When QEMU was started.
    pub started: Instant,
    log: std::fs::File,
    exit: Option<Option<i32>>,
}

impl Vm {
    /// Starts QEMU inside `ns`, console appended to `console_log` (with a header naming `boot`).
    pub fn start(ns: &NetNs, cfg: &VmConfig, console_log: &Path, boot: &str) -> Result<Vm> {
        if let Some(vars) = &cfg.uefi_vars
            && !vars.exists()
        {
            std::fs::copy(crate::qemu::OVMF_VARS, vars).with_context(|| {
                format!(
                    "{}: cannot copy the UEFI variable store (install ovmf)",
                    crate::qemu::OVMF_VARS
                )
            })?;
        }
        let opts = boot_options(cfg);
        let qemu = crate::qemu::command(&opts)?;
        let mut cmd = ns.wrap(&qemu);
        cmd.process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(console_log)
            .with_context(|| format!("{}: cannot open", console_log.display()))?;
        writeln!(log, "{}", console_header(boot))
            .with_context(|| format!("{}: cannot write", console_log.display()))?;
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .context("cannot start qemu-system-x86_64 (install qemu-system-x86)")?;
        let (tx, rx) = mpsc::channel::<Line>();
        if let Some(out) = child.stdout.take() {
            let tx = tx.clone();
            std::thread::spawn(move || pump(out, started, "", &tx));
        }
        if let Some(err) = child.stderr.take() {
            std::thread::spawn(move || pump(err, started, "qemu: ", &tx));
        }
        Ok(Vm {
            child: Some(child),
            lines: rx,
            started,
            log,
            exit: None,
        })
    }

    /// Seconds since QEMU start.
    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Console lines that arrived within `wait` (at most one wait), each also written to the
    /// console log.
    pub fn lines(&mut self, wait: Duration) -> Vec<Line> {
        let mut out = Vec::new();
        if let Ok(l) = self.lines.recv_timeout(wait) {
            out.push(l);
            while let Ok(l) = self.lines.try_recv() {
                out.push(l);
            }
        }
        for l in &out {
            let _ = writeln!(self.log, "{}", l.text);
        }
        out
    }

    /// QEMU's exit code once it has exited (`Some(None)`: killed by a signal).
    pub fn exited(&mut self) -> Option<Option<i32>> {
        if self.exit.is_none()
            && let Some(c) = self.child.as_mut()
            && let Ok(Some(st)) = c.try_wait()
        {
            self.exit = Some(st.code());
        }
        self.exit
    }

    /// Pulls the plug: SIGKILL, no shutdown in the guest.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal_group(c.id(), nix::sys::signal::Signal::SIGKILL);
            let _ = c.kill();
            let st = c.wait().ok();
            if self.exit.is_none() {
                self.exit = Some(st.and_then(|s| s.code()));
            }
        }
        // Whatever was still in the pipe.
        let _ = self.lines(Duration::from_millis(200));
        let _ = self.log.flush();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

fn pump(r: impl std::io::Read, started: Instant, prefix: &str, tx: &mpsc::Sender<Line>) {
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    while let Ok(n) = r.read_until(b'\n', &mut buf) {
        if n == 0 {
            break;
        }
        let text = format!(
            "{prefix}{}",
            String::from_utf8_lossy(&buf).trim_end_matches(['\r', '\n'])
        );
        buf.clear();
        let line = Line {
            at: started.elapsed().as_secs_f64(),
            text,
        };
        if tx.send(line).is_err() {
            break;
        }
    }
}

/// A tiny firmware for the accelerator probe: at the reset vector, `mov al, 0x31; out 0xf4, al`
/// (QEMU's isa-debug-exit then exits with status 0x31 * 2 + 1 = 99), then `hlt`.
fn probe_firmware() -> Vec<u8> {
    let mut b = vec![0xf4u8; 65536];
    let code = [0xb0, 0x31, 0xe6, 0xf4, 0xf4, 0xeb, 0xfe];
    b[0xfff0..0xfff0 + code.len()].copy_from_slice(&code);
    b
}

/// Whether KVM works here: `/dev/kvm` exists and a probe VM with the lab's CPU model runs
/// guest code under it (nested KVM on the build machines aborts at vCPU setup).
pub fn kvm_works(dir: &Path) -> bool {
    if !Path::new("/dev/kvm").exists() {
        return false;
    }
    let fw = dir.join("kvm-probe.bin");
    if std::fs::write(&fw, probe_firmware()).is_err() {
        return false;
    }
    let child = std::process::Command::new("qemu-system-x86_64")
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args([
            "-machine", "q35", "-cpu", "max", "-accel", "kvm", "-m", "16",
        ])
        .arg("-bios")
        .arg(&fw)
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
    let Ok(mut child) = child else { return false };
    let end = Instant::now() + Duration::from_secs(10);
    let ok = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st.code() == Some(99),
            Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break false;
            }
        }
    };
    let _ = std::fs::remove_file(&fw);
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_qemu_arguments() {
        let cfg = VmConfig {
            image: PathBuf::from("/img"),
            disk: PathBuf::from("/w/disk.img"),
            tap: "imrs0".into(),
            accel: Accel::Tcg,
            memory_mib: 1024,
            serial: "IMRS-LAB-1".into(),
            rtc: "2026-08-01T00:00:00".into(),
            append: vec![],
            uefi_vars: None,
        };
        let o = boot_options(&cfg);
        assert!(!o.user_nic);
        let e = o.extra.join(" ");
        assert!(e.contains("-rtc base=2026-08-01T00:00:00"), "{e}");
        assert!(
            e.contains("tap,id=n0,ifname=imrs0,script=no,downscript=no"),
            "{e}"
        );
        assert!(e.contains("file=/w/disk.img,format=raw"), "{e}");
        assert!(e.contains("virtio-blk-pci,drive=d0"), "{e}");
    }

    #[test]
    fn probe_firmware_has_the_reset_vector() {
        let b = probe_firmware();
        assert_eq!(b.len(), 65536);
        assert_eq!(&b[0xfff0..0xfff4], &[0xb0, 0x31, 0xe6, 0xf4]);
    }
}
