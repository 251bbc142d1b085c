//! The whole first boot of the real `imrs-init`, as PID 1 of its own PID and mount namespaces
//! inside an "appliance" network namespace, against a "host" namespace that plays the host
//! organisation's network over a veth, started as the lab starts it (`imrs_build::host`): FRR
//! as the router (AS 64512, IPv4 and IPv6 sessions), NSD as the transfer server serving the real
//! root zone, and the phone-home receiver (`imrs_build::home`, TLS with the lab's kind of CA,
//! `imrs_build::lab::site::make_tls`, pinned in the signed site config).
//!
//! The init's clock is shifted into the real zone's signature window with the test hook
//! `imrs.fake_time` (a network namespace cannot have its own wall clock).
//!
//! - `first_boot_passes_serves_announces_and_reports`: every stage passes; FRR learns exactly
//!   the five IMRS prefixes from AS 20144 over both sessions; the appliance answers `. SOA`
//!   with AA, the verified serial and NSID over UDP and TCP, IPv4 and IPv6; the receiver holds
//!   one verified `install-passed` report from the device, then heartbeats; drain/undrain on the control socket
//!   withdraws and restores the specifics; NSD crashing (killed whenever it comes up, 8 s):
//!   specifics withdrawn at the peer (covering kept), NSD restarted by the supervisor,
//!   specifics back; BIRD killed: restarted, sessions
//!   and announcements back; a second boot on the same state (clock just before
//!   the stored zone expires, transfer server down) serves again from the stored zone without a
//!   new install report, withdraws nothing while the zone is valid, and once it expires
//!   withdraws the specifics (covering kept) and stops serving `.`.
//! - `absent_bgp_neighbour_is_waited_for`: the host's router drops BGP for 20 s: the bgp stage
//!   waits (DNS healthy, nothing announced, no failure), and passes announcing the five
//!   prefixes once the router answers.
//! - `knot_first_boot_serves_and_announces`: the same boot with Knot as the DNS daemon; knotd
//!   is killed while the dns stage waits for it: the supervisor starts it again and the stage
//!   passes.
//! - `tampered_zone_is_refused_reported_then_the_good_one_passes`: the transfer server serves
//!   the real zone with one glue address changed: the zone stage fails naming ZONEMD, nothing
//!   is announced, and an `install-failed` report naming the zone stage arrives; the stage runs
//!   again (still refused, nothing announced); then the transfer server hands out the real
//!   zone: the next attempt passes, the box announces the five prefixes, answers, and an
//!   `install-passed` report follows the failed one.
//! - `both_slots_bad_stay_off_the_air_and_report_both`: an installed box back on slot A after
//!   slot B failed its trial (`slots.json`), and slot A now fails too (the tampered zone): the
//!   console says both slots are bad, nothing is announced, and a `slot-changed` report names
//!   slot B as before and both failures.
//! - `a_slot_on_trial_that_misses_its_deadline_gives_up`: slot B on trial (the loader's
//!   variables as systemd-boot leaves them), the transfer server down, a site deadline of 60 s:
//!   the init gives the boot up at the deadline, records the failed trial in `slots.json`, and
//!   nothing was announced.
//!
//! Needs root, unshare, ip, nft, FRR, NSD, Knot, BIRD, dig and the shared root zone; skips without them (fails
//! under `CI=true`).

use imrs_tests::appliance;
use imrs_tests::daemons;
use imrs_tests::netns;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use appliance::{Init, fixture_with_site};
use daemons::{
    BIRD, NSD, POLL, Router, RouterKind, Xfr, XfrConfig, router_config, valid_prefixes, wait_for,
};
use imrs_build::home::enrol::EnrolmentMode;
use imrs_build::home::{server, store};
use imrs_build::lab::site::{Tls, make_tls};
use netns::{NetNs, appliance_and_host, require};

/// 2026-08-01T00:00:00Z: inside the signature window of root.zone.2026073102.
const FAKE_TIME: i64 = 1_785_542_400;
const SERIAL: u32 = 2026073102;
const SPECIFICS: [&str; 3] = ["199.7.83.0/24", "2001:500:9f::/48", "2001:500:3::/48"];

fn zone_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/rootzone/root.zone.2026073102")
}

fn prerequisites(test: &str) -> bool {
    let zone = zone_file().to_string_lossy().into_owned();
    let mut needs = vec![
        "/usr/bin/unshare",
        "/usr/sbin/ip",
        BIRD,
        NSD,
        "/usr/bin/dig",
    ];
    needs.extend(RouterKind::Frr.programs());
    needs.push(&zone);
    require(test, true, &needs)
}

