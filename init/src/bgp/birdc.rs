//! A client for BIRD's control socket, speaking its line protocol directly (no `birdc` binary).
//!
//! BIRD greets with `0001 BIRD <version> ready.`; every reply line starts with a four-digit code
//! followed by `-` (more lines follow) or a space (last line); lines starting with a space continue
//! the previous code. Codes 0xxx mean success, 1xxx table rows, 2xxx table headings, 8xxx runtime
//! errors and 9xxx parse errors. One connection per command keeps the client stateless across
//! BIRD restarts.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::BgpError;

/// A control client for one BIRD socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Birdc {
    socket: PathBuf,
    timeout: Duration,
}

/// One reply: every line with its code (continuation lines carry the code they continue).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reply {
    /// `(code, text)` per line, in order, the final line included.
    pub lines: Vec<(u16, String)>,
}

impl Reply {
    /// The text of every line with the given code.
    pub fn with_code(&self, code: u16) -> impl Iterator<Item = &str> {
        self.lines
            .iter()
            .filter(move |(c, _)| *c == code)
            .map(|(_, t)| t.as_str())
    }
}

/// One row of `show protocols`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolInfo {
    /// Protocol name.
    pub name: String,
    /// Protocol type (`BGP`, `Static`, `Device`).
    pub proto: String,
    /// Table (`master4`, `---`).
    pub table: String,
    /// State: `up`, `down`, `start`, `stop`.
    pub state: String,
    /// Since when.
    pub since: String,
    /// Info column (`Established`, `Active`, ...; may be empty).
    pub info: String,
}

impl ProtocolInfo {
    /// The protocol is up (for BGP: the session is established).
    pub fn is_up(&self) -> bool {
        self.state == "up"
    }
}

/// Splits a reply line into code, final flag and text; `None` for a continuation line.
fn parse_line(line: &str) -> Option<(u16, bool, &str)> {
    let b = line.as_bytes();
    if b.len() >= 5 && b[..4].iter().all(u8::is_ascii_digit) && (b[4] == b'-' || b[4] == b' ') {
        let code = line.get(..4)?.parse().ok()?;
        Some((code, b[4] == b' ', line.get(5..)?))
    } else if b.len() == 4 && b.iter().all(u8::is_ascii_digit) {
        Some((line.parse().ok()?, true, ""))
    } else {
        None
    }
}

