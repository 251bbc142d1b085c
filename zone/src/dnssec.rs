//! DNSSEC verification of a whole signed zone against trust anchors.
//!
//! Owns: the chain from the IANA anchors to the apex DNSKEY RRset (DS digest
//! of a KSK matching an anchor valid at the verification time, and a valid
//! RRSIG over the DNSKEY RRset by that key), the verification of every RRSIG
//! in the zone (each zone key prepared once by [`crate::crypto`], signatures
//! spread over all cores with rayon), signature validity windows, that every authoritative
//! RRset is signed (delegation NS and glue are not; DS and NSEC at
//! delegations are), the NSEC chain, and apex sanity.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use domain::base::iana::Rtype;
use jiff::Timestamp;
use rayon::prelude::*;

use crate::anchors::TrustAnchors;
use crate::crypto::{Hash, Hasher, VerifyingKey};
use crate::name::{WireName, lowercase_wire};
use crate::zone::{Record, Zone};

/// What DNSSEC verification established.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DnssecReport {
    /// RRSIG records verified cryptographically (all of them).
    pub signatures_verified: usize,
    /// Authoritative RRsets found signed.
    pub rrsets_signed: usize,
    /// NSEC records checked.
    pub nsec_checked: usize,
    /// Key tags of the anchored KSKs whose signature over the DNSKEY RRset verified.
    pub anchors_used: Vec<u16>,
    /// Key tags of all DNSKEYs at the apex.
    pub zone_keys: Vec<u16>,
    /// The earliest expiration among the verified signatures (RFC 3339): after it the zone no
    /// longer verifies, whatever anyone wrote about it.
    pub signatures_valid_until: String,
}

