//! Phone home end to end on loopback: the device side (`imrs_init::phonehome`) signs real reports and delivers them over TLS to the real receiver
//! (`imrs_build::home`), which verifies, stores and lists them. Faults: receiver down (also
//! across a deliverer restart), wrong CA, duplicate delivery, unknown device under enrolment.
//!
//! Certificates come from rcgen (a test CA and a server certificate for 127.0.0.1). Nothing
//! leaves 127.0.0.1.

use imrs_init::phonehome;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use imrs_build::home::enrol::EnrolmentMode;
use imrs_build::home::{server, store};
use imrs_config::keys;
use imrs_config::report::{self, Event, Report, ReportId, Stage, StageOutcome, Status};
use phonehome::{DeliveryConfig, PhoneHome};

/// A CA and a server certificate for 127.0.0.1, written as PEM files.
struct Pki {
    ca_pem: String,
    cert: PathBuf,
    key: PathBuf,
}

fn pki(dir: &Path, name: &str) -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, format!("{name} test CA"));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let srv_key = KeyPair::generate().unwrap();
    let srv = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&srv_key, &issuer)
        .unwrap();
    let cert = dir.join(format!("{name}-server.pem"));
    let key = dir.join(format!("{name}-server.key"));
    std::fs::write(&cert, srv.pem()).unwrap();
    std::fs::write(&key, srv_key.serialize_pem()).unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        cert,
        key,
    }
}

fn receiver(p: &Pki, db: &Path, listen: &str, enrolled: Option<&Path>) -> server::Running {
    let enrolment = match enrolled {
        Some(dir) => EnrolmentMode::Folder(dir.to_path_buf()),
        None => EnrolmentMode::Open,
    };
    server::start(&server::ServeConfig::new(
        listen.parse().unwrap(),
        db.to_path_buf(),
        p.cert.clone(),
        p.key.clone(),
        enrolment,
    ))
    .unwrap()
}

fn delivery(url: &str, ca_pem: &str) -> DeliveryConfig {
    DeliveryConfig {
        url: url.to_string(),
        ca_pem: ca_pem.to_string(),
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(400),
        timeout: Duration::from_secs(5),
    }
}

