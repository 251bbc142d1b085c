//! [`DiskError`]: everything that can go wrong reading or writing an appliance disk. Values that
//! come from the disk (file names, entry lines) are escaped before they reach a message.

use std::path::PathBuf;

/// An appliance disk could not be read, written or understood.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// An I/O error on the disk, a partition or a file (`what` says which and what was done).
    #[error("{what}: {source}")]
    Io {
        /// What was being done, on what.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The partition table is missing or unreadable.
    #[error("no readable GPT partition table: {detail}")]
    Gpt {
        /// What gptman said.
        detail: String,
    },
    /// No partition carries this GPT name.
    #[error("no partition named {name} in the GPT (partitions: {found})")]
    NoPartition {
        /// The wanted name.
        name: &'static str,
        /// The names present.
        found: String,
    },
    /// The requested disk size cannot hold the layout.
    #[error(
        "disk size {size} bytes is too small: the partitions need at least {min} bytes ({} MiB)",
        min >> 20
    )]
    TooSmall {
        /// Requested size.
        size: u64,
        /// Smallest size that works.
        min: u64,
    },
    /// The requested disk size is not a whole number of MiB.
    #[error("disk size {size} bytes is not a multiple of 1 MiB (1048576 bytes)")]
    Unaligned {
        /// Requested size.
        size: u64,
    },
    /// A slot payload does not match its manifest, or the manifest is unusable.
    #[error("slot payload: {detail}")]
    Payload {
        /// What is wrong.
        detail: String,
    },
    /// The slot payload does not fit into the EFI system partition.
    #[error(
        "slot {slot}: the payload needs {needed} bytes, the EFI system partition has {free} free"
    )]
    NoSpace {
        /// The slot.
        slot: char,
        /// Bytes the payload needs.
        needed: u64,
        /// Free bytes.
        free: u64,
    },
    /// A boot loader entry file is malformed.
    #[error("{file}: {detail}")]
    Entry {
        /// Path in the ESP.
        file: String,
        /// What is wrong.
        detail: String,
    },
    /// A file or directory is missing from a FAT file system.
    #[error("{path}: not found on the {volume} partition")]
    NotFound {
        /// Path inside the partition.
        path: String,
        /// The partition.
        volume: &'static str,
    },
    /// A FAT directory is not what the in-place rename expects.
    #[error("cannot rename {from} to {to} in {dir}: {detail}")]
    Rename {
        /// Directory inside the partition.
        dir: String,
        /// Old name.
        from: String,
        /// New name.
        to: String,
        /// Why.
        detail: String,
    },
    /// A FAT file system's boot sector or directory structure is damaged.
    #[error("the {volume} partition's FAT file system: {detail}")]
    Fat {
        /// The partition.
        volume: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// An EFI variable's contents are not what systemd-boot writes.
    #[error("EFI variable {name}: {detail}")]
    Efivar {
        /// Variable name.
        name: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// A host tool (builder only) could not be run or failed.
    #[error("{program}: {detail}")]
    Tool {
        /// The program.
        program: &'static str,
        /// What happened (its stderr).
        detail: String,
    },
    /// An input file is unusable.
    #[error("{path}: {detail}")]
    Input {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

impl DiskError {
    /// An I/O error with what was being done.
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DiskError {
        let what = what.into();
        move |source| DiskError::Io { what, source }
    }
}
