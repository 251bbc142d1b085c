//! Writing a disk image's mapped ranges to a target and reading every one of them back from the
//! device itself: the page cache is bypassed with `O_DIRECT` (on a file system that refuses
//! it, such as tmpfs, the cached pages are dropped first and the read says so), and each
//! range's sha256 is compared with the one the bmap computed from the image.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use imrs_disk::bmap::{BLOCK, Bmap, Range};
use sha2::{Digest, Sha256};

/// Bytes moved per write or read.
const CHUNK: usize = 4 << 20;

/// Writing or reading back failed.
#[derive(Debug, thiserror::Error)]
pub enum FlashError {
    /// An I/O error, with what was being done.
    #[error("{what}")]
    Io {
        /// What.
        what: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A range read back differs from the image.
    #[error(
        "read-back mismatch in blocks {first}-{last} (bytes {start}-{end}): sha256 {actual} on \
         the device, {expected} in the image; the device is not a faithful copy"
    )]
    Mismatch {
        /// First block.
        first: u64,
        /// Last block.
        last: u64,
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
        /// Digest expected.
        expected: String,
        /// Digest read.
        actual: String,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> FlashError {
    let what = what.into();
    move |source| FlashError::Io { what, source }
}

/// A range's byte span, clipped to the image size.
fn span(r: &Range, image_size: u64) -> (u64, u64) {
    let start = r.first * BLOCK;
    let end = ((r.last + 1) * BLOCK).min(image_size);
    (start, end)
}

/// Range `r` holds `actual`, not the digest it should.
fn mismatch(r: &Range, image_size: u64, actual: String) -> FlashError {
    let (start, end) = span(r, image_size);
    FlashError::Mismatch {
        first: r.first,
        last: r.last,
        start,
        end,
        expected: r.sha256.clone(),
        actual,
    }
}

/// Copies every mapped range of `src` to `dst` at the same offsets, then fsyncs `dst`.
/// `progress` gets the bytes written so far. Returns the bytes written and the map with each
/// range's sha256 as written (what [`read_back`] must find).
pub fn write_ranges(
    src: &File,
    dst: &File,
    map: &Bmap,
    progress: &mut dyn FnMut(u64),
) -> Result<(u64, Bmap), FlashError> {
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    let mut written = map.clone();
    for r in &mut written.ranges {
        let (start, end) = span(r, map.image_size);
        let mut h = Sha256::new();
        let mut off = start;
        while off < end {
            let n = (end - off).min(CHUNK as u64) as usize;
            src.read_exact_at(&mut buf[..n], off)
                .map_err(io_err(format!("reading the disk image at byte {off}")))?;
            dst.write_all_at(&buf[..n], off)
                .map_err(io_err(format!("writing the target at byte {off}")))?;
            h.update(&buf[..n]);
            off += n as u64;
            done += n as u64;
            progress(done);
        }
        let got = hex::encode(h.finalize());
        // A map that came with checksums (a bmap file) is checked on the way.
        if !r.sha256.is_empty() && r.sha256 != got {
            return Err(mismatch(r, map.image_size, got));
        }
        r.sha256 = got;
    }
    dst.sync_all()
        .map_err(io_err("flushing the target (fsync)"))?;
    Ok((done, written))
}

/// A buffer aligned for `O_DIRECT` (4096 bytes, a multiple of any logical block size).
struct Aligned {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let layout = std::alloc::Layout::from_size_align(len, BLOCK as usize)
            .expect("CHUNK is a valid aligned layout");
        // SAFETY: the layout has a non-zero size (CHUNK).
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        Aligned { ptr, layout }
    }

    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` points to `layout.size()` initialised bytes owned by `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

/// How the read-back bypassed the page cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReadBack {
    /// `O_DIRECT`: from the device.
    Direct,
    /// The target refused `O_DIRECT` (a file on tmpfs): its cached pages were dropped
    /// (`POSIX_FADV_DONTNEED`) before reading.
    CacheDropped,
}

