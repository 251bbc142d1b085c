//! Who may see the operators' pages: whoever holds the operators' token, sent as
//! `Authorization: Bearer <token>` (scripts, Prometheus) or exchanged once at `/login` for a
//! session cookie (browsers). The token is read from a file at start and kept only as its
//! sha256; sessions are random 256-bit ids, kept as their sha256 too, valid for
//! [`SESSION_TTL`], at most [`MAX_SESSIONS`] at once (the oldest goes first).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// How long a browser session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// Most sessions kept at once.
pub const MAX_SESSIONS: usize = 256;
/// The session cookie's name.
pub const COOKIE: &str = "imrs_operator";
/// Shortest token accepted (bytes): guessing must be out of the question.
pub const MIN_TOKEN: usize = 32;

/// The operators' token file is unusable.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// It cannot be read.
    #[error("{path}: cannot read the operators' token")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It is too short (or empty).
    #[error(
        "{path}: the operators' token is {len} bytes; at least {MIN_TOKEN} are needed \
         (for example: head -c 32 /dev/urandom | base64 > {path})"
    )]
    Short {
        /// The file.
        path: std::path::PathBuf,
        /// Its length after trimming.
        len: usize,
    },
    /// It holds characters an HTTP header cannot carry.
    #[error("{path}: the operators' token must be printable ASCII without spaces")]
    Charset {
        /// The file.
        path: std::path::PathBuf,
    },
}

/// The operators' credentials: the token, and the browser sessions it opened.
#[derive(Debug)]
pub struct Access {
    token: [u8; 32],
    /// Session id digest -> (expiry, order opened).
    sessions: Mutex<Sessions>,
}

#[derive(Debug, Default)]
struct Sessions {
    open: HashMap<[u8; 32], (Instant, u64)>,
    opened: u64,
}

fn digest(s: &[u8]) -> [u8; 32] {
    Sha256::digest(s).into()
}

/// Compares in time independent of where the bytes differ.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Access {
    /// From the token's text (surrounding whitespace ignored).
    pub fn new(token: &str, origin: &Path) -> Result<Access, TokenError> {
        let t = token.trim();
        if t.len() < MIN_TOKEN {
            return Err(TokenError::Short {
                path: origin.to_path_buf(),
                len: t.len(),
            });
        }
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::Charset {
                path: origin.to_path_buf(),
            });
        }
        Ok(Access {
            token: digest(t.as_bytes()),
            sessions: Mutex::new(Sessions::default()),
        })
    }

    /// Reads the token file.
    pub fn from_file(path: &Path) -> Result<Access, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Access::new(&text, path)
    }

    /// Whether `candidate` is the token.
    pub fn token_is(&self, candidate: &str) -> bool {
        same(&self.token, &digest(candidate.as_bytes()))
    }

    /// Whether a request with these `Authorization` and `Cookie` header values may see the
    /// pages.
    pub fn allows(&self, authorization: Option<&str>, cookie: Option<&str>) -> bool {
        if let Some(t) = authorization.and_then(|a| a.strip_prefix("Bearer ")) {
            return self.token_is(t.trim());
        }
        cookie
            .and_then(session_of)
            .is_some_and(|id| self.session_valid(id))
    }

    /// Opens a session; the cookie's value.
    pub fn open_session(&self) -> Result<String, getrandom::Error> {
        let mut id = [0u8; 32];
        getrandom::fill(&mut id)?;
        let value = hex::encode(id);
        let now = Instant::now();
        let mut s = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        s.open.retain(|_, (expiry, _)| *expiry > now);
        if s.open.len() >= MAX_SESSIONS
            && let Some(oldest) = s.open.iter().min_by_key(|(_, (_, n))| *n).map(|(k, _)| *k)
        {
            s.open.remove(&oldest);
        }
        s.opened += 1;
        let n = s.opened;
        s.open
            .insert(digest(value.as_bytes()), (now + SESSION_TTL, n));
        Ok(value)
    }

    fn session_valid(&self, id: &str) -> bool {
        let s = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        s.open
            .get(&digest(id.as_bytes()))
            .is_some_and(|(expiry, _)| *expiry > Instant::now())
    }

    /// Sessions open now.
    pub fn sessions(&self) -> usize {
        let now = Instant::now();
        let s = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        s.open.values().filter(|(e, _)| *e > now).count()
    }
}

/// The session id in a `Cookie` header value.
fn session_of(cookie: &str) -> Option<&str> {
    cookie
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
}

/// The `Set-Cookie` value for a new session: TLS only, not readable by scripts, never sent
/// along with another site's requests.
pub fn set_cookie(value: &str) -> String {
    format!(
        "{COOKIE}={value}; Path=/; Max-Age={}; Secure; HttpOnly; SameSite=Strict",
        SESSION_TTL.as_secs()
    )
}

/// The `token` field of an `application/x-www-form-urlencoded` body.
pub fn form_token(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    text.split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "token")
        .and_then(|(_, v)| {
            percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8()
                .ok()
                .map(|v| v.into_owned())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef-operators";

    #[test]
    fn token_bearer_and_sessions() {
        let a = Access::new(&format!("  {TOKEN}\n"), Path::new("t")).unwrap();
        assert!(a.allows(Some(&format!("Bearer {TOKEN}")), None));
        assert!(!a.allows(Some("Bearer nope"), None));
        assert!(!a.allows(Some(TOKEN), None), "no scheme, no entry");
        assert!(!a.allows(None, None));
        let s = a.open_session().unwrap();
        assert_eq!(s.len(), 64);
        assert!(a.allows(None, Some(&format!("other=1; {COOKIE}={s}"))));
        assert!(!a.allows(None, Some(&format!("{COOKIE}={s}x"))));
        assert!(!a.allows(None, Some("imrs_operator=")));
        // A wrong bearer token is not rescued by a good cookie.
        assert!(!a.allows(Some("Bearer nope"), Some(&format!("{COOKIE}={s}"))));
        assert_eq!(a.sessions(), 1);
    }

    #[test]
    fn sessions_are_capped() {
        let a = Access::new(TOKEN, Path::new("t")).unwrap();
        let first = a.open_session().unwrap();
        for _ in 0..MAX_SESSIONS {
            a.open_session().unwrap();
        }
        assert_eq!(a.sessions(), MAX_SESSIONS);
        assert!(!a.allows(None, Some(&format!("{COOKIE}={first}"))));
    }

    #[test]
    fn weak_or_odd_tokens_are_refused_with_the_file_named() {
        let e = Access::new("short", Path::new("/etc/imrs/token"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/etc/imrs/token") && e.contains("5 bytes"),
            "{e}"
        );
        let e = Access::new(&format!("{TOKEN} with spaces"), Path::new("t"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("printable ASCII"), "{e}");
        let e = Access::from_file(Path::new("/nonexistent/token"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/token"), "{e}");
    }

    #[test]
    fn form_field() {
        assert_eq!(
            form_token(b"a=1&token=ab%2Bc+d&b=2").as_deref(),
            Some("ab+c d")
        );
        assert_eq!(form_token(b"tok=1"), None);
        assert_eq!(form_token(&[0xff, 0xfe]), None);
    }
}