/// Why a zone fails DNSSEC verification. Each variant names the record,
/// RRset or signature concerned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DnssecError {
    /// Not exactly one SOA at the apex.
    #[error("zone apex has {count} SOA records, need exactly one")]
    SoaCount {
        /// How many.
        count: usize,
    },
    /// No NS RRset at the apex.
    #[error("no NS RRset at the zone apex")]
    NoApexNs,
    /// No DNSKEY RRset at the apex.
    #[error("no DNSKEY RRset at the zone apex")]
    NoDnskey,
    /// NSEC3 zones are not handled (the root uses NSEC).
    #[error("zone uses NSEC3, which this verifier does not handle")]
    Nsec3,
    /// No apex DNSKEY matches a trust anchor valid at the verification time.
    #[error(
        "no DNSKEY matches a trust anchor valid at {at} (valid anchors: {anchors:?}; zone keys: {keys:?})"
    )]
    NoAnchoredKey {
        /// Key tags of the anchors valid at `at`.
        anchors: Vec<u16>,
        /// Key tags of the zone's DNSKEYs.
        keys: Vec<u16>,
        /// The verification time.
        at: Timestamp,
    },
    /// Anchored keys exist, but none has a valid RRSIG over the DNSKEY RRset.
    #[error("DNSKEY RRset has no valid signature by an anchored key (anchored keys: {anchored:?})")]
    DnskeyNotSignedByAnchor {
        /// Key tags of the DNSKEYs matching an anchor.
        anchored: Vec<u16>,
    },
    /// An RRSIG RDATA that cannot be decoded.
    #[error("malformed RRSIG at {owner}")]
    MalformedRrsig {
        /// Owner of the RRSIG.
        owner: String,
    },
    /// The signer is not the zone apex.
    #[error("RRSIG {owner} {covered} key {key_tag}: signer {signer} is not the zone apex")]
    ForeignSigner {
        /// Owner of the RRSIG.
        owner: String,
        /// Type covered.
        covered: Rtype,
        /// Key tag.
        key_tag: u16,
        /// Signer name.
        signer: String,
    },
    /// Labels field larger than the owner's label count.
    #[error(
        "RRSIG {owner} {covered} key {key_tag}: labels field {labels} exceeds the owner's labels"
    )]
    BadLabels {
        /// Owner of the RRSIG.
        owner: String,
        /// Type covered.
        covered: Rtype,
        /// Key tag.
        key_tag: u16,
        /// The labels field.
        labels: u8,
    },
    /// The RRSIG covers an RRset that does not exist.
    #[error("RRSIG {owner} {covered} key {key_tag}: no such RRset")]
    OrphanSignature {
        /// Owner of the RRSIG.
        owner: String,
        /// Type covered.
        covered: Rtype,
        /// Key tag.
        key_tag: u16,
    },
    /// No apex DNSKEY has the RRSIG's key tag and algorithm.
    #[error("RRSIG {owner} {covered} key {key_tag} algorithm {algorithm}: no such DNSKEY")]
    UnknownKey {
        /// Owner of the RRSIG.
        owner: String,
        /// Type covered.
        covered: Rtype,
        /// Key tag.
        key_tag: u16,
        /// Algorithm number.
        algorithm: u8,
    },
    /// The signature is not valid yet at the verification time.
    #[error(
        "RRSIG {owner} {covered} key {key_tag}: not valid before {inception} (verifying at {at})"
    )]
    NotYetValid {
        /// Owner of the RRSIG.
        owner: String,
        /// Type covered.
        covered: Rtype,
        /// Key tag.
        key_tag: u16,
        /// Inception time.
        inception: Timestamp,
        /// The verification time.
        at: Timestamp,
    },
    /// The signature has expired at the verification time.
    #[error("RRSIG {owner} {covered} key {key_tag}: expired at {expiration} (verifying at {at})")]
    Expired {
        /// Owner of the RRSIG.
        owner: String,
        /// Type covered.
        covered: Rtype,
        /// Key tag.
        key_tag: u16,
        /// Expiration time.
        expiration: Timestamp,
        /// The verification time.
        at: Timestamp,
    },
    /// The cryptographic check failed.
    #[error("RRSIG {owner} {covered} key {key_tag}: signature does not verify")]
    BadSignature {
        /// Owner of the RRSIG.
        owner: String,
        /// Type covered.
        covered: Rtype,
        /// Key tag.
        key_tag: u16,
    },
    /// An authoritative RRset has no valid signature.
    #[error("RRset {owner} {rtype} is not signed")]
    Unsigned {
        /// Owner.
        owner: String,
        /// Type.
        rtype: Rtype,
    },
    /// A name that needs an NSEC record has none (or several).
    #[error("{owner}: expected one NSEC record, found {count}")]
    NsecCount {
        /// The name.
        owner: String,
        /// How many NSEC records it has.
        count: usize,
    },
    /// An NSEC record at a name that must not have one (glue, below a cut).
    #[error("{owner}: NSEC record at a non-authoritative name")]
    UnexpectedNsec {
        /// The name.
        owner: String,
    },
    /// The NSEC next name breaks the chain.
    #[error("NSEC {owner}: next name {next}, expected {expected}")]
    NsecNext {
        /// Owner of the NSEC.
        owner: String,
        /// The next name in the record.
        next: String,
        /// The next authoritative name in the zone.
        expected: String,
    },
    /// The NSEC type bitmap differs from the types present.
    #[error("NSEC {owner}: type bitmap lists [{listed}], name has [{present}]")]
    NsecBitmap {
        /// Owner of the NSEC.
        owner: String,
        /// Types in the bitmap.
        listed: String,
        /// Types present at the name.
        present: String,
    },
    /// An NSEC RDATA that cannot be decoded.
    #[error("malformed NSEC at {owner}")]
    MalformedNsec {
        /// Owner of the NSEC.
        owner: String,
    },
}

/// An RRSIG RDATA decoded just enough to verify it.
struct Rrsig<'a> {
    covered: Rtype,
    algorithm: u8,
    labels: u8,
    original_ttl: u32,
    expiration: u32,
    inception: u32,
    key_tag: u16,
    signer: &'a [u8],
    /// RDATA up to and including the signer name (the signed prefix).
    head: &'a [u8],
    signature: &'a [u8],
}

