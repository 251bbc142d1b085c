//! The phone-home target, checked as the appliance uses it: the URL as its HTTP client (ureq)
//! parses it (`http::Uri`), the CA certificates as rustls loads them into its root store (PEM
//! sections, then each certificate made a trust anchor by webpki; rustls silently drops one
//! that fails, which would leave the box unable to report).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::SectionKind;

use super::addr::not_host;
use super::validate::is_dns_name;
use crate::error::escape;

/// Longest accepted URL, in bytes.
pub(super) const URL_MAX: usize = 2048;
/// Longest accepted `ca_pem`, in bytes.
pub(super) const CA_PEM_MAX: usize = 64 << 10;
/// Most CA certificates in `ca_pem`.
pub(super) const CA_CERTS_MAX: usize = 16;

/// Why `url` is no usable phone-home URL, or `None`.
pub(super) fn url_problem(url: &str) -> Option<String> {
    if url.len() > URL_MAX {
        return Some(format!("at most {URL_MAX} bytes"));
    }
    let uri: http::Uri = match url.parse() {
        Ok(u) => u,
        Err(e) => return Some(format!("not a URL ({e})")),
    };
    if uri.scheme_str() != Some("https") {
        return Some("an https:// URL (reports go over TLS only)".into());
    }
    let Some(authority) = uri.authority() else {
        return Some("an https:// URL with a host".into());
    };
    if authority.as_str().contains('@') {
        return Some("no user name or password in the URL".into());
    }
    let host = authority.host();
    if host.is_empty() {
        return Some("an https:// URL with a host".into());
    }
    let ip = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        match inner.parse::<Ipv6Addr>() {
            Ok(a) => Some(IpAddr::V6(a)),
            Err(_) => return Some(format!("host [{inner}] is not an IPv6 address")),
        }
    } else if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        match host.parse::<Ipv4Addr>() {
            Ok(a) => Some(IpAddr::V4(a)),
            Err(_) => return Some(format!("host {host} is not an IPv4 address")),
        }
    } else {
        None
    };
    match ip {
        Some(a) => {
            if let Some(why) = not_host(a) {
                return Some(format!("host {a}: {why}"));
            }
        }
        None if !is_dns_name(host) => {
            return Some(format!(
                "host {host} is neither an IP address nor a DNS name"
            ));
        }
        None => {}
    }
    // `Authority::port` ignores a port it cannot parse: check what follows the host ourselves.
    let after_host = &authority.as_str()[host.len()..];
    if let Some(port) = after_host.strip_prefix(':') {
        match port.parse::<u16>() {
            Ok(p) if p > 0 && port.bytes().all(|b| b.is_ascii_digit()) => {}
            _ => return Some(format!("port {port}: a port number 1-65535")),
        }
    }
    None
}

fn kind_name(kind: SectionKind) -> &'static str {
    match kind {
        SectionKind::Certificate => "CERTIFICATE",
        SectionKind::PublicKey => "PUBLIC KEY",
        SectionKind::Crl => "X509 CRL",
        SectionKind::Csr => "CERTIFICATE REQUEST",
        SectionKind::EchConfigList => "ECHCONFIG",
        SectionKind::RsaPrivateKey => "RSA PRIVATE KEY",
        SectionKind::EcPrivateKey => "EC PRIVATE KEY",
        SectionKind::PrivateKey => "PRIVATE KEY",
        _ => "non-certificate",
    }
}

fn pem_error(e: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error;
    let text = |b: &[u8]| escape(&String::from_utf8_lossy(b));
    match e {
        Error::MissingSectionEnd { end_marker } => format!("no {} line", text(end_marker)),
        Error::IllegalSectionStart { line } => format!("malformed line {}", text(line)),
        Error::Base64Decode(m) => format!("bad base64: {}", escape(m)),
        other => escape(&other.to_string()),
    }
}

/// Why `pem` is no usable set of CA certificates, or `None`.
pub(super) fn ca_problem(pem: &str) -> Option<String> {
    if pem.len() > CA_PEM_MAX {
        return Some(format!("at most {CA_PEM_MAX} bytes"));
    }
    let mut rd = pem.as_bytes();
    let mut certs = 0usize;
    loop {
        match rustls_pki_types::pem::from_buf(&mut rd) {
            Ok(None) => break,
            Ok(Some((SectionKind::Certificate, der))) => {
                certs += 1;
                if certs > CA_CERTS_MAX {
                    return Some(format!("at most {CA_CERTS_MAX} certificates"));
                }
                let der = CertificateDer::from(der);
                if let Err(e) = webpki::anchor_from_trusted_cert(&der) {
                    return Some(format!(
                        "certificate {certs} is not a usable X.509 CA certificate ({e:?})"
                    ));
                }
            }
            Ok(Some((kind, _))) => {
                return Some(format!(
                    "only CERTIFICATE blocks (a {} block has no place here)",
                    kind_name(kind)
                ));
            }
            Err(e) => return Some(format!("not PEM ({})", pem_error(&e))),
        }
    }
    (certs == 0).then(|| "at least one PEM CA certificate (-----BEGIN CERTIFICATE-----)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        for good in [
            "https://192.0.2.80:8443/v1/reports",
            "https://imrs-home.example.net/v1/reports",
            "https://[2001:db8::80]:443/r?x=1",
            "HTTPS://home.example.net/",
        ] {
            assert_eq!(url_problem(good), None, "{good}");
        }
        for (bad, why) in [
            ("https://x y z", "not a URL"),
            ("http://192.0.2.80/", "https://"),
            ("https:///v1", "not a URL"),
            ("https://:443/v1", "with a host"),
            ("https://user:pw@home.example/", "no user name"),
            ("https://192.0.2.80:0/", "port 0"),
            ("https://192.0.2.80:99999/", "port 99999"),
            ("https://192.0.2.80:/", "port :"),
            ("https://127.0.0.1/", "loopback"),
            ("https://[::]/", "unspecified"),
            ("https://[::ffff:192.0.2.1]/", "IPv4-mapped"),
            ("https://999.1.1.1/", "not an IPv4 address"),
            (
                "https://-bad-.example/",
                "neither an IP address nor a DNS name",
            ),
            ("ftp://home.example/", "https://"),
            ("/v1/reports", "https://"),
        ] {
            let got = url_problem(bad).unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(
                got.contains(why) || (why == "port :" && got.starts_with("port ")),
                "{bad}: {got}"
            );
        }
        assert!(url_problem(&format!("https://h.example/{}", "a".repeat(3000))).is_some());
    }
}
