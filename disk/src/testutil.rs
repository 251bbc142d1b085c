//! Test helpers: a device that loses power after a number of writes.

use std::io::{Cursor, Read, Seek, SeekFrom, Write};

use crate::device::Device;

/// An in-memory disk whose writes fail once `writes` of them have gone through: what a power
/// cut leaves behind is what was written before it (the slot writer syncs between steps, so
/// nothing written later can land earlier).
pub struct CutAfter {
    /// The bytes.
    pub inner: Cursor<Vec<u8>>,
    /// Writes still allowed.
    pub writes: usize,
    /// Writes refused so far.
    pub refused: usize,
}

impl CutAfter {
    /// A disk of `bytes` that allows `writes` writes.
    pub fn new(bytes: Vec<u8>, writes: usize) -> CutAfter {
        CutAfter {
            inner: Cursor::new(bytes),
            writes,
            refused: 0,
        }
    }
}

impl Read for CutAfter {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(b)
    }
}

impl Seek for CutAfter {
    fn seek(&mut self, p: SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(p)
    }
}

impl Write for CutAfter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.writes == 0 {
            self.refused += 1;
            return Err(std::io::Error::other("power cut"));
        }
        self.writes -= 1;
        self.inner.write(b)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Device for CutAfter {
    fn sync(&mut self) -> std::io::Result<()> {
        if self.writes == 0 {
            return Err(std::io::Error::other("power cut"));
        }
        Ok(())
    }
}
