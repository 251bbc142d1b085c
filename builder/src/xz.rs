//! Block-parallel XZ decoding for Debian packages: dpkg compresses large packages in independent
//! 24 MiB blocks (the kernel's `data.tar.xz` has 17), which are decoded on all cores and read back
//! in order. Each block is wrapped in a one-block stream so liblzma still checks its CRC64 and
//! sizes; anything unusual falls back to the sequential decoder.
use std::collections::BTreeMap;
use std::io::{self, Read};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

const HEADER_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0];
const FOOTER_MAGIC: &[u8] = b"YZ";

/// A block's place in the stream, from the stream index.
struct Block {
    offset: usize,
    unpadded: u64,
    uncompressed: u64,
}

/// Runs `consume` on a reader of the decompressed `data`: block-parallel for a single
/// stream with several blocks, a plain sequential decoder otherwise.
pub(crate) fn with_reader<T>(data: &[u8], consume: impl FnOnce(&mut dyn Read) -> T) -> T {
    let workers = std::thread::available_parallelism().map_or(1, usize::from);
    let blocks = match index(data) {
        Some(blocks) if blocks.len() > 1 && workers > 1 => blocks,
        _ => return consume(&mut liblzma::read::XzDecoder::new(data)),
    };
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::sync_channel(workers);
        for _ in 0..workers.min(blocks.len()) {
            let tx = tx.clone();
            let (next, blocks) = (&next, &blocks);
            scope.spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(block) = blocks.get(i) else { break };
                    if tx.send((i, decode_block(data, block))).is_err() {
                        break; // The reader is gone (it failed or finished).
                    }
                }
            });
        }
        drop(tx);
        let mut reader = Ordered {
            rx,
            pending: BTreeMap::new(),
            next: 0,
            count: blocks.len(),
            current: io::Cursor::new(Vec::new()),
        };
        consume(&mut reader)
    })
}

/// Decoded blocks, handed out in stream order.
struct Ordered {
    rx: mpsc::Receiver<(usize, io::Result<Vec<u8>>)>,
    pending: BTreeMap<usize, io::Result<Vec<u8>>>,
    next: usize,
    count: usize,
    current: io::Cursor<Vec<u8>>,
}

impl Read for Ordered {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = self.current.read(buf)?;
            if n > 0 || buf.is_empty() || self.next == self.count {
                return Ok(n);
            }
            while !self.pending.contains_key(&self.next) {
                let (i, block) = self.rx.recv().map_err(|_| {
                    io::Error::new(io::ErrorKind::UnexpectedEof, "xz block decoder stopped")
                })?;
                self.pending.insert(i, block);
            }
            let block = self
                .pending
                .remove(&self.next)
                .unwrap_or_else(|| Ok(Vec::new()));
            self.current = io::Cursor::new(block?);
            self.next += 1;
        }
    }
}

/// Decodes one block by wrapping it in a one-block stream of its own, so that liblzma
/// checks the block's integrity check and sizes as usual.
fn decode_block(data: &[u8], block: &Block) -> io::Result<Vec<u8>> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "corrupt xz index");
    let padded = usize::try_from(block.unpadded.next_multiple_of(4)).map_err(|_| bad())?;
    let bytes = data
        .get(block.offset..block.offset + padded)
        .ok_or_else(bad)?;
    let mut index = vec![0];
    for value in [1, block.unpadded, block.uncompressed] {
        put_varint(&mut index, value);
    }
    index.resize(index.len().next_multiple_of(4), 0);
    let crc = crc32(&index);
    index.extend_from_slice(&crc.to_le_bytes());
    let mut stream = Vec::with_capacity(padded + index.len() + 24);
    stream.extend_from_slice(&data[..12]);
    stream.extend_from_slice(bytes);
    stream.extend_from_slice(&index);
    let mut footer = ((index.len() / 4 - 1) as u32).to_le_bytes().to_vec();
    footer.extend_from_slice(&data[6..8]);
    stream.extend_from_slice(&crc32(&footer).to_le_bytes());
    stream.extend_from_slice(&footer);
    stream.extend_from_slice(FOOTER_MAGIC);
    let mut out = Vec::with_capacity(usize::try_from(block.uncompressed).map_err(|_| bad())?);
    liblzma::read::XzDecoder::new(&stream[..]).read_to_end(&mut out)?;
    Ok(out)
}

/// The blocks of a single-stream file, or `None` for anything else (the sequential
/// decoder then handles it and reports any corruption).
fn index(data: &[u8]) -> Option<Vec<Block>> {
    if data.len() < 24 || &data[..6] != HEADER_MAGIC || &data[data.len() - 2..] != FOOTER_MAGIC {
        return None;
    }
    let footer = &data[data.len() - 12..];
    if footer[8..10] != data[6..8] || crc32(&footer[4..10]).to_le_bytes() != footer[..4] {
        return None;
    }
    let backward = (u32::from_le_bytes(footer[4..8].try_into().ok()?) as usize + 1) * 4;
    let index_start = data.len().checked_sub(12 + backward)?;
    let index = &data[index_start..data.len() - 12];
    if index[0] != 0 || crc32(&index[..backward - 4]).to_le_bytes() != index[backward - 4..] {
        return None;
    }
    let mut pos = 1;
    let count = get_varint(index, &mut pos)?;
    let mut blocks = Vec::new();
    let mut offset = 12;
    for _ in 0..count {
        let unpadded = get_varint(index, &mut pos)?;
        let uncompressed = get_varint(index, &mut pos)?;
        blocks.push(Block {
            offset,
            unpadded,
            uncompressed,
        });
        offset = offset.checked_add(usize::try_from(unpadded.next_multiple_of(4)).ok()?)?;
    }
    (offset == index_start).then_some(blocks)
}

/// The number of blocks the index lists (0 if it is not a parsable single stream).
#[cfg(test)]
pub(crate) fn block_count(data: &[u8]) -> usize {
    index(data).map_or(0, |blocks| blocks.len())
}

fn get_varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..63).step_by(7) {
        let byte = *buf.get(*pos)?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn put_varint(buf: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        buf.push((value as u8) | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

/// CRC-32 (IEEE), as used by the xz container.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xedb8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}
