//! GUIDs: the GPT's partition type GUIDs, and disk, partition and file system identifiers
//! derived from a seed (the image's manifest sha256), so that the same image always gives the
//! same disk and two images never share identifiers.

use sha2::{Digest, Sha256};

/// A GUID in the order it is written as text (`C12A7328-F81F-11D2-...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Guid(pub [u8; 16]);

/// GPT type of an EFI system partition.
pub const ESP_TYPE: Guid = Guid::from_u128(0xC12A7328_F81F_11D2_BA4B_00A0C93EC93B);
/// GPT type "Linux filesystem data" (the config and data partitions; the init finds them by
/// name, not type).
pub const LINUX_FS_TYPE: Guid = Guid::from_u128(0x0FC63DAF_8483_4772_8E79_3D69D8477DE4);

impl Guid {
    /// From the 128-bit number the text spells.
    pub const fn from_u128(v: u128) -> Guid {
        Guid(v.to_be_bytes())
    }

    /// A random-looking (RFC 4122 version 4 layout) GUID derived from `seed` and a `purpose`
    /// label: sha256 over both, the version and variant bits set.
    pub fn derive(seed: &[u8], purpose: &str) -> Guid {
        let mut h = Sha256::new();
        h.update(b"imrs-disk guid\0");
        h.update(seed);
        h.update(b"\0");
        h.update(purpose.as_bytes());
        let d = h.finalize();
        let mut b = [0u8; 16];
        b.copy_from_slice(&d[..16]);
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        Guid(b)
    }

    /// A 32-bit FAT volume id derived like [`Guid::derive`].
    pub fn derive_u32(seed: &[u8], purpose: &str) -> u32 {
        let g = Guid::derive(seed, purpose).0;
        u32::from_be_bytes([g[0], g[1], g[2], g[3]])
    }

    /// The on-disk GPT encoding: the first three fields little-endian.
    pub fn to_gpt_bytes(self) -> [u8; 16] {
        let b = self.0;
        [
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13],
            b[14], b[15],
        ]
    }

    /// From the on-disk GPT encoding.
    pub fn from_gpt_bytes(g: [u8; 16]) -> Guid {
        // The swap is its own inverse.
        Guid(g).to_gpt_bytes().into()
    }
}

impl From<[u8; 16]> for Guid {
    fn from(b: [u8; 16]) -> Guid {
        Guid(b)
    }
}

impl std::fmt::Display for Guid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let h = hex::encode(self.0);
        write!(
            f,
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_gpt_encodings() {
        assert_eq!(ESP_TYPE.to_string(), "c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
        // The ESP type as it appears on disk (UEFI spec, little-endian first three fields).
        assert_eq!(
            ESP_TYPE.to_gpt_bytes(),
            [
                0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e,
                0xc9, 0x3b
            ]
        );
        assert_eq!(Guid::from_gpt_bytes(ESP_TYPE.to_gpt_bytes()), ESP_TYPE);
    }

    #[test]
    fn derived_guids_are_stable_distinct_and_version_4() {
        let a = Guid::derive(b"seed", "esp");
        assert_eq!(a, Guid::derive(b"seed", "esp"));
        assert_ne!(a, Guid::derive(b"seed", "data"));
        assert_ne!(a, Guid::derive(b"other", "esp"));
        let t = a.to_string();
        assert_eq!(&t[14..15], "4", "{t}");
        assert!("89ab".contains(&t[19..20]), "{t}");
        assert_ne!(
            Guid::derive_u32(b"seed", "esp"),
            Guid::derive_u32(b"seed", "config")
        );
    }
}
