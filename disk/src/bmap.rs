//! Block maps in bmaptool's format 2.0 (Debian `bmap-tools`): the ranges of a sparse disk
//! image that hold data, each with its sha256, so that a flasher writes (and checks) only
//! those. Mapped ranges are what the file system of the image file says holds data
//! (`SEEK_DATA`/`SEEK_HOLE`), in 4096-byte blocks.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::DiskError;

/// Block size of the map.
pub const BLOCK: u64 = 4096;

/// One mapped range: first and last block (inclusive) and the sha256 of its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// First block.
    pub first: u64,
    /// Last block (inclusive).
    pub last: u64,
    /// sha256 of the range's bytes, hex.
    pub sha256: String,
}

/// A block map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bmap {
    /// Image size in bytes.
    pub image_size: u64,
    /// Mapped ranges in order.
    pub ranges: Vec<Range>,
}

fn seek(file: &File, off: u64, whence: libc::c_int) -> std::io::Result<Option<u64>> {
    let off = libc::off_t::try_from(off).map_err(|_| std::io::Error::other("offset too large"))?;
    // SAFETY: lseek takes a file descriptor this `File` owns and plain integers; no memory is
    // shared with the kernel.
    let r = unsafe { libc::lseek(file.as_raw_fd(), off, whence) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENXIO) {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some(r as u64))
}

/// The byte ranges of `file` that hold data, as the file system reports them.
pub fn data_ranges(file: &File, size: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < size {
        let Some(data) = seek(file, pos, libc::SEEK_DATA)? else {
            break;
        };
        let hole = seek(file, data, libc::SEEK_HOLE)?.unwrap_or(size).min(size);
        if hole <= data {
            break;
        }
        out.push((data, hole));
        pos = hole;
    }
    Ok(out)
}

impl Bmap {
    /// The mapped ranges of the image file `path` without their checksums (empty `sha256`), for
    /// a writer that hashes what it writes.
    pub fn ranges_of_file(path: &Path) -> Result<Bmap, DiskError> {
        Self::scan(path, false)
    }

    /// The block map of the image file `path`.
    pub fn of_file(path: &Path) -> Result<Bmap, DiskError> {
        Self::scan(path, true)
    }

    fn scan(path: &Path, hash: bool) -> Result<Bmap, DiskError> {
        let what = |w: &str| format!("{}: {w}", path.display());
        let mut file = File::open(path).map_err(DiskError::io(what("opening for the bmap")))?;
        let size = file
            .metadata()
            .map_err(DiskError::io(what("reading its size")))?
            .len();
        let mut blocks: Vec<(u64, u64)> = Vec::new();
        for (start, end) in
            data_ranges(&file, size).map_err(DiskError::io(what("finding its data ranges")))?
        {
            let (first, last) = (start / BLOCK, (end - 1) / BLOCK);
            match blocks.last_mut() {
                Some(prev) if first <= prev.1 + 1 => prev.1 = prev.1.max(last),
                _ => blocks.push((first, last)),
            }
        }
        let mut ranges = Vec::with_capacity(blocks.len());
        let mut buf = vec![0u8; 1 << 20];
        for (first, last) in blocks {
            if !hash {
                ranges.push(Range {
                    first,
                    last,
                    sha256: String::new(),
                });
                continue;
            }
            let start = first * BLOCK;
            let end = ((last + 1) * BLOCK).min(size);
            file.seek(SeekFrom::Start(start))
                .map_err(DiskError::io(what("reading")))?;
            let mut h = Sha256::new();
            let mut left = end - start;
            while left > 0 {
                let n = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
                file.read_exact(&mut buf[..n])
                    .map_err(DiskError::io(what("reading")))?;
                h.update(&buf[..n]);
                left -= n as u64;
            }
            ranges.push(Range {
                first,
                last,
                sha256: hex::encode(h.finalize()),
            });
        }
        Ok(Bmap {
            image_size: size,
            ranges,
        })
    }

    /// Blocks in the image.
    pub fn blocks(&self) -> u64 {
        self.image_size.div_ceil(BLOCK)
    }

    /// Mapped blocks.
    pub fn mapped_blocks(&self) -> u64 {
        self.ranges.iter().map(|r| r.last - r.first + 1).sum()
    }

    /// The bmap file's text: format 2.0 with sha256 range checksums and the file's own
    /// checksum (computed with its field all zeros, as bmaptool checks it).
    pub fn to_xml(&self) -> String {
        let mapped = self.mapped_blocks();
        let mut body = String::new();
        for r in &self.ranges {
            let span = if r.first == r.last {
                r.first.to_string()
            } else {
                format!("{}-{}", r.first, r.last)
            };
            body.push_str(&format!(
                "        <Range chksum=\"{}\"> {span} </Range>\n",
                r.sha256
            ));
        }
        let zeros = "0".repeat(64);
        let text = |checksum: &str| {
            format!(
                "<?xml version=\"1.0\" ?>\n\
                 <!-- Block map of an IMRS appliance disk image made by imrs-build disk: the\n     \
                 blocks that hold data; flash only these. -->\n\
                 <bmap version=\"2.0\">\n    \
                 <ImageSize> {} </ImageSize>\n    \
                 <BlockSize> {BLOCK} </BlockSize>\n    \
                 <BlocksCount> {} </BlocksCount>\n    \
                 <MappedBlocksCount> {mapped} </MappedBlocksCount>\n    \
                 <ChecksumType> sha256 </ChecksumType>\n    \
                 <BmapFileChecksum> {checksum} </BmapFileChecksum>\n    \
                 <BlockMap>\n{body}    </BlockMap>\n</bmap>\n",
                self.image_size,
                self.blocks()
            )
        };
        let sum = hex::encode(Sha256::digest(text(&zeros).as_bytes()));
        text(&sum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn maps_the_data_of_a_sparse_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        let mut f = File::create(&p).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all(b"start").unwrap();
        f.seek(SeekFrom::Start(40 << 20)).unwrap();
        f.write_all(&[7u8; 10000]).unwrap();
        f.sync_all().unwrap();
        let m = Bmap::of_file(&p).unwrap();
        assert_eq!(m.blocks(), 16384);
        assert_eq!(m.ranges.len(), 2, "{m:?}");
        assert_eq!(m.ranges[0].first, 0);
        let second = &m.ranges[1];
        assert!(second.first <= (40 << 20) / BLOCK && second.last >= ((40 << 20) + 9999) / BLOCK);
        let xml = m.to_xml();
        assert!(xml.contains("<BlockSize> 4096 </BlockSize>"), "{xml}");
        assert!(xml.contains("<MappedBlocksCount> "), "{xml}");
        // XML forbids `--` inside a comment (bmaptool's parser refuses the file).
        let comment = xml
            .split("<!--")
            .nth(1)
            .unwrap()
            .split("-->")
            .next()
            .unwrap();
        assert!(!comment.contains("--"), "{comment}");
        // The file checksum is over the text with the checksum zeroed.
        let sum = xml
            .split("<BmapFileChecksum> ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .unwrap()
            .to_string();
        let zeroed = xml.replace(&sum, &"0".repeat(64));
        assert_eq!(hex::encode(Sha256::digest(zeroed.as_bytes())), sum);
        // The first range's checksum covers its bytes.
        let data = std::fs::read(&p).unwrap();
        let r = &m.ranges[0];
        let bytes = &data[(r.first * BLOCK) as usize..((r.last + 1) * BLOCK) as usize];
        assert_eq!(hex::encode(Sha256::digest(bytes)), r.sha256);
    }
}
