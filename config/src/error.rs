//! The one error type of imrs-config: every failure names the file, the key path, the value and
//! the rule it broke, so an engineer can fix the file without reading code.
//!
//! Values and paths in messages are escaped ([`escape`]): a control character, a bidirectional
//! override or a backslash in a file cannot rewrite the terminal or forge a line of output, and
//! an enormous value is shortened.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::fsutil::ReadError;

/// A configuration file could not be read, parsed or validated.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (missing, too large, not a regular file, not UTF-8).
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The file is not valid TOML/JSON for its schema (unknown key, wrong type, missing key).
    #[error("{}: {message}", escape_path(.path))]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's description, which names the key and position (already escaped).
        message: String,
    },
    /// A value parsed but breaks a rule.
    #[error("{}: {key} = {value}: {rule}", escape_path(.path))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Dotted key path, e.g. `bgp.neighbors[0].asn`.
        key: String,
        /// The offending value as written (escaped and shortened, see [`escape`]).
        value: String,
        /// The rule it breaks.
        rule: String,
    },
}

impl ConfigError {
    /// Builds an [`ConfigError::Invalid`]; the value is escaped.
    pub fn invalid(
        path: impl Into<PathBuf>,
        key: impl Into<String>,
        value: impl std::fmt::Display,
        rule: impl Into<String>,
    ) -> Self {
        ConfigError::Invalid {
            path: path.into(),
            key: key.into(),
            value: escape(&value.to_string()),
            rule: rule.into(),
        }
    }

    /// Builds a [`ConfigError::Parse`] from a parser's message (escaped line by line).
    pub fn parse(path: impl Into<PathBuf>, message: &str) -> Self {
        ConfigError::Parse {
            path: path.into(),
            message: escape_lines(message.trim_end()),
        }
    }
}

/// Longest value echoed in a message, in characters; the rest is replaced by a byte count.
pub const ECHO_MAX: usize = 200;

/// Characters that reorder or hide text on a terminal without being control characters
/// (bidirectional embeddings, overrides and isolates; zero-width characters; the BOM).
fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{061c}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
            | '\u{feff}'
    )
}

/// Whether [`escape`] writes `c` escaped: a backslash, a control character (C0, C1, DEL), an
/// invisible formatting character (bidi controls, zero-width characters, line and paragraph
/// separators, the BOM).
pub fn needs_escape(c: char) -> bool {
    c == '\\' || c.is_control() || is_invisible_format(c)
}

/// `s` with every character [`needs_escape`] names escaped, whatever its length (for text
/// someone else controls that is shown whole: a fleet list, a log line); borrowed when nothing
/// needs escaping.
pub fn escape_all(s: &str) -> std::borrow::Cow<'_, str> {
    if s.chars().any(needs_escape) {
        std::borrow::Cow::Owned(escape_max(s, usize::MAX))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// `s` made safe to print on one line: backslash, control characters (newline included) and
/// invisible formatting characters written as escapes (`\\`, `\n`, `\t`, `\u{1b}`); longer than
/// [`ECHO_MAX`] characters, the rest replaced by `... (N bytes in all)`.
pub fn escape(s: &str) -> String {
    escape_max(s, ECHO_MAX)
}

fn escape_max(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max.saturating_mul(2)));
    for (n, c) in s.chars().enumerate() {
        if n == max {
            let _ = write!(out, "... ({} bytes in all)", s.len());
            break;
        }
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

/// A multi-line message (a parser's, with its source excerpt) escaped line by line: the
/// newlines between lines are kept, every line is escaped and shortened.
fn escape_lines(s: &str) -> String {
    s.lines()
        .map(|l| escape_max(l, 4 * ECHO_MAX))
        .collect::<Vec<_>>()
        .join("\n  ")
}

/// A path escaped for a message (see [`escape`]; not shortened).
pub fn escape_path(p: &Path) -> String {
    escape_max(&p.to_string_lossy(), usize::MAX)
}

/// Collects validation failures for one file under a key prefix.
#[derive(Debug)]
pub(crate) struct Checker<'a> {
    pub(crate) path: &'a Path,
}

