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

#[test]
fn shipped_sites_validate() {
    let ex = load(&sites().join("example.toml")).unwrap();
    assert!(!ex.lab);
    assert_eq!(ex.service, Service::default());
    assert_eq!(ex.announced().len(), 5);
    let lab = load(&sites().join("lab.toml")).unwrap();
    assert!(lab.lab);
    assert_eq!(lab.bgp.neighbors.len(), 2);
}

#[test]
fn bad_sites_are_refused() {
    let p = Path::new("site.toml");
    let cases: &[(&str, String, &str)] = &[
        (
            "announce a documentation prefix",
            lab_text().replace("[bgp]\n", "[bgp]\nannounce = [\"192.0.2.0/24\"]\n"),
            "bgp.announce[0] = 192.0.2.0/24: only the five IMRS prefixes",
        ),
        (
            "announce a more specific IMRS prefix",
            lab_text().replace("[bgp]\n", "[bgp]\nannounce = [\"199.7.83.0/25\"]\n"),
            "bgp.announce[0] = 199.7.83.0/25",
        ),
        (
            "announce twice",
            lab_text().replace(
                "[bgp]\n",
                "[bgp]\nannounce = [\"199.7.83.0/24\", \"199.7.83.0/24\"]\n",
            ),
            "listed twice",
        ),
        (
            "neighbour with AS 20144",
            lab_text().replace("asn = 64512", "asn = 20144"),
            "bgp.neighbors[0].asn = 20144",
        ),
        (
            "IPv6 neighbour without IPv6 address",
            lab_text()
                .replace(
                    "\"192.0.2.10/24\", \"2001:db8:1::10/64\"",
                    "\"192.0.2.10/24\"",
                )
                .replace("gateway6 = \"2001:db8:1::1\"\n", ""),
            "dual stack",
        ),
        (
            "neighbour off-link without multihop",
            lab_text().replace("address = \"192.0.2.1\"", "address = \"198.51.100.1\""),
            "set multihop",
        ),
        (
            "IPv6 neighbour on no IPv6 subnet of ours",
            lab_text().replace("address = \"2001:db8:1::1\"", "address = \"2001:db8:2::1\""),
            "bgp.neighbors[1].address = 2001:db8:2::1: not on any interface's subnet",
        ),
        (
            "missing gateway",
            lab_text().replace("gateway4 = \"192.0.2.1\"\n", ""),
            "an IPv4 default gateway is required",
        ),
        (
            "gateway outside subnet",
            lab_text().replace("gateway4 = \"192.0.2.1\"", "gateway4 = \"203.0.113.1\""),
            "interfaces[0].gateway4 = 203.0.113.1",
        ),
        (
            "service address not L-root outside a lab",
            lab_text().replace("lab = true", "lab = false"),
            "service.ipv4 = 198.51.100.42",
        ),
        (
            "unknown key",
            lab_text().replace("[bgp]\n", "[bgp]\nlocal_pref = 200\n"),
            "unknown field `local_pref`",
        ),
        (
            "plain http phone home",
            lab_text().replace("https://192.0.2.80", "http://192.0.2.80"),
            "phone_home.url",
        ),
        (
            "IMRS space on a management interface",
            lab_text().replace(
                "\"192.0.2.10/24\", ",
                "\"192.0.2.10/24\", \"199.7.83.1/24\", ",
            ),
            "interfaces[0].addresses[1] = 199.7.83.1/24",
        ),
        (
            "router id not ours",
            lab_text().replace("router_id = \"192.0.2.10\"", "router_id = \"192.0.2.99\""),
            "bgp.router_id",
        ),
        (
            "bad instance name",
            lab_text().replace("lab-01.l.root-servers.test", "lab 01"),
            "instance = lab 01",
        ),
        (
            "trust_rtc outside a lab",
            lab_text().replace("lab = true", "lab = false").replace(
                "[service]\nipv4 = \"198.51.100.42\"\nipv6 = \"2001:db8:42::42\"\n",
                "",
            ),
            "only a lab site may trust the RTC",
        ),
        (
            "bad zone server",
            lab_text().replace("\"192.0.2.53\"", "\"xfr.example\""),
            "zone.servers[0] = xfr.example",
        ),
    ];
    for (what, text, expect) in cases {
        let err = parse(p, text).expect_err(what).to_string();
        assert!(err.contains(expect), "{what}: {err}");
        assert!(
            err.starts_with("site.toml"),
            "{what}: names the file: {err}"
        );
    }
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
