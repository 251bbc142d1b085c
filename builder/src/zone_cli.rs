//! `imrs-build zone ...`: verify a root zone file, or fetch one by AXFR,
//! verify it and write it atomically. Glue over the `imrs-zone` library.
//!
//! Exit codes: a zone file or anchors file that cannot be read (missing, not a regular file,
//! over its size limit) is 1; a zone that was read and does not parse or does not verify is 3;
//! a verified transfer that cannot be written (or is older than the stored zone) is 1.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use imrs_zone::{
    AxfrConfig, Candidate, DEFAULT_ANCHORS_PATH, LoadError, Timestamp, TrustAnchors, Verification,
    Zone,
};

use crate::ui::{Failure, print_ok};
use crate::{EXIT_ERROR, EXIT_VERIFY};

/// Root zone commands.
#[derive(Debug, clap::Subcommand)]
pub enum ZoneCommand {
    /// Verify a zone file: ZONEMD, every RRSIG, the chain to the trust
    /// anchors, the NSEC chain. Exit 0 only if fully verified.
    Verify {
        /// The zone file (text, as `named`/`nsd`/`knot` load it, or an AXFR dump).
        file: PathBuf,
        /// IANA root-anchors.xml.
        #[arg(long, default_value = DEFAULT_ANCHORS_PATH)]
        anchors: PathBuf,
        /// Verify as of this time (RFC 3339), default now.
        #[arg(long)]
        at: Option<Timestamp>,
    },
    /// Transfer the root zone by AXFR, verify it, and write it atomically.
    Fetch {
        /// Transfer server ADDR[:PORT], tried in order (repeatable);
        /// default: ICANN's lax and iad transfer servers.
        #[arg(long = "server")]
        servers: Vec<String>,
        /// IANA root-anchors.xml.
        #[arg(long, default_value = DEFAULT_ANCHORS_PATH)]
        anchors: PathBuf,
        /// Verify as of this time (RFC 3339), default now.
        #[arg(long)]
        at: Option<Timestamp>,
        /// Where to write the verified zone (and `FILE.verified.json`).
        #[arg(long)]
        out: PathBuf,
    },
}

/// Runs a zone command; `Ok(0)` when the zone verified (and, for `fetch`, was written), else
/// an error whose exit code says why (a [`Failure`] carrying the verification report).
/// `json` is the global `--json` flag: print one JSON object instead of text.
pub fn run(cmd: ZoneCommand, json: bool) -> anyhow::Result<u8> {
    match cmd {
        ZoneCommand::Verify { file, anchors, at } => {
            let anchors = load_anchors(&anchors)?;
            let at = at.unwrap_or_else(Timestamp::now);
            let start = Instant::now();
            let zone = match Zone::load(&file) {
                Ok(z) => z,
                // Not read: exit 1.
                Err(e @ LoadError::Read { .. }) => return Err(e.into()),
                // Read, and not a zone: exit 3.
                Err(e) => {
                    return Err(Failure::new(
                        EXIT_VERIFY,
                        format!("{}: not a valid zone file", file.display()),
                    )
                    .caused_by(e)
                    .into());
                }
            };
            let v = imrs_zone::verify(&zone, &anchors, at);
            let total = start.elapsed();
            let source = file.display().to_string();
            let outcome = report(&v, &source, total, json, None);
            // The process ends next: leave the zone's 25,000 allocations to the exit rather
            // than free them one by one (about 1 ms).
            std::mem::forget(zone);
            outcome
        }
        ZoneCommand::Fetch {
            servers,
            anchors,
            at,
            out,
        } => {
            let anchors = load_anchors(&anchors)?;
            let mut config = AxfrConfig::default();
            if !servers.is_empty() {
                config.servers = servers
                    .iter()
                    .map(|s| parse_server(s))
                    .collect::<anyhow::Result<_>>()?;
            }
            let start = Instant::now();
            let transfer = imrs_zone::axfr::transfer(&config).context("zone transfer")?;
            let at = at.unwrap_or_else(Timestamp::now);
            let v = imrs_zone::verify(&transfer.zone, &anchors, at);
            let source = format!("axfr://{}", transfer.server);
            let written = if v.is_verified() {
                // The zone already at --out (the truth: its own SOA) must be older.
                let current = if out.exists() {
                    let z = Zone::load(&out).with_context(|| {
                        format!(
                            "{} exists and is not a zone file: remove it or choose another --out",
                            out.display()
                        )
                    })?;
                    Some(z.serial())
                } else {
                    None
                };
                let candidate = Candidate {
                    zone: &transfer.zone,
                    verification: &v,
                    source: &source,
                };
                Some(
                    imrs_zone::decide(candidate, current, false).and_then(|rec| {
                        write_zone_and_record(&out, &transfer.zone, &rec)?;
                        Ok(rec)
                    }),
                )
            } else {
                None
            };
            let total = start.elapsed();
            let accepted = written.as_ref().map(|r| match r {
                Ok(_) => Ok(out.display().to_string()),
                Err(e) => Err(imrs_config::error_chain(e)),
            });
            report(&v, &source, total, json, accepted)
        }
    }
}

