//! Atomic renames in a FAT directory, which neither FAT nor `fatfs` offer: `fatfs` deletes the
//! old directory entries and then writes new ones, so a power cut in between loses the file. A
//! boot entry lost that way is a slot that no longer boots.
//!
//! A FAT directory entry set is a run of long-name (LFN) entries followed by the short (8.3)
//! entry that holds the file's first cluster, size and times; the LFN entries carry a checksum
//! of the short name. [`rename`] keeps the short entry exactly as it is (so the checksum and the
//! file stay the same) and rewrites only the long name, in place:
//!
//! - the new name must fit one LFN entry (13 characters, as every boot entry name does:
//!   `imrs-a.conf`, `imrs-b+3.conf`); it goes into the LFN slot right before the short entry,
//!   marked as the last (first) of its sequence, and the old name's earlier LFN entries are
//!   marked deleted;
//! - when all of this lies in one sector, it is one sector write: atomic on any disk (a sector
//!   is the unit a disk writes whole);
//! - when the run crosses a sector boundary (possible for entries renamed by the firmware), the
//!   sector holding the new LFN entry is written first and made durable, then the other. In
//!   between, the directory holds the old name's leftover LFN entries followed by a complete,
//!   valid new set; FAT readers (Linux, edk2 in the firmware, `fatfs`) restart a long name at an
//!   entry marked "last", so the file is visible under its new name in every state.
//!
//! The reader here walks directories itself (boot sector, FAT chains, LFN assembly) because the
//! rename needs the byte position of each entry, which `fatfs` does not expose.

use std::io::{Read, Seek, SeekFrom};

use crate::device::Device;
use crate::error::DiskError;

/// Directory entry size.
const ENTRY: u64 = 32;
/// UTF-16 characters in one LFN entry.
const LFN_CHARS: usize = 13;
/// Byte offsets of the 13 characters inside an LFN entry.
const LFN_OFFSETS: [usize; LFN_CHARS] = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FatKind {
    Fat12,
    Fat16,
    Fat32,
}

/// What the boot sector says about the layout.
#[derive(Debug, Clone)]
struct Bpb {
    bytes_per_sector: u64,
    cluster_bytes: u64,
    fat_start: u64,
    root_start: u64,
    root_bytes: u64,
    data_start: u64,
    clusters: u32,
    root_cluster: u32,
    kind: FatKind,
}

/// Where a directory's entries are.
#[derive(Debug, Clone, Copy)]
enum DirLoc {
    /// FAT12/16 root directory: a fixed region.
    FixedRoot,
    /// A cluster chain from this cluster.
    Chain(u32),
}

/// One file or folder as the directory lists it.
#[derive(Debug, Clone)]
pub(crate) struct RawEntry {
    /// Long name, or the 8.3 name when there is no valid long name.
    pub name: String,
    /// Byte positions (in the volume) of its LFN entries, first to last on disk.
    lfn: Vec<u64>,
    /// Byte position of its short entry.
    sfn_pos: u64,
    /// The short name.
    sfn: [u8; 11],
    attr: u8,
    first_cluster: u32,
}

fn le16(b: &[u8], at: usize) -> u64 {
    u64::from(u16::from_le_bytes([b[at], b[at + 1]]))
}

fn le32(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]))
}

fn read_at<D: Read + Seek>(
    vol: &mut D,
    at: u64,
    buf: &mut [u8],
    what: &str,
) -> Result<(), DiskError> {
    vol.seek(SeekFrom::Start(at))
        .and_then(|_| vol.read_exact(buf))
        .map_err(DiskError::io(format!("{what} at byte {at}")))
}

