//! Notices to host organisations (issue 17), against real servers: a local HTTPS webhook
//! server that checks every notice's signatures, and Debian's aiosmtpd (STARTTLS required,
//! writing a Maildir) whose messages are parsed and their attachment checked. Faults: a webhook
//! answering 500, one that is down, one too slow, a relay refusing the recipient: retried,
//! then given up and recorded. A box silent past the site's limit is noticed once. A site
//! without contacts gets nothing. `home verify-notice` accepts a true notice and names what is
//! wrong with a forged one.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mail_parser::MimeHeaders;

use super::client::{agent, pki, post};
use super::{OPEN, Serve, free_port, refused_start, sample};
use imrs_build::home::notify::notice::{self, Kind};
use imrs_build::home::store::notices::{self, NoticeRow};
use imrs_build::host::inbox::{self, Answer, Mailbox, Smtp, Webhook};
use imrs_config::keys;
use imrs_config::report::{self, Event};

/// The test's webhook on 127.0.0.1, answering as told (the library's, as the lab runs it).
fn webhook(dir: &Path, answer: Answer) -> Hook {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let w = Webhook::serve(
        listener,
        &dir.join("server.pem"),
        &dir.join("server.key"),
        answer,
    )
    .unwrap();
    Hook(w)
}

/// A webhook endpoint and its URL.
struct Hook(Webhook);

impl Hook {
    fn url(&self) -> String {
        self.0.url("/hook")
    }

    fn bodies(&self) -> Vec<Vec<u8>> {
        self.0.bodies()
    }
}

/// Debian's aiosmtpd on 127.0.0.1 with STARTTLS required, or `None` (a skip outside CI) when
/// it is missing.
fn smtp_server(dir: &Path, mailbox: Mailbox) -> Option<Smtp> {
    if !inbox::have_aiosmtpd() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI needs {} with aiosmtpd (python3-aiosmtpd)",
            inbox::PYTHON
        );
        eprintln!(
            "skip: needs {} with aiosmtpd (apt install python3-aiosmtpd)",
            inbox::PYTHON
        );
        return None;
    }
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let sub = dir.join(match mailbox {
        Mailbox::Deliver => "smtp",
        Mailbox::Refuse => "smtp-refusing",
    });
    Some(
        Smtp::start(
            None,
            &sub,
            addr,
            &dir.join("server.pem"),
            &dir.join("server.key"),
            mailbox,
        )
        .unwrap(),
    )
}

/// A site config for site `site_id` with this `[host]` section.
fn site(dir: &Path, file: &str, site_id: &str, host: &str) {
    let lab = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/sites/lab.toml"),
    )
    .unwrap();
    // The lab site with this id and without its own [host] (the lab's).
    let mut table: toml::Table = toml::from_str(&lab).unwrap();
    table.remove("host").expect("the lab site has a [host]");
    table.insert("site_id".into(), site_id.into());
    let text = toml::to_string(&table).unwrap();
    std::fs::create_dir_all(dir.join("sites")).unwrap();
    std::fs::write(
        dir.join("sites").join(file),
        format!("{text}\n[host]\n{host}\n"),
    )
    .unwrap();
}

/// The notice key pair: (key file, public key file).
fn notice_key(dir: &Path) -> (PathBuf, PathBuf) {
    let key = keys::generate().unwrap();
    let path = dir.join("notice.key");
    let public = keys::write_keypair(&key, &path).unwrap();
    (path, public)
}

fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "{what}: not within {secs} s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn all_notices(db: &Path) -> Vec<NoticeRow> {
    notices::notices(db, None).unwrap_or_default()
}

fn serve_with_notices(dir: &Path, db: &Path, key: &Path, extra: &[&str]) -> Serve {
    let mut flags: Vec<String> = OPEN.iter().map(|s| s.to_string()).collect();
    for (k, v) in [
        ("--sites", dir.join("sites")),
        ("--notice-key", key.to_path_buf()),
        ("--notice-ca", dir.join("ca.pem")),
    ] {
        flags.push(k.into());
        flags.push(v.display().to_string());
    }
    flags.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    Serve::start(dir, db, &refs)
}

fn verify_notice(file: &Path, pubkey: Option<&Path>) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_imrs-build"));
    cmd.args(["home", "verify-notice"]).arg(file);
    if let Some(p) = pubkey {
        cmd.arg("--notice-pubkey").arg(p);
    }
    let o = cmd.output().unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