fn logger() -> phonehome::deliver::Log {
    Box::new(|m: &str| eprintln!("[device] {m}"))
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stage(name: Stage, status: Status, reason: Option<&str>) -> StageOutcome {
    StageOutcome {
        stage: name,
        status,
        reason: reason.map(str::to_string),
        seconds: 0.5,
    }
}

fn sample(serial: &str, event: Event) -> Report {
    let failed = matches!(event, Event::InstallFailed { .. });
    Report {
        version: report::REPORT_VERSION,
        id: ReportId::random().unwrap(),
        event,
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
            manifest_sha256: "0f".repeat(32),
        },
        stages: vec![
            stage(Stage::Hardware, Status::Passed, None),
            if failed {
                stage(
                    Stage::Zone,
                    Status::Failed,
                    Some("AXFR from 192.0.2.53: refused"),
                )
            } else {
                stage(Stage::Zone, Status::Passed, None)
            },
        ],
        hardware: serde_json::json!({"profile": "qemu", "checks": []}),
        interfaces: vec![report::InterfaceReport {
            name: "eth0".into(),
            mac: None,
            up: true,
            addresses: vec!["192.0.2.10/24".parse().unwrap()],
        }],
        bgp: report::BgpReport::default(),
        zone: (!failed).then(|| report::ZoneReport {
            serial: 2026010100,
            verification: "zonemd ok, dnssec ok".into(),
        }),
        dns: report::DnsReport {
            ready: !failed,
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn install_reports_are_delivered_verified_stored_and_listed() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path(), "site");
    let db = dir.path().join("home.sqlite");
    let rx = receiver(&pki, &db, "127.0.0.1:0", None);
    let url = format!("https://127.0.0.1:{}/reports", rx.addr.port());

    // Device 1: install passed.
    let state1 = dir.path().join("dev1");
    let dev1 = PhoneHome::start_with(&state1, delivery(&url, &pki.ca_pem), logger()).unwrap();
    assert!(dev1.key_generated());
    let passed = sample("SN-PASS-1", Event::InstallPassed {});
    dev1.report(&passed).unwrap();
    wait_for("device 1 delivered", Duration::from_secs(20), || {
        dev1.status().delivered == 1 && dev1.status().pending == 0
    });

    // Device 2: install failed at the zone stage.
    let state2 = dir.path().join("dev2");
    let dev2 = PhoneHome::start_with(&state2, delivery(&url, &pki.ca_pem), logger()).unwrap();
    let failed = sample(
        "SN-FAIL-2",
        Event::InstallFailed {
            stage: Stage::Zone,
            reason: "AXFR from 192.0.2.53: refused".into(),
        },
    );
    dev2.report(&failed).unwrap();
    wait_for("device 2 delivered", Duration::from_secs(20), || {
        dev2.status().delivered == 1 && dev2.status().pending == 0
    });

    let fleet = store::fleet(&db, 10).unwrap();
    assert_eq!(fleet.devices.len(), 2, "{fleet:?}");
    assert_eq!(fleet.rejected_total, 0, "{fleet:?}");
    let d1 = fleet
        .devices
        .iter()
        .find(|d| d.serial == "SN-PASS-1")
        .unwrap();
    assert_eq!(d1.device, dev1.key_id());
    assert_eq!(d1.last_event, "install-passed");
    assert_eq!(d1.site_id, "lab-1");
    assert_eq!(d1.zone_serial, Some(2026010100));
    let d2 = fleet
        .devices
        .iter()
        .find(|d| d.serial == "SN-FAIL-2")
        .unwrap();
    assert_eq!(d2.device, dev2.key_id());
    assert_eq!(d2.last_event, "install-failed");
    assert_eq!(d2.failed_stage.as_deref(), Some("zone"));
    assert_eq!(
        d2.failed_reason.as_deref(),
        Some("AXFR from 192.0.2.53: refused")
    );
    let text = imrs_build::home::render(&fleet);
    assert!(
        text.contains(dev1.key_id()) && text.contains("install-failed (zone:"),
        "{text}"
    );

    // What was stored is exactly what the device signed, and verifies again.
    let stored = store::signed_report(&db, passed.id.as_str())
        .unwrap()
        .expect("the report is stored");
    let again = report::verify(&stored).unwrap();
    assert_eq!(again, passed);
    dev1.stop();
    dev2.stop();
    rx.stop();
}

#[test]
fn receiver_down_then_up_across_a_deliverer_restart() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path(), "site");
    let db = dir.path().join("home.sqlite");
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}/reports");
    let state = dir.path().join("dev");

    let dev = PhoneHome::start_with(&state, delivery(&url, &pki.ca_pem), logger()).unwrap();
    let key_id = dev.key_id().to_string();
    let r = sample("SN-DOWN", Event::InstallPassed {});
    dev.report(&r).unwrap();
    wait_for("a failed attempt", Duration::from_secs(20), || {
        dev.status().failures >= 2
    });
    assert_eq!(dev.status().pending, 1, "kept while the receiver is down");
    assert_eq!(dev.status().delivered, 0);
    dev.stop(); // "reboot"

    // A new process resumes the outbox from the same state folder, same device key.
    let dev = PhoneHome::start_with(&state, delivery(&url, &pki.ca_pem), logger()).unwrap();
    assert_eq!(dev.key_id(), key_id);
    assert!(!dev.key_generated());
    wait_for("failing again", Duration::from_secs(20), || {
        dev.status().failures >= 1
    });
    assert_eq!(dev.status().pending, 1);

    let rx = receiver(&pki, &db, &format!("127.0.0.1:{port}"), None);
    dev.wake();
    wait_for(
        "delivery after the receiver came up",
        Duration::from_secs(20),
        || dev.status().pending == 0,
    );
    assert_eq!(store::count_reports(&db).unwrap(), 1);
    let fleet = store::fleet(&db, 10).unwrap();
    assert_eq!(fleet.devices[0].device, key_id);
    dev.stop();
    rx.stop();
}

