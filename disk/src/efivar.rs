//! What systemd-boot tells the booted system through EFI variables (vendor GUID
//! `4a67b082-0a4c-41cf-b6c7-440b29bb8c4f`), as read from efivarfs: 4 attribute bytes, then the
//! value, UTF-16LE with a terminating NUL (docs/facts.md "Boot slots on UEFI").
//!
//! - `LoaderBootCountPath`: the ESP path of the entry file being tried, with its counter as
//!   renamed before the kernel started (`\loader\entries\imrs-b+2-1.conf`); present only when
//!   the booted entry has a counter. The init blesses this file.
//! - `LoaderEntrySelected`: the id of the entry booted (its file name).

use crate::entry::EntryName;
use crate::error::DiskError;

/// systemd-boot's vendor GUID for its variables.
pub const LOADER_VENDOR_GUID: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";
/// The variable naming the counted entry being tried.
pub const BOOT_COUNT_PATH: &str = "LoaderBootCountPath";
/// The variable naming the entry booted.
pub const ENTRY_SELECTED: &str = "LoaderEntrySelected";
/// Largest value read (a path of a few dozen characters).
pub const MAX_VALUE_BYTES: usize = 4096;

/// The file name of `var` in efivarfs (`/sys/firmware/efi/efivars/<name>`).
pub fn efivarfs_name(var: &str) -> String {
    format!("{var}-{LOADER_VENDOR_GUID}")
}

/// Decodes an efivarfs file's bytes (4 attribute bytes, UTF-16LE, trailing NULs) to text.
pub fn decode(name: &'static str, bytes: &[u8]) -> Result<String, DiskError> {
    let bad = |detail: String| DiskError::Efivar { name, detail };
    if bytes.len() > MAX_VALUE_BYTES {
        return Err(bad(format!(
            "{} bytes, more than the {MAX_VALUE_BYTES} a boot loader path takes",
            bytes.len()
        )));
    }
    let Some(value) = bytes.get(4..) else {
        return Err(bad(format!(
            "{} bytes, shorter than the 4 attribute bytes efivarfs puts first",
            bytes.len()
        )));
    };
    if value.len() % 2 != 0 {
        return Err(bad(format!(
            "a value of {} bytes is not UTF-16 (odd length)",
            value.len()
        )));
    }
    let mut units: Vec<u16> = value
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    while units.last() == Some(&0) {
        units.pop();
    }
    if units.contains(&0) {
        return Err(bad("a NUL inside the value".into()));
    }
    let text = String::from_utf16(&units).map_err(|_| bad("not valid UTF-16".into()))?;
    if text.is_empty() {
        return Err(bad("empty value".into()));
    }
    Ok(text)
}

/// The entry named by `LoaderBootCountPath` (`\loader\entries\imrs-b+2-1.conf`): `None` when
/// the file is not one of our entries. A path outside `\loader\entries\` is an error.
pub fn boot_count_path(bytes: &[u8]) -> Result<Option<EntryName>, DiskError> {
    let text = decode(BOOT_COUNT_PATH, bytes)?;
    let path = text.replace('\\', "/");
    let rel = path.trim_start_matches('/');
    const DIR: &str = "loader/entries/";
    // FAT is case-insensitive: the firmware may spell the folders in another case. `get`
    // keeps a multi-byte character at the cut from panicking.
    let file = rel
        .get(..DIR.len())
        .filter(|d| d.eq_ignore_ascii_case(DIR))
        .and_then(|_| rel.get(DIR.len()..))
        .filter(|f| !f.contains('/'))
        .ok_or_else(|| DiskError::Efivar {
            name: BOOT_COUNT_PATH,
            detail: format!(
                "{} is not a file in \\loader\\entries",
                imrs_config::escape(&text)
            ),
        })?;
    Ok(EntryName::parse(file))
}

/// The entry named by `LoaderEntrySelected` (`imrs-b+2-1.conf`; accepted without `.conf`):
/// `None` when it is not one of ours.
pub fn entry_selected(bytes: &[u8]) -> Result<Option<EntryName>, DiskError> {
    let text = decode(ENTRY_SELECTED, bytes)?;
    Ok(EntryName::parse(&text).or_else(|| EntryName::parse(&format!("{text}.conf"))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::Slot;

    fn var(text: &str) -> Vec<u8> {
        let mut b = vec![0x07, 0, 0, 0];
        for u in text.encode_utf16().chain([0]) {
            b.extend_from_slice(&u.to_le_bytes());
        }
        b
    }

    #[test]
    fn boot_count_paths_name_the_entry_being_tried() {
        let e = boot_count_path(&var("\\loader\\entries\\imrs-b+2-1.conf"))
            .unwrap()
            .unwrap();
        assert_eq!(
            (e.slot, e.tries_left(), e.tries_done()),
            (Slot::B, Some(2), 1)
        );
        let e = boot_count_path(&var("\\LOADER\\Entries\\imrs-a+0-3.conf"))
            .unwrap()
            .unwrap();
        assert_eq!((e.slot, e.tries_left()), (Slot::A, Some(0)));
        assert_eq!(
            boot_count_path(&var("\\loader\\entries\\other+1.conf")).unwrap(),
            None
        );
        let e = boot_count_path(&var("\\EFI\\x\\imrs-a+1.conf")).unwrap_err();
        assert!(e.to_string().contains("not a file in"), "{e}");
    }

    #[test]
    fn entry_selected_with_or_without_suffix() {
        let e = entry_selected(&var("imrs-a+1-2.conf")).unwrap().unwrap();
        assert_eq!(
            (e.slot, e.tries_left(), e.tries_done()),
            (Slot::A, Some(1), 2)
        );
        let e = entry_selected(&var("imrs-b")).unwrap().unwrap();
        assert!(e.is_blessed());
        assert_eq!(
            entry_selected(&var("auto-reboot-to-firmware-setup")).unwrap(),
            None
        );
    }

    #[test]
    fn malformed_values_are_named() {
        for (bytes, want) in [
            (vec![7, 0], "shorter than the 4 attribute bytes"),
            (vec![7, 0, 0, 0, b'a'], "odd length"),
            (vec![7, 0, 0, 0, 0, 0], "empty value"),
            (vec![7, 0, 0, 0, b'a', 0, 0, 0, b'b', 0], "a NUL inside"),
            (vec![7, 0, 0, 0, 0x00, 0xd8], "not valid UTF-16"),
            (vec![0; 5000], "more than the 4096"),
        ] {
            let e = decode(ENTRY_SELECTED, &bytes).unwrap_err().to_string();
            assert!(e.starts_with("EFI variable LoaderEntrySelected: "), "{e}");
            assert!(e.contains(want), "{e}");
        }
    }
}
