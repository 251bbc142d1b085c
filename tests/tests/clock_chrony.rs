//! chronyd as the appliance's clock stage runs it as the machine's init (`imrs_init::clock::plan`
//! with the `_chrony` account: `-u _chrony -F 1`, under `no_new_privs` as the init's children
//! run) against a real NTP server (chronyd serving in a second namespace): the privilege drop
//! and chrony's own system call filter must let it finish. The lab cannot show this (its guest
//! clock is pinned inside the test zone's signature window, so it trusts the RTC), and every
//! real site sets its clock this way.
//!
//! Query-only (`-Q` for the plan's `-q`): network namespaces share the host's
//! `CLOCK_REALTIME`, and a test must not step the machine's clock. `-q` differs only in keeping
//! `CAP_SYS_TIME` and calling `adjtimex`, which chrony's filter allows.

use std::net::IpAddr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;

use imrs_config::accounts::Account;
use imrs_config::site::Ntp;
use imrs_init::clock::{self, Plan};
use imrs_tests::netns::{NetNs, host_account, nets, require, veth};

const CHRONYD: &str = "/usr/sbin/chronyd";

#[test]
fn chronyd_under_its_account_and_filter_reads_a_real_server() {
    if !require("clock_chrony", true, &[CHRONYD, "/usr/bin/ip"]) {
        return;
    }
    let (uid, gid) = host_account("_chrony").expect("the chrony package creates _chrony");
    let server_ns = NetNs::create("ntps").unwrap();
    let client_ns = NetNs::create("ntpc").unwrap();
    veth(&server_ns, "eth0", &client_ns, "eth0").unwrap();
    server_ns.addr("eth0", &nets(&["192.0.2.123/24"])).unwrap();
    client_ns.addr("eth0", &nets(&["192.0.2.10/24"])).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();

    // The server: the host's clock at stratum 1, not touching it (-x).
    let conf = dir.path().join("server.conf");
    std::fs::write(
        &conf,
        format!(
            "local stratum 1\nallow all\nbindaddress 192.0.2.123\ncmdport 0\npidfile {}\n",
            dir.path().join("server.pid").display()
        ),
    )
    .unwrap();
    let mut server_cmd = server_ns.command(CHRONYD);
    server_cmd.args(["-d", "-x", "-u", "root", "-f"]).arg(&conf);
    let _server = imrs_tests::daemons::Daemon::spawn(
        "ntp server",
        &mut server_cmd,
        &dir.path().join("server.log"),
    )
    .unwrap();

    // The client as the init plans it for the machine, with this host's _chrony ids.
    let run = dir.path().join("chrony");
    std::fs::create_dir(&run).unwrap();
    std::os::unix::fs::chown(&run, Some(uid), Some(gid)).unwrap();
    let account = Account {
        name: "_chrony",
        id: uid,
        home: "/nonexistent",
        what: "chrony",
    };
    let ntp = Ntp {
        servers: vec!["192.0.2.123".parse::<IpAddr>().unwrap()],
        trust_rtc: false,
    };
    let now = 1_800_000_000;
    let Plan::Ntp { program, mut args } = clock::plan(
        now,
        now - 10,
        &ntp,
        Some(Path::new(CHRONYD)),
        &run,
        Some(account),
    ) else {
        panic!("expected an NTP plan");
    };
    assert_eq!(args[..5], ["-q", "-u", "_chrony", "-F", "1"]);
    args[0] = "-Q".into();
    // Like the supervisor's children: no_new_privs before exec.
    let mut client = client_ns.command(&program);
    client.args(&args);
    // SAFETY: one prctl call between fork and exec.
    unsafe {
        client.pre_exec(|| {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let started = std::time::Instant::now();
    let out = client.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "chronyd -Q failed ({}):\n{text}",
        out.status
    );
    assert!(text.contains("Loaded seccomp filter (level 1)"), "{text}");
    assert!(
        text.contains("System clock wrong by"),
        "no answer measured:\n{text}"
    );
    assert!(started.elapsed() < Duration::from_secs(15), "{text}");
}
