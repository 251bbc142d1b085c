//! The HTTPS side of the receiver: TLS, HTTP/1.1, body limits, and the serving loop. Each
//! `POST`ed body goes to [`Receiver::submit`] (verification, storage, the answer); a `GET` of
//! `/v1/images/<sha256>/<file>` gets a published image file ([`super::images`]) or `404`; the
//! operators' pages and `/healthz` go to [`super::web`]; anything else gets `405`.
//!
//! Every connection is TLS (rustls, ring); handshakes, headers and bodies have time limits, an
//! idle keep-alive connection is closed after [`Limits::idle_timeout`], the number of open
//! connections is capped in all and per client, and each client has a request rate
//! ([`super::limits`]), so a slow, hostile or merely eager client cannot stop the others.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use super::enrol::{EnrolError, EnrolmentMode};
use super::limits::{ClientLimits, Clients, Refused};
use super::receiver::Receiver;
use super::source::Source;
use super::store::{RejectedCaps, StoreError};
use imrs_config::escape_all as escape;

/// Default largest accepted body.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;
/// Default of [`Limits::connections`].
pub const DEFAULT_CONNECTIONS: usize = 1024;
/// Time allowed for a TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of [`Limits::idle_timeout`].
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for a request body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// The receiver could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Reading the TLS certificate chain failed.
    #[error("{path}: cannot read a PEM certificate chain")]
    Cert {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// Reading the TLS private key failed.
    #[error("{path}: cannot read a PEM private key")]
    Key {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// rustls refused the certificate/key pair.
    #[error("{cert}: unusable TLS certificate or key")]
    Tls {
        /// The certificate file.
        cert: PathBuf,
        /// Why.
        #[source]
        source: rustls::Error,
    },
    /// Binding the listening socket failed.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The tokio runtime could not be built.
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    /// The database could not be opened.
    #[error("report database")]
    Store(#[from] StoreError),
    /// The enrolment folder could not be read.
    #[error("enrolment")]
    Enrol(#[from] EnrolError),
    /// The operators' token file is unusable.
    #[error("operators' pages")]
    Token(#[from] super::web::auth::TokenError),
    /// Notices cannot be sent as configured.
    #[error(transparent)]
    Notify(#[from] super::notify::NotifyError),
}

/// The receiver's limits on what clients may send and hold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Largest accepted body in bytes.
    pub max_body: usize,
    /// Most connections served at once, all clients together; more wait in the kernel's
    /// accept queue.
    pub connections: usize,
    /// Time allowed for a request's headers, which is also how long an idle keep-alive
    /// connection is kept.
    pub idle_timeout: Duration,
    /// What each client may do.
    pub per_client: ClientLimits,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_body: DEFAULT_MAX_BODY,
            connections: DEFAULT_CONNECTIONS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            per_client: ClientLimits::default(),
        }
    }
}

/// What `home serve` needs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// SQLite database file.
    pub db: PathBuf,
    /// PEM certificate chain (leaf first).
    pub tls_cert: PathBuf,
    /// PEM private key.
    pub tls_key: PathBuf,
    /// Which device keys are accepted.
    pub enrolment: EnrolmentMode,
    /// Connection, rate and size limits.
    pub limits: Limits,
    /// How many refused submissions are kept.
    pub rejected: RejectedCaps,
    /// Print one line per stored or rejected report on stderr.
    pub log: bool,
    /// The operators' token file: the fleet pages and `/metrics` are served to its holders
    /// (`None`: not served at all).
    pub operator_token: Option<PathBuf>,
    /// Seconds of silence after which the pages show a device as quiet.
    pub stale_after: u64,
    /// Notices to the host organisations (`None`: nobody is told).
    pub notify: Option<super::notify::NotifyConfig>,
}

impl ServeConfig {
    /// A configuration with the default limits and caps, not logging.
    pub fn new(
        listen: SocketAddr,
        db: PathBuf,
        tls_cert: PathBuf,
        tls_key: PathBuf,
        enrolment: EnrolmentMode,
    ) -> ServeConfig {
        ServeConfig {
            listen,
            db,
            tls_cert,
            tls_key,
            enrolment,
            limits: Limits::default(),
            rejected: RejectedCaps::default(),
            log: false,
            operator_token: None,
            stale_after: super::web::DEFAULT_STALE_AFTER,
            notify: None,
        }
    }
}

/// Loads the receiver's TLS configuration (rustls with the ring provider, HTTP/1.1).
pub fn tls_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, ServeError> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| ServeError::Cert {
            path: cert.to_path_buf(),
            source,
        })?;
    let pkey = PrivateKeyDer::from_pem_file(key).map_err(|source| ServeError::Key {
        path: key.to_path_buf(),
        source,
    })?;
    let tls_err = |source| ServeError::Tls {
        cert: cert.to_path_buf(),
        source,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(tls_err)?
    .with_no_client_auth()
    .with_single_cert(certs, pkey)
    .map_err(tls_err)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn answer(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut bytes = serde_json::to_vec(body).unwrap_or_default();
    bytes.push(b'\n');
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn close(mut r: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    r.headers_mut().insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("close"),
    );
    r
}

/// Logs a per-client refusal when one is due (at most once per client per
/// [`super::limits::LOG_EVERY`]).
fn log_refusal(rx: &Receiver, source: Source, what: &str, (why, due): Refused) {
    if let (true, Some(n)) = (rx.log, due) {
        eprintln!(
            "home: {source}: {what} refused: {} ({n} refusal(s) since the last note)",
            why.describe()
        );
    }
}

async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    rx: &Receiver,
    clients: &Clients,
) -> Response<Full<Bytes>> {
    let source = Source::from(peer.ip());
    if let Err(refused) = clients.request(source) {
        log_refusal(rx, source, "request", refused);
        let mut r = close(answer(
            StatusCode::TOO_MANY_REQUESTS,
            &json!({"status": "rate-limited", "error": "too many requests from this client"}),
        ));
        if let Ok(v) = hyper::header::HeaderValue::from_str(&clients.retry_after().to_string()) {
            r.headers_mut().insert(hyper::header::RETRY_AFTER, v);
        }
        return r;
    }
    if super::web::is_operator_request(rx, req.method(), req.uri().path()) {
        return super::web::handle(req, peer, rx).await;
    }
    if req.method() == Method::GET && req.uri().path().starts_with(super::images::URL_PREFIX) {
        return image_file(rx, req.uri().path()).await;
    }
    if req.method() != Method::POST {
        let mut r = answer(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"status": "method-not-allowed", "error": "POST a signed report"}),
        );
        r.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("POST"),
        );
        return r;
    }
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = |n: String, unread: bool| {
        let reason = format!(
            "body of {n} bytes exceeds the limit of {} bytes",
            rx.max_body
        );
        rx.refuse(
            peer,
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            reason.clone(),
        );
        let r = answer(
            StatusCode::PAYLOAD_TOO_LARGE,
            &json!({"status": "too-large", "error": reason}),
        );
        // When the rest of the body is not read, the connection cannot be reused.
        if unread { close(r) } else { r }
    };
    let drain_max = (rx.max_body as u64).saturating_mul(DRAIN_FACTOR);
    if let Some(n) = declared
        && n > drain_max
    {
        return too_large(n.to_string(), true);
    }
    let bytes = match read_body(req.into_body(), rx.max_body, drain_max).await {
        Body::Complete(b) => b,
        Body::TooLarge { seen, drained } => return too_large(seen.to_string(), !drained),
        Body::Broken(e) => {
            return answer(
                StatusCode::BAD_REQUEST,
                &json!({"status": "malformed", "error": format!("reading the body: {e}")}),
            );
        }
        Body::Timeout => {
            rx.refuse(
                peer,
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                "body too slow".into(),
            );
            return close(answer(
                StatusCode::REQUEST_TIMEOUT,
                &json!({"status": "timeout", "error": "body too slow"}),
            ));
        }
    };
    let (status, body) = rx.submit(&bytes, peer).await;
    answer(status, &body)
}

