//! Fills a receiver database with a simulated fleet for `bench/fleet-list.sh`: DEVICES devices,
//! each with an install report and HEARTBEATS heartbeats 300 s apart (the receiver keeps at most
//! `MAX_HEARTBEATS_PER_DEVICE`), stored through the receiver's own writer, then times
//! `home list`'s query (`store::fleet`) a few times (only that when DB already exists).
//!
//! Usage: `fleet_db DB [DEVICES] [HEARTBEATS]` (defaults 1000 and 288).

use std::time::Instant;

use imrs_build::home::store::{self, NewReport, RejectedCaps, Store};

fn row(key: usize, i: usize, event: &str, t: i64) -> NewReport {
    NewReport {
        id: format!("{key:08x}{i:024x}"),
        key_id: format!("{key:016x}"),
        public_key: format!("PEM k{key:06}"),
        serial: format!("SN-{key:06}"),
        profile: "calypso".into(),
        site_id: format!("site-{:04}", key / 2),
        instance: format!("xx-{key:04}.l.root-servers.org"),
        event: event.into(),
        failed_stage: None,
        failed_reason: None,
        zone_serial: Some(2026010100 + u32::try_from(i % 4).unwrap_or(0)),
        image: "calypso 0.1.0".into(),
        lab: false,
        created_unix: t,
        received_unix: t,
        peer: "192.0.2.1:443".into(),
        // What the fleet view and the operators' pages read of a report: the event (with the
        // drain switch in heartbeats), the slot, the BGP sessions.
        report: format!(
            r#"{{"event": {{"kind": "{event}", "drained": {}}}, "slot": {{"running": "{}"}},
                "bgp": {{"sessions": [
                    {{"name": "v4", "address": "192.0.2.1", "asn": 64496, "state": "Established"}},
                    {{"name": "v6", "address": "2001:db8::1", "asn": 64496, "state": "{}"}}]}}}}"#,
            key.is_multiple_of(50),
            if key.is_multiple_of(3) { "b" } else { "a" },
            if key.is_multiple_of(7) {
                "Active"
            } else {
                "Established"
            }
        ),
        signature: "00".into(),
        digest: format!("d{key}-{i}"),
        enrolled: true,
        resolution: None,
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let db = std::path::PathBuf::from(
        args.next()
            .ok_or("usage: fleet_db DB [DEVICES] [HEARTBEATS]")?,
    );
    let devices: usize = args.next().map_or(Ok(1000), |a| a.parse())?;
    let beats: usize = args.next().map_or(Ok(288), |a| a.parse())?;
    if db.exists() {
        println!("{} exists: only timing the fleet view", db.display());
    } else {
        fill(&db, devices, beats)?;
    }
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let f = store::fleet(&db, 20)?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(f.devices.len(), devices);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "fleet view ({devices} devices): median {:.0} ms, min {:.0} ms, max {:.0} ms over 5 reads",
        times[2], times[0], times[4]
    );
    Ok(())
}

fn fill(
    db: &std::path::Path,
    devices: usize,
    beats: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let t0 = Instant::now();
    let s = Store::start(db, RejectedCaps::default())?;
    let start = 1_785_542_400i64;
    let mut waiting = Vec::new();
    for k in 0..devices {
        waiting.push(s.submit(row(k, 0, "install-passed", start))?);
    }
    for i in 1..=beats {
        for k in 0..devices {
            let t = start + i64::try_from(i * 300 + k % 300).unwrap_or(0);
            waiting.push(s.submit(row(k, i, "heartbeat", t))?);
        }
        for rx in waiting.drain(..) {
            rx.blocking_recv()??;
        }
    }
    drop(s);
    println!(
        "filled {} with {devices} devices x {beats} heartbeats in {:.1} s ({} reports kept)",
        db.display(),
        t0.elapsed().as_secs_f64(),
        store::count_reports(db)?
    );
    Ok(())
}