/// Writes the zone to `out` and its record (informational: the zone file is the truth) to
/// `out.verified.json`, each atomically.
fn write_zone_and_record(
    out: &Path,
    zone: &Zone,
    rec: &imrs_zone::AcceptedRecord,
) -> Result<(), imrs_zone::AcceptError> {
    use std::io::Write;
    imrs_zone::accept::write_atomically(out, |w| zone.write_text(w))?;
    let mut record = out.as_os_str().to_owned();
    record.push(".verified.json");
    imrs_zone::accept::write_atomically(Path::new(&record), |w| {
        serde_json::to_writer_pretty(&mut *w, rec).map_err(std::io::Error::other)?;
        w.write_all(b"\n")
    })
}

fn load_anchors(path: &Path) -> anyhow::Result<TrustAnchors> {
    // The error names the file.
    Ok(TrustAnchors::load(path)?)
}

/// `ADDR`, `ADDR:PORT`, `[V6]:PORT` or a bare IPv6 address; port 53 by default.
fn parse_server(s: &str) -> anyhow::Result<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    let with_port = if s.contains(':') {
        s.to_owned()
    } else {
        format!("{s}:53")
    };
    match with_port.to_socket_addrs() {
        Ok(mut addrs) => match addrs.next() {
            Some(a) => Ok(a),
            None => bail!("server {s:?} resolves to no address"),
        },
        Err(e) => Err(e).with_context(|| format!("bad server {s:?}")),
    }
}

/// Reports the outcome (text on stdout, or the `--json` object) and turns it into the result:
/// `Ok(0)` when verified (and written, if `accepted` is given), else a [`Failure`] with the
/// report as its details (exit 3 for a zone that did not verify, 1 for one not written).
fn report(
    v: &Verification,
    source: &str,
    total: std::time::Duration,
    json: bool,
    accepted: Option<Result<String, String>>,
) -> anyhow::Result<u8> {
    let mut obj = v.to_json();
    obj["source"] = serde_json::json!(source);
    obj["total_ms"] = serde_json::json!(total.as_secs_f64() * 1000.0);
    if let Some(a) = &accepted {
        obj["written"] = match a {
            Ok(path) => serde_json::json!({"ok": true, "path": path}),
            Err(e) => serde_json::json!({"ok": false, "error": e}),
        };
    }
    let failure = if !v.is_verified() {
        Some(Failure::new(EXIT_VERIFY, not_verified(v, source)))
    } else if let Some(Err(e)) = &accepted {
        Some(Failure::new(
            EXIT_ERROR,
            format!("{source}: verified but not written: {e}"),
        ))
    } else {
        None
    };
    if !json {
        print_text(v, source, total, accepted);
    }
    match failure {
        Some(f) => Err(f.with_details(obj).into()),
        None => {
            if json {
                print_ok(&obj)?;
            }
            Ok(0)
        }
    }
}

/// One sentence naming what failed in a zone that did not verify.
fn not_verified(v: &Verification, source: &str) -> String {
    let mut parts = Vec::new();
    if let Err(e) = &v.zonemd {
        parts.push(format!("ZONEMD: {e}"));
    }
    if let Err(e) = &v.dnssec {
        parts.push(format!("DNSSEC: {e}"));
    }
    format!(
        "{source}: zone serial {} did not verify ({})",
        v.serial,
        parts.join("; ")
    )
}

fn print_text(
    v: &Verification,
    source: &str,
    total: std::time::Duration,
    accepted: Option<Result<String, String>>,
) {
    println!("zone:       {source}");
    println!("serial:     {}", v.serial);
    println!("records:    {}", v.records);
    println!("at:         {}", v.at);
    match &v.zonemd {
        Ok(z) => println!(
            "ZONEMD:     verified (scheme {} hash {} digest {})",
            z.matched.scheme, z.matched.hash_algorithm, z.matched.digest
        ),
        Err(e) => println!("ZONEMD:     FAILED: {e}"),
    }
    match &v.dnssec {
        Ok(d) => println!(
            "DNSSEC:     verified ({} signatures checked, {} RRsets signed, {} NSEC, anchored by key {:?})",
            d.signatures_verified, d.rrsets_signed, d.nsec_checked, d.anchors_used
        ),
        Err(e) => println!("DNSSEC:     FAILED: {e}"),
    }
    println!(
        "time:       {:.1} ms verify, {:.1} ms total",
        v.elapsed.as_secs_f64() * 1000.0,
        total.as_secs_f64() * 1000.0
    );
    if let Some(a) = accepted {
        match a {
            Ok(path) => println!("written:    {path}"),
            Err(e) => println!("not written: {e}"),
        }
    }
    println!(
        "verdict:    {}",
        if v.is_verified() {
            "VERIFIED"
        } else {
            "NOT VERIFIED"
        }
    );
}
