//! BGP: the BIRD 2 configuration generated from the site, BIRD's command line, and a control
//! client for BIRD's unix socket.
//!
//! What may be announced is decided twice: the site validation refuses anything but the five IMRS
//! prefixes, and the generated export filter of every session hard-limits announcements to exactly
//! those five prefixes (`imrs_config::imrs::IMRS_PREFIXES`), so a hand-edited static route can
//! never leak. Covering and specific prefixes live in separate static protocols
//! ([`COVER4`], [`COVER6`], [`SPEC4`], [`SPEC6`]) so health gating can enable or disable them with
//! [`Birdc`] without touching the sessions.
//!
//! - [`config`]: rendering `bird.conf` ([`render`], [`BirdOptions`]).
//! - [`daemon`]: the run directory, atomic config writes, `bird -p` validation, the command line
//!   ([`BirdDaemon`]).
//! - [`birdc`]: the control socket protocol ([`Birdc`]).

mod birdc;
mod config;
mod daemon;

use std::path::PathBuf;

pub use birdc::{Birdc, ProtocolInfo, Reply};
pub use config::{
    BirdOptions, COVER4, COVER6, SPEC4, SPEC6, render, session_name, static_protocols,
};
pub use daemon::{BIRD_BIN, BirdDaemon};

/// Everything that can fail while configuring or controlling BIRD.
#[derive(Debug, thiserror::Error)]
pub enum BgpError {
    /// The site asks for something the generator refuses to write (a non-IMRS prefix, a value
    /// that would break out of a BIRD string).
    #[error("refusing to generate BIRD config: {field} = {value}: {rule}")]
    Refused {
        /// Site key path.
        field: String,
        /// The offending value (passwords are never shown).
        value: String,
        /// The rule.
        rule: &'static str,
    },
    /// Writing a file (config, temp file, directory) failed.
    #[error("cannot write {path}")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `bird -p` could not be run.
    #[error("cannot run {bird} to check {path}")]
    CheckSpawn {
        /// The bird binary.
        bird: PathBuf,
        /// The config file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `bird -p` rejected the config.
    #[error("BIRD rejects {path}: {message}")]
    CheckFailed {
        /// The config file.
        path: PathBuf,
        /// BIRD's message.
        message: String,
    },
    /// The control socket could not be reached or broke.
    #[error("BIRD control socket {socket}: {op}")]
    Socket {
        /// The socket.
        socket: PathBuf,
        /// What was being done (connect, send, read).
        op: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// BIRD answered a command with an error code.
    #[error("BIRD refused `{command}` on {socket}: {code} {message}")]
    Command {
        /// The socket.
        socket: PathBuf,
        /// The command sent.
        command: String,
        /// BIRD's reply code (8xxx runtime error, 9xxx parse error).
        code: u16,
        /// BIRD's message.
        message: String,
    },
    /// BIRD's reply could not be understood.
    #[error("BIRD control socket {socket}: unexpected reply line {line:?}")]
    Protocol {
        /// The socket.
        socket: PathBuf,
        /// The line.
        line: String,
    },
    /// A protocol asked for is not in BIRD's running config.
    #[error("BIRD on {socket} has no protocol {protocol}")]
    NoProtocol {
        /// The socket.
        socket: PathBuf,
        /// The protocol name.
        protocol: String,
    },
}
