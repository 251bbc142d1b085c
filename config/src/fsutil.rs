//! Files in and out, safely.
//!
//! Writing ([`write_atomic`]): the data goes to a temporary file in the same folder, is fsynced,
//! gets its mode, is renamed over the target, and the folder is fsynced, so that a reader or a
//! power cut never sees half of a file. On failure the temporary file is removed and the old
//! file stands.
//!
//! Reading ([`read_bounded`]): every file an imrs program reads has a size limit ([`limits`]), so
//! `/dev/zero`, a sparse terabyte or a FIFO given by mistake (or planted on a disk) is refused
//! with an error naming the file and the limit instead of exhausting memory or blocking. Only
//! regular files are read, and never more than the limit plus one byte.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::escape_path;

/// The size limits of the files imrs programs read, in bytes: generous for any real file,
/// finite for everything else.
pub mod limits {
    /// A site config (`site.toml`).
    pub const SITE: u64 = 256 << 10;
    /// A detached signature (`*.sig`: 128 hex digits and a newline).
    pub const SIGNATURE: u64 = 4 << 10;
    /// A recipe (`images/*.toml`).
    pub const RECIPE: u64 = 256 << 10;
    /// A hardware profile (`images/profiles/*.toml`).
    pub const PROFILE: u64 = 64 << 10;
    /// A package lock (`images/*.lock.json`).
    pub const LOCK: u64 = 4 << 20;
    /// An image manifest (`manifest.json`).
    pub const MANIFEST: u64 = 4 << 20;
    /// The image's description of itself (`/etc/imrs/image.json`).
    pub const IMAGE_INFO: u64 = 1 << 20;
    /// A PEM key file.
    pub const KEY: u64 = 16 << 10;
    /// A file a recipe copies into the image (`files.source`).
    pub const RECIPE_FILE: u64 = 64 << 20;
}

/// A file could not be read within its limits.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Opening or reading failed.
    #[error("{}: cannot read the {what}", escape_path(.path))]
    Io {
        /// The file.
        path: PathBuf,
        /// What the file is (`site config`, `lock file`, ...).
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than the limit for its kind.
    #[error("{}: the {what} is larger than the limit of {limit} bytes", escape_path(.path))]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// What the file is.
        what: &'static str,
        /// The limit in bytes.
        limit: u64,
    },
    /// The path names a directory, FIFO, socket or device.
    #[error("{}: the {what} is a {kind}, not a regular file", escape_path(.path))]
    NotRegular {
        /// The file.
        path: PathBuf,
        /// What the file is.
        what: &'static str,
        /// `directory`, `FIFO`, `socket`, `character device`, `block device`.
        kind: &'static str,
    },
    /// The file should be text and is not UTF-8.
    #[error("{}: the {what} is not UTF-8 text (invalid byte at offset {offset})", escape_path(.path))]
    NotUtf8 {
        /// The file.
        path: PathBuf,
        /// What the file is.
        what: &'static str,
        /// Offset of the first invalid byte.
        offset: usize,
    },
}

impl ReadError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            ReadError::Io { path, .. }
            | ReadError::TooLarge { path, .. }
            | ReadError::NotRegular { path, .. }
            | ReadError::NotUtf8 { path, .. } => path,
        }
    }

    /// Whether the file does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ReadError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// What kind of file system object `ft` is, for messages (`directory`, `FIFO`, `symbolic link`,
/// ...).
pub fn kind_name(ft: std::fs::FileType) -> &'static str {
    if ft.is_symlink() {
        "symbolic link"
    } else if ft.is_dir() {
        "directory"
    } else if ft.is_fifo() {
        "FIFO"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_char_device() {
        "character device"
    } else if ft.is_block_device() {
        "block device"
    } else {
        "special file"
    }
}

/// Reads the regular file `path` (symbolic links followed), refusing it when it is larger than
/// `limit` bytes; `what` names the kind of file in errors (`site config`, `lock file`).
///
/// The file is opened non-blocking, so a FIFO is refused instead of waiting for a writer, and
/// at most `limit + 1` bytes are ever read, whatever the file claims its size is.
pub fn read_bounded(path: &Path, limit: u64, what: &'static str) -> Result<Vec<u8>, ReadError> {
    let io = |source| ReadError::Io {
        path: path.to_path_buf(),
        what,
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.file_type().is_file() {
        return Err(ReadError::NotRegular {
            path: path.to_path_buf(),
            what,
            kind: kind_name(meta.file_type()),
        });
    }
    if meta.len() > limit {
        return Err(ReadError::TooLarge {
            path: path.to_path_buf(),
            what,
            limit,
        });
    }
    read_bounded_from(file, path, limit, what)
}

/// [`read_bounded`] for callers that work with `std::io::Error` (state, outbox, zone record):
/// a missing file keeps its `NotFound` kind, a non-regular file is `InvalidInput`, a file over
/// `limit` bytes is `InvalidData`; messages name the limit.
pub fn read_limited(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    read_bounded(path, limit, "file").map_err(|e| match e {
        ReadError::Io { source, .. } => source,
        ReadError::TooLarge { limit, .. } => std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than the {limit} bytes allowed"),
        ),
        ReadError::NotRegular { kind, .. } => std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("not a regular file (a {kind})"),
        ),
        ReadError::NotUtf8 { .. } => {
            std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
        }
    })
}

