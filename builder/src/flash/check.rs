//! `imrs-build verify-device DEVICE --source SOURCE --pubkey PUB [--record RECORD.json]
//! [--site FILE] [--size N]`, also reached as `imrs-build flash SOURCE DEVICE --check`: is
//! DEVICE what flashing SOURCE wrote? Nothing is written; the device is opened read-only.
//!
//! 1. SOURCE is verified and its disk composed in a scratch file exactly as `flash` does
//!    ([`super::load_source`]); a tampered source is refused before the device is read.
//!    With `--site`, the scratch disk is personalised with that site config too (and a
//!    placeholder device key), so that `IMRS-CONFIG` can be compared byte for byte.
//! 2. The expected ranges are the scratch disk's mapped ranges cut at partition boundaries
//!    (as `flash` writes them), each with its sha256. Ranges in the personalised partitions
//!    cannot come from SOURCE: `IMRS-DATA` (a new ext4 with a new device key per flash) and
//!    `IMRS-CONFIG` without `--site` are taken from the signed flash record's
//!    `written_ranges` with `--record` (its signature must verify with `--record-pubkey`,
//!    default `--pubkey`; it must name SOURCE's manifest and disk size, and its other ranges
//!    must be SOURCE's).
//! 3. Every expected range is read from the device (`O_DIRECT` where the file system allows
//!    it; see [`super::write::open_uncached`]) and its sha256 compared; every wrong range is
//!    named (index, byte offset, length, partition, expected and found sha256), also a range
//!    the device ends inside (an interrupted flash onto a file).
//! 4. A personalised partition that no range covered is checked by content and said to be so:
//!    `IMRS-CONFIG` must hold a site config that verifies with the image's site-signing key,
//!    `IMRS-DATA` must hold the device key (read with e2fsprogs' `debugfs`, read-only).
//!
//! Exit 0 when the device matches, 3 when a range or a content check is wrong.

use std::fs::File;
use std::io::Cursor;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::Args;
use ed25519_dalek::VerifyingKey;
use imrs_config::fsutil::read_bounded;
use imrs_config::image::canonical_json;
use imrs_config::keys;
use imrs_disk::bmap::{BLOCK, Bmap, Range};

use imrs_disk::layout::{CONFIG_PARTNAME, DATA_PARTNAME, Extent};
use serde_json::{Value, json};

use super::write::{self, Found};
use super::{Appliance, DEVICE_KEY_FILE, inside, load_source};
use crate::EXIT_VERIFY;
use crate::disk::{parse_size, read_site};
use crate::ui::{Failure, Ui};

/// `verify-device` arguments.
#[derive(Debug, Args)]
pub struct VerifyDeviceArgs {
    /// The flashed disk (`/dev/sdX`), or a file.
    pub device: PathBuf,
    /// What was flashed: an image folder (from `build`) or a disk image (from `disk`).
    #[arg(long)]
    pub source: PathBuf,
    /// Public key (PEM) the image's manifest must be signed with.
    #[arg(long)]
    pub pubkey: PathBuf,
    /// The signed flash record `flash` printed for this device: IMRS-CONFIG and IMRS-DATA are
    /// then compared range by range with what was written.
    #[arg(long)]
    pub record: Option<PathBuf>,
    /// Public key the record must be signed with (default: --pubkey).
    #[arg(long, requires = "record")]
    pub record_pubkey: Option<PathBuf>,
    /// The site config (FILE and FILE.sig) that was flashed: IMRS-CONFIG is then compared byte
    /// for byte.
    #[arg(long)]
    pub site: Option<PathBuf>,
    /// Disk size when SOURCE is an image folder, as given to `flash --size` (default: the
    /// record's disk size, else `disk`'s default).
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
}

/// The first 16 hex digits of a sha256, enough to tell two apart in a message.
pub fn sha256_hex_short(sha: &str) -> &str {
    sha.get(..16).unwrap_or(sha)
}

