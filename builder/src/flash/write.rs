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

/// What a flash writes: a disk's ranges in order, each read from one of several files at the
/// same offset (the source disk, or the scratch disk that holds this appliance's own
/// partitions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The ranges (digests filled in as written).
    pub map: Bmap,
    /// Per range, the index of the file it is read from.
    pub origin: Vec<usize>,
}

impl Plan {
    /// Every range of `map` from one file.
    pub fn single(map: Bmap) -> Plan {
        let origin = vec![0; map.ranges.len()];
        Plan { map, origin }
    }

    /// The ranges of several files (index, ranges), in disk order. Ranges must not overlap.
    pub fn merge(image_size: u64, parts: Vec<(usize, Vec<Range>)>) -> Plan {
        let mut all: Vec<(usize, Range)> = parts
            .into_iter()
            .flat_map(|(i, rs)| rs.into_iter().map(move |r| (i, r)))
            .collect();
        all.sort_by_key(|(_, r)| r.first);
        let (origin, ranges) = all.into_iter().unzip();
        Plan {
            map: Bmap { image_size, ranges },
            origin,
        }
    }
}

/// Copies every range of `plan` from its file in `srcs` to `dst` at the same offset, hashing
/// what it writes; `chunk` hears of each chunk written (range index, offset, length) and can
/// stop the copy. Returns the bytes written and the map with each range's sha256 as written.
fn copy(
    srcs: &[&File],
    plan: &Plan,
    dst: &File,
    progress: &mut dyn FnMut(u64),
    chunk: &mut dyn FnMut(usize, u64, usize) -> Result<(), FlashError>,
) -> Result<(u64, Bmap), FlashError> {
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    let mut written = plan.map.clone();
    for (i, (r, &o)) in written.ranges.iter_mut().zip(&plan.origin).enumerate() {
        let src = srcs[o];
        let (start, end) = span(r, plan.map.image_size);
        let mut h = Sha256::new();
        let mut off = start;
        while off < end {
            let n = (end - off).min(CHUNK as u64) as usize;
            src.read_exact_at(&mut buf[..n], off)
                .map_err(io_err(format!("reading the disk image at byte {off}")))?;
            dst.write_all_at(&buf[..n], off)
                .map_err(io_err(format!("writing the target at byte {off}")))?;
            chunk(i, off, n)?;
            h.update(&buf[..n]);
            off += n as u64;
            done += n as u64;
            progress(done);
        }
        let got = hex::encode(h.finalize());
        // A map that came with checksums (a bmap file) is checked on the way.
        if !r.sha256.is_empty() && r.sha256 != got {
            return Err(mismatch(r, plan.map.image_size, got));
        }
        r.sha256 = got;
    }
    Ok((done, written))
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
    let out = copy(
        &[src],
        &Plan::single(map.clone()),
        dst,
        progress,
        &mut |_, _, _| Ok(()),
    )?;
    dst.sync_all()
        .map_err(io_err("flushing the target (fsync)"))?;
    Ok(out)
}

/// Copies every mapped range of `src` to `dst` at the same offsets, without syncing (a
/// scratch file). Returns the bytes copied.
pub fn copy_ranges(src: &File, dst: &File, map: &Bmap) -> Result<u64, FlashError> {
    let plan = Plan::single(map.clone());
    Ok(copy(&[src], &plan, dst, &mut |_| {}, &mut |_, _, _| Ok(()))?.0)
}

/// What [`flash`] did.
#[derive(Debug)]
pub struct Flashed {
    /// Bytes written.
    pub bytes: u64,
    /// The ranges with their sha256 as written and as read back.
    pub map: Bmap,
    /// How the page cache was bypassed.
    pub how: ReadBack,
    /// sha256 over the ranges' digests in order (the flash record's read-back digest).
    pub digest: String,
}

/// Chunks the writer may be ahead of the reader (each [`CHUNK`] bytes of memory).
const LAG: usize = 8;

