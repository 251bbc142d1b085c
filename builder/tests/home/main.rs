//! `imrs-build home serve` and `home list` as a person runs them: the real binary on 127.0.0.1
//! with an rcgen CA and server certificate, fed good and bad submissions over HTTPS.
//!
//! Bad inputs: a report altered after signing, a bad signature, malformed JSON, an unknown
//! envelope field, a body over the limit, a GET, an unknown device under enrolment. Each gets
//! its 4xx, is listed as rejected, and the receiver keeps serving; duplicates are stored once,
//! also across a restart of the receiver.
//!
//! Tries as an attacker would (issue "trust nothing on the disk or the wire"): filling the
//! disk with large refused submissions from one and from several addresses, a keep-alive flood
//! and a request flood from one loopback address while another reports, escape sequences and
//! forged rows in reporter-controlled text, and self-made keys claiming one serial.

mod browser;
#[path = "../common/browser.rs"]
mod chrome;
mod client;
mod notify;
mod web;

use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrome::free_port;
use client::{agent, pki, post};
use imrs_config::keys;
use imrs_config::report::{self, BgpReport, BgpSession, Event, Report, ReportId, SignedReport};

/// The receiver process, stopped with SIGTERM (or killed) when dropped. Its stderr is copied
/// to the test's and kept.
struct Serve {
    child: Child,
    url: String,
    addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
}

