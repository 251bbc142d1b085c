//! The client side of the receiver tests: a test CA and server certificate (rcgen), a `ureq`
//! agent trusting it, and a small async HTTPS/1.1 client that speaks from a chosen loopback
//! address (the whole 127/8 is local), for floods and for submissions from several sources.
//! tokio is built without `io-util` here, so reading and writing use a few small helpers.

use std::future::poll_fn;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Writes a CA and a server certificate for 127.0.0.1 (`server.pem`, `server.key`); returns
/// the CA PEM.
pub fn pki(dir: &Path) -> String {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "home test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let srv_key = KeyPair::generate().unwrap();
    let srv = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&srv_key, &issuer)
        .unwrap();
    std::fs::write(dir.join("server.pem"), srv.pem()).unwrap();
    std::fs::write(dir.join("server.key"), srv_key.serialize_pem()).unwrap();
    ca_cert.pem()
}

/// A `ureq` agent trusting `ca_pem` only (it connects from 127.0.0.1).
pub fn agent(ca_pem: &str) -> ureq::Agent {
    let certs: Vec<_> = ureq::tls::parse_pem(ca_pem.as_bytes())
        .filter_map(|i| match i {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::Specific(Arc::new(certs)))
        .build();
    ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// POSTs `body`: the status and the JSON answer.
pub fn post(agent: &ureq::Agent, url: &str, body: &[u8]) -> (u16, serde_json::Value) {
    let mut resp = agent
        .post(url)
        .content_type("application/json")
        .send(body)
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or_default())
}

/// A connector trusting `ca_pem`.
pub fn tls(ca_pem: &str) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    TlsConnector::from(Arc::new(cfg))
}

/// TCP from `from`, then TLS to `to`.
pub async fn connect(
    tls: &TlsConnector,
    from: IpAddr,
    to: SocketAddr,
) -> io::Result<TlsStream<TcpStream>> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(from, 0))?;
    let tcp = sock.connect(to).await?;
    let name = ServerName::IpAddress(to.ip().into());
    tls.connect(name, tcp).await
}

async fn write_all<S: AsyncWrite + Unpin>(s: &mut S, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        let n = poll_fn(|cx| Pin::new(&mut *s).poll_write(cx, buf)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
    }
    poll_fn(|cx| Pin::new(&mut *s).poll_flush(cx)).await
}

/// One read; 0 at the end of the stream.
pub async fn read<S: AsyncRead + Unpin>(s: &mut S, buf: &mut [u8]) -> io::Result<usize> {
    let mut rb = ReadBuf::new(buf);
    poll_fn(|cx| Pin::new(&mut *s).poll_read(cx, &mut rb)).await?;
    Ok(rb.filled().len())
}

/// An answer: status, headers (lowercase), body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Answer {
    /// The server closes the connection after this answer.
    pub fn closes(&self) -> bool {
        self.head.contains("\r\nconnection: close")
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head
            .split("\r\n")
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(str::trim)
    }
}

/// Sends one keep-alive request and reads the answer.
pub async fn request<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    method: &str,
    body: &[u8],
) -> io::Result<Answer> {
    let head = format!(
        "{method} /reports HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n",
        body.len()
    );
    write_all(s, head.as_bytes()).await?;
    write_all(s, body).await?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = read(s, &mut buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        got.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line in {head:?}")))?;
    let len: usize = head
        .split("\r\n")
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while got.len() < end + len {
        let n = read(s, &mut buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        got.extend_from_slice(&buf[..n]);
    }
    Ok(Answer {
        status,
        head,
        body: got[end..end + len].to_vec(),
    })
}

/// One POST on a new connection from `from`.
pub async fn post_from(
    tls: &TlsConnector,
    from: IpAddr,
    to: SocketAddr,
    body: &[u8],
) -> io::Result<Answer> {
    let mut s = connect(tls, from, to).await?;
    request(&mut s, "POST", body).await
}

/// What a flood saw.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections that got an answer and were then held open.
    pub held: AtomicU64,
    /// Connection attempts refused (closed before an answer).
    pub refused: AtomicU64,
    /// Answers 429.
    pub limited: AtomicU64,
}

impl Stats {
    /// (held, refused) so far.
    pub fn get(&self) -> (u64, u64) {
        (
            self.held.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }
}

/// A keep-alive flood from `from`: `n` clients, each connecting, sending one GET, then holding
/// the idle connection until the server closes it, and starting over; a refused attempt is
/// retried after `retry`. Runs until the runtime is dropped.
pub fn keep_alive_flood(
    rt: &tokio::runtime::Runtime,
    tls: TlsConnector,
    (from, to): (IpAddr, SocketAddr),
    n: usize,
    retry: Duration,
    stats: Arc<Stats>,
) {
    for _ in 0..n {
        let (tls, stats) = (tls.clone(), stats.clone());
        rt.spawn(async move {
            loop {
                let held = match connect(&tls, from, to).await {
                    Ok(mut s) => match request(&mut s, "GET", b"").await {
                        Ok(a) => {
                            if a.status == 429 {
                                stats.limited.fetch_add(1, Ordering::Relaxed);
                            }
                            stats.held.fetch_add(1, Ordering::Relaxed);
                            let mut buf = [0u8; 64];
                            while matches!(read(&mut s, &mut buf).await, Ok(n) if n > 0) {}
                            true
                        }
                        Err(_) => false,
                    },
                    Err(_) => false,
                };
                if !held {
                    stats.refused.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(retry).await;
                }
            }
        });
    }
}
