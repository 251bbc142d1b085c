//! The partition table of an appliance disk: GPT, 1 MiB aligned, partitions found by their GPT
//! names (the init looks for `PARTNAME=` in sysfs, systemd-boot for the ESP by type).
//!
//! | partition | type | size | contents |
//! |---|---|---|---|
//! | `IMRS-ESP` | EFI system | 256 MiB, FAT32 | systemd-boot, `loader/`, slots `imrs/a`, `imrs/b` |
//! | `IMRS-CONFIG` | Linux filesystem | 16 MiB, FAT | `site.toml`, `site.toml.sig` |
//! | `IMRS-DATA` | Linux filesystem | the rest (default 96 MiB), ext4 | the init's state |
//!
//! The first partition starts at 1 MiB; the last MiB holds the backup GPT. The disk GUID and
//! every partition GUID are derived from a seed (the image's manifest sha256).

use std::io::{Read, Seek, SeekFrom, Write};

use gptman::{GPT, GPTPartitionEntry};

use crate::error::DiskError;
use crate::guid::{ESP_TYPE, Guid, LINUX_FS_TYPE};

/// One MiB.
pub const MIB: u64 = 1 << 20;
/// Logical sector size the table is written for.
pub const SECTOR: u64 = 512;
/// GPT name of the EFI system partition.
pub const ESP_PARTNAME: &str = "IMRS-ESP";
/// GPT name of the config partition (the init's `site::CONFIG_PARTNAME`).
pub const CONFIG_PARTNAME: &str = "IMRS-CONFIG";
/// GPT name of the data partition (the init's `state::DATA_PARTNAME`).
pub const DATA_PARTNAME: &str = "IMRS-DATA";
/// EFI system partition size, MiB: two slots of kernel + initramfs (about 16 MiB each today)
/// with room to grow.
pub const ESP_MIB: u64 = 256;
/// Config partition size, MiB.
pub const CONFIG_MIB: u64 = 16;
/// Smallest data partition, MiB.
pub const DATA_MIN_MIB: u64 = 64;
/// Data partition size when no disk size is given, MiB (the lab's).
pub const DATA_DEFAULT_MIB: u64 = 96;

/// The partitions of an appliance disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `IMRS-ESP`.
    Esp,
    /// `IMRS-CONFIG`.
    Config,
    /// `IMRS-DATA`.
    Data,
}

impl Kind {
    /// The GPT name.
    pub fn partname(self) -> &'static str {
        match self {
            Kind::Esp => ESP_PARTNAME,
            Kind::Config => CONFIG_PARTNAME,
            Kind::Data => DATA_PARTNAME,
        }
    }

    /// The GPT type.
    pub fn type_guid(self) -> Guid {
        match self {
            Kind::Esp => ESP_TYPE,
            Kind::Config | Kind::Data => LINUX_FS_TYPE,
        }
    }
}

/// Where a partition lies on the disk, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Byte offset.
    pub offset: u64,
    /// Byte length.
    pub len: u64,
}

/// One partition of a [`Layout`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Which one.
    pub kind: Kind,
    /// Where.
    pub extent: Extent,
    /// Its unique partition GUID.
    pub guid: Guid,
}

/// A disk's size, GUID and partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Whole disk size in bytes.
    pub size: u64,
    /// Disk GUID.
    pub disk_guid: Guid,
    /// Partitions in disk order.
    pub partitions: Vec<Partition>,
}

impl Layout {
    /// The smallest appliance disk: ESP, config and the smallest data partition, plus the first
    /// and last MiB.
    pub const fn min_appliance_size() -> u64 {
        (1 + ESP_MIB + CONFIG_MIB + DATA_MIN_MIB + 1) * MIB
    }

    /// The appliance disk without a size: the data partition gets [`DATA_DEFAULT_MIB`].
    pub const fn default_appliance_size() -> u64 {
        (1 + ESP_MIB + CONFIG_MIB + DATA_DEFAULT_MIB + 1) * MIB
    }