impl Serve {
    /// `home serve` on 127.0.0.1 with a 64 KiB body limit and `extra` flags (which must
    /// include the enrolment choice).
    fn start(dir: &Path, db: &Path, extra: &[&str]) -> Serve {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_imrs-build"));
        cmd.args(["--json", "home", "serve", "--listen", "127.0.0.1:0", "--db"])
            .arg(db)
            .arg("--tls-cert")
            .arg(dir.join("server.pem"))
            .arg("--tls-key")
            .arg(dir.join("server.key"))
            .args(["--max-body", "65536"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn imrs-build");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (mut err, kept) = (child.stderr.take().expect("stderr"), stderr.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&buf[..n]);
                eprint!("{text}");
                kept.lock().unwrap().push_str(&text);
            }
        });
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        BufReader::new(stdout).read_line(&mut line).expect("read");
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("first line {line:?} is not the JSON banner: {e}"));
        let addr: SocketAddr = v["listening"].as_str().expect("listening").parse().unwrap();
        Serve {
            child,
            url: format!("https://{addr}/reports"),
            addr,
            stderr,
        }
    }

    /// Waits up to 5 s for `text` on its stderr.
    fn wait_stderr(&self, text: &str) -> String {
        let start = Instant::now();
        loop {
            let now = self.stderr.lock().unwrap().clone();
            if now.contains(text) || start.elapsed() > Duration::from_secs(5) {
                return now;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(ok.success());
        self.child.wait().unwrap()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const OPEN: &[&str] = &["--open-enrolment"];

fn sample(serial: &str) -> Report {
    Report {
        version: report::REPORT_VERSION,
        id: ReportId::random().unwrap(),
        event: Event::InstallPassed {},
        created_unix: 1_767_225_600,
        clock_source: "ntp".into(),
        lab: true,
        device: report::Device {
            serial: serial.into(),
            profile: "qemu".into(),
        },
        site: report::SiteRef {
            site_id: "lab-1".into(),
            instance: "xx-lab-01.l.root-servers.org".into(),
        },
        image: report::ImageRef {
            name: "qemu".into(),
            version: "0.1.0".into(),
            manifest_sha256: String::new(),
        },
        stages: vec![],
        hardware: serde_json::json!({}),
        interfaces: vec![],
        bgp: report::BgpReport::default(),
        zone: Some(report::ZoneReport {
            serial: 2026010100,
            verification: "zonemd ok".into(),
        }),
        dns: report::DnsReport::default(),
        slot: Some(report::SlotReport {
            running: Some("a".into()),
            boot_entry: "systemd-boot started imrs-a.conf: slot a (blessed)".into(),
            fallback: None,
        }),
    }
}

/// `home list --json` and `home list` (with `extra` flags).
fn list_with(db: &Path, extra: &[&str]) -> (serde_json::Value, String) {
    let bin = env!("CARGO_BIN_EXE_imrs-build");
    let j = Command::new(bin)
        .args(["home", "list", "--json", "--db"])
        .arg(db)
        .args(extra)
        .output()
        .unwrap();
    assert!(j.status.success(), "{}", String::from_utf8_lossy(&j.stderr));
    let t = Command::new(bin)
        .args(["home", "list", "--db"])
        .arg(db)
        .args(extra)
        .output()
        .unwrap();
    assert!(t.status.success());
    (
        serde_json::from_slice(&j.stdout).unwrap(),
        String::from_utf8(t.stdout).expect("home list prints UTF-8"),
    )
}

fn list(db: &Path) -> (serde_json::Value, String) {
    list_with(db, &[])
}

/// Polls `home list --json` until `ok` holds (the receiver writes refusals in the background).
fn wait_list(db: &Path, what: &str, ok: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let (f, _) = list_with(db, &["--rejected", "0"]);
        if ok(&f) {
            return f;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{what}: {f}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// `base` as a heartbeat 300 s later: serving `zone_serial`, the drain switch as given, two
/// BGP sessions (v4 and v6) up or not.
fn heartbeat(base: &Report, zone_serial: u32, drained: bool, established: bool) -> Report {
    let mut r = base.clone();
    r.id = ReportId::random().unwrap();
    r.created_unix += 300;
    r.event = Event::Heartbeat {
        uptime_s: 300,
        zone_serial: Some(zone_serial),
        zone_checked_s_ago: Some(10),
        zone_expires_in_s: Some(600_000),
        drained,
        dns_probe_error: None,
        last_error: None,
        heartbeats_dropped: 0,
        telemetry: None,
    };
    r.bgp = BgpReport {
        sessions: ["192.0.2.1", "2001:db8:1::1"]
            .iter()
            .map(|a| BgpSession {
                name: format!("peer_{a}"),
                address: a.parse().unwrap(),
                asn: 64496,
                // As the box reports them: BIRD's protocol state and its BGP state.
                state: if established {
                    "up Established"
                } else {
                    "start Active"
                }
                .into(),
            })
            .collect(),
        announced: Vec::new(),
    };
    r
}

/// `home serve --open-enrolment` in `dir` (its `server.pem`, `server.key`, `db.sqlite`) with
/// `extra` flags, which must refuse to start: its stderr.
fn refused_start(dir: &Path, extra: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_imrs-build"))
        .args([
            "home",
            "serve",
            "--open-enrolment",
            "--listen",
            "127.0.0.1:0",
            "--db",
        ])
        .arg(dir.join("db.sqlite"))
        .arg("--tls-cert")
        .arg(dir.join("server.pem"))
        .arg("--tls-key")
        .arg(dir.join("server.key"))
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "it started: {err}");
    err
}

/// A loopback port nothing listens on (bound, then released).
#[test]
fn bad_inputs_get_4xx_duplicates_are_stored_once_and_it_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki(dir.path());
    let db = dir.path().join("home.sqlite");
    let serve = Serve::start(dir.path(), &db, OPEN);
    let agent = agent(&ca);
    let key = keys::generate().unwrap();
    let key_id = keys::key_id(&key.verifying_key());
    let url = serve.url.clone();

    let good = report::sign(&sample("SN-1"), &key);
    let id = SignedReport::from_json(&good.to_json()).unwrap();
    let id = report::verify(&id).unwrap().id.to_string();
    let (s, a) = post(&agent, &url, &good.to_json());
    assert_eq!(
        (s, a["id"].as_str(), a["status"].as_str()),
        (201, Some(id.as_str()), Some("stored"))
    );
    let (s, a) = post(&agent, &url, &good.to_json());
    assert_eq!(
        (s, a["id"].as_str(), a["status"].as_str()),
        (409, Some(id.as_str()), Some("duplicate"))
    );

    let mut tampered = report::sign(&sample("SN-2"), &key);
    tampered.report = tampered.report.replace("SN-2", "SN-3");
    let mut bad_sig = report::sign(&sample("SN-4"), &key);
    bad_sig.signature = "00".repeat(64);
    let mut extra: serde_json::Value =
        serde_json::to_value(report::sign(&sample("SN-5"), &key)).unwrap();
    extra["comment"] = "hello".into();
    let huge = vec![b' '; 200 * 1024];
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "altered in transit",
            tampered.to_json(),
            422,
            "bad-signature",
        ),
        ("bad signature", bad_sig.to_json(), 422, "bad-signature"),
        (
            "malformed JSON",
            b"{\"report\": ".to_vec(),
            400,
            "malformed",
        ),
        (
            "unknown envelope field",
            serde_json::to_vec(&extra).unwrap(),
            400,
            "malformed",
        ),
        ("huge body", huge, 413, "too-large"),
    ];
    for (i, (name, body, want, kind)) in cases.iter().enumerate() {
        let (s, a) = post(&agent, &url, body);
        assert_eq!(
            (s, a["status"].as_str()),
            (*want, Some(*kind)),
            "{name}: {a}"
        );
        // Still serving: a fresh good report goes in.
        let ok = report::sign(&sample(&format!("SN-OK-{i}")), &key);
        assert_eq!(post(&agent, &url, &ok.to_json()).0, 201, "after {name}");
    }
    let get = agent.get(&url).call().unwrap();
    assert_eq!(get.status().as_u16(), 405);

    let (fleet, text) = list(&db);
    assert_eq!(fleet["devices"].as_array().unwrap().len(), 1, "{fleet}");
    assert_eq!(fleet["devices"][0]["device"], key_id.as_str());
    assert_eq!(fleet["devices"][0]["reports"], 1 + cases.len() as u64);
    assert_eq!(fleet["rejected_total"], cases.len() as u64, "{fleet}");
    let reasons: Vec<&str> = fleet["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    for kind in ["bad-signature", "malformed", "too-large"] {
        assert!(
            reasons.iter().any(|r| r.starts_with(kind)),
            "{kind} in {reasons:?}"
        );
    }
    assert!(
        text.contains(&key_id) && text.contains("install-passed"),
        "{text}"
    );
    assert!(text.contains("5 rejected submission(s)"), "{text}");
    assert!(serve.stop().success(), "SIGTERM ends it cleanly");

    // A restarted receiver on the same database still knows the report.
    let serve = Serve::start(dir.path(), &db, OPEN);
    let (s, a) = post(&agent, &serve.url, &good.to_json());
    assert_eq!((s, a["status"].as_str()), (409, Some("duplicate")));
    assert!(serve.stop().success());
}

#[test]
fn unknown_devices_are_refused_under_enrolment_and_listed() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki(dir.path());
    let db = dir.path().join("home.sqlite");
    let enrolled = dir.path().join("enrolled");
    std::fs::create_dir(&enrolled).unwrap();
    let known = keys::generate().unwrap();
    keys::write_keypair(&known, &enrolled.join("known")).unwrap();
    let serve = Serve::start(dir.path(), &db, &["--enrolled", enrolled.to_str().unwrap()]);
    let agent = agent(&ca);
    let stranger = keys::generate().unwrap();
    let stranger_id = keys::key_id(&stranger.verifying_key());
    let (s, a) = post(
        &agent,
        &serve.url,
        &report::sign(&sample("SN-X"), &stranger).to_json(),
    );
    assert_eq!(
        (s, a["status"].as_str()),
        (403, Some("unknown-device")),
        "{a}"
    );
    let (s, _) = post(
        &agent,
        &serve.url,
        &report::sign(&sample("SN-K"), &known).to_json(),
    );
    assert_eq!(s, 201);
    let (fleet, text) = list(&db);
    assert_eq!(fleet["devices"].as_array().unwrap().len(), 1);
    assert_eq!(fleet["devices"][0]["serial"], "SN-K");
    assert_eq!(fleet["rejected"][0]["key_id"], stranger_id.as_str());
    assert_eq!(fleet["rejected"][0]["serial"], "SN-X");
    assert_eq!(fleet["rejected"][0]["status"], 403);
    assert!(
        text.contains(&stranger_id) && text.contains("unknown-device"),
        "{text}"
    );
    assert!(serve.stop().success());
}