impl<'a> Rrsig<'a> {
    fn parse(rdata: &'a [u8]) -> Option<Self> {
        if rdata.len() < 19 {
            return None;
        }
        let mut pos = 18;
        loop {
            let len = *rdata.get(pos)? as usize;
            if len > 63 {
                return None;
            }
            pos += 1 + len;
            if len == 0 {
                break;
            }
        }
        if pos > rdata.len() {
            return None;
        }
        let u32_at =
            |i: usize| u32::from_be_bytes([rdata[i], rdata[i + 1], rdata[i + 2], rdata[i + 3]]);
        Some(Rrsig {
            covered: Rtype::from_int(u16::from_be_bytes([rdata[0], rdata[1]])),
            algorithm: rdata[2],
            labels: rdata[3],
            original_ttl: u32_at(4),
            expiration: u32_at(8),
            inception: u32_at(12),
            key_tag: u16::from_be_bytes([rdata[16], rdata[17]]),
            signer: &rdata[18..pos],
            head: &rdata[..pos],
            signature: &rdata[pos..],
        })
    }
}

/// A zone key ready for verification.
struct ZoneKey {
    key_tag: u16,
    algorithm: u8,
    /// `None` if the algorithm is not supported or the key is malformed.
    public: Option<VerifyingKey>,
}

/// RFC 4034 Appendix B key tag of DNSKEY RDATA.
pub fn key_tag(dnskey_rdata: &[u8]) -> u16 {
    if dnskey_rdata.len() >= 4 && dnskey_rdata[3] == 1 {
        // RSA/MD5: the tag is taken from the modulus (RFC 4034 B.1).
        let n = dnskey_rdata.len();
        if n >= 3 {
            return u16::from_be_bytes([dnskey_rdata[n - 3], dnskey_rdata[n - 2]]);
        }
    }
    let mut ac: u32 = 0;
    for (i, &b) in dnskey_rdata.iter().enumerate() {
        ac += if i & 1 == 1 {
            b as u32
        } else {
            (b as u32) << 8
        };
    }
    ac += (ac >> 16) & 0xffff;
    (ac & 0xffff) as u16
}

/// The DS digest of a DNSKEY (RFC 4034 section 5.1.4), `None` for digest
/// types other than SHA-1 (1), SHA-256 (2) and SHA-384 (4).
pub fn ds_digest(owner: &WireName, dnskey_rdata: &[u8], digest_type: u8) -> Option<Vec<u8>> {
    let hash = match digest_type {
        1 => Hash::Sha1,
        2 => Hash::Sha256,
        4 => Hash::Sha384,
        _ => return None,
    };
    let mut d = Hasher::new(hash);
    d.update(owner.as_wire());
    d.update(dnskey_rdata);
    Some(d.finish())
}

fn ts(secs: u32, at: Timestamp) -> Timestamp {
    // RRSIG times are serial numbers modulo 2^32 (RFC 4034 section 3.1.5):
    // pick the representative closest to `at`.
    let at_s = at.as_second();
    let delta = secs.wrapping_sub(at_s as u32) as i32 as i64;
    Timestamp::from_second(at_s + delta).unwrap_or(at)
}

/// The span in which every RRSIG of a zone is valid (empty when the latest inception is after
/// the earliest expiration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignatureWindow {
    /// The latest inception of any RRSIG.
    pub latest_inception: Timestamp,
    /// The earliest expiration of any RRSIG.
    pub earliest_expiration: Timestamp,
}

/// The [`SignatureWindow`] of `zone`, with the RRSIG times (serial numbers modulo 2^32) read as
/// the instants nearest `near`; `None` when the zone has no well-formed RRSIG.
pub fn signature_window(zone: &Zone, near: Timestamp) -> Option<SignatureWindow> {
    zone.records()
        .iter()
        .filter(|r| r.rtype == Rtype::RRSIG)
        .filter_map(|r| Rrsig::parse(&r.rdata))
        .map(|sig| (ts(sig.inception, near), ts(sig.expiration, near)))
        .reduce(|(i1, e1), (i2, e2)| (i1.max(i2), e1.min(e2)))
        .map(|(latest_inception, earliest_expiration)| SignatureWindow {
            latest_inception,
            earliest_expiration,
        })
}