    /// An appliance disk (ESP, config, data) of `size` bytes (default
    /// [`Layout::default_appliance_size`]), identifiers derived from `seed`.
    pub fn appliance(size: Option<u64>, seed: &[u8]) -> Result<Layout, DiskError> {
        let size = size.unwrap_or(Self::default_appliance_size());
        let min = Self::min_appliance_size();
        if size < min {
            return Err(DiskError::TooSmall { size, min });
        }
        if !size.is_multiple_of(MIB) {
            return Err(DiskError::Unaligned { size });
        }
        let data_mib = size / MIB - 1 - ESP_MIB - CONFIG_MIB - 1;
        Ok(Self::build(
            size,
            seed,
            &[
                (Kind::Esp, ESP_MIB),
                (Kind::Config, CONFIG_MIB),
                (Kind::Data, data_mib),
            ],
        ))
    }

    /// The lab's disk for a kernel booted directly (no ESP): config and a data partition of
    /// [`DATA_DEFAULT_MIB`].
    pub fn config_and_data(seed: &[u8]) -> Layout {
        let size = (1 + CONFIG_MIB + DATA_DEFAULT_MIB + 1) * MIB;
        Self::build(
            size,
            seed,
            &[(Kind::Config, CONFIG_MIB), (Kind::Data, DATA_DEFAULT_MIB)],
        )
    }

    fn build(size: u64, seed: &[u8], parts: &[(Kind, u64)]) -> Layout {
        let mut offset = MIB;
        let partitions = parts
            .iter()
            .map(|&(kind, mib)| {
                let p = Partition {
                    kind,
                    extent: Extent {
                        offset,
                        len: mib * MIB,
                    },
                    guid: Guid::derive(seed, kind.partname()),
                };
                offset += mib * MIB;
                p
            })
            .collect();
        Layout {
            size,
            disk_guid: Guid::derive(seed, "disk"),
            partitions,
        }
    }

    /// The partition of this kind, if the layout has one.
    pub fn get(&self, kind: Kind) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.kind == kind)
    }

    /// Writes the protective MBR and both GPTs onto `dev` (at least [`Layout::size`] bytes).
    pub fn write_gpt<D: Read + Write + Seek>(&self, dev: &mut D) -> Result<(), DiskError> {
        let gpt_err = |e: gptman::Error| DiskError::Gpt {
            detail: e.to_string(),
        };
        let mut sized = crate::device::Window::new(&mut *dev, 0, self.size);
        let mut gpt =
            GPT::new_from(&mut sized, SECTOR, self.disk_guid.to_gpt_bytes()).map_err(gpt_err)?;
        for (i, p) in self.partitions.iter().enumerate() {
            let n = u32::try_from(i + 1).unwrap_or(u32::MAX);
            gpt[n] = GPTPartitionEntry {
                partition_type_guid: p.kind.type_guid().to_gpt_bytes(),
                unique_partition_guid: p.guid.to_gpt_bytes(),
                starting_lba: p.extent.offset / SECTOR,
                ending_lba: (p.extent.offset + p.extent.len) / SECTOR - 1,
                attribute_bits: 0,
                partition_name: p.kind.partname().into(),
            };
        }
        GPT::write_protective_mbr_into(&mut sized, SECTOR).map_err(gpt_err)?;
        gpt.write_into(&mut sized).map_err(gpt_err)?;
        sized.flush().map_err(DiskError::io("writing the GPT"))?;
        Ok(())
    }
}

/// The named partitions of a disk, in table order: (GPT name, extent).
pub fn partitions<D: Read + Seek>(dev: &mut D) -> Result<Vec<(String, Extent)>, DiskError> {
    dev.seek(SeekFrom::Start(0))
        .map_err(DiskError::io("reading the GPT"))?;
    let gpt = GPT::find_from(dev).map_err(|e| DiskError::Gpt {
        detail: e.to_string(),
    })?;
    let ss = gpt.sector_size;
    Ok(gpt
        .iter()
        .filter(|(_, p)| p.is_used())
        .map(|(_, p)| {
            (
                p.partition_name.as_str().to_string(),
                Extent {
                    offset: p.starting_lba * ss,
                    len: (p.ending_lba + 1 - p.starting_lba) * ss,
                },
            )
        })
        .collect())
}