#[test]
fn bad_startup_inputs_are_named() {
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path());
    let bin = env!("CARGO_BIN_EXE_imrs-build");
    let run_code = |extra: &[&str], key: &PathBuf| {
        let o = Command::new(bin)
            .args(["home", "serve", "--listen", "127.0.0.1:0", "--db"])
            .arg(dir.path().join("db.sqlite"))
            .arg("--tls-cert")
            .arg(dir.path().join("server.pem"))
            .arg("--tls-key")
            .arg(key)
            .args(extra)
            .output()
            .unwrap();
        assert!(!o.status.success());
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let run = |extra: &[&str], key: &PathBuf| run_code(extra, key).1;
    let missing = dir.path().join("nope.key");
    assert!(run(OPEN, &missing).contains("nope.key"));
    // Enrolment is not optional: without a choice, or with both, it is a usage error naming
    // both flags, and nothing listens.
    let key = dir.path().join("server.key");
    let (code, err) = run_code(&[], &key);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--enrolled") && err.contains("--open-enrolment"),
        "{err}"
    );
    let both = [
        "--enrolled",
        dir.path().to_str().unwrap(),
        "--open-enrolment",
    ];
    let (code, err) = run_code(&both, &key);
    assert_eq!(code, Some(2), "{err}");
    assert!(!dir.path().join("db.sqlite").exists(), "no database made");
    let junk = dir.path().join("junk");
    std::fs::create_dir(&junk).unwrap();
    std::fs::write(junk.join("x.pem"), "not a key").unwrap();
    let err = run(
        &["--enrolled", junk.to_str().unwrap()],
        &dir.path().join("server.key"),
    );
    assert!(err.contains("x.pem"), "{err}");
    let o = Command::new(bin)
        .args(["home", "list", "--db"])
        .arg(dir.path().join("absent.sqlite"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("absent.sqlite"));
}

#[test]
fn open_enrolment_is_loud_and_flags_keys_claiming_a_held_serial() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki(dir.path());
    let db = dir.path().join("home.sqlite");
    let serve = Serve::start(dir.path(), &db, OPEN);
    // The warning's last words: stderr may arrive in pieces.
    let err = serve.wait_stderr("use --enrolled DIR.");
    assert!(
        err.contains("WARNING: OPEN ENROLMENT") && err.contains("--enrolled DIR"),
        "{err}"
    );
    let agent = agent(&ca);
    // Five self-made keys, all claiming serial SN-1 at site example-01.
    let keys: Vec<_> = (0..5).map(|_| keys::generate().unwrap()).collect();
    let ids: Vec<String> = keys
        .iter()
        .map(|k| keys::key_id(&k.verifying_key()))
        .collect();
    for (i, k) in keys.iter().enumerate() {
        let mut r = sample("SN-1");
        r.site.site_id = "example-01".into();
        let (s, a) = post(&agent, &serve.url, &report::sign(&r, k).to_json());
        assert_eq!((s, a["status"].as_str()), (201, Some("stored")), "{a}");
        if i == 0 {
            assert!(a.get("warning").is_none(), "{a}");
        } else {
            let w = a["warning"].as_str().unwrap_or_default();
            assert!(w.contains(&ids[0]), "{a}");
        }
    }
    // The holder reporting again is not flagged.
    let (s, a) = post(
        &agent,
        &serve.url,
        &report::sign(&sample("SN-1"), &keys[0]).to_json(),
    );
    assert_eq!(s, 201);
    assert!(a.get("warning").is_none(), "{a}");
    let (fleet, text) = list(&db);
    let devices = fleet["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 5, "{fleet}");
    assert!(devices.iter().all(|d| d["enrolled"] == false), "{fleet}");
    for d in devices {
        if d["device"] == ids[0].as_str() {
            assert_eq!(d["serial_held_by"], serde_json::Value::Null);
            assert_eq!(d["serial_claimed_by"], serde_json::json!(ids[1..]));
        } else {
            assert_eq!(d["serial_held_by"], ids[0].as_str(), "{d}");
        }
    }
    assert!(text.contains("5 not enrolled (open enrolment)"), "{text}");
    assert_eq!(text.matches("[unenrolled]").count(), 5, "{text}");
    assert_eq!(
        text.matches(&format!("[CONFLICT: {} claimed it first]", ids[0]))
            .count(),
        4,
        "{text}"
    );
    assert!(text.contains("[CONFLICT: also claimed by "), "{text}");
    assert!(serve.stop().success());
}

