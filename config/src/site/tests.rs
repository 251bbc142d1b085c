//! Site config tests: the shipped sites validate; every unsafe or inconsistent input is refused
//! with the key path, value and rule.

use std::path::{Path, PathBuf};

use super::*;

fn sites() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/sites")
}

fn lab_text() -> String {
    std::fs::read_to_string(sites().join("lab.toml")).unwrap()
}

/// The lab site with its own `[host]` section replaced by one holding `host`.
fn lab_with_host(host: &str) -> String {
    let text = lab_text();
    let start = text.find("\n[host]\n").expect("the lab site has a [host]") + 1;
    let end = text[start..]
        .find("\n[")
        .map_or(text.len(), |i| start + i + 1);
    format!("{}{}\n[host]\n{host}\n", &text[..start], &text[end..])
}

#[test]
fn shipped_sites_validate() {
    let ex = load(&sites().join("example.toml")).unwrap();
    assert!(!ex.lab);
    assert_eq!(ex.service, Service::default());
    assert_eq!(ex.announced().len(), 5);
    let lab = load(&sites().join("lab.toml")).unwrap();
    assert!(lab.lab);
    assert_eq!(lab.bgp.neighbors.len(), 2);
    assert!(
        lab.host.has_contacts(),
        "the lab tells its host organisation"
    );
    // The helper swaps the lab's [host] for another, keeping everything else.
    let other = parse(
        Path::new("lab.toml"),
        &lab_with_host("organisation = \"X\""),
    )
    .unwrap();
    assert_eq!(
        (other.host.organisation.as_str(), other.host.webhook),
        ("X", None)
    );
    assert_eq!(other.phone_home, lab.phone_home);
}

/// The lab site with `extra` as a second address of `eth0` (`interfaces[0].addresses[1]`).
fn with_address(extra: &str) -> String {
    lab_text().replace(
        "\"192.0.2.10/24\", ",
        &format!("\"192.0.2.10/24\", \"{extra}\", "),
    )
}

/// The lab site with the IPv4 neighbour's `address = ...` line replaced by `lines`.
fn v4_neighbor(lines: &str) -> String {
    lab_text().replace("address = \"192.0.2.1\"", lines)
}

/// The lab site with the IPv6 neighbour's `address = ...` line replaced by `lines`.
fn v6_neighbor(lines: &str) -> String {
    lab_text().replace("address = \"2001:db8:1::1\"", lines)
}

/// The lab site with a second interface (`interfaces[1]`) made of `lines`.
fn second_interface(lines: &str) -> String {
    lab_text().replace(
        "gateway6 = \"2001:db8:1::1\"\n",
        &format!("gateway6 = \"2001:db8:1::1\"\n\n[[interfaces]]\n{lines}\n"),
    )
}

/// The lab site with `key = value` lines replaced in `[phone_home]`.
fn phone_home(url: &str, ca: &str) -> String {
    let text = lab_text();
    let at = text.find("[phone_home]").unwrap();
    format!("{}[phone_home]\nurl = {url}\nca_pem = {ca}\n", &text[..at])
}

/// The lab site with its `[ntp]` section holding `lines` instead.
fn with_ntp(lines: &str) -> String {
    let text = lab_text();
    let start = text.find("\n[ntp]\n").expect("the lab site has an [ntp]") + 1;
    let end = text[start + 1..]
        .find("\n[")
        .map_or(text.len(), |i| start + 1 + i + 1);
    format!("{}[ntp]\n{lines}\n\n{}", &text[..start], &text[end..])
}

/// A usable PEM CA certificate as a TOML string (the lab's phone-home CA).
fn a_ca() -> String {
    let text = lab_text();
    let start = text.find("ca_pem = \"\"\"").unwrap() + "ca_pem = ".len();
    let end = start + 3 + text[start + 3..].find("\"\"\"").unwrap() + 3;
    text[start..end].to_string()
}

/// An `[ntp]` with one NTS server `name` at `address` and the CA.
fn nts(name: &str, address: &str) -> String {
    with_ntp(&format!(
        "nts = [{{ name = \"{name}\", address = \"{address}\" }}]\nnts_ca_pem = {}",
        a_ca()
    ))
}

/// The lab site with a `[dns.rrl]` section of `lines`.
fn rrl(lines: &str) -> String {
    format!("{}\n[dns.rrl]\n{lines}\n", lab_text())
}

