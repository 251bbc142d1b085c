//! The ELF `vmlinux` inside a Debian `vmlinuz` (an x86 bzImage with an xz payload).
//!
//! Under QEMU's TCG, booting the ELF through its PVH entry note skips the bzImage's real-mode
//! setup and in-guest decompression, about 3 s per boot on the build machines (docs/lab-notes.md). The
//! image still ships the bzImage (what a bootloader on the appliance boots); this is only for VMs.

use std::io::Read;

/// Offsets in the bzImage setup header (Documentation/arch/x86/boot.rst).
const SETUP_SECTS: usize = 0x1f1;
const HEADER_MAGIC: usize = 0x202;
const PAYLOAD_OFFSET: usize = 0x248;
const PAYLOAD_LENGTH: usize = 0x24c;

/// Why no vmlinux could be taken out of a kernel image.
#[derive(Debug, thiserror::Error)]
pub enum BzImageError {
    /// Not a bzImage (no `HdrS` header) or fields out of range.
    #[error("not a bzImage: {0}")]
    Format(&'static str),
    /// The payload is not xz, or does not decompress.
    #[error("the bzImage payload is not an xz-compressed ELF")]
    Payload(#[source] std::io::Error),
}

fn u32_at(d: &[u8], off: usize) -> Option<u32> {
    d.get(off..off + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Decompresses the payload of a bzImage and returns the ELF `vmlinux`.
pub fn vmlinux(bz: &[u8]) -> Result<Vec<u8>, BzImageError> {
    if bz.get(HEADER_MAGIC..HEADER_MAGIC + 4) != Some(b"HdrS") {
        return Err(BzImageError::Format("no HdrS magic"));
    }
    let setup_sects = match bz.get(SETUP_SECTS) {
        Some(0) => 4,
        Some(&n) => n as usize,
        None => return Err(BzImageError::Format("truncated header")),
    };
    let pm_start = (setup_sects + 1) * 512;
    let off = u32_at(bz, PAYLOAD_OFFSET).ok_or(BzImageError::Format("truncated header"))? as usize;
    let len = u32_at(bz, PAYLOAD_LENGTH).ok_or(BzImageError::Format("truncated header"))? as usize;
    let payload = bz
        .get(pm_start + off..pm_start + off + len)
        .ok_or(BzImageError::Format("payload outside the file"))?;
    if !payload.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        return Err(BzImageError::Format("payload is not xz"));
    }
    let mut out = Vec::with_capacity(len * 4);
    // The payload may be followed by padding: read the first xz stream only.
    liblzma::read::XzDecoder::new(payload)
        .read_to_end(&mut out)
        .map_err(BzImageError::Payload)?;
    if !out.starts_with(b"\x7fELF") {
        return Err(BzImageError::Format("payload is not an ELF"));
    }
    Ok(out)
}
