//! Load benchmark of the phone-home receiver: signed reports per second verified and stored
//! (committed to SQLite) under concurrent HTTPS clients on loopback.
//!
//! Starts the real receiver (`imrs_build::home::server`, TLS with an rcgen CA) on 127.0.0.1,
//! signs `--reports` distinct reports from `--devices` device keys beforehand (not timed), then
//! `--clients` threads POST them as fast as they are answered. Every answer must be a 201, and
//! the database must hold exactly that many reports at the end. With `--fresh` each report uses
//! a new client and a new TLS connection with a full handshake (a device reporting for the first
//! time); with `--reconnect` each client keeps its TLS configuration but opens a new connection
//! per report, so TLS 1.3 session resumption applies (a device sending its periodic reports);
//! otherwise clients keep their connection. With `--heartbeats` the reports are `heartbeat`s
//! (the receiver keeps a bounded history per device, pruning as it stores); with `--rate R`
//! they are sent open-loop at R per second in all (report i is due at start + i/R; latency is
//! measured from when it is sent), as a fleet heartbeating on its period does.
//! Prints one JSON line. Run through `bench/home-receiver.sh`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use imrs_build::home::enrol::EnrolmentMode;
use imrs_build::home::limits::ClientLimits;
use imrs_build::home::{server, store};
use imrs_config::{keys, report};

struct Args {
    reports: usize,
    clients: usize,
    devices: usize,
    seconds: u64,
    fresh: bool,
    reconnect: bool,
    heartbeats: bool,
    rate: Option<f64>,
}

fn args() -> Args {
    let mut a = Args {
        reports: 5000,
        clients: 16,
        devices: 100,
        seconds: 120,
        fresh: false,
        reconnect: false,
        heartbeats: false,
        rate: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut num = |name: &str| -> usize {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} needs a number"))
        };
        match flag.as_str() {
            "--reports" => a.reports = num("--reports"),
            "--clients" => a.clients = num("--clients").max(1),
            "--devices" => a.devices = num("--devices").max(1),
            "--seconds" => a.seconds = num("--seconds") as u64,
            "--fresh" => a.fresh = true,
            "--reconnect" => a.reconnect = true,
            "--heartbeats" => a.heartbeats = true,
            "--rate" => a.rate = Some(num("--rate") as f64),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn sample(i: usize, heartbeat: bool) -> report::Report {
    report::Report {
        version: report::REPORT_VERSION,
        id: report::ReportId::random().expect("random"),
        event: if heartbeat {
            report::Event::Heartbeat {
                uptime_s: 300 * i as u64,
                zone_serial: Some(2026010100),
                zone_checked_s_ago: Some(120),
                zone_expires_in_s: Some(600_000),
                drained: false,
                dns_probe_error: None,
                last_error: None,
                heartbeats_dropped: 0,
                telemetry: None,
            }
        } else {
            report::Event::InstallPassed {}
        },
        created_unix: 1_767_225_600,
        clock_source: "ntp".into(),
        lab: true,
        device: report::Device {
            serial: format!("SN-{i:06}"),
            profile: "calypso".into(),
        },
        site: report::SiteRef {
            site_id: format!("site-{}", i % 97),
            instance: "xx-lab-01.l.root-servers.org".into(),
        },
        image: report::ImageRef {
            name: "calypso".into(),
            version: "0.1.0".into(),
            manifest_sha256: "0f".repeat(32),
        },
        stages: report::Stage::ALL
            .iter()
            .map(|s| report::StageOutcome {
                stage: *s,
                status: report::Status::Passed,
                reason: None,
                seconds: 0.125,
            })
            .collect(),
        hardware: serde_json::json!({"profile": "calypso", "checks": (0..20).map(|c| serde_json::json!(
            {"name": format!("check.{c}"), "status": "pass", "measured": "ok", "required": "ok"})).collect::<Vec<_>>()}),
        interfaces: vec![],
        bgp: report::BgpReport::default(),
        zone: Some(report::ZoneReport {
            serial: 2026010100,
            verification: "zonemd ok, dnssec ok".into(),
        }),
        dns: report::DnsReport {
            ready: true,
            daemon: Some("nsd".into()),
            detail: None,
        },
        slot: Some(report::SlotReport {
            running: Some("a".into()),
            boot_entry: "systemd-boot started imrs-a.conf: slot a (blessed)".into(),
            fallback: None,
        }),
    }
}

fn agent(certs: &[ureq::tls::Certificate<'static>], pool: bool) -> ureq::Agent {
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::Specific(Arc::new(certs.to_vec())))
        .build();
    ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(30)))
        .max_idle_connections(if pool { 10 } else { 0 })
        .max_idle_connections_per_host(if pool { 10 } else { 0 })
        .build()
        .into()
}

