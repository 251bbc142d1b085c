//! Kernel command-line parameters the init understands (all prefixed `imrs.`):
//!
//! - `imrs.poweroff_after_boot=1`: once the boot pipeline has gone as far as it can and the
//!   summary is printed, power off cleanly (CI and image smoke tests end this way).
//! - `imrs.state=PATH`: state directory override (tests; default: the data partition, else
//!   `/run/imrs`).
//!
//! Unknown `imrs.*` parameters are reported as warnings, never ignored silently.

/// Parsed parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cmdline {
    /// `imrs.poweroff_after_boot=1`.
    pub poweroff_after_boot: bool,
    /// `imrs.state=PATH`.
    pub state_dir: Option<String>,
    /// `imrs.*` words not understood.
    pub unknown: Vec<String>,
}

/// Parses `/proc/cmdline` text.
pub fn parse(text: &str) -> Cmdline {
    let mut c = Cmdline::default();
    for word in text.split_whitespace() {
        let Some(rest) = word.strip_prefix("imrs.") else {
            continue;
        };
        let (key, value) = rest.split_once('=').unwrap_or((rest, "1"));
        match key {
            "poweroff_after_boot" => c.poweroff_after_boot = matches!(value, "1" | "yes" | "true"),
            "state" => c.state_dir = Some(value.to_string()),
            _ => c.unknown.push(word.to_string()),
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_and_reports_unknown() {
        let c =
            parse("console=ttyS0 imrs.poweroff_after_boot=1 imrs.state=/x imrs.colour=red quiet");
        assert!(c.poweroff_after_boot);
        assert_eq!(c.state_dir.as_deref(), Some("/x"));
        assert_eq!(c.unknown, vec!["imrs.colour=red".to_string()]);
        assert!(!parse("imrs.poweroff_after_boot=0").poweroff_after_boot);
        assert!(parse("imrs.poweroff_after_boot").poweroff_after_boot);
    }
}
