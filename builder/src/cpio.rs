//! The initramfs archive format: newc (`070701`) cpio, written from a [`Tree`](crate::tree::Tree)
//! and read back.
//!
//! Owns the normalisation that makes images bit-for-bit reproducible: entries in tree order
//! (sorted, parents before children, `.` first), every mtime set to one `SOURCE_DATE_EPOCH`,
//! uid/gid 0, inode numbers assigned 1, 2, 3... in that order, dev 0:0, `nlink` 2 for directories
//! and 1 for everything else (no hardlinks: the kernel only links entries with `nlink` >= 2),
//! header fields in upper-case hex as the kernel's `gen_init_cpio` writes them. Also owns the zstd
//! compression of the archive (the Debian 6.1 kernel has `CONFIG_RD_ZSTD=y`).

use std::io::{self, Read, Write};

use crate::tree::{Node, NodeKind, Tree, TreeError};

/// The newc magic.
pub const MAGIC: &[u8; 6] = b"070701";
/// The name of the end-of-archive entry.
pub const TRAILER: &str = "TRAILER!!!";
/// Size of a newc header: the magic and 13 eight-digit hex fields.
const HEADER_LEN: usize = 110;

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;
const S_IFMT: u32 = 0o170_000;

/// `dev/console` (5:1) and `dev/null` (1:3): the device nodes the init needs before it can
/// mount devtmpfs (the kernel opens `/dev/console` for PID 1's stdio).
pub const EARLY_DEVICES: [(&str, u32, u32, u32); 2] =
    [("dev/console", 5, 1, 0o600), ("dev/null", 1, 3, 0o666)];

