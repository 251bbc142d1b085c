//! End-to-end verification of the real root zone and of tampered copies,
//! with verdicts compared against `ldns-verify-zone` where it is installed.
//!
//! Every full-zone verification is expensive in a debug build, so each
//! variant is parsed and verified exactly once, variants run in parallel,
//! and all of them live in this one test binary.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use imrs_zone::dnssec::DnssecError;
use imrs_zone::zonemd::ZonemdError;
use imrs_zone::{
    AcceptError, AcceptedRecord, Candidate, Timestamp, TrustAnchors, Verification, Zone, ZoneStore,
    accept, verify,
};
use rayon::prelude::*;

const SERIAL: u32 = 2026073102;

fn at() -> Timestamp {
    "2026-08-01T00:00:00Z".parse().unwrap()
}

fn text() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        std::fs::read_to_string(common::data_dir().join("root.zone.2026073102")).unwrap()
    })
}

/// The untouched zone, parsed once for every test in this binary.
fn base() -> &'static Zone {
    static ZONE: OnceLock<Zone> = OnceLock::new();
    ZONE.get_or_init(|| Zone::from_text(text().as_bytes()).unwrap())
}

fn anchors() -> TrustAnchors {
    TrustAnchors::load(&common::data_dir().join("root-anchors.xml")).unwrap()
}

