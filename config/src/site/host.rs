//! The host organisation's contacts (`[host]`): where the receiver sends its notices when the
//! organisation's box passes or fails its installation, and when a box that served goes quiet.
//! The box itself never uses them; the receiver reads them from the site configs it is given.

use serde::{Deserialize, Serialize};

use crate::error::{Checker, ConfigError};

/// Most e-mail addresses.
pub const EMAIL_MAX: usize = 8;
/// Longest e-mail address (RFC 5321's path limit).
pub const EMAIL_LEN_MAX: usize = 254;
/// Default of [`Host::quiet_after_s`]: an hour.
pub const DEFAULT_QUIET_AFTER_S: u64 = 3600;

fn default_quiet() -> u64 {
    DEFAULT_QUIET_AFTER_S
}

/// Whom to tell about the box, and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Host {
    /// The organisation's name, as notices address it.
    #[serde(default)]
    pub organisation: String,
    /// HTTPS URL that receives signed JSON notices (POST).
    #[serde(default)]
    pub webhook: Option<String>,
    /// Addresses that receive notices by e-mail.
    #[serde(default)]
    pub email: Vec<String>,
    /// Seconds a box that was heard from may stay silent before the host is told (300 to
    /// 604800; default an hour).
    #[serde(default = "default_quiet")]
    pub quiet_after_s: u64,
}

impl Default for Host {
    fn default() -> Host {
        Host {
            organisation: String::new(),
            webhook: None,
            email: Vec::new(),
            quiet_after_s: DEFAULT_QUIET_AFTER_S,
        }
    }
}

impl Host {
    /// Whether anyone is to be told anything.
    pub fn has_contacts(&self) -> bool {
        self.webhook.is_some() || !self.email.is_empty()
    }
}

/// Why `addr` is no usable e-mail address, or `None`: one `@`, a local part and a domain of
/// letters, digits and the usual punctuation, no spaces, quotes or controls (what an SMTP
/// relay takes in `RCPT TO` without quoting).
pub fn email_problem(addr: &str) -> Option<&'static str> {
    if addr.is_empty() || addr.len() > EMAIL_LEN_MAX {
        return Some("1 to 254 characters");
    }
    let Some((local, domain)) = addr.split_once('@') else {
        return Some("local-part@domain");
    };
    if local.is_empty() || local.len() > 64 {
        return Some("a local part of 1 to 64 characters before the @");
    }
    if !local
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~.".contains(&b))
        || local.starts_with('.')
        || local.ends_with('.')
        || local.contains("..")
    {
        return Some("a local part of letters, digits and !#$%&'*+-/=?^_`{|}~. (no spaces)");
    }
    if !super::validate::is_dns_name(domain) || !domain.contains('.') {
        return Some("a domain name with a dot after the @");
    }
    None
}

/// Why `url` is no usable webhook URL, or `None`.
pub fn webhook_problem(url: &str) -> Option<String> {
    if url.len() > super::phone_home::URL_MAX {
        return Some(format!("at most {} bytes", super::phone_home::URL_MAX));
    }
    let uri: http::Uri = match url.parse() {
        Ok(u) => u,
        Err(e) => return Some(format!("not a URL ({e})")),
    };
    if uri.scheme_str() != Some("https") {
        return Some("an https:// URL (notices carry the installation certificate)".into());
    }
    match uri.authority() {
        None => Some("an https:// URL with a host".into()),
        Some(a) if a.host().is_empty() => Some("an https:// URL with a host".into()),
        Some(a) if a.as_str().contains('@') => Some("no user name or password in the URL".into()),
        Some(_) => None,
    }
}

pub(super) fn check(c: &Checker<'_>, h: &Host) -> Result<(), ConfigError> {
    c.length("host.organisation", &h.organisation, 0, 200)?;
    c.no_control("host.organisation", &h.organisation)?;
    if let Some(url) = &h.webhook
        && let Some(why) = webhook_problem(url)
    {
        c.ensure(false, "host.webhook", url, why)?;
    }
    c.count("host.email", &h.email, EMAIL_MAX)?;
    for (i, e) in h.email.iter().enumerate() {
        if let Some(why) = email_problem(e) {
            c.ensure(false, format!("host.email[{i}]"), e, why)?;
        }
    }
    c.ensure(
        (300..=604_800).contains(&h.quiet_after_s),
        "host.quiet_after_s",
        h.quiet_after_s,
        "300 to 604800 seconds (a box is quiet after missing a heartbeat or more; a week at most)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        for ok in ["noc@example.net", "a.b+imrs@mail.example.org"] {
            assert_eq!(email_problem(ok), None, "{ok}");
        }
        for bad in [
            "",
            "noc",
            "@example.net",
            "noc@",
            "noc@localhost",
            "n oc@example.net",
            "noc@exa mple.net",
            "noc\r\nRCPT TO:<x@y.z>@example.net",
            "a..b@example.net",
            "\"q\"@example.net",
        ] {
            assert!(email_problem(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn webhooks() {
        assert_eq!(webhook_problem("https://hooks.example.net/imrs"), None);
        assert_eq!(webhook_problem("https://127.0.0.1:8443/n"), None);
        for bad in [
            "http://hooks.example.net/",
            "hooks.example.net",
            "https://user:pw@hooks.example.net/",
            "https:///x",
        ] {
            assert!(webhook_problem(bad).is_some(), "{bad}");
        }
    }
}
