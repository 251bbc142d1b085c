//! How imrs-build talks to a person: progress bars (indicatif, on stderr, hidden when stderr is
//! not a terminal or with `--quiet`/`--json`) and status lines. Machine output (`--json`) goes
//! to stdout and nothing else does.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

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
