//! Writes the DNS daemon config that `imrs-init` generates (the init's own `dns` module,
//! `imrs_init::dns`) for a given zone, run folder and loopback port, and prints the daemon's
//! command line: `bench/dns-qps.sh` runs NSD and Knot exactly as the appliance would, beside
//! the same daemons on their default configuration.
//!
//! Usage: `dnsconf nsd|knot ZONE RUN_DIR PORT [DNSTAP_SOCKET]` (listens on 127.0.0.1 and ::1;
//! workers and buffers sized from this machine's /proc like the appliance's; dnstap to the
//! RSSAC002 collector's socket when given).

use imrs_init::dns;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use imrs_config::recipe::DnsImpl;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (daemon, zone, run, port, dnstap) = match &args[..] {
        [_, d, z, r, p] => (d, z, r, p, None),
        [_, d, z, r, p, t] => (d, z, r, p, Some(t)),
        _ => {
            eprintln!("usage: dnsconf nsd|knot ZONE RUN_DIR PORT [DNSTAP_SOCKET]");
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
    c.listen = vec![
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ];
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
