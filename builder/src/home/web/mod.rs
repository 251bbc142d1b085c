//! The operators' side of the receiver (issue 17), on its TLS port beside the devices' reports:
//!
//! - `GET /fleet` (and `/`): the fleet table, one row per device key, the troubled first;
//! - `GET /fleet/device/<key id>`: one device: its row, its queries per second (two weeks of
//!   its RSSAC002 telemetry, by transport and by response code), timeline, commands, notices;
//! - `GET /fleet/traffic`: the same charts for the fleet (30 days, the boxes' counts summed);
//! - `GET /metrics`: Prometheus text ([`prom`]);
//! - `GET /login`, `POST /login`: the token exchanged for a browser session ([`auth`]);
//! - `GET /healthz`: `ok` when the database answers (open: it says nothing else).
//!
//! Off unless `home serve --operator-token FILE` is given; then every page but `/healthz` needs
//! the token (bearer) or a session, and a request without either gets `401` and the login form.
//! A device id that is not a key id, or that no report came from, gets the same `404` (nothing
//! says which).
//!
//! - [`state`]: one word for how a device is.
//! - [`html`]: the pages, every stored value escaped.
//! - [`chart`]: the charts, SVG drawn on the server.

pub mod auth;
pub mod chart;
pub mod html;
pub mod prom;
pub mod state;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use super::receiver::{Receiver, unix_now as now_unix};
use super::store::{self, Fleet, StoreError};

/// Largest login form body.
const MAX_FORM: usize = 4096;
/// Default of `home serve --stale-after`: two heartbeat periods at the default 300 s.
pub const DEFAULT_STALE_AFTER: u64 = 600;

/// How old the fleet view behind `/fleet` and `/metrics` may be when reports keep arriving
/// (a fleet of 1,000 heartbeating boxes changes it several times a second; reading it takes
/// longer than serving it: BENCHMARKS.md).
pub const SNAPSHOT_MAX_AGE: Duration = Duration::from_secs(5);

/// The operators' pages, when on.
#[derive(Debug)]
pub struct Operators {
    /// Who may see them.
    pub access: auth::Access,
    /// Seconds of silence after which a device counts as quiet.
    pub stale_after: u64,
    /// The last fleet view read, reused while nothing was stored since or while it is younger
    /// than [`SNAPSHOT_MAX_AGE`].
    pub snapshot: tokio::sync::Mutex<Option<Snapshot>>,
}

impl Operators {
    /// The operators' pages for holders of `access`.
    pub fn new(access: auth::Access, stale_after: u64) -> Operators {
        Operators {
            access,
            stale_after,
            snapshot: tokio::sync::Mutex::new(None),
        }
    }
}

/// A fleet view as read, with when and after how many stored submissions.
#[derive(Debug)]
pub struct Snapshot {
    taken: Instant,
    changes: u64,
    fleet: Arc<Fleet>,
}

/// The fleet view, from the snapshot when it is current enough.
async fn fleet_view(ops: &Operators, rx: &Receiver) -> Result<Arc<Fleet>, StoreError> {
    let changes = rx.answered.changes();
    // One read at a time: requests arriving meanwhile get its result.
    let mut snap = ops.snapshot.lock().await;
    if let Some(s) = snap.as_ref()
        && (s.changes == changes || s.taken.elapsed() < SNAPSHOT_MAX_AGE)
    {
        return Ok(s.fleet.clone());
    }
    let fleet = Arc::new(read(rx.db().to_path_buf(), |p| store::fleet(p, 0)).await?);
    *snap = Some(Snapshot {
        taken: Instant::now(),
        changes,
        fleet: fleet.clone(),
    });
    Ok(fleet)
}

/// Whether this request is for the operators' side (otherwise it is a device's).
pub fn is_operator_request(rx: &Receiver, method: &Method, path: &str) -> bool {
    if *method == Method::GET && path == "/healthz" {
        return true;
    }
    if rx.operators.is_none() {
        return false;
    }
    match *method {
        Method::GET => {
            matches!(
                path,
                "/" | "/fleet" | "/fleet/traffic" | "/metrics" | "/login"
            ) || path.starts_with("/fleet/device/")
        }
        Method::POST => path == "/login",
        _ => false,
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; \
             frame-ancestors 'none'",
        ),
    );
    r
}

fn html(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    respond(status, "text/html; charset=utf-8", body)
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    respond(status, "text/plain; charset=utf-8", body)
}

fn unauthorized(message: Option<&str>) -> Response<Full<Bytes>> {
    let mut r = html(StatusCode::UNAUTHORIZED, html::login(message));
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"imrs operators\""),
    );
    r
}

fn not_found() -> Response<Full<Bytes>> {
    html(
        StatusCode::NOT_FOUND,
        html::error("Not found", "No such device on this receiver."),
    )
}

fn unavailable(rx: &Receiver, e: &StoreError) -> Response<Full<Bytes>> {
    if rx.log {
        eprintln!("home: operators' page: {}", imrs_config::error_chain(e));
    }
    html(
        StatusCode::SERVICE_UNAVAILABLE,
        html::error("Unavailable", "The report database cannot be read now."),
    )
}

