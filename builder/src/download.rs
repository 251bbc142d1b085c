//! Downloading one locked package without apt: the URLs it may come from (the lock's mirror, the
//! Debian snapshot archive at the lock's timestamp, then an extra base the user names), and a
//! streaming read over HTTP(S) (ureq) or `file://` that checks size and sha256 as the bytes arrive
//! and hands back the bytes only when both match.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::time::Duration;

use imrs_config::lock::{Lock, LockedPackage};
use indicatif::ProgressBar;
use sha2::{Digest, Sha256};

/// The Debian snapshot service's archive root: `<root>/<archive>/<timestamp>/<pool path>`.
pub const SNAPSHOT_ARCHIVE: &str = "https://snapshot.debian.org/archive";

/// Environment variable that replaces [`SNAPSHOT_ARCHIVE`] (a local copy of the snapshot
/// service, or a test server).
pub const SNAPSHOT_ARCHIVE_ENV: &str = "IMRS_SNAPSHOT_ARCHIVE";

/// Connection and per-read limits: a mirror that does not answer is given up on, not waited for.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// A source URL that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error(
    "{what} = {value}: not an http://, https:// or file:// URL (the package's pool path is \
     appended to it)"
)]
pub struct BadSource {
    /// Where it was given (`--snapshot`, `$IMRS_SNAPSHOT_ARCHIVE`, `apt.snapshot`).
    pub what: String,
    /// The value, control characters escaped.
    pub value: String,
}

/// Where packages are downloaded from besides each package's own mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources {
    /// Snapshot archive root ([`SNAPSHOT_ARCHIVE`] unless overridden).
    pub snapshot_archive: String,
    /// An extra base URL tried last: `<base>/<pool path>`.
    pub extra: Option<String>,
}

fn usable(what: &str, url: &str) -> Result<String, BadSource> {
    let ok = ["http://", "https://", "file://"]
        .iter()
        .any(|s| url.starts_with(s) && url.len() > s.len())
        && !url.chars().any(|c| c.is_control() || c == ' ');
    if ok {
        Ok(url.trim_end_matches('/').to_string())
    } else {
        Err(BadSource {
            what: what.to_string(),
            value: url.escape_debug().to_string(),
        })
    }
}

impl Sources {
    /// The sources for a run: the snapshot root from `$IMRS_SNAPSHOT_ARCHIVE` (or the default),
    /// and `extra` (`--snapshot`, else the recipe's `apt.snapshot`; `what` names which).
    pub fn new(extra: Option<(&str, &str)>) -> Result<Sources, BadSource> {
        let root = match std::env::var(SNAPSHOT_ARCHIVE_ENV) {
            Ok(v) if !v.is_empty() => usable(&format!("${SNAPSHOT_ARCHIVE_ENV}"), &v)?,
            _ => SNAPSHOT_ARCHIVE.to_string(),
        };
        Ok(Sources {
            snapshot_archive: root,
            extra: extra.map(|(what, url)| usable(what, url)).transpose()?,
        })
    }

    /// Every URL `p` may be downloaded from, in the order to try: its mirror, the snapshot
    /// archive at the lock's timestamp, the extra base.
    pub fn urls(&self, lock: &Lock, p: &LockedPackage) -> Vec<String> {
        let join = |base: &str| {
            if base.starts_with("file://") {
                format!("{base}/{}", p.filename)
            } else {
                format!("{base}/{}", encode_path(&p.filename))
            }
        };
        let mut out = vec![
            join(&p.mirror),
            join(&format!(
                "{}/{}/{}",
                self.snapshot_archive, p.archive, lock.snapshot
            )),
        ];
        if let Some(e) = &self.extra {
            out.push(join(e));
        }
        out
    }
}

/// Percent-encodes a pool path for a URL: everything but letters, digits, `-._/` (apt does the
/// same to `+`, `~` and `:`; some servers read a raw `+` as a space).
pub fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len() + 8);
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-._/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Why one URL did not give the package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The server answered with this HTTP status (404: it does not have the file).
    Status(u16),
    /// A local `file://` source has no such file.
    NoFile,
    /// The host could not be reached.
    Unreachable(String),
    /// Not tried: the host was unreachable earlier in this run.
    Skipped(String),
    /// Bytes arrived but they are not the locked package (size or sha256).
    Refused(String),
    /// Anything else (TLS, protocol, a transfer cut short by the network, local I/O).
    Failed(String),
}

