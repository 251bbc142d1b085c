//! The init's local control socket: the operator's drain switch and a status line.
//!
//! A unix stream socket, `/run/imrs/control.sock` as the machine's init (mode 0600: root
//! only), `<state>/control.sock` otherwise. One request per connection, one line each way:
//!
//! | request | effect | reply |
//! |---|---|---|
//! | `drain` | withdraw the specific prefixes (covering stays) until `undrain` | `ok drained` |
//! | `undrain` | announce the specifics again once healthy (after the hold-down) | `ok undrained` |
//! | `status` | nothing | `ok drained=<bool> serial=<n or -> expires=<unix or ->` |
//!
//! Anything else gets `error ...`. The health loop acts on the switch within a probe interval
//! and logs the transition with its reason. `imrs-init drain|undrain|status [SOCKET]` is the
//! client; a management interface can expose the same requests later.

use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::health::driver::{self, SharedInputs};
use crate::log;
use crate::pid1::Role;

/// The machine's control socket.
pub const MACHINE_SOCKET: &str = "/run/imrs/control.sock";
/// Its name in the state folder outside the machine role.
pub const SOCKET_NAME: &str = "control.sock";
/// Longest request line.
const MAX_LINE: usize = 256;

/// Where the socket is for this role.
pub fn socket_path(role: Role, state_dir: &Path) -> PathBuf {
    match role {
        Role::Machine => PathBuf::from(MACHINE_SOCKET),
        _ => state_dir.join(SOCKET_NAME),
    }
}

/// Binds the socket and serves it in the background (errors are logged: the node serves
/// without a drain switch rather than not at all).
pub fn start(role: Role, state_dir: &Path, inputs: SharedInputs) {
    let path = socket_path(role, state_dir);
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::remove_file(&path);
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            log::error(format!("control socket {}: {e}", path.display()));
            return;
        }
    };
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let inputs = inputs.clone();
                    tokio::spawn(async move {
                        let _ =
                            tokio::time::timeout(Duration::from_secs(5), serve_one(stream, inputs))
                                .await;
                    });
                }
                Err(e) => {
                    log::warn(format!("control socket: {e}"));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
}

async fn serve_one(stream: UnixStream, inputs: SharedInputs) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    BufReader::new(r.take(MAX_LINE as u64))
        .read_line(&mut line)
        .await?;
    let reply = answer(line.trim(), &inputs);
    w.write_all(reply.as_bytes()).await?;
    w.write_all(b"\n").await
}

/// The reply to one request (and its effect).
pub fn answer(request: &str, inputs: &SharedInputs) -> String {
    match request {
        "drain" | "undrain" => {
            let drain = request == "drain";
            let was = driver::set_drained(inputs, drain);
            if was != drain {
                log::info(format!(
                    "operator {request}: specific prefixes {}",
                    if drain {
                        "withdrawn (covering kept)"
                    } else {
                        "announced again once healthy"
                    }
                ));
            }
            format!("ok {request}ed")
        }
        "status" => {
            let g = inputs.lock().unwrap_or_else(|p| p.into_inner());
            let serial = g.serial.map_or("-".to_string(), |s| s.to_string());
            let expires = g
                .zone_expires
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or("-".to_string(), |d| d.as_secs().to_string());
            format!("ok drained={} serial={serial} expires={expires}", g.drained)
        }
        other => format!("error unknown request {other:?}: drain, undrain or status"),
    }
}

/// The client: sends `request` to `socket` and prints the reply; exit status 0 on `ok`.
pub fn client(request: &str, socket: &Path) -> i32 {
    use std::io::{BufRead, Write};
    let run = || -> std::io::Result<String> {
        let mut s = std::os::unix::net::UnixStream::connect(socket)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(format!("{request}\n").as_bytes())?;
        let mut line = String::new();
        std::io::BufReader::new(s).read_line(&mut line)?;
        Ok(line.trim().to_string())
    };
    match run() {
        Ok(reply) => {
            println!("{reply}");
            i32::from(!reply.starts_with("ok"))
        }
        Err(e) => {
            eprintln!("imrs-init: control socket {}: {e}", socket.display());
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_undrain_status_and_garbage() {
        let inputs = SharedInputs::default();
        assert_eq!(
            answer("status", &inputs),
            "ok drained=false serial=- expires=-"
        );
        assert_eq!(answer("drain", &inputs), "ok drained");
        assert!(inputs.lock().unwrap().drained);
        inputs.lock().unwrap().serial = Some(2026073102);
        assert_eq!(
            answer("status", &inputs),
            "ok drained=true serial=2026073102 expires=-"
        );
        assert_eq!(answer("undrain", &inputs), "ok undrained");
        assert!(!inputs.lock().unwrap().drained);
        assert!(answer("announce 192.0.2.0/24", &inputs).starts_with("error"));
    }
}