#[test]
fn refused_submissions_cannot_fill_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki(dir.path());
    let db = dir.path().join("home.sqlite");
    // Small caps so the try stays short; the client limits are lifted so every post counts.
    let serve = Serve::start(
        dir.path(),
        &db,
        &[
            "--open-enrolment",
            "--rejected-per-source",
            "20",
            "--rejected-total",
            "50",
            "--client-burst",
            "100000",
        ],
    );
    let key = keys::generate().unwrap();
    // Two large refusals, each carrying ~60 KB of the sender's text into its reason: a report
    // whose serial is over the 4096-byte rule (422 invalid), and an envelope with a huge
    // unknown field (400 malformed).
    let mut r = sample(&"S".repeat(60_000));
    r.site.site_id = "x".into();
    let invalid = report::sign(&r, &key).to_json();
    let mut extra: serde_json::Value =
        serde_json::to_value(report::sign(&sample("SN-1"), &key)).unwrap();
    extra["é".repeat(30_000)] = "hello".into();
    let malformed = serde_json::to_vec(&extra).unwrap();
    assert!(invalid.len() > 60_000 && malformed.len() > 60_000);
    let rt = runtime();
    let tls = client::tls(&ca);
    // 60 from one source, then 20 from each of four more.
    let plan: Vec<(&str, usize)> = vec![
        ("127.0.0.2", 60),
        ("127.0.0.3", 20),
        ("127.0.0.4", 20),
        ("127.0.0.5", 20),
        ("127.0.0.6", 20),
    ];
    let mut sent = 0u64;
    for (from, n) in &plan {
        for i in 0..*n {
            let body = if i % 2 == 0 { &invalid } else { &malformed };
            let a = rt
                .block_on(client::post_from(&tls, ip(from), serve.addr, body))
                .unwrap();
            assert!(matches!(a.status, 400 | 422), "{from}: {a:?}");
            // The answer does not echo the 60 KB back either.
            assert!(a.body.len() < 1024, "{} byte answer", a.body.len());
            sent += 1;
        }
    }
    let fleet = wait_list(&db, "all refusals recorded", |f| {
        f["rejected_total"].as_u64() == Some(sent)
    });
    assert_eq!(fleet["rejected_kept"], 50, "{fleet}");
    assert_eq!(fleet["rejected_dropped"], sent - 50, "{fleet}");
    // 127.0.0.2 dropped 40 to its own cap, then its last 20 to the cap in all; then the
    // oldest of 127.0.0.3 (20) and 127.0.0.4 (10).
    assert_eq!(
        fleet["rejected_dropped_by_source"],
        serde_json::json!([
            {"source": "127.0.0.2", "dropped": 60},
            {"source": "127.0.0.3", "dropped": 20},
            {"source": "127.0.0.4", "dropped": 10},
        ])
    );
    let (all, text) = list_with(&db, &["--rejected", "1000"]);
    let rows = all["rejected"].as_array().unwrap();
    assert_eq!(rows.len(), 50);
    for r in rows {
        let reason = r["reason"].as_str().unwrap();
        assert!(reason.len() < 300, "{} byte reason", reason.len());
        assert!(reason.contains("… [truncated, "), "{reason}");
        assert_eq!(r["truncated"], true);
    }
    assert!(
        text.contains("140 rejected submission(s): 50 kept, 90 dropped"),
        "{text}"
    );
    assert!(
        text.contains("dropped per source: 127.0.0.2 60, 127.0.0.3 20, 127.0.0.4 10"),
        "{text}"
    );
    assert!(serve.stop().success());
    // Closed cleanly: the log is checkpointed into the file. 140 posts of 60 KB arrived; a
    // few hundred bytes of each of 50 are kept.
    let size = |p: PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let on_disk = size(db.clone()) + size(db.with_extension("sqlite-wal"));
    assert!(
        on_disk < 512 * 1024,
        "{on_disk} bytes on disk after {sent} refused posts of ~60 KB"
    );
}

#[test]
fn home_list_escapes_reporter_text_and_json_stays_exact() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki(dir.path());
    let db = dir.path().join("home.sqlite");
    let serve = Serve::start(dir.path(), &db, OPEN);
    let agent = agent(&ca);
    let key = keys::generate().unwrap();
    // A serial that clears the screen, then a newline and a forged row; a site with a bidi
    // override.
    let evil_serial = "SN-1\x1b[2J\r\nFORGED-DEVICE  SN-OK  lab-1  install-passed";
    let evil_site = "lab-\u{202e}10-bal";
    let mut r = sample(evil_serial);
    r.site.site_id = evil_site.into();
    let (s, _) = post(&agent, &serve.url, &report::sign(&r, &key).to_json());
    assert_eq!(s, 201);
    // The same report id with other content: refused (id-conflict) and listed with its serial.
    let mut again = r.clone();
    again.device.serial = "\x1b]0;owned\x07\nFORGED-REJECT".into();
    let (s, _) = post(&agent, &serve.url, &report::sign(&again, &key).to_json());
    assert_eq!(s, 422);
    // An unknown envelope field whose name is an escape sequence: its name is in the reason.
    let mut env: serde_json::Value =
        serde_json::to_value(report::sign(&sample("SN-2"), &key)).unwrap();
    env["\x1b[31mred\u{9b}0m"] = 1.into();
    let (s, _) = post(&agent, &serve.url, &serde_json::to_vec(&env).unwrap());
    assert_eq!(s, 400);
    wait_list(&db, "both refusals", |f| f["rejected_total"] == 2);

    let (json, text) = list(&db);
    // Text: not one control or bidi character, no forged line.
    let raw = |c: char| {
        (c.is_control() && c != '\n')
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    assert!(!text.chars().any(raw), "{text:?}");
    for l in text.lines() {
        assert!(
            !l.starts_with("FORGED") && !l.starts_with("\\n") && !l.starts_with("SN-OK"),
            "forged line {l:?} in {text}"
        );
    }
    for want in [
        "SN-1\\u{1b}[2J\\r\\nFORGED-DEVICE  SN-OK",
        "lab-\\u{202e}10-bal",
        "serial \\u{1b}]0;owned\\u{7}\\nFORGED-REJECT",
        "\\u{1b}[31mred\\u{9b}0m",
    ] {
        assert!(text.contains(want), "{want:?} in {text}");
    }
    // JSON: exact.
    assert_eq!(json["devices"][0]["serial"], evil_serial);
    assert_eq!(json["devices"][0]["site_id"], evil_site);
    let rejected = json["rejected"].as_array().unwrap();
    assert!(
        rejected
            .iter()
            .any(|r| r["serial"] == "\x1b]0;owned\x07\nFORGED-REJECT"),
        "{json}"
    );
    assert!(
        rejected.iter().any(|r| r["reason"]
            .as_str()
            .unwrap_or("")
            .contains("\x1b[31mred\u{9b}0m")),
        "{json}"
    );
    // --stale: heard from within the hour is fine; after 0 s it is quiet (exit 3, named,
    // the fleet still printed; with --json in the failure's details).
    let bin = env!("CARGO_BIN_EXE_imrs-build");
    let db_s = db.to_string_lossy().into_owned();
    let ok = Command::new(bin)
        .args(["home", "list", "--db", &db_s, "--stale", "3600"])
        .output()
        .unwrap();
    assert_eq!(ok.status.code(), Some(0));
    std::thread::sleep(Duration::from_millis(1100));
    let quiet = Command::new(bin)
        .args(["home", "list", "--db", &db_s, "--stale", "0"])
        .output()
        .unwrap();
    assert_eq!(quiet.status.code(), Some(3));
    let out = String::from_utf8_lossy(&quiet.stdout);
    let err = String::from_utf8_lossy(&quiet.stderr);
    assert!(out.contains("[QUIET]"), "{out}");
    assert!(
        err.contains("1 device(s) heard from more than 0 s ago"),
        "{err}"
    );
    let quiet_json = Command::new(bin)
        .args(["--json", "home", "list", "--db", &db_s, "--stale", "0"])
        .output()
        .unwrap();
    assert_eq!(quiet_json.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&quiet_json.stdout).unwrap();
    assert_eq!(v["devices"][0]["quiet"], true, "{v}");
    // The receiver's own log escapes them too.
    let log = serve.wait_stderr("FORGED-DEVICE");
    assert!(
        !log.contains('\x1b'),
        "raw ESC in the receiver's log: {log:?}"
    );
    assert!(serve.stop().success());
}

