//! The individual hardware checks, each reading files under a root path.

use std::path::Path;

use imrs_config::profile::{Need, Profile};

use super::{Check, Status, judge};

fn read(root: &Path, rel: &str) -> Option<String> {
    std::fs::read_to_string(root.join(rel))
        .ok()
        .map(|s| s.trim().to_string())
}

fn push(
    out: &mut Vec<Check>,
    name: impl Into<String>,
    status: Option<Status>,
    measured: impl Into<String>,
    required: impl Into<String>,
) {
    if let Some(status) = status {
        out.push(Check {
            name: name.into(),
            status,
            measured: measured.into(),
            required: required.into(),
        });
    }
}

fn one_of(list: &[String]) -> String {
    if list.is_empty() {
        "any".into()
    } else {
        format!("one of {}", list.join(", "))
    }
}

fn dmi(root: &Path, p: &Profile, out: &mut Vec<Check>) {
    for (name, file, accepted) in [
        ("dmi.vendor", "sys/class/dmi/id/sys_vendor", &p.dmi.vendors),
        (
            "dmi.product",
            "sys/class/dmi/id/product_name",
            &p.dmi.products,
        ),
    ] {
        if accepted.is_empty() {
            continue;
        }
        let got = read(root, file).unwrap_or_default();
        let ok = accepted.contains(&got);
        push(
            out,
            name,
            judge(ok, Need::Required),
            quoted(&got),
            one_of(accepted),
        );
    }
    let serial = read(root, "sys/class/dmi/id/product_serial").unwrap_or_default();
    let ok = !serial.is_empty()
        && !matches!(
            serial.to_lowercase().as_str(),
            "0" | "none" | "default string" | "to be filled by o.e.m."
        );
    push(
        out,
        "dmi.serial",
        judge(ok, p.dmi.serial),
        quoted(&serial),
        "a device serial number",
    );
}

fn quoted(s: &str) -> String {
    if s.is_empty() {
        "(none)".into()
    } else {
        format!("{s:?}")
    }
}

fn cpu(root: &Path, p: &Profile, out: &mut Vec<Check>) {
    let info = read(root, "proc/cpuinfo").unwrap_or_default();
    let count = info.lines().filter(|l| l.starts_with("processor")).count() as u32;
    push(
        out,
        "cpu.count",
        judge(count >= p.cpu.min_count, Need::Required),
        count.to_string(),
        format!(">= {}", p.cpu.min_count),
    );
    if !p.cpu.flags.is_empty() {
        let flags: Vec<&str> = info
            .lines()
            .find(|l| l.starts_with("flags"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, f)| f.split_whitespace().collect())
            .unwrap_or_default();
        let missing: Vec<&String> = p
            .cpu
            .flags
            .iter()
            .filter(|f| !flags.contains(&f.as_str()))
            .collect();
        let measured = if missing.is_empty() {
            "all present".to_string()
        } else {
            format!(
                "missing {}",
                missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        };
        push(
            out,
            "cpu.flags",
            judge(missing.is_empty(), Need::Required),
            measured,
            p.cpu.flags.join(" "),
        );
    }
}

fn memory(root: &Path, p: &Profile, out: &mut Vec<Check>) {
    let kib: u64 = read(root, "proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let mib = kib / 1024;
    push(
        out,
        "memory.size",
        judge(mib >= p.memory.min_mib, Need::Required),
        format!("{mib} MiB"),
        format!(">= {} MiB", p.memory.min_mib),
    );
    let mcs = std::fs::read_dir(root.join("sys/devices/system/edac/mc"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("mc"))
                .count()
        })
        .unwrap_or(0);
    push(
        out,
        "memory.ecc",
        judge(mcs > 0, p.memory.ecc),
        format!("{mcs} EDAC memory controller(s)"),
        "ECC memory reported by EDAC",
    );
}

/// A physical NIC: has a `device` link (virtual ones such as lo, dummy, veth do not).
fn nics(root: &Path, p: &Profile, out: &mut Vec<Check>) {
    let dir = root.join("sys/class/net");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| dir.join(n).join("device").exists())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let mut usable = 0u32;
    for n in &names {
        let base = format!("sys/class/net/{n}");
        let driver = std::fs::read_link(root.join(&base).join("device/driver"))
            .ok()
            .and_then(|l| l.file_name().map(|f| f.to_string_lossy().into_owned()))
            .unwrap_or_default();
        let driver_ok = p.nics.drivers.is_empty()
            || p.nics
                .drivers
                .iter()
                .any(|d| d.replace('-', "_") == driver.replace('-', "_"));
        push(
            out,
            format!("nic.{n}.driver"),
            judge(driver_ok, Need::Preferred),
            quoted(&driver),
            one_of(&p.nics.drivers),
        );
        if p.nics.min_speed_mbps > 0 {
            let speed: i64 = read(root, &format!("{base}/speed"))
                .and_then(|s| s.parse().ok())
                .unwrap_or(-1);
            let ok = speed >= i64::from(p.nics.min_speed_mbps);
            let measured = if speed < 0 {
                "unknown (link down)".to_string()
            } else {
                format!("{speed} Mbit/s")
            };
            push(
                out,
                format!("nic.{n}.speed"),
                judge(ok, Need::Preferred),
                measured,
                format!(">= {} Mbit/s", p.nics.min_speed_mbps),
            );
        }
        // carrier is readable only while the interface is up; the network stage brings links up
        // and checks again. Here an unreadable carrier is a warning, never a pass.
        let carrier = read(root, &format!("{base}/carrier"));
        let (ok, measured) = match carrier.as_deref() {
            Some("1") => (true, "up".to_string()),
            Some("0") => (false, "no carrier".to_string()),
            _ => (false, "unknown (interface down)".to_string()),
        };
        let status = match (judge(ok, p.nics.carrier), carrier.is_some()) {
            (Some(Status::Fail), false) => Some(Status::Warn),
            (s, _) => s,
        };
        push(out, format!("nic.{n}.carrier"), status, measured, "carrier");
        if driver_ok {
            usable += 1;
        }
    }
    push(
        out,
        "nic.count",
        judge(usable >= p.nics.min_count, Need::Required),
        format!(
            "{usable} ({})",
            if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            }
        ),
        format!(">= {} with an accepted driver", p.nics.min_count),
    );
}