/// What a record says, once its signature verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The image's manifest sha256.
    pub manifest_sha256: String,
    /// The composed disk's size.
    pub disk_size: u64,
    /// Every written range with its sha256.
    pub ranges: Vec<Range>,
    /// The device key's id.
    pub device_key_id: String,
}

/// Reads the fields a check needs from a record (the `record` object); `what` names it.
pub fn parse_record(record: &Value, what: &Path) -> Result<Record> {
    let bad = |detail: &str| anyhow::anyhow!("{}: {detail}", what.display());
    if record["kind"] != "imrs-flash-record" {
        return Err(bad("not an imrs-flash-record"));
    }
    let schema = record["schema"].as_u64().unwrap_or(0);
    let Some(list) = record["written_ranges"].as_array() else {
        return Err(bad(&format!(
            "record schema {schema} has no per-range digests (written_ranges; flashed by an \
             older imrs-build): check without --record"
        )));
    };
    let mut ranges = Vec::with_capacity(list.len());
    for item in list {
        let r = (|| {
            let a = item.as_array()?;
            let (first, last, sha) = (a.first()?.as_u64()?, a.get(1)?.as_u64()?, a.get(2)?);
            let sha = sha.as_str()?;
            (a.len() == 3
                && first <= last
                && sha.len() == 64
                && sha.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| Range {
                first,
                last,
                sha256: sha.to_string(),
            })
        })();
        let r = r.ok_or_else(|| bad(&format!("written_ranges: malformed entry {item}")))?;
        if ranges.last().is_some_and(|p: &Range| p.last >= r.first) {
            return Err(bad("written_ranges: not in order"));
        }
        ranges.push(r);
    }
    let text = |k: &str| record["image"][k].as_str().map(str::to_string);
    Ok(Record {
        manifest_sha256: text("manifest_sha256").ok_or_else(|| bad("no image.manifest_sha256"))?,
        disk_size: record["disk_size"]
            .as_u64()
            .ok_or_else(|| bad("no disk_size"))?,
        ranges,
        device_key_id: record["device_key_id"].as_str().unwrap_or("").to_string(),
    })
}

/// Reads a signed flash record (what `flash` printed, with or without `--json`, or a line of
/// an enrolment inventory) and verifies its signature with `key`.
fn read_record(path: &Path, key: &VerifyingKey) -> Result<Record> {
    let bytes = read_bounded(path, 64 << 20, "flash record")?;
    let v: Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: not a JSON flash record", path.display()))?;
    let sig = v["signature"]
        .as_str()
        .with_context(|| format!("{}: no signature", path.display()))?;
    let signature = keys::parse_signature(sig, path)?;
    keys::verify(key, &canonical_json(&v["record"]), &signature).map_err(|e| {
        Failure::new(
            EXIT_VERIFY,
            format!(
                "{}: the flash record's signature does not verify with key {}",
                path.display(),
                keys::key_id(key)
            ),
        )
        .caused_by(e)
    })?;
    parse_record(&v["record"], path)
}

/// Where an expected digest comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Basis {
    /// SOURCE's disk.
    Source,
    /// The flash record.
    Record,
}

/// One range to compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// The range and its expected sha256.
    pub range: Range,
    /// Where that sha256 comes from.
    pub basis: Basis,
}

/// The ranges to compare, in disk order: `source`'s (cut at partition boundaries, hashed)
/// except inside `personal` (partitions SOURCE cannot tell), the record's inside those.
/// Errs when the record's other ranges are not `source`'s (a record of another flash).
pub fn expected(
    source: &Bmap,
    personal: &[Extent],
    record: Option<&[Range]>,
) -> Result<Vec<Expected>> {
    let mine = |r: &Range| personal.iter().any(|e| inside(r, e));
    let mut out: Vec<Expected> = source
        .ranges
        .iter()
        .filter(|r| !mine(r))
        .map(|r| Expected {
            range: r.clone(),
            basis: Basis::Source,
        })
        .collect();
    if let Some(rec) = record {
        let others: Vec<&Range> = rec.iter().filter(|r| !mine(r)).collect();
        let ours: Vec<&Range> = out.iter().map(|e| &e.range).collect();
        if others != ours {
            let at = others
                .iter()
                .zip(&ours)
                .position(|(a, b)| a != b)
                .unwrap_or(others.len().min(ours.len()));
            bail!(
                "the record does not describe a flash of SOURCE: outside IMRS-CONFIG and \
                 IMRS-DATA it lists {} ranges, SOURCE has {} (they differ from the {}th on)",
                others.len(),
                ours.len(),
                at + 1
            );
        }
        out.extend(rec.iter().filter(|r| mine(r)).map(|r| Expected {
            range: r.clone(),
            basis: Basis::Record,
        }));
        out.sort_by_key(|e| e.range.first);
    }
    Ok(out)
}