fn read_bpb<D: Read + Seek>(vol: &mut D, volume: &'static str) -> Result<Bpb, DiskError> {
    let mut b = [0u8; 512];
    read_at(vol, 0, &mut b, &format!("reading the {volume} boot sector"))?;
    let bad = |detail: String| DiskError::Fat { volume, detail };
    let bps = le16(&b, 11);
    let spc = u64::from(b[13]);
    let reserved = le16(&b, 14);
    let fats = u64::from(b[16]);
    let root_entries = le16(&b, 17);
    let total = match le16(&b, 19) {
        0 => le32(&b, 32),
        n => n,
    };
    let fat_sectors = match le16(&b, 22) {
        0 => le32(&b, 36),
        n => n,
    };
    if ![512, 1024, 2048, 4096].contains(&bps) || !spc.is_power_of_two() || fats == 0 {
        return Err(bad(format!(
            "not a FAT boot sector (bytes per sector {bps}, sectors per cluster {spc}, {fats} FATs)"
        )));
    }
    let root_sectors = (root_entries * ENTRY).div_ceil(bps);
    let data_sector = reserved + fats * fat_sectors + root_sectors;
    if total <= data_sector || fat_sectors == 0 {
        return Err(bad(format!(
            "boot sector gives {total} sectors but the data area starts at sector {data_sector}"
        )));
    }
    let clusters = u32::try_from((total - data_sector) / spc).unwrap_or(u32::MAX);
    let kind = if clusters < 4085 {
        FatKind::Fat12
    } else if clusters < 65525 {
        FatKind::Fat16
    } else {
        FatKind::Fat32
    };
    Ok(Bpb {
        bytes_per_sector: bps,
        cluster_bytes: spc * bps,
        fat_start: reserved * bps,
        root_start: (reserved + fats * fat_sectors) * bps,
        root_bytes: root_entries * ENTRY,
        data_start: data_sector * bps,
        clusters,
        root_cluster: u32::try_from(le32(&b, 44)).unwrap_or(0),
        kind,
    })
}

impl Bpb {
    fn cluster_offset(&self, c: u32) -> u64 {
        self.data_start + u64::from(c - 2) * self.cluster_bytes
    }

    /// The cluster after `c`, `None` at the end of the chain.
    fn next<D: Read + Seek>(
        &self,
        vol: &mut D,
        volume: &'static str,
        c: u32,
    ) -> Result<Option<u32>, DiskError> {
        let what = format!("reading the {volume} FAT");
        let (v, end) = match self.kind {
            FatKind::Fat12 => {
                let mut b = [0u8; 2];
                read_at(
                    vol,
                    self.fat_start + u64::from(c) + u64::from(c / 2),
                    &mut b,
                    &what,
                )?;
                let x = u32::from(u16::from_le_bytes(b));
                (if c % 2 == 1 { x >> 4 } else { x & 0xfff }, 0xff8)
            }
            FatKind::Fat16 => {
                let mut b = [0u8; 2];
                read_at(vol, self.fat_start + 2 * u64::from(c), &mut b, &what)?;
                (u32::from(u16::from_le_bytes(b)), 0xfff8)
            }
            FatKind::Fat32 => {
                let mut b = [0u8; 4];
                read_at(vol, self.fat_start + 4 * u64::from(c), &mut b, &what)?;
                (u32::from_le_bytes(b) & 0x0fff_ffff, 0x0fff_fff8)
            }
        };
        if v >= end {
            return Ok(None);
        }
        if v < 2 || v >= self.clusters + 2 {
            return Err(DiskError::Fat {
                volume,
                detail: format!("cluster {c} is followed by {v:#x}, not a data cluster"),
            });
        }
        Ok(Some(v))
    }

    /// The byte ranges a directory's entries occupy, in order.
    fn regions<D: Read + Seek>(
        &self,
        vol: &mut D,
        volume: &'static str,
        loc: DirLoc,
    ) -> Result<Vec<(u64, u64)>, DiskError> {
        let first = match loc {
            DirLoc::FixedRoot => return Ok(vec![(self.root_start, self.root_bytes)]),
            DirLoc::Chain(c) => c,
        };
        let mut out = Vec::new();
        let mut c = Some(first);
        while let Some(cl) = c {
            if cl < 2 || cl >= self.clusters + 2 || out.len() > self.clusters as usize {
                return Err(DiskError::Fat {
                    volume,
                    detail: format!("directory cluster chain from {first} is broken at {cl}"),
                });
            }
            out.push((self.cluster_offset(cl), self.cluster_bytes));
            c = self.next(vol, volume, cl)?;
        }
        Ok(out)
    }

    fn root(&self) -> DirLoc {
        if self.kind == FatKind::Fat32 {
            DirLoc::Chain(self.root_cluster)
        } else {
            DirLoc::FixedRoot
        }
    }
}

/// The LFN checksum of a short name.
fn lfn_checksum(sfn: &[u8; 11]) -> u8 {
    sfn.iter().fold(0u8, |sum, &c| {
        ((sum & 1) << 7).wrapping_add(sum >> 1).wrapping_add(c)
    })
}