fn disks(root: &Path, p: &Profile, out: &mut Vec<Check>) {
    if p.disks.min_count == 0 {
        return;
    }
    let dir = root.join("sys/class/block");
    let min_bytes = p.disks.min_size_gib * (1 << 30);
    let mut found = Vec::new();
    if let Ok(d) = std::fs::read_dir(&dir) {
        for e in d.filter_map(Result::ok) {
            let n = e.file_name().to_string_lossy().into_owned();
            if ["loop", "ram", "zram", "sr", "dm-", "md"]
                .iter()
                .any(|p| n.starts_with(p))
                || dir.join(&n).join("partition").exists()
            {
                continue;
            }
            let sectors: u64 = read(root, &format!("sys/class/block/{n}/size"))
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            if sectors * 512 >= min_bytes && sectors > 0 {
                found.push(format!("{n} {} GiB", (sectors * 512) >> 30));
            }
        }
    }
    found.sort();
    push(
        out,
        "disk.count",
        judge(found.len() as u32 >= p.disks.min_count, Need::Required),
        format!(
            "{} ({})",
            found.len(),
            if found.is_empty() {
                "none".into()
            } else {
                found.join(", ")
            }
        ),
        format!(
            ">= {} of >= {} GiB",
            p.disks.min_count, p.disks.min_size_gib
        ),
    );
}

fn tpm(root: &Path, p: &Profile, out: &mut Vec<Check>) {
    let major = read(root, "sys/class/tpm/tpm0/tpm_version_major");
    let ok = major.as_deref() == Some("2");
    let measured = match major {
        Some(m) => format!("TPM {m}.x"),
        None => "no TPM".into(),
    };
    push(out, "tpm", judge(ok, p.tpm), measured, "TPM 2.0");
}

fn rtc(root: &Path, p: &Profile, epoch: i64, out: &mut Vec<Check>) {
    let since: Option<i64> =
        read(root, "sys/class/rtc/rtc0/since_epoch").and_then(|s| s.parse().ok());
    let ok = since.is_some_and(|s| s >= epoch);
    let measured = since.map_or("no RTC".to_string(), |s| format!("{s} (unix)"));
    push(
        out,
        "rtc",
        judge(ok, p.rtc),
        measured,
        format!(">= {epoch} (image build time)"),
    );
}

fn entropy(root: &Path, p: &Profile, out: &mut Vec<Check>) {
    let avail: i64 = read(root, "proc/sys/kernel/random/entropy_avail")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    push(
        out,
        "entropy",
        judge(avail >= 256, p.entropy),
        format!("entropy_avail {avail}"),
        "CRNG ready (entropy_avail 256)",
    );
}

/// Runs every check of the profile under `root`.
pub fn run_checks(root: &Path, p: &Profile, epoch: i64) -> Vec<Check> {
    let mut out = Vec::new();
    dmi(root, p, &mut out);
    cpu(root, p, &mut out);
    memory(root, p, &mut out);
    nics(root, p, &mut out);
    disks(root, p, &mut out);
    tpm(root, p, &mut out);
    rtc(root, p, epoch, &mut out);
    entropy(root, p, &mut out);
    out
}