/// Verifies the DNSSEC signatures, chain of trust and NSEC chain of `zone`
/// at time `at`. Returns the first failure in canonical order.
pub fn verify(
    zone: &Zone,
    anchors: &TrustAnchors,
    at: Timestamp,
) -> Result<DnssecReport, DnssecError> {
    let apex = zone.apex();
    let records = zone.records();
    let soas = zone.apex_soas().count();
    if soas != 1 {
        return Err(DnssecError::SoaCount { count: soas });
    }
    if zone.rrset(apex, Rtype::NS).is_empty() {
        return Err(DnssecError::NoApexNs);
    }
    if !zone.rrset(apex, Rtype::NSEC3PARAM).is_empty() {
        return Err(DnssecError::Nsec3);
    }
    let dnskeys = zone.rrset(apex, Rtype::DNSKEY);
    if dnskeys.is_empty() {
        return Err(DnssecError::NoDnskey);
    }
    let keys: Vec<ZoneKey> = dnskeys
        .iter()
        .map(|r| ZoneKey {
            key_tag: key_tag(&r.rdata),
            algorithm: r.rdata.get(3).copied().unwrap_or(0),
            // Only zone keys (flag bit 7) of protocol 3 may sign zone data
            // (RFC 4034 section 2.1).
            public: (r.rdata.len() >= 4 && r.rdata[0] & 0x01 != 0 && r.rdata[2] == 3)
                .then(|| VerifyingKey::from_dnskey(&r.rdata).ok())
                .flatten(),
        })
        .collect();

    // Trust anchors -> DNSKEY: which apex keys match an anchor valid at `at`.
    let valid_anchors: Vec<_> = anchors.valid_at(at).collect();
    let anchored: Vec<usize> = dnskeys
        .iter()
        .enumerate()
        .filter(|(i, r)| {
            let flags = u16::from_be_bytes([r.rdata[0], r.rdata[1]]);
            let revoked = flags & 0x0080 != 0;
            !revoked
                && valid_anchors.iter().any(|a| {
                    a.key_tag == keys[*i].key_tag
                        && a.algorithm == keys[*i].algorithm
                        && ds_digest(apex, &r.rdata, a.digest_type).as_deref()
                            == Some(&a.digest[..])
                })
        })
        .map(|(i, _)| i)
        .collect();
    if anchored.is_empty() {
        return Err(DnssecError::NoAnchoredKey {
            anchors: valid_anchors.iter().map(|a| a.key_tag).collect(),
            keys: keys.iter().map(|k| k.key_tag).collect(),
            at,
        });
    }

    // Every RRSIG, in parallel; the zone's structure (which RRsets must be
    // signed, the NSEC chain) is checked at the same time.
    let at32 = at.as_second() as u32;
    let sig_indices: Vec<usize> = records
        .iter()
        .enumerate()
        .filter(|(_, r)| r.rtype == Rtype::RRSIG)
        .map(|(i, _)| i)
        .collect();
    let (results, structure) = rayon::join(
        || {
            sig_indices
                .par_iter()
                .with_min_len(16)
                .map_init(Vec::new, |buf, &i| {
                    verify_one(zone, i, &keys, at, at32, buf)
                })
                .collect::<Vec<Result<SigOk, DnssecError>>>()
        },
        || check_structure(zone),
    );
    let mut signed = vec![false; records.len()];
    let mut anchors_used = BTreeSet::new();
    let mut valid_until: Option<Timestamp> = None;
    for res in &results {
        let ok = res.clone()?;
        signed[ok.rrset_start] = true;
        valid_until = Some(valid_until.map_or(ok.expiration, |v| v.min(ok.expiration)));
        if ok.covered == Rtype::DNSKEY
            && ok.owner_is_apex
            && let Some(&k) = anchored.iter().find(|&&k| ok.key_index == k)
        {
            anchors_used.insert(keys[k].key_tag);
        }
    }
    if anchors_used.is_empty() {
        return Err(DnssecError::DnskeyNotSignedByAnchor {
            anchored: anchored.iter().map(|&k| keys[k].key_tag).collect(),
        });
    }

    // Signing coverage, then the NSEC chain.
    let Structure {
        must_be_signed,
        nsec,
    } = structure;
    if let Some(&k) = must_be_signed.iter().find(|&&k| !signed[k]) {
        return Err(DnssecError::Unsigned {
            owner: records[k].owner.to_string(),
            rtype: records[k].rtype,
        });
    }
    let nsec_checked = nsec?;

    Ok(DnssecReport {
        signatures_verified: sig_indices.len(),
        rrsets_signed: must_be_signed.len(),
        nsec_checked,
        anchors_used: anchors_used.into_iter().collect(),
        zone_keys: keys.iter().map(|k| k.key_tag).collect(),
        // The DNSKEY RRset is always signed, so there is at least one signature.
        signatures_valid_until: valid_until.unwrap_or(at).to_string(),
    })
}