/// Sends a good report from 127.0.0.1 on a new connection: the time to its 201.
fn timed_report(ca: &str, url: &str) -> Duration {
    let key = keys::generate().unwrap();
    let body = report::sign(&sample("SN-REAL"), &key).to_json();
    let t = Instant::now();
    let (s, a) = post(&agent(ca), url, &body);
    let took = t.elapsed();
    assert_eq!(s, 201, "{a}");
    took
}

#[test]
fn a_keep_alive_flood_from_one_client_does_not_delay_another() {
    // 200 flooding clients against a global cap of 100 connections: without a per-client cap
    // the flood holds every slot, and a report from elsewhere waits for an idle timeout
    // (10 s) to free one; before this receiver had per-client limits it waited 19.9 s under
    // 1100 such clients and the default cap of 1024.
    const FLOOD: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let ca = pki(dir.path());
    let db = dir.path().join("home.sqlite");
    let serve = Serve::start(
        dir.path(),
        &db,
        &["--open-enrolment", "--max-connections", "100"],
    );
    let unloaded = timed_report(&ca, &serve.url);
    let rt = runtime();
    let stats = Arc::new(client::Stats::default());
    client::keep_alive_flood(
        &rt,
        client::tls(&ca),
        (ip("127.0.0.2"), serve.addr),
        FLOOD,
        Duration::from_millis(100),
        stats.clone(),
    );
    // Let the flood take what it can: until the number held has not moved for half a second
    // and every client has tried, or the global cap is full.
    let start = Instant::now();
    let mut last = (0, Instant::now());
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let (held, refused) = stats.get();
        if held != last.0 {
            last = (held, Instant::now());
        }
        let settled = last.1.elapsed() > Duration::from_millis(500);
        if settled && (held + refused >= FLOOD as u64 || held >= 100)
            || start.elapsed() > Duration::from_secs(20)
        {
            break;
        }
    }
    let took = timed_report(&ca, &serve.url);
    let (held, refused) = stats.get();
    eprintln!(
        "report from 127.0.0.1: {unloaded:?} unloaded, {took:?} during a keep-alive flood \
         from 127.0.0.2 ({held} connections held, {refused} refused)"
    );
    rt.shutdown_background();
    // The flood got at most its per-client share; the rest was turned away.
    assert!(held <= 16 + 16, "{held} held");
    assert!(refused > 0);
    // 2 s: a fresh TLS connection, a signature check and an fsync take tens of milliseconds
    // (`unloaded`, printed above) even on a loaded 2-core machine; waiting for a flooder's
    // slot would take the 10 s idle timeout.
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert!(serve.stop().success());
}

#[test]
fn a_request_flood_gets_429_and_others_still_get_through() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki(dir.path());
    let db = dir.path().join("home.sqlite");
    let serve = Serve::start(
        dir.path(),
        &db,
        &[
            "--open-enrolment",
            "--client-burst",
            "10",
            "--client-rate",
            "1",
        ],
    );
    let rt = runtime();
    let tls = client::tls(&ca);
    let flooder = ip("127.0.0.3");
    let (answers, last) = rt.block_on(async {
        let mut s = client::connect(&tls, flooder, serve.addr).await.unwrap();
        let mut answers = Vec::new();
        loop {
            let a = client::request(&mut s, "GET", b"").await.unwrap();
            answers.push(a.status);
            if a.status == 429 || answers.len() > 50 {
                return (answers, a);
            }
        }
    });
    // One token for the connection, nine requests, then 429 (a little slack for refills).
    assert!(
        (9..=11).contains(&(answers.len() - 1)),
        "{answers:?}: 429 after the burst"
    );
    assert!(answers[..answers.len() - 1].iter().all(|s| *s == 405));
    assert_eq!(last.status, 429);
    assert!(last.closes(), "{}", last.head);
    assert_eq!(last.header("retry-after"), Some("1"), "{}", last.head);
    // Its next connection finds the bucket empty: closed before any answer.
    let refused = rt.block_on(client::post_from(&tls, flooder, serve.addr, b"{}"));
    assert!(refused.is_err(), "{refused:?}");
    // Someone else is not affected.
    let took = timed_report(&ca, &serve.url);
    assert!(took < Duration::from_secs(2), "took {took:?}");
    // 429s are not stored as refusals.
    let (fleet, _) = list(&db);
    assert_eq!(fleet["rejected_total"], 0, "{fleet}");
    let log = serve.wait_stderr("127.0.0.3: request refused: rate limit");
    assert!(
        log.contains("127.0.0.3: request refused: rate limit"),
        "{log}"
    );
    assert!(serve.stop().success());
}

