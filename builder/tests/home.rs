//! `imrs-build home serve` and `home list` as a person runs them: the real binary on 127.0.0.1
//! with an rcgen CA and server certificate, fed good and bad submissions over HTTPS.
//!
//! Bad inputs: a report altered after signing, a bad signature, malformed JSON, an unknown
//! envelope field, a body over the limit, a GET, an unknown device under enrolment. Each gets
//! its 4xx, is listed as rejected, and the receiver keeps serving; duplicates are stored once,
//! also across a restart of the receiver.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use imrs_config::keys;
use imrs_config::report::{self, Event, Report, ReportId, SignedReport};

/// The receiver process, stopped with SIGTERM (or killed) when dropped.
struct Serve {
    child: Child,
    url: String,
}

impl Serve {
    fn start(dir: &Path, db: &Path, enrolled: Option<&Path>) -> Serve {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_imrs-build"));
        cmd.args(["--json", "home", "serve", "--listen", "127.0.0.1:0", "--db"])
            .arg(db)
            .arg("--tls-cert")
            .arg(dir.join("server.pem"))
            .arg("--tls-key")
            .arg(dir.join("server.key"))
            .args(["--max-body", "65536"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(e) = enrolled {
            cmd.arg("--enrolled").arg(e);
        }
        let mut child = cmd.spawn().expect("spawn imrs-build");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        BufReader::new(stdout).read_line(&mut line).expect("read");
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("first line {line:?} is not the JSON banner: {e}"));
        let addr = v["listening"].as_str().expect("listening").to_string();
        Serve {
            child,
            url: format!("https://{addr}/reports"),
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

/// Writes a CA and a server certificate for 127.0.0.1; returns the CA PEM.
fn pki(dir: &Path) -> String {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "home test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let srv_key = KeyPair::generate().unwrap();
    let srv = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&srv_key, &issuer)
        .unwrap();
    std::fs::write(dir.join("server.pem"), srv.pem()).unwrap();
    std::fs::write(dir.join("server.key"), srv_key.serialize_pem()).unwrap();
    ca_cert.pem()
}

fn client(ca_pem: &str) -> ureq::Agent {
    let certs: Vec<_> = ureq::tls::parse_pem(ca_pem.as_bytes())
        .filter_map(|i| match i {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(certs)))
        .build();
    ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .proxy(None)
        .build()
        .into()
}

fn post(agent: &ureq::Agent, url: &str, body: &[u8]) -> (u16, serde_json::Value) {
    let mut resp = agent
        .post(url)
        .content_type("application/json")
        .send(body)
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or_default())
}

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
    }
}

fn list(db: &Path) -> (serde_json::Value, String) {
    let bin = env!("CARGO_BIN_EXE_imrs-build");
    let j = Command::new(bin)
        .args(["home", "list", "--json", "--db"])
        .arg(db)
        .output()
        .unwrap();
    assert!(j.status.success(), "{}", String::from_utf8_lossy(&j.stderr));
    let t = Command::new(bin)
        .args(["home", "list", "--db"])
        .arg(db)
        .output()
        .unwrap();
    assert!(t.status.success());
    (
        serde_json::from_slice(&j.stdout).unwrap(),
        String::from_utf8_lossy(&t.stdout).into_owned(),
    )
}

#[test]
fn bad_inputs_get_4xx_duplicates_are_stored_once_and_it_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki(dir.path());
    let db = dir.path().join("home.sqlite");
    let serve = Serve::start(dir.path(), &db, None);
    let agent = client(&ca);
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
    let serve = Serve::start(dir.path(), &db, None);
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
    let serve = Serve::start(dir.path(), &db, Some(&enrolled));
    let agent = client(&ca);
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
    let run = |extra: &[&str], key: &PathBuf| {
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
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let missing = dir.path().join("nope.key");
    assert!(run(&[], &missing).contains("nope.key"));
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