/// Each case: what, the site text, a piece of the expected message. Every case was accepted
/// (or refused for another reason) before the rule it tests existed.
fn refused_cases() -> Vec<(&'static str, String, String)> {
    let s = |x: &str| x.to_string();
    vec![
        // Routing safety.
        (
            "announce a documentation prefix",
            lab_text().replace("[bgp]\n", "[bgp]\nannounce = [\"192.0.2.0/24\"]\n"),
            s("bgp.announce[0] = 192.0.2.0/24: only the five IMRS prefixes"),
        ),
        (
            "announce a more specific IMRS prefix",
            lab_text().replace("[bgp]\n", "[bgp]\nannounce = [\"199.7.83.0/25\"]\n"),
            s("bgp.announce[0] = 199.7.83.0/25"),
        ),
        (
            "announce twice",
            lab_text().replace(
                "[bgp]\n",
                "[bgp]\nannounce = [\"199.7.83.0/24\", \"199.7.83.0/24\"]\n",
            ),
            s("listed twice"),
        ),
        (
            "neighbour with AS 20144",
            lab_text().replace("asn = 64512", "asn = 20144"),
            s("bgp.neighbors[0].asn = 20144"),
        ),
        (
            "IPv6 neighbour without IPv6 address",
            lab_text()
                .replace(
                    "\"192.0.2.10/24\", \"2001:db8:1::10/64\"",
                    "\"192.0.2.10/24\"",
                )
                .replace("gateway6 = \"2001:db8:1::1\"\n", ""),
            s("dual stack"),
        ),
        (
            "neighbour off-link without multihop",
            v4_neighbor("address = \"198.51.100.1\""),
            s("set multihop"),
        ),
        (
            "IPv6 neighbour on no IPv6 subnet of ours",
            v6_neighbor("address = \"2001:db8:2::1\""),
            s("bgp.neighbors[1].address = 2001:db8:2::1: not on any interface's subnet"),
        ),
        (
            "missing gateway",
            lab_text().replace("gateway4 = \"192.0.2.1\"\n", ""),
            s("an IPv4 default gateway is required"),
        ),
        (
            "gateway outside subnet",
            lab_text().replace("gateway4 = \"192.0.2.1\"", "gateway4 = \"203.0.113.1\""),
            s("interfaces[0].gateway4 = 203.0.113.1"),
        ),
        (
            "service address not L-root outside a lab",
            lab_text().replace("lab = true", "lab = false"),
            s("service.ipv4 = 198.51.100.42"),
        ),
        (
            "unknown key",
            lab_text().replace("[bgp]\n", "[bgp]\nlocal_pref = 200\n"),
            s("unknown field `local_pref`"),
        ),
        (
            // The packet filter opens DNS and BGP only; no key opens anything else.
            "a port opened in the filter",
            lab_text().replace("[service]\n", "[service]\nopen_ports = [22]\n"),
            s("unknown field `open_ports`"),
        ),
        (
            "a host e-mail address that smuggles an SMTP command",
            lab_with_host(
                "email = [\"noc@example.net\", \"x@example.net\\r\\nRCPT TO:<y@z.net>\"]",
            ),
            s("host.email[1] = "),
        ),
        (
            "a plain-HTTP webhook",
            lab_with_host("webhook = \"http://hooks.example.net/\""),
            s("host.webhook = http://hooks.example.net/: an https:// URL"),
        ),
        (
            "a host that is never quiet",
            lab_with_host("quiet_after_s = 10"),
            s("host.quiet_after_s = 10: 300 to 604800 seconds"),
        ),
        (
            "an unknown host key",
            lab_with_host("phone = \"+1 555\""),
            s("unknown field `phone`"),
        ),
        (
            "a firewall section",
            format!("{}\n[firewall]\nallow = [\"tcp/22\"]\n", lab_text()),
            s("unknown field `firewall`"),
        ),
        (
            "IMRS space on a management interface",
            with_address("199.7.83.1/24"),
            s("interfaces[0].addresses[1] = 199.7.83.1/24: IMRS service space"),
        ),
        (
            "router id not ours",
            lab_text().replace("router_id = \"192.0.2.10\"", "router_id = \"192.0.2.99\""),
            s("bgp.router_id"),
        ),
        (
            "bad instance name",
            lab_text().replace("lab-01.l.root-servers.test", "lab 01"),
            s("instance = lab 01"),
        ),
        (
            "trust_rtc outside a lab",
            lab_text().replace("lab = true", "lab = false").replace(
                "[service]\nipv4 = \"198.51.100.42\"\nipv6 = \"2001:db8:42::42\"\n",
                "",
            ),
            s("only a lab site may trust the RTC"),
        ),
        (
            "bad zone server",
            lab_text().replace("\"192.0.2.53\"", "\"xfr.example\""),
            s("zone.servers[0] = xfr.example"),
        ),
        // What BIRD would refuse at boot.
        (
            "BGP password with a control character",
            v4_neighbor("address = \"192.0.2.1\"\npassword = \"sec\\u001bret\""),
            s("bgp.neighbors[0].password = (hidden): 1-80 printable ASCII characters without"),
        ),
        (
            "BGP password with a tab",
            v4_neighbor("address = \"192.0.2.1\"\npassword = \"a\\tb\""),
            s("(character 2 is not allowed)"),
        ),
        (
            "BGP password too long for TCP-MD5",
            v4_neighbor(&format!(
                "address = \"192.0.2.1\"\npassword = \"{}\"",
                "p".repeat(81)
            )),
            s("bgp.neighbors[0].password = (hidden)"),
        ),
        (
            "IPv6 link-local neighbour without an interface",
            v6_neighbor("address = \"fe80::1\""),
            s("bgp.neighbors[1].address = fe80::1: a link-local neighbour needs `interface`"),
        ),
        (
            "IPv6 link-local neighbour on an unknown interface",
            v6_neighbor("address = \"fe80::1\"\ninterface = \"eth9\""),
            s("bgp.neighbors[1].interface = eth9: must name one of the site's interfaces"),
        ),
        (
            "IPv6 link-local neighbour with multihop",
            v6_neighbor("address = \"fe80::1\"\ninterface = \"eth0\"\nmultihop = 2"),
            s("bgp.neighbors[1].interface = eth0: an interface is for a directly connected"),
        ),
        (
            "neighbour not on the interface it names",
            second_interface("name = \"eth1\"\naddresses = [\"203.0.113.10/24\"]")
                .replace("address = \"192.0.2.1\"", "address = \"192.0.2.1\"\ninterface = \"eth1\""),
            s("bgp.neighbors[0].address = 192.0.2.1: not on a subnet of interface eth1"),
        ),
        // The phone-home client.
        (
            "junk ca_pem",
            phone_home(
                "\"https://192.0.2.80:8443/v1/reports\"",
                "\"\"\"\n-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n\"\"\"",
            ),
            s("phone_home.ca_pem = -----BEGIN CERTIFICATE-----...: a PEM CA certificate: \
               certificate 1 is not a usable X.509 CA certificate"),
        ),
        (
            "ca_pem that is not PEM",
            phone_home("\"https://192.0.2.80/\"", "\"-----BEGIN CERTIFICATE----- garbage\""),
            s("phone_home.ca_pem = -----BEGIN CERTIFICATE----- garbage...: a PEM CA certificate: \
               not PEM (malformed line -----BEGIN CERTIFICATE----- garbage)"),
        ),
        (
            "ca_pem holding a private key",
            phone_home(
                "\"https://192.0.2.80/\"",
                "\"\"\"\n-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIOkN/3xYDJm4JxXr6cTqR2SiU2wQFpmjIUdbFS9YDgqP\n-----END PRIVATE KEY-----\n\"\"\"",
            ),
            s("only CERTIFICATE blocks (a PRIVATE KEY block has no place here)"),
        ),
        (
            "plain http phone home",
            lab_text().replace("https://192.0.2.80", "http://192.0.2.80"),
            s("phone_home.url = http://192.0.2.80:8443/v1/reports: an https:// URL"),
        ),
        (
            "URL with spaces",
            lab_text().replace("https://192.0.2.80:8443/v1/reports", "https://x y z"),
            s("phone_home.url = https://x y z: not a URL"),
        ),
        (
            "URL with port 0",
            lab_text().replace("https://192.0.2.80:8443/", "https://192.0.2.80:0/"),
            s("phone_home.url = https://192.0.2.80:0/v1/reports: port 0"),
        ),
        // Interface addresses that are no host's.
        (
            "interface address 0.0.0.0/0",
            with_address("0.0.0.0/0"),
            s("interfaces[0].addresses[1] = 0.0.0.0/0: not an interface address: an unspecified"),
        ),
        (
            "interface address ::/0",
            with_address("::/0"),
            s("interfaces[0].addresses[1] = ::/0: not an interface address: the unspecified"),
        ),
        (
            "interface address 127.0.0.1/8",
            with_address("127.0.0.1/8"),
            s("interfaces[0].addresses[1] = 127.0.0.1/8: not an interface address: a loopback"),
        ),
        (
            "interface address 224.0.0.1/4",
            with_address("224.0.0.1/4"),
            s("interfaces[0].addresses[1] = 224.0.0.1/4: not an interface address: a multicast"),
        ),
        (
            "interface address 255.255.255.255/32",
            with_address("255.255.255.255/32"),
            s("= 255.255.255.255/32: not an interface address: the broadcast address"),
        ),
        (
            "IPv4-mapped IMRS space on an interface",
            with_address("::ffff:199.7.83.42/128"),
            s("interfaces[0].addresses[1] = ::ffff:199.7.83.42/128: IMRS service space"),
        ),
        (
            "IPv4-mapped address on an interface",
            with_address("::ffff:192.0.2.11/128"),
            s("= ::ffff:192.0.2.11/128: not an interface address: an IPv4-mapped address"),
        ),
        (
            "interface address with a /4",
            with_address("10.1.2.3/4"),
            s("= 10.1.2.3/4: an IPv4 prefix length of at least 8"),
        ),
        (
            "interface address is its subnet's broadcast address",
            with_address("203.0.113.255/24"),
            s("= 203.0.113.255/24: 203.0.113.255 is the subnet's broadcast address"),
        ),
        (
            "service address on an interface",
            with_address("198.51.100.42/32"),
            s("= 198.51.100.42/32: the service address goes on the service interface"),
        ),
        (
            "the same address on two interfaces",
            second_interface("name = \"eth1\"\naddresses = [\"192.0.2.10/24\"]"),
            s("interfaces[1].addresses[0] = 192.0.2.10/24: the same address is listed twice"),
        ),
        (
            "the same address twice on one interface (another prefix length)",
            with_address("192.0.2.10/25"),
            s("interfaces[0].addresses[1] = 192.0.2.10/25: the same address is listed twice"),
        ),
        (
            "the same MAC on two interfaces (in another case)",
            lab_text()
                .replace("name = \"eth0\"\n", "name = \"eth0\"\nmac = \"52:54:00:ab:cd:ef\"\n")
                .replace(
                    "gateway6 = \"2001:db8:1::1\"\n",
                    "gateway6 = \"2001:db8:1::1\"\n\n[[interfaces]]\nname = \"eth1\"\n\
                     mac = \"52:54:00:AB:CD:EF\"\naddresses = [\"203.0.113.10/24\"]\n",
                ),
            s("interfaces[1].mac = 52:54:00:AB:CD:EF: the same MAC address is given to another"),
        ),
        (
            "a multicast MAC",
            lab_text().replace("name = \"eth0\"\n", "name = \"eth0\"\nmac = \"01:00:5e:00:00:01\"\n"),
            s("interfaces[0].mac = 01:00:5e:00:00:01: a unicast MAC address"),
        ),
        (
            "a gateway that is our own address",
            lab_text().replace("gateway4 = \"192.0.2.1\"", "gateway4 = \"192.0.2.10\""),
            s("interfaces[0].gateway4 = 192.0.2.10: is the appliance's own address"),
        ),
        // Neighbours that are no router of the host's.
        (
            "neighbour 0.0.0.0",
            v4_neighbor("address = \"0.0.0.0\"\nmultihop = 2"),
            s("bgp.neighbors[0].address = 0.0.0.0: an unspecified"),
        ),
        (
            "multicast neighbour",
            v4_neighbor("address = \"224.0.0.5\"\nmultihop = 2"),
            s("bgp.neighbors[0].address = 224.0.0.5: a multicast address"),
        ),
        (
            "IPv6 multicast neighbour",
            v6_neighbor("address = \"ff02::5\"\nmultihop = 2"),
            s("bgp.neighbors[1].address = ff02::5: a multicast address"),
        ),
        (
            "IPv4-mapped neighbour",
            v6_neighbor("address = \"::ffff:192.0.2.1\"\nmultihop = 2"),
            s("bgp.neighbors[1].address = ::ffff:192.0.2.1: an IPv4-mapped address"),
        ),
        (
            "unspecified IPv6 neighbour",
            v6_neighbor("address = \"::\"\nmultihop = 2"),
            s("bgp.neighbors[1].address = ::: the unspecified address"),
        ),
        (
            "loopback neighbour",
            v4_neighbor("address = \"127.0.0.1\"\nmultihop = 2"),
            s("bgp.neighbors[0].address = 127.0.0.1: a loopback address"),
        ),
        (
            "the box's own service address as neighbour",
            v4_neighbor("address = \"198.51.100.42\"\nmultihop = 2"),
            s("bgp.neighbors[0].address = 198.51.100.42: is the appliance's own service address"),
        ),
        (
            "the box's own IPv6 service address as neighbour",
            v6_neighbor("address = \"2001:db8:42::42\"\nmultihop = 2"),
            s("bgp.neighbors[1].address = 2001:db8:42::42: is the appliance's own service address"),
        ),
        (
            "a neighbour in IMRS space",
            v4_neighbor("address = \"199.7.83.1\"\nmultihop = 2"),
            s("bgp.neighbors[0].address = 199.7.83.1: a neighbour inside IMRS service space"),
        ),
        (
            "two sessions to one address",
            lab_text().replace(
                "[ntp]",
                "[[bgp.neighbors]]\nname = \"again\"\naddress = \"192.0.2.1\"\nasn = 64513\n\n[ntp]",
            ),
            s("bgp.neighbors[2].address = 192.0.2.1: a second session to the same address"),
        ),
        // Time and zone sources.
        (
            "zone server port 0",
            lab_text().replace("\"192.0.2.53\"", "\"192.0.2.53:0\""),
            s("zone.servers[0] = 192.0.2.53:0: port 0 is no port"),
        ),
        (
            "zone server on loopback",
            lab_text().replace("\"192.0.2.53\"", "\"127.0.0.1\""),
            s("zone.servers[0] = 127.0.0.1: a loopback address"),
        ),
        (
            "multicast NTP server",
            lab_text().replace("trust_rtc = true", "trust_rtc = true\nservers = [\"224.0.1.1\"]"),
            s("ntp.servers[0] = 224.0.1.1: a multicast address"),
        ),
        (
            "NTS next to plain NTP servers",
            nts("nts.example.net", "192.0.2.123").replace(
                "nts = [",
                "servers = [\"192.0.2.124\"]\nnts = [",
            ),
            s("ntp.servers = (1 entries next to 1 in ntp.nts): NTS servers or plain NTP servers, not both"),
        ),
        (
            "NTS without a CA",
            with_ntp("nts = [{ name = \"nts.example.net\", address = \"192.0.2.123\" }]"),
            s("ntp.nts_ca_pem = ...: the PEM CA certificate(s) the NTS servers' certificates chain to: at least one PEM CA certificate"),
        ),
        (
            "an NTS CA that is a key",
            with_ntp(
                "nts = [{ name = \"nts.example.net\", address = \"192.0.2.123\" }]\n\
                 nts_ca_pem = \"-----BEGIN PRIVATE KEY-----\\nAAAA\\n-----END PRIVATE KEY-----\\n\"",
            ),
            s("ntp.nts_ca_pem = -----BEGIN PRIVATE KEY-----...: the PEM CA certificate(s)"),
        ),
        (
            "an NTS CA with no NTS server",
            with_ntp(&format!("servers = [\"192.0.2.123\"]\nnts_ca_pem = {}", a_ca())),
            s("ntp.nts_ca_pem = -----BEGIN CERTIFICATE-----...: only with NTS servers (ntp.nts)"),
        ),
        (
            "an NTS name with a space",
            nts("nts example.net", "192.0.2.123"),
            s("ntp.nts[0].name = nts example.net: the DNS name in the server's certificate"),
        ),
        (
            "an NTS name with a final dot",
            nts("nts.example.net.", "192.0.2.123"),
            s("ntp.nts[0].name = nts.example.net.: the DNS name"),
        ),
        (
            "an NTS name that is another address",
            nts("192.0.2.99", "192.0.2.123"),
            s("ntp.nts[0].name = 192.0.2.99: an address as the name must be the server's address 192.0.2.123"),
        ),
        (
            "an NTS server named localhost",
            nts("LocalHost", "192.0.2.123"),
            s("ntp.nts[0].name = LocalHost: a remote server's name"),
        ),
        (
            "one NTS name at two addresses",
            nts("nts.example.net", "192.0.2.123").replace(
                "\" }]",
                "\" }, { name = \"NTS.example.net\", address = \"192.0.2.124\" }]",
            ),
            s("ntp.nts[1].name = NTS.example.net: each NTS server once"),
        ),
        (
            "an NTS server on the box itself",
            nts("nts.example.net", "192.0.2.10"),
            s("ntp.nts[0].address = 192.0.2.10: is the appliance's own address"),
        ),
        (
            "an NTS server on port 0",
            nts("nts.example.net", "192.0.2.123").replace("\" }]", "\", port = 0 }]"),
            s("ntp.nts[0].port = 0: port 0 is no port"),
        ),
        (
            "an unknown NTS key",
            nts("nts.example.net", "192.0.2.123").replace("\" }]", "\", key = 1 }]"),
            s("unknown field `key`"),
        ),
        // Strings: lengths, characters, escaping.
        (
            "a 1 MB site_id",
            lab_text().replace("site_id = \"lab-01\"", &format!("site_id = \"{}\"", "a".repeat(1 << 20))),
            s("site_id = aaaa"),
        ),
        (
            "a site_id with a newline is escaped in the message",
            lab_text().replace("site_id = \"lab-01\"", "site_id = \"lab\\n01 [forged]\""),
            s("site_id = lab\\n01 [forged]: letters, digits"),
        ),
        (
            "a site_id with a terminal escape is escaped in the message",
            lab_text().replace("site_id = \"lab-01\"", "site_id = \"\\u001b[2Jlab\""),
            s("site_id = \\u{1b}[2Jlab"),
        ),
        (
            "instance with a control character",
            lab_text().replace("lab-01.l.root-servers.test", "lab\\u0007.test"),
            s("instance = lab\\u{7}.test: a DNS host name"),
        ),
        (
            "instance too long",
            lab_text().replace(
                "lab-01.l.root-servers.test",
                &vec!["a".repeat(60); 5].join("."),
            ),
            s("instance = aaaa"),
        ),
        // Device binding and order.
        (
            "no device",
            lab_text().replace("device = \"any\"\n", ""),
            s("missing field `device`"),
        ),
        (
            "no sequence",
            lab_text().replace("sequence = 1\n", ""),
            s("missing field `sequence`"),
        ),
        (
            "a device that is neither any, serial: nor key:",
            lab_text().replace("device = \"any\"", "device = \"SN-1\""),
            s("device = \"SN-1\": expected \"any\", \"serial:SERIAL\""),
        ),
        (
            "a device key id that is no key id",
            lab_text().replace("device = \"any\"", "device = \"key:12345\""),
            s("device = \"key:12345\": expected"),
        ),
        (
            "a negative sequence",
            lab_text().replace("sequence = 1", "sequence = -1"),
            s("sequence"),
        ),
        (
            "version 1 (before device and sequence)",
            lab_text()
                .replace("version = 2", "version = 1")
                .replace("device = \"any\"\n", "")
                .replace("sequence = 1\n", ""),
            s("site.toml: version = 1: this build understands site version 2 (version 2 added device"),
        ),
        // RRL.
        (
            "RRL rate 0",
            rrl("responses_per_second = 0"),
            s("dns.rrl.responses_per_second = 0: 1 to 1000000"),
        ),
        (
            "RRL slip 101",
            rrl("responses_per_second = 200\nslip = 101"),
            s("dns.rrl.slip = 101: 0 to 100"),
        ),
        (
            "RRL IPv4 prefix 33",
            rrl("responses_per_second = 200\nipv4_prefix_length = 33"),
            s("dns.rrl.ipv4_prefix_length = 33: 8 to 32"),
        ),
        (
            "RRL IPv6 prefix 65",
            rrl("responses_per_second = 200\nipv6_prefix_length = 65"),
            s("dns.rrl.ipv6_prefix_length = 65: 16 to 64"),
        ),
        (
            "RRL unknown option",
            rrl("responses_per_second = 200\nwindow = 15"),
            s("unknown field `window`"),
        ),
        (
            "heartbeat every 5 s",
            lab_text().replace("heartbeat_s = 10", "heartbeat_s = 5"),
            s("phone_home.heartbeat_s = 5: 10 to 86400 seconds"),
        ),
        (
            "an ops key that is not a key",
            format!(
                "{}\n[fleet]\nops_public_keys = [\"-----BEGIN PUBLIC KEY-----\\nAAAA\\n-----END PUBLIC KEY-----\"]\n",
                lab_text()
            ),
            s("fleet.ops_public_keys[0]"),
        ),
        // Telemetry: the source key is checked, and an error never shows it whole.
        (
            "a short source key",
            lab_text().replace(
                "source_key = \"61bd89620bbf91d11d2821fa52e4661b1b98fa76b6bcd9e7e9a160e447a73a6c\"",
                "source_key = \"61bd8962\"",
            ),
            s("telemetry.source_key = 61bd... (8 characters): 64 hex digits"),
        ),
        (
            "a source key that is not hex",
            lab_text().replace(
                "61bd89620bbf91d11d2821fa52e4661b1b98fa76b6bcd9e7e9a160e447a73a6c",
                "zzbd89620bbf91d11d2821fa52e4661b1b98fa76b6bcd9e7e9a160e447a7ü3a6",
            ),
            s("telemetry.source_key = zzbd... (64 characters)"),
        ),
        (
            "an all-zero source key",
            lab_text().replace(
                "61bd89620bbf91d11d2821fa52e4661b1b98fa76b6bcd9e7e9a160e447a73a6c",
                &"0".repeat(64),
            ),
            s("not all zero"),
        ),
        // Slots.
        (
            "health deadline 30 s",
            format!("{}\n[slots]\nhealth_deadline_s = 30\n", lab_text()),
            s("slots.health_deadline_s = 30: 60 to 86400 seconds"),
        ),
        (
            "health deadline over a day",
            format!("{}\n[slots]\nhealth_deadline_s = 86401\n", lab_text()),
            s("slots.health_deadline_s = 86401: 60 to 86400 seconds"),
        ),
    ]
}