impl Checker<'_> {
    /// Fails with an [`ConfigError::Invalid`] unless `ok`.
    pub(crate) fn ensure(
        &self,
        ok: bool,
        key: impl Into<String>,
        value: impl std::fmt::Display,
        rule: impl Into<String>,
    ) -> Result<(), ConfigError> {
        if ok {
            Ok(())
        } else {
            Err(ConfigError::invalid(self.path, key, value, rule))
        }
    }

    /// Fails unless `value` is at most `max` bytes long (and, when `min` is 1, not empty).
    pub(crate) fn length(
        &self,
        key: impl Into<String>,
        value: &str,
        min: usize,
        max: usize,
    ) -> Result<(), ConfigError> {
        self.ensure(
            (min..=max).contains(&value.len()),
            key,
            value,
            format!("{min} to {max} bytes long (this is {})", value.len()),
        )
    }

    /// Fails when `value` holds a control character (newline, tab, escape, ...).
    pub(crate) fn no_control(
        &self,
        key: impl Into<String>,
        value: &str,
    ) -> Result<(), ConfigError> {
        self.ensure(
            !value
                .chars()
                .any(|c| c.is_control() || is_invisible_format(c)),
            key,
            value,
            "no control or invisible formatting characters",
        )
    }

    /// Fails when a list has more than `max` entries.
    pub(crate) fn count<T>(
        &self,
        key: impl Into<String>,
        list: &[T],
        max: usize,
    ) -> Result<(), ConfigError> {
        self.ensure(
            list.len() <= max,
            key,
            format!("({} entries)", list.len()),
            format!("at most {max} entries"),
        )
    }
}

/// Reads a text file within `limit` bytes (see [`crate::fsutil::read_bounded`]).
pub(crate) fn read(path: &Path, limit: u64, what: &'static str) -> Result<String, ConfigError> {
    Ok(crate::fsutil::read_bounded_string(path, limit, what)?)
}

/// Parses TOML text into `T`, naming the file in the error.
pub(crate) fn parse_toml<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::parse(path, &e.to_string()))
}

/// An error and its whole `source()` chain on one line (`outer: cause: root cause`), for logs
/// and reports that have one line per event.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_could_rewrite_a_terminal() {
        assert_eq!(escape("plain-value_1.2"), "plain-value_1.2");
        assert_eq!(escape("a\nb\r\tc"), "a\\nb\\r\\tc");
        assert_eq!(escape("\u{1b}[2J"), "\\u{1b}[2J");
        // Whole, for text shown in full (a fleet list): controls, bidi, separators, backslash.
        let cases = [
            ("SN-1", "SN-1"),
            ("sité ünïcode 日本", "sité ünïcode 日本"),
            ("a\nb\rc\td", "a\\nb\\rc\\td"),
            ("\0\x07\x7f", "\\u{0}\\u{7}\\u{7f}"),
            ("\u{85}\u{9b}31m", "\\u{85}\\u{9b}31m"),
            ("abc\u{202e}fed", "abc\\u{202e}fed"),
            (
                "\u{2066}\u{2069}\u{200f}\u{61c}",
                "\\u{2066}\\u{2069}\\u{200f}\\u{61c}",
            ),
            ("line\u{2028}sep", "line\\u{2028}sep"),
            ("C:\\x1b", "C:\\\\x1b"),
        ];
        for (raw, want) in cases {
            assert_eq!(escape_all(raw), want, "{raw:?}");
        }
        assert!(matches!(escape_all("plain"), std::borrow::Cow::Borrowed(_)));
        let all: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        let long = "x".repeat(10 * ECHO_MAX);
        assert_eq!(escape_all(&long), long, "escape_all does not shorten");
        assert!(
            !escape_all(&all)
                .chars()
                .any(|c| c != '\\' && needs_escape(c))
        );
        assert_eq!(escape("x\u{202e}y\u{7f}"), "x\\u{202e}y\\u{7f}");
        assert_eq!(escape("back\\slash"), "back\\\\slash");
        assert_eq!(escape("héllo"), "héllo");
    }

    #[test]
    fn shortens_huge_values() {
        let big = "x".repeat(50 << 20);
        let e = escape(&big);
        assert!(e.len() < 300, "{}", e.len());
        assert!(
            e.ends_with(&format!("... ({} bytes in all)", 50 << 20)),
            "{e}"
        );
        let e = ConfigError::invalid("site.toml", "site_id", &big, "rule").to_string();
        assert!(e.len() < 400, "{}", e.len());
    }

    #[test]
    fn parse_messages_and_paths_are_escaped() {
        let e = ConfigError::parse("a\nb.toml", "line 1\n  | x = \"\u{1b}]0;pwned\u{7}\"\n");
        let s = e.to_string();
        assert!(!s.contains('\u{1b}') && !s.contains('\u{7}'), "{s:?}");
        assert!(s.starts_with("a\\nb.toml: line 1\n  "), "{s:?}");
    }
}