impl Failure {
    /// The source answered that it does not have the file (HTTP 404 or 410, no such local file).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Failure::Status(404 | 410) | Failure::NoFile)
    }

    /// The source served bytes that are not the locked package.
    pub fn is_refused(&self) -> bool {
        matches!(self, Failure::Refused(_))
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Status(code) => write!(f, "HTTP {code}"),
            Failure::NoFile => f.write_str("no such file"),
            Failure::Unreachable(e) => write!(f, "unreachable: {e}"),
            Failure::Skipped(e) => write!(f, "not tried, unreachable earlier: {e}"),
            Failure::Refused(e) => write!(f, "refused: {e}"),
            Failure::Failed(e) => f.write_str(e),
        }
    }
}

/// One URL tried and why it did not give the package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The URL.
    pub url: String,
    /// What went wrong.
    pub failure: Failure,
}

/// Attempts as one line: `URL (why); URL (why)`.
pub fn describe(attempts: &[Attempt]) -> String {
    attempts
        .iter()
        .map(|a| format!("{} ({})", a.url, a.failure))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Downloads packages, remembering hosts that could not be reached so that each is waited for
/// once per run, not once per package.
pub struct Downloader {
    agent: ureq::Agent,
    dead: BTreeMap<String, String>,
}

impl Default for Downloader {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Downloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Downloader")
            .field("dead", &self.dead)
            .finish_non_exhaustive()
    }
}

/// `scheme://host:port` of a URL.
fn authority(url: &str) -> &str {
    let after = url.find("://").map_or(0, |i| i + 3);
    let end = url[after..].find('/').map_or(url.len(), |i| after + i);
    &url[..end]
}

impl Downloader {
    /// A downloader with the proxy settings of the environment (`http_proxy`, `NO_PROXY`...).
    pub fn new() -> Downloader {
        let agent = ureq::Agent::config_builder()
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_recv_response(Some(READ_TIMEOUT))
            .timeout_per_read(Some(READ_TIMEOUT))
            .user_agent(concat!("imrs-build/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Downloader {
            agent,
            dead: BTreeMap::new(),
        }
    }

    /// Downloads `p` from `url`; the bytes come back only if their size and sha256 are the
    /// lock's. `pb` shows the progress.
    pub fn get(
        &mut self,
        url: &str,
        p: &LockedPackage,
        pb: &ProgressBar,
    ) -> Result<Vec<u8>, Failure> {
        if let Some(path) = url.strip_prefix("file://") {
            let f = File::open(path).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Failure::NoFile,
                _ => Failure::Failed(e.to_string()),
            })?;
            return read_checked(f, p, pb);
        }
        let host = authority(url).to_string();
        if let Some(why) = self.dead.get(&host) {
            return Err(Failure::Skipped(why.clone()));
        }
        match self.agent.get(url).call() {
            Ok(resp) => read_checked(resp.into_body().into_reader(), p, pb),
            Err(ureq::Error::StatusCode(code)) => Err(Failure::Status(code)),
            Err(
                e @ (ureq::Error::HostNotFound
                | ureq::Error::ConnectionFailed
                | ureq::Error::Timeout(ureq::Timeout::Connect | ureq::Timeout::Resolve)),
            ) => {
                self.dead.insert(host, e.to_string());
                Err(Failure::Unreachable(e.to_string()))
            }
            Err(ureq::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused
                        | std::io::ErrorKind::HostUnreachable
                        | std::io::ErrorKind::NetworkUnreachable
                ) =>
            {
                self.dead.insert(host, e.to_string());
                Err(Failure::Unreachable(e.to_string()))
            }
            Err(e) => Err(Failure::Failed(e.to_string())),
        }
    }
}