/// One file of a published image (`GET /v1/images/<sha256>/<file>`), or 404.
async fn image_file(rx: &Receiver, path: &str) -> Response<Full<Bytes>> {
    let not_found = || {
        answer(
            StatusCode::NOT_FOUND,
            &json!({"status": "not-found", "error": "no such image file on this receiver"}),
        )
    };
    let Some(file) = super::images::resolve(&rx.images, path) else {
        return not_found();
    };
    let read = {
        let file = file.clone();
        tokio::task::spawn_blocking(move || std::fs::read(file)).await
    };
    match read.unwrap_or_else(|e| Err(std::io::Error::other(e))) {
        Ok(data) => {
            let mut r = Response::new(Full::new(Bytes::from(data)));
            r.headers_mut().insert(
                CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/octet-stream"),
            );
            r
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => not_found(),
        Err(e) => {
            if rx.log {
                eprintln!("home: {}: cannot read: {e}", file.display());
            }
            answer(
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!({"status": "error", "error": "the image file cannot be read"}),
            )
        }
    }
}

/// A body over the limit is still read and thrown away up to this many times the limit, so an
/// honest client gets its 413 instead of a reset; beyond that the connection is closed.
const DRAIN_FACTOR: u64 = 16;

/// How reading a body ended.
pub(super) enum Body {
    Complete(Bytes),
    TooLarge { seen: u64, drained: bool },
    Broken(hyper::Error),
    Timeout,
}

/// Reads at most `max` bytes; past that, discards up to `drain_max` bytes in total.
pub(super) async fn read_body(mut body: Incoming, max: usize, drain_max: u64) -> Body {
    let deadline = tokio::time::Instant::now() + BODY_TIMEOUT;
    let mut buf = Vec::new();
    let mut seen: u64 = 0;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Body::Timeout,
            Ok(None) => break,
            Ok(Some(Err(e))) => return Body::Broken(e),
            Ok(Some(Ok(f))) => f,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen = seen.saturating_add(data.len() as u64);
        if seen > drain_max {
            return Body::TooLarge {
                seen,
                drained: false,
            };
        }
        if seen <= max as u64 {
            buf.extend_from_slice(&data);
        } else {
            buf = Vec::new();
        }
    }
    if seen > max as u64 {
        Body::TooLarge {
            seen,
            drained: true,
        }
    } else {
        Body::Complete(Bytes::from(buf))
    }
}