/// A range the device does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wrong {
    /// Its index among the compared ranges.
    pub index: usize,
    /// First byte.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// The partition it is in (or `GPT`).
    pub part: String,
    /// The expected sha256.
    pub expected: String,
    /// The sha256 found, or where the device ends.
    pub found: Found,
}

impl Wrong {
    /// One line naming the range.
    pub fn line(&self) -> String {
        let found = match &self.found {
            Found::Sha256(s) => format!("found {}", sha256_hex_short(s)),
            Found::EndsAt(at) => format!("the device ends at byte {at}"),
        };
        format!(
            "range {} at byte {}, {} bytes ({}): expected sha256 {}, {found}",
            self.index,
            self.offset,
            self.len,
            self.part,
            sha256_hex_short(&self.expected)
        )
    }

    fn json(&self) -> Value {
        let mut v = json!({"index": self.index, "offset": self.offset, "length": self.len,
            "partition": self.part, "expected_sha256": self.expected});
        match &self.found {
            Found::Sha256(s) => v["found_sha256"] = json!(s),
            Found::EndsAt(at) => v["device_ends_at"] = json!(at),
        }
        v
    }
}

/// The name of the partition holding byte `at`.
fn part_of(parts: &[(String, Extent)], at: u64) -> String {
    parts
        .iter()
        .find(|(_, e)| at >= e.offset && at < e.offset + e.len)
        .map(|(n, _)| n.clone())
        .unwrap_or_else(|| "GPT".into())
}

/// Reads `len` bytes of the device at `offset` (plain reads).
fn read_at(dev: &File, device: &Path, offset: u64, len: u64) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; usize::try_from(len)?];
    dev.read_exact_at(&mut buf, offset)
        .with_context(|| format!("{}: reading {len} bytes at byte {offset}", device.display()))?;
    Ok(buf)
}

/// `IMRS-CONFIG` by content: the site config on it verifies with the image's site key.
fn config_content(device: &Path, part: Extent, site_key: &VerifyingKey) -> Result<Value> {
    let dev = File::open(device).with_context(|| format!("{}: cannot open", device.display()))?;
    let mut vol = Cursor::new(read_at(&dev, device, part.offset, part.len)?);
    let fs = imrs_disk::fat::open(&mut vol, CONFIG_PARTNAME, 0)?;
    let dir = tempfile::tempdir().context("a scratch folder")?;
    for name in ["site.toml", "site.toml.sig"] {
        let data = imrs_disk::fat::read_file(&fs, CONFIG_PARTNAME, name, 1 << 20)?
            .with_context(|| format!("{CONFIG_PARTNAME} has no {name}"))?;
        std::fs::write(dir.path().join(name), data).context("staging the site config")?;
    }
    let s = read_site(&dir.path().join("site.toml"), site_key)
        .with_context(|| format!("{CONFIG_PARTNAME}: site.toml"))?
        .site;
    Ok(json!({"site_id": s.site_id, "sequence": s.sequence}))
}

