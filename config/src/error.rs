//! The one error type of imrs-config: every failure names the file, the key path, the value and
//! the rule it broke, so an engineer can fix the file without reading code.

use std::path::PathBuf;

/// A configuration file could not be read, parsed or validated.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML/JSON for its schema (unknown key, wrong type, missing key).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's description, which names the key and position.
        message: String,
    },
    /// A value parsed but breaks a rule.
    #[error("{path}: {key} = {value}: {rule}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Dotted key path, e.g. `bgp.neighbors[0].asn`.
        key: String,
        /// The offending value as written.
        value: String,
        /// The rule it breaks.
        rule: String,
    },
}

impl ConfigError {
    /// Builds an [`ConfigError::Invalid`].
    pub fn invalid(
        path: impl Into<PathBuf>,
        key: impl Into<String>,
        value: impl std::fmt::Display,
        rule: impl Into<String>,
    ) -> Self {
        ConfigError::Invalid {
            path: path.into(),
            key: key.into(),
            value: value.to_string(),
            rule: rule.into(),
        }
    }
}

/// Collects validation failures for one file under a key prefix.
#[derive(Debug)]
pub(crate) struct Checker<'a> {
    pub(crate) path: &'a std::path::Path,
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
}

/// Reads a file to a string, mapping the error.
pub(crate) fn read(path: &std::path::Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses TOML text into `T`, naming the file in the error.
pub(crate) fn parse_toml<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
    text: &str,
) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().replace('\n', "\n  "),
    })
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