/// Reads a package body, refusing it as soon as it grows past the locked size, and at the end
/// unless size and sha256 are the lock's.
pub fn read_checked(
    mut r: impl Read,
    p: &LockedPackage,
    pb: &ProgressBar,
) -> Result<Vec<u8>, Failure> {
    let cap = usize::try_from(p.size.min(64 << 20)).unwrap_or(64 << 20);
    let mut data = Vec::with_capacity(cap);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Failure::Failed(format!("reading the body: {e}"))),
        };
        if data.len() as u64 + n as u64 > p.size {
            return Err(Failure::Refused(format!(
                "more than the locked {} bytes",
                p.size
            )));
        }
        h.update(&buf[..n]);
        data.extend_from_slice(&buf[..n]);
        pb.set_position(data.len() as u64);
    }
    if data.len() as u64 != p.size {
        return Err(Failure::Refused(format!(
            "{} bytes, the lock says {}",
            data.len(),
            p.size
        )));
    }
    let actual = hex::encode(h.finalize());
    if actual != p.sha256 {
        return Err(Failure::Refused(format!(
            "sha256 {actual}, the lock says {}",
            p.sha256
        )));
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use imrs_config::lock::{LOCK_SCHEMA, Role};

    fn pkg(data: &[u8]) -> LockedPackage {
        LockedPackage {
            name: "libfoo1".into(),
            version: "1:2.0+dfsg-1~deb12u1".into(),
            architecture: "amd64".into(),
            size: data.len() as u64,
            sha256: hex::encode(Sha256::digest(data)),
            mirror: "http://deb.debian.org/debian-security".into(),
            archive: "debian-security".into(),
            suite: "bookworm-security".into(),
            component: "main".into(),
            filename: "pool/updates/main/f/foo/libfoo1_2.0+dfsg-1~deb12u1_amd64.deb".into(),
            role: Role::Dependency,
        }
    }

    fn lock(p: &LockedPackage) -> Lock {
        Lock {
            schema: LOCK_SCHEMA,
            source_date_epoch: 1,
            snapshot: "20260731T000000Z".into(),
            architecture: "amd64".into(),
            kernel_release: "6.1.0-1-amd64".into(),
            packages: vec![p.clone()],
        }
    }

    #[test]
    fn urls_are_mirror_then_snapshot_then_extra_with_escaped_paths() {
        let p = pkg(b"x");
        let s = Sources {
            snapshot_archive: "http://127.0.0.1:1/archive".into(),
            extra: Some("file:///srv/snap".into()),
        };
        assert_eq!(
            s.urls(&lock(&p), &p),
            vec![
                "http://deb.debian.org/debian-security/pool/updates/main/f/foo/\
                 libfoo1_2.0%2Bdfsg-1%7Edeb12u1_amd64.deb"
                    .to_string(),
                "http://127.0.0.1:1/archive/debian-security/20260731T000000Z/pool/updates/main/\
                 f/foo/libfoo1_2.0%2Bdfsg-1%7Edeb12u1_amd64.deb"
                    .to_string(),
                "file:///srv/snap/pool/updates/main/f/foo/libfoo1_2.0+dfsg-1~deb12u1_amd64.deb"
                    .to_string(),
            ]
        );
        assert_eq!(encode_path("a:b c%"), "a%3Ab%20c%25");
    }

    #[test]
    fn sources_refuse_what_is_not_a_url() {
        for bad in ["ftp://x", "/not/a/url", "http://", "http://x/a\nb"] {
            let e = usable("--snapshot", bad).unwrap_err().to_string();
            assert!(e.starts_with("--snapshot = "), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
        assert_eq!(usable("x", "http://h/debian/").unwrap(), "http://h/debian");
    }

    #[test]
    fn bodies_are_checked_for_size_and_sha256() {
        let data = b"the package bytes".to_vec();
        let p = pkg(&data);
        let pb = ProgressBar::hidden();
        assert_eq!(read_checked(&data[..], &p, &pb).unwrap(), data);
        let mut longer = data.clone();
        longer.push(b'!');
        assert!(matches!(
            read_checked(&longer[..], &p, &pb),
            Err(Failure::Refused(e)) if e.contains("more than the locked 17 bytes")
        ));
        assert!(matches!(
            read_checked(&data[..5], &p, &pb),
            Err(Failure::Refused(e)) if e.contains("5 bytes, the lock says 17")
        ));
        let mut flipped = data.clone();
        flipped[3] ^= 1;
        assert!(matches!(
            read_checked(&flipped[..], &p, &pb),
            Err(Failure::Refused(e)) if e.contains("sha256")
        ));
    }

    #[test]
    fn authority_is_scheme_host_and_port() {
        assert_eq!(authority("http://127.0.0.1:9/a/b"), "http://127.0.0.1:9");
        assert_eq!(authority("https://h"), "https://h");
    }
}