/// `IMRS-DATA` by content: it holds the device key (a readable Ed25519 secret key); its id.
fn data_content(device: &Path, part: Extent) -> Result<String> {
    let o = Command::new("debugfs")
        .arg("-c")
        .arg("-R")
        .arg(format!("cat /{DEVICE_KEY_FILE}"))
        .arg(format!("{}?offset={}", device.display(), part.offset))
        .output()
        .context("running debugfs (e2fsprogs) to read IMRS-DATA")?;
    if !o.status.success() || o.stdout.is_empty() {
        bail!(
            "{DATA_PARTNAME} holds no {DEVICE_KEY_FILE}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    let dir = tempfile::tempdir().context("a scratch folder")?;
    let p = dir.path().join(DEVICE_KEY_FILE);
    std::fs::write(&p, &o.stdout).context("staging the device key")?;
    let key = keys::read_secret(&p)
        .with_context(|| format!("{DATA_PARTNAME}: {DEVICE_KEY_FILE} is not a device key"))?;
    Ok(keys::key_id(&key.verifying_key()))
}

/// `verify-device` (and `flash --check`).
pub fn run(args: VerifyDeviceArgs, ui: &Ui) -> Result<u8> {
    let image_key = keys::read_public(&args.pubkey)?;
    let record = match &args.record {
        Some(p) => {
            let key = match &args.record_pubkey {
                Some(k) => keys::read_public(k)?,
                None => image_key,
            };
            Some(read_record(p, &key)?)
        }
        None => None,
    };
    let size = match (&record, args.source.is_dir()) {
        (Some(r), true) if args.size.is_none() => Some(r.disk_size),
        _ => args.size,
    };
    let sp = ui.spinner("verifying the source");
    let src = load_source(&args.source, &image_key, size)?;
    sp.finish_and_clear();
    let disk_size = src.size;
    if let Some(r) = &record
        && (r.manifest_sha256 != src.manifest_sha256 || r.disk_size != disk_size)
    {
        return Err(Failure::new(
            EXIT_VERIFY,
            format!(
                "the record is of a flash of image manifest {} onto a {}-byte disk, SOURCE is \
                 manifest {} on a {}-byte disk{}",
                sha256_hex_short(&r.manifest_sha256),
                r.disk_size,
                sha256_hex_short(&src.manifest_sha256),
                disk_size,
                if args.source.is_dir() && args.size.is_some() {
                    " (drop --size: the record's is used)"
                } else {
                    ""
                }
            ),
        )
        .into());
    }
    // With the site config, IMRS-CONFIG is the one flash made from it (composed as flash
    // does); without, IMRS-CONFIG and IMRS-DATA are personal and only SOURCE's ranges count.
    let composed = match &args.site {
        Some(p) => {
            let f = read_site(p, &src.site_key)?;
            Some(Appliance::compose(
                &src,
                &[
                    ("site.toml", &f.text[..]),
                    ("site.toml.sig", f.sig.as_bytes()),
                ],
                &[(DEVICE_KEY_FILE, b"placeholder", 0o600)],
                b"verify-device",
            )?)
        }
        None => None,
    };
    let (parts, plan, files) = match &composed {
        Some(a) => (a.parts.clone(), a.plan(&src)?, Vec::from(a.files(&src)?)),
        None => {
            let mut f = File::open(src.path())
                .with_context(|| format!("{}: cannot open", src.path().display()))?;
            let parts = imrs_disk::layout::partitions(&mut f)?;
            let plan = write::Plan::single(super::disk_map(src.path())?);
            (parts, plan, vec![(f, src.path().to_path_buf())])
        }
    };
    let find = |name: &str| {
        parts
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, e)| *e)
            .with_context(|| format!("SOURCE's disk has no {name}"))
    };
    let (config, data) = (find(CONFIG_PARTNAME)?, find(DATA_PARTNAME)?);
    let mut personal = vec![data];
    if args.site.is_none() {
        personal.push(config);
    }
    // SOURCE's ranges, as flash cuts them, hashed.
    let named: Vec<(&File, &Path)> = files.iter().map(|(f, p)| (f, p.as_path())).collect();
    let map = write::hash_plan(&named, &plan)?;
    let plan = expected(
        &map,
        &personal,
        record.as_ref().map(|r| r.ranges.as_slice()),
    )
    .map_err(|e| Failure::new(EXIT_VERIFY, e.to_string()))?;
    let cmp = Bmap {
        image_size: disk_size,
        ranges: plan.iter().map(|e| e.range.clone()).collect(),
    };
    let total = cmp.mapped_blocks() * BLOCK;

    // The device, read-only.
    let (dev, how) = write::open_uncached(&args.device)?;
    let pb = ui.bytes(total, "reading the device");
    let mut wrong = Vec::new();
    let mut bytes = 0u64;
    write::read_ranges(
        &dev,
        &args.device,
        &cmp,
        &mut |b| pb.set_position(b),
        &mut |i, r, found| {
            let offset = r.first * BLOCK;
            let len = ((r.last + 1) * BLOCK).min(disk_size) - offset;
            bytes += len;
            if found != Found::Sha256(r.sha256.clone()) {
                wrong.push(Wrong {
                    index: i,
                    offset,
                    len,
                    part: part_of(&parts, offset),
                    expected: r.sha256.clone(),
                    found,
                });
            }
            Ok(())
        },
    )?;
    pb.finish_and_clear();
    drop(dev);

    // What no range covered, by content.
    let config_by = match (&args.site, &record) {
        (Some(_), _) => "site",
        (None, Some(_)) => "record",
        (None, None) => "content",
    };
    let data_by = if record.is_some() {
        "record"
    } else {
        "content"
    };
    let mut problems = Vec::new();
    let site = if config_by == "content" {
        match config_content(&args.device, config, &src.site_key) {
            Ok(v) => Some(v),
            Err(e) => {
                problems.push(format!("{CONFIG_PARTNAME}: {e:#}"));
                None
            }
        }
    } else {
        None
    };
    let device_key = if data_by == "content" {
        match data_content(&args.device, data) {
            Ok(id) => Some(id),
            Err(e) => {
                problems.push(format!("{e:#}"));
                None
            }
        }
    } else {
        record.as_ref().map(|r| r.device_key_id.clone())
    };

    let summary = json!({
        "device": args.device, "source": args.source,
        "image": {"name": src.manifest.name, "version": src.manifest.version,
                  "manifest_sha256": src.manifest_sha256},
        "ranges": cmp.ranges.len(), "bytes": bytes, "read": how,
        "compared": {CONFIG_PARTNAME: config_by, DATA_PARTNAME: data_by},
        "site": site, "device_key_id": device_key,
    });
    if !wrong.is_empty() || !problems.is_empty() {
        for w in &wrong {
            ui.warn(w.line());
        }
        for p in &problems {
            ui.warn(p);
        }
        let message = match wrong.first() {
            Some(first) => format!(
                "{} does not match {}: {} of {} ranges wrong, the first is {}; flash it again",
                args.device.display(),
                args.source.display(),
                wrong.len(),
                cmp.ranges.len(),
                first.line()
            ),
            None => format!(
                "{} does not hold what flashing {} puts there: {}",
                args.device.display(),
                args.source.display(),
                problems.join("; ")
            ),
        };
        let mut details = summary;
        details["wrong"] = wrong.iter().map(Wrong::json).collect();
        details["problems"] = json!(problems);
        return Err(Failure::new(EXIT_VERIFY, message)
            .with_details(details)
            .into());
    }
    if ui.json {
        crate::ui::print_ok(summary)?;
    } else {
        ui.info(format!(
            "{} matches {}: {} ranges, {} bytes compared ({})",
            args.device.display(),
            args.source.display(),
            cmp.ranges.len(),
            bytes,
            match how {
                write::ReadBack::Direct => "O_DIRECT",
                write::ReadBack::CacheDropped => "page cache dropped first",
            }
        ));
        for (name, how, what) in [
            (
                CONFIG_PARTNAME,
                config_by,
                site.as_ref().map(|s| {
                    format!(
                        "site {} sequence {}",
                        s["site_id"].as_str().unwrap_or("?"),
                        s["sequence"]
                    )
                }),
            ),
            (
                DATA_PARTNAME,
                data_by,
                device_key.clone().map(|k| format!("device key {k}")),
            ),
        ] {
            ui.info(match how {
                "content" => format!(
                    "{name}: not compared range by range (pass --record{}); it holds {}",
                    if name == CONFIG_PARTNAME {
                        " or --site"
                    } else {
                        ""
                    },
                    what.unwrap_or_default()
                ),
                "record" => format!("{name}: compared with the flash record"),
                _ => format!("{name}: compared with the site config given"),
            });
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(first: u64, last: u64, sha: char) -> Range {
        Range {
            first,
            last,
            sha256: sha.to_string().repeat(64),
        }
    }

    #[test]
    fn personalised_partitions_come_from_the_record() {
        // Blocks 0-9 GPT/ESP, 10-19 config, 20-29 data.
        let config = Extent {
            offset: 10 * BLOCK,
            len: 10 * BLOCK,
        };
        let data = Extent {
            offset: 20 * BLOCK,
            len: 10 * BLOCK,
        };
        let source = Bmap {
            image_size: 30 * BLOCK,
            ranges: vec![r(0, 3, 'a'), r(10, 11, 'b'), r(20, 21, 'c')],
        };
        let plan = expected(&source, &[data], None).unwrap();
        assert_eq!(plan.len(), 2);
        assert!(plan.iter().all(|e| e.basis == Basis::Source));

        let rec = [r(0, 3, 'a'), r(10, 11, 'd'), r(20, 24, 'e'), r(27, 27, 'f')];
        let plan = expected(&source, &[config, data], Some(&rec)).unwrap();
        let got: Vec<(u64, Basis)> = plan.iter().map(|e| (e.range.first, e.basis)).collect();
        assert_eq!(
            got,
            vec![
                (0, Basis::Source),
                (10, Basis::Record),
                (20, Basis::Record),
                (27, Basis::Record)
            ]
        );
        // A record of another source.
        let other = [r(0, 3, 'z'), r(20, 24, 'e')];
        let e = expected(&source, &[config, data], Some(&other)).unwrap_err();
        assert!(
            e.to_string()
                .contains("does not describe a flash of SOURCE"),
            "{e}"
        );
    }

    #[test]
    fn records_are_parsed_and_old_ones_named() {
        let sha = "ab".repeat(32);
        let rec = json!({"kind": "imrs-flash-record", "schema": 2, "disk_size": 4096,
            "device_key_id": "k", "image": {"manifest_sha256": "m"},
            "written_ranges": [[0, 3, sha], [5, 5, sha]]});
        let p = Path::new("r.json");
        let got = parse_record(&rec, p).unwrap();
        assert_eq!(got.ranges.len(), 2);
        assert_eq!(got.ranges[1].first, 5);
        assert_eq!(got.disk_size, 4096);
        let mut old = rec.clone();
        old["schema"] = json!(1);
        old.as_object_mut().unwrap().remove("written_ranges");
        let e = parse_record(&old, p).unwrap_err().to_string();
        assert!(
            e.contains("record schema 1 has no per-range digests"),
            "{e}"
        );
        let mut bad = rec.clone();
        bad["written_ranges"] = json!([[5, 5, sha], [0, 3, sha]]);
        assert!(
            parse_record(&bad, p)
                .unwrap_err()
                .to_string()
                .contains("not in order")
        );
        bad["written_ranges"] = json!([[0, 3, "short"]]);
        assert!(
            parse_record(&bad, p)
                .unwrap_err()
                .to_string()
                .contains("malformed")
        );
    }

    #[test]
    fn a_wrong_range_is_named_in_one_line() {
        let w = Wrong {
            index: 7,
            offset: 1 << 20,
            len: 8192,
            part: "IMRS-ESP".into(),
            expected: "ab".repeat(32),
            found: Found::EndsAt(1 << 20),
        };
        assert_eq!(
            w.line(),
            format!(
                "range 7 at byte 1048576, 8192 bytes (IMRS-ESP): expected sha256 {}, the device \
                 ends at byte 1048576",
                sha256_hex_short(&"ab".repeat(32))
            )
        );
    }
}
