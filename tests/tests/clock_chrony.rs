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
//!
//! An NTS site (`ntp.nts`) is read the same way from a real NTS server (chronyd with a
//! certificate from a test CA), the client's `/etc/hosts` replaced in a mount namespace by the
//! one the init writes on the machine: the clock is read through NTS with the site's CA only,
//! and another CA or another name sets nothing and says why.

use std::net::IpAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use imrs_build::host::nts::{Nts, NtsConfig};
use imrs_config::accounts::Account;
use imrs_config::site::{NTS_KE_PORT, Ntp, NtsServer};
use imrs_init::clock::{self, Plan};
use imrs_tests::netns::{NetNs, host_account, nets, require, veth};

const CHRONYD: &str = "/usr/sbin/chronyd";

/// A server namespace (192.0.2.123) and a client one (192.0.2.10) over a veth pair, a folder
/// chronyd's account can read, chronyd's own folder in it (`chrony`, the account's), and this
/// host's `_chrony` as that account (its ids differ from the image's fixed ones).
struct Setup {
    server_ns: NetNs,
    client_ns: NetNs,
    dir: tempfile::TempDir,
    run: PathBuf,
    account: Account,
}

/// `None` (the test skips, or fails under CI) without root, chronyd or `ip`.
fn setup(tag: &str) -> Option<Setup> {
    if !require("clock_chrony", true, &[CHRONYD, "/usr/bin/ip"]) {
        return None;
    }
    let (uid, gid) = host_account("_chrony").expect("the chrony package creates _chrony");
    let server_ns = NetNs::create(&format!("{tag}s")).unwrap();
    let client_ns = NetNs::create(&format!("{tag}c")).unwrap();
    veth(&server_ns, "eth0", &client_ns, "eth0").unwrap();
    server_ns.addr("eth0", &nets(&["192.0.2.123/24"])).unwrap();
    client_ns.addr("eth0", &nets(&["192.0.2.10/24"])).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let run = dir.path().join("chrony");
    std::fs::create_dir(&run).unwrap();
    std::os::unix::fs::chown(&run, Some(uid), Some(gid)).unwrap();
    let account = Account {
        name: "_chrony",
        id: uid,
        home: "/nonexistent",
        what: "chrony",
    };
    Some(Setup {
        server_ns,
        client_ns,
        dir,
        run,
        account,
    })
}

