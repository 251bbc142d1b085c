//! Times the operators' pages of the receiver over a database `fleet_db` filled
//! (`bench/fleet-page.sh`): the receiver runs in this process with a fresh TLS certificate and
//! an operators' token; `GET /fleet`, `GET /metrics` and one device's page are fetched ROUNDS
//! times over one keep-alive connection, after one warm-up each. Also the fleet page built in
//! process (database read, then HTML) to show where the time goes.
//!
//! Usage: `fleet_page DB [ROUNDS]` (default 11).

use std::sync::Arc;
use std::time::{Duration, Instant};

use imrs_build::home::enrol::EnrolmentMode;
use imrs_build::home::server::{ServeConfig, start};
use imrs_build::home::{store, web};

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let db = std::path::PathBuf::from(args.next().ok_or("usage: fleet_page DB [ROUNDS]")?);
    let rounds: usize = args.next().map_or(Ok(11), |a| a.parse())?;
    let dir = tempfile::tempdir()?;
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])?.self_signed(&key)?;
    std::fs::write(dir.path().join("c.pem"), cert.pem())?;
    std::fs::write(dir.path().join("c.key"), key.serialize_pem())?;
    let token = "bench-operators-token-0123456789abcdef";
    std::fs::write(dir.path().join("token"), token)?;
    let mut cfg = ServeConfig::new(
        "127.0.0.1:0".parse()?,
        db.clone(),
        dir.path().join("c.pem"),
        dir.path().join("c.key"),
        EnrolmentMode::Open,
    );
    cfg.operator_token = Some(dir.path().join("token"));
    let running = start(&cfg)?;
    let ca = ureq::tls::Certificate::from_der(cert.der()).to_owned();
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::Specific(Arc::new(vec![ca])))
        .build();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(tls)
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let fleet = store::fleet(&db, 0)?;
    let one = fleet.devices.first().ok_or("empty fleet")?.device.clone();
    let n = fleet.devices.len();
    let base = format!("https://{}", running.addr);
    for (what, path) in [
        ("GET /fleet", "/fleet".to_string()),
        ("GET /metrics", "/metrics".to_string()),
        ("GET /fleet/device/KEY", format!("/fleet/device/{one}")),
    ] {
        let mut times = Vec::new();
        let mut bytes = 0;
        for i in 0..=rounds {
            let t = Instant::now();
            let body = agent
                .get(&format!("{base}{path}"))
                .header("Authorization", &format!("Bearer {token}"))
                .call()?
                .body_mut()
                .with_config()
                .limit(64 << 20)
                .read_to_string()?;
            if i > 0 {
                times.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            bytes = body.len();
        }
        let (m, lo, hi) = median(times);
        println!(
            "{what} ({n} devices, {bytes} bytes): median {m:.1} ms, min {lo:.1}, max {hi:.1} over {rounds}"
        );
    }
    let (mut read, mut render) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        let f = store::fleet(&db, 0)?;
        read.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        let page = web::html::fleet(&f, jiff::Timestamp::now().as_second(), 600);
        render.push(t.elapsed().as_secs_f64() * 1000.0);
        assert!(page.len() > n * 100);
    }
    println!(
        "in process: database read median {:.1} ms, HTML median {:.1} ms",
        median(read).0,
        median(render).0
    );
    running.stop();
    Ok(())
}