#[derive(Clone)]
struct SigOk {
    rrset_start: usize,
    covered: Rtype,
    owner_is_apex: bool,
    key_index: usize,
    /// When the signature expires.
    expiration: Timestamp,
}

/// Verifies the RRSIG at `records[index]`; `data` is scratch space for
/// the signed data, reused between calls.
fn verify_one(
    zone: &Zone,
    index: usize,
    keys: &[ZoneKey],
    at: Timestamp,
    at32: u32,
    data: &mut Vec<u8>,
) -> Result<SigOk, DnssecError> {
    let records = zone.records();
    let rec = &records[index];
    let owner = || rec.owner.to_string();
    let sig =
        Rrsig::parse(&rec.rdata).ok_or_else(|| DnssecError::MalformedRrsig { owner: owner() })?;
    if sig.signer != zone.apex().as_wire() {
        let mut signer = String::new();
        let _ = crate::name::fmt_wire(sig.signer, &mut signer);
        return Err(DnssecError::ForeignSigner {
            owner: owner(),
            covered: sig.covered,
            key_tag: sig.key_tag,
            signer,
        });
    }
    let owner_labels = rec.owner.rrsig_label_count();
    if sig.labels > owner_labels {
        return Err(DnssecError::BadLabels {
            owner: owner(),
            covered: sig.covered,
            key_tag: sig.key_tag,
            labels: sig.labels,
        });
    }
    let (rrset_start, rrset) = rrset_of_owner_at(records, index, sig.covered);
    if rrset.is_empty() {
        return Err(DnssecError::OrphanSignature {
            owner: owner(),
            covered: sig.covered,
            key_tag: sig.key_tag,
        });
    }
    // Validity window in serial arithmetic (RFC 4034 section 3.1.5).
    if (at32.wrapping_sub(sig.inception) as i32) < 0 {
        return Err(DnssecError::NotYetValid {
            owner: owner(),
            covered: sig.covered,
            key_tag: sig.key_tag,
            inception: ts(sig.inception, at),
            at,
        });
    }
    if (sig.expiration.wrapping_sub(at32) as i32) < 0 {
        return Err(DnssecError::Expired {
            owner: owner(),
            covered: sig.covered,
            key_tag: sig.key_tag,
            expiration: ts(sig.expiration, at),
            at,
        });
    }
    // Signed data (RFC 4034 section 3.1.8.1): the RRSIG RDATA without the
    // signature (signer name lowercased), then each record of the RRset in
    // canonical order with the original TTL; a wildcard owner per 5.3.2.
    data.clear();
    data.extend_from_slice(sig.head);
    lowercase_wire(&mut data[18..]);
    let owner_at = data.len();
    if sig.labels < owner_labels {
        data.extend_from_slice(&[1, b'*']);
        data.extend_from_slice(
            rec.owner
                .suffix(rec.owner.label_count() - sig.labels)
                .as_wire(),
        );
    } else {
        data.extend_from_slice(rec.owner.as_wire());
    }
    let owner_len = data.len() - owner_at;
    for (n, r) in rrset.iter().enumerate() {
        if n > 0 {
            data.extend_from_within(owner_at..owner_at + owner_len);
        }
        data.extend_from_slice(&r.rtype.to_int().to_be_bytes());
        data.extend_from_slice(&r.class.to_int().to_be_bytes());
        data.extend_from_slice(&sig.original_ttl.to_be_bytes());
        data.extend_from_slice(&(r.rdata.len() as u16).to_be_bytes());
        data.extend_from_slice(&r.rdata);
    }
    let mut found = false;
    for (i, key) in keys.iter().enumerate() {
        if key.key_tag != sig.key_tag || key.algorithm != sig.algorithm {
            continue;
        }
        let Some(public) = &key.public else { continue };
        found = true;
        if public.verify(data, sig.signature) {
            return Ok(SigOk {
                rrset_start,
                covered: sig.covered,
                owner_is_apex: rec.owner == *zone.apex(),
                key_index: i,
                expiration: ts(sig.expiration, at),
            });
        }
    }
    if !found {
        return Err(DnssecError::UnknownKey {
            owner: owner(),
            covered: sig.covered,
            key_tag: sig.key_tag,
            algorithm: sig.algorithm,
        });
    }
    Err(DnssecError::BadSignature {
        owner: owner(),
        covered: sig.covered,
        key_tag: sig.key_tag,
    })
}