#[test]
fn bad_sites_are_refused() {
    let p = Path::new("site.toml");
    for (what, text, expect) in refused_cases() {
        let err = parse(p, &text).expect_err(what).to_string();
        assert!(err.contains(&expect), "{what}: {err}");
        assert!(
            err.starts_with("site.toml"),
            "{what}: names the file: {err}"
        );
        assert!(
            !err.chars().any(|c| c.is_control() && c != '\n'),
            "{what}: raw control character in {err:?}"
        );
        assert!(err.len() < 2000, "{what}: {} bytes of message", err.len());
        // Only parse errors (with their source excerpt) span lines.
        if err.contains(" = ") && !err.contains("TOML parse error") {
            assert!(!err.contains('\n'), "{what}: {err:?}");
        }
    }
}

#[test]
fn what_the_box_accepts_passes() {
    let p = Path::new("site.toml");
    let cases: Vec<(&str, String)> = vec![
        (
            "IPv6 link-local neighbour on a named interface",
            v6_neighbor("address = \"fe80::1\"\ninterface = \"eth0\""),
        ),
        (
            "global neighbour on the interface it names",
            v4_neighbor("address = \"192.0.2.1\"\ninterface = \"eth0\""),
        ),
        (
            "a printable password",
            v4_neighbor("address = \"192.0.2.1\"\npassword = \"s3cr3t-#{};'`~ !\""),
        ),
        (
            "two interfaces with different MACs",
            lab_text()
                .replace(
                    "name = \"eth0\"\n",
                    "name = \"eth0\"\nmac = \"52:54:00:12:34:56\"\n",
                )
                .replace(
                    "gateway6 = \"2001:db8:1::1\"\n",
                    "gateway6 = \"2001:db8:1::1\"\n\n[[interfaces]]\nname = \"eth1\"\n\
                     mac = \"52:54:00:12:34:57\"\naddresses = [\"203.0.113.10/24\"]\n",
                ),
        ),
        (
            "a /31 point-to-point address",
            with_address("203.0.113.0/31"),
        ),
        (
            "a serial-bound config",
            lab_text().replace("device = \"any\"", "device = \"serial:S4EVNX0R123456\""),
        ),
        (
            "a key-bound config",
            lab_text().replace("device = \"any\"", "device = \"key:0123456789ABCDEF\""),
        ),
        ("RRL with defaults", rrl("responses_per_second = 200")),
        (
            "RRL in full",
            rrl(
                "responses_per_second = 1000000\nslip = 0\nipv4_prefix_length = 32\nipv6_prefix_length = 64",
            ),
        ),
        (
            "a zone server with a port",
            lab_text().replace("\"192.0.2.53\"", "\"192.0.2.53:5353\""),
        ),
        (
            "a host name URL",
            lab_text().replace("https://192.0.2.80:8443/", "https://home.example.net/"),
        ),
        ("an NTS server", nts("nts.example.net", "192.0.2.123")),
        (
            "an NTS server named by its address (an IP address SAN)",
            nts("2001:db8:1::123", "2001:db8:1:0::123"),
        ),
    ];
    for (what, text) in cases {
        parse(p, &text).unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    let s = parse(p, &rrl("responses_per_second = 200")).unwrap();
    assert_eq!(
        s.dns.rrl,
        Some(Rrl {
            responses_per_second: 200,
            slip: 2,
            ipv4_prefix_length: 24,
            ipv6_prefix_length: 56
        })
    );
    let s = parse(
        p,
        &lab_text().replace("device = \"any\"", "device = \"key:0123456789ABCDEF\""),
    )
    .unwrap();
    assert_eq!(s.device, DeviceBinding::Key("0123456789abcdef".into()));
    assert_eq!(lab().dns.rrl, None, "off unless set");
    let s = parse(p, &nts("nts.example.net", "192.0.2.123")).unwrap();
    assert_eq!(
        s.ntp.nts,
        vec![NtsServer {
            name: "nts.example.net".into(),
            address: "192.0.2.123".parse().unwrap(),
            port: NTS_KE_PORT,
        }]
    );
}

fn lab() -> Site {
    parse(Path::new("lab.toml"), &lab_text()).unwrap()
}

#[test]
fn a_huge_site_file_is_refused_by_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("site.toml");
    let text = lab_text().replace(
        "site_id = \"lab-01\"",
        &format!("site_id = \"{}\"", "a".repeat(50 << 20)),
    );
    std::fs::write(&path, text).unwrap();
    let err = load(&path).unwrap_err().to_string();
    assert!(
        err.ends_with("the site config is larger than the limit of 262144 bytes"),
        "{err}"
    );
    assert!(err.len() < 500);
}

