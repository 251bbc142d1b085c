//! FAT file systems through the `fatfs` crate, on any [`Device`] (usually a partition
//! [`crate::device::Window`]): formatting with fixed identifiers, opening with a fixed clock,
//! and the few file operations the ESP and the config partition need.
//!
//! Time: FAT stores local time without a zone; every timestamp written here is UTC, taken from
//! the caller's clock (the image's SOURCE_DATE_EPOCH in the builder), never from the host, so
//! the same inputs give the same bytes whatever the host's `TZ`.

use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::Mutex;

use fatfs::{FatType, FileSystem, FormatVolumeOptions, FsOptions};

use crate::device::Device;
use crate::error::DiskError;

/// Cluster size of a FAT32 ESP: 2 KiB keeps a 256 MiB volume above FAT32's minimum of 65525
/// clusters (4 KiB would make it a FAT16 by cluster count, whatever the boot sector says).
pub const ESP_CLUSTER: u32 = 2048;

/// A FAT timestamp source that always answers the same UTC time.
#[derive(Debug)]
struct FixedClock {
    epoch: i64,
    at: fatfs::DateTime,
}

impl fatfs::TimeProvider for FixedClock {
    fn get_current_date(&self) -> fatfs::Date {
        self.at.date
    }

    fn get_current_date_time(&self) -> fatfs::DateTime {
        self.at
    }
}

/// The clock for `epoch`. fatfs wants a `'static` provider: one is kept per distinct epoch
/// (a program uses one or two), so the memory used stays bounded.
fn clock(epoch: i64) -> &'static FixedClock {
    static CLOCKS: Mutex<Vec<&'static FixedClock>> = Mutex::new(Vec::new());
    let mut clocks = CLOCKS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = clocks.iter().find(|c| c.epoch == epoch) {
        return c;
    }
    let c: &'static FixedClock = Box::leak(Box::new(FixedClock {
        epoch,
        at: dos_time(epoch),
    }));
    clocks.push(c);
    c
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's
/// `civil_from_days`).
fn civil(days: i64) -> (i64, u16, u16) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u16;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u16;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A Unix time as a FAT date and time in UTC, clamped to FAT's range (1980..2107).
fn dos_time(epoch: i64) -> fatfs::DateTime {
    // 1980-01-01T00:00:00Z and 2107-12-31T23:59:58Z.
    let t = epoch.clamp(315_532_800, 4_354_819_198);
    let (y, month, day) = civil(t.div_euclid(86_400));
    let secs = t.rem_euclid(86_400);
    fatfs::DateTime {
        date: fatfs::Date {
            year: y as u16,
            month,
            day,
        },
        time: fatfs::Time {
            hour: (secs / 3600) as u16,
            min: (secs / 60 % 60) as u16,
            sec: (secs % 60) as u16,
            millis: 0,
        },
    }
}

/// A FAT volume label: at most 11 characters, upper case, space padded.
fn label11(label: &str) -> [u8; 11] {
    let mut l = [b' '; 11];
    for (d, s) in l.iter_mut().zip(label.bytes()) {
        *d = s.to_ascii_uppercase();
    }
    l
}

/// Formats `vol` (its whole length) as FAT with `label` and `volume_id`; FAT32 with
/// [`ESP_CLUSTER`] clusters when `fat32`, else the type fatfs picks for the size (FAT16 for the
/// config partition). Only the boot sectors, the FATs and the root directory are written.
pub fn format<D: Read + Write + Seek>(
    vol: &mut D,
    volume: &'static str,
    label: &str,
    volume_id: u32,
    fat32: bool,
) -> Result<(), DiskError> {
    let what = format!("formatting the {volume} partition");
    vol.seek(SeekFrom::Start(0))
        .map_err(DiskError::io(what.clone()))?;
    let mut opts = FormatVolumeOptions::new()
        .volume_id(volume_id)
        .volume_label(label11(label));
    if fat32 {
        opts = opts.fat_type(FatType::Fat32).bytes_per_cluster(ESP_CLUSTER);
    }
    fatfs::format_volume(&mut *vol, opts).map_err(DiskError::io(what.clone()))?;
    vol.flush().map_err(DiskError::io(what))
}

/// A mounted FAT file system over a borrowed device.
pub type Fat<'a, D> = FileSystem<&'a mut D>;

/// Opens the FAT file system on `vol`; files and folders created get the time `epoch`.
pub fn open<'a, D: Device>(
    vol: &'a mut D,
    volume: &'static str,
    epoch: i64,
) -> Result<Fat<'a, D>, DiskError> {
    vol.seek(SeekFrom::Start(0))
        .map_err(DiskError::io(format!("opening the {volume} partition")))?;
    let opts = FsOptions::new().time_provider(clock(epoch));
    FileSystem::new(vol, opts).map_err(|e| DiskError::Fat {
        volume,
        detail: e.to_string(),
    })
}

/// Closes a file system, writing what fatfs keeps in memory (FAT32's FSInfo, the clean flag).
pub fn close<D: Device>(fs: Fat<'_, D>, volume: &'static str) -> Result<(), DiskError> {
    fs.unmount()
        .map_err(DiskError::io(format!("closing the {volume} partition")))
}

/// Creates the folder `path` and its parents (`a/b/c`).
pub fn mkdirs<D: Device>(
    fs: &Fat<'_, D>,
    volume: &'static str,
    path: &str,
) -> Result<(), DiskError> {
    let mut dir = fs.root_dir();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        dir = match dir.open_dir(part) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => dir
                .create_dir(part)
                .map_err(DiskError::io(format!("{volume}: creating {path}")))?,
            Err(e) => return Err(DiskError::io(format!("{volume}: opening {path}"))(e)),
        };
    }
    Ok(())
}

