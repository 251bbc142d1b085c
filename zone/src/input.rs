//! Input files with a size limit: only regular files are opened (a device, FIFO or folder is
//! refused before any read, so `/dev/zero` cannot fill memory), the size is checked with `fstat`
//! against the caller's limit before reading, and a file whose size changes while it is read
//! (growing or shrinking, or a `/proc` file that reports size 0) is refused rather than read
//! without bound.

use std::fs::File;
use std::io::{self, Read as _};
use std::path::Path;

/// Why an input file was not read.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// Opening or reading failed (missing, permission, I/O error).
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The path names something other than a regular file.
    #[error("not a regular file (it is a {kind}); only regular files are read")]
    NotRegular {
        /// What it is: directory, FIFO, character device, ...
        kind: &'static str,
    },
    /// The file is larger than the limit.
    #[error("{size} bytes, over the limit of {}", human(*limit))]
    TooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The file's size changed between `fstat` and the end of the read.
    #[error("its size changed while it was read ({expected} bytes when opened, {found})")]
    Changed {
        /// The size `fstat` gave.
        expected: u64,
        /// What was found instead.
        found: String,
    },
}

/// `n` bytes in words: "64 MiB", "1 MiB", or bytes.
pub(crate) fn human(n: u64) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} bytes")
    }
}

/// Opens a regular file no larger than `limit` bytes; returns it with its size.
///
/// The path is checked with `stat` before opening, so a FIFO is refused instead of blocking the
/// open, and the opened file is checked again with `fstat` (the check that counts: the path may
/// have been replaced in between).
pub fn open_regular(path: &Path, limit: u64) -> Result<(File, u64), InputError> {
    let before = std::fs::metadata(path)?;
    if !before.file_type().is_file() {
        return Err(InputError::NotRegular {
            kind: imrs_config::fsutil::kind_name(before.file_type()),
        });
    }
    let file = File::open(path)?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(InputError::NotRegular {
            kind: imrs_config::fsutil::kind_name(meta.file_type()),
        });
    }
    if meta.len() > limit {
        return Err(InputError::TooLarge {
            size: meta.len(),
            limit,
        });
    }
    Ok((file, meta.len()))
}

/// Checks that an open file still has the size it had when it was opened (after a read by
/// pieces that stopped at that size).
pub fn check_unchanged(file: &File, expected: u64) -> Result<(), InputError> {
    let now = file.metadata()?.len();
    if now != expected {
        return Err(InputError::Changed {
            expected,
            found: format!("{now} bytes after"),
        });
    }
    Ok(())
}

/// Reads the rest of `file`, which `fstat` said has `len` bytes: exactly `len` bytes, and an
/// error if there are more (a growing file, or one whose reported size is wrong) or fewer.
pub fn read_exactly(file: &mut File, len: u64) -> Result<Vec<u8>, InputError> {
    let mut data = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    // One byte past the size tells a file that grew; nothing past it is read.
    file.take(len.saturating_add(1)).read_to_end(&mut data)?;
    let got = data.len() as u64;
    if got != len {
        return Err(InputError::Changed {
            expected: len,
            found: if got > len {
                format!("more than {len} bytes read")
            } else {
                format!("{got} bytes read")
            },
        });
    }
    Ok(data)
}

/// Reads a whole regular file of at most `limit` bytes.
pub fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, InputError> {
    let (mut file, len) = open_regular(path, limit)?;
    read_exactly(&mut file, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_regular_files_within_the_limit() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"hello").unwrap();
        assert_eq!(read_limited(&p, 5).unwrap(), b"hello");
        assert!(matches!(
            read_limited(&p, 4),
            Err(InputError::TooLarge { size: 5, limit: 4 })
        ));
    }

    #[test]
    fn refuses_what_is_not_a_regular_file() {
        let d = tempfile::tempdir().unwrap();
        for (path, what) in [
            (Path::new("/dev/zero"), "character device"),
            (d.path(), "directory"),
        ] {
            match read_limited(path, 1 << 20) {
                Err(InputError::NotRegular { kind }) => assert_eq!(kind, what),
                other => panic!("{}: {other:?}", path.display()),
            }
        }
        let missing = read_limited(&d.path().join("nope"), 1).unwrap_err();
        assert!(
            matches!(&missing, InputError::Io(e) if e.kind() == io::ErrorKind::NotFound),
            "{missing:?}"
        );
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("fifo");
        let status = std::process::Command::new("mkfifo")
            .arg(&p)
            .status()
            .unwrap();
        assert!(status.success());
        // Opening a FIFO for reading would wait for a writer forever.
        match read_limited(&p, 1 << 20) {
            Err(InputError::NotRegular { kind }) => assert_eq!(kind, "FIFO"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_file_whose_size_is_not_what_fstat_said_is_refused() {
        // /proc files are regular files that report size 0 and yield text: the read stops one
        // byte past the reported size instead of reading whatever the file yields.
        let err = read_limited(Path::new("/proc/self/status"), 1 << 20).unwrap_err();
        assert!(
            matches!(err, InputError::Changed { expected: 0, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("more than 0 bytes"), "{err}");
        // A file cut short after fstat.
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"0123456789").unwrap();
        let (mut f, len) = open_regular(&p, 100).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(4)
            .unwrap();
        let err = read_exactly(&mut f, len).unwrap_err();
        assert!(
            err.to_string()
                .contains("10 bytes when opened, 4 bytes read")
        );
        assert!(check_unchanged(&f, len).is_err());
    }

    #[test]
    fn sizes_in_words() {
        assert_eq!(human(64 << 20), "64 MiB");
        assert_eq!(human(1 << 20), "1 MiB");
        assert_eq!(human(4096), "4 KiB");
        assert_eq!(human(1000), "1000 bytes");
    }
}
