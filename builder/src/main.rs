//! imrs-build: turns a recipe into a signed, bit-for-bit reproducible appliance image, and checks,
//! inspects, signs and boots it. The work is in the library (`lib.rs`); this is the entry point.

use std::process::ExitCode;

use clap::Parser;
use imrs_build::{cli, cmd};

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
