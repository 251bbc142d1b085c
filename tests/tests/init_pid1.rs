//! The real `imrs-init` binary as PID 1 of its own PID and mount namespaces
//! (`unshare --pid --net --fork --mount-proc --kill-child`), against a fixture root.
//!
//! Hooks used (documented in `init/src/cmdline.rs`): `IMRS_INIT_CMDLINE` instead of
//! `/proc/cmdline`, `imrs.root=` (fixture tree: image.json, signing key, signed site config,
//! sysfs/procfs files for the qemu profile), `imrs.state=`, `imrs.supervise=`, `imrs.hold=`,
//! `imrs.grace=`, `imrs.poweroff_after_boot=1`.
//!
//! Needs root (PID namespaces, mounting /proc). Without root the tests say why and skip; with
//! `CI=true` a missing prerequisite fails. The binary is built with `cargo build -p imrs-init`
//! into the same target directory as this test (a no-op when it is up to date), unless
//! `IMRS_INIT_BIN` names one to test instead (e.g. the static release build for the image).

use imrs_tests::appliance;
use std::path::Path;
use std::time::{Duration, Instant};

use appliance::{Init, Proc, fixture, namespace_of, prerequisites, script};

fn vm_rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

fn state_json(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("state.json")).unwrap()).unwrap()
}

fn stage_status(state: &serde_json::Value, stage: &str) -> String {
    state["stages"][stage]["status"]
        .as_str()
        .unwrap_or("absent")
        .to_string()
}

#[test]
fn orphans_are_reaped_and_sigterm_terms_then_kills_then_syncs_state() {
    if !prerequisites() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (root, state) = (d.path().join("root"), d.path().join("state"));
    fixture(&root);
    let marker = d.path().join("got-term");
    // Orphans: each `( sleep & )` leaves a sleep whose parent is gone -> reparented to PID 1.
    // Then the daemon ignores SIGTERM (recording it) so the init must SIGKILL it.
    let daemon = script(
        &d.path().join("orphan-maker"),
        &format!(
            "trap 'echo TERM >> {m}' TERM\nfor i in 1 2 3 4 5; do (sleep 0.2 &); done\n\
             echo orphans made\nwhile :; do sleep 0.1; done",
            m = marker.display()
        ),
    );
    let mut init = Init::start(
        &root,
        &state,
        &format!("imrs.supervise={} imrs.grace=1", daemon.display()),
    );
    init.wait_for("boot summary", Duration::from_secs(20));
    init.wait_for("orphan-maker: orphans made", Duration::from_secs(10));
    // The first line is the banner.
    assert_eq!(
        init.console()[0],
        "imrs-init: imrs-init 0.1.0: imrs-test 0.0.1 (nsd, profile qemu, kernel 6.1.0-test)"
    );
    for line in [
        "platform    PASSED",
        "site        PASSED",
        "hardware    PASSED",
        "network     FAILED",
    ] {
        assert_eq!(init.count(line), 1, "summary line {line:?}");
    }
    // Orphans exited after 0.2 s; the init must have reaped all five, leaving no zombie.
    let pid = init.init_pid();
    let deadline = Instant::now() + Duration::from_secs(5);
    while init.count("reaped orphan pid") < 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(init.count("reaped orphan pid") >= 5, "orphans not reaped");
    std::thread::sleep(Duration::from_millis(300));
    let zombies: Vec<Proc> = namespace_of(pid)
        .into_iter()
        .filter(|p| p.state == 'Z')
        .collect();
    assert!(zombies.is_empty(), "zombies left: {zombies:?}");
    // Measured, not asserted (a debug build here; BENCHMARKS.md has the image's figure).
    let rss = vm_rss_kib(pid);
    eprintln!("init VmRSS {rss} KiB");

    let t = Instant::now();
    init.signal(libc::SIGTERM);
    let status = init.wait(Duration::from_secs(15));
    // SIGTERM means reboot; outside the machine role that is exit status 2, never reboot(2).
    assert_eq!(status.code(), Some(2), "{status:?}");
    assert!(
        t.elapsed() >= Duration::from_secs(1),
        "no grace period before SIGKILL"
    );
    assert_eq!(init.count("SIGTERM received"), 1);
    assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), "TERM");
    assert_eq!(
        init.count("orphan-maker ignored SIGTERM for 1.0 s: SIGKILL"),
        1
    );
    let s = state_json(&state);
    assert_eq!(s["last_shutdown"]["how"], "reboot");
    assert_eq!(s["boots"], 1);
    assert_eq!(init.count("did not die"), 0);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the init is still there"
    );
    eprintln!("took {:?}", init.started.elapsed());
}

