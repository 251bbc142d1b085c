//! The operators' view of a lab run: the lab's receiver serves the fleet pages
//! (`home serve --operator-token`, a fresh token in the work folder's `operator-token`), and the
//! check reads them from inside the namespace as an operator's Prometheus and browser would:
//! `/metrics` counts one device, live, with no serial lag, and the device's own page says live
//! with the zone serial it serves. After the run the same database can be looked at with
//! `imrs-build home serve --db <work>/receiver/reports.sqlite --operator-token <work>/operator-token`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use super::summary::Check;
use crate::home::notify::deliver::https_agent;
use crate::host::netns::NetNs;

/// Writes a fresh token (64 hex digits, mode 0600) to `work/operator-token`.
pub fn token(work: &Path) -> Result<(PathBuf, String)> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("no randomness for the token: {e}"))?;
    let token = hex::encode(raw);
    let path = work.join("operator-token");
    imrs_config::fsutil::write_atomic(&path, token.as_bytes(), 0o600)
        .with_context(|| format!("{}: cannot write the operators' token", path.display()))?;
    Ok((path, token))
}

/// One GET of `path` with the token: (status, body).
fn get(
    agent: &ureq::Agent,
    receiver: SocketAddr,
    token: &str,
    path: &str,
) -> Result<(u16, String), String> {
    let url = format!("https://{receiver}{path}");
    let mut resp = agent
        .get(&url)
        .header("Authorization", &format!("Bearer {token}"))
        .call()
        .map_err(|e| format!("{url}: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("{url}: {e}"))?;
    Ok((status, body))
}

/// Reads `/metrics` and `/fleet/device/DEVICE` from the receiver (inside `ns`, trusting `ca`)
/// and checks that they show `device` live on `serial`.
pub fn check(
    ns: &NetNs,
    receiver: SocketAddr,
    ca: &Path,
    token: &str,
    device: &str,
    serial: u32,
    label: &str,
) -> Check {
    let what = format!("{label}: the operators' pages show the device live on serial {serial}");
    let seen = ns.run_inside(|| -> Result<String, String> {
        let agent = https_agent(Some(ca), Duration::from_secs(10)).map_err(|e| e.to_string())?;
        let (s, metrics) = get(&agent, receiver, token, "/metrics")?;
        if s != 200 {
            return Err(format!("/metrics answered {s}"));
        }
        let live = "imrs_fleet_devices{state=\"live\"} 1";
        let lag = format!("imrs_fleet_serial_lag{{device=\"{device}\",");
        let lag_line = metrics.lines().find(|l| l.starts_with(&lag));
        if !metrics.lines().any(|l| l == live) {
            let states: Vec<&str> = metrics
                .lines()
                .filter(|l| l.starts_with("imrs_fleet_devices{"))
                .collect();
            return Err(format!(
                "/metrics: not one device live: {}",
                states.join(", ")
            ));
        }
        if !lag_line.is_some_and(|l| l.ends_with(" 0")) {
            return Err(format!("/metrics: serial lag {lag_line:?}"));
        }
        let (s, page) = get(&agent, receiver, token, &format!("/fleet/device/{device}"))?;
        if s != 200 {
            return Err(format!("/fleet/device/{device} answered {s}"));
        }
        let state = "id=\"state\">live</span>";
        let zone = format!(">{serial}<");
        if !page.contains(state) || !page.contains(&zone) {
            return Err(format!(
                "/fleet/device/{device}: no live state or no zone serial {serial} on the page"
            ));
        }
        Ok(format!(
            "/metrics: 1 device live, serial lag 0; /fleet/device/{}: live, serial {serial}",
            device.get(..16).unwrap_or(device)
        ))
    });
    let result = seen.unwrap_or_else(|e| Err(e.to_string()));
    Check {
        what,
        ok: result.is_ok(),
        detail: result.unwrap_or_else(|e| e),
    }
}