/// The RRset of type `rtype` owned by the owner of `records[index]`, and
/// where it starts. Records of one owner are adjacent, so the search stays
/// among them.
fn rrset_of_owner_at(records: &[Record], index: usize, rtype: Rtype) -> (usize, &[Record]) {
    let owner = &records[index].owner;
    let first = index
        - records[..index]
            .iter()
            .rev()
            .take_while(|r| r.owner == *owner)
            .count();
    let end = index
        + records[index..]
            .iter()
            .take_while(|r| r.owner == *owner)
            .count();
    let run = &records[first..end];
    let start = run.partition_point(|r| r.rtype.to_int() < rtype.to_int());
    let len = run[start..].iter().take_while(|r| r.rtype == rtype).count();
    (first + start, &run[start..start + len])
}

/// What the zone's structure requires, found without the signatures.
struct Structure {
    /// Where each authoritative RRset starts (at a cut: DS and NSEC; not NS),
    /// in canonical order: each must carry a valid signature.
    must_be_signed: Vec<usize>,
    /// The NSEC chain check: NSEC records checked, or the first failure.
    nsec: Result<usize, DnssecError>,
}

/// Walks the zone in canonical order: finds every authoritative RRset (which
/// must be signed), and checks that every authoritative name and delegation
/// point has an NSEC whose next name and bitmap are right, and no other name
/// has one.
fn check_structure(zone: &Zone) -> Structure {
    let apex = zone.apex();
    let records = zone.records();
    // Names in canonical order, each with its record range.
    let mut names: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    while i < records.len() {
        let mut j = i + 1;
        while j < records.len() && records[j].owner == records[i].owner {
            j += 1;
        }
        names.push((i, j));
        i = j;
    }
    // Classify names: authoritative, delegation point, or below a cut (glue).
    let mut kinds = Vec::with_capacity(names.len());
    let mut cut: Option<&WireName> = None;
    for &(s, e) in &names {
        let owner = &records[s].owner;
        if let Some(c) = cut {
            if owner.is_at_or_below(c) {
                kinds.push(Kind::Glue);
                continue;
            }
            cut = None;
        }
        let has_ns = records[s..e].iter().any(|r| r.rtype == Rtype::NS);
        if has_ns && owner != apex {
            cut = Some(owner);
            kinds.push(Kind::Cut);
        } else {
            kinds.push(Kind::Auth);
        }
    }

    // Every authoritative RRset (at a cut: DS and NSEC; not NS).
    let mut must_be_signed = Vec::new();
    for (n, &(s, e)) in names.iter().enumerate() {
        if kinds[n] == Kind::Glue {
            continue;
        }
        let mut k = s;
        while k < e {
            let rtype = records[k].rtype;
            let mut l = k + 1;
            while l < e && records[l].rtype == rtype {
                l += 1;
            }
            let authoritative = match kinds[n] {
                Kind::Auth => rtype != Rtype::RRSIG,
                Kind::Cut => rtype == Rtype::DS || rtype == Rtype::NSEC,
                Kind::Glue => false,
            };
            if authoritative {
                must_be_signed.push(k);
            }
            k = l;
        }
    }
    let nsec = check_nsec_chain(zone, &names, &kinds);
    Structure {
        must_be_signed,
        nsec,
    }
}