/// Writes `plan` onto `dst` (the target `target`, opened for writing) and reads every range
/// back bypassing the page cache, comparing it with what was written. Where the target takes
/// `O_DIRECT`, the reading runs on a second thread right behind the writing: the writer copies
/// a chunk into the target and asks the kernel to start writing it out, the reader's direct
/// read of that chunk then comes from the device, is compared byte for byte with the chunk the
/// writer hands over and hashed (one sha256 pass per byte, on the reader's core); the target
/// is fsynced before the result counts. Elsewhere (tmpfs), everything is written and fsynced
/// first, then read after the cached pages are dropped ([`read_back`]).
pub fn flash(
    srcs: &[&File],
    plan: &Plan,
    dst: &File,
    target: &Path,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<Flashed, FlashError> {
    let (file, how) = open_uncached(target)?;
    if how != ReadBack::Direct {
        drop(file);
        let (bytes, map) = copy(srcs, plan, dst, progress, &mut |_, _, _| Ok(()))?;
        dst.sync_all()
            .map_err(io_err("flushing the target (fsync)"))?;
        let (how, digest) = read_back(target, &map, &mut |_| {})?;
        return Ok(Flashed {
            bytes,
            map,
            how,
            digest,
        });
    }
    let (tx, rx) = std::sync::mpsc::sync_channel::<Chunk>(LAG);
    let (give, take) = std::sync::mpsc::sync_channel::<Vec<u8>>(LAG + 2);
    for _ in 0..LAG + 2 {
        let _ = give.send(vec![0u8; CHUNK]);
    }
    let stopped = || FlashError::Io {
        what: format!("{}: the read-back stopped", target.display()),
        source: io::ErrorKind::BrokenPipe.into(),
    };
    let ranges = plan.map.ranges.len();
    let (wrote, checked) = std::thread::scope(|s| {
        let reader = s.spawn(move || read_behind(&file, target, ranges, &rx, &give));
        let wrote = (|| -> Result<u64, FlashError> {
            let mut done = 0u64;
            for (i, (r, &o)) in plan.map.ranges.iter().zip(&plan.origin).enumerate() {
                let (start, end) = span(r, plan.map.image_size);
                let mut off = start;
                while off < end {
                    let n = (end - off).min(CHUNK as u64) as usize;
                    let mut buf = take.recv().map_err(|_| stopped())?;
                    buf.resize(n, 0);
                    srcs[o]
                        .read_exact_at(&mut buf, off)
                        .map_err(io_err(format!("reading the disk image at byte {off}")))?;
                    dst.write_all_at(&buf, off)
                        .map_err(io_err(format!("writing the target at byte {off}")))?;
                    start_writeback(dst, off, n);
                    tx.send(Chunk {
                        range: i,
                        off,
                        data: buf,
                    })
                    .map_err(|_| stopped())?;
                    off += n as u64;
                    done += n as u64;
                    progress(done);
                }
            }
            Ok(done)
        })();
        drop(tx);
        let checked = reader.join().unwrap_or_else(|_| {
            Err(FlashError::Io {
                what: "the read-back thread panicked".into(),
                source: io::ErrorKind::Other.into(),
            })
        });
        (wrote, checked)
    });
    // The reader's error explains a writer that stopped because the reader did.
    let checked = checked?;
    let bytes = wrote?;
    dst.sync_all()
        .map_err(io_err("flushing the target (fsync)"))?;
    let mut map = plan.map.clone();
    let mut found = Vec::with_capacity(ranges);
    for (r, (written, read)) in map.ranges.iter_mut().zip(checked) {
        r.sha256 = written;
        found.push(read);
    }
    let digest = compare(target, &map, found.into_iter())?;
    Ok(Flashed {
        bytes,
        map,
        how,
        digest,
    })
}

/// Asks the kernel to start writing the `n` bytes at `off` of `dst` out now, without waiting
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`), so the device is kept busy while the writer
/// copies on and the reader's direct read of the chunk finds it written or in flight. Only a
/// hint: where it fails, the direct read still writes the chunk out first.
fn start_writeback(dst: &File, off: u64, n: usize) {
    // SAFETY: a plain call on a descriptor `dst` owns; no memory is shared.
    unsafe {
        libc::sync_file_range(
            std::os::fd::AsRawFd::as_raw_fd(dst),
            off as libc::off64_t,
            n as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// A chunk written: its range's index, its offset and its bytes.
struct Chunk {
    range: usize,
    off: u64,
    data: Vec<u8>,
}

/// One range as the reader saw it: one hash while the device agrees with what was written,
/// two from the first difference on.
struct Seen {
    range: usize,
    same: Sha256,
    diverged: Option<(Sha256, Sha256)>,
    ends: Option<u64>,
}

impl Seen {
    /// (sha256 as written, what the target holds).
    fn finish(self) -> (String, Found) {
        let hex = |h: Sha256| hex::encode(h.finalize());
        match (self.diverged, self.ends) {
            (Some((w, _)), Some(at)) => (hex(w), Found::EndsAt(at)),
            (None, Some(at)) => (hex(self.same), Found::EndsAt(at)),
            (Some((w, r)), None) => (hex(w), Found::Sha256(hex(r))),
            (None, None) => {
                let h = hex(self.same);
                (h.clone(), Found::Sha256(h))
            }
        }
    }
}

/// Reads back each chunk the writer hands over, in order, compares it with the chunk's bytes
/// and hashes per range; returns per range (sha256 as written, what the target holds). Each
/// chunk's buffer goes back to the writer through `give`.
fn read_behind(
    file: &File,
    what: &Path,
    ranges: usize,
    rx: &std::sync::mpsc::Receiver<Chunk>,
    give: &std::sync::mpsc::SyncSender<Vec<u8>>,
) -> Result<Vec<(String, Found)>, FlashError> {
    let mut buf = Aligned::new(CHUNK);
    let mut out = Vec::with_capacity(ranges);
    let mut cur: Option<Seen> = None;
    while let Ok(c) = rx.recv() {
        if cur.as_ref().is_some_and(|s| s.range != c.range) {
            out.extend(cur.take().map(Seen::finish));
        }
        let seen = cur.get_or_insert_with(|| Seen {
            range: c.range,
            same: Sha256::new(),
            diverged: None,
            ends: None,
        });
        let written = &c.data[..];
        match (&mut seen.diverged, seen.ends) {
            (Some((w, _)), Some(_)) => w.update(written),
            (None, Some(_)) => seen.same.update(written),
            (_, None) => match read_chunk(file, what, &mut buf, c.off, written.len())? {
                Err(at) => {
                    seen.ends = Some(at);
                    match &mut seen.diverged {
                        Some((w, _)) => w.update(written),
                        None => seen.same.update(written),
                    }
                }
                Ok(read) => match &mut seen.diverged {
                    Some((w, r)) => {
                        w.update(written);
                        r.update(read);
                    }
                    None if read == written => seen.same.update(read),
                    None => {
                        let (mut w, mut r) = (seen.same.clone(), seen.same.clone());
                        w.update(written);
                        r.update(read);
                        seen.diverged = Some((w, r));
                    }
                },
            },
        }
        // The writer may have stopped; the buffer is not needed then.
        let _ = give.try_send(c.data);
    }
    out.extend(cur.take().map(Seen::finish));
    Ok(out)
}

/// Compares what was read back (per range, in order) with the map's digests; returns the
/// sha256 over all ranges' digests in order.
fn compare(
    target: &Path,
    map: &Bmap,
    found: impl Iterator<Item = Found>,
) -> Result<String, FlashError> {
    let mut all = Sha256::new();
    let mut n = 0;
    for (r, found) in map.ranges.iter().zip(found) {
        n += 1;
        match found {
            Found::Sha256(actual) if actual == r.sha256 => all.update(actual.as_bytes()),
            Found::Sha256(actual) => return Err(mismatch(r, map.image_size, actual)),
            Found::EndsAt(at) => {
                return Err(FlashError::Io {
                    what: format!(
                        "{}: the target ends at byte {at} inside a written range",
                        target.display()
                    ),
                    source: io::ErrorKind::UnexpectedEof.into(),
                });
            }
        }
    }
    if n != map.ranges.len() {
        return Err(FlashError::Io {
            what: format!(
                "{}: {n} of {} ranges were read back",
                target.display(),
                map.ranges.len()
            ),
            source: io::ErrorKind::UnexpectedEof.into(),
        });
    }
    Ok(hex::encode(all.finalize()))
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

/// Reads `n` bytes at `off` (a block boundary) into `buf`, whole blocks at a time as
/// `O_DIRECT` wants (ranges start and end on 4096-byte blocks except at the image's end, which
/// the disk sizes, whole MiB, never cut). `Err(at)` when `file` ends first, at byte `at`.
fn read_chunk<'b>(
    file: &File,
    what: &Path,
    buf: &'b mut Aligned,
    off: u64,
    n: usize,
) -> Result<Result<&'b [u8], u64>, FlashError> {
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
    Ok(if got >= n {
        Ok(&b[..n])
    } else {
        Err(off + got as u64)
    })
}

/// What the bytes `start..end` of `file` hash to (or where it ends inside them), read in
/// chunks through `buf`; `progress` hears of each chunk's length.
fn hash_range(
    file: &File,
    what: &Path,
    buf: &mut Aligned,
    (start, end): (u64, u64),
    progress: &mut dyn FnMut(u64),
) -> Result<Found, FlashError> {
    let mut h = Sha256::new();
    let mut off = start;
    while off < end {
        let n = (end - off).min(CHUNK as u64) as usize;
        match read_chunk(file, what, buf, off, n)? {
            Ok(b) => h.update(b),
            Err(at) => return Ok(Found::EndsAt(at)),
        }
        off += n as u64;
        progress(n as u64);
    }
    Ok(Found::Sha256(hex::encode(h.finalize())))
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
        let found = hash_range(file, what, &mut buf, span(r, map.image_size), &mut |n| {
            done += n;
            progress(done)
        })?;
        each(i, r, found)?;
    }
    Ok(())
}

/// The plan's map with each range's sha256 as its file in `srcs` holds it (what flashing
/// the plan writes); each file comes with its name for errors.
pub fn hash_plan(srcs: &[(&File, &Path)], plan: &Plan) -> Result<Bmap, FlashError> {
    let mut buf = Aligned::new(CHUNK);
    let mut map = plan.map.clone();
    for (r, &o) in map.ranges.iter_mut().zip(&plan.origin) {
        let (file, name) = srcs[o];
        match hash_range(
            file,
            name,
            &mut buf,
            span(r, plan.map.image_size),
            &mut |_| {},
        )? {
            Found::Sha256(s) => r.sha256 = s,
            Found::EndsAt(at) => {
                return Err(FlashError::Io {
                    what: format!("{}: ends at byte {at}", name.display()),
                    source: io::ErrorKind::UnexpectedEof.into(),
                });
            }
        }
    }
    Ok(map)
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
    let mut found = Vec::with_capacity(map.ranges.len());
    read_ranges(&file, target, map, progress, &mut |_, _, f| {
        found.push(f);
        Ok(())
    })?;
    Ok((how, compare(target, map, found.into_iter())?))
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
    fn a_plan_from_two_files_is_written_and_read_back_behind_the_writer() {
        let d = tempfile::tempdir().unwrap();
        let img = sparse_image(d.path());
        let own = d.path().join("own");
        let f = File::create(&own).unwrap();
        f.set_len(16 << 20).unwrap();
        f.write_all_at(&[9u8; 3 * 4096], 12 << 20).unwrap();
        // The image's bytes at 12 MiB must not be written: that range is `own`'s.
        let ours = Bmap::ranges_of_file(&own).unwrap().ranges;
        let own_blocks = (12 << 20) / BLOCK..(12 << 20) / BLOCK + 3;
        let mut theirs = split_ranges(
            &Bmap::ranges_of_file(&img).unwrap(),
            &[own_blocks.start, own_blocks.end],
        )
        .ranges;
        theirs.retain(|r| !own_blocks.contains(&r.first));
        let plan = Plan::merge(16 << 20, vec![(1, ours), (0, theirs)]);
        assert!(plan.map.ranges.windows(2).all(|w| w[0].last < w[1].first));
        let dst_path = d.path().join("dst");
        std::fs::write(&dst_path, vec![0xAAu8; 16 << 20]).unwrap();
        let dst = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&dst_path)
            .unwrap();
        let (a, b) = (File::open(&img).unwrap(), File::open(&own).unwrap());
        let mut last = 0;
        let done = flash(&[&a, &b], &plan, &dst, &dst_path, &mut |n| last = n).unwrap();
        assert_eq!(done.bytes, plan.map.mapped_blocks() * BLOCK);
        assert_eq!(last, done.bytes);
        let out = std::fs::read(&dst_path).unwrap();
        assert_eq!(
            (out[5], out[9 << 20], out[12 << 20], out[8 << 20]),
            (1, 7, 9, 0xAA),
            "mapped ranges from their own file, nothing else"
        );
        let expected = hash_plan(&[(&a, &img), (&b, &own)], &plan).unwrap();
        assert_eq!(done.map, expected, "digests as written");
        let (_, digest) = read_back(&dst_path, &done.map, &mut |_| {}).unwrap();
        assert_eq!(done.digest, digest);
    }

    #[test]
    fn the_reader_behind_the_writer_names_what_the_target_holds() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("t");
        std::fs::write(&t, vec![5u8; 3 * 4096]).unwrap();
        let (file, _) = open_uncached(&t).unwrap();
        let (tx, rx) = std::sync::mpsc::sync_channel(8);
        let (give, _take) = std::sync::mpsc::sync_channel(8);
        let chunk = |range, off, byte: u8| Chunk {
            range,
            off,
            data: vec![byte; 4096],
        };
        // Range 0 matches; range 1 differs in its second chunk; range 2 lies past the end.
        for c in [
            chunk(0, 0, 5),
            chunk(1, 4096, 5),
            chunk(1, 8192, 6),
            chunk(2, 12288, 5),
        ] {
            tx.send(c).unwrap();
        }
        drop(tx);
        let got = read_behind(&file, &t, 3, &rx, &give).unwrap();
        let sha = |parts: &[u8]| {
            let mut h = Sha256::new();
            for &b in parts {
                h.update([b; 4096]);
            }
            hex::encode(h.finalize())
        };
        assert_eq!(got[0], (sha(&[5]), Found::Sha256(sha(&[5]))));
        assert_eq!(got[1], (sha(&[5, 6]), Found::Sha256(sha(&[5, 5]))));
        assert_eq!(got[2], (sha(&[5]), Found::EndsAt(12288)));
        // compare names the first wrong range.
        let map = Bmap {
            image_size: 4 * 4096,
            ranges: got
                .iter()
                .enumerate()
                .map(|(i, (w, _))| Range {
                    first: [0, 1, 3][i],
                    last: [0, 2, 3][i],
                    sha256: w.clone(),
                })
                .collect(),
        };
        let e = compare(&t, &map, got.into_iter().map(|(_, f)| f)).unwrap_err();
        assert!(e.to_string().contains("blocks 1-2"), "{e}");
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