/// Serves HTTPS on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    receiver: Arc<Receiver>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    // Stopped with the runtime.
    if let Some(n) = receiver.notifier.clone() {
        tokio::spawn(n.run());
    }
    let slots = Arc::new(Semaphore::new(limits.connections.max(1)));
    let clients = Clients::new(limits.per_client);
    tokio::pin!(shutdown);
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: wait a little instead of spinning.
                    eprintln!("home: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let source = Source::from(peer.ip());
        let admitted = match clients.admit(source) {
            Ok(a) => a,
            Err(refused) => {
                // Closed before any TLS work; the slot is free again at once.
                log_refusal(&receiver, source, "connection", refused);
                drop(tcp);
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let receiver = receiver.clone();
        let clients = clients.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _admitted = admitted;
            let _ = tcp.set_nodelay(true);
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    if receiver.log {
                        eprintln!(
                            "home: {peer}: TLS handshake failed: {}",
                            escape(&e.to_string())
                        );
                    }
                    return;
                }
                Err(_) => return,
            };
            let svc = hyper::service::service_fn(move |req| {
                let (receiver, clients) = (receiver.clone(), clients.clone());
                async move { Ok::<_, Infallible>(handle(req, peer, &receiver, &clients).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.idle_timeout)
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        });
    }
}

/// A receiver running on its own thread and runtime (tests, benchmarks, embedding).
#[derive(Debug)]
pub struct Running {
    /// The address it listens on.
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, drops open connections and closes the database.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Builds the runtime the receiver runs on.
pub fn runtime() -> Result<tokio::runtime::Runtime, ServeError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("home-receiver")
        .build()
        .map_err(ServeError::Runtime)
}

/// Opens everything, binds, and serves on a new thread until [`Running::stop`] or drop.
pub fn start(cfg: &ServeConfig) -> Result<Running, ServeError> {
    let tls = tls_config(&cfg.tls_cert, &cfg.tls_key)?;
    let receiver = Arc::new(Receiver::open(cfg)?);
    let rt = runtime()?;
    let listener = rt
        .block_on(TcpListener::bind(cfg.listen))
        .map_err(|source| ServeError::Bind {
            addr: cfg.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: cfg.listen,
        source,
    })?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let limits = cfg.limits;
    let thread = std::thread::Builder::new()
        .name("home-serve".into())
        .spawn(move || {
            rt.block_on(serve(listener, tls, receiver, limits, async {
                let _ = stopped.await;
            }));
            rt.shutdown_timeout(Duration::from_secs(1));
        })
        .map_err(ServeError::Runtime)?;
    Ok(Running {
        addr,
        stop: Some(stop),
        thread: Some(thread),
    })
}