#[test]
fn installation_notices_reach_the_webhook_and_the_mailbox_signed_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = pki(d);
    std::fs::write(d.join("ca.pem"), &ca).unwrap();
    let Some(smtp) = smtp_server(d, Mailbox::Deliver) else {
        return;
    };
    let hook = webhook(d, Answer::Ok);
    site(
        d,
        "lab.toml",
        "lab-01",
        &format!(
            "organisation = \"Example Host <Org>\"\nwebhook = \"{}\"\nemail = [\"noc@example.net\", \"ops@example.net\"]",
            hook.url()
        ),
    );
    site(d, "quiet.toml", "no-contacts", "organisation = \"Nobody\"");
    let (key, public) = notice_key(d);
    let db = d.join("home.sqlite");
    let serve = serve_with_notices(
        d,
        &db,
        &key,
        &[
            "--smtp-relay",
            &smtp.addr().to_string(),
            "--smtp-from",
            "imrs@example.org",
        ],
    );
    let agent = agent(&ca);
    let device = keys::generate().unwrap();
    let mut r = sample("SN-N1");
    r.site.site_id = "lab-01".into();
    r.bgp.announced = vec![
        "199.7.83.0/24".parse().unwrap(),
        "2001:500:9f::/48".parse().unwrap(),
    ];
    r.image.manifest_sha256 = "ab".repeat(32);
    let signed = report::sign(&r, &device);
    let (s, _) = post(&agent, &serve.url, &signed.to_json());
    assert_eq!(s, 201);

    // The webhook: one notice, both signatures good, saying what the report says.
    let body = wait_for("the webhook notice", 20, || hook.bodies().pop());
    let expected = keys::read_public(&public).unwrap();
    let (n, rep) = notice::verify(&body, Some(&expected)).unwrap();
    assert_eq!(n.kind, Kind::InstallPassed);
    assert_eq!(n.id, r.id.to_string());
    assert_eq!(rep.id, r.id);
    assert_eq!(n.zone_serial, Some(2026010100));
    assert_eq!(n.announced, r.bgp.announced);
    assert_eq!(n.organisation, "Example Host <Org>");
    assert_eq!(n.device_key, keys::key_id(&device.verifying_key()));

    // The mailbox: one message per address, the notice attached and good.
    let mails = wait_for("two e-mails", 20, || {
        let m = smtp.messages();
        (m.len() >= 2).then_some(m)
    });
    let mut to: Vec<String> = Vec::new();
    for raw in &mails {
        let m = mail_parser::MessageParser::default().parse(raw).unwrap();
        assert_eq!(
            m.subject(),
            Some("[IMRS] xx-lab-01.l.root-servers.org: installation passed")
        );
        assert_eq!(
            m.from().and_then(|f| f.first()).and_then(|a| a.address()),
            Some("imrs@example.org")
        );
        to.push(
            m.to()
                .and_then(|t| t.first())
                .and_then(|a| a.address())
                .unwrap()
                .to_string(),
        );
        let text = m.body_text(0).unwrap();
        assert!(text.contains("Zone serial: 2026010100"), "{text}");
        assert!(text.contains("199.7.83.0/24, 2001:500:9f::/48"), "{text}");
        let att = m.attachments().next().expect("notice.json attached");
        assert_eq!(att.attachment_name(), Some("notice.json"));
        let (mn, _) = notice::verify(att.contents(), Some(&expected)).unwrap();
        assert_eq!(mn.id, n.id);
    }
    to.sort();
    assert_eq!(to, ["noc@example.net", "ops@example.net"]);

    // `home verify-notice`: the true notice passes; pinned to another key, or altered, not.
    let file = d.join("notice.json");
    std::fs::write(&file, &body).unwrap();
    let (ok, out) = verify_notice(&file, Some(&public));
    assert!(ok, "{out}");
    assert!(
        out.contains("verified") && out.contains("xx-lab-01"),
        "{out}"
    );
    let (other, other_pub) = {
        let k = keys::generate().unwrap();
        let p = d.join("other.key");
        (k.clone(), keys::write_keypair(&k, &p).unwrap())
    };
    let (ok, out) = verify_notice(&file, Some(&other_pub));
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "not by the expected {}",
            keys::key_id(&other.verifying_key())
        )),
        "{out}"
    );
    let forged = String::from_utf8(body.clone())
        .unwrap()
        .replace("2026010100", "2026010199");
    std::fs::write(&file, &forged).unwrap();
    let (ok, out) = verify_notice(&file, None);
    assert!(!ok && out.contains("signature"), "{out}");
    // A notice re-signed by someone else with a serial the report does not have.
    let mut env: notice::SignedNotice = serde_json::from_slice(&body).unwrap();
    let mut inner: notice::Notice = serde_json::from_str(&env.notice).unwrap();
    inner.zone_serial = Some(2026010199);
    env = notice::sign(&inner, &other);
    std::fs::write(&file, serde_json::to_vec(&env).unwrap()).unwrap();
    let (ok, out) = verify_notice(&file, None);
    assert!(!ok && out.contains("zone_serial"), "{out}");

    // The same report again, and a report from a site without contacts: nothing more is sent.
    let (s, _) = post(&agent, &serve.url, &signed.to_json());
    assert_eq!(s, 409);
    let mut other_site = sample("SN-N2");
    other_site.site.site_id = "no-contacts".into();
    let (s, _) = post(
        &agent,
        &serve.url,
        &report::sign(&other_site, &keys::generate().unwrap()).to_json(),
    );
    assert_eq!(s, 201);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(hook.bodies().len(), 1);
    assert_eq!(smtp.messages().len(), 2);
    let rows = all_notices(&db);
    assert_eq!(
        rows.len(),
        3,
        "one webhook and two e-mail rows (none for no-contacts)"
    );
    assert!(rows.iter().all(|r| r.state() == "sent" && r.attempts == 1));
    // Nothing went wrong either: no notice error was logged.
    let err = serve.wait_stderr("notices:");
    assert!(!err.contains("notices: cannot"), "{err}");

    // A failed installation, with markup in its reason: noticed, and the reason in the text.
    let mut failed = sample("SN-N3");
    failed.site.site_id = "lab-01".into();
    failed.event = Event::InstallFailed {
        stage: imrs_config::stage::Stage::Bgp,
        reason: "no session <established>\u{1b}[2J".into(),
    };
    let (s, _) = post(
        &agent,
        &serve.url,
        &report::sign(&failed, &keys::generate().unwrap()).to_json(),
    );
    assert_eq!(s, 201);
    let body = wait_for("the install-failed notice", 20, || {
        let b = hook.bodies();
        (b.len() == 2).then(|| b[1].clone())
    });
    let (n, _) = notice::verify(&body, Some(&expected)).unwrap();
    assert_eq!(n.kind, Kind::InstallFailed);
    assert_eq!(
        n.failed.as_deref(),
        Some("bgp: no session <established>\u{1b}[2J")
    );
    assert!(
        n.text()
            .contains("Failed at:   bgp: no session <established>\\u{1b}[2J")
    );
    drop(serve);
}