/// Errors of writing, reading and compressing archives.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    /// Writing the archive failed.
    #[error("cannot write cpio archive")]
    Write(#[source] io::Error),
    /// A tree entry does not fit the format (a field over 32 bits).
    #[error("{path}: too large for a newc archive")]
    TooLarge {
        /// The entry.
        path: String,
    },
    /// The archive being read is malformed at `offset`.
    #[error("malformed cpio archive at byte {offset}: {reason}")]
    Malformed {
        /// Byte offset of the header or field at fault.
        offset: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// Inserting the early device nodes into the tree failed.
    #[error("cannot add device node {path}")]
    Device {
        /// The device node path.
        path: &'static str,
        /// The tree's complaint.
        #[source]
        source: TreeError,
    },
    /// zstd compression or decompression failed.
    #[error("zstd failed")]
    Zstd(#[source] io::Error),
}

/// One entry of a newc archive as read back by [`read`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The name as stored (no leading `/`; `.` for the root).
    pub name: String,
    /// File type and permission bits (`st_mode`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Link count.
    pub nlink: u32,
    /// Modification time (seconds since the epoch).
    pub mtime: u32,
    /// Inode number.
    pub ino: u32,
    /// Device major/minor of a device node.
    pub rdev: (u32, u32),
    /// File contents, or a symlink's target.
    pub data: Vec<u8>,
}

/// Adds [`EARLY_DEVICES`] (and `dev` if missing) to `tree`.
pub fn add_early_devices(tree: &mut Tree) -> Result<(), CpioError> {
    for (path, major, minor, mode) in EARLY_DEVICES {
        tree.insert(path, Node::char_device(major, minor, mode))
            .map_err(|source| CpioError::Device { path, source })?;
    }
    Ok(())
}

/// Writes `tree` as a newc archive to `out`, every entry with mtime `mtime`
/// (`SOURCE_DATE_EPOCH`). The output depends only on the tree's contents and `mtime`.
pub fn write<W: Write>(tree: &Tree, mtime: u32, out: W) -> Result<W, CpioError> {
    let mut writer = Writer { out, written: 0 };
    let root = Node::dir(0o755);
    let entries = std::iter::once((".", &root)).chain(tree.iter().map(|(p, n)| (p.as_str(), n)));
    let mut ino = 0u32;
    for (path, node) in entries {
        ino += 1;
        let too_large = || CpioError::TooLarge {
            path: path.to_owned(),
        };
        let (file_type, data, nlink, rdev): (u32, &[u8], u32, (u32, u32)) = match &node.kind {
            NodeKind::File(data) => (S_IFREG, data, 1, (0, 0)),
            NodeKind::Dir => (S_IFDIR, &[], 2, (0, 0)),
            NodeKind::Symlink(target) => (S_IFLNK, target.as_bytes(), 1, (0, 0)),
            NodeKind::CharDevice { major, minor } => (S_IFCHR, &[], 1, (*major, *minor)),
        };
        let size = u32::try_from(data.len()).map_err(|_| too_large())?;
        let name_len = u32::try_from(path.len() + 1).map_err(|_| too_large())?;
        let fields = [
            ino,
            file_type | (node.mode & 0o7777),
            0,
            0,
            nlink,
            mtime,
            size,
            0,
            0,
            rdev.0,
            rdev.1,
            name_len,
            0,
        ];
        writer
            .entry(&fields, path, data)
            .map_err(CpioError::Write)?;
    }
    let trailer = [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, TRAILER.len() as u32 + 1, 0];
    writer
        .entry(&trailer, TRAILER, &[])
        .map_err(CpioError::Write)?;
    Ok(writer.out)
}

/// Tracks the offset for the 4-byte alignment of names and data.
struct Writer<W> {
    out: W,
    written: usize,
}

impl<W: Write> Writer<W> {
    fn entry(&mut self, fields: &[u32; 13], name: &str, data: &[u8]) -> io::Result<()> {
        let mut header = Vec::with_capacity(HEADER_LEN + name.len() + 4);
        header.extend_from_slice(MAGIC);
        for field in fields {
            header.extend_from_slice(format!("{field:08X}").as_bytes());
        }
        header.extend_from_slice(name.as_bytes());
        header.push(0);
        self.put(&header)?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len();
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let pad = self.written.next_multiple_of(4) - self.written;
        self.put(&[0; 3][..pad])
    }
}

/// A header's fields that [`read`] and [`find`] use.
struct Header {
    ino: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    mtime: u32,
    size: u32,
    rdev: (u32, u32),
    name_len: u32,
}

/// Parses the header at byte `pos` of an archive.
fn header(h: &[u8], pos: usize) -> Result<Header, CpioError> {
    let bad = |reason| CpioError::Malformed {
        offset: pos,
        reason,
    };
    if &h[..6] != MAGIC {
        return Err(bad("not a newc header"));
    }
    let mut fields = [0u32; 13];
    for (i, field) in fields.iter_mut().enumerate() {
        let hex = &h[6 + 8 * i..14 + 8 * i];
        let text = std::str::from_utf8(hex).map_err(|_| bad("non-hex field"))?;
        *field = u32::from_str_radix(text, 16).map_err(|_| bad("non-hex field"))?;
    }
    let [
        ino,
        mode,
        uid,
        gid,
        nlink,
        mtime,
        size,
        _,
        _,
        rmajor,
        rminor,
        name_len,
        _,
    ] = fields;
    Ok(Header {
        ino,
        mode,
        uid,
        gid,
        nlink,
        mtime,
        size,
        rdev: (rmajor, rminor),
        name_len,
    })
}

/// A name field (NUL-terminated UTF-8) at byte `pos`.
fn name_of(raw: &[u8], pos: usize) -> Result<String, CpioError> {
    let bad = |reason| CpioError::Malformed {
        offset: pos,
        reason,
    };
    let name = raw
        .strip_suffix(&[0])
        .ok_or(bad("name not NUL-terminated"))?;
    String::from_utf8(name.to_vec()).map_err(|_| bad("name not UTF-8"))
}

impl Header {
    fn entry(self, name: String, data: Vec<u8>) -> Entry {
        Entry {
            name,
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            nlink: self.nlink,
            mtime: self.mtime,
            ino: self.ino,
            rdev: self.rdev,
            data,
        }
    }
}

/// Parses a newc archive up to its trailer. Only zero padding may follow the trailer.
pub fn read(archive: &[u8]) -> Result<Vec<Entry>, CpioError> {
    let mut entries = Vec::new();
    let mut pos = 0;
    loop {
        let bad = |offset, reason| CpioError::Malformed { offset, reason };
        let h = archive
            .get(pos..pos + HEADER_LEN)
            .ok_or(bad(pos, "truncated header"))?;
        let h = header(h, pos)?;
        let name_start = pos + HEADER_LEN;
        let name_end = name_start + h.name_len as usize;
        let name = archive
            .get(name_start..name_end)
            .ok_or(bad(name_start, "truncated name"))?;
        let name = name_of(name, name_start)?;
        let data_start = name_end.next_multiple_of(4);
        let data_end = data_start + h.size as usize;
        let data = archive
            .get(data_start..data_end)
            .ok_or(bad(data_start, "truncated data"))?;
        pos = data_end.next_multiple_of(4);
        if name == TRAILER {
            if archive
                .get(pos..)
                .is_some_and(|rest| rest.iter().any(|&b| b != 0))
            {
                return Err(bad(pos, "data after the trailer"));
            }
            return Ok(entries);
        }
        entries.push(h.entry(name, data.to_vec()));
    }
}

/// Reads a newc archive from `r` only as far as the entry named `want` (as stored: no leading
/// `/`) and returns it, or `None` when the trailer comes first; what follows is not read (a
/// lookup in a compressed initramfs stops decompressing there). An entry bigger than
/// `max_data` bytes is an error.
pub fn find<R: Read>(mut r: R, want: &str, max_data: u32) -> Result<Option<Entry>, CpioError> {
    let mut pos = 0usize;
    let bad = |offset, reason| CpioError::Malformed { offset, reason };
    let mut skip = vec![0u8; 64 << 10];
    loop {
        let mut h = [0u8; HEADER_LEN];
        r.read_exact(&mut h)
            .map_err(|_| bad(pos, "truncated header"))?;
        let h = header(&h, pos)?;
        let name_start = pos + HEADER_LEN;
        let name_end = name_start + h.name_len as usize;
        // The name and its padding to 4 bytes.
        let mut name = vec![0u8; name_end.next_multiple_of(4) - name_start];
        r.read_exact(&mut name)
            .map_err(|_| bad(name_start, "truncated name"))?;
        let name = name_of(&name[..h.name_len as usize], name_start)?;
        let data_start = name_end.next_multiple_of(4);
        let padded = (data_start + h.size as usize).next_multiple_of(4) - data_start;
        if name == TRAILER {
            return Ok(None);
        }
        if name == want {
            if h.size > max_data {
                return Err(bad(data_start, "entry bigger than expected"));
            }
            let mut data = vec![0u8; h.size as usize];
            r.read_exact(&mut data)
                .map_err(|_| bad(data_start, "truncated data"))?;
            return Ok(Some(h.entry(name, data)));
        }
        let mut left = padded;
        while left > 0 {
            let n = left.min(skip.len());
            r.read_exact(&mut skip[..n])
                .map_err(|_| bad(data_start, "truncated data"))?;
            left -= n;
        }
        pos = data_start + padded;
    }
}

impl Entry {
    /// Whether this entry is a directory.
    pub fn is_dir(&self) -> bool {
        self.mode & S_IFMT == S_IFDIR
    }
}

/// Compresses `data` as one zstd frame at `level` (single-threaded, content size and
/// checksum recorded), which the kernel's initramfs unpacker accepts. Deterministic for a
/// given input, level and zstd version.
pub fn compress_zstd(data: &[u8], level: i32) -> Result<Vec<u8>, CpioError> {
    let mut compressor = zstd::bulk::Compressor::new(level).map_err(CpioError::Zstd)?;
    compressor.include_checksum(true).map_err(CpioError::Zstd)?;
    compressor
        .include_contentsize(true)
        .map_err(CpioError::Zstd)?;
    compressor.compress(data).map_err(CpioError::Zstd)
}

/// Decompresses a zstd-compressed archive (for `inspect` and tests).
pub fn decompress_zstd(data: &[u8]) -> Result<Vec<u8>, CpioError> {
    zstd::stream::decode_all(data).map_err(CpioError::Zstd)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EPOCH: u32 = 1_700_000_000;

    fn sample() -> Tree {
        let mut t = Tree::new();
        t.insert("usr/bin/init", Node::file(&b"\x7fELF init"[..], 0o755))
            .unwrap();
        t.insert("usr/lib/libx.so.1.0", Node::file(vec![7u8; 4097], 0o644))
            .unwrap();
        t.insert("usr/lib/libx.so.1", Node::symlink("libx.so.1.0"))
            .unwrap();
        t.insert("init", Node::symlink("/usr/bin/init")).unwrap();
        t.insert("etc/empty", Node::file(Vec::new(), 0o600))
            .unwrap();
        t.insert("run", Node::dir(0o1777)).unwrap();
        add_early_devices(&mut t).unwrap();
        t
    }

    #[test]
    fn round_trip_preserves_every_entry() {
        let tree = sample();
        let archive = write(&tree, EPOCH, Vec::new()).unwrap();
        assert_eq!(archive.len() % 4, 0);
        let entries = read(&archive).unwrap();
        assert_eq!(entries.len(), tree.len() + 1);
        assert_eq!(
            (entries[0].name.as_str(), entries[0].mode),
            (".", S_IFDIR | 0o755)
        );
        for (i, (entry, (path, node))) in entries[1..].iter().zip(tree.iter()).enumerate() {
            assert_eq!(&entry.name, path);
            assert_eq!(entry.ino as usize, i + 2);
            assert_eq!((entry.uid, entry.gid, entry.mtime), (0, 0, EPOCH));
            assert_eq!(entry.mode & 0o7777, node.mode, "{path}");
            let (file_type, data, rdev, nlink) = match &node.kind {
                NodeKind::File(d) => (S_IFREG, d.to_vec(), (0, 0), 1),
                NodeKind::Dir => (S_IFDIR, Vec::new(), (0, 0), 2),
                NodeKind::Symlink(t) => (S_IFLNK, t.as_bytes().to_vec(), (0, 0), 1),
                NodeKind::CharDevice { major, minor } => (S_IFCHR, Vec::new(), (*major, *minor), 1),
            };
            assert_eq!(
                (entry.mode & S_IFMT, &entry.data, entry.rdev, entry.nlink),
                (file_type, &data, rdev, nlink),
                "{path}"
            );
        }
        let console = entries.iter().find(|e| e.name == "dev/console").unwrap();
        assert_eq!((console.mode, console.rdev), (S_IFCHR | 0o600, (5, 1)));
    }

    #[test]
    fn output_is_byte_identical_and_depends_on_epoch() {
        let a = write(&sample(), EPOCH, Vec::new()).unwrap();
        let b = write(&sample(), EPOCH, Vec::new()).unwrap();
        assert!(a == b);
        assert!(write(&sample(), EPOCH + 1, Vec::new()).unwrap() != a);
        assert!(compress_zstd(&a, 19).unwrap() == compress_zstd(&b, 19).unwrap());
    }

    #[test]
    fn zstd_round_trip_and_magic() {
        let archive = write(&sample(), EPOCH, Vec::new()).unwrap();
        let compressed = compress_zstd(&archive, 19).unwrap();
        assert_eq!(&compressed[..4], &[0x28, 0xb5, 0x2f, 0xfd]);
        assert!(decompress_zstd(&compressed).unwrap() == archive);
    }

    #[test]
    fn malformed_archives_are_rejected() {
        let archive = write(&sample(), EPOCH, Vec::new()).unwrap();
        let mut trailing = archive.clone();
        trailing.extend_from_slice(b"\0\0\0\0junk");
        let mut bad_magic = archive.clone();
        bad_magic[5] = b'2';
        let cases: [(&str, &[u8]); 4] = [
            ("truncated", &archive[..archive.len() - 200]),
            ("no trailer", &archive[..archive.len() - 124]),
            ("trailing junk", &trailing),
            ("magic", &bad_magic),
        ];
        for (what, bytes) in cases {
            assert!(read(bytes).is_err(), "{what}");
        }
        let mut padded = archive.clone();
        padded.extend_from_slice(&[0; 512]);
        assert_eq!(read(&padded).unwrap().len(), sample().len() + 1);
    }

    #[test]
    fn find_reads_only_as_far_as_the_entry() {
        let archive = write(&sample(), EPOCH, Vec::new()).unwrap();
        let all = read(&archive).unwrap();
        for e in &all {
            let got = find(&archive[..], &e.name, 1 << 20).unwrap();
            assert_eq!(got.as_ref(), Some(e), "{}", e.name);
        }
        assert_eq!(
            find(&archive[..], "usr/bin/missing", 1 << 20).unwrap(),
            None
        );
        // It stops at the entry: the archive may be cut right after it.
        let lib = all
            .iter()
            .position(|e| e.name == "usr/lib/libx.so.1.0")
            .unwrap();
        let cut = archive
            .windows(19)
            .position(|w| w == b"usr/lib/libx.so.1.0")
            .unwrap()
            + 19
            + 4100;
        assert_eq!(
            find(&archive[..cut], "usr/lib/libx.so.1.0", 1 << 20).unwrap(),
            Some(all[lib].clone())
        );
        // A name not in the cut archive runs into the cut: an error, not "absent".
        assert!(find(&archive[..cut], "zzz", 1 << 20).is_err());
        // Bounded: an entry bigger than allowed is refused, not read.
        assert!(find(&archive[..], "usr/lib/libx.so.1.0", 4096).is_err());
        // Through a zstd stream, as an initramfs is read.
        let z = compress_zstd(&archive, 3).unwrap();
        let d = zstd::stream::read::Decoder::new(&z[..]).unwrap();
        assert_eq!(
            find(d, "etc/empty", 16).unwrap().map(|e| e.mode),
            Some(S_IFREG | 0o600)
        );
    }

    /// GNU cpio, if installed, must list exactly our entries and extract the same contents.
    #[test]
    fn gnu_cpio_agrees() {
        let cpio = std::path::Path::new("/usr/bin/cpio");
        if !cpio.exists() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI needs /usr/bin/cpio"
            );
            eprintln!("skipped: /usr/bin/cpio is not installed");
            return;
        }
        let tree = sample();
        let archive = write(&tree, EPOCH, Vec::new()).unwrap();
        let run = |args: &[&str], dir: &std::path::Path| {
            let mut child = std::process::Command::new(cpio)
                .args(args)
                .current_dir(dir)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(&archive).unwrap();
            let output = child.wait_with_output().unwrap();
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
            String::from_utf8(output.stdout).unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let listed = run(&["-t", "--quiet"], dir.path());
        let expected: Vec<&str> = std::iter::once(".")
            .chain(tree.iter().map(|(p, _)| p.as_str()))
            .collect();
        assert_eq!(listed.lines().collect::<Vec<_>>(), expected);
        // Extract without device nodes' privileges mattering: compare files and links only.
        run(
            &[
                "-i",
                "--quiet",
                "--no-absolute-filenames",
                "--make-directories",
                "--nonmatching",
                "dev/*",
            ],
            dir.path(),
        );
        for (path, node) in tree.iter().filter(|(p, _)| !p.starts_with("dev")) {
            let on_disk = dir.path().join(path);
            match &node.kind {
                NodeKind::File(data) => {
                    assert!(std::fs::read(&on_disk).unwrap() == data.to_vec(), "{path}")
                }
                NodeKind::Symlink(target) => assert_eq!(
                    std::fs::read_link(&on_disk).unwrap().to_str(),
                    Some(target.as_str())
                ),
                NodeKind::Dir => assert!(on_disk.is_dir()),
                NodeKind::CharDevice { .. } => {}
            }
        }
    }
}
