//! Fixture-tree tests: a passing tree for each shipped profile (calypso, pandora, qemu), and a
//! failing variant for every check.

use std::path::{Path, PathBuf};

use imrs_config::profile::{self, Need, Profile};

use super::*;

const EPOCH: i64 = 1_795_000_000;

fn profile(name: &str) -> Profile {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../images/profiles/{name}.toml"));
    profile::load(&p).unwrap()
}

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// A machine that meets `p` exactly (plus some things that must not count: lo, a partition, a
/// loop device).
fn passing(p: &Profile) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    write(
        r,
        "sys/class/dmi/id/sys_vendor",
        &format!("{}\n", p.dmi.vendors.first().map_or("Supermicro", |v| v)),
    );
    write(
        r,
        "sys/class/dmi/id/product_name",
        &format!("{}\n", p.dmi.products.first().map_or("SYS-1", |v| v)),
    );
    write(r, "sys/class/dmi/id/product_serial", "S4A1234567\n");
    let mut cpuinfo = String::new();
    for i in 0..p.cpu.min_count {
        cpuinfo.push_str(&format!(
            "processor\t: {i}\nflags\t\t: fpu {} sse\n\n",
            p.cpu.flags.join(" ")
        ));
    }
    write(r, "proc/cpuinfo", &cpuinfo);
    write(
        r,
        "proc/meminfo",
        &format!(
            "MemTotal:       {} kB\nMemFree: 1 kB\n",
            (p.memory.min_mib + 64) * 1024
        ),
    );
    std::fs::create_dir_all(r.join("sys/devices/system/edac/mc/mc0")).unwrap();
    std::fs::create_dir_all(r.join("sys/bus/pci/drivers")).unwrap();
    let driver = p
        .nics
        .drivers
        .first()
        .cloned()
        .unwrap_or_else(|| "igb".into());
    std::fs::create_dir_all(r.join("sys/bus/pci/drivers").join(&driver)).unwrap();
    for i in 0..p.nics.min_count {
        let base = format!("sys/class/net/eth{i}");
        std::fs::create_dir_all(r.join(&base).join("device")).unwrap();
        std::os::unix::fs::symlink(
            r.join("sys/bus/pci/drivers").join(&driver),
            r.join(&base).join("device/driver"),
        )
        .unwrap();
        write(
            r,
            &format!("{base}/speed"),
            &format!("{}\n", p.nics.min_speed_mbps.max(1000)),
        );
        write(r, &format!("{base}/carrier"), "1\n");
    }
    write(r, "sys/class/net/lo/carrier", "1\n");
    let sectors = (p.disks.min_size_gib + 10) * (1 << 30) / 512;
    for i in 0..p.disks.min_count {
        let n = format!("sd{}", (b'a' + i as u8) as char);
        write(
            r,
            &format!("sys/class/block/{n}/size"),
            &format!("{sectors}\n"),
        );
        write(
            r,
            &format!("sys/class/block/{n}1/size"),
            &format!("{sectors}\n"),
        );
        write(r, &format!("sys/class/block/{n}1/partition"), "1\n");
    }
    write(r, "sys/class/block/loop0/size", &format!("{sectors}\n"));
    write(r, "sys/class/tpm/tpm0/tpm_version_major", "2\n");
    write(
        r,
        "sys/class/rtc/rtc0/since_epoch",
        &format!("{}\n", EPOCH + 1000),
    );
    write(r, "proc/sys/kernel/random/entropy_avail", "256\n");
    d
}

#[test]
fn shipped_profiles_pass_on_matching_machines() {
    for name in ["calypso", "pandora", "qemu"] {
        let p = profile(name);
        let d = passing(&p);
        let rep = check(d.path(), &p, EPOCH, &[]);
        assert!(rep.passed(), "{name}: {:#?}", rep.failures());
        assert!(rep.warnings().is_empty(), "{name}: {:#?}", rep.warnings());
        assert!(rep.checks.iter().any(|c| c.name == "nic.count"), "{name}");
    }
}

type Mutation = fn(&Path);