#[test]
fn crashing_daemon_backs_off_and_does_not_flood_the_log() {
    if !prerequisites() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (root, state) = (d.path().join("root"), d.path().join("state"));
    fixture(&root);
    let starts = d.path().join("starts");
    let daemon = script(
        &d.path().join("crasher"),
        &format!(
            "echo start >> {s}\ni=0\nwhile [ $i -lt 300 ]; do echo \"noise $i\"; i=$((i+1)); done\nexit 1",
            s = starts.display()
        ),
    );
    let mut init = Init::start(
        &root,
        &state,
        &format!("imrs.supervise={}", daemon.display()),
    );
    // Restarts after 1 s, 2 s, 4 s: the fourth start comes about 7 s after the first.
    init.wait_for("crasher ended (exit code 1)", Duration::from_secs(20));
    init.wait_for("restart 3 in 4.0 s", Duration::from_secs(20));
    let console = init.console();
    let delays: Vec<&str> = console
        .iter()
        .filter_map(|l| {
            l.split(" in ")
                .nth(1)
                .filter(|_| l.contains("crasher ended"))
        })
        .collect();
    assert_eq!(delays, ["1.0 s", "2.0 s", "4.0 s"], "{console:#?}");
    let started = std::fs::read_to_string(&starts).unwrap().lines().count();
    assert!(started >= 3, "{started} starts");
    let printed = started * 300;
    let logged = init.count("crasher: noise");
    assert!(
        logged <= 50 + 10 * 8 && logged * 3 < printed,
        "{logged} of {printed} output lines reached the console"
    );
    assert!(init.count("output lines dropped (rate limit)") >= 1);
    init.signal(libc::SIGUSR2);
    let status = init.wait(Duration::from_secs(15));
    assert_eq!(
        status.code(),
        Some(0),
        "SIGUSR2 = poweroff = exit 0: {status:?}"
    );
    assert_eq!(state_json(&state)["last_shutdown"]["how"], "poweroff");
}

#[test]
fn killed_mid_boot_resumes_and_a_passed_first_boot_is_not_repeated() {
    if !prerequisites() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (root, state) = (d.path().join("root"), d.path().join("state"));
    fixture(&root);

    // 1. Killed before hardware: platform and site passed, hardware never ran.
    let mut init = Init::start(&root, &state, "imrs.hold=hardware");
    init.wait_for("holding before stage hardware", Duration::from_secs(20));
    init.signal(libc::SIGKILL);
    init.wait(Duration::from_secs(10));
    let s = state_json(&state);
    assert_eq!(stage_status(&s, "site"), "passed");
    assert_eq!(stage_status(&s, "hardware"), "absent");

    // 2. Started again: resumes, hardware runs and passes; killed before network.
    let mut init = Init::start(&root, &state, "imrs.hold=network");
    init.wait_for("holding before stage network", Duration::from_secs(20));
    assert_eq!(init.count("hardware matches profile qemu"), 1);
    init.signal(libc::SIGKILL);
    init.wait(Duration::from_secs(10));
    let s = state_json(&state);
    assert_eq!(s["boots"], 2);
    assert_eq!(stage_status(&s, "hardware"), "passed");
    assert!(
        s.get("last_shutdown").is_none(),
        "a kill is not an orderly shutdown"
    );

    // 3. The machine now fails acceptance (NIC gone): hardware passed already, not repeated.
    std::fs::remove_dir_all(root.join("sys/class/net/eth0")).unwrap();
    let mut init = Init::start(&root, &state, "imrs.poweroff_after_boot=1");
    let status = init.wait(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        init.count("hardware    DONE EARLIER"),
        1,
        "{:#?}",
        init.console()
    );
    assert_eq!(
        init.count("platform    PASSED"),
        1,
        "boot-time stages run every boot"
    );
    assert_eq!(init.count("network     FAILED"), 1);
    let s = state_json(&state);
    assert_eq!(s["boots"], 3);
    assert_eq!(s["stages"]["hardware"]["boot"], 2);

    // 4. A corrupt state file is unknown, with a warning: hardware runs again and fails.
    std::fs::write(state.join("state.json"), b"{\"version\": 1, \"sta").unwrap();
    let mut init = Init::start(&root, &state, "imrs.poweroff_after_boot=1");
    init.wait(Duration::from_secs(20));
    assert_eq!(init.count("corrupt"), 1);
    assert_eq!(init.count("hardware    FAILED"), 1, "{:#?}", init.console());
    assert_eq!(init.count("network     not reached"), 1);
    assert_eq!(stage_status(&state_json(&state), "hardware"), "failed");

    // 5. A passed first boot: later boots run only boot-time stages.
    let mut s = state_json(&state);
    for stage in ["hardware", "phone-home"] {
        s["stages"][stage] = serde_json::json!({"status": "passed", "seconds": 0.1, "boot": 1});
    }
    s["first_boot_passed"] = serde_json::json!(true);
    std::fs::write(state.join("state.json"), serde_json::to_vec(&s).unwrap()).unwrap();
    let mut init = Init::start(&root, &state, "imrs.poweroff_after_boot=1");
    init.wait(Duration::from_secs(20));
    assert_eq!(init.count("first boot passed earlier"), 1);
    assert_eq!(init.count("hardware    DONE EARLIER"), 1);
}
