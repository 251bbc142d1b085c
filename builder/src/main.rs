//! imrs-build: turns a recipe into a signed, bit-for-bit reproducible appliance image, and checks,
//! inspects, signs and (later) flashes and lab-boots it.
//!
//! Exit codes (also in the README): 0 success; 1 error; 2 usage error; 3 verification failed
//! (the image, signature or zone is not what it should be); 4 a locked package has left the apt
//! mirror (re-lock or use a snapshot).

mod apt;
mod assemble;
mod bzimage;
mod cache;
mod cli;
mod cmd;
mod cpio;
mod deb;
mod elf;
mod image_dir;
mod initbin;
mod kernel;
mod kmod;
mod qemu;
mod tree;
mod ui;
mod verify;

use std::process::ExitCode;

use clap::Parser;

/// Exit code: something failed.
pub const EXIT_ERROR: u8 = 1;
/// Exit code: an image, signature or zone did not verify.
pub const EXIT_VERIFY: u8 = 3;
/// Exit code: a locked package is no longer on the mirror.
pub const EXIT_GONE: u8 = 4;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cmd::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("error: {err}");
            let mut source = err.source();
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            ExitCode::from(cmd::exit_code(&err))
        }
    }
}