/// Authoritative data, a delegation point, or data below a cut (glue).
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Auth,
    Cut,
    Glue,
}

/// The NSEC chain over authoritative names and delegation points.
fn check_nsec_chain(
    zone: &Zone,
    names: &[(usize, usize)],
    kinds: &[Kind],
) -> Result<usize, DnssecError> {
    let apex = zone.apex();
    let records = zone.records();
    // NSEC chain over authoritative names and delegation points.
    let chain: Vec<usize> = (0..names.len())
        .filter(|&n| kinds[n] != Kind::Glue)
        .collect();
    let mut nsec_checked = 0;
    for (n, &(s, e)) in names.iter().enumerate() {
        let nsecs: Vec<&Record> = records[s..e]
            .iter()
            .filter(|r| r.rtype == Rtype::NSEC)
            .collect();
        if kinds[n] == Kind::Glue {
            if !nsecs.is_empty() {
                return Err(DnssecError::UnexpectedNsec {
                    owner: records[s].owner.to_string(),
                });
            }
            continue;
        }
        let owner = &records[s].owner;
        if nsecs.len() != 1 {
            return Err(DnssecError::NsecCount {
                owner: owner.to_string(),
                count: nsecs.len(),
            });
        }
        let nsec = nsecs[0];
        let (next, bitmap) = parse_nsec(&nsec.rdata).ok_or_else(|| DnssecError::MalformedNsec {
            owner: owner.to_string(),
        })?;
        // The next authoritative name, wrapping to the apex.
        let pos = chain.binary_search(&n).unwrap_or(0);
        let expected = match chain.get(pos + 1) {
            Some(&m) => &records[names[m].0].owner,
            None => apex,
        };
        let mut next_lc = next.to_vec();
        lowercase_wire(&mut next_lc);
        if next_lc != expected.as_wire() {
            let mut next_s = String::new();
            let _ = crate::name::fmt_wire(next, &mut next_s);
            return Err(DnssecError::NsecNext {
                owner: owner.to_string(),
                next: next_s,
                expected: expected.to_string(),
            });
        }
        let mut present: Vec<u16> = records[s..e]
            .iter()
            .map(|r| r.rtype)
            .filter(|&t| match kinds[n] {
                Kind::Cut => matches!(t, Rtype::NS | Rtype::DS | Rtype::NSEC | Rtype::RRSIG),
                _ => true,
            })
            .map(|t| t.to_int())
            .collect();
        present.dedup();
        if bitmap != present {
            return Err(DnssecError::NsecBitmap {
                owner: owner.to_string(),
                listed: type_list(&bitmap),
                present: type_list(&present),
            });
        }
        nsec_checked += 1;
    }
    Ok(nsec_checked)
}

fn type_list(types: &[u16]) -> String {
    let mut s = String::new();
    for (i, t) in types.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        let _ = write!(s, "{}", Rtype::from_int(*t));
    }
    s
}