#[test]
fn admit_binds_configs_to_a_device_and_refuses_rollback() {
    let with = |device: &str, sequence: u64| {
        let mut s = lab();
        s.device = device.parse().unwrap();
        s.sequence = sequence;
        s
    };
    let box_a = DeviceIdentity {
        disk_serials: vec!["  S4EVNX0R123456 \n".into(), "WD-0002".into()],
        key_id: Some("0123456789abcdef".into()),
    };
    let fresh = DeviceIdentity::default();
    let keyless = DeviceIdentity {
        disk_serials: vec!["S4EVNX0R123456".into()],
        key_id: None,
    };
    type Case<'a> = (
        &'a str,
        Site,
        &'a DeviceIdentity,
        Option<u64>,
        Option<&'a str>,
    );
    let cases: Vec<Case> = vec![
        (
            "any device, first config",
            with("any", 1),
            &box_a,
            None,
            None,
        ),
        (
            "any device, a box with no identity yet",
            with("any", 1),
            &fresh,
            None,
            None,
        ),
        (
            "our disk serial",
            with("serial:S4EVNX0R123456", 5),
            &box_a,
            Some(4),
            None,
        ),
        (
            "our second disk",
            with("serial:WD-0002", 5),
            &box_a,
            None,
            None,
        ),
        (
            "our key id (any case)",
            with("key:0123456789ABCDEF", 5),
            &box_a,
            None,
            None,
        ),
        (
            "the same config again (reboot)",
            with("any", 7),
            &box_a,
            Some(7),
            None,
        ),
        ("a newer config", with("any", 8), &box_a, Some(7), None),
        (
            "another box's serial",
            with("serial:OTHER-1", 9),
            &box_a,
            None,
            Some(
                "the site config is for device serial:OTHER-1, not this one (serial:S4EVNX0R123456, serial:WD-0002, key:0123456789abcdef)",
            ),
        ),
        (
            "another box's key",
            with("key:fedcba9876543210", 9),
            &box_a,
            Some(1),
            Some("for device key:fedcba9876543210, not this one"),
        ),
        (
            "a serial-bound config on a box with no serial",
            with("serial:S4EVNX0R123456", 1),
            &fresh,
            None,
            Some("not this one (no disk serial and no device key)"),
        ),
        (
            "a key-bound config before the box has a key",
            with("key:0123456789abcdef", 1),
            &keyless,
            None,
            Some("for device key:0123456789abcdef"),
        ),
        (
            "an older config (rollback)",
            with("any", 6),
            &box_a,
            Some(7),
            Some(
                "the site config has sequence 6, older than the last one applied (7): refusing to roll back",
            ),
        ),
        (
            "an older config for this very box",
            with("serial:WD-0002", 0),
            &box_a,
            Some(1),
            Some("sequence 0, older than the last one applied (1)"),
        ),
    ];
    for (what, site, dev, last, want) in cases {
        match (admit(&site, dev, last), want) {
            (Ok(()), None) => {}
            (Err(e), Some(w)) => assert!(e.to_string().contains(w), "{what}: {e}"),
            (got, want) => panic!("{what}: got {got:?}, wanted {want:?}"),
        }
    }
}

