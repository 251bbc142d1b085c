//! Writes the DNS daemon config that `imrs-init` generates (the init's own `dns` module,
//! `imrs_init::dns`) for a given zone, run folder and loopback port, and prints the daemon's
//! command line: `bench/dns-qps.sh` runs NSD and Knot exactly as the appliance would, beside
//! the same daemons on their default configuration.
//!
//! Usage: `dnsconf [--listen ADDR,...] [--account NAME] [--chroot] nsd|knot ZONE RUN_DIR PORT
//! [DNSTAP_SOCKET]` (listens on 127.0.0.1 and ::1 unless `--listen`; workers and buffers sized
//! from this machine's /proc like the appliance's; dnstap to the RSSAC002 collector's socket
//! when given). `--account` (this host's account of that name, from /etc/passwd) and
//! `--chroot` (NSD; ZONE must be inside RUN_DIR) configure the privilege drop the appliance
//! runs with (`bench/hardening-qps.sh`).

use imrs_init::dns;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use imrs_config::recipe::DnsImpl;

fn main() {
    let mut args: Vec<String> = std::env::args().collect();
    let mut listen = vec![
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ];
    let mut account = None;
    let mut chroot = false;
    while args.len() > 1 && args[1].starts_with("--") {
        let flag = args.remove(1);
        match flag.as_str() {
            "--chroot" => chroot = true,
            "--listen" | "--account" if args.len() > 1 => {
                let value = args.remove(1);
                if flag == "--listen" {
                    listen = value
                        .split(',')
                        .map(|a| {
                            a.parse().unwrap_or_else(|_| {
                                eprintln!("dnsconf: --listen {a:?} is not an address");
                                std::process::exit(2)
                            })
                        })
                        .collect();
                } else {
                    let Some((uid, _gid)) = imrs_tests::netns::host_account(&value) else {
                        eprintln!("dnsconf: no account {value:?} in /etc/passwd");
                        std::process::exit(2)
                    };
                    // The daemon looks its account up by name; the init gives it `var/` by id.
                    account = Some(imrs_config::accounts::Account {
                        name: Box::leak(value.into_boxed_str()),
                        id: uid,
                        home: "/nonexistent",
                        what: "bench",
                    });
                }
            }
            other => {
                eprintln!("dnsconf: unknown or incomplete option {other:?}");
                std::process::exit(2);
            }
        }
    }
    let (daemon, zone, run, port, dnstap) = match &args[..] {
        [_, d, z, r, p] => (d, z, r, p, None),
        [_, d, z, r, p, t] => (d, z, r, p, Some(t)),
        _ => {
            eprintln!(
                "usage: dnsconf [--listen ADDR,...] [--account NAME] [--chroot] nsd|knot ZONE \
                 RUN_DIR PORT [DNSTAP_SOCKET]"
            );
            std::process::exit(2);
        }
    };
    let implementation = match daemon.as_str() {
        "nsd" => DnsImpl::Nsd,
        "knot" => DnsImpl::Knot,
        other => {
            eprintln!("dnsconf: unknown daemon {other:?} (nsd or knot)");
            std::process::exit(2);
        }
    };
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let site = imrs_config::site::load(&repo.join("images/sites/lab.toml")).unwrap_or_else(|e| {
        eprintln!("dnsconf: {}", imrs_config::error_chain(&e));
        std::process::exit(1)
    });
    let mut c = dns::DnsConfig::for_site(
        implementation,
        &site,
        &dns::Hardware::detect(Path::new("/proc")),
        zone,
        run,
    );
    c.listen = listen;
    c.account = account;
    c.chroot = chroot;
    c.port = port.parse().unwrap_or_else(|_| {
        eprintln!("dnsconf: port {port:?} is not a number");
        std::process::exit(2)
    });
    c.dnstap = dnstap.map(std::path::PathBuf::from);
    if let Err(e) = c.write() {
        eprintln!("dnsconf: {}", imrs_config::error_chain(&e));
        std::process::exit(1);
    }
    let (program, args) = c.command();
    println!("{} {}", program.display(), args.join(" "));
}
