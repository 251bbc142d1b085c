//! Prints the packet filter `imrs-init` loads (the init's own `net::filter`) for given
//! addresses, so `bench/hardening-qps.sh` measures the appliance's exact ruleset.
//!
//! Usage: `filterconf SERVICE_ADDRS DNS_ADDRS NEIGHBOURS` (each a comma-separated address list:
//! the service addresses, every address answering DNS, the BGP neighbours).

use std::net::IpAddr;

use imrs_init::net::filter::FilterPlan;

fn list(s: &str) -> Vec<IpAddr> {
    s.split(',')
        .filter(|a| !a.is_empty())
        .map(|a| {
            a.parse().unwrap_or_else(|_| {
                eprintln!("filterconf: {a:?} is not an address");
                std::process::exit(2)
            })
        })
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, service, dns, neighbors] = &args[..] else {
        eprintln!("usage: filterconf SERVICE_ADDRS DNS_ADDRS NEIGHBOURS");
        std::process::exit(2);
    };
    let plan = FilterPlan {
        service: list(service),
        dns: list(dns),
        neighbors: list(neighbors),
    };
    print!("{}", plan.render());
}