/// Opens `target` to read it back bypassing the page cache: `O_DIRECT`, or, where the file
/// system refuses it (tmpfs), a plain read after its cached pages are dropped.
pub fn open_uncached(target: &Path) -> Result<(File, ReadBack), FlashError> {
    let direct = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(target);
    match direct {
        Ok(f) => Ok((f, ReadBack::Direct)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            let f = File::open(target).map_err(io_err(format!(
                "{}: opening to read back",
                target.display()
            )))?;
            // SAFETY: a plain advice call on a descriptor this `File` owns.
            let rc = unsafe {
                libc::posix_fadvise(
                    std::os::fd::AsRawFd::as_raw_fd(&f),
                    0,
                    0,
                    libc::POSIX_FADV_DONTNEED,
                )
            };
            if rc != 0 {
                return Err(FlashError::Io {
                    what: format!("{}: dropping cached pages", target.display()),
                    source: io::Error::from_raw_os_error(rc),
                });
            }
            Ok((f, ReadBack::CacheDropped))
        }
        Err(e) => Err(io_err(format!(
            "{}: opening to read back (O_DIRECT)",
            target.display()
        ))(e)),
    }
}

/// What reading one range found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// The range's bytes, with this sha256.
    Sha256(String),
    /// The target ends at this byte, inside the range.
    EndsAt(u64),
}

/// Reads every range of `map` from `file` (opened by [`open_uncached`] or plainly; `what`
/// names it in errors) and hands each range's index and what was found to `each`, which stops
/// the reading by returning an error. `progress` gets the bytes read so far.
pub fn read_ranges(
    file: &File,
    what: &Path,
    map: &Bmap,
    progress: &mut dyn FnMut(u64),
    each: &mut dyn FnMut(usize, &Range, Found) -> Result<(), FlashError>,
) -> Result<(), FlashError> {
    let mut buf = Aligned::new(CHUNK);
    let mut done = 0u64;
    for (i, r) in map.ranges.iter().enumerate() {
        let (start, end) = span(r, map.image_size);
        let mut h = Sha256::new();
        let mut off = start;
        let mut short = None;
        while off < end {
            let n = (end - off).min(CHUNK as u64) as usize;
            // O_DIRECT reads whole blocks: ranges start and end on 4096-byte blocks except at
            // the image's end, which the disk sizes (whole MiB) never cut.
            let want = n.next_multiple_of(BLOCK as usize).min(CHUNK);
            let b = &mut buf.as_mut()[..want];
            let mut got = 0usize;
            while got < n {
                let k = file
                    .read_at(&mut b[got..], off + got as u64)
                    .map_err(io_err(format!(
                        "{}: reading back at byte {}",
                        what.display(),
                        off + got as u64
                    )))?;
                if k == 0 {
                    break;
                }
                got += k;
            }
            if got < n {
                short = Some(off + got as u64);
                break;
            }
            h.update(&b[..n]);
            off += n as u64;
            done += n as u64;
            progress(done);
        }
        let found = match short {
            Some(at) => Found::EndsAt(at),
            None => Found::Sha256(hex::encode(h.finalize())),
        };
        each(i, r, found)?;
    }
    Ok(())
}

/// Reads every mapped range of `target` back, bypassing the page cache, and compares its
/// sha256 with the map's. Returns how the cache was bypassed and the sha256 over all ranges'
/// digests in order (the read-back digest of the flash record).
pub fn read_back(
    target: &Path,
    map: &Bmap,
    progress: &mut dyn FnMut(u64),
) -> Result<(ReadBack, String), FlashError> {
    let (file, how) = open_uncached(target)?;
    let mut all = Sha256::new();
    read_ranges(
        &file,
        target,
        map,
        progress,
        &mut |_, r, found| match found {
            Found::Sha256(actual) if actual == r.sha256 => {
                all.update(actual.as_bytes());
                Ok(())
            }
            Found::Sha256(actual) => Err(mismatch(r, map.image_size, actual)),
            Found::EndsAt(at) => Err(FlashError::Io {
                what: format!(
                    "{}: the target ends at byte {at} inside a written range",
                    target.display()
                ),
                source: io::ErrorKind::UnexpectedEof.into(),
            }),
        },
    )?;
    Ok((how, hex::encode(all.finalize())))
}