/// An 8.3 name as text (`NAME.EXT`, lower case where the entry's case flags say so).
fn short_name_text(sfn: &[u8; 11], case_flags: u8) -> String {
    let mut base: Vec<u8> = sfn[..8].to_vec();
    if base[0] == 0x05 {
        base[0] = 0xe5;
    }
    let conv = |part: &[u8], lower: bool| -> String {
        let s: String = part.iter().map(|&c| char::from(c)).collect();
        let s = s.trim_end_matches(' ').to_string();
        if lower { s.to_ascii_lowercase() } else { s }
    };
    let b = conv(&base, case_flags & 0x08 != 0);
    let e = conv(&sfn[8..], case_flags & 0x10 != 0);
    if e.is_empty() { b } else { format!("{b}.{e}") }
}

/// A long name being assembled.
struct Lfn {
    next: u8,
    checksum: u8,
    parts: Vec<[u16; LFN_CHARS]>,
    positions: Vec<u64>,
}

fn read_dir<D: Read + Seek>(
    vol: &mut D,
    volume: &'static str,
    bpb: &Bpb,
    loc: DirLoc,
) -> Result<Vec<RawEntry>, DiskError> {
    let mut out = Vec::new();
    let mut lfn: Option<Lfn> = None;
    for (start, len) in bpb.regions(vol, volume, loc)? {
        let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
        read_at(
            vol,
            start,
            &mut buf,
            &format!("reading a {volume} directory"),
        )?;
        for (i, e) in buf.chunks_exact(ENTRY as usize).enumerate() {
            let pos = start + i as u64 * ENTRY;
            match e[0] {
                0x00 => return Ok(out),
                0xe5 => {
                    lfn = None;
                    continue;
                }
                _ => {}
            }
            let attr = e[11];
            if attr & 0x3f == 0x0f {
                let ord = e[0];
                let idx = ord & 0x1f;
                let mut chars = [0u16; LFN_CHARS];
                for (c, &o) in chars.iter_mut().zip(LFN_OFFSETS.iter()) {
                    *c = u16::from_le_bytes([e[o], e[o + 1]]);
                }
                if idx == 0 {
                    lfn = None;
                } else if ord & 0x40 != 0 {
                    lfn = Some(Lfn {
                        next: idx - 1,
                        checksum: e[13],
                        parts: vec![chars],
                        positions: vec![pos],
                    });
                } else {
                    match lfn.as_mut() {
                        Some(l) if l.next == idx && l.checksum == e[13] => {
                            l.next -= 1;
                            l.parts.push(chars);
                            l.positions.push(pos);
                        }
                        _ => lfn = None,
                    }
                }
                continue;
            }
            let taken = lfn.take();
            if attr & 0x08 != 0 {
                continue; // volume label
            }
            let mut sfn = [0u8; 11];
            sfn.copy_from_slice(&e[..11]);
            let (name, lfn_pos) = match taken {
                Some(l) if l.next == 0 && l.checksum == lfn_checksum(&sfn) => {
                    let units: Vec<u16> = l
                        .parts
                        .iter()
                        .rev()
                        .flat_map(|p| p.iter().copied())
                        .take_while(|&u| u != 0)
                        .collect();
                    (String::from_utf16_lossy(&units), l.positions)
                }
                _ => (short_name_text(&sfn, e[12]), Vec::new()),
            };
            let hi = if bpb.kind == FatKind::Fat32 {
                le16(e, 20)
            } else {
                0
            };
            out.push(RawEntry {
                name,
                lfn: lfn_pos,
                sfn_pos: pos,
                sfn,
                attr,
                first_cluster: u32::try_from((hi << 16) | le16(e, 26)).unwrap_or(0),
            });
        }
    }
    Ok(out)
}

fn find_dir<D: Read + Seek>(
    vol: &mut D,
    volume: &'static str,
    bpb: &Bpb,
    dir: &str,
) -> Result<DirLoc, DiskError> {
    let mut loc = bpb.root();
    for part in dir.split('/').filter(|p| !p.is_empty()) {
        let e = read_dir(vol, volume, bpb, loc)?
            .into_iter()
            .find(|e| e.attr & 0x10 != 0 && e.name.eq_ignore_ascii_case(part))
            .ok_or_else(|| DiskError::NotFound {
                path: dir.to_string(),
                volume,
            })?;
        loc = if e.first_cluster == 0 {
            bpb.root()
        } else {
            DirLoc::Chain(e.first_cluster)
        };
    }
    Ok(loc)
}

/// The names in the folder `dir` (files and folders), read without `fatfs`.
pub fn list<D: Read + Seek>(
    vol: &mut D,
    volume: &'static str,
    dir: &str,
) -> Result<Vec<String>, DiskError> {
    let bpb = read_bpb(vol, volume)?;
    let loc = find_dir(vol, volume, &bpb, dir)?;
    Ok(read_dir(vol, volume, &bpb, loc)?
        .into_iter()
        .filter(|e| e.name != "." && e.name != "..")
        .map(|e| e.name)
        .collect())
}