/// The extent of the partition named `name` (exactly one must carry it).
pub fn find<D: Read + Seek>(dev: &mut D, name: &'static str) -> Result<Extent, DiskError> {
    let parts = partitions(dev)?;
    let mut hits = parts.iter().filter(|(n, _)| n == name);
    match (hits.next(), hits.next()) {
        (Some((_, e)), None) => Ok(*e),
        (Some(_), Some(_)) => Err(DiskError::Gpt {
            detail: format!("two partitions are named {name}"),
        }),
        (None, _) => Err(DiskError::NoPartition {
            name,
            found: parts
                .iter()
                .map(|(n, _)| imrs_config::escape(n))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn the_appliance_layout_is_aligned_and_sized() {
        let l = Layout::appliance(None, b"seed").unwrap();
        assert_eq!(l.size, 370 * MIB);
        let names: Vec<_> = l.partitions.iter().map(|p| p.kind.partname()).collect();
        assert_eq!(names, [ESP_PARTNAME, CONFIG_PARTNAME, DATA_PARTNAME]);
        let data = l.get(Kind::Data).unwrap().extent;
        assert_eq!(data.len, DATA_DEFAULT_MIB * MIB);
        assert_eq!(data.offset + data.len + MIB, l.size);
        for p in &l.partitions {
            assert_eq!(p.extent.offset % MIB, 0);
        }
        let big = Layout::appliance(Some(8 << 30), b"seed").unwrap();
        assert_eq!(
            big.get(Kind::Data).unwrap().extent.len,
            (8 << 30) - (2 + ESP_MIB + CONFIG_MIB) * MIB
        );
        let e = Layout::appliance(Some(300 * MIB), b"s").unwrap_err();
        assert_eq!(
            e.to_string(),
            "disk size 314572800 bytes is too small: the partitions need at least 354418688 \
             bytes (338 MiB)"
        );
        let e = Layout::appliance(Some(400 * MIB + 1), b"s").unwrap_err();
        assert!(e.to_string().contains("not a multiple of 1 MiB"), "{e}");
    }

    #[test]
    fn the_gpt_round_trips_and_names_find_partitions() {
        let l = Layout::config_and_data(b"lab");
        let mut disk = Cursor::new(vec![0u8; l.size as usize]);
        l.write_gpt(&mut disk).unwrap();
        let parts = partitions(&mut disk).unwrap();
        assert_eq!(
            parts,
            vec![
                (
                    CONFIG_PARTNAME.to_string(),
                    l.get(Kind::Config).unwrap().extent
                ),
                (DATA_PARTNAME.to_string(), l.get(Kind::Data).unwrap().extent),
            ]
        );
        assert_eq!(
            find(&mut disk, DATA_PARTNAME).unwrap(),
            l.get(Kind::Data).unwrap().extent
        );
        let e = find(&mut disk, ESP_PARTNAME).unwrap_err().to_string();
        assert_eq!(
            e,
            "no partition named IMRS-ESP in the GPT (partitions: IMRS-CONFIG, IMRS-DATA)"
        );
        // The same seed gives the same bytes; the backup header is at the last sector.
        let mut again = Cursor::new(vec![0u8; l.size as usize]);
        l.write_gpt(&mut again).unwrap();
        assert!(disk.get_ref() == again.get_ref());
        let end = l.size as usize - 512;
        assert_eq!(&disk.get_ref()[end..end + 8], b"EFI PART");
        assert_eq!(disk.get_ref()[510..512], [0x55, 0xaa]);
        let blank = partitions(&mut Cursor::new(vec![0u8; 1 << 20])).unwrap_err();
        assert!(blank.to_string().starts_with("no readable GPT"), "{blank}");
    }
}