#[test]
fn failing_channels_are_retried_then_given_up_and_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = pki(d);
    std::fs::write(d.join("ca.pem"), &ca).unwrap();
    let Some(denying) = smtp_server(d, Mailbox::Refuse) else {
        return;
    };
    let failing = webhook(d, Answer::Status(500));
    let slow = webhook(d, Answer::Late(Duration::from_secs(4)));
    let down = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        drop(l);
        a
    };
    site(
        d,
        "a.toml",
        "site-a",
        &format!(
            "webhook = \"{}\"\nemail = [\"noc@example.net\"]",
            failing.url()
        ),
    );
    site(
        d,
        "b.toml",
        "site-b",
        &format!("webhook = \"https://{down}/hook\""),
    );
    site(
        d,
        "c.toml",
        "site-c",
        &format!("webhook = \"{}\"", slow.url()),
    );
    let (key, _) = notice_key(d);
    let db = d.join("home.sqlite");
    let serve = serve_with_notices(
        d,
        &db,
        &key,
        &[
            "--smtp-relay",
            &denying.addr().to_string(),
            "--notice-attempts",
            "3",
            "--notice-backoff",
            "1",
            "--notice-timeout",
            "2",
        ],
    );
    let agent = agent(&ca);
    for s in ["site-a", "site-b", "site-c"] {
        let mut r = sample(&format!("SN-{s}"));
        r.site.site_id = s.into();
        let (st, _) = post(
            &agent,
            &serve.url,
            &report::sign(&r, &keys::generate().unwrap()).to_json(),
        );
        assert_eq!(st, 201);
    }
    // Three attempts each (at once, after 1 s, after 2 s more; the slow one 2 s each), then
    // given up.
    let rows = wait_for("every notice given up", 60, || {
        let rows = all_notices(&db);
        (rows.len() == 4 && rows.iter().all(|r| r.state() == "gave-up")).then_some(rows)
    });
    let of = |site: &str, channel: &str| {
        rows.iter()
            .find(|r| r.site_id == site && r.channel == channel)
            .unwrap()
            .clone()
    };
    for r in &rows {
        assert_eq!(r.attempts, 3, "{r:?}");
        assert!(r.sent_unix.is_none());
    }
    let e = |r: NoticeRow| r.last_error.unwrap_or_default();
    assert!(e(of("site-a", "webhook")).contains("HTTP 500"));
    assert!(
        e(of("site-a", "email")).contains("550"),
        "{:?}",
        of("site-a", "email")
    );
    let down_err = e(of("site-b", "webhook"));
    assert!(
        down_err.to_lowercase().contains("refused") || down_err.contains("connect"),
        "{down_err}"
    );
    let slow_err = e(of("site-c", "webhook"));
    assert!(
        slow_err.to_lowercase().contains("timeout") || slow_err.contains("timed out"),
        "{slow_err}"
    );
    assert_eq!(
        failing.bodies().len(),
        3,
        "three POSTs to the failing webhook"
    );
    let err = serve.wait_stderr("given up");
    assert!(err.contains("failed 3 time(s), given up"), "{err}");
    drop(serve);
}