#[test]
fn wrong_ca_is_refused_and_the_report_kept() {
    let dir = tempfile::tempdir().unwrap();
    let site = pki(dir.path(), "site");
    let other = pki(dir.path(), "other");
    let db = dir.path().join("home.sqlite");
    // The receiver presents a certificate from a CA the device does not pin.
    let rx = receiver(&other, &db, "127.0.0.1:0", None);
    let url = format!("https://127.0.0.1:{}/reports", rx.addr.port());
    let state = dir.path().join("dev");
    let dev = PhoneHome::start_with(&state, delivery(&url, &site.ca_pem), logger()).unwrap();
    dev.report(&sample("SN-CA", Event::InstallPassed {}))
        .unwrap();
    wait_for("refusals", Duration::from_secs(20), || {
        dev.status().failures >= 2
    });
    let st = dev.status();
    assert_eq!(st.delivered, 0);
    let err = st.last_error.unwrap_or_default().to_lowercase();
    assert!(
        err.contains("certificate") || err.contains("issuer"),
        "{err}"
    );
    assert_eq!(dev.status().pending, 1, "kept");
    assert_eq!(store::count_reports(&db).unwrap(), 0);
    dev.stop();

    // Pinning the receiver's real CA, the same outbox goes through.
    let dev = PhoneHome::start_with(&state, delivery(&url, &other.ca_pem), logger()).unwrap();
    wait_for(
        "delivery with the right CA",
        Duration::from_secs(20),
        || dev.status().pending == 0,
    );
    assert_eq!(store::count_reports(&db).unwrap(), 1);
    dev.stop();
    rx.stop();
}

#[test]
fn duplicate_delivery_is_stored_once_and_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path(), "site");
    let db = dir.path().join("home.sqlite");
    let rx = receiver(&pki, &db, "127.0.0.1:0", None);
    let url = format!("https://127.0.0.1:{}/reports", rx.addr.port());
    let id = phonehome::identity::load_or_create(&dir.path().join("dev")).unwrap();
    let outbox = phonehome::Outbox::open(&dir.path().join("dev")).unwrap();
    let r = sample("SN-DUP", Event::Boot {});
    phonehome::queue(&outbox, &id, &r).unwrap();
    let (pending, _) = outbox.pending().unwrap();
    let agent = phonehome::deliver::agent(&delivery(&url, &pki.ca_pem)).unwrap();
    use phonehome::deliver::{Ack, send};
    assert_eq!(
        send(&agent, &url, &pending[0]).unwrap(),
        (Ack::Stored, vec![])
    );
    // The answer was "lost": the device sends it again, and again.
    assert_eq!(send(&agent, &url, &pending[0]).unwrap().0, Ack::Duplicate);
    // A command queued meanwhile rides on the answer; the device's own check admits it.
    use imrs_config::command::{self, Action, COMMAND_VERSION, Command};
    let ops = imrs_config::keys::generate().unwrap();
    let now = jiff::Timestamp::now().as_second();
    store::commands::queue(&db, &id.key_id, now, |sequence| {
        let c = Command {
            version: COMMAND_VERSION,
            device: id.key_id.clone(),
            sequence,
            issued_unix: now,
            expires_unix: now + 600,
            action: Action::Drain {},
        };
        Ok((
            "drain".into(),
            serde_json::to_string(&command::sign(&c, &ops))?,
            now + 600,
        ))
    })
    .unwrap();
    let (ack, cmds) = send(&agent, &url, &pending[0]).unwrap();
    assert_eq!((ack, cmds.len()), (Ack::Duplicate, 1));
    let c = command::admit(&cmds[0], &[ops.verifying_key()], &id.key_id, 0, now).unwrap();
    assert_eq!((c.sequence, c.action), (1, Action::Drain {}));
    assert_eq!(store::count_reports(&db).unwrap(), 1);
    let fleet = store::fleet(&db, 10).unwrap();
    assert_eq!(fleet.devices[0].reports, 1);
    assert_eq!(fleet.devices[0].last_event, "boot");
    assert_eq!(fleet.rejected_total, 0);
    // The same id signed over different content is not a duplicate: refused, not acknowledged.
    let mut other = r.clone();
    other.device.serial = "SN-OTHER".into();
    let signed = report::sign(&other, &id.key);
    let forged = phonehome::outbox::Pending {
        id: r.id.to_string(),
        path: PathBuf::new(),
        body: signed.to_json(),
    };
    let err = send(&agent, &url, &forged).unwrap_err();
    assert!(err.to_string().contains("422"), "{err}");
    assert_eq!(store::count_reports(&db).unwrap(), 1);
    rx.stop();
}

