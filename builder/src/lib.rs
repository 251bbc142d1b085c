//! imrs-build as a library: the modules behind the `imrs-build` command, usable from tests and
//! other tools. See ARCHITECTURE.md for the map.
//!
//! Exit codes of the command (`cli::EXIT_CODES`): 0 success; 1 error, also an input that cannot
//! be read (missing, no permission, not a regular file, too large) or a package source that
//! cannot be reached; 2 usage error; 3 verification failed: an input was read and is wrong (a
//! bad signature, a tampered or malformed image folder, a zone that does not parse or verify); 4
//! no source (mirror, snapshot archive, `--snapshot`) has a locked package (re-lock or name a
//! snapshot that has it).

pub mod apt;
pub mod assemble;
pub mod bzimage;
pub mod cache;
pub mod cli;
pub mod cmd;
pub mod cpio;
pub mod deb;
pub mod disk;
pub mod download;
pub mod elf;
pub mod flash;
pub mod fleet;
pub mod home;
pub mod host;
pub mod image_dir;
pub mod initbin;
pub mod inspect;
pub mod kernel;
pub mod kmod;
pub mod lab;
pub mod manual;
pub mod qemu;
pub mod site_check;
pub mod tree;
pub mod ui;
pub mod update;
pub mod verify;
pub mod workspace;
pub mod xz;
pub mod zone_cli;

/// Exit code: something failed.
pub const EXIT_ERROR: u8 = 1;
/// Exit code: the command line does not parse.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: an image, signature or zone was read and did not verify.
pub const EXIT_VERIFY: u8 = 3;
/// Exit code: no source has a locked package.
pub const EXIT_GONE: u8 = 4;
