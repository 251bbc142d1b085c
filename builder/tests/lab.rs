//! End-to-end tests of `imrs-build lab`: the qemu image booted in the lab's namespace with its
//! router (FRR; GoBGP for the normal pass once more), transfer server (NSD) and phone-home
//! receiver, one test per scenario, run one at a time (each boots QEMU; TCG on the build
//! machines). The image is built once per test binary (common::qemu_image), or taken from
//! `IMRS_LAB_IMAGE` with its site-signing key in `IMRS_LAB_KEY`.
//!
//! Needs root, QEMU, FRR, GoBGP, NSD, fdisk, dosfstools, mtools, e2fsprogs
//! (scripts/install-deps.sh): skipped with the reason when missing, failed under CI=true.

#[path = "common/browser.rs"]
mod chrome;
mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

use common::*;
use fantoccini::Locator;
use imrs_build::host::router::RouterKind;
use serde_json::Value;

/// Time limit per boot: the longest scenario boots twice.
const BOOT_TIMEOUT: &str = "240";
/// Delay of the late transfer server / receiver (the command's default is 30 s).
const LATE: &str = "20";

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn prerequisites(router: RouterKind) -> bool {
    let missing = imrs_build::lab::missing_prerequisites(router);
    require(
        missing.is_empty(),
        &format!("the lab needs {}", missing.join(", ")),
    )
}

/// (image folder, its site-signing key).
fn image() -> Option<(PathBuf, PathBuf)> {
    if let (Ok(i), Ok(k)) = (
        std::env::var("IMRS_LAB_IMAGE"),
        std::env::var("IMRS_LAB_KEY"),
    ) {
        return Some((PathBuf::from(i), PathBuf::from(k)));
    }
    qemu_image().map(|(dir, key, _)| (dir.clone(), key.clone()))
}

fn netns_left(pid: u32) -> Vec<String> {
    let out = run(Command::new("ip").args(["netns", "list"]));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(&format!("imrs-lab-{pid}-")))
        .map(String::from)
        .collect()
}

/// The work folder a scenario's run keeps (`--keep`).
fn work_dir(scenario: &str, router: RouterKind, boot: &str) -> PathBuf {
    scratch().join(format!(
        "lab-{scenario}-{router}-{boot}-{}",
        std::process::id()
    ))
}

/// Runs one scenario with FRR as the router and returns its JSON summary.
fn lab(scenario: &str) -> Option<Value> {
    lab_with(scenario, RouterKind::Frr, "kernel")
}

/// Runs one scenario with `router` and returns its JSON summary; asserts what holds whatever
/// the scenario: one JSON object naming the router, the image read its site from the lab disk,
/// nothing left behind.
fn lab_with(scenario: &str, router: RouterKind, boot: &str) -> Option<Value> {
    if !prerequisites(router) {
        return None;
    }
    if boot == "disk" && !uefi_prerequisites() {
        return None;
    }
    let (image, key) = image()?;
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let work = work_dir(scenario, router, boot);
    let _ = std::fs::remove_dir_all(&work);
    let mut cmd = bin();
    cmd.args(["--json", "lab"])
        .arg(&image)
        .arg("--key")
        .arg(&key)
        .args([
            "--scenario",
            scenario,
            "--timeout",
            BOOT_TIMEOUT,
            "--late",
            LATE,
            "--router",
            router.name(),
            "--boot",
            boot,
        ])
        .arg("--keep")
        .arg(&work);
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("spawn imrs-build lab");
    let pid = child.id();
    let o = child.wait_with_output().expect("imrs-build lab");
    let stdout = String::from_utf8_lossy(&o.stdout);
    let v: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "{scenario}: not one JSON object on stdout ({e}), exit {:?}:\n{stdout}",
            o.status.code()
        )
    });
    assert_eq!(
        o.status.code(),
        Some(if v["passed"] == true { 0 } else { 1 }),
        "{scenario}: exit code and `passed` disagree"
    );
    assert_eq!(v["scenario"], scenario);
    assert_eq!(
        v["router"],
        router.name(),
        "{scenario}: the summary names the router"
    );
    assert!(
        netns_left(pid).is_empty(),
        "{scenario}: namespaces left behind: {:?}",
        netns_left(pid)
    );
    let console = std::fs::read_to_string(work.join("console.log")).unwrap_or_default();
    assert!(
        console.contains("partition IMRS-CONFIG"),
        "{scenario}: the site did not come from the lab disk:\n{}",
        tail(&console, 40)
    );
    if boot == "disk" {
        // Started by systemd-boot from slot A's entry, which the init read from efivarfs.
        for line in [
            "EFI stub",
            "started from disk slot a",
            "systemd-boot started imrs-a.conf",
        ] {
            assert!(
                console.contains(line),
                "{scenario} (disk): no {line:?} on the console:\n{}",
                tail(&console, 60)
            );
        }
    }
    for stage in ["platform", "site"] {
        assert!(
            v["boots"][0]["stages"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["name"] == stage && s["status"] == "passed"),
            "{scenario}: stage {stage} did not pass:\n{}",
            pretty(&v)
        );
    }
    Some(v)
}