impl Birdc {
    /// A client for the socket at `socket` with a 5 s I/O timeout.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Birdc {
            socket: socket.into(),
            timeout: Duration::from_secs(5),
        }
    }

    /// Sets the connect/read/write timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn io(&self, op: &'static str) -> impl FnOnce(std::io::Error) -> BgpError + '_ {
        move |source| BgpError::Socket {
            socket: self.socket.clone(),
            op,
            source,
        }
    }

    fn read_reply(
        &self,
        reader: &mut BufReader<UnixStream>,
        command: &str,
    ) -> Result<Reply, BgpError> {
        let mut reply = Reply::default();
        let mut last = None;
        loop {
            let mut raw = String::new();
            let n = reader.read_line(&mut raw).map_err(self.io("read"))?;
            if n == 0 {
                return Err(BgpError::Socket {
                    socket: self.socket.clone(),
                    op: "read",
                    source: std::io::ErrorKind::UnexpectedEof.into(),
                });
            }
            let line = raw.trim_end_matches(['\n', '\r']);
            match (parse_line(line), line.strip_prefix(' '), last) {
                (Some((code, fin, text)), _, _) => {
                    reply.lines.push((code, text.to_string()));
                    last = Some(code);
                    if fin {
                        if code >= 8000 {
                            return Err(BgpError::Command {
                                socket: self.socket.clone(),
                                command: command.to_string(),
                                code,
                                message: text.to_string(),
                            });
                        }
                        return Ok(reply);
                    }
                }
                (None, Some(text), Some(code)) => reply.lines.push((code, text.to_string())),
                _ => {
                    return Err(BgpError::Protocol {
                        socket: self.socket.clone(),
                        line: line.to_string(),
                    });
                }
            }
        }
    }

    /// Sends one command (as typed at `birdc`) and returns BIRD's reply; an 8xxx/9xxx reply is
    /// [`BgpError::Command`].
    pub fn command(&self, command: &str) -> Result<Reply, BgpError> {
        if command.contains(['\n', '\r']) {
            return Err(BgpError::Protocol {
                socket: self.socket.clone(),
                line: command.to_string(),
            });
        }
        let stream = UnixStream::connect(&self.socket).map_err(self.io("connect"))?;
        stream
            .set_read_timeout(Some(self.timeout))
            .map_err(self.io("set timeout"))?;
        stream
            .set_write_timeout(Some(self.timeout))
            .map_err(self.io("set timeout"))?;
        let mut writer = stream.try_clone().map_err(self.io("connect"))?;
        let mut reader = BufReader::new(stream);
        self.read_reply(&mut reader, "(greeting)")?;
        writer
            .write_all(format!("{command}\n").as_bytes())
            .map_err(self.io("send"))?;
        self.read_reply(&mut reader, command)
    }

    /// Enables a protocol (`enable NAME`); enabling an enabled protocol is not an error.
    pub fn enable(&self, protocol: &str) -> Result<(), BgpError> {
        self.named("enable", protocol)
    }

    /// Disables a protocol (`disable NAME`); disabling a disabled protocol is not an error.
    pub fn disable(&self, protocol: &str) -> Result<(), BgpError> {
        self.named("disable", protocol)
    }

    fn named(&self, verb: &str, protocol: &str) -> Result<(), BgpError> {
        if protocol.is_empty()
            || !protocol
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(BgpError::NoProtocol {
                socket: self.socket.clone(),
                protocol: protocol.to_string(),
            });
        }
        match self.command(&format!("{verb} {protocol}")) {
            Err(BgpError::Command { code: 9001, .. }) => Err(BgpError::NoProtocol {
                socket: self.socket.clone(),
                protocol: protocol.to_string(),
            }),
            other => other.map(drop),
        }
    }

    /// Every protocol with its state (`show protocols`).
    pub fn protocols(&self) -> Result<Vec<ProtocolInfo>, BgpError> {
        let reply = self.command("show protocols")?;
        let mut out = Vec::new();
        for text in reply.with_code(1002) {
            let mut f = text.split_whitespace();
            let mut next = || f.next().unwrap_or("").to_string();
            let (name, proto, table, state, since) = (next(), next(), next(), next(), next());
            let info = f.collect::<Vec<_>>().join(" ");
            if name.is_empty() || state.is_empty() {
                return Err(BgpError::Protocol {
                    socket: self.socket.clone(),
                    line: text.to_string(),
                });
            }
            out.push(ProtocolInfo {
                name,
                proto,
                table,
                state,
                since,
                info,
            });
        }
        Ok(out)
    }

    /// One protocol's state.
    pub fn protocol(&self, name: &str) -> Result<ProtocolInfo, BgpError> {
        self.protocols()?
            .into_iter()
            .find(|p| p.name == name)
            .ok_or_else(|| BgpError::NoProtocol {
                socket: self.socket.clone(),
                protocol: name.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A scripted BIRD: greets, reads one command per connection, answers with the script.
    fn fake_bird(replies: Vec<&'static str>) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bird.ctl");
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            for reply in replies {
                let (mut s, _) = listener.accept().unwrap();
                s.write_all(b"0001 BIRD 2.0.12 ready.\n").unwrap();
                let mut line = String::new();
                BufReader::new(s.try_clone().unwrap())
                    .read_line(&mut line)
                    .unwrap();
                s.write_all(reply.as_bytes()).unwrap();
            }
        });
        (dir, path)
    }

    #[test]
    fn parses_show_protocols_with_continuations() {
        let (_d, path) = fake_bird(vec![
            "2002-Name       Proto      Table      State  Since         Info\n\
             1002-device1    Device     ---        up     01:36:46.601  \n \
             imrs_spec4 Static     master4    down   01:36:50.705  \n \
             peer_x     BGP        ---        up     01:36:46.601  Established   \n\
             0000 \n",
        ]);
        let p = Birdc::new(path).protocols().unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[1].name, "imrs_spec4");
        assert!(!p[1].is_up());
        assert_eq!(p[2].info, "Established");
        assert!(p[2].is_up());
    }

    #[test]
    fn errors_are_typed() {
        let (_d, path) = fake_bird(vec![
            "9001 syntax error, unexpected CF_SYM_UNDEFINED\n",
            "8003 No protocols match\n",
            "garbage\n",
            "0011-imrs_spec4: enabled\n0000 \n",
        ]);
        let c = Birdc::new(path);
        assert!(matches!(
            c.enable("nosuch"),
            Err(BgpError::NoProtocol { protocol, .. }) if protocol == "nosuch"
        ));
        assert!(matches!(
            c.command("show protocols x"),
            Err(BgpError::Command { code: 8003, .. })
        ));
        assert!(matches!(
            c.command("x"),
            Err(BgpError::Protocol { line, .. }) if line == "garbage"
        ));
        c.enable("imrs_spec4").unwrap();
        assert!(matches!(
            c.enable("bad name"),
            Err(BgpError::NoProtocol { .. })
        ));
    }

    #[test]
    fn missing_socket_names_the_path() {
        let err = Birdc::new("/nonexistent/bird.ctl").enable("x").unwrap_err();
        assert!(err.to_string().contains("/nonexistent/bird.ctl"), "{err}");
    }
}
