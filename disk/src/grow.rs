//! Growing `IMRS-DATA` to the end of the disk: an appliance disk image is written onto a
//! bigger device (by `flash`, `dd` or `bmaptool`), so its backup GPT sits where the image ended
//! and the rest of the device is unused. [`grow_data`] moves the backup GPT to the device's last
//! sector and extends `IMRS-DATA` (it must be the last partition) to the last 1 MiB boundary
//! before it; the file system is then grown by the kernel (the init's `EXT4_IOC_RESIZE_FS` on
//! the mounted partition).
//!
//! Crash-safe order: the new backup header and entries are written at the device's end and
//! synced before the primary header is rewritten. A power cut before the primary write leaves
//! the old primary and old backup (in the gap after the old last partition, untouched) as they
//! were: the old layout, grown again next boot. After it, the primary describes the new layout
//! and the new backup matches it. Never shrinks, never moves a partition's start, never touches
//! a partition other than `IMRS-DATA`.

use std::io::{Read, Seek, SeekFrom, Write};

use gptman::{GPT, GPTPartitionEntry};

use crate::device::Device;
use crate::error::DiskError;
use crate::layout::{DATA_PARTNAME, MIB};

/// What [`grow_data`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Growth {
    /// `IMRS-DATA` already ends at the last 1 MiB boundary before the backup GPT at the end.
    AlreadyFull {
        /// Its size, bytes.
        bytes: u64,
    },
    /// It was extended.
    Grown {
        /// Its size before, bytes.
        from: u64,
        /// Its size now, bytes.
        to: u64,
    },
}

fn gpt_err(e: gptman::Error) -> DiskError {
    DiskError::Gpt {
        detail: e.to_string(),
    }
}