/// `map` with every range cut where a block of `cuts` starts (partition boundaries, in
/// blocks), so that no range spans two partitions; digests of cut ranges are cleared (the
/// writer computes them).
pub fn split_ranges(map: &Bmap, cuts: &[u64]) -> Bmap {
    let mut cuts = cuts.to_vec();
    cuts.sort_unstable();
    cuts.dedup();
    let mut ranges = Vec::with_capacity(map.ranges.len());
    for r in &map.ranges {
        let mut first = r.first;
        for &c in cuts.iter().filter(|&&c| c > r.first && c <= r.last) {
            ranges.push(Range {
                first,
                last: c - 1,
                sha256: String::new(),
            });
            first = c;
        }
        ranges.push(Range {
            first,
            last: r.last,
            sha256: if first == r.first {
                r.sha256.clone()
            } else {
                String::new()
            },
        });
    }
    Bmap {
        image_size: map.image_size,
        ranges,
    }
}

/// The blocks where the partitions of the disk image `file` start and end (for
/// [`split_ranges`]).
pub fn partition_cuts(file: &mut File) -> Result<Vec<u64>, imrs_disk::DiskError> {
    Ok(imrs_disk::layout::partitions(file)?
        .into_iter()
        .flat_map(|(_, e)| [e.offset / BLOCK, (e.offset + e.len) / BLOCK])
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    fn sparse_image(dir: &Path) -> std::path::PathBuf {
        let p = dir.join("img");
        let mut f = File::create(&p).unwrap();
        f.set_len(16 << 20).unwrap();
        f.write_all(&[1u8; 10_000]).unwrap();
        f.seek(SeekFrom::Start(9 << 20)).unwrap();
        f.write_all(&vec![7u8; (5 << 20) + 3]).unwrap();
        f.sync_all().unwrap();
        p
    }

    #[test]
    fn writes_only_mapped_ranges_and_reads_them_back() {
        let d = tempfile::tempdir().unwrap();
        let img = sparse_image(d.path());
        let map = Bmap::of_file(&img).unwrap();
        let dst_path = d.path().join("dst");
        // The target had other bytes: only mapped ranges are replaced.
        std::fs::write(&dst_path, vec![0xAAu8; 16 << 20]).unwrap();
        let dst = std::fs::OpenOptions::new()
            .write(true)
            .open(&dst_path)
            .unwrap();
        let mut last = 0;
        let (n, written) =
            write_ranges(&File::open(&img).unwrap(), &dst, &map, &mut |b| last = b).unwrap();
        assert_eq!(written, map, "the checksums as written are the image's");
        assert_eq!(n, map.mapped_blocks() * BLOCK);
        assert_eq!(last, n);
        let out = std::fs::read(&dst_path).unwrap();
        assert_eq!(out[5], 1);
        assert_eq!(out[8 << 20], 0xAA, "an unmapped block was written");
        let (_, digest) = read_back(&dst_path, &map, &mut |_| {}).unwrap();
        assert_eq!(digest.len(), 64);

        // A byte changed behind the writer is found, and its range named.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&dst_path)
            .unwrap();
        f.write_all_at(&[0], (9 << 20) + 4096 * 300).unwrap();
        f.sync_all().unwrap();
        let e = read_back(&dst_path, &map, &mut |_| {}).unwrap_err();
        match &e {
            FlashError::Mismatch { start, end, .. } => {
                assert!(*start <= (9 << 20) && *end > (9 << 20) + 4096 * 300, "{e}")
            }
            other => panic!("{other}"),
        }
        assert!(
            e.to_string().starts_with("read-back mismatch in blocks"),
            "{e}"
        );

        // A target cut short is named where it ends.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&dst_path)
            .unwrap();
        f.set_len(10 << 20).unwrap();
        let e = read_back(&dst_path, &map, &mut |_| {}).unwrap_err();
        assert!(e.to_string().contains("ends at byte 10485760"), "{e}");
    }

    #[test]
    fn ranges_are_cut_at_partition_boundaries() {
        let r = |first, last, sha: &str| Range {
            first,
            last,
            sha256: sha.into(),
        };
        let map = Bmap {
            image_size: 100 * BLOCK,
            ranges: vec![r(0, 4, "a"), r(8, 30, "b"), r(40, 41, "c")],
        };
        let cut = split_ranges(&map, &[41, 10, 8, 20, 20, 99]);
        assert_eq!(
            cut.ranges,
            vec![
                r(0, 4, "a"),
                r(8, 9, ""),
                r(10, 19, ""),
                r(20, 30, ""),
                r(40, 40, ""),
                r(41, 41, ""),
            ]
        );
        assert_eq!(cut.mapped_blocks(), map.mapped_blocks());
        assert_eq!(split_ranges(&map, &[]), map);
    }
}