/// Runs a blocking database read off the async threads.
async fn read<T: Send + 'static>(
    db: PathBuf,
    f: impl FnOnce(&std::path::Path) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let path = db.clone();
    tokio::task::spawn_blocking(move || f(&db))
        .await
        .unwrap_or_else(|e| {
            Err(StoreError::Damaged {
                path,
                detail: format!("the read stopped: {e}"),
            })
        })
}

/// Days of telemetry on a device's page.
const DEVICE_DAYS: usize = 14;
/// Days of telemetry on the fleet's traffic page.
const FLEET_DAYS: usize = 30;

fn days(rows: Vec<(String, f64, imrs_config::rssac002::DayMetrics)>) -> Vec<chart::Day> {
    rows.into_iter()
        .map(|(day, seconds, metrics)| chart::Day {
            day,
            seconds,
            metrics,
        })
        .collect()
}

/// A key id as the receiver writes them (hex); anything else is no device.
fn is_key_id(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Answers an operators' request (see [`is_operator_request`]).
pub async fn handle(
    req: Request<Incoming>,
    peer: std::net::SocketAddr,
    rx: &Receiver,
) -> Response<Full<Bytes>> {
    let db = rx.db().to_path_buf();
    let path = req.uri().path().to_string();
    if path == "/healthz" {
        return match read(db, store::ping).await {
            Ok(()) => text(StatusCode::OK, "ok\n".into()),
            Err(e) => {
                if rx.log {
                    eprintln!("home: /healthz: {}", imrs_config::error_chain(&e));
                }
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "database unavailable\n".into(),
                )
            }
        };
    }
    let Some(ops) = rx.operators.as_ref() else {
        return not_found();
    };
    if path == "/login" {
        if req.method() == Method::GET {
            return html(StatusCode::OK, html::login(None));
        }
        let body = match super::server::read_body(req.into_body(), MAX_FORM, MAX_FORM as u64).await
        {
            super::server::Body::Complete(b) => b,
            _ => return unauthorized(Some("The form could not be read.")),
        };
        return match auth::form_token(&body) {
            Some(t) if ops.access.token_is(t.trim()) => match ops.access.open_session() {
                Ok(session) => {
                    let mut r = html(
                        StatusCode::SEE_OTHER,
                        html::error("Signed in", "On to the fleet."),
                    );
                    let h = r.headers_mut();
                    h.insert(header::LOCATION, HeaderValue::from_static("/fleet"));
                    if let Ok(v) = HeaderValue::from_str(&auth::set_cookie(&session)) {
                        h.insert(header::SET_COOKIE, v);
                    }
                    r
                }
                Err(e) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("no randomness for a session: {e}\n"),
                ),
            },
            _ => {
                if rx.log {
                    eprintln!("home: {peer}: operators' sign-in with a wrong token");
                }
                unauthorized(Some("Wrong token."))
            }
        };
    }
    let header = |h: header::HeaderName| req.headers().get(h).and_then(|v| v.to_str().ok());
    if !ops
        .access
        .allows(header(header::AUTHORIZATION), header(header::COOKIE))
    {
        return if path == "/metrics" {
            let mut r = text(
                StatusCode::UNAUTHORIZED,
                "the operators' token is needed\n".into(),
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"imrs operators\""),
            );
            r
        } else {
            unauthorized(None)
        };
    }
    let (now, stale) = (now_unix(), ops.stale_after);
    if let Some(key) = path.strip_prefix("/fleet/device/") {
        if !is_key_id(key) {
            return not_found();
        }
        let key = key.to_string();
        let found = read(db, move |p| {
            let Some(page) = store::device::device_page(p, &key)? else {
                return Ok(None);
            };
            let traffic = store::telemetry_days(p, Some(&key), DEVICE_DAYS)?;
            Ok(Some((page, traffic)))
        })
        .await;
        return match found {
            Ok(Some((mut page, traffic))) => {
                // The lag against the fleet's newest serial, as the fleet page has it.
                if let Ok(fleet) = fleet_view(ops, rx).await {
                    page.row.serial_lag = fleet
                        .devices
                        .iter()
                        .find(|d| d.device == page.row.device)
                        .and_then(|d| d.serial_lag);
                }
                html(
                    StatusCode::OK,
                    html::device(&page, &days(traffic), now, stale),
                )
            }
            Ok(None) => not_found(),
            Err(e) => unavailable(rx, &e),
        };
    }
    if path == "/fleet/traffic" {
        return match read(db, |p| store::telemetry_days(p, None, FLEET_DAYS)).await {
            Ok(traffic) => html(StatusCode::OK, html::traffic(&days(traffic), now)),
            Err(e) => unavailable(rx, &e),
        };
    }
    match fleet_view(ops, rx).await {
        Ok(fleet) if path == "/metrics" => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            prom::render(&fleet, &rx.answered, now, stale),
        ),
        Ok(fleet) => html(StatusCode::OK, html::fleet(&fleet, now, stale)),
        Err(e) => unavailable(rx, &e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids() {
        assert!(is_key_id("0123456789abcdef"));
        for bad in [
            "",
            "../etc",
            "0123456789abcdeg",
            "k1",
            &"a".repeat(65),
            "%2e%2e",
        ] {
            assert!(!is_key_id(bad), "{bad}");
        }
    }
}