/// The lab site config with the test CA pinned.
fn site_text(ca_pem: &str) -> Vec<u8> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(repo.join("images/sites/lab.toml")).unwrap();
    let start = text.find("ca_pem = \"\"\"").unwrap();
    let end = text[start + 12..].find("\"\"\"").unwrap() + start + 15;
    format!(
        "{}ca_pem = \"\"\"\n{}\"\"\"{}",
        &text[..start],
        ca_pem,
        &text[end..]
    )
    .into_bytes()
}

/// The host organisation's side.
struct Host {
    rtr: NetNs,
    appl: NetNs,
    router: Router,
    xfr: Xfr,
    receiver: server::Running,
    db: PathBuf,
}

/// NSD serving `zone` on 192.0.2.53 and 2001:db8:1::53, transfers to the appliance only.
fn start_xfr(rtr: &NetNs, dir: &Path, zone: &Path) -> Xfr {
    let cfg = XfrConfig {
        zonefile: zone.to_path_buf(),
        serial: SERIAL,
        listen: vec![
            "192.0.2.53:53".parse().unwrap(),
            "[2001:db8:1::53]:53".parse().unwrap(),
        ],
        allow: vec![
            "192.0.2.10".parse().unwrap(),
            "2001:db8:1::10".parse().unwrap(),
        ],
    };
    Xfr::start(rtr, dir, &cfg).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Starts the receiver with its listening socket in `rtr`.
fn start_receiver(rtr: &NetNs, tls: &Tls, db: &Path) -> server::Running {
    // The device makes its key at first boot: open enrolment, as in the lab.
    let cfg = server::ServeConfig::new(
        "192.0.2.80:8443".parse().unwrap(),
        db.to_path_buf(),
        tls.cert.clone(),
        tls.key.clone(),
        EnrolmentMode::Open,
    );
    rtr.run_inside(|| server::start(&cfg))
        .unwrap()
        .unwrap_or_else(|e| panic!("{e:#}"))
}

fn host(tag: &str, dir: &Path, zone: &Path, tls: &Tls) -> Host {
    let (appl, rtr) = appliance_and_host(
        tag,
        &["192.0.2.53/24", "2001:db8:1::53/64", "192.0.2.80/24"],
    );
    // The lab's documentation-range service addresses are reached through the appliance.
    rtr.add_route(
        "198.51.100.42".parse().unwrap(),
        "192.0.2.10".parse().unwrap(),
        "eth0",
    )
    .unwrap();
    rtr.add_route(
        "2001:db8:42::42".parse().unwrap(),
        "2001:db8:1::10".parse().unwrap(),
        "eth0",
    )
    .unwrap();
    let router = Router::start(RouterKind::Frr, &rtr, &dir.join("frr"), &router_config())
        .unwrap_or_else(|e| panic!("{e:#}"));
    let xfr = start_xfr(&rtr, &dir.join("xfr"), zone);
    let db = dir.join("home.sqlite");
    let receiver = start_receiver(&rtr, tls, &db);
    Host {
        rtr,
        appl,
        router,
        xfr,
        receiver,
        db,
    }
}

fn dig(ns: &NetNs, server: &str, tcp: bool) -> String {
    let mut args = vec![
        format!("@{server}"),
        ".".into(),
        "SOA".into(),
        "+nsid".into(),
        "+norec".into(),
        "+time=2".into(),
        "+tries=1".into(),
    ];
    if tcp {
        args.push("+tcp".into());
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ns.exec("dig", &refs).unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until the router holds exactly `want` (both families); panics naming `what` and what
/// it holds otherwise.
fn wait_learned(router: &Router, want: &[String], within: Duration, what: &str) {
    let got = wait_for(within, POLL, || {
        let l = learned(router);
        (l == want).then_some(l)
    });
    assert_eq!(
        got.as_deref(),
        Some(want),
        "{what}: the router has {:?}, sessions {:?}",
        learned(router),
        router.neighbor_states()
    );
}

/// Both families' prefixes the router holds (none while it does not answer).
fn learned(router: &Router) -> Vec<String> {
    let mut v = router
        .routes()
        .map(|r| valid_prefixes(&r))
        .unwrap_or_default();
    v.sort();
    v
}

fn imrs_prefixes() -> Vec<String> {
    let mut v: Vec<String> = imrs_config::imrs::IMRS_PREFIXES
        .iter()
        .map(|p| p.prefix.to_string())
        .collect();
    v.sort();
    v
}

fn setup(tag: &str, zone: &Path) -> (tempfile::TempDir, PathBuf, PathBuf, Tls) {
    let _ = (tag, zone);
    setup_with_site("")
}

/// A folder with the test CA, the fixture root with the lab site plus `extra` (TOML appended)
/// signed, and an empty state folder: (folder, root, state, TLS).
fn setup_with_site(extra: &str) -> (tempfile::TempDir, PathBuf, PathBuf, Tls) {
    let d = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let pki = make_tls(d.path(), "192.0.2.80".parse().unwrap(), &[]).unwrap();
    let (root, state) = (d.path().join("root"), d.path().join("state"));
    let mut site = site_text(&pki.ca_pem);
    site.extend_from_slice(extra.as_bytes());
    fixture_with_site(&root, &site);
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    (d, root, state, pki)
}

#[test]
fn first_boot_passes_serves_announces_and_reports() {
    if !prerequisites("init_serving") {
        return;
    }
    let (d, root, state, pki) = setup("isp", &zone_file());
    let mut h = host("isp", d.path(), &zone_file(), &pki);
    let cmdline = format!("imrs.fake_time={FAKE_TIME} imrs.grace=2");
    let mut init = Init::start_in(Some(h.appl.name()), &root, &state, &cmdline);
    init.wait_for("boot summary", Duration::from_secs(240));
    for stage in [
        "platform", "site", "hardware", "network", "clock", "zone", "dns", "bgp",
    ] {
        assert_eq!(
            init.count(&format!("stage {stage}: PASSED")),
            1,
            "stage {stage}: {:#?}",
            init.console()
        );
    }
    assert_eq!(init.count("stage phone-home: PASSED"), 1);
    assert_eq!(init.count("stage steady: PASSED"), 1);

    // The router learned exactly the five IMRS prefixes, from AS 20144.
    let all = imrs_prefixes();
    wait_learned(&h.router, &all, Duration::from_secs(30), "first boot");
    for route in h.router.routes().unwrap() {
        assert_eq!(route.as_path, "20144", "{route:?}");
    }

    // The service answers from the host's side, UDP and TCP, v4 and v6.
    for server in ["198.51.100.42", "2001:db8:42::42"] {
        for tcp in [false, true] {
            let out = dig(&h.rtr, server, tcp);
            assert!(out.contains("status: NOERROR"), "{server} tcp={tcp}: {out}");
            assert!(out.contains(" aa"), "{server} tcp={tcp}: no AA: {out}");
            assert!(
                out.contains(&SERIAL.to_string()),
                "{server} tcp={tcp}: serial: {out}"
            );
            assert!(
                out.contains("NSID:") && out.contains("lab-01.l.root-servers.test"),
                "{server} tcp={tcp}: NSID: {out}"
            );
        }
    }

    // One verified install-passed report from this device.
    let install = wait_for(Duration::from_secs(60), POLL, || {
        store::reports(&h.db)
            .ok()?
            .into_iter()
            .find(|r| r.event == "install-passed")
    })
    .expect("no install-passed report at the receiver");
    assert_eq!(install.zone_serial, Some(SERIAL));
    let dev = store::fleet(&h.db, 10)
        .unwrap()
        .devices
        .into_iter()
        .find(|d| d.device == install.device)
        .unwrap();
    assert_eq!(dev.site_id, "lab-01");
    // Then heartbeats (the lab site asks for one every 10 s): the zone's serial, the slot
    // (none: no disk slot here).
    let beat = wait_for(Duration::from_secs(40), POLL, || {
        store::reports(&h.db)
            .ok()?
            .into_iter()
            .find(|r| r.event == "heartbeat")
    })
    .expect("no heartbeat at the receiver");
    assert_eq!(beat.device, install.device);
    assert_eq!(beat.zone_serial, Some(SERIAL));
    assert_eq!(init.count("first heartbeat queued"), 1);
    assert_eq!(
        init.count(&format!("device key {}", dev.device)),
        1,
        "the report's device key is the one the console shows"
    );

    // Drain withdraws the specifics (covering stays); undrain brings them back.
    let sock = state.join("control.sock");
    let ctl = |req: &str| {
        let out = Command::new(appliance::init_binary())
            .args([req, &sock.to_string_lossy()])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(ctl("drain"), "ok drained");
    let covering: Vec<String> = all
        .iter()
        .filter(|p| !SPECIFICS.contains(&p.as_str()))
        .cloned()
        .collect();
    wait_learned(&h.router, &covering, Duration::from_secs(15), "drained");
    assert_eq!(ctl("undrain"), "ok undrained");
    wait_learned(&h.router, &all, Duration::from_secs(40), "undrained");

    // Faults under the init's supervisor.
    let init_pid = init.init_pid();
    let try_kill = |name: &str| kill_child(init_pid, name);
    // NSD crashing: killed whenever it is up for 8 s (one kill alone is repaired by the
    // supervisor within a probe). The specifics are withdrawn at the peer, covering kept;
    // once it stays up, the specifics come back after the rise and the hold-down.
    let until = std::time::Instant::now() + Duration::from_secs(8);
    let mut kills = 0;
    let mut withdrawn = false;
    while std::time::Instant::now() < until {
        kills += usize::from(try_kill("nsd"));
        withdrawn |= learned(&h.router) == covering;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(kills >= 2, "NSD killed {kills} times");
    let got = wait_for(Duration::from_secs(5), POLL, || {
        let l = learned(&h.router);
        (withdrawn || l == covering).then_some(l)
    });
    assert!(
        got.is_some(),
        "NSD down: the specifics were never withdrawn at the peer: {:?}",
        learned(&h.router)
    );
    wait_learned(&h.router, &all, Duration::from_secs(60), "NSD back");
    assert!(init.count("nsd started") >= 2, "NSD was not restarted");
    // BIRD killed: the sessions drop, BIRD is restarted, the sessions come back and the
    // health loop announces again.
    assert!(try_kill("bird"), "no BIRD under the init");
    let got = wait_for(Duration::from_secs(90), POLL, || {
        let l = learned(&h.router);
        (l == all && init.count("bird started") >= 2).then_some(l)
    });
    assert_eq!(
        got,
        Some(all.clone()),
        "BIRD restarted: the router has {:?}",
        learned(&h.router)
    );
    assert!(init.count("bird started") >= 2, "BIRD was not restarted");

    // Orderly shutdown. Then a second boot on the same state, its clock 20 s before the stored
    // zone expires, the transfer server down: serves from the stored zone without a new install
    // report; the unreachable transfer server withdraws nothing while the zone is valid; once
    // it expires the specifics are withdrawn (covering kept) and `.` is no longer served.
    init.signal(libc::SIGTERM);
    init.wait(Duration::from_secs(30));
    h.xfr.kill();
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("zone/current/record.json")).unwrap())
            .unwrap();
    let refreshed: jiff::Timestamp = record["refreshed_at"].as_str().unwrap().parse().unwrap();
    let near_expiry = refreshed.as_second() + 604_800 - 25;
    let cmdline = format!("imrs.fake_time={near_expiry} imrs.grace=2");
    let mut second = Init::start_in(Some(h.appl.name()), &root, &state, &cmdline);
    second.wait_for("boot summary", Duration::from_secs(60));
    assert_eq!(second.count("stage phone-home: DONE EARLIER"), 1);
    assert_eq!(second.count("stage hardware: DONE EARLIER"), 1);
    assert_eq!(second.count("from the store, verified again now"), 1);
    assert_eq!(second.count("stage steady: PASSED"), 1);
    let out = dig(&h.rtr, "198.51.100.42", false);
    assert!(out.contains(&SERIAL.to_string()), "second boot: {out}");
    second.wait_for(
        "zone refresh: no transfer server answered",
        Duration::from_secs(20),
    );
    assert_eq!(
        learned(&h.router),
        all,
        "transfer servers down, zone valid: nothing withdrawn"
    );
    wait_learned(&h.router, &covering, Duration::from_secs(40), "expired");
    second.wait_for(
        "zone expired: no longer serving it",
        Duration::from_secs(10),
    );
    let out = dig(&h.rtr, "198.51.100.42", false);
    assert!(
        out.contains("status: REFUSED") || out.contains("status: SERVFAIL"),
        "expired zone still served: {out}"
    );
    let f = store::fleet(&h.db, 10).unwrap();
    assert_eq!(f.devices.len(), 1, "{f:?}");
    second.signal(libc::SIGTERM);
    second.wait(Duration::from_secs(30));
    h.router.ensure_running().unwrap();
    h.receiver.stop();
}

/// The real zone's text with the glue address of a.root-servers.net changed (signatures still
/// verify: glue is unsigned; ZONEMD does not).
fn with_forged_glue(text: &str) -> String {
    let line = text
        .lines()
        .find(|l| l.starts_with("a.root-servers.net.") && l.contains("\tA\t"))
        .expect("glue for a.root-servers.net");
    let forged = text.replacen(line, &line.replace("198.41.0.4", "198.41.0.5"), 1);
    assert_ne!(forged, text, "glue line {line:?} not changed");
    forged
}

#[test]
fn forged_stored_zone_is_refused_and_transferred_anew() {
    if !prerequisites("init_serving") {
        return;
    }
    let (d, root, state, pki) = setup("ifz", &zone_file());
    let h = host("ifz", d.path(), &zone_file(), &pki);
    // Boot 1, as far as the zone stage: ICANN's zone is transferred, verified and stored.
    let cmdline = format!("imrs.fake_time={FAKE_TIME} imrs.grace=2");
    let mut init = Init::start_in(
        Some(h.appl.name()),
        &root,
        &state,
        &format!("{cmdline} imrs.stop_after=zone"),
    );
    init.wait_for("the pipeline ends here", Duration::from_secs(120));
    assert_eq!(init.count("stage zone: PASSED"), 1, "{:#?}", init.console());
    init.signal(libc::SIGTERM);
    init.wait(Duration::from_secs(30));

    // Whoever holds the data partition forges the stored zone (one glue address) and its record
    // (a serial above ICANN's, refreshed far in the future), and an interrupted commit has left
    // a half-written generation beside them.
    let zone_dir = state.join("zone");
    let stored = zone_dir.join("current/root.zone");
    let genuine = std::fs::read_to_string(&stored).unwrap();
    std::fs::write(&stored, with_forged_glue(&genuine)).unwrap();
    let record_path = zone_dir.join("current/record.json");
    let mut record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record_path).unwrap()).unwrap();
    record["serial"] = (SERIAL + 1000).into();
    record["refreshed_at"] = "2030-01-01T00:00:00Z".into();
    std::fs::write(&record_path, record.to_string()).unwrap();
    std::fs::create_dir_all(zone_dir.join(".tmp-1-1")).unwrap();
    std::fs::write(
        zone_dir.join(".tmp-1-1/root.zone"),
        &genuine[..genuine.len() / 2],
    )
    .unwrap();

    // Boot 2: the forged zone is refused, ICANN's is transferred, verified and served.
    let mut second = Init::start_in(Some(h.appl.name()), &root, &state, &cmdline);
    second.wait_for("boot summary", Duration::from_secs(240));
    assert_eq!(
        second.count("not served; transferring anew"),
        1,
        "{:#?}",
        second.console()
    );
    assert!(second.count("ZONEMD") >= 1, "{:#?}", second.console());
    assert_eq!(second.count("transferred and verified"), 1);
    assert_eq!(second.count("stage dns: PASSED"), 1);
    let out = dig(&h.rtr, "198.51.100.42", false);
    assert!(out.contains(&SERIAL.to_string()), "serial: {out}");
    let ns = h
        .rtr
        .exec(
            "dig",
            &["@198.51.100.42", ".", "NS", "+norec", "+time=2", "+tries=1"],
        )
        .unwrap();
    let ns = String::from_utf8_lossy(&ns.stdout);
    assert!(
        ns.contains("198.41.0.4") && !ns.contains("198.41.0.5"),
        "the genuine glue is served: {ns}"
    );
    // The store holds ICANN's zone again, and nothing of the interrupted commit.
    let now_stored = std::fs::read_to_string(zone_dir.join("current/root.zone")).unwrap();
    assert!(now_stored.contains("198.41.0.4") && !now_stored.contains("198.41.0.5"));
    assert!(!zone_dir.join(".tmp-1-1").exists());
    second.signal(libc::SIGTERM);
    second.wait(Duration::from_secs(30));
    h.receiver.stop();
}

/// A fixture and host whose transfer server serves the real zone with one glue address changed:
/// signatures still verify (glue is unsigned), ZONEMD does not. (folder, root, state, host)
fn tampered_zone_host(tag: &str) -> (tempfile::TempDir, PathBuf, PathBuf, Host) {
    let (d, root, state, pki) = setup(tag, &zone_file());
    let tampered = with_forged_glue(&std::fs::read_to_string(zone_file()).unwrap());
    let zone = d.path().join("tampered.zone");
    std::fs::write(&zone, tampered).unwrap();
    let h = host(tag, d.path(), &zone, &pki);
    (d, root, state, h)
}

/// The end of a test's boot: the init, the transfer server and the receiver are stopped.
fn shut_down(mut init: Init, mut h: Host) {
    init.signal(libc::SIGTERM);
    init.wait(Duration::from_secs(30));
    h.xfr.kill();
    h.receiver.stop();
}

/// The end of a boot that must stay off the air: nothing was announced; then [`shut_down`].
fn stop_off_the_air(init: Init, h: Host) {
    assert!(
        learned(&h.router).is_empty(),
        "announced: {:?}",
        learned(&h.router)
    );
    shut_down(init, h);
}

/// SIGKILLs the init's direct child whose command name starts with `name` (the daemons'
/// pidfiles hold pids of the init's PID namespace: found by name, with its host pid); whether
/// there was one to kill.
fn kill_child(init_pid: i32, name: &str) -> bool {
    let child = appliance::processes().into_iter().find(|p| {
        p.ppid == init_pid
            && std::fs::read_to_string(format!("/proc/{}/comm", p.pid))
                .is_ok_and(|c| c.trim().starts_with(name))
    });
    // SAFETY: kill has no memory-safety preconditions.
    child.is_some_and(|c| unsafe { libc::kill(c.pid, libc::SIGKILL) } == 0)
}

#[test]
fn tampered_zone_is_refused_reported_then_the_good_one_passes() {
    if !prerequisites("init_serving") {
        return;
    }
    let (d, root, state, mut h) = tampered_zone_host("itz");
    let cmdline = format!("imrs.fake_time={FAKE_TIME} imrs.grace=2");
    let init = Init::start_in(Some(h.appl.name()), &root, &state, &cmdline);
    init.wait_for("boot summary", Duration::from_secs(240));
    assert_eq!(init.count("stage zone: FAILED"), 1, "{:#?}", init.console());
    assert!(init.count("ZONEMD") >= 1, "{:#?}", init.console());
    assert_eq!(init.count("stage dns: "), 0, "nothing after zone runs");
    let dev = wait_for(Duration::from_secs(60), POLL, || {
        let f = store::fleet(&h.db, 10).ok()?;
        f.devices
            .into_iter()
            .find(|d| d.last_event == "install-failed")
    })
    .expect("no install-failed report at the receiver");
    assert_eq!(dev.failed_stage.as_deref(), Some("zone"));
    assert!(
        dev.failed_reason
            .as_deref()
            .unwrap_or("")
            .contains("ZONEMD"),
        "{dev:?}"
    );
    // The box does not give up: the zone stage runs again, still refusing the tampered zone,
    // and nothing is announced meanwhile.
    init.wait_for("stage zone: running (attempt 2)", Duration::from_secs(30));
    init.wait_for_count("stage zone: FAILED", 2, Duration::from_secs(60));
    assert!(learned(&h.router).is_empty(), "{:?}", learned(&h.router));
    assert_eq!(init.count("stage dns: "), 0, "nothing after zone runs");
    // The transfer server now hands out the real zone: the next attempt passes, the box
    // serves and announces, and reports install-passed (the failure was reported once).
    h.xfr.kill();
    h.xfr = start_xfr(&h.rtr, &d.path().join("xfr-good"), &zone_file());
    init.wait_for("stage zone passed on attempt", Duration::from_secs(120));
    wait_learned(
        &h.router,
        &imrs_prefixes(),
        Duration::from_secs(120),
        "after the good zone",
    );
    let passed = wait_for(Duration::from_secs(60), POLL, || {
        store::reports(&h.db)
            .ok()?
            .into_iter()
            .find(|r| r.event == "install-passed")
    })
    .expect("no install-passed report after the good zone");
    assert_eq!(passed.device, dev.device);
    assert_eq!(passed.zone_serial, Some(SERIAL));
    let events: Vec<String> = store::reports(&h.db)
        .unwrap()
        .into_iter()
        .map(|r| r.event)
        .filter(|e| e.starts_with("install-"))
        .collect();
    assert_eq!(events, ["install-failed", "install-passed"]);
    for tcp in [false, true] {
        let out = dig(&h.rtr, "198.51.100.42", tcp);
        assert!(out.contains(&SERIAL.to_string()), "tcp={tcp}: {out}");
    }
    shut_down(init, h);
}

#[test]
fn both_slots_bad_stay_off_the_air_and_report_both() {
    if !prerequisites("init_serving") {
        return;
    }
    let (_d, root, state, h) = tampered_zone_host("ibb");
    // An installed box (its first boot passed) that went back to slot A after slot B's image
    // gave up its trial.
    let state_json = serde_json::json!({
        "version": 1,
        "boots": 4,
        "first_boot_passed": true,
        "stages": {
            "hardware": {"status": "passed", "seconds": 0.1, "boot": 1},
            "phone-home": {"status": "passed", "seconds": 0.1, "boot": 1}
        }
    });
    std::fs::write(state.join("state.json"), state_json.to_string()).unwrap();
    let (a, b) = ("a".repeat(64), "b".repeat(64));
    let slots = serde_json::json!({
        "version": 1,
        "last_healthy": {"slot": "a", "manifest_sha256": a},
        "failed_trial": {
            "run": {"slot": "b", "manifest_sha256": b},
            "entry": "imrs-b+0-1.conf",
            "why": "stage dns failed: nsd exited",
            "tries_failed": 1,
            "boot": 4
        }
    });
    std::fs::write(state.join("slots.json"), slots.to_string()).unwrap();
    let cmdline = format!("imrs.fake_time={FAKE_TIME} imrs.grace=2 imrs.slot=a imrs.manifest={a}");
    let init = Init::start_in(Some(h.appl.name()), &root, &state, &cmdline);
    init.wait_for("boot summary", Duration::from_secs(240));
    assert_eq!(init.count("stage zone: FAILED"), 1, "{:#?}", init.console());
    assert_eq!(init.count("BOTH SLOTS ARE BAD"), 1, "{:#?}", init.console());
    let report = wait_for(Duration::from_secs(60), POLL, || {
        store::reports(&h.db)
            .ok()?
            .into_iter()
            .find(|r| r.event == "slot-changed")
    })
    .expect("no slot-changed report at the receiver");
    assert_eq!(report.slot.as_deref(), Some("a"));
    assert_eq!(report.previous_slot.as_deref(), Some("b"));
    let why = report.fallback.unwrap_or_default();
    assert!(
        why.contains("slot b") && why.contains("nsd exited") && why.contains("stage zone failed"),
        "{why}"
    );
    stop_off_the_air(init, h);
}

/// An EFI variable file as efivarfs shows it: 4 attribute bytes, then UTF-16LE with a NUL.
fn efivar(text: &str) -> Vec<u8> {
    let mut b = vec![7, 0, 0, 0];
    for u in text.encode_utf16().chain([0]) {
        b.extend(u.to_le_bytes());
    }
    b
}

#[test]
fn a_slot_on_trial_that_misses_its_deadline_gives_up() {
    if !prerequisites("init_serving") {
        return;
    }
    let (d, root, state, pki) = setup_with_site("\n[slots]\nhealth_deadline_s = 60\n");
    // systemd-boot started slot B's counted entry.
    let vars = root.join("sys/firmware/efi/efivars");
    std::fs::create_dir_all(&vars).unwrap();
    const LOADER: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";
    std::fs::write(
        vars.join(format!("LoaderEntrySelected-{LOADER}")),
        efivar("imrs-b+2-1.conf"),
    )
    .unwrap();
    std::fs::write(
        vars.join(format!("LoaderBootCountPath-{LOADER}")),
        efivar("\\loader\\entries\\imrs-b+2-1.conf"),
    )
    .unwrap();
    let mut h = host("idl", d.path(), &zone_file(), &pki);
    h.xfr.kill();
    let b = "b".repeat(64);
    let cmdline = format!("imrs.fake_time={FAKE_TIME} imrs.grace=2 imrs.slot=b imrs.manifest={b}");
    let mut init = Init::start_in(Some(h.appl.name()), &root, &state, &cmdline);
    init.wait_for("slot b on trial", Duration::from_secs(30));
    init.wait_for("did not become healthy", Duration::from_secs(150));
    assert_eq!(
        init.count("not healthy 60 s after boot (slots.health_deadline_s)"),
        1,
        "{:#?}",
        init.console()
    );
    assert_eq!(
        init.count("systemd-boot tries it again (2 tries left)"),
        1,
        "{:#?}",
        init.console()
    );
    init.wait(Duration::from_secs(30));
    let history: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("slots.json")).unwrap()).unwrap();
    let failed = &history["failed_trial"];
    assert_eq!(failed["run"]["slot"], "b", "{history}");
    assert_eq!(failed["entry"], "imrs-b+2-1.conf", "{history}");
    assert!(
        failed["why"].as_str().unwrap().contains("60 s after boot"),
        "{history}"
    );
    assert!(
        learned(&h.router).is_empty(),
        "announced: {:?}",
        learned(&h.router)
    );
    h.receiver.stop();
}

