//! The guest's disk: one raw image with a GPT holding two partitions found by the init through
//! their GPT names (`PARTNAME=` in sysfs):
//!
//! | partition | filesystem | contents |
//! |---|---|---|
//! | `IMRS-CONFIG` | vfat | `site.toml`, `site.toml.sig` |
//! | `IMRS-DATA` | ext4 | empty: the init keeps its state and outbox there |
//!
//! Built with the host's tools, without loop devices or mounts: `sfdisk` writes the table,
//! `mkfs.vfat` + `mcopy` and `mkfs.ext4` make each filesystem in its own file, and the two
//! files are copied into place at the partitions' offsets. The same disk is reused across the
//! boots of a scenario (power cut, second boot).

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::host::process::run;

/// GPT name of the config partition (the init's `site::CONFIG_PARTNAME`).
pub const CONFIG_PARTNAME: &str = "IMRS-CONFIG";
/// GPT name of the data partition (the init's `state::DATA_PARTNAME`).
pub const DATA_PARTNAME: &str = "IMRS-DATA";
/// Config partition size, MiB.
pub const CONFIG_MIB: u64 = 16;
/// Data partition size, MiB (at least 64).
pub const DATA_MIB: u64 = 96;
/// First partition starts at 1 MiB.
const START_MIB: u64 = 1;
const MIB: u64 = 1 << 20;

/// Host tools the disk needs.
pub const TOOLS: [&str; 4] = ["sfdisk", "mkfs.vfat", "mcopy", "mkfs.ext4"];

/// Where a partition lies in the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Byte offset.
    pub offset: u64,
    /// Byte length.
    pub len: u64,
}

/// The layout: config then data, 1 MiB aligned, with room for the backup GPT.
pub fn layout() -> (Extent, Extent, u64) {
    let config = Extent {
        offset: START_MIB * MIB,
        len: CONFIG_MIB * MIB,
    };
    let data = Extent {
        offset: config.offset + config.len,
        len: DATA_MIB * MIB,
    };
    let total = data.offset + data.len + MIB;
    (config, data, total)
}

/// The sfdisk script for [`layout`].
pub fn sfdisk_script() -> String {
    let (config, data, _) = layout();
    // Linux filesystem data type for both; the init looks only at the names.
    let ty = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
    format!(
        "label: gpt\nunit: sectors\n\
         start={}, size={}, type={ty}, name=\"{CONFIG_PARTNAME}\"\n\
         start={}, size={}, type={ty}, name=\"{DATA_PARTNAME}\"\n",
        config.offset / 512,
        config.len / 512,
        data.offset / 512,
        data.len / 512
    )
}

fn file_of(path: &Path, len: u64) -> Result<()> {
    let f = std::fs::File::create(path)
        .with_context(|| format!("{}: cannot create", path.display()))?;
    f.set_len(len)
        .with_context(|| format!("{}: cannot size to {len} bytes", path.display()))?;
    Ok(())
}

/// Copies `src` into `dst` at `offset`, keeping `dst`'s other bytes.
fn place(src: &Path, dst: &Path, offset: u64) -> Result<()> {
    let mut from =
        std::fs::File::open(src).with_context(|| format!("{}: cannot open", src.display()))?;
    let mut to = OpenOptions::new()
        .write(true)
        .open(dst)
        .with_context(|| format!("{}: cannot open for writing", dst.display()))?;
    to.seek(SeekFrom::Start(offset))
        .with_context(|| format!("{}: seek", dst.display()))?;
    std::io::copy(&mut from, &mut to)
        .with_context(|| format!("cannot copy {} into {}", src.display(), dst.display()))?;
    to.sync_all()
        .with_context(|| format!("{}: fsync", dst.display()))?;
    Ok(())
}

