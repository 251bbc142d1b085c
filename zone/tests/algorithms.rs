//! Every DNSSEC algorithm the verifier supports, on small root zones signed by `ldns-signzone`
//! (with a ZONEMD record) under keys made by `ldns-keygen`, anchored by the KSK's DS. The real
//! root zone (`rootzone.rs`) covers RSA/SHA-256; this covers the others. Each zone must verify,
//! a flipped signature byte must fail naming the RRSIG, and `ldns-verify-zone -ZZ` must agree.

mod common;

use std::path::Path;
use std::process::Command;

use domain::base::iana::Rtype;
use imrs_zone::dnssec::DnssecError;
use imrs_zone::{Timestamp, TrustAnchors, Zone, verify};

const ZONE: &str = "\
. 86400 IN SOA ns.example. hostmaster.example. 2026080100 1800 900 604800 86400
. 86400 IN NS ns.example.
example. 172800 IN NS ns.example.
ns.example. 172800 IN A 192.0.2.53
ns.example. 172800 IN AAAA 2001:db8::53
test. 172800 IN NS ns.test.
test. 86400 IN DS 12345 8 2 49FD46E6C4B45C55D4AC69CBD3CD34AC1AFE51DE72C6F3F7B4F5E1A6D2F2C0A1
ns.test. 172800 IN A 192.0.2.54
";

fn at() -> Timestamp {
    "2026-08-01T00:00:00Z".parse().unwrap()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Makes a KSK and a ZSK of `algorithm`, signs [`ZONE`] with a ZONEMD, and returns the signed
/// text and an anchors document holding the KSK's DS.
fn signed_zone(dir: &Path, algorithm: &str) -> (String, String) {
    let bits: &[&str] = if algorithm.starts_with("RSA") {
        &["-b", "2048"]
    } else {
        &[]
    };
    let keygen = |ksk: bool| {
        let mut c = Command::new("ldns-keygen");
        c.current_dir(dir).args(["-a", algorithm]).args(bits);
        if ksk {
            c.arg("-k");
        }
        run(c.arg("."))
    };
    let ksk = keygen(true);
    let zsk = keygen(false);
    std::fs::write(dir.join("root.zone"), ZONE).unwrap();
    run(Command::new("ldns-signzone")
        .current_dir(dir)
        .args(["-z", "1:1", "-i", "20260701000000", "-e", "20260901000000"])
        .args(["-f", "root.zone.signed", "root.zone", &ksk, &zsk]));
    let signed = std::fs::read_to_string(dir.join("root.zone.signed")).unwrap();
    let ds = std::fs::read_to_string(dir.join(format!("{ksk}.ds"))).unwrap();
    let f: Vec<&str> = ds.split_whitespace().collect();
    // ". IN DS tag algorithm digest-type digest"
    let anchors = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <TrustAnchor id=\"TEST\" source=\"test\"><Zone>.</Zone>\
         <KeyDigest id=\"K\" validFrom=\"2026-01-01T00:00:00+00:00\">\
         <KeyTag>{}</KeyTag><Algorithm>{}</Algorithm><DigestType>{}</DigestType>\
         <Digest>{}</Digest></KeyDigest></TrustAnchor>\n",
        f[3],
        f[4],
        f[5],
        f[6..].concat().to_uppercase()
    );
    (signed, anchors)
}

/// Changes one base64 character in the middle of the signature of the RRSIG over the
/// delegation's DS RRset.
fn flip_ds_signature(text: &str) -> String {
    let mut hits = 0;
    let out: Vec<String> = text
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 4 && f[0] == "test." && f[3] == "RRSIG" && f[4] == "DS" {
                hits += 1;
                let mut f: Vec<String> = f.iter().map(|s| s.to_string()).collect();
                let sig = f.last_mut().unwrap();
                let mid = sig.len() / 2;
                let n = if sig.as_bytes()[mid] == b'A' {
                    "B"
                } else {
                    "A"
                };
                sig.replace_range(mid..mid + 1, n);
                f.join("\t")
            } else {
                line.to_string()
            }
        })
        .collect();
    assert_eq!(hits, 1, "one RRSIG over test. DS");
    out.join("\n") + "\n"
}

/// Whether `ldns-verify-zone -ZZ` accepts `text` as of the test time.
fn ldns_accepts(dir: &Path, text: &str) -> bool {
    let path = dir.join("check.zone");
    std::fs::write(&path, text).unwrap();
    Command::new("ldns-verify-zone")
        .args(["-ZZ", "-t", "20260801000000"])
        .arg(&path)
        .output()
        .expect("ldns-verify-zone")
        .status
        .success()
}

#[test]
fn every_supported_algorithm_verifies_and_catches_a_bad_signature() {
    if !common::have("/usr/bin/ldns-keygen")
        || !common::have("/usr/bin/ldns-signzone")
        || !common::have("/usr/bin/ldns-verify-zone")
    {
        return;
    }
    for (algorithm, number) in [
        ("RSASHA1", 5),
        ("RSASHA512", 10),
        ("ECDSAP256SHA256", 13),
        ("ECDSAP384SHA384", 14),
        ("ED25519", 15),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (text, anchors_xml) = signed_zone(dir.path(), algorithm);
        let anchors = TrustAnchors::parse(&anchors_xml).unwrap();

        let zone = Zone::from_text(text.as_bytes()).unwrap();
        let v = verify(&zone, &anchors, at());
        assert!(
            v.is_verified(),
            "{algorithm}: {:?} {:?}",
            v.dnssec,
            v.zonemd
        );
        let report = v.dnssec.as_ref().unwrap();
        assert_eq!(report.anchors_used.len(), 1, "{algorithm}");
        assert!(report.signatures_verified >= 8, "{algorithm}: {report:?}");
        assert!(
            ldns_accepts(dir.path(), &text),
            "{algorithm}: ldns disagrees"
        );

        let bad = flip_ds_signature(&text);
        let zone = Zone::from_text(bad.as_bytes()).unwrap();
        let v = verify(&zone, &anchors, at());
        match &v.dnssec {
            Err(DnssecError::BadSignature { owner, covered, .. }) => {
                assert_eq!(
                    (owner.as_str(), covered.to_string().as_str()),
                    ("test.", "DS")
                );
            }
            other => panic!("{algorithm}: expected a bad signature, got {other:?}"),
        }
        assert!(
            !ldns_accepts(dir.path(), &bad),
            "{algorithm}: ldns accepts the bad signature"
        );
        let key_algorithms: Vec<u8> = zone
            .rrset(zone.apex(), Rtype::DNSKEY)
            .iter()
            .map(|r| r.rdata[3])
            .collect();
        assert!(
            key_algorithms.iter().all(|&a| a == number),
            "{algorithm}: {key_algorithms:?}"
        );
    }
}