fn tail(text: &str, n: usize) -> String {
    let l: Vec<&str> = text.lines().collect();
    l[l.len().saturating_sub(n)..].join("\n")
}

fn pretty(v: &Value) -> String {
    let mut v = v.clone();
    // The checks say what failed; the raw reports and routes are in the work folder.
    if let Some(o) = v.as_object_mut() {
        o.remove("reports");
    }
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

fn assert_passed(scenario: &str, v: &Value) {
    let failed: Vec<String> = v["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["ok"] != true)
        .map(|c| format!("{}: {}", c["what"], c["detail"]))
        .collect();
    assert!(
        v["passed"] == true && failed.is_empty(),
        "{scenario}: expectation did not hold:\n  {}\n{}",
        failed.join("\n  "),
        pretty(v)
    );
}

/// Each of `whats` is one of the run's checks, and it held.
fn assert_checks_passed(v: &Value, whats: &[&str]) {
    for what in whats {
        assert!(
            v["checks"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["what"] == *what && c["ok"] == true),
            "no passed check {what:?}:\n{}",
            pretty(v)
        );
    }
}

fn assert_serving(v: &Value) {
    assert!(v["boot_to_serving_s"].as_f64().is_some(), "{}", pretty(v));
    assert_eq!(v["soa_serial"], 2026073102, "{}", pretty(v));
    let routes = v["routes"].as_array().unwrap();
    for p in ["199.7.83.0/24", "2001:500:9f::/48"] {
        assert!(
            routes
                .iter()
                .any(|r| r["prefix"] == p && r["origin_as"] == 20144 && r["valid"] == true),
            "{p} from AS 20144 missing: {}",
            pretty(v)
        );
    }
    // Nothing but IMRS prefixes from the box.
    for r in routes {
        let p = r["prefix"].as_str().unwrap();
        assert!(
            [
                "199.7.82.0/23",
                "199.7.83.0/24",
                "2001:500:3::/48",
                "2001:500:9e::/47",
                "2001:500:9f::/48"
            ]
            .contains(&p),
            "the box announced {p}"
        );
    }
    for a in v["soa"].as_array().unwrap() {
        assert_eq!(a["aa"], true, "{a}");
        assert!(a["nsid"].is_string(), "no NSID: {a}");
    }
}

/// The normal pass, then what the host and the operators see of it: the lab's own checks
/// verified the webhook and e-mail notices and read the operators' pages inside the namespace;
/// here the kept notice passes `home verify-notice` as a host runs it, and the lab's database,
/// served again on loopback, is looked at in headless Chromium.
#[test]
fn normal_first_boot_serves_and_reports() {
    let Some(v) = lab("normal") else { return };
    assert_passed("normal", &v);
    assert_serving(&v);
    assert_eq!(v["report_verified"], true);
    assert_eq!(v["report_event"], "install-passed");
    assert!(v["boot_to_report_s"].as_f64().is_some());
    assert_checks_passed(
        &v,
        &[
            "boot 1: the host's webhook got one signed notice per report (install-passed) that verifies",
            "boot 1: the host's mailbox got one e-mail per address and report (install-passed) with the signed notice attached, verified",
            "boot 1: the operators' pages show the device live on serial 2026073102",
        ],
    );
    let work = work_dir("normal", RouterKind::Frr, "kernel");
    let o = run(bin()
        .args(["home", "verify-notice"])
        .arg(work.join("host/webhook-1.json"))
        .arg("--notice-pubkey")
        .arg(work.join("notice-key.pub")));
    assert!(
        o.status.success() && text(&o).contains("verified"),
        "{}",
        text(&o)
    );
    the_lab_fleet_in_chromium(&work);
}

/// `home serve` on loopback over the lab's database, killed when dropped.
struct Pages(std::process::Child);

impl Drop for Pages {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The lab's database behind the operators' pages in headless Chromium: signed in with the
/// lab's token, the fleet is one row, the lab's box, live on 2026073102; its link leads to its
/// page, live, with the installation on its timeline and both notices sent. Screenshot:
/// lab-fleet-page.png.
fn the_lab_fleet_in_chromium(work: &std::path::Path) {
    let Some(driver) = chrome::driver(work) else {
        return;
    };
    let db = work.join("receiver/reports.sqlite");
    let fleet = imrs_build::home::store::fleet(&db, 0).unwrap();
    assert_eq!(fleet.devices.len(), 1, "one box in the lab");
    let device = fleet.devices[0].device.clone();
    let port = chrome::free_port();
    let pages = Pages(
        bin()
            .args(["home", "serve", "--open-enrolment", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--db")
            .arg(&db)
            .arg("--tls-cert")
            .arg(work.join("receiver.pem"))
            .arg("--tls-key")
            .arg(work.join("receiver.key"))
            .arg("--operator-token")
            .arg(work.join("operator-token"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn home serve"),
    );
    chrome::wait_listening(port, "home serve", 30);
    let token = std::fs::read_to_string(work.join("operator-token")).unwrap();
    let base = format!("https://127.0.0.1:{port}");
    let shot = chrome::runtime().block_on(async {
        let c = driver.session(work).await;
        c.goto(&format!("{base}/fleet")).await.unwrap();
        assert_eq!(c.title().await.unwrap(), "IMRS fleet: sign in");
        chrome::sign_in(&c, token.trim()).await;
        assert_eq!(c.title().await.unwrap(), "IMRS fleet");
        let rows = c.find_all(Locator::Css("#fleet tbody tr")).await.unwrap();
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        assert_eq!(row.attr("data-device").await.unwrap(), Some(device.clone()));
        assert_eq!(row.attr("class").await.unwrap().as_deref(), Some("live"));
        let zone = row.find(Locator::Css("td.zone")).await.unwrap();
        assert_eq!(zone.text().await.unwrap(), "2026073102");
        let png = c.screenshot().await.unwrap();
        c.find(Locator::Css(&format!("a[href=\"/fleet/device/{device}\"]")))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        assert_eq!(chrome::text_of(&c, "state").await, "live");
        let timeline = c
            .find(Locator::Id("timeline"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(timeline.contains("install-passed"), "{timeline}");
        let sent = c
            .find_all(Locator::Css("#notices tbody tr.notice-sent"))
            .await
            .unwrap();
        assert_eq!(sent.len(), 2, "the webhook notice and the one e-mail, sent");
        c.close().await.unwrap();
        png
    });
    chrome::save_artefact("lab-fleet-page.png", &shot);
    drop(pages);
}

/// Fleet commands end to end: a signed `drain` queued at the receiver reaches the box with the
/// answer to a heartbeat, the router loses the specifics within 2 s of the pickup while the box
/// still answers, `undrain` brings them back, and both results come back done.
#[test]
fn remote_drain_and_undrain_through_the_receiver() {
    let Some(v) = lab("remote-drain") else { return };
    assert_passed("remote-drain", &v);
    assert_serving(&v);
    let checks = v["checks"].as_array().expect("checks");
    for what in [
        "the router lost the specifics within 2 s of the pickup",
        "the box reported both commands done",
        "an expired command is refused, saying it expired",
        "drain's signed text handed out again is refused as a replay, once",
    ] {
        assert!(
            checks.iter().any(|c| c["what"] == what && c["ok"] == true),
            "{what}: {}",
            pretty(&v)
        );
    }
}

/// RSSAC002 end to end (issue 16): the guest's clock starts shortly before midnight UTC, the
/// lab's queries are counted by the box from NSD's dnstap, the day's telemetry report reaches
/// the receiver after midnight, and `fleet rssac002` writes the documents with exactly that
/// traffic.
#[test]
fn telemetry_report_becomes_rssac002_documents() {
    let Some(v) = lab("telemetry") else { return };
    assert_passed("telemetry", &v);
    let checks = v["checks"].as_array().expect("checks");
    for what in [
        "the telemetry command sent the day so far: its result is done",
        "one device's telemetry report for the day that ended arrived, marked complete",
        "the report counts exactly the lab's TCP, UDP-over-IPv6 and NXDOMAIN traffic",
        "the RSSAC002 documents (fleet and device) say what the report counted",
    ] {
        assert!(
            checks.iter().any(|c| c["what"] == what && c["ok"] == true),
            "{what}: {}",
            pretty(&v)
        );
    }
}

/// An NTS site (issue #15's decision: authenticated time for the DNSSEC clock): the lab's NTS
/// server (chronyd with this run's certificate for nts.lab.test, an hour ahead of the guest's
/// RTC) sets the box's clock in the clock stage, through the image's chronyd under its own
/// account and system call filter, the name from the `/etc/hosts` the init wrote, the CA from
/// the signed site; then the normal pass, and the clock set again while it serves
/// (`imrs.clock_resync=20`).
#[test]
fn an_nts_site_sets_the_clock_through_nts_then_serves() {
    let Some(v) = lab("nts") else { return };
    assert_passed("nts", &v);
    assert_serving(&v);
    assert_eq!(v["report_event"], "install-passed");
    assert_checks_passed(
        &v,
        &[
            "the clock stage asked the lab's NTS server",
            "NTS moved the guest's clock by the hour the server is ahead",
            "NTS set the clock again while the box served",
        ],
    );
}

/// The normal pass with the appliance disk booted as on Calypso and Pandora: OVMF, systemd-boot,
/// slot A (blessed on the disk: nothing to bless once healthy).
#[test]
fn normal_first_boot_from_the_appliance_disk() {
    let Some(v) = lab_with("normal", RouterKind::Frr, "disk") else {
        return;
    };
    assert_passed("normal (disk)", &v);
    assert_serving(&v);
    assert_eq!(v["report_event"], "install-passed");
}

/// After a normal pass from slot A, the image is written into slot B with a boot counter (as
/// `imrs-build update` does); systemd-boot tries B, the box serves from it, and the init
/// blesses B on the disk once healthy.
#[test]
fn an_update_into_slot_b_serves_and_is_blessed() {
    let Some(v) = lab_with("update", RouterKind::Frr, "disk") else {
        return;
    };
    assert_passed("update", &v);
    assert_eq!(
        v["boots"].as_array().map(Vec::len),
        Some(2),
        "{}",
        pretty(&v)
    );
}

/// A signed `update` through the receiver (must-show of the fleet issue): once heartbeats
/// arrive a second image is published and the command queued; the box picks it up within a
/// heartbeat, downloads and verifies it, writes slot B, reboots into it, serves, blesses it,
/// reports the command done, and its heartbeats name slot B and the new manifest. Then a
/// signed `rollback`: slot A written again, tried, blessed, done, heartbeats name A.
#[test]
fn remote_update_through_the_receiver() {
    let Some(v) = lab_with("remote-update", RouterKind::Frr, "disk") else {
        return;
    };
    assert_passed("remote-update", &v);
    assert_eq!(
        v["boots"].as_array().map(Vec::len),
        Some(3),
        "{}",
        pretty(&v)
    );
    let checks = v["checks"].as_array().expect("checks");
    for what in [
        "boot 1: update picked up with the answer to a report, within a heartbeat period",
        "the update's result: done, running from slot B",
        "heartbeats after the update name slot B and its image's manifest",
        "boot 2: rollback picked up with the answer to a report, within a heartbeat period",
        "the rollback's result: done, running from slot A",
        "heartbeats after the rollback name slot A and its image's manifest",
    ] {
        assert!(
            checks.iter().any(|c| c["what"] == what && c["ok"] == true),
            "{what}: {}",
            pretty(&v)
        );
    }
}

/// Slot B holds an image that cannot become healthy (its pipeline ends before BGP): systemd-boot
/// tries it once, the init gives the boot up without blessing it, the box comes back on slot A,
/// serves, and a `slot-changed` report says B fell back and why.
#[test]
fn a_slot_that_never_becomes_healthy_falls_back_to_a() {
    let Some(v) = lab_with("rollback", RouterKind::Frr, "disk") else {
        return;
    };
    assert_passed("rollback", &v);
    assert_eq!(
        v["boots"].as_array().map(Vec::len),
        Some(3),
        "{}",
        pretty(&v)
    );
    let changed = v["reports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["event"] == "slot-changed")
        .unwrap_or_else(|| panic!("no slot-changed report: {}", pretty(&v)));
    let why = changed["fallback"].as_str().unwrap();
    assert!(
        why.contains("slot b") && why.contains("without reaching bgp"),
        "{why}"
    );
}

/// An update into slot B loses power half-way while the box runs from A: B gets no entry, and
/// the next boot is slot A again, serving.
#[test]
fn a_power_cut_during_an_update_leaves_slot_a_booting() {
    let Some(v) = lab_with("power-cut-update", RouterKind::Frr, "disk") else {
        return;
    };
    assert_passed("power-cut-update", &v);
    assert_eq!(
        v["boots"].as_array().map(Vec::len),
        Some(2),
        "{}",
        pretty(&v)
    );
}

/// The normal pass against a second, independent BGP implementation: GoBGP learns the five
/// prefixes from AS 20144 over both sessions.
#[test]
fn normal_first_boot_against_gobgp() {
    let Some(v) = lab_with("normal", RouterKind::Gobgp, "kernel") else {
        return;
    };
    assert_passed("normal (gobgp)", &v);
    assert_serving(&v);
    let mut held: Vec<&str> = v["routes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["origin_as"] == 20144 && r["valid"] == true && r["best"] == true)
        .map(|r| r["prefix"].as_str().unwrap())
        .collect();
    held.sort();
    assert_eq!(
        held,
        [
            "199.7.82.0/23",
            "199.7.83.0/24",
            "2001:500:3::/48",
            "2001:500:9e::/47",
            "2001:500:9f::/48"
        ],
        "{}",
        pretty(&v)
    );
    let sessions = v["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2, "{}", pretty(&v));
    assert!(
        sessions.iter().all(|s| s["state"] == "established"),
        "{}",
        pretty(&v)
    );
    assert_eq!(v["report_event"], "install-passed");
}

#[test]
fn tampered_zone_is_refused_reported_then_the_good_one_serves() {
    let Some(v) = lab("tampered-zone") else {
        return;
    };
    assert_passed("tampered-zone", &v);
    // The first install report is the refusal; the box tried again and passed on the good zone.
    assert_eq!(v["report_event"], "install-failed");
    assert_eq!(v["report_failed_stage"], "zone");
    assert!(v["tampered"].is_string());
    let installs: Vec<&str> = v["reports"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["event"].as_str())
        .filter(|e| e.starts_with("install-"))
        .collect();
    assert_eq!(
        installs,
        ["install-failed", "install-passed"],
        "{}",
        pretty(&v)
    );
    let zone = v["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "zone")
        .unwrap();
    assert_eq!(zone["status"], "passed", "{}", pretty(&v));
    assert!(
        zone["failed_attempts"].as_array().map_or(0, Vec::len) >= 2,
        "{}",
        pretty(&v)
    );
    assert_serving(&v);
    // The host was told both, in order, and the operators see the box live.
    assert_checks_passed(
        &v,
        &[
            "boot 1: the host's webhook got one signed notice per report (install-failed then install-passed) that verifies",
            "boot 1: the host's mailbox got one e-mail per address and report (install-failed then install-passed) with the signed notice attached, verified",
            "boot 1: the operators' pages show the device live on serial 2026073102",
        ],
    );
}

#[test]
fn late_transfer_server_is_waited_for() {
    let Some(v) = lab("xfr-down") else { return };
    assert_passed("xfr-down", &v);
    assert_serving(&v);
}

#[test]
fn late_receiver_gets_the_report() {
    let Some(v) = lab("receiver-down") else {
        return;
    };
    assert_passed("receiver-down", &v);
    assert_eq!(v["report_event"], "install-passed");
}

#[test]
fn power_cut_during_zone_resumes() {
    let Some(v) = lab("power-cut") else { return };
    assert_passed("power-cut", &v);
    assert_eq!(v["boots"].as_array().unwrap().len(), 2);
    assert_eq!(v["boots"][0]["killed_at"], "zone");
    assert_checks_passed(
        &v,
        &[
            "boot 1: BIRD ran in parallel with the zone stage when the power went",
            "boot 2: BIRD started again in parallel after the network stage",
        ],
    );
    let installs = v["reports"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["event"].as_str().unwrap_or("").starts_with("install-"))
        .count();
    assert_eq!(installs, 1, "{}", pretty(&v));
    assert_serving(&v);
}

#[test]
fn second_boot_serves_without_a_new_install_report() {
    let Some(v) = lab("second-boot") else {
        return;
    };
    assert_passed("second-boot", &v);
    assert!(v["second_boot_to_serving_s"].as_f64().is_some());
    assert_serving(&v);
}

/// The command refuses an image folder without its key, and a key that is not the image's,
/// before starting anything.
#[test]
fn image_folder_needs_its_own_key() {
    if !prerequisites(RouterKind::Frr) {
        return;
    }
    let Some((image, _)) = image() else { return };
    let o = run(bin().arg("lab").arg(&image));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("needs --key"), "{}", text(&o));
    let tmp = tempfile::tempdir().unwrap();
    let other = keygen(tmp.path(), "other");
    let o = run(bin()
        .arg("lab")
        .arg(&image)
        .arg("--key")
        .arg(&other)
        .arg("--keep")
        .arg(tmp.path().join("work")));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("is not the site-signing key"),
        "{}",
        text(&o)
    );
}
