//! imrs-build: turns a recipe into a signed, bit-for-bit reproducible appliance image, and checks,
//! inspects, signs and boots it. The work is in the library (`lib.rs`); this is the entry point:
//! it parses the command line, runs the command, prints the whole cause chain of a failure on
//! stderr (and, with `--json`, the failure object on stdout, also for usage errors) and exits
//! with the code the failure means (see `imrs_build::cli::EXIT_CODES`).

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use imrs_build::{EXIT_USAGE, cli, cmd, ui};

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let json = cli::json_requested(&args);
    let parsed = cli::Cli::command()
        .try_get_matches_from(&args)
        .and_then(|m| Ok((cli::Cli::from_arg_matches(&m)?, cli::command_name(&m))));
    let (cli, command) = match parsed {
        Ok(p) => p,
        Err(e) => return clap_exit(&e, json),
    };
    let result = cmd::run(cli);
    let err = match result {
        Ok(0) => {
            if json && !ui::result_printed() {
                // A command with nothing else to report still prints its one object.
                let done = serde_json::json!({ "command": command });
                if let Err(e) = ui::print_ok(&done) {
                    eprintln!("error: cannot print the JSON result: {e}");
                    return ExitCode::from(imrs_build::EXIT_ERROR);
                }
            }
            return ExitCode::SUCCESS;
        }
        Ok(code) => anyhow::Error::new(ui::Failure::new(
            code,
            format!("{command} ended with exit code {code}"),
        )),
        Err(err) => err,
    };
    let code = cmd::exit_code(&err);
    eprintln!("error: {err}");
    let mut source = err.source();
    while let Some(s) = source {
        eprintln!("  caused by: {s}");
        source = s.source();
    }
    if json {
        ui::print_failure(&err, code, Some(&command));
    }
    ExitCode::from(code)
}

/// Help and `--version` (exit 0) and usage errors (exit 2), the latter also as a JSON object.
fn clap_exit(e: &clap::Error, json: bool) -> ExitCode {
    use clap::error::ErrorKind;
    let code = u8::try_from(e.exit_code()).unwrap_or(EXIT_USAGE);
    match e.kind() {
        ErrorKind::DisplayVersion if json => {
            let v = serde_json::json!({"name": "imrs-build", "version": cli::VERSION});
            if ui::print_ok(&v).is_err() {
                return ExitCode::from(imrs_build::EXIT_ERROR);
            }
        }
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
        }
        _ => {
            let _ = e.print();
            if json {
                let text = e.render().to_string();
                let message = if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                    "a subcommand or argument is missing (see the usage)".to_string()
                } else {
                    text.lines()
                        .next()
                        .unwrap_or_default()
                        .trim_start_matches("error: ")
                        .to_string()
                };
                let err = anyhow::Error::new(ui::Failure::new(code, message).with_details(
                    serde_json::json!({
                        "usage": text.trim_end(),
                    }),
                ));
                ui::print_failure(&err, code, None);
            }
        }
    }
    ExitCode::from(code)
}