fn main() {
    let a = args();
    let dir = tempfile::tempdir().expect("tempdir");
    // PKI.
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let issuer = Issuer::new(ca, ca_key);
    let srv_key = KeyPair::generate().expect("key");
    let srv = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .expect("params")
        .signed_by(&srv_key, &issuer)
        .expect("cert");
    std::fs::write(dir.path().join("s.pem"), srv.pem()).expect("write");
    std::fs::write(dir.path().join("s.key"), srv_key.serialize_pem()).expect("write");
    let db = dir.path().join("home.sqlite");
    // The device keys are made here: open enrolment. Every client is on 127.0.0.1, so the
    // per-client limits (meant for one device or site each) are lifted; the global ones stay.
    let mut cfg = server::ServeConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        db.clone(),
        dir.path().join("s.pem"),
        dir.path().join("s.key"),
        EnrolmentMode::Open,
    );
    cfg.limits.per_client = ClientLimits::unlimited();
    let running = server::start(&cfg).expect("start receiver");
    let url = format!("https://{}/reports", running.addr);

    // Sign beforehand.
    let keys: Vec<_> = (0..a.devices)
        .map(|_| keys::generate().expect("key"))
        .collect();
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..a.reports)
            .map(|i| report::sign(&sample(i, a.heartbeats), &keys[i % keys.len()]).to_json())
            .collect(),
    );
    let body_bytes = bodies.first().map(Vec::len).unwrap_or(0);
    let certs: Vec<_> = ureq::tls::parse_pem(ca_cert.pem().as_bytes())
        .filter_map(|i| match i {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();

    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(a.seconds);
    let start = Instant::now();
    let threads: Vec<_> = (0..a.clients)
        .map(|_| {
            let (bodies, next, url, certs) =
                (bodies.clone(), next.clone(), url.clone(), certs.clone());
            let (fresh, pool, rate) = (a.fresh, !a.reconnect, a.rate);
            std::thread::spawn(move || {
                let mut lat = Vec::new();
                let mut ag = agent(&certs, pool);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= bodies.len() || Instant::now() > deadline {
                        return lat;
                    }
                    if fresh {
                        ag = agent(&certs, pool);
                    }
                    if let Some(r) = rate {
                        let due = start + Duration::from_secs_f64(i as f64 / r);
                        std::thread::sleep(due.saturating_duration_since(Instant::now()));
                    }
                    let t = Instant::now();
                    let mut resp = ag
                        .post(&url)
                        .content_type("application/json")
                        .send(&bodies[i][..])
                        .unwrap_or_else(|e| panic!("report {i}: {e}"));
                    assert_eq!(resp.status().as_u16(), 201, "report {i}");
                    // Reading the answer to the end returns the connection to the pool.
                    let _ = resp.body_mut().read_to_vec();
                    lat.push(t.elapsed());
                }
            })
        })
        .collect();
    let mut lat: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("client thread"))
        .collect();
    let elapsed = start.elapsed();
    let stored = store::count_reports(&db).expect("count");
    running.stop();
    // Every 201 is a stored report; heartbeats beyond a device's bounded history are pruned.
    let kept: usize = (0..a.devices)
        .map(|d| {
            let sent = (lat.len() + a.devices - 1 - d) / a.devices;
            if a.heartbeats {
                sent.min(store::writer::MAX_HEARTBEATS_PER_DEVICE as usize)
            } else {
                sent
            }
        })
        .sum();
    assert_eq!(stored as usize, kept, "every 201 is a stored report");
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    };
    println!(
        "{}",
        serde_json::json!({
            "reports": lat.len(),
            "clients": a.clients,
            "devices": a.devices,
            "fresh_connections": a.fresh,
            "reconnect_resumed": a.reconnect,
            "heartbeats": a.heartbeats,
            "offered_rate": a.rate,
            "body_bytes": body_bytes,
            "seconds": (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
            "reports_per_second": (lat.len() as f64 / elapsed.as_secs_f64()).round(),
            "latency_ms_p50": (pct(0.50) * 100.0).round() / 100.0,
            "latency_ms_p99": (pct(0.99) * 100.0).round() / 100.0,
            "complete": lat.len() == a.reports,
        })
    );
}
