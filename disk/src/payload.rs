//! What goes into a slot: an image's kernel, initramfs, manifest and signature, checked against
//! each other (the kernel and initramfs must be the ones the manifest lists, by size and
//! sha256). Checking the manifest's signature is the caller's job, before this: the builder
//! and the flasher run `verify`, the init checks against the image's own key.

use imrs_config::image::Manifest;
use sha2::{Digest, Sha256};

use crate::error::DiskError;

/// Kernel file name, in an image folder and in a slot.
pub const KERNEL: &str = "vmlinuz";
/// Initramfs file name.
pub const INITRAMFS: &str = "initramfs.cpio.zst";
/// Manifest file name.
pub const MANIFEST: &str = "manifest.json";
/// Signature file name.
pub const SIGNATURE: &str = "manifest.sig";

/// An image's files, ready to be written into a slot.
#[derive(Debug, Clone)]
pub struct SlotPayload {
    manifest: Manifest,
    manifest_bytes: Vec<u8>,
    signature: Vec<u8>,
    kernel: Vec<u8>,
    initramfs: Vec<u8>,
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

impl SlotPayload {
    /// A payload from an image's (already signature-checked) manifest bytes and signature, and
    /// its kernel and initramfs, which must match the manifest's artifacts.
    pub fn new(
        manifest_bytes: Vec<u8>,
        signature: Vec<u8>,
        kernel: Vec<u8>,
        initramfs: Vec<u8>,
    ) -> Result<SlotPayload, DiskError> {
        let manifest: Manifest =
            serde_json::from_slice(&manifest_bytes).map_err(|e| DiskError::Payload {
                detail: format!("{MANIFEST} is not an image manifest: {e}"),
            })?;
        for (name, data) in [(KERNEL, &kernel), (INITRAMFS, &initramfs)] {
            let a = manifest
                .artifacts
                .iter()
                .find(|a| a.name == name)
                .ok_or_else(|| DiskError::Payload {
                    detail: format!("the manifest lists no {name}"),
                })?;
            let got = sha256_hex(data);
            if a.size != data.len() as u64 || a.sha256 != got {
                return Err(DiskError::Payload {
                    detail: format!(
                        "{name} is {} bytes with sha256 {got}; the manifest says {} bytes with \
                         sha256 {}",
                        data.len(),
                        a.size,
                        imrs_config::escape(&a.sha256)
                    ),
                });
            }
        }
        Ok(SlotPayload {
            manifest,
            manifest_bytes,
            signature,
            kernel,
            initramfs,
        })
    }

    /// A payload from an image folder's files (the caller verified the folder's signature).
    pub fn from_folder(dir: &std::path::Path) -> Result<SlotPayload, DiskError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|e| DiskError::Input {
                path,
                detail: format!("cannot read ({e})"),
            })
        };
        SlotPayload::new(
            read(MANIFEST)?,
            read(SIGNATURE)?,
            read(KERNEL)?,
            read(INITRAMFS)?,
        )
    }

    /// The parsed manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The manifest's bytes (what its signature covers).
    pub fn manifest_bytes(&self) -> &[u8] {
        &self.manifest_bytes
    }

    /// The manifest's signature file.
    pub fn signature(&self) -> &[u8] {
        &self.signature
    }

    /// sha256 of the manifest bytes (what `imrs.manifest=` carries).
    pub fn manifest_sha256(&self) -> String {
        sha256_hex(&self.manifest_bytes)
    }

    /// The slot's files in the order they are written (kernel and initramfs first, the manifest
    /// and its signature last).
    pub fn files(&self) -> [(&'static str, &[u8]); 4] {
        [
            (KERNEL, &self.kernel),
            (INITRAMFS, &self.initramfs),
            (MANIFEST, &self.manifest_bytes),
            (SIGNATURE, &self.signature),
        ]
    }

    /// Bytes of all files.
    pub fn total_len(&self) -> u64 {
        self.files().iter().map(|(_, d)| d.len() as u64).sum()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use imrs_config::image::{Artifact, canonical_json};

    /// A consistent payload for tests, `tag` making it distinct.
    pub fn payload(tag: &str, kernel_len: usize) -> SlotPayload {
        let kernel: Vec<u8> = (0..kernel_len).map(|i| (i % 251) as u8).collect();
        let initramfs = format!("initramfs {tag}").into_bytes();
        let m = Manifest::fixture(
            tag,
            "qemu",
            vec![
                Artifact::of(INITRAMFS, &initramfs),
                Artifact::of(KERNEL, &kernel),
            ],
        );
        SlotPayload::new(canonical_json(&m), b"sig\n".to_vec(), kernel, initramfs).unwrap()
    }

    #[test]
    fn a_payload_reads_from_an_image_folder() {
        let p = payload("7", 64);
        let d = tempfile::tempdir().unwrap();
        for (name, data) in p.files() {
            std::fs::write(d.path().join(name), data).unwrap();
        }
        let q = SlotPayload::from_folder(d.path()).unwrap();
        assert_eq!(q.manifest_sha256(), p.manifest_sha256());
        std::fs::remove_file(d.path().join(KERNEL)).unwrap();
        let e = SlotPayload::from_folder(d.path()).unwrap_err().to_string();
        assert!(e.contains("vmlinuz") && e.contains("cannot read"), "{e}");
    }

    #[test]
    fn a_payload_must_match_its_manifest() {
        let p = payload("1", 100);
        assert_eq!(
            p.total_len(),
            p.files().iter().map(|f| f.1.len() as u64).sum::<u64>()
        );
        let mut kernel = p.kernel.clone();
        kernel[0] ^= 1;
        let e = SlotPayload::new(
            p.manifest_bytes.clone(),
            vec![],
            kernel,
            p.initramfs.clone(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("slot payload: vmlinuz is 100 bytes with sha256"),
            "{e}"
        );
        let e = SlotPayload::new(b"{}".to_vec(), vec![], vec![], vec![]).unwrap_err();
        assert!(e.to_string().contains("not an image manifest"), "{e}");
    }
}