/// Renames the file `from` to `to` in the folder `dir`, atomically (see the module docs). `to`
/// must fit one long-name entry (1 to 13 characters, no `/`), must not exist, and `from` must
/// have a long name. The device is synced after each sector written.
pub fn rename<D: Device>(
    vol: &mut D,
    volume: &'static str,
    dir: &str,
    from: &str,
    to: &str,
) -> Result<(), DiskError> {
    let refuse = |detail: String| DiskError::Rename {
        dir: dir.to_string(),
        from: imrs_config::escape(from),
        to: imrs_config::escape(to),
        detail,
    };
    let units: Vec<u16> = to.encode_utf16().collect();
    if units.is_empty() || units.len() > LFN_CHARS || to.contains(['/', '\\', '\0']) {
        return Err(refuse(format!(
            "the new name must be 1 to {LFN_CHARS} characters without / (one long-name entry)"
        )));
    }
    let bpb = read_bpb(vol, volume)?;
    let loc = find_dir(vol, volume, &bpb, dir)?;
    let entries = read_dir(vol, volume, &bpb, loc)?;
    if entries.iter().any(|e| e.name.eq_ignore_ascii_case(to)) {
        return Err(refuse("the new name exists".into()));
    }
    let e = entries
        .iter()
        .find(|e| e.name.eq_ignore_ascii_case(from))
        .ok_or_else(|| refuse("no such file".into()))?;
    let Some(&slot) = e.lfn.last() else {
        return Err(refuse("the file has only a short name".into()));
    };
    // The new LFN entry: sequence 1, marked last.
    let mut new = [0u8; ENTRY as usize];
    new[0] = 0x41;
    new[11] = 0x0f;
    new[13] = lfn_checksum(&e.sfn);
    for (i, &o) in LFN_OFFSETS.iter().enumerate() {
        let u = match i.cmp(&units.len()) {
            std::cmp::Ordering::Less => units[i],
            std::cmp::Ordering::Equal => 0x0000,
            std::cmp::Ordering::Greater => 0xffff,
        };
        new[o..o + 2].copy_from_slice(&u.to_le_bytes());
    }
    // Changes by sector; the sector with the new entry first.
    let bps = bpb.bytes_per_sector;
    let mut sectors: Vec<u64> = vec![slot / bps * bps];
    for &p in &e.lfn[..e.lfn.len() - 1] {
        let s = p / bps * bps;
        if !sectors.contains(&s) {
            sectors.push(s);
        }
    }
    for s in sectors {
        let mut buf = vec![0u8; usize::try_from(bps).unwrap_or(512)];
        read_at(vol, s, &mut buf, &format!("reading a {volume} directory"))?;
        if (s..s + bps).contains(&slot) {
            let at = usize::try_from(slot - s).unwrap_or(0);
            buf[at..at + ENTRY as usize].copy_from_slice(&new);
        }
        for &p in &e.lfn[..e.lfn.len() - 1] {
            if (s..s + bps).contains(&p) {
                buf[usize::try_from(p - s).unwrap_or(0)] = 0xe5;
            }
        }
        let what = format!("{volume}: renaming {dir}/{from} to {to}");
        vol.seek(SeekFrom::Start(s))
            .and_then(|_| vol.write_all(&buf))
            .and_then(|_| vol.sync())
            .map_err(DiskError::io(what))?;
    }
    // The short entry is untouched: same position, checksum, cluster, size and times.
    debug_assert!(e.sfn_pos > slot);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fat;
    use std::io::Cursor;

    fn volume(fat32: bool) -> Cursor<Vec<u8>> {
        let size = if fat32 { 140 << 20 } else { 4 << 20 };
        let mut v = Cursor::new(vec![0u8; size]);
        fat::format(&mut v, "T", "T", 1, fat32).unwrap();
        v
    }

    fn names_by_fatfs(v: &mut Cursor<Vec<u8>>, dir: &str) -> Vec<String> {
        let fs = fat::open(v, "T", 0).unwrap();
        let n = fat::list_files(&fs, "T", dir).unwrap();
        drop(fs);
        n
    }

    #[test]
    fn renames_keep_the_file_and_read_the_same_everywhere() {
        for fat32 in [false, true] {
            let mut v = volume(fat32);
            {
                let fs = fat::open(&mut v, "T", 0).unwrap();
                fat::mkdirs(&fs, "T", "loader/entries").unwrap();
                fat::write_file(&fs, "T", "loader/entries/imrs-b+3.conf.tmp", b"entry b").unwrap();
                fat::write_file(&fs, "T", "loader/entries/imrs-a+2-1.conf", b"entry a").unwrap();
                fat::close(fs, "T").unwrap();
            }
            rename(
                &mut v,
                "T",
                "loader/entries",
                "imrs-b+3.conf.tmp",
                "imrs-b+3.conf",
            )
            .unwrap();
            rename(
                &mut v,
                "T",
                "loader/entries",
                "imrs-a+2-1.conf",
                "imrs-a.conf",
            )
            .unwrap();
            let mut raw = list(&mut v, "T", "loader/entries").unwrap();
            raw.sort();
            assert_eq!(raw, ["imrs-a.conf", "imrs-b+3.conf"], "fat32={fat32}");
            assert_eq!(names_by_fatfs(&mut v, "loader/entries"), raw);
            let fs = fat::open(&mut v, "T", 0).unwrap();
            let a = fat::read_file(&fs, "T", "loader/entries/imrs-a.conf", 100).unwrap();
            assert_eq!(a.unwrap(), b"entry a");
            drop(fs);
            // Refusals: existing target, missing source, a name too long for one entry.
            let e = rename(
                &mut v,
                "T",
                "loader/entries",
                "imrs-a.conf",
                "imrs-b+3.conf",
            )
            .unwrap_err()
            .to_string();
            assert!(e.ends_with("the new name exists"), "{e}");
            let e = rename(&mut v, "T", "loader/entries", "nope.conf", "x.conf").unwrap_err();
            assert!(e.to_string().ends_with("no such file"), "{e}");
            let e = rename(
                &mut v,
                "T",
                "loader/entries",
                "imrs-a.conf",
                "imrs-a+10-1.conf",
            );
            assert!(e.unwrap_err().to_string().contains("1 to 13 characters"));
            let e = rename(&mut v, "T", "none/entries", "a", "b").unwrap_err();
            assert_eq!(e.to_string(), "none/entries: not found on the T partition");
        }
    }

    /// A long name across a sector boundary: after the first sector write alone (a power cut
    /// before the second), the file is already visible under its new name, to our reader and
    /// to fatfs.
    #[test]
    fn a_rename_across_sectors_is_never_invisible() {
        // Pad the folder until the entry's two LFN entries fall into two sectors.
        let mut found = None;
        for pad in 0..32 {
            let mut v = volume(false);
            let fs = fat::open(&mut v, "T", 0).unwrap();
            fat::mkdirs(&fs, "T", "d").unwrap();
            // One set of three entries makes the two-entry sets start at odd positions.
            fat::write_file(&fs, "T", "d/a-longer-file-name.conf", b"x").unwrap();
            for i in 0..pad {
                fat::write_file(&fs, "T", &format!("d/f{i:02}.conf"), b"x").unwrap();
            }
            fat::write_file(&fs, "T", "d/imrs-b+2-1.conf", b"entry").unwrap();
            fat::close(fs, "T").unwrap();
            let bpb = read_bpb(&mut v, "T").unwrap();
            let loc = find_dir(&mut v, "T", &bpb, "d").unwrap();
            let e = read_dir(&mut v, "T", &bpb, loc)
                .unwrap()
                .into_iter()
                .find(|e| e.name == "imrs-b+2-1.conf")
                .unwrap();
            assert_eq!(e.lfn.len(), 2);
            if e.lfn[0] / 512 != e.lfn[1] / 512 {
                found = Some(v);
                break;
            }
        }
        let mut v = found.expect("some padding puts the LFN run across a sector boundary");
        // Interrupt after the first sector write.
        use crate::device::CutAfter;
        let mut cut = CutAfter::in_memory(v.get_ref().clone(), 1);
        assert!(rename(&mut cut, "T", "d", "imrs-b+2-1.conf", "imrs-b.conf").is_err());
        let mut after = cut.inner;
        let raw = list(&mut after, "T", "d").unwrap();
        assert!(raw.contains(&"imrs-b.conf".to_string()), "{raw:?}");
        assert!(!raw.contains(&"imrs-b+2-1.conf".to_string()), "{raw:?}");
        assert!(names_by_fatfs(&mut after, "d").contains(&"imrs-b.conf".to_string()));
        // And the full rename from the original state.
        rename(&mut v, "T", "d", "imrs-b+2-1.conf", "imrs-b.conf").unwrap();
        assert!(names_by_fatfs(&mut v, "d").contains(&"imrs-b.conf".to_string()));
    }
}