/// Builds the disk image `out` with the signed site config `site` (and `site.sig`) on the config
/// partition. Scratch files go next to `out` and are removed.
pub fn build(out: &Path, site: &Path, site_sig: &Path) -> Result<PathBuf> {
    for p in [site, site_sig] {
        if !p.is_file() {
            bail!("{}: missing; the config partition needs it", p.display());
        }
    }
    let (config, data, total) = layout();
    let dir = out
        .parent()
        .ok_or_else(|| anyhow::anyhow!("{}: no parent folder", out.display()))?;
    file_of(out, total)?;
    let mut sf = Command::new("sfdisk");
    sf.args(["--quiet", "--no-reread", "--no-tell-kernel"])
        .arg(out)
        .env("LC_ALL", "C");
    run_with_stdin(&mut sf, sfdisk_script().as_bytes())
        .with_context(|| format!("{}: cannot write the GPT", out.display()))?;

    let vfat = dir.join("config.vfat");
    file_of(&vfat, config.len)?;
    run(Command::new("mkfs.vfat")
        .args(["-n", "IMRSCONFIG", "-i", "1a2b3c4d"])
        .arg(&vfat))?;
    for (src, name) in [(site, "site.toml"), (site_sig, "site.toml.sig")] {
        run(Command::new("mcopy")
            .arg("-i")
            .arg(&vfat)
            .arg(src)
            .arg(format!("::/{name}"))
            .env("MTOOLS_SKIP_CHECK", "1"))?;
    }
    let ext4 = dir.join("data.ext4");
    file_of(&ext4, data.len)?;
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "imrs-data", "-m", "0"])
        .arg(&ext4))?;
    place(&vfat, out, config.offset)?;
    place(&ext4, out, data.offset)?;
    let _ = std::fs::remove_file(&vfat);
    let _ = std::fs::remove_file(&ext4);
    Ok(out.to_path_buf())
}

fn run_with_stdin(cmd: &mut Command, input: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {:?} (install fdisk)", cmd.get_program()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input)
            .context("writing the sfdisk script")?;
    }
    let out = child.wait_with_output().context("waiting for sfdisk")?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The partition names in `disk`'s GPT, read back with `sfdisk --json` (a check for tests and
/// the lab's own sanity).
pub fn partition_names(disk: &Path) -> Result<Vec<String>> {
    let out = run(Command::new("sfdisk").arg("--json").arg(disk))?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{}: sfdisk --json output", disk.display()))?;
    Ok(v["partitiontable"]["partitions"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_aligned_and_big_enough() {
        let (c, d, total) = layout();
        assert_eq!(c.offset % MIB, 0);
        assert_eq!(d.offset, c.offset + c.len);
        assert!(d.len >= 64 * MIB);
        assert!(total >= d.offset + d.len + 33 * 512);
        let s = sfdisk_script();
        assert!(s.contains("name=\"IMRS-CONFIG\""), "{s}");
        assert!(s.contains("start=2048, size=32768"), "{s}");
    }

    #[test]
    fn builds_a_disk_when_the_tools_are_there() {
        let have = TOOLS.iter().all(|t| {
            Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        });
        if !have {
            eprintln!("SKIP: {} not all installed", TOOLS.join(", "));
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let site = dir.path().join("site.toml");
        std::fs::write(&site, "x = 1\n").unwrap();
        let sig = dir.path().join("site.toml.sig");
        std::fs::write(&sig, "00\n").unwrap();
        let disk = build(&dir.path().join("disk.img"), &site, &sig).unwrap();
        assert_eq!(
            partition_names(&disk).unwrap(),
            [CONFIG_PARTNAME, DATA_PARTNAME]
        );
        // The site file is on the vfat partition, read back with mtools at its offset.
        let (c, _, _) = layout();
        let o = Command::new("mtype")
            .arg("-i")
            .arg(format!("{}@@{}", disk.display(), c.offset))
            .arg("::/site.toml")
            .env("MTOOLS_SKIP_CHECK", "1")
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&o.stdout), "x = 1\n");
    }
}