/// Decodes NSEC RDATA into (next name wire, sorted type list).
fn parse_nsec(rdata: &[u8]) -> Option<(&[u8], Vec<u16>)> {
    let mut pos = 0;
    loop {
        let len = *rdata.get(pos)? as usize;
        pos += 1 + len;
        if len == 0 {
            break;
        }
    }
    let next = rdata.get(..pos)?;
    let mut types = Vec::new();
    let mut last_window: Option<u8> = None;
    while pos < rdata.len() {
        let window = *rdata.get(pos)?;
        let len = *rdata.get(pos + 1)? as usize;
        if len == 0 || len > 32 || last_window.is_some_and(|w| w >= window) {
            return None;
        }
        last_window = Some(window);
        let bits = rdata.get(pos + 2..pos + 2 + len)?;
        for (byte_i, &b) in bits.iter().enumerate() {
            for bit in 0..8 {
                if b & (0x80 >> bit) != 0 {
                    types.push(((window as u16) << 8) | (byte_i as u16 * 8 + bit));
                }
            }
        }
        pos += 2 + len;
    }
    Some((next, types))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_window_of_the_root_zone() {
        let zone = Zone::load(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../testdata/rootzone/root.zone.2026073102"),
        )
        .unwrap();
        let w = signature_window(&zone, Timestamp::now()).unwrap();
        // Most RRSIGs: 2026-07-31T19:00Z .. 2026-08-13T20:00Z; the DNSKEY RRSIG starts earlier
        // (07-31T00:00Z) and ends later (08-21T00:00Z).
        assert_eq!(w.latest_inception, "2026-07-31T19:00:00Z".parse().unwrap());
        assert_eq!(
            w.earliest_expiration,
            "2026-08-13T20:00:00Z".parse().unwrap()
        );
        let unsigned =
            Zone::from_text(b". 86400 IN SOA a. b. 1 1800 900 604800 86400\n. 86400 IN NS a.\n")
                .unwrap();
        assert_eq!(signature_window(&unsigned, Timestamp::now()), None);
    }

    #[test]
    fn key_tags_of_the_root_keys() {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../testdata/rootzone/root.zone.2026073102"),
        )
        .unwrap();
        let head: String = text.lines().take(30).map(|l| format!("{l}\n")).collect();
        let zone = Zone::from_text(head.as_bytes()).unwrap();
        let mut tags: Vec<u16> = zone
            .rrset(zone.apex(), Rtype::DNSKEY)
            .iter()
            .map(|r| key_tag(&r.rdata))
            .collect();
        tags.sort();
        assert_eq!(tags, [20326, 38696, 57780]);
        let ksk = zone
            .rrset(zone.apex(), Rtype::DNSKEY)
            .iter()
            .find(|r| key_tag(&r.rdata) == 20326)
            .unwrap();
        assert_eq!(
            hex::encode_upper(ds_digest(zone.apex(), &ksk.rdata, 2).unwrap()),
            "E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D"
        );
    }

    #[test]
    fn nsec_bitmap_decoding() {
        // next name "aaa." then window 0: NS(2) SOA(6) RRSIG(46) NSEC(47) DNSKEY(48);
        // window 0 byte 7 covers 56..63: ZONEMD(63).
        let mut rdata = vec![3, b'a', b'a', b'a', 0, 0, 8];
        let mut bm = [0u8; 8];
        for t in [2u16, 6, 46, 47, 48, 63] {
            bm[(t / 8) as usize] |= 0x80 >> (t % 8);
        }
        rdata.extend_from_slice(&bm);
        let (next, types) = parse_nsec(&rdata).unwrap();
        assert_eq!(next, &[3, b'a', b'a', b'a', 0]);
        assert_eq!(types, [2, 6, 46, 47, 48, 63]);
        assert!(parse_nsec(&[0, 0, 0]).is_none());
        assert_eq!(type_list(&types), "NS SOA RRSIG NSEC DNSKEY ZONEMD");
    }

    #[test]
    fn serial_time_representative() {
        let at: Timestamp = "2026-08-01T00:00:00Z".parse().unwrap();
        let t = ts(at.as_second() as u32 + 60, at);
        assert_eq!(t.as_second(), at.as_second() + 60);
    }
}
