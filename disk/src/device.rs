//! The byte stores a disk lives on: [`Device`] (read, write, seek, and make durable) for a disk
//! image file, a block device, an in-memory disk (`Cursor<Vec<u8>>`, for tests), and
//! [`Window`], a view of one partition's byte range that FAT and GPT code can use as if it were
//! the whole device. No mount, no loop device: the same code runs in the builder, in the flasher
//! and in the appliance's init.

use std::fs::File;
use std::io::{self, Cursor, Read, Seek, SeekFrom, Write};

/// Something a disk can be read from and written to, with a durability barrier.
pub trait Device: Read + Write + Seek {
    /// Makes everything written so far durable (fsync on a file or block device). The slot
    /// writer calls it between the steps whose order makes an update crash-safe.
    fn sync(&mut self) -> io::Result<()>;
}

impl Device for File {
    fn sync(&mut self) -> io::Result<()> {
        self.flush()?;
        self.sync_all()
    }
}

impl Device for Cursor<Vec<u8>> {
    fn sync(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Device for Cursor<&mut Vec<u8>> {
    fn sync(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<D: Device + ?Sized> Device for &mut D {
    fn sync(&mut self) -> io::Result<()> {
        (**self).sync()
    }
}

/// A device whose writes fail once `writes` of them have gone through: what a power cut
/// leaves behind is what was written before it (the slot writer syncs between its steps, so
/// nothing written later can land earlier). The slot writer's tests cut it at every write; the
/// lab's `power-cut-update` scenario cuts an update of the appliance disk with it.
#[derive(Debug)]
pub struct CutAfter<D> {
    /// The device.
    pub inner: D,
    /// Writes still allowed.
    pub writes: usize,
    /// Writes refused so far.
    pub refused: usize,
}

impl<D> CutAfter<D> {
    /// `inner`, allowing `writes` writes.
    pub fn new(inner: D, writes: usize) -> CutAfter<D> {
        CutAfter {
            inner,
            writes,
            refused: 0,
        }
    }
}

impl CutAfter<Cursor<Vec<u8>>> {
    /// An in-memory disk of `bytes` that allows `writes` writes.
    pub fn in_memory(bytes: Vec<u8>, writes: usize) -> Self {
        CutAfter::new(Cursor::new(bytes), writes)
    }
}

impl<D: Read> Read for CutAfter<D> {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        self.inner.read(b)
    }
}

impl<D: Seek> Seek for CutAfter<D> {
    fn seek(&mut self, p: SeekFrom) -> io::Result<u64> {
        self.inner.seek(p)
    }
}

impl<D: Write> Write for CutAfter<D> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        if self.writes == 0 {
            self.refused += 1;
            return Err(io::Error::other("power cut"));
        }
        self.writes -= 1;
        self.inner.write(b)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<D: Device> Device for CutAfter<D> {
    fn sync(&mut self) -> io::Result<()> {
        if self.writes == 0 {
            return Err(io::Error::other("power cut"));
        }
        self.inner.sync()
    }
}

/// A window over `len` bytes of a device starting at `start`: position 0 of the window is byte
/// `start` of the device; reads stop at the window's end and writes past it fail. Every access
/// seeks the device first, so several windows (or the GPT code) may share one device in turn.
#[derive(Debug)]
pub struct Window<D> {
    inner: D,
    start: u64,
    len: u64,
    pos: u64,
}

impl<D> Window<D> {
    /// A window over `inner[start .. start + len]`.
    pub fn new(inner: D, start: u64, len: u64) -> Self {
        Window {
            inner,
            start,
            len,
            pos: 0,
        }
    }

    /// Byte offset of the window on the device.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Length of the window in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the window is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device.
    pub fn get_mut(&mut self) -> &mut D {
        &mut self.inner
    }

    /// Gives the device back.
    pub fn into_inner(self) -> D {
        self.inner
    }
}

impl<D: Seek> Window<D> {
    fn place(&mut self) -> io::Result<()> {
        self.inner.seek(SeekFrom::Start(self.start + self.pos))?;
        Ok(())
    }
}

impl<D: Read + Seek> Read for Window<D> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        if n == 0 {
            return Ok(0);
        }
        self.place()?;
        let got = self.inner.read(&mut buf[..n])?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl<D: Write + Seek> Write for Window<D> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let left = self.len.saturating_sub(self.pos);
        if left == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!(
                    "write past the end of the partition ({} bytes at byte {})",
                    self.len, self.start
                ),
            ));
        }
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        self.place()?;
        let put = self.inner.write(&buf[..n])?;
        self.pos += put as u64;
        Ok(put)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<D: Seek> Seek for Window<D> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match target {
            Some(p) => {
                self.pos = p;
                Ok(p)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the partition",
            )),
        }
    }
}

impl<D: Device> Device for Window<D> {
    fn sync(&mut self) -> io::Result<()> {
        self.inner.sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_is_confined_to_its_range() {
        let mut disk = Cursor::new(vec![0u8; 64]);
        let mut w = Window::new(&mut disk, 16, 16);
        w.write_all(&[1; 16]).unwrap();
        assert!(w.write_all(&[2]).is_err(), "no write past the end");
        w.seek(SeekFrom::Start(0)).unwrap();
        let mut all = Vec::new();
        w.read_to_end(&mut all).unwrap();
        assert_eq!(all, vec![1; 16]);
        assert_eq!(w.seek(SeekFrom::End(-4)).unwrap(), 12);
        assert!(w.seek(SeekFrom::Current(-20)).is_err());
        let bytes = disk.into_inner();
        assert_eq!(&bytes[..16], &[0; 16]);
        assert_eq!(&bytes[16..32], &[1; 16]);
        assert_eq!(&bytes[32..], &[0; 32]);
    }
}