/// Runs `nft` with `args` in `ns`, failing the test with its stderr.
fn nft(ns: &NetNs, args: &[&str]) {
    let out = ns.exec("nft", args).unwrap();
    assert!(
        out.status.success(),
        "nft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn absent_bgp_neighbour_is_waited_for() {
    if !prerequisites("init_serving") || !require("init_serving (nft)", true, &["/usr/sbin/nft"]) {
        return;
    }
    let (d, root, state, pki) = setup("inb", &zone_file());
    let h = host("inb", d.path(), &zone_file(), &pki);
    // The host's router does not answer BGP at first: every TCP segment to or from port 179
    // is dropped on its side (the box's connections and the router's own time out).
    nft(&h.rtr, &["add", "table", "inet", "absent"]);
    nft(
        &h.rtr,
        &[
            "add", "chain", "inet", "absent", "input", "{", "type", "filter", "hook", "input",
            "priority", "-10", ";", "}",
        ],
    );
    for port in ["dport", "sport"] {
        nft(
            &h.rtr,
            &[
                "add", "rule", "inet", "absent", "input", "tcp", port, "179", "drop",
            ],
        );
    }
    let cmdline = format!("imrs.fake_time={FAKE_TIME} imrs.grace=2");
    let init = Init::start_in(Some(h.appl.name()), &root, &state, &cmdline);
    init.wait_for("stage bgp: running", Duration::from_secs(120));
    // 20 s without a neighbour (the stage waits up to 120 s): DNS is healthy, nothing is
    // announced, the stage has not passed.
    std::thread::sleep(Duration::from_secs(20));
    assert_eq!(init.count("stage dns: PASSED"), 1, "{:#?}", init.console());
    assert_eq!(init.count("stage bgp: PASSED"), 0, "{:#?}", init.console());
    assert_eq!(init.count("stage bgp: FAILED"), 0);
    assert!(learned(&h.router).is_empty(), "{:?}", learned(&h.router));
    // The neighbour appears: the sessions come up and the stage passes, announcing the five.
    nft(&h.rtr, &["delete", "table", "inet", "absent"]);
    init.wait_for("stage bgp: PASSED", Duration::from_secs(90));
    wait_learned(
        &h.router,
        &imrs_prefixes(),
        Duration::from_secs(30),
        "after the neighbour appeared",
    );
    shut_down(init, h);
}

#[test]
fn knot_first_boot_serves_and_announces() {
    if !prerequisites("init_serving") || !require("init_serving (knot)", true, &[daemons::KNOTD]) {
        return;
    }
    let (d, root, state, pki) = setup("isk", &zone_file());
    // The same image, built for Knot.
    let info = root.join("etc/imrs/image.json");
    let mut image: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&info).unwrap()).unwrap();
    image["dns"] = "knot".into();
    std::fs::write(&info, serde_json::to_vec_pretty(&image).unwrap()).unwrap();
    let h = host("isk", d.path(), &zone_file(), &pki);
    let cmdline = format!("imrs.fake_time={FAKE_TIME} imrs.grace=2");
    let init = Init::start_in(Some(h.appl.name()), &root, &state, &cmdline);
    // The daemon crashes while the dns stage waits for it (killed as it loads the zone): the
    // supervisor starts it again and the stage passes.
    init.wait_for("dns: knot started", Duration::from_secs(120));
    let init_pid = init.init_pid();
    let killed = wait_for(Duration::from_secs(10), Duration::from_millis(20), || {
        kill_child(init_pid, "knotd").then_some(())
    });
    assert!(killed.is_some(), "no knotd under the init to kill");
    assert_eq!(
        init.count("stage dns: PASSED"),
        0,
        "killed while the stage ran: {:#?}",
        init.console()
    );
    init.wait_for("boot summary", Duration::from_secs(240));
    assert_eq!(
        init.count("stage steady: PASSED"),
        1,
        "{:#?}",
        init.console()
    );
    assert_eq!(init.count("dns: knot started"), 1, "the stage ran once");
    assert_eq!(
        init.count("knot ended (killed by SIGKILL"),
        1,
        "{:#?}",
        init.console()
    );
    for server in ["198.51.100.42", "2001:db8:42::42"] {
        for tcp in [false, true] {
            let out = dig(&h.rtr, server, tcp);
            assert!(
                out.contains("status: NOERROR") && out.contains(" aa"),
                "{server} tcp={tcp}: {out}"
            );
            assert!(out.contains(&SERIAL.to_string()), "{out}");
            assert!(out.contains("lab-01.l.root-servers.test"), "NSID: {out}");
        }
    }
    wait_learned(
        &h.router,
        &imrs_prefixes(),
        Duration::from_secs(30),
        "knot first boot",
    );
    shut_down(init, h);
}
