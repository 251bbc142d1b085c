//! imrs-disk: what an IMRS appliance disk is, for the builder (`imrs-build disk`), the flasher
//! and the appliance's init alike. Everything the init needs is pure Rust and works on any
//! [`Device`] (a disk image file, a block device, the appliance's own disk, a `Cursor` in
//! tests), with no mount and no host tool.
//!
//! - [`layout`]: the GPT (`IMRS-ESP`, `IMRS-CONFIG`, `IMRS-DATA`, 1 MiB aligned, GUIDs derived
//!   from the image's manifest sha256), finding a partition by name.
//! - [`device`]: [`Device`] (read/write/seek + sync) and [`Window`], one partition's bytes.
//! - [`esp`]: the EFI system partition and its two slots: [`Esp::open`], [`Esp::slots`],
//!   [`Esp::write_slot`] (crash-safe order, the entry's rename as the commit point),
//!   [`Esp::bless`].
//! - [`entry`]: [`Slot`], entry names with boot counters ([`EntryName`]), entry text
//!   ([`LoaderEntry`]), `loader.conf`.
//! - [`efivar`]: `LoaderBootCountPath` / `LoaderEntrySelected` as efivarfs gives them.
//! - [`payload`]: [`SlotPayload`], an image's files checked against its manifest.
//! - [`fat`]: FAT through `fatfs` with fixed identifiers and a fixed UTC clock; [`fatdir`]:
//!   the atomic in-place rename `fatfs` lacks.
//! - [`grow`]: `IMRS-DATA` grown to the end of a bigger device, the backup GPT moved there.
//! - [`image`]: a whole disk image file from an image (builder side; the data partition's ext4
//!   comes from the host's `mke2fs`, [`ext4`]); [`bmap`]: the bmap file bmaptool reads.
//!
//! # For the init (blessing the running slot)
//! ```no_run
//! # fn f() -> Result<(), imrs_disk::DiskError> {
//! use imrs_disk::{efivar, Esp};
//! let var = std::fs::read(format!(
//!     "/sys/firmware/efi/efivars/{}",
//!     efivar::efivarfs_name(efivar::BOOT_COUNT_PATH)
//! )).ok();
//! if let Some(entry) = var.as_deref().map(efivar::boot_count_path).transpose()?.flatten() {
//!     let disk = std::fs::OpenOptions::new().read(true).write(true).open("/dev/vda")
//!         .map_err(|e| imrs_disk::DiskError::Input { path: "/dev/vda".into(), detail: e.to_string() })?;
//!     let mut esp = Esp::open(disk)?;
//!     esp.bless(&entry)?; // only once the node is healthy
//! }
//! # Ok(()) }
//! ```

pub mod bmap;
pub mod device;
pub mod efivar;
pub mod entry;
pub mod error;
pub mod esp;
pub mod ext4;
pub mod fat;
pub mod fatdir;
pub mod grow;
pub mod guid;
pub mod image;
pub mod layout;
pub mod payload;

pub use device::{CutAfter, Device, Window};
pub use entry::{EntryName, LoaderEntry, Slot};
pub use error::DiskError;
pub use esp::{Blessed, Esp, SlotStatus, next_boot, update_target};
pub use layout::Layout;
pub use payload::SlotPayload;