#[test]
fn chronyd_under_its_account_and_filter_reads_a_real_server() {
    let Some(Setup {
        server_ns,
        client_ns,
        dir,
        run,
        account,
    }) = setup("ntp")
    else {
        return;
    };

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
    let ntp = Ntp {
        servers: vec!["192.0.2.123".parse::<IpAddr>().unwrap()],
        ..Ntp::default()
    };
    let now = 1_800_000_000;
    let Plan::Ntp {
        program, mut args, ..
    } = clock::plan(
        now,
        now - 10,
        &ntp,
        Some(Path::new(CHRONYD)),
        &run,
        Some(account),
    )
    else {
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

/// A CA and a server certificate for `names`, signed by it: (CA PEM, cert PEM, key PEM).
fn pki(ca_name: &str, names: &[&str]) -> (String, String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, ca_name);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let cert = CertificateParams::new(names)
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

/// Runs `program args` in `ns` as the init's children run (`no_new_privs`), with `hosts` over
/// `/etc/hosts` in a mount namespace of its own; returns whether it exited 0 and its output.
fn run_with_hosts(ns: &NetNs, program: &Path, args: &[String], hosts: &Path) -> (bool, String) {
    let mut cmd = ns.command(program);
    cmd.args(args);
    let hosts = std::ffi::CString::new(hosts.as_os_str().as_encoded_bytes()).unwrap();
    let target = c"/etc/hosts";
    let root = c"/";
    // SAFETY: async-signal-safe calls only (unshare, mount, prctl) between fork and exec,
    // on C strings made before the fork. `ip netns exec` then copies this mount namespace.
    unsafe {
        cmd.pre_exec(move || {
            let no_string: *const libc::c_char = std::ptr::null();
            if libc::unshare(libc::CLONE_NEWNS) != 0
                || libc::mount(
                    no_string,
                    root.as_ptr(),
                    no_string,
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
                || libc::mount(
                    hosts.as_ptr(),
                    target.as_ptr(),
                    no_string,
                    libc::MS_BIND,
                    std::ptr::null(),
                ) != 0
                || libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn chronyd_reads_an_nts_server_only_through_the_sites_ca_and_name() {
    let Some(Setup {
        server_ns,
        client_ns,
        dir,
        run,
        account,
    }) = setup("nts")
    else {
        return;
    };
    let d = dir.path();

    // The NTS server: a certificate for nts.lab.test from the site's CA.
    let (site_ca, cert, key) = pki("site NTS CA", &["nts.lab.test"]);
    let (other_ca, _, _) = pki("another CA", &["nts.lab.test"]);
    std::fs::write(d.join("server.pem"), cert).unwrap();
    std::fs::write(d.join("server.key"), key).unwrap();
    let _server = Nts::start(
        &server_ns,
        &d.join("server"),
        &NtsConfig {
            cert: d.join("server.pem"),
            key: d.join("server.key"),
            port: NTS_KE_PORT,
            time: None,
        },
    )
    .unwrap();

    let now = 1_800_000_000;
    // The client as the init plans it: the files it writes, then chronyd; `-Q`, and `-t` as
    // given (at most `limit` seconds for the runs that must fail).
    let client = |name: &str, ca: &str, limit: Option<u64>| -> (bool, String) {
        let ntp = Ntp {
            nts: vec![NtsServer {
                name: name.into(),
                address: "192.0.2.123".parse().unwrap(),
                port: NTS_KE_PORT,
            }],
            nts_ca_pem: ca.into(),
            ..Ntp::default()
        };
        let Plan::Ntp {
            program,
            mut args,
            nts: Some(files),
        } = clock::plan(
            now,
            now - 10,
            &ntp,
            Some(Path::new(CHRONYD)),
            &run,
            Some(account),
        )
        else {
            panic!("expected an NTS plan");
        };
        assert_eq!(args[0], "-q");
        args[0] = "-Q".into();
        if let Some(limit) = limit {
            let t = args.iter().position(|a| a == "-t").unwrap();
            args[t + 1] = limit.to_string();
        }
        std::fs::write(&files.ca_path, &files.ca_pem).unwrap();
        let hosts = d.join("hosts");
        // The address the site names, also for a name the server's certificate lacks.
        std::fs::write(&hosts, &files.hosts).unwrap();
        run_with_hosts(&client_ns, &program, &args, &hosts)
    };

    let started = std::time::Instant::now();
    let (ok, text) = client("nts.lab.test", &site_ca, None);
    assert!(ok, "chronyd -Q over NTS failed:\n{text}");
    assert!(text.contains("Loaded seccomp filter (level 1)"), "{text}");
    assert!(
        text.contains("System clock wrong by"),
        "no answer measured:\n{text}"
    );
    assert!(!text.contains("TLS"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(20), "{text}");

    // Another CA: the handshake fails, nothing is measured.
    let (ok, text) = client("nts.lab.test", &other_ca, Some(5));
    assert!(!ok, "a server from another CA set the clock:\n{text}");
    assert!(
        text.contains("TLS handshake with 192.0.2.123:4460 (nts.lab.test) failed")
            && text.contains("issuer is unknown"),
        "{text}"
    );
    assert!(!text.contains("System clock wrong by"), "{text}");

    // The site's CA but a name the certificate does not carry (at the same address).
    let (ok, text) = client("time.lab.test", &site_ca, Some(5));
    assert!(!ok, "a certificate for another name set the clock:\n{text}");
    assert!(
        text.contains("TLS handshake with 192.0.2.123:4460 (time.lab.test) failed"),
        "{text}"
    );
    assert!(!text.contains("System clock wrong by"), "{text}");
}