/// `fleet ...` with `args`; (exit code, stdout, stderr).
fn fleet(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_imrs-build"))
        .arg("fleet")
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn fleet_json(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let o = Command::new(env!("CARGO_BIN_EXE_imrs-build"))
        .args(&all[..1])
        .arg("fleet")
        .args(&all[1..])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "fleet {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn commands_ride_on_the_answers_and_the_devices_results_close_them() {
    use imrs_config::command::{self, Action, SignedCommand};
    use imrs_config::report::CommandOutcome;
    let dir = tempfile::tempdir().unwrap();
    let ca = pki(dir.path());
    let db = dir.path().join("home.sqlite");
    let ops_path = dir.path().join("ops");
    let ops = keys::generate().unwrap();
    keys::write_keypair(&ops, &ops_path).unwrap();
    let ops_arg = ops_path.to_str().unwrap();
    let dbs = db.to_str().unwrap();
    let serve = Serve::start(dir.path(), &db, OPEN);
    let agent = agent(&ca);
    let device = keys::generate().unwrap();
    let device_id = keys::key_id(&device.verifying_key());
    let send = |event: Event| {
        let mut r = sample("SN-K");
        r.event = event;
        post(&agent, &serve.url, &report::sign(&r, &device).to_json())
    };
    let (s, a) = send(Event::InstallPassed {});
    assert_eq!(s, 201, "{a}");
    assert!(a.get("commands").is_none(), "nothing queued yet: {a}");

    // Bad inputs: a device nobody heard of, a lifetime out of bounds, a missing key.
    let (code, _, err) = fleet(&[
        "command",
        "SN-NOPE",
        "drain",
        "--ops-key",
        ops_arg,
        "--db",
        dbs,
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("no device with key id or serial SN-NOPE"),
        "{err}"
    );
    let (code, _, err) = fleet(&[
        "command",
        "SN-K",
        "drain",
        "--ops-key",
        ops_arg,
        "--db",
        dbs,
        "--expires-in",
        "10",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("--expires-in 10"), "{err}");
    let (code, _, err) = fleet(&[
        "command",
        "SN-K",
        "drain",
        "--ops-key",
        "/nonexistent/ops",
        "--db",
        dbs,
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("/nonexistent/ops"), "{err}");
    let (code, _, err) = fleet(&[
        "command",
        "SN-K",
        "collect-logs",
        "--lines",
        "501",
        "--ops-key",
        ops_arg,
        "--db",
        dbs,
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("collect-logs: 501 lines"), "{err}");

    // Two commands, by serial and by key id: sequences 1 and 2.
    let q1 = fleet_json(&[
        "command",
        "SN-K",
        "drain",
        "--ops-key",
        ops_arg,
        "--db",
        dbs,
    ]);
    assert_eq!(
        (q1["sequence"].as_u64(), q1["device"].as_str()),
        (Some(1), Some(device_id.as_str()))
    );
    let q2 = fleet_json(&[
        "command",
        &device_id,
        "collect-logs",
        "--lines",
        "5",
        "--ops-key",
        ops_arg,
        "--db",
        dbs,
    ]);
    assert_eq!(q2["sequence"], 2);
    let st = fleet_json(&["status", "--db", dbs]);
    let states: Vec<&str> = st["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["queued", "queued"]);

    // The next report's answer carries both, oldest first; the box admits them in order.
    let (s, a) = send(Event::Boot {});
    assert_eq!(s, 201, "{a}");
    let cmds: Vec<SignedCommand> = serde_json::from_value(a["commands"].clone()).unwrap();
    assert_eq!(cmds.len(), 2, "{a}");
    let opk = [ops.verifying_key()];
    let c1 = command::admit(
        &cmds[0],
        &opk,
        &device_id,
        0,
        jiff::Timestamp::now().as_second(),
    )
    .unwrap();
    assert_eq!((c1.sequence, c1.action), (1, Action::Drain {}));
    let c2 = command::admit(
        &cmds[1],
        &opk,
        &device_id,
        1,
        jiff::Timestamp::now().as_second(),
    )
    .unwrap();
    assert_eq!(c2.action, Action::CollectLogs { lines: 5 });
    // Replayed to the box, command 1 is refused by it.
    assert!(matches!(
        command::admit(
            &cmds[0],
            &opk,
            &device_id,
            2,
            jiff::Timestamp::now().as_second()
        ),
        Err(command::Refusal::Replayed { .. })
    ));
    let st = fleet_json(&["status", "SN-K", "--db", dbs]);
    assert_eq!(st["commands"][0]["state"], "delivered");
    assert_eq!(st["commands"][0]["deliveries"], 1);

    // Results: 1 done, 2 done with logs; a result naming a command never queued changes nothing.
    let result = |sequence, action: &str, outcome, reason: Option<&str>, logs: Vec<String>| {
        send(Event::CommandResult {
            sequence,
            action: action.into(),
            outcome,
            reason: reason.map(Into::into),
            logs,
        })
    };
    let (s, a) = result(1, "drain", CommandOutcome::Done, None, vec![]);
    assert_eq!(s, 201);
    assert_eq!(
        a["commands"].as_array().map(Vec::len),
        Some(1),
        "command 2 still open: {a}"
    );
    let (s, a) = result(
        2,
        "collect-logs",
        CommandOutcome::Done,
        None,
        vec!["line one\u{1b}[2J".into()],
    );
    assert_eq!(s, 201);
    assert!(a.get("commands").is_none(), "all resolved: {a}");
    let (s, _) = result(
        9,
        "reboot",
        CommandOutcome::Refused,
        Some("command 9 out of order"),
        vec![],
    );
    assert_eq!(s, 201);
    let st = fleet_json(&["status", "--db", dbs]);
    let c = st["commands"].as_array().unwrap();
    assert_eq!(c.len(), 2);
    assert_eq!(
        (c[0]["state"].as_str(), c[1]["state"].as_str()),
        (Some("done"), Some("done"))
    );
    assert_eq!(c[1]["logs"][0], "line one\u{1b}[2J");
    assert_eq!(st["devices"][0]["device"], device_id.as_str());

    // A third command, refused by the box: the reason is shown, escaped.
    fleet_json(&[
        "command",
        "SN-K",
        "reboot",
        "--ops-key",
        ops_arg,
        "--db",
        dbs,
    ]);
    let (_, a) = send(Event::Boot {});
    assert_eq!(a["commands"].as_array().map(Vec::len), Some(1));
    result(
        3,
        "reboot",
        CommandOutcome::Refused,
        Some("command 3 expired at 1 (now 2)\u{7}"),
        vec![],
    );
    let (code, text, _) = fleet(&["status", "--db", dbs]);
    assert_eq!(code, 0);
    assert!(text.contains(&device_id) && text.contains("SN-K"), "{text}");
    assert!(text.contains("#1    drain         done"), "{text}");
    assert!(
        text.contains("#3    reboot        refused") && text.contains("expired at 1 (now 2)\\u{7}"),
        "{text}"
    );
    assert!(text.contains("1 log lines"), "{text}");
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{7}'),
        "{text}"
    );
    assert!(serve.stop().success());
}

/// `fleet command DEVICE update IMAGE-DIR` publishes the image beside the database and queues
/// an `update` naming its manifest; the running receiver serves the files; bad image folders
/// and a key the image was not signed with are refused before anything is queued.
#[test]
fn an_update_publishes_its_image_and_the_receiver_serves_it() {
    use imrs_config::image::{Artifact, Manifest};
    let dir = tempfile::tempdir().unwrap();
    let ca = pki(dir.path());
    let db = dir.path().join("home.sqlite");
    let ops_path = dir.path().join("ops");
    keys::write_keypair(&keys::generate().unwrap(), &ops_path).unwrap();
    let ops_arg = ops_path.to_str().unwrap();
    let dbs = db.to_str().unwrap();
    let serve = Serve::start(dir.path(), &db, OPEN);
    let agent = agent(&ca);
    let device = keys::generate().unwrap();
    let (s, _) = post(
        &agent,
        &serve.url,
        &report::sign(&sample("SN-U"), &device).to_json(),
    );
    assert_eq!(s, 201);

    // An image folder signed with `image_key`.
    let image_key = keys::generate().unwrap();
    let kernel = b"kernel bytes".to_vec();
    let initramfs = b"initramfs bytes".to_vec();
    let manifest = Manifest::fixture(
        "2",
        "qemu",
        vec![
            Artifact::of("initramfs.cpio.zst", &initramfs),
            Artifact::of("vmlinuz", &kernel),
        ],
    );
    let image = dir.path().join("image");
    imrs_build::image_dir::write(
        &image,
        &[("vmlinuz", &kernel), ("initramfs.cpio.zst", &initramfs)],
        &manifest,
        &image_key,
    )
    .unwrap();
    let images = dir.path().join("images");
    let update = |folder: &str, extra: &[&str]| {
        let mut args = vec![
            "command",
            "SN-U",
            "update",
            folder,
            "--ops-key",
            ops_arg,
            "--db",
            dbs,
        ];
        args.extend_from_slice(extra);
        fleet(&args)
    };

    // Bad inputs: no such folder, a folder whose kernel is not the manifest's, the wrong key.
    let (code, _, err) = update("/nonexistent/image", &[]);
    assert_ne!(code, 0);
    assert!(err.contains("/nonexistent/image"), "{err}");
    let broken = dir.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    for f in [
        "vmlinuz",
        "initramfs.cpio.zst",
        "manifest.json",
        "manifest.sig",
    ] {
        std::fs::copy(image.join(f), broken.join(f)).unwrap();
    }
    std::fs::write(broken.join("vmlinuz"), b"another kernel").unwrap();
    let (code, _, err) = update(broken.to_str().unwrap(), &[]);
    assert_ne!(code, 0);
    assert!(err.contains("vmlinuz is 14 bytes"), "{err}");
    let ops_pub = keys::pub_path_for(&ops_path);
    let (code, _, err) = update(
        image.to_str().unwrap(),
        &["--pubkey", ops_pub.to_str().unwrap()],
    );
    assert_ne!(code, 0);
    assert!(err.contains("signature"), "{err}");
    assert!(!images.exists(), "nothing published by a refused update");
    let st = fleet_json(&["status", "--db", dbs]);
    assert_eq!(st["commands"].as_array().map(Vec::len), Some(0), "{st}");

    // The image as built: published, queued, served (`--pubkey` verifies a whole image
    // folder, initramfs included; this one's files are not a real image's).
    let (code, out, err) = update(image.to_str().unwrap(), &["--expires-in", "600"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("queued update"), "{out}");
    let sha =
        imrs_build::image_dir::sha256_hex(&std::fs::read(image.join("manifest.json")).unwrap());
    let st = fleet_json(&["status", "SN-U", "--db", dbs]);
    assert_eq!(st["commands"][0]["action"], "update", "{st}");
    let base = serve.url.trim_end_matches("/reports");
    for (name, want) in [("vmlinuz", &kernel), ("initramfs.cpio.zst", &initramfs)] {
        let mut r = agent
            .get(&format!("{base}/v1/images/{sha}/{name}"))
            .call()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{name}");
        assert_eq!(&r.body_mut().read_to_vec().unwrap(), want, "{name}");
    }
    let r = agent
        .get(&format!("{base}/v1/images/{sha}/home.sqlite"))
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    // Published again (another device, the same image): the copy is reused.
    let (code, _, err) = update(image.to_str().unwrap(), &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read_dir(&images).unwrap().count(), 1);
}

/// Telemetry reports from two devices (one sending a partial day, then the whole day) become
/// the fleet's RSSAC002 documents and each device's; a bad day or a day nobody reported is
/// refused, and a report naming no real day never reaches the database.
#[test]
fn telemetry_reports_become_rssac002_documents() {
    use imrs_config::rssac002::{DayMetrics, SourceKey, Transport};
    let dir = tempfile::tempdir().unwrap();
    let ca = pki(dir.path());
    let db = dir.path().join("home.sqlite");
    let dbs = db.to_str().unwrap();
    let serve = Serve::start(dir.path(), &db, OPEN);
    let agent = agent(&ca);
    let key = SourceKey::new([9; 32]);
    let shared: IpAddr = "192.0.2.7".parse().unwrap();
    let send = |device: &ed25519_dalek::SigningKey,
                serial: &str,
                day: &str,
                complete: bool,
                created: i64,
                metrics: DayMetrics| {
        let mut r = sample(serial);
        r.created_unix = created;
        r.event = Event::Telemetry {
            day: day.into(),
            complete,
            metrics: Box::new(metrics),
        };
        post(&agent, &serve.url, &report::sign(&r, device).to_json())
    };
    let a = keys::generate().unwrap();
    let b = keys::generate().unwrap();
    let mut am = DayMetrics::default();
    am.query(Transport::Udp, shared, 40, &key);
    am.response(Transport::Udp, shared, 500, 0);
    // A's partial day, then its whole day (which supersedes it).
    let (s, answer) = send(&a, "SN-A", "2025-07-01", false, 1_751_350_000, am.clone());
    assert_eq!(s, 201, "{answer}");
    am.query(Transport::Tcp, "2001:db8::1".parse().unwrap(), 300, &key);
    am.response(Transport::Tcp, "2001:db8::1".parse().unwrap(), 5000, 3);
    assert_eq!(
        send(&a, "SN-A", "2025-07-01", true, 1_751_414_400, am.clone()).0,
        201
    );
    let mut bm = DayMetrics::default();
    bm.query(Transport::Udp, shared, 40, &key);
    bm.query(Transport::Udp, "192.0.2.8".parse().unwrap(), 60, &key);
    bm.response(Transport::Udp, shared, 500, 0);
    assert_eq!(
        send(&b, "SN-B", "2025-07-01", true, 1_751_414_401, bm).0,
        201
    );
    // Not a day: refused before storage.
    let (s, answer) = send(&b, "SN-B", "2025-13-01", true, 1, DayMetrics::default());
    assert_eq!(s, 422, "{answer}");
    assert!(answer.to_string().contains("event.day"), "{answer}");

    let out = dir.path().join("rssac002");
    let (code, text, err) = fleet(&[
        "rssac002",
        "--db",
        dbs,
        "--day",
        "2025-07-01",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        text.contains("wrote 15 RSSAC002 documents") && text.contains("2 device(s)"),
        "{text}"
    );
    let read = |p: &str| std::fs::read_to_string(out.join(p)).unwrap();
    let vol = read("2025/07/traffic-volume/l-root-20250701-traffic-volume.yaml");
    assert!(
        vol.starts_with("---\nversion: rssac002v5\nservice: l.root-servers.net\n"),
        "{vol}"
    );
    assert!(vol.contains("dns-udp-queries-received-ipv4: 3\n"), "{vol}");
    assert!(vol.contains("dns-tcp-queries-received-ipv6: 1\n"), "{vol}");
    let src = read("2025/07/unique-sources/l-root-20250701-unique-sources.yaml");
    assert!(
        src.contains("num-sources-ipv4: 2\nnum-sources-ipv6: 1\n"),
        "the source both saw counts once: {src}"
    );
    let sizes = read("2025/07/traffic-sizes/l-root-20250701-traffic-sizes.yaml");
    assert!(
        sizes.contains("tcp-response-sizes:\n  4096-: 1\n"),
        "{sizes}"
    );
    let rc = read("2025/07/rcode-volume/l-root-20250701-rcode-volume.yaml");
    assert!(rc.ends_with("metric: rcode-volume\n0: 2\n3: 1\n"), "{rc}");
    let a_id = keys::key_id(&a.verifying_key());
    let a_vol = read(&format!(
        "devices/{a_id}/2025/07/traffic-volume/l-root-20250701-traffic-volume.yaml"
    ));
    assert!(
        a_vol.contains("dns-udp-queries-received-ipv4: 1\n"),
        "{a_vol}"
    );
    assert!(
        a_vol.contains("dns-tcp-queries-received-ipv6: 1\n"),
        "A's whole day: {a_vol}"
    );

    // Bad inputs.
    let (code, _, err) = fleet(&["rssac002", "--db", dbs, "--day", "2025-7-1", "--out", "x"]);
    assert_ne!(code, 0);
    assert!(err.contains("2025-7-1: a UTC day, YYYY-MM-DD"), "{err}");
    let (code, _, err) = fleet(&[
        "rssac002",
        "--db",
        dbs,
        "--day",
        "2025-07-02",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("no telemetry report for 2025-07-02"), "{err}");
}