#[test]
fn a_box_that_goes_quiet_is_noticed_once() {
    use imrs_build::home::store::{NewReport, RejectedCaps, Store};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = pki(d);
    std::fs::write(d.join("ca.pem"), &ca).unwrap();
    let hook = webhook(d, Answer::Ok);
    site(
        d,
        "lab.toml",
        "lab-01",
        &format!("webhook = \"{}\"\nquiet_after_s = 600", hook.url()),
    );
    let (key, public) = notice_key(d);
    let db = d.join("home.sqlite");
    // A box heard from an hour ago, and one a minute ago, stored as the receiver stores them.
    let now = jiff::Timestamp::now().as_second();
    {
        let store = Store::start(&db, RejectedCaps::default()).unwrap();
        for (serial, ago) in [("SN-OLD", 3600), ("SN-NEW", 60)] {
            let k = keys::generate().unwrap();
            let mut r = sample(serial);
            r.site.site_id = "lab-01".into();
            let s = report::sign(&r, &k);
            let rx = store
                .submit(NewReport {
                    id: r.id.to_string(),
                    key_id: keys::key_id(&k.verifying_key()),
                    public_key: s.public_key.clone(),
                    serial: serial.into(),
                    profile: "qemu".into(),
                    site_id: "lab-01".into(),
                    instance: r.site.instance.clone(),
                    event: "install-passed".into(),
                    failed_stage: None,
                    failed_reason: None,
                    zone_serial: Some(2026010100),
                    image: "qemu 0.1.0".into(),
                    lab: true,
                    created_unix: r.created_unix,
                    received_unix: now - ago,
                    peer: "127.0.0.1:1".into(),
                    digest: String::new(),
                    report: s.report,
                    signature: s.signature,
                    enrolled: false,
                    resolution: None,
                })
                .unwrap();
            rx.blocking_recv().unwrap().unwrap();
        }
    }
    let serve = serve_with_notices(d, &db, &key, &[]);
    let body = wait_for("the went-quiet notice", 20, || hook.bodies().pop());
    let (n, _) = notice::verify(&body, Some(&keys::read_public(&public).unwrap())).unwrap();
    assert_eq!(n.kind, Kind::WentQuiet);
    assert_eq!(n.serial, "SN-OLD");
    assert!(n.silent_s.unwrap() >= 3600, "{:?}", n.silent_s);
    drop(serve);
    // A restarted receiver knows it told the host already.
    let serve = serve_with_notices(d, &db, &key, &[]);
    serve.wait_stderr("notices:");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(hook.bodies().len(), 1);
    drop(serve);
}

#[test]
fn bad_notice_settings_stop_the_start_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pki(d);
    let (key, _) = notice_key(d);
    let run = |extra: &[&str]| refused_start(d, extra);
    let sites = d.join("sites");
    let (s, k) = (sites.to_str().unwrap(), key.to_str().unwrap());
    // --sites needs --notice-key (a usage error).
    site(d, "a.toml", "site-a", "email = [\"noc@example.net\"]");
    let err = run(&["--sites", s]);
    assert!(err.contains("--notice-key"), "{err}");
    // Two files for one site.
    site(d, "b.toml", "site-a", "");
    let err = run(&["--sites", s, "--notice-key", k]);
    assert!(
        err.contains("a.toml") && err.contains("b.toml") && err.contains("site-a"),
        "{err}"
    );
    std::fs::remove_file(sites.join("b.toml")).unwrap();
    // An invalid contact: the file, field and value.
    site(
        d,
        "c.toml",
        "site-c",
        "webhook = \"http://hooks.example.net/\"",
    );
    let err = run(&["--sites", s, "--notice-key", k]);
    assert!(
        err.contains("c.toml") && err.contains("host.webhook"),
        "{err}"
    );
    std::fs::remove_file(sites.join("c.toml")).unwrap();
    // A relay whose port is no port; a CA file without a certificate.
    let err = run(&[
        "--sites",
        s,
        "--notice-key",
        k,
        "--smtp-relay",
        "mail.example.net:smtp",
    ]);
    assert!(err.contains("mail.example.net:smtp"), "{err}");
    std::fs::write(d.join("empty.pem"), "nothing").unwrap();
    let err = run(&[
        "--sites",
        s,
        "--notice-key",
        k,
        "--notice-ca",
        d.join("empty.pem").to_str().unwrap(),
    ]);
    assert!(
        err.contains("empty.pem") && err.contains("no PEM certificate"),
        "{err}"
    );
    assert!(!d.join("db.sqlite").exists(), "no database made");
}