#[test]
fn device_identity_is_escaped_in_refusals() {
    let mut s = lab();
    s.device = "serial:A".parse().unwrap();
    let dev = DeviceIdentity {
        disk_serials: vec!["X\u{1b}[2J\nforged".into()],
        key_id: None,
    };
    let e = admit(&s, &dev, None).unwrap_err().to_string();
    assert!(!e.chars().any(char::is_control), "{e:?}");
    assert!(e.contains("serial:X\\u{1b}[2J\\nforged"), "{e}");
}

#[test]
fn signed_site_roundtrip_and_refusals() {
    use crate::keys;
    use crate::signed::{self, SignedSiteError};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("site.toml");
    std::fs::write(&path, lab_text()).unwrap();
    let key = keys::generate().unwrap();
    assert!(matches!(
        signed::load(&path, &key.verifying_key()),
        Err(SignedSiteError::Unsigned { .. })
    ));
    signed::sign(&path, &key).unwrap();
    let site = signed::load(&path, &key.verifying_key()).unwrap();
    assert_eq!(site.site_id, "lab-01");
    // Another key: refused.
    let other = keys::generate().unwrap();
    assert!(matches!(
        signed::load(&path, &other.verifying_key()),
        Err(SignedSiteError::Signature { .. })
    ));
    // One changed byte after signing: refused.
    std::fs::write(&path, lab_text().replace("64512", "64513")).unwrap();
    assert!(matches!(
        signed::load(&path, &key.verifying_key()),
        Err(SignedSiteError::Signature { .. })
    ));
    // Garbled signature.
    std::fs::write(signed::sig_path_for(&path), "zzzz").unwrap();
    assert!(matches!(
        signed::load(&path, &key.verifying_key()),
        Err(SignedSiteError::Signature { .. })
    ));
    // Signed garbage: signature fine, content refused.
    std::fs::write(&path, "version = [").unwrap();
    std::fs::write(
        signed::sig_path_for(&path),
        keys::sign_hex(&key, b"version = ["),
    )
    .unwrap();
    assert!(matches!(
        signed::load(&path, &key.verifying_key()),
        Err(SignedSiteError::Invalid(_))
    ));
    // Refuses to sign an invalid config.
    assert!(signed::sign(&path, &key).is_err());
}