#[test]
fn unknown_device_is_rejected_under_enrolment_until_enrolled() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path(), "site");
    let db = dir.path().join("home.sqlite");
    let enrolled = dir.path().join("enrolled");
    std::fs::create_dir(&enrolled).unwrap();
    // Device A was provisioned (key made at flashing time) and enrolled.
    let a_state = dir.path().join("a");
    let a = phonehome::identity::load_or_create(&a_state).unwrap();
    std::fs::copy(keys::pub_path_for(&a.path), enrolled.join("a.pem")).unwrap();
    let rx = receiver(&pki, &db, "127.0.0.1:0", Some(&enrolled));
    let url = format!("https://127.0.0.1:{}/reports", rx.addr.port());

    let dev_a = PhoneHome::start_with(&a_state, delivery(&url, &pki.ca_pem), logger()).unwrap();
    assert!(!dev_a.key_generated());
    dev_a
        .report(&sample("SN-A", Event::InstallPassed {}))
        .unwrap();
    // Device B is not enrolled.
    let b_state = dir.path().join("b");
    let dev_b = PhoneHome::start_with(&b_state, delivery(&url, &pki.ca_pem), logger()).unwrap();
    dev_b
        .report(&sample("SN-B", Event::InstallPassed {}))
        .unwrap();
    wait_for("A delivered", Duration::from_secs(20), || {
        dev_a.status().pending == 0
    });
    wait_for("B refused twice", Duration::from_secs(20), || {
        dev_b.status().failures >= 2
    });
    assert_eq!(dev_b.status().pending, 1, "B keeps its report");
    let st = dev_b.status();
    assert!(st.last_error.unwrap_or_default().contains("403"));
    // Rejections are logged by the writer thread after the 4xx is sent: wait for them.
    wait_for("B's rejections logged", Duration::from_secs(10), || {
        store::fleet(&db, 50).is_ok_and(|f| f.rejected_total >= 2)
    });
    let fleet = store::fleet(&db, 50).unwrap();
    assert_eq!(fleet.devices.len(), 1);
    assert_eq!(fleet.devices[0].serial, "SN-A");
    assert!(fleet.rejected_total >= 2);
    let rej = &fleet.rejected[0];
    assert_eq!(rej.status, 403);
    assert_eq!(rej.key_id.as_deref(), Some(dev_b.key_id()));
    assert_eq!(rej.serial.as_deref(), Some("SN-B"));
    assert!(rej.reason.starts_with("unknown-device"), "{}", rej.reason);
    let text = imrs_build::home::render(&fleet);
    assert!(
        text.contains("unknown-device") && text.contains(dev_b.key_id()),
        "{text}"
    );

    // Enrolling B (dropping its key in) lets its retry through.
    std::fs::copy(
        keys::pub_path_for(&b_state.join(phonehome::identity::DEVICE_KEY_FILE)),
        enrolled.join("b.pub"),
    )
    .unwrap();
    dev_b.wake();
    wait_for(
        "B delivered after enrolment",
        Duration::from_secs(20),
        || dev_b.status().pending == 0,
    );
    assert_eq!(store::fleet(&db, 0).unwrap().devices.len(), 2);
    dev_a.stop();
    dev_b.stop();
    rx.stop();
}

