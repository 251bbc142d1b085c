//! How imrs-build talks to a person: progress bars (indicatif, on stderr, hidden when stderr is
//! not a terminal or with `--quiet`/`--json`) and status lines. Machine output (`--json`) goes
//! to stdout and nothing else does: exactly one JSON object per run, `"ok": true` with the
//! command's result, or `"ok": false` with `"error"` (the whole cause chain), `"causes"`,
//! `"exit_code"` and `"command"` (plus whatever the command reports about the failure, see
//! [`Failure`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use serde_json::{Map, Value};

/// Output settings shared by every command.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ui {
    /// No progress and no status lines (errors still go to stderr).
    pub quiet: bool,
    /// A JSON summary is printed on stdout; status lines go to stderr only if not quiet.
    pub json: bool,
}

impl Ui {
    /// A status line on stderr.
    pub fn info(&self, msg: impl AsRef<str>) {
        if !self.quiet {
            eprintln!("{}", msg.as_ref());
        }
    }

    /// A warning on stderr (shown even with `--quiet`).
    pub fn warn(&self, msg: impl AsRef<str>) {
        eprintln!("warning: {}", msg.as_ref());
    }

    fn target(&self) -> ProgressDrawTarget {
        if self.quiet || self.json {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        }
    }

    /// A byte-counting bar (downloads, compression).
    pub fn bytes(&self, len: u64, msg: impl Into<String>) -> ProgressBar {
        let pb = ProgressBar::with_draw_target(Some(len), self.target());
        pb.set_style(
            ProgressStyle::with_template(
                "{msg:24} [{bar:30}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        pb.set_message(msg.into());
        pb
    }

    /// A counting bar (packages, files).
    pub fn count(&self, len: u64, msg: impl Into<String>) -> ProgressBar {
        let pb = ProgressBar::with_draw_target(Some(len), self.target());
        pb.set_style(
            ProgressStyle::with_template("{msg:24} [{bar:30}] {pos}/{len} {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        pb.set_message(msg.into());
        pb
    }

    /// A spinner for work of unknown length.
    pub fn spinner(&self, msg: impl Into<String>) -> ProgressBar {
        let pb = ProgressBar::with_draw_target(None, self.target());
        pb.set_style(
            ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        pb.set_message(msg.into());
        pb.enable_steady_tick(Duration::from_millis(120));
        pb
    }
}

/// Whether this run has printed its JSON result on stdout.
static RESULT_PRINTED: AtomicBool = AtomicBool::new(false);

/// Whether a JSON result has been printed (by [`print_ok`] or [`print_ok_line`]).
pub fn result_printed() -> bool {
    RESULT_PRINTED.load(Ordering::SeqCst)
}

/// `value` as a JSON object with `"ok": true` added (a value that is not an object is put under
/// `"result"`).
pub fn ok_object(value: impl Serialize) -> Result<Map<String, Value>, serde_json::Error> {
    let mut obj = match serde_json::to_value(value)? {
        Value::Object(m) => m,
        other => {
            let mut m = Map::new();
            m.insert("result".into(), other);
            m
        }
    };
    obj.insert("ok".into(), Value::Bool(true));
    Ok(obj)
}

/// Prints a successful run's `--json` result on stdout, pretty-printed, with `"ok": true`.
pub fn print_ok(value: impl Serialize) -> Result<(), serde_json::Error> {
    let text = serde_json::to_string_pretty(&ok_object(value)?)?;
    println!("{text}");
    RESULT_PRINTED.store(true, Ordering::SeqCst);
    Ok(())
}

/// Like [`print_ok`] but on one line, for a status object that a reader takes line by line
/// (`home serve`'s banner).
pub fn print_ok_line(value: impl Serialize) -> Result<(), serde_json::Error> {
    let text = serde_json::to_string(&ok_object(value)?)?;
    println!("{text}");
    RESULT_PRINTED.store(true, Ordering::SeqCst);
    Ok(())
}

/// A run that failed with an exit code of its own and, for `--json`, details worth reporting
/// beside the error (a zone's verification report, a boot's console, a lab summary). Put it in
/// an `anyhow` chain; [`crate::cmd::exit_code`] takes the code from the outermost one.
#[derive(Debug)]
pub struct Failure {
    /// The process exit code.
    pub exit_code: u8,
    /// What failed, in one sentence.
    pub message: String,
    /// Fields merged into the `--json` failure object.
    pub details: Map<String, Value>,
    /// The cause, if another error.
    pub source: Option<anyhow::Error>,
}

impl Failure {
    /// A failure with exit code `exit_code` and no details.
    pub fn new(exit_code: u8, message: impl Into<String>) -> Failure {
        Failure {
            exit_code,
            message: message.into(),
            details: Map::new(),
            source: None,
        }
    }

    /// Adds the fields of `details` (an object; anything else goes under `"details"`).
    pub fn with_details(mut self, details: Value) -> Failure {
        match details {
            Value::Object(m) => self.details.extend(m),
            other => {
                self.details.insert("details".into(), other);
            }
        }
        self
    }

    /// Sets the cause.
    pub fn caused_by(mut self, source: impl Into<anyhow::Error>) -> Failure {
        self.source = Some(source.into());
        self
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|e| e.as_ref() as &(dyn std::error::Error + 'static))
    }
}

/// The `--json` object of a failed run: the details of the outermost [`Failure`] in the chain,
/// then `"ok": false`, `"error"` (every message of the chain, `: `-separated), `"causes"` (the
/// same as a list), `"exit_code"` and, when known, `"command"`.
pub fn failure_object(err: &anyhow::Error, exit_code: u8, command: Option<&str>) -> Value {
    let mut obj = err
        .chain()
        .find_map(|c| c.downcast_ref::<Failure>())
        .map(|f| f.details.clone())
        .unwrap_or_default();
    let causes: Vec<String> = err.chain().map(|c| c.to_string()).collect();
    obj.insert("ok".into(), Value::Bool(false));
    obj.insert("error".into(), Value::String(causes.join(": ")));
    obj.insert("causes".into(), causes.into());
    obj.insert("exit_code".into(), exit_code.into());
    if let Some(c) = command {
        obj.insert("command".into(), c.into());
    }
    Value::Object(obj)
}

/// Prints the `--json` object of a failed run on stdout (see [`failure_object`]).
pub fn print_failure(err: &anyhow::Error, exit_code: u8, command: Option<&str>) {
    let obj = failure_object(err, exit_code, command);
    println!(
        "{}",
        serde_json::to_string_pretty(&obj).unwrap_or_else(|_| obj.to_string())
    );
    RESULT_PRINTED.store(true, Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_gains_ok_and_failure_carries_the_chain_and_details() {
        let ok = ok_object(serde_json::json!({"name": "x"})).unwrap();
        assert_eq!(ok["ok"], true);
        assert_eq!(ok["name"], "x");
        assert_eq!(ok_object(3).unwrap()["result"], 3);

        let inner = anyhow::anyhow!("line 1: bad");
        let f = Failure::new(3, "z: not a zone file")
            .with_details(serde_json::json!({"serial": 7, "ok": "overwritten", "exit_code": 99}))
            .caused_by(inner);
        let err = anyhow::Error::new(f).context("zone verify z");
        let v = failure_object(&err, 3, Some("zone verify"));
        assert_eq!(v["ok"], false);
        assert_eq!(v["exit_code"], 3);
        assert_eq!(v["serial"], 7);
        assert_eq!(v["command"], "zone verify");
        assert_eq!(v["error"], "zone verify z: z: not a zone file: line 1: bad");
        assert_eq!(v["causes"].as_array().unwrap().len(), 3);
    }
}