/// [`read_bounded`], as UTF-8 text.
pub fn read_bounded_string(
    path: &Path,
    limit: u64,
    what: &'static str,
) -> Result<String, ReadError> {
    String::from_utf8(read_bounded(path, limit, what)?).map_err(|e| ReadError::NotUtf8 {
        path: path.to_path_buf(),
        what,
        offset: e.utf8_error().valid_up_to(),
    })
}

/// Reads everything from `reader` (already opened from `path`) unless it holds more than
/// `limit` bytes; reads at most `limit + 1` bytes.
pub fn read_bounded_from(
    reader: impl Read,
    path: &Path,
    limit: u64,
    what: &'static str,
) -> Result<Vec<u8>, ReadError> {
    let mut data = Vec::new();
    reader
        .take(limit.saturating_add(1))
        .read_to_end(&mut data)
        .map_err(|source| ReadError::Io {
            path: path.to_path_buf(),
            what,
            source,
        })?;
    if u64::try_from(data.len()).unwrap_or(u64::MAX) > limit {
        return Err(ReadError::TooLarge {
            path: path.to_path_buf(),
            what,
            limit,
        });
    }
    Ok(data)
}

/// Fsyncs a folder (makes a rename in it durable).
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces `path` with `data` atomically and durably, with permission bits `mode`.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Hidden and ending in `.tmp`, so folder scanners (the outbox) skip and clean up leftovers.
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_and_sets_mode_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f.json");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
        // A target that cannot be replaced (a directory): the error comes back, no temp is left.
        std::fs::create_dir(d.path().join("dir")).unwrap();
        std::fs::write(d.path().join("dir/x"), b"x").unwrap();
        assert!(write_atomic(&d.path().join("dir"), b"x", 0o644).is_err());
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 2);
    }

    /// Counts the bytes read through it.
    struct Counting<R> {
        inner: R,
        read: u64,
    }

    impl<R: Read> Read for Counting<R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.read += n as u64;
            Ok(n)
        }
    }

    #[test]
    fn dev_zero_is_read_no_further_than_the_limit_plus_one() {
        let limit = 100_000;
        let mut counting = Counting {
            inner: File::open("/dev/zero").unwrap(),
            read: 0,
        };
        let err = read_bounded_from(&mut counting, Path::new("/dev/zero"), limit, "site config")
            .unwrap_err();
        assert_eq!(counting.read, limit + 1);
        assert_eq!(
            err.to_string(),
            "/dev/zero: the site config is larger than the limit of 100000 bytes"
        );
        // By path, the character device is refused before anything is read.
        let err = read_bounded(Path::new("/dev/zero"), limit, "lock file").unwrap_err();
        assert_eq!(
            err.to_string(),
            "/dev/zero: the lock file is a character device, not a regular file"
        );
    }

    #[test]
    fn limits_regular_files_exactly() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("site.toml");
        std::fs::write(&p, vec![b'x'; 1024]).unwrap();
        assert_eq!(read_bounded(&p, 1024, "site config").unwrap().len(), 1024);
        let err = read_bounded(&p, 1023, "site config").unwrap_err();
        assert!(
            matches!(err, ReadError::TooLarge { limit: 1023, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("site.toml"), "{err}");
        // A sparse terabyte is refused at once.
        let f = File::create(d.path().join("huge")).unwrap();
        f.set_len(1 << 40).unwrap();
        let t = std::time::Instant::now();
        assert!(matches!(
            read_bounded(&d.path().join("huge"), 1 << 20, "recipe"),
            Err(ReadError::TooLarge { .. })
        ));
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
        // Text: invalid UTF-8 is named with its offset.
        std::fs::write(&p, b"ab\xffc").unwrap();
        let err = read_bounded_string(&p, 100, "site config").unwrap_err();
        assert!(matches!(err, ReadError::NotUtf8 { offset: 2, .. }), "{err}");
        // Missing and directories.
        assert!(
            read_bounded(&d.path().join("missing"), 10, "recipe")
                .unwrap_err()
                .is_not_found()
        );
        assert!(matches!(
            read_bounded(d.path(), 10, "recipe"),
            Err(ReadError::NotRegular {
                kind: "directory",
                ..
            })
        ));
    }

    #[test]
    fn io_flavoured_reads_keep_the_kinds_callers_match() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"12345").unwrap();
        assert_eq!(read_limited(&p, 5).unwrap(), b"12345");
        let e = read_limited(&p, 4).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("4 bytes"), "{e}");
        let e = read_limited(Path::new("/dev/zero"), 1 << 20).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        assert_eq!(
            read_limited(&d.path().join("missing"), 1)
                .unwrap_err()
                .kind(),
            std::io::ErrorKind::NotFound
        );
        assert!(read_limited(d.path(), 10).is_err());
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("site.toml");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Without a writer a blocking open would never return: run it on a thread and give up
        // (failing the test) after a few seconds.
        let (tx, rx) = std::sync::mpsc::channel();
        let p = fifo.clone();
        std::thread::spawn(move || {
            let _ = tx.send(read_bounded(&p, 10, "site config").map_err(|e| e.to_string()));
        });
        let got = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("reading a FIFO blocked");
        let err = got.unwrap_err();
        assert!(
            err.ends_with("the site config is a FIFO, not a regular file"),
            "{err}"
        );
    }
}
