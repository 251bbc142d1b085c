//! A host organisation's inboxes, where the receiver's notices arrive: an HTTPS endpoint that
//! keeps the body of every request it gets (the host's webhook; it answers 200, another status,
//! or late, as told), and Debian's aiosmtpd with STARTTLS required, delivering into a Maildir
//! (or refusing every recipient). The lab starts both inside its namespace on the address its
//! site's `[host]` names; the receiver's notice tests start them on loopback.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::netns::NetNs;
use super::process::{Daemon, wait_for};

/// The Python that runs aiosmtpd (Debian's `python3-aiosmtpd`).
pub const PYTHON: &str = "/usr/bin/python3";

/// The largest request body the webhook endpoint keeps.
const MAX_BODY: usize = 1 << 20;

/// How the webhook endpoint answers every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 200 OK at once.
    Ok,
    /// This status (an error, say 500) at once.
    Status(u16),
    /// 200 OK after this long (a slow host).
    Late(Duration),
}

/// An HTTPS endpoint keeping the body of every request; stopped when dropped.
#[derive(Debug)]
pub struct Webhook {
    addr: SocketAddr,
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Webhook {
    /// Serves on `listener` (bound where the caller wants it: loopback, or inside a namespace
    /// with [`NetNs::run_inside`]) with the certificate chain `cert` and key `key` (PEM).
    pub fn serve(listener: TcpListener, cert: &Path, key: &Path, answer: Answer) -> Result<Self> {
        let tls = crate::home::server::tls_config(cert, key)?;
        let addr = listener
            .local_addr()
            .context("webhook endpoint: no address")?;
        listener
            .set_nonblocking(true)
            .context("webhook endpoint: cannot make the listener non-blocking")?;
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (kept, stopping) = (bodies.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((tcp, _)) => {
                        let (tls, kept) = (tls.clone(), kept.clone());
                        std::thread::spawn(move || {
                            let _ = exchange(tcp, tls, answer, &kept);
                        });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(Webhook {
            addr,
            bodies,
            stop,
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its URL with `path` (`/hook`, say).
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    /// Every body received so far, in arrival order.
    pub fn bodies(&self) -> Vec<Vec<u8>> {
        self.bodies.lock().map(|b| b.clone()).unwrap_or_default()
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One request on one connection: read it, keep its body, answer, close.
fn exchange(
    tcp: TcpStream,
    tls: Arc<rustls::ServerConfig>,
    answer: Answer,
    kept: &Mutex<Vec<Vec<u8>>>,
) -> std::io::Result<()> {
    tcp.set_nonblocking(false)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let conn = rustls::ServerConnection::new(tls).map_err(std::io::Error::other)?;
    let mut s = rustls::StreamOwned::new(conn, tcp);
    let body = read_request(&mut s)?;
    let status = match answer {
        Answer::Ok => 200,
        Answer::Status(code) => code,
        Answer::Late(d) => {
            std::thread::sleep(d);
            200
        }
    };
    if let Ok(mut k) = kept.lock() {
        k.push(body);
    }
    write!(
        s,
        "HTTP/1.1 {status} {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        if status < 300 { "OK" } else { "Error" }
    )?;
    s.flush()?;
    s.conn.send_close_notify();
    s.flush()
}

/// The body of one HTTP/1.1 request (sized by Content-Length; at most [`MAX_BODY`]).
fn read_request(s: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string());
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 {
            return Err(bad("request head over 16 KiB"));
        }
        if s.read(&mut byte)? == 0 {
            return Err(bad("connection closed inside the request head"));
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let len: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| bad("no Content-Length"))?;
    if len > MAX_BODY {
        return Err(bad("body too large"));
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    Ok(body)
}

/// What the SMTP server does with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mailbox {
    /// Accepts every recipient and delivers into the Maildir.
    Deliver,
    /// Refuses every recipient (550 5.7.1).
    Refuse,
}

/// Debian's aiosmtpd with STARTTLS required; stopped when dropped.
#[derive(Debug)]
pub struct Smtp {
    daemon: Daemon,
    addr: SocketAddr,
    maildir: PathBuf,
}

/// Whether [`PYTHON`] can import aiosmtpd.
pub fn have_aiosmtpd() -> bool {
    Command::new(PYTHON)
        .args(["-c", "import aiosmtpd"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Smtp {
    /// Starts aiosmtpd on `addr` (inside `ns` when given) with the certificate chain `cert` and
    /// key `key`, its files (log, Maildir `maildir/`, the refusing handler) in `dir`; waits
    /// until it accepts connections.
    pub fn start(
        ns: Option<&NetNs>,
        dir: &Path,
        addr: SocketAddr,
        cert: &Path,
        key: &Path,
        mailbox: Mailbox,
    ) -> Result<Smtp> {
        if !have_aiosmtpd() {
            bail!("{PYTHON} cannot import aiosmtpd (install python3-aiosmtpd)");
        }
        std::fs::create_dir_all(dir).with_context(|| format!("{}: mkdir", dir.display()))?;
        let maildir = dir.join("maildir");
        let mut cmd = match ns {
            Some(ns) => ns.command(PYTHON),
            None => Command::new(PYTHON),
        };
        cmd.args(["-m", "aiosmtpd", "-n", "-l", &addr.to_string()])
            .arg("--tlscert")
            .arg(cert)
            .arg("--tlskey")
            .arg(key);
        match mailbox {
            Mailbox::Deliver => {
                cmd.args(["-c", "aiosmtpd.handlers.Mailbox"]).arg(&maildir);
            }
            Mailbox::Refuse => {
                std::fs::write(
                    dir.join("imrs_refuse.py"),
                    "class Refuse:\n    async def handle_RCPT(self, server, session, envelope, \
                     address, rcpt_options):\n        return '550 5.7.1 relaying denied'\n",
                )
                .with_context(|| format!("{}: cannot write the handler", dir.display()))?;
                cmd.env("PYTHONPATH", dir)
                    .args(["-c", "imrs_refuse.Refuse"]);
            }
        }
        let mut daemon = Daemon::spawn("SMTP server (aiosmtpd)", &mut cmd, &dir.join("smtp.log"))?;
        let connects = || {
            let try_once = || TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok();
            match ns {
                Some(ns) => ns.run_inside(try_once).unwrap_or(false),
                None => try_once(),
            }
        };
        let up = wait_for(Duration::from_secs(20), Duration::from_millis(100), || {
            if !daemon.running() {
                return Some(false);
            }
            connects().then_some(true)
        });
        if up != Some(true) {
            daemon.ensure_running()?;
            bail!(
                "aiosmtpd did not accept connections on {addr} within 20 s:\n{}",
                daemon.log_tail(10)
            );
        }
        Ok(Smtp {
            daemon,
            addr,
            maildir,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The messages delivered so far, oldest first (by file name; aiosmtpd's names start with
    /// the time).
    pub fn messages(&self) -> Vec<Vec<u8>> {
        let Ok(rd) = std::fs::read_dir(self.maildir.join("new")) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        files.iter().filter_map(|f| std::fs::read(f).ok()).collect()
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        self.daemon.stop(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_body_is_read_by_its_length() {
        let req = b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(read_request(&mut &req[..]).unwrap(), b"hello");
        let none = b"POST /hook HTTP/1.1\r\nHost: x\r\n\r\nhello";
        assert!(read_request(&mut &none[..]).is_err());
        let big = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        assert!(read_request(&mut big.as_bytes()).is_err());
        let cut = b"POST / HTTP/1.1\r\nContent-Len";
        assert!(read_request(&mut &cut[..]).is_err());
    }
}