/// Writes `data` as the file `path` (its folder must exist), replacing any file of that name.
pub fn write_file<D: Device>(
    fs: &Fat<'_, D>,
    volume: &'static str,
    path: &str,
    data: &[u8],
) -> Result<(), DiskError> {
    let what = || format!("{volume}: writing {path} ({} bytes)", data.len());
    remove(fs, volume, path)?;
    let mut f = fs
        .root_dir()
        .create_file(path)
        .map_err(DiskError::io(what()))?;
    f.truncate().map_err(DiskError::io(what()))?;
    f.write_all(data).map_err(DiskError::io(what()))?;
    f.flush().map_err(DiskError::io(what()))
}

/// Reads the file `path`, `None` when it does not exist; refuses one larger than `limit`.
pub fn read_file<D: Device>(
    fs: &Fat<'_, D>,
    volume: &'static str,
    path: &str,
    limit: u64,
) -> Result<Option<Vec<u8>>, DiskError> {
    let what = || format!("{volume}: reading {path}");
    let mut f = match fs.root_dir().open_file(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(DiskError::io(what())(e)),
    };
    let mut data = Vec::new();
    Read::by_ref(&mut f)
        .take(limit.saturating_add(1))
        .read_to_end(&mut data)
        .map_err(DiskError::io(what()))?;
    if data.len() as u64 > limit {
        return Err(DiskError::Fat {
            volume,
            detail: format!("{path} is larger than the limit of {limit} bytes"),
        });
    }
    Ok(Some(data))
}

/// The size of the file `path`, `None` when it does not exist.
pub fn file_len<D: Device>(
    fs: &Fat<'_, D>,
    volume: &'static str,
    path: &str,
) -> Result<Option<u64>, DiskError> {
    match fs.root_dir().open_file(path) {
        Ok(mut f) => f
            .seek(SeekFrom::End(0))
            .map(Some)
            .map_err(DiskError::io(format!("{volume}: sizing {path}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(DiskError::io(format!("{volume}: opening {path}"))(e)),
    }
}

/// Removes the file `path`; false when there was none.
pub fn remove<D: Device>(
    fs: &Fat<'_, D>,
    volume: &'static str,
    path: &str,
) -> Result<bool, DiskError> {
    match fs.root_dir().remove(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(DiskError::io(format!("{volume}: removing {path}"))(e)),
    }
}

/// The names of the files (not folders) in the folder `dir`; empty when it does not exist.
pub fn list_files<D: Device>(
    fs: &Fat<'_, D>,
    volume: &'static str,
    dir: &str,
) -> Result<Vec<String>, DiskError> {
    let what = || format!("{volume}: listing {dir}");
    let d = match fs.root_dir().open_dir(dir) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(DiskError::io(what())(e)),
    };
    let mut names = Vec::new();
    for e in d.iter() {
        let e = e.map_err(DiskError::io(what()))?;
        if e.is_file() {
            names.push(e.file_name());
        }
    }
    names.sort();
    Ok(names)
}

/// Free bytes on the file system.
pub fn free_bytes<D: Device>(fs: &Fat<'_, D>, volume: &'static str) -> Result<u64, DiskError> {
    let s = fs
        .stats()
        .map_err(DiskError::io(format!("{volume}: counting free clusters")))?;
    Ok(u64::from(s.free_clusters()) * u64::from(s.cluster_size()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn dos_times_are_utc_and_clamped() {
        // 2026-07-31T00:00:00Z
        let t = dos_time(1_785_456_000);
        assert_eq!((t.date.year, t.date.month, t.date.day), (2026, 7, 31));
        assert_eq!((t.time.hour, t.time.min, t.time.sec), (0, 0, 0));
        let t = dos_time(951_782_400 + 3661); // 2000-02-29T01:01:01Z
        assert_eq!((t.date.year, t.date.month, t.date.day), (2000, 2, 29));
        assert_eq!((t.time.hour, t.time.min, t.time.sec), (1, 1, 1));
        assert_eq!(dos_time(0).date.year, 1980);
        assert_eq!(dos_time(i64::MAX).date.year, 2107);
        assert!(std::ptr::eq(clock(5), clock(5)));
    }

    #[test]
    fn files_round_trip_with_fixed_times() {
        let mut vol = Cursor::new(vec![0u8; 4 << 20]);
        format(&mut vol, "TEST", "IMRSTEST", 0x1234_5678, false).unwrap();
        let fs = open(&mut vol, "TEST", 1_785_456_000).unwrap();
        mkdirs(&fs, "TEST", "a/b").unwrap();
        write_file(&fs, "TEST", "a/b/file.txt", b"hello").unwrap();
        write_file(&fs, "TEST", "a/b/file.txt", b"hello again").unwrap();
        assert_eq!(
            read_file(&fs, "TEST", "a/b/file.txt", 100)
                .unwrap()
                .unwrap(),
            b"hello again"
        );
        assert!(read_file(&fs, "TEST", "a/b/file.txt", 3).is_err());
        assert_eq!(read_file(&fs, "TEST", "a/none", 3).unwrap(), None);
        assert_eq!(list_files(&fs, "TEST", "a/b").unwrap(), ["file.txt"]);
        let m = {
            let e = fs.root_dir().open_dir("a/b").unwrap();
            let entry = e
                .iter()
                .find(|x| x.as_ref().unwrap().file_name() == "file.txt");
            entry.unwrap().unwrap().modified()
        };
        assert_eq!(
            (m.date.year, m.date.month, m.date.day, m.time.hour),
            (2026, 7, 31, 0)
        );
        assert!(remove(&fs, "TEST", "a/b/file.txt").unwrap());
        assert!(!remove(&fs, "TEST", "a/b/file.txt").unwrap());
        close(fs, "TEST").unwrap();
    }
}
