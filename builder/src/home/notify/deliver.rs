//! One delivery attempt of a signed notice: a webhook `POST` over HTTPS (ureq; 2xx is
//! delivered, anything else or no answer within the timeout is a failure), or an e-mail
//! through the configured SMTP relay with STARTTLS required (lettre), the notice in words with
//! the signed notice attached. Both trust the public web PKI (webpki roots) unless
//! `home serve --notice-ca FILE` names the only CAs to trust. Blocking: the notifier runs them
//! off the async threads.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{Message, SmtpTransport, Transport};

use super::notice::Notice;

/// Default of how long one attempt may take (`home serve --notice-timeout`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The delivery settings could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    /// The CA file cannot be read or holds no certificate.
    #[error("{path}: {why}")]
    Ca {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        why: String,
    },
    /// The SMTP relay or sender address is unusable.
    #[error("SMTP: {0}")]
    Smtp(String),
}

/// The CA certificates of `path` (PEM).
fn read_ca(path: &Path) -> Result<(String, Vec<ureq::tls::Certificate<'static>>), DeliverError> {
    let ca_err = |why: String| DeliverError::Ca {
        path: path.to_path_buf(),
        why,
    };
    let pem = std::fs::read_to_string(path).map_err(|e| ca_err(e.to_string()))?;
    let certs: Vec<_> = ureq::tls::parse_pem(pem.as_bytes())
        .filter_map(|i| match i {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        return Err(ca_err("no PEM certificate in it".into()));
    }
    Ok((pem, certs))
}

/// An HTTPS client trusting the CAs in `ca` only (or the public web PKI), each request within
/// `timeout`, no proxy, no redirects, every status an answer (not an error).
pub fn https_agent(ca: Option<&Path>, timeout: Duration) -> Result<ureq::Agent, DeliverError> {
    let mut tls = ureq::tls::TlsConfig::builder();
    if let Some(path) = ca {
        let (_, certs) = read_ca(path)?;
        tls = tls.root_certs(ureq::tls::RootCerts::Specific(Arc::new(certs)));
    }
    Ok(ureq::Agent::config_builder()
        .tls_config(tls.build())
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None)
        .timeout_global(Some(timeout))
        .build()
        .into())
}

/// Webhook deliveries.
#[derive(Debug, Clone)]
pub struct Webhooks {
    agent: ureq::Agent,
}

impl Webhooks {
    /// Trusting the CAs in `ca` only, or the public web PKI; each attempt within `timeout`.
    pub fn new(ca: Option<&Path>, timeout: Duration) -> Result<Webhooks, DeliverError> {
        Ok(Webhooks {
            agent: https_agent(ca, timeout)?,
        })
    }

    /// POSTs the signed notice `body` to `url`.
    pub fn post(&self, url: &str, id: &str, body: &str) -> Result<(), String> {
        let resp = self
            .agent
            .post(url)
            .content_type("application/json")
            .header("X-IMRS-Notice", id)
            .send(body.as_bytes())
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("answered HTTP {}", status.as_u16()))
        }
    }
}

/// E-mail deliveries through one relay.
#[derive(Clone)]
pub struct Smtp {
    transport: SmtpTransport,
    from: Mailbox,
    relay: String,
}

impl std::fmt::Debug for Smtp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Smtp")
            .field("relay", &self.relay)
            .field("from", &self.from.to_string())
            .finish()
    }
}

impl Smtp {
    /// Through `relay` (`HOST` or `HOST:PORT`, port 587 by default; STARTTLS required), from
    /// `from`, trusting the CAs in `ca` only or the public web PKI; each step within `timeout`.
    pub fn new(
        relay: &str,
        from: &str,
        ca: Option<&Path>,
        timeout: Duration,
    ) -> Result<Smtp, DeliverError> {
        let (host, port) = match relay.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') || h.ends_with(']') => (
                h.trim_start_matches('[').trim_end_matches(']').to_string(),
                p.parse::<u16>()
                    .map_err(|_| DeliverError::Smtp(format!("relay {relay}: bad port {p}")))?,
            ),
            _ => (relay.to_string(), 587),
        };
        if host.is_empty() {
            return Err(DeliverError::Smtp(format!("relay {relay}: no host")));
        }
        let from: Mailbox = from
            .parse()
            .map_err(|e| DeliverError::Smtp(format!("sender {from}: {e}")))?;
        let mut params = TlsParameters::builder(host.clone());
        if let Some(path) = ca {
            let (pem, _) = read_ca(path)?;
            let cert = Certificate::from_pem(pem.as_bytes()).map_err(|e| DeliverError::Ca {
                path: path.to_path_buf(),
                why: e.to_string(),
            })?;
            params = params
                .certificate_store(CertificateStore::None)
                .add_root_certificate(cert);
        }
        let params = params
            .build_rustls()
            .map_err(|e| DeliverError::Smtp(format!("TLS for {host}: {e}")))?;
        let transport = SmtpTransport::builder_dangerous(host.as_str())
            .port(port)
            .tls(Tls::Required(params))
            .hello_name(ClientId::Domain("imrs-home".into()))
            .timeout(Some(timeout))
            .build();
        Ok(Smtp {
            transport,
            from,
            relay: format!("{host}:{port}"),
        })
    }

    /// Sends the notice to `to`: the text, and the signed notice attached as `notice.json`.
    pub fn send(&self, to: &str, notice: &Notice, signed: &str) -> Result<(), String> {
        let to: Mailbox = to.parse().map_err(|e| format!("recipient {to}: {e}"))?;
        let subject = format!(
            "[IMRS] {}: {}",
            imrs_config::escape_all(&notice.instance),
            notice.kind.words()
        );
        let json = ContentType::parse("application/json").map_err(|e| e.to_string())?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .raw_header(lettre::message::header::HeaderValue::new(
                lettre::message::header::HeaderName::new_from_ascii_str("X-IMRS-Notice"),
                notice.id.clone(),
            ))
            .multipart(
                MultiPart::mixed()
                    .singlepart(SinglePart::plain(notice.text()))
                    .singlepart(
                        Attachment::new("notice.json".into()).body(signed.to_string(), json),
                    ),
            )
            .map_err(|e| e.to_string())?;
        self.transport
            .send(&message)
            .map(|_| ())
            .map_err(|e| format!("{}: {e}", self.relay))
    }
}