#[test]
fn each_check_fails_when_the_machine_falls_short() {
    let cases: &[(&str, Mutation, &str)] = &[
        (
            "wrong vendor",
            |r| write(r, "sys/class/dmi/id/sys_vendor", "Acme\n"),
            "dmi.vendor",
        ),
        (
            "no serial",
            |r| {
                write(
                    r,
                    "sys/class/dmi/id/product_serial",
                    "To Be Filled By O.E.M.\n",
                )
            },
            "dmi.serial",
        ),
        (
            "too few cpus",
            |r| {
                write(
                    r,
                    "proc/cpuinfo",
                    "processor\t: 0\nflags\t\t: fpu sse4_2 aes avx2 rdrand\n",
                )
            },
            "cpu.count",
        ),
        (
            "missing flag",
            |r| {
                let t = std::fs::read_to_string(r.join("proc/cpuinfo"))
                    .unwrap()
                    .replace(" avx2", "");
                write(r, "proc/cpuinfo", &t)
            },
            "cpu.flags",
        ),
        (
            "too little memory",
            |r| write(r, "proc/meminfo", "MemTotal: 1048576 kB\n"),
            "memory.size",
        ),
        (
            "no ECC",
            |r| std::fs::remove_dir_all(r.join("sys/devices/system/edac/mc/mc0")).unwrap(),
            "memory.ecc",
        ),
        (
            "too few nics",
            |r| std::fs::remove_dir_all(r.join("sys/class/net/eth1")).unwrap(),
            "nic.count",
        ),
        (
            "no carrier",
            |r| write(r, "sys/class/net/eth0/carrier", "0\n"),
            "nic.eth0.carrier",
        ),
        (
            "too few disks",
            |r| std::fs::remove_dir_all(r.join("sys/class/block/sda")).unwrap(),
            "disk.count",
        ),
        (
            "small disk",
            |r| write(r, "sys/class/block/sda/size", "2048\n"),
            "disk.count",
        ),
        (
            "no tpm",
            |r| std::fs::remove_dir_all(r.join("sys/class/tpm")).unwrap(),
            "tpm",
        ),
        (
            "tpm 1.2",
            |r| write(r, "sys/class/tpm/tpm0/tpm_version_major", "1\n"),
            "tpm",
        ),
        (
            "rtc before the build",
            |r| write(r, "sys/class/rtc/rtc0/since_epoch", "100\n"),
            "rtc",
        ),
        (
            "entropy not ready",
            |r| write(r, "proc/sys/kernel/random/entropy_avail", "17\n"),
            "entropy",
        ),
    ];
    let mut p = profile("calypso");
    p.dmi.vendors = vec!["Supermicro".into()];
    for (what, mutate, check_name) in cases {
        let d = passing(&p);
        mutate(d.path());
        let rep = check(d.path(), &p, EPOCH, &[]);
        let failed: Vec<&str> = rep.failures().iter().map(|c| c.name.as_str()).collect();
        assert!(
            failed.contains(check_name),
            "{what}: expected {check_name} to fail, failures {failed:?}"
        );
        assert!(!rep.passed(), "{what}");
        let c = rep.checks.iter().find(|c| c.name == *check_name).unwrap();
        assert!(
            !c.measured.is_empty() && !c.required.is_empty(),
            "{what}: {c:?}"
        );
    }
}

#[test]
fn preferred_is_a_warning_and_ignored_is_not_checked() {
    let mut p = profile("qemu");
    p.tpm = Need::Preferred;
    let d = passing(&p);
    std::fs::remove_dir_all(d.path().join("sys/class/tpm")).unwrap();
    let rep = check(d.path(), &p, EPOCH, &[]);
    assert!(rep.passed());
    assert_eq!(rep.warnings()[0].name, "tpm");
    p.tpm = Need::Ignored;
    let rep = check(d.path(), &p, EPOCH, &[]);
    assert!(rep.checks.iter().all(|c| c.name != "tpm"));
}

#[test]
fn interface_down_is_a_warning_not_a_pass() {
    let p = profile("qemu");
    let d = passing(&p);
    std::fs::remove_file(d.path().join("sys/class/net/eth0/carrier")).unwrap();
    let rep = check(d.path(), &p, EPOCH, &[]);
    let c = rep
        .checks
        .iter()
        .find(|c| c.name == "nic.eth0.carrier")
        .unwrap();
    assert_eq!(c.status, Status::Warn);
    assert!(rep.passed());
}

#[test]
fn failed_modules_are_named_failures() {
    let p = profile("qemu");
    let d = passing(&p);
    let f = crate::modules::ModuleFailure {
        module: "kernel/drivers/net/virtio_net.ko".into(),
        reason: "cannot open: No such file".into(),
    };
    let rep = check(d.path(), &p, EPOCH, &[f]);
    assert!(!rep.passed());
    assert_eq!(
        rep.failures()[0].name,
        "module:kernel/drivers/net/virtio_net.ko"
    );
    let _unused: PathBuf = d.path().to_path_buf();
}