/// Replaces the single line matching `pred` with `f(line)` (None: delete it).
fn edit_line(
    text: &str,
    pred: impl Fn(&str) -> bool,
    f: impl Fn(&str) -> Option<String>,
) -> String {
    let mut out = String::with_capacity(text.len() + 100);
    let mut hits = 0;
    for line in text.lines() {
        if pred(line) {
            hits += 1;
            if let Some(l) = f(line) {
                out.push_str(&l);
                out.push('\n');
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert_eq!(hits, 1, "the edit must hit exactly one line");
    out
}

fn fields(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

/// A tampered copy and what must be said about it.
struct Variant {
    name: &'static str,
    /// The tampered text; `None` for the untouched zone.
    text: Option<String>,
    at: Timestamp,
    /// `Some(arg)` when ldns-verify-zone should be asked with `-t arg`.
    ldns_time: Option<&'static str>,
    check: fn(&Verification),
}

fn flip_signature(line: &str) -> Option<String> {
    // Change one base64 character in the middle of the signature: the
    // decoded signature differs in one byte, its length stays the same.
    let mut f: Vec<String> = fields(line).iter().map(|s| s.to_string()).collect();
    let sig = f.last_mut().unwrap();
    let mid = sig.len() / 2;
    let c = sig.as_bytes()[mid];
    let n = if c == b'A' { 'B' } else { 'A' };
    sig.replace_range(mid..mid + 1, &n.to_string());
    Some(f.join("\t"))
}

fn variants() -> Vec<Variant> {
    let t = text();
    vec![
        Variant {
            name: "untouched",
            text: None,
            at: at(),
            ldns_time: Some("20260801000000"),
            check: |v| {
                assert!(v.is_verified(), "{:?} {:?}", v.zonemd, v.dnssec);
                let proof = v.proof().unwrap();
                assert_eq!(proof.serial, SERIAL);
                assert_eq!(proof.records, 24877);
                assert_eq!(proof.signatures_verified, 2792);
                assert_eq!(proof.anchors_used, [20326]);
                assert!(proof.zonemd.digest.starts_with("C3A465783C10B43A"));
            },
        },
        Variant {
            name: "changed glue",
            text: Some(edit_line(
                t,
                |l| l.starts_with("a.nic.aaa.\t") && l.contains("\tA\t"),
                |l| Some(l.replace("37.209.192.9", "37.209.192.10")),
            )),
            at: at(),
            ldns_time: Some("20260801000000"),
            check: |v| {
                // Glue is unsigned: DNSSEC passes, only ZONEMD catches it.
                assert!(v.dnssec.is_ok(), "{:?}", v.dnssec);
                assert!(
                    matches!(v.zonemd, Err(ZonemdError::DigestMismatch { .. })),
                    "{:?}",
                    v.zonemd
                );
            },
        },
        Variant {
            name: "flipped RRSIG byte",
            text: Some(edit_line(
                t,
                |l| l.starts_with("aaa.\t") && l.contains("RRSIG\tDS "),
                flip_signature,
            )),
            at: at(),
            ldns_time: Some("20260801000000"),
            check: |v| {
                let e = v.dnssec.as_ref().unwrap_err();
                assert_eq!(
                    e.to_string(),
                    "RRSIG aaa. DS key 57780: signature does not verify"
                );
                assert!(v.zonemd.is_err());
            },
        },
        Variant {
            name: "changed ZONEMD digest",
            text: Some(edit_line(
                t,
                |l| l.contains("\tZONEMD\t"),
                |l| Some(l.replace("C3A465783C10", "C3A465783C11")),
            )),
            at: at(),
            ldns_time: Some("20260801000000"),
            check: |v| {
                let z = v.zonemd.as_ref().unwrap_err();
                assert!(z.to_string().contains("C3A465783C11"), "{z}");
                assert!(
                    matches!(v.dnssec, Err(DnssecError::BadSignature { ref owner, covered, .. })
                    if owner == "." && covered.to_string() == "ZONEMD"),
                    "{:?}",
                    v.dnssec
                );
            },
        },
        Variant {
            name: "removed RRSIG",
            text: Some(edit_line(
                t,
                |l| l.starts_with("aaa.\t") && l.contains("RRSIG\tNSEC "),
                |_| None,
            )),
            at: at(),
            ldns_time: Some("20260801000000"),
            check: |v| {
                assert_eq!(
                    v.dnssec.as_ref().unwrap_err().to_string(),
                    "RRset aaa. NSEC is not signed"
                );
            },
        },
        Variant {
            name: "removed NSEC",
            text: Some(edit_line(
                t,
                |l| l.starts_with("aaa.\t") && l.contains("\tNSEC\t"),
                |_| None,
            )),
            at: at(),
            ldns_time: Some("20260801000000"),
            check: |v| {
                let e = v.dnssec.as_ref().unwrap_err().to_string();
                assert_eq!(e, "RRSIG aaa. NSEC key 57780: no such RRset");
            },
        },
        Variant {
            name: "added record",
            text: Some(format!("{t}.\t86400\tIN\tTXT\t\"added\"\n")),
            at: at(),
            ldns_time: Some("20260801000000"),
            check: |v| {
                assert_eq!(
                    v.dnssec.as_ref().unwrap_err().to_string(),
                    "RRset . TXT is not signed"
                );
                assert!(v.zonemd.is_err());
            },
        },
        Variant {
            name: "signatures expired",
            text: None,
            at: "2026-08-14T00:00:00Z".parse().unwrap(),
            ldns_time: Some("20260814000000"),
            check: |v| {
                assert!(
                    matches!(v.dnssec, Err(DnssecError::Expired { .. })),
                    "{:?}",
                    v.dnssec
                );
                // ZONEMD does not depend on time.
                assert!(v.zonemd.is_ok());
            },
        },
        Variant {
            name: "signatures not yet valid",
            text: None,
            at: "2026-07-31T12:00:00Z".parse().unwrap(),
            ldns_time: Some("20260731120000"),
            check: |v| {
                let e = v.dnssec.as_ref().unwrap_err();
                assert!(matches!(e, DnssecError::NotYetValid { .. }), "{e:?}");
                assert!(e.to_string().contains("2026-07-31T19:00:00Z"), "{e}");
            },
        },
    ]
}

fn ldns_verdict(path: &Path, time: &str) -> bool {
    let out = Command::new("/usr/bin/ldns-verify-zone")
        .args(["-ZZ", "-t", time])
        .arg(path)
        .output()
        .expect("run ldns-verify-zone");
    out.status.success()
}

#[test]
fn real_and_tampered_zones() {
    let anchors = anchors();
    let dir = tempfile::tempdir().unwrap();
    let have_ldns = common::have("/usr/bin/ldns-verify-zone");
    let variants = variants();
    let results: Vec<(String, bool, Option<bool>)> = variants
        .par_iter()
        .map(|var| {
            let parsed;
            let zone = match &var.text {
                Some(t) => {
                    parsed = Zone::from_text(t.as_bytes()).unwrap();
                    &parsed
                }
                None => base(),
            };
            let v = verify(zone, &anchors, var.at);
            (var.check)(&v);
            let ldns = match (have_ldns, var.ldns_time) {
                (true, Some(time)) => {
                    let path: PathBuf = dir.path().join(var.name.replace(' ', "_"));
                    std::fs::write(&path, var.text.as_deref().unwrap_or(text())).unwrap();
                    Some(ldns_verdict(&path, time))
                }
                _ => None,
            };
            (var.name.to_owned(), v.is_verified(), ldns)
        })
        .collect();
    for (name, ours, ldns) in &results {
        eprintln!("{name}: ours {ours}, ldns-verify-zone {ldns:?}");
        if let Some(l) = ldns {
            assert_eq!(ours, l, "verdict differs from ldns-verify-zone on {name}");
        }
    }
    assert_eq!(
        results.iter().filter(|r| r.1).count(),
        1,
        "only the untouched zone verifies"
    );
}

#[test]
fn anchors_that_match_no_ksk_and_anchor_windows() {
    let zone = base();
    let xml = std::fs::read_to_string(common::data_dir().join("root-anchors.xml")).unwrap();
    // Wrong digests.
    let wrong = TrustAnchors::parse(
        &xml.replace("E06D44B8", "E06D44B9")
            .replace("683D2D0A", "683D2D0B"),
    )
    .unwrap();
    let v = verify(zone, &wrong, at());
    let e = v.dnssec.unwrap_err();
    assert!(matches!(e, DnssecError::NoAnchoredKey { .. }), "{e}");
    assert!(
        e.to_string().contains("20326") && e.to_string().contains("38696"),
        "{e}"
    );
    // Right digests but both windows closed before the verification time.
    let closed = TrustAnchors::parse(
        &xml.replace(
            "validFrom=\"2017-02-02T00:00:00+00:00\"",
            "validFrom=\"2017-02-02T00:00:00+00:00\" validUntil=\"2026-01-01T00:00:00+00:00\"",
        )
        .replace(
            "validFrom=\"2024-07-18T00:00:00+00:00\"",
            "validFrom=\"2024-07-18T00:00:00+00:00\" validUntil=\"2026-01-01T00:00:00+00:00\"",
        ),
    )
    .unwrap();
    let v = verify(zone, &closed, at());
    assert!(
        matches!(v.dnssec, Err(DnssecError::NoAnchoredKey { ref anchors, .. }) if anchors.is_empty())
    );
    // Only KSK-2024 anchored: it is published but does not sign the DNSKEY
    // RRset yet (docs/facts.md), so the chain does not close.
    let only_2024 = TrustAnchors::parse(&xml.replace("E06D44B8", "E06D44B9")).unwrap();
    let v = verify(zone, &only_2024, at());
    assert_eq!(
        v.dnssec.unwrap_err(),
        DnssecError::DnskeyNotSignedByAnchor {
            anchored: vec![38696]
        }
    );

    // Acceptance: write, reload the written text, refuse older serials.
    let good = verify(zone, &anchors(), at());
    assert!(good.is_verified());
    let dir = tempfile::tempdir().unwrap();
    let store = ZoneStore::new(&dir.path().join("zone"));
    let cand = Candidate {
        zone,
        verification: &good,
        source: "test",
    };
    let rec = accept(cand, None, false, &store).unwrap();
    assert_eq!(rec.serial, SERIAL);
    assert_eq!(rec.anchors_used, [20326]);
    assert_eq!(rec.signatures_valid_until, "2026-08-13T20:00:00Z");
    assert_eq!(rec.refreshed_at, rec.verified_at);
    assert_eq!(store.hint().unwrap().as_ref(), Some(&rec));
    // The written text loads back into the same canonical zone.
    let again = Zone::load(&store.zone_path()).unwrap();
    assert_eq!(again.records(), zone.records());
    // Same serial again, and an older one than a newer current: refused.
    let err = accept(cand, Some(&rec), false, &store).unwrap_err();
    assert!(
        matches!(
            err,
            AcceptError::NotNewer {
                candidate: SERIAL,
                current: SERIAL
            }
        ),
        "{err}"
    );
    let newer = AcceptedRecord {
        serial: 2026080100,
        ..rec.clone()
    };
    let err = accept(cand, Some(&newer), false, &store).unwrap_err();
    assert_eq!(
        err.to_string(),
        "zone serial 2026073102 is not newer than the current serial 2026080100"
    );
    let forced = accept(cand, Some(&newer), true, &store).unwrap();
    assert!(forced.forced);
    // An unverified zone is never written.
    let bad = verify(zone, &only_2024, at());
    let store2 = ZoneStore::new(&dir.path().join("other"));
    let err = accept(
        Candidate {
            zone,
            verification: &bad,
            source: "test",
        },
        None,
        true,
        &store2,
    )
    .unwrap_err();
    assert!(matches!(err, AcceptError::NotVerified { .. }));
    assert!(!store2.zone_path().exists() && !store2.dir.exists());
}

#[test]
fn older_and_placeholder_zones() {
    let anchors = anchors();
    let data = common::data_dir();
    // Pre-ZONEMD zone in AXFR-dump form: DNSSEC verifies as of its date,
    // ZONEMD is missing, so the zone is not verified.
    let axfr = Zone::load(&data.join("older/root.zone.2023042001.axfr")).unwrap();
    assert_eq!(axfr.len(), 24816);
    let v = verify(&axfr, &anchors, "2023-04-21T00:00:00Z".parse().unwrap());
    let report = v.dnssec.as_ref().unwrap();
    assert_eq!(report.anchors_used, [20326]);
    assert_eq!(v.zonemd, Err(ZonemdError::Missing));
    assert!(!v.is_verified());
    // 2023 placeholder with private hash algorithm 241: cannot be verified,
    // reported distinctly.
    let placeholder = Zone::load(&data.join("stripped/root.zone.2023110400")).unwrap();
    let z = imrs_zone::zonemd::verify(&placeholder).unwrap_err();
    assert!(
        matches!(z, ZonemdError::Unsupported { ref records } if records[0].hash_algorithm == 241),
        "{z}"
    );
    assert!(z.to_string().starts_with("zone cannot be verified"), "{z}");
}