/// Extends `IMRS-DATA` to the end of `dev` (`dev_len` bytes) and moves the backup GPT there.
pub fn grow_data<D: Device>(dev: &mut D, dev_len: u64) -> Result<Growth, DiskError> {
    dev.seek(SeekFrom::Start(0))
        .map_err(DiskError::io("reading the GPT"))?;
    let mut gpt = GPT::find_from(dev).map_err(gpt_err)?;
    let ss = gpt.sector_size;
    let n = gpt.header.number_of_partition_entries;
    let used: Vec<(u32, GPTPartitionEntry)> = gpt
        .iter()
        .filter(|(_, p)| p.is_used())
        .map(|(i, p)| (i, p.clone()))
        .collect();
    let Some((data_id, data)) = used
        .iter()
        .find(|(_, p)| p.partition_name.as_str() == DATA_PARTNAME)
        .cloned()
    else {
        return Err(DiskError::NoPartition {
            name: DATA_PARTNAME,
            found: used
                .iter()
                .map(|(_, p)| imrs_config::escape(p.partition_name.as_str()))
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    if used.iter().any(|(_, p)| p.starting_lba > data.starting_lba) {
        return Err(DiskError::Gpt {
            detail: format!("{DATA_PARTNAME} is not the last partition: it cannot grow"),
        });
    }
    let old_bytes = (data.ending_lba + 1 - data.starting_lba) * ss;
    // The backup GPT goes to the last sector, its entries just before it.
    let entries_sectors =
        (u64::from(n) * u64::from(gpt.header.size_of_partition_entry)).div_ceil(ss);
    let dev_sectors = dev_len / ss;
    let last_usable = dev_sectors
        .checked_sub(entries_sectors + 2)
        .ok_or_else(|| DiskError::Gpt {
            detail: format!("a device of {dev_len} bytes has no room for a GPT"),
        })?;
    // The partition ends on the last 1 MiB boundary at or before the last usable sector.
    let per_mib = MIB / ss;
    let new_end = (last_usable + 1) / per_mib * per_mib - 1;
    if new_end < data.ending_lba {
        return Err(DiskError::Gpt {
            detail: format!(
                "the device ({dev_len} bytes) ends before {DATA_PARTNAME} does (sector {})",
                data.ending_lba
            ),
        });
    }
    if new_end == data.ending_lba && gpt.header.backup_lba + 1 == dev_sectors {
        return Ok(Growth::AlreadyFull { bytes: old_bytes });
    }
    let mut header = gpt.header.clone();
    header
        .update_from(
            &mut crate::device::Window::new(&mut *dev, 0, dev_sectors * ss),
            ss,
        )
        .map_err(gpt_err)?;
    gpt.header = header;
    gpt[data_id].ending_lba = new_end;
    let partitions: Vec<GPTPartitionEntry> = (1..=n).map(|i| gpt[i].clone()).collect();
    // Backup first (at the new end), synced; then the primary: the commit point.
    let mut backup = gpt.header.clone();
    backup.primary_lba = gpt.header.backup_lba;
    backup.backup_lba = gpt.header.primary_lba;
    backup.partition_entry_lba = gpt.header.last_usable_lba + 1;
    backup.write_into(dev, ss, &partitions).map_err(gpt_err)?;
    dev.sync()
        .map_err(DiskError::io("syncing the backup GPT"))?;
    gpt.header
        .write_into(dev, ss, &partitions)
        .map_err(gpt_err)?;
    GPT::write_protective_mbr_into(dev, ss).map_err(gpt_err)?;
    dev.sync()
        .map_err(DiskError::io("syncing the primary GPT"))?;
    let new_bytes = (gpt[data_id].ending_lba + 1 - data.starting_lba) * ss;
    Ok(if new_bytes == old_bytes {
        Growth::AlreadyFull { bytes: old_bytes }
    } else {
        Growth::Grown {
            from: old_bytes,
            to: new_bytes,
        }
    })
}

/// The size of a device or file: seeks to its end.
pub fn device_len<D: Read + Write + Seek>(dev: &mut D) -> Result<u64, DiskError> {
    dev.seek(SeekFrom::End(0))
        .map_err(DiskError::io("finding the device's size"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::CutAfter;
    use crate::layout::{Layout, find, partitions};
    use std::io::Cursor;

    fn small_disk(extra_mib: u64) -> (Vec<u8>, Layout) {
        let l = Layout::appliance(None, b"grow").unwrap();
        let mut v = vec![0u8; l.size as usize];
        l.write_gpt(&mut Cursor::new(&mut v)).unwrap();
        v.resize((l.size + extra_mib * MIB) as usize, 0);
        (v, l)
    }

    /// A 6 MiB disk as the appliance's is laid out (1 MiB aligned, IMRS-DATA last, 1 MiB
    /// after it), plus `extra_mib`: small enough to cut at every write.
    fn tiny_disk(extra_mib: u64) -> Vec<u8> {
        let size = 6 * MIB;
        let mut v = vec![0u8; size as usize];
        let mut c = Cursor::new(&mut v);
        let mut gpt = GPT::new_from(&mut c, 512, [7; 16]).unwrap();
        for (i, (name, start, end)) in [("IMRS-CONFIG", 1, 3), ("IMRS-DATA", 3, 5)]
            .into_iter()
            .enumerate()
        {
            gpt[i as u32 + 1] = GPTPartitionEntry {
                partition_type_guid: [1; 16],
                unique_partition_guid: [i as u8 + 2; 16],
                starting_lba: start * MIB / 512,
                ending_lba: end * MIB / 512 - 1,
                attribute_bits: 0,
                partition_name: name.into(),
            };
        }
        GPT::write_protective_mbr_into(&mut c, 512).unwrap();
        gpt.write_into(&mut c).unwrap();
        v.resize((size + extra_mib * MIB) as usize, 0);
        v
    }

    fn backup_is_valid_at_the_end(v: &[u8]) {
        // Read the backup header at the last sector as gptman would.
        let mut c = Cursor::new(v.to_vec());
        let last = (v.len() as u64 / 512 - 1) * 512;
        c.seek(SeekFrom::Start(last)).unwrap();
        let h = gptman::GPTHeader::read_from(&mut c).unwrap();
        assert_eq!(h.primary_lba, v.len() as u64 / 512 - 1);
        assert_eq!(h.backup_lba, 1);
        GPT::read_from(&mut c, 512).unwrap();
    }

    #[test]
    fn data_grows_to_the_end_once() {
        let (mut v, l) = small_disk(100);
        let len = v.len() as u64;
        let before = partitions(&mut Cursor::new(&v)).unwrap();
        let g = grow_data(&mut Cursor::new(&mut v), len).unwrap();
        let data_before = l.get(crate::layout::Kind::Data).unwrap().extent.len;
        assert_eq!(
            g,
            Growth::Grown {
                from: data_before,
                to: data_before + 100 * MIB
            }
        );
        let after = partitions(&mut Cursor::new(&v)).unwrap();
        // Only IMRS-DATA changed, and only its end.
        for ((n0, e0), (n1, e1)) in before.iter().zip(&after) {
            assert_eq!(n0, n1);
            assert_eq!(e0.offset, e1.offset);
            if n0 != DATA_PARTNAME {
                assert_eq!(e0.len, e1.len, "{n0}");
            }
        }
        let d = find(&mut Cursor::new(&v), DATA_PARTNAME).unwrap();
        assert_eq!(d.offset + d.len + MIB, len, "ends 1 MiB before the end");
        backup_is_valid_at_the_end(&v);
        // Again: nothing to do.
        let again = v.clone();
        assert_eq!(
            grow_data(&mut Cursor::new(&mut v), len).unwrap(),
            Growth::AlreadyFull { bytes: d.len }
        );
        assert_eq!(v, again);
    }

    #[test]
    fn a_disk_of_the_image_size_is_already_full() {
        let (mut v, l) = small_disk(0);
        let len = v.len() as u64;
        let copy = v.clone();
        let bytes = l.get(crate::layout::Kind::Data).unwrap().extent.len;
        assert_eq!(
            grow_data(&mut Cursor::new(&mut v), len).unwrap(),
            Growth::AlreadyFull { bytes }
        );
        assert_eq!(v, copy, "nothing written");
    }

    #[test]
    fn a_cut_at_any_write_leaves_the_old_or_the_new_layout() {
        let v = tiny_disk(4);
        let len = v.len() as u64;
        let old = 2 * MIB;
        let mut cut_at = 0;
        loop {
            let mut dev = CutAfter::in_memory(v.clone(), cut_at);
            let r = grow_data(&mut dev, len);
            let after = dev.inner.into_inner();
            let d = find(&mut Cursor::new(&after), DATA_PARTNAME)
                .unwrap_or_else(|e| panic!("cut after {cut_at} writes: {e}"));
            assert!(
                d.len == old || d.len == old + 4 * MIB,
                "cut after {cut_at}: {}",
                d.len
            );
            if r.is_ok() {
                assert_eq!(d.len, old + 4 * MIB);
                backup_is_valid_at_the_end(&after);
                break;
            }
            // Whatever the cut left grows on the next try.
            let mut again = after;
            grow_data(&mut Cursor::new(&mut again), len).unwrap();
            let d = find(&mut Cursor::new(&again), DATA_PARTNAME).unwrap();
            assert_eq!(d.len, old + 4 * MIB, "cut after {cut_at}, then grown");
            backup_is_valid_at_the_end(&again);
            cut_at += 1;
            assert!(cut_at < 5000);
        }
        assert!(cut_at > 100, "the cut test reached the writes ({cut_at})");
    }

    #[test]
    fn refusals_name_the_problem() {
        // No room for a GPT.
        let mut v = tiny_disk(0);
        let e = grow_data(&mut Cursor::new(&mut v), 1024).unwrap_err();
        assert!(e.to_string().contains("no room"), "{e}");
        // A device smaller than the table says.
        let len = v.len() as u64 - 2 * MIB;
        let e = grow_data(&mut Cursor::new(&mut v), len).unwrap_err();
        assert!(e.to_string().contains("ends before IMRS-DATA does"), "{e}");
    }
}