/// An image published for `fleet command update` is served on the receiver's TLS port, and the
/// box's downloader takes exactly the image the signed command names: a manifest with another
/// sha256, a payload cut short or grown, a missing image and paths outside the image folder
/// are refused with a reason.
#[test]
fn published_images_are_served_and_checked_by_the_downloader() {
    use imrs_build::home::images;
    use imrs_config::image::{Artifact, Manifest};
    use imrs_init::slot_update::download;
    let dir = tempfile::tempdir().unwrap();
    let site = pki(dir.path(), "site");
    let db = dir.path().join("home.sqlite");
    let rx = receiver(&site, &db, "127.0.0.1:0", None);
    let url = format!("https://127.0.0.1:{}/v1/reports", rx.addr.port());

    // An image folder: kernel and initramfs, its manifest signed with an image key.
    let kernel: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let initramfs = vec![7u8; 123_457];
    let manifest = Manifest::fixture(
        "2",
        "qemu",
        vec![
            Artifact::of("initramfs.cpio.zst", &initramfs),
            Artifact::of("vmlinuz", &kernel),
        ],
    );
    let key = keys::generate().unwrap();
    let folder = dir.path().join("image");
    imrs_build::image_dir::write(
        &folder,
        &[("vmlinuz", &kernel), ("initramfs.cpio.zst", &initramfs)],
        &manifest,
        &key,
    )
    .unwrap();
    let (payload, again) = images::publish(&images::dir_for(&db), &folder).unwrap();
    assert!(!again);
    assert!(
        images::publish(&images::dir_for(&db), &folder).unwrap().1,
        "reused"
    );
    let sha = payload.manifest_sha256();
    let path = images::url_path(&sha);

    let got = download(&url, &site.ca_pem, &path, &sha).unwrap();
    assert_eq!(got.files(), payload.files());

    // The command names another manifest: refused before anything else is read.
    let other = "ab".repeat(32);
    let e = download(&url, &site.ca_pem, &path, &other).unwrap_err();
    assert!(e.contains("the signed command names"), "{e}");
    // Not published: 404.
    let e = download(&url, &site.ca_pem, &images::url_path(&other), &other).unwrap_err();
    assert!(e.contains("answered 404"), "{e}");
    // A path outside the image folder is not served.
    let e = download(&url, &site.ca_pem, "/v1/images/../home.sqlite", &sha).unwrap_err();
    assert!(e.contains("answered 404"), "{e}");

    // The receiver serves the initramfs cut short, then grown.
    let served = images::dir_for(&db).join(&sha).join("initramfs.cpio.zst");
    std::fs::write(&served, &initramfs[..100_000]).unwrap();
    let e = download(&url, &site.ca_pem, &path, &sha).unwrap_err();
    assert!(e.contains("does not match its manifest"), "{e}");
    let mut longer = initramfs.clone();
    longer.push(0);
    std::fs::write(&served, &longer).unwrap();
    let e = download(&url, &site.ca_pem, &path, &sha).unwrap_err();
    assert!(e.contains("longer than the 123457 bytes expected"), "{e}");

    // Another CA: nothing is downloaded.
    std::fs::create_dir(dir.path().join("other")).unwrap();
    let stranger = pki(&dir.path().join("other"), "other");
    let e = download(&url, &stranger.ca_pem, &path, &sha).unwrap_err();
    assert!(e.contains(&url.replace("/v1/reports", "")), "{e}");
    rx.stop();
}
