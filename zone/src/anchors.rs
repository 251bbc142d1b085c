//! DNSSEC trust anchors from IANA's `root-anchors.xml`.
//!
//! Owns parsing the XML (RFC 9718 format: `KeyDigest` elements with
//! `validFrom`/`validUntil`) and answering which anchors are valid at a given
//! time. Facts: KSK-2017 (20326) and KSK-2024 (38696) are both current; never
//! hard-code one (docs/facts.md, "Trust anchors").

use std::path::{Path, PathBuf};

use jiff::Timestamp;
use quick_xml::Reader;
use quick_xml::events::Event;

use crate::input::{self, InputError};

/// The largest anchors file [`TrustAnchors::load`] reads: IANA's is under 2 KB.
pub const MAX_ANCHORS_BYTES: u64 = 1 << 20;

/// The path the appliance keeps the anchors at.
pub const DEFAULT_ANCHORS_PATH: &str = "/etc/imrs/root-anchors.xml";

/// One `KeyDigest` element: a DS record for a root KSK with a validity window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustAnchor {
    /// The element's `id` attribute.
    pub id: String,
    /// Key tag of the KSK.
    pub key_tag: u16,
    /// DNSSEC algorithm number of the KSK.
    pub algorithm: u8,
    /// DS digest type (2 = SHA-256).
    pub digest_type: u8,
    /// The DS digest.
    pub digest: Vec<u8>,
    /// Start of validity.
    pub valid_from: Timestamp,
    /// End of validity, if any.
    pub valid_until: Option<Timestamp>,
}

impl TrustAnchor {
    /// Whether the anchor is valid at `at` (`validFrom <= at < validUntil`).
    pub fn is_valid_at(&self, at: Timestamp) -> bool {
        self.valid_from <= at && self.valid_until.is_none_or(|until| at < until)
    }
}

/// The anchors of one `TrustAnchor` document for the root zone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustAnchors {
    /// Every `KeyDigest`, in document order, valid or not.
    pub anchors: Vec<TrustAnchor>,
}

/// Errors from reading trust anchors.
#[derive(Debug, thiserror::Error)]
pub enum AnchorsError {
    /// The file could not be read: missing, unreadable, not a regular file, over
    /// [`MAX_ANCHORS_BYTES`], or changed while it was read.
    #[error("trust anchors {path} not read")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: InputError,
    },
    /// The file is not UTF-8 text.
    #[error("trust anchors {path}: not UTF-8 text (byte {offset})")]
    NotText {
        /// The file.
        path: PathBuf,
        /// Offset of the first byte that is not UTF-8.
        offset: usize,
    },
    /// The XML is malformed.
    #[error("malformed trust anchor XML")]
    Xml {
        /// The cause.
        #[source]
        source: quick_xml::Error,
    },
    /// An attribute could not be read.
    #[error("malformed attribute in trust anchor XML")]
    Attribute {
        /// The cause.
        #[source]
        source: quick_xml::events::attributes::AttrError,
    },
    /// The anchors are not for the root zone.
    #[error("trust anchors are for zone {zone:?}, not the root")]
    WrongZone {
        /// The `Zone` element's content.
        zone: String,
    },
    /// A field of a `KeyDigest` is missing or malformed.
    #[error("KeyDigest {id:?}: bad or missing {field}: {value:?}")]
    BadField {
        /// The `KeyDigest` id.
        id: String,
        /// Which field.
        field: &'static str,
        /// The text found (empty if missing).
        value: String,
    },
    /// A date attribute is not RFC 3339.
    #[error("KeyDigest {id:?}: bad {field} {value:?}")]
    BadTime {
        /// The `KeyDigest` id.
        id: String,
        /// `validFrom` or `validUntil`.
        field: &'static str,
        /// The attribute text.
        value: String,
        /// The cause.
        #[source]
        source: jiff::Error,
    },
    /// The document has no `KeyDigest`.
    #[error("no KeyDigest in trust anchor XML")]
    Empty,
}

#[derive(Default)]
struct Partial {
    id: String,
    valid_from: Option<Timestamp>,
    valid_until: Option<Timestamp>,
    key_tag: Option<String>,
    algorithm: Option<String>,
    digest_type: Option<String>,
    digest: Option<String>,
}

impl TrustAnchors {
    /// Reads and parses a `root-anchors.xml` file: a regular file of at most
    /// [`MAX_ANCHORS_BYTES`].
    pub fn load(path: &Path) -> Result<Self, AnchorsError> {
        let data =
            input::read_limited(path, MAX_ANCHORS_BYTES).map_err(|source| AnchorsError::Read {
                path: path.to_owned(),
                source,
            })?;
        let text = String::from_utf8(data).map_err(|e| AnchorsError::NotText {
            path: path.to_owned(),
            offset: e.utf8_error().valid_up_to(),
        })?;
        Self::parse(&text)
    }

    /// Parses the XML text of a `root-anchors.xml` document.
    pub fn parse(xml: &str) -> Result<Self, AnchorsError> {
        let mut reader = Reader::from_str(xml);
        let mut anchors = Vec::new();
        let mut current: Option<Partial> = None;
        let mut element = String::new();
        let mut text = String::new();
        loop {
            match reader
                .read_event()
                .map_err(|source| AnchorsError::Xml { source })?
            {
                Event::Start(e) => {
                    element = e.local_name().as_ref().to_owned();
                    text.clear();
                    if element == "KeyDigest" {
                        let mut p = Partial::default();
                        for attr in e.attributes() {
                            let attr = attr.map_err(|source| AnchorsError::Attribute { source })?;
                            let value = attr
                                .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                                .map_err(|source| AnchorsError::Xml { source })?
                                .into_owned();
                            match attr.key.local_name().as_ref() {
                                "id" => p.id = value,
                                "validFrom" => {
                                    p.valid_from = Some(parse_time(&p.id, "validFrom", &value)?)
                                }
                                "validUntil" => {
                                    p.valid_until = Some(parse_time(&p.id, "validUntil", &value)?)
                                }
                                _ => {}
                            }
                        }
                        current = Some(p);
                    }
                }
                Event::Text(t) => text.push_str(t.xml10_content().trim()),
                Event::GeneralRef(r) => {
                    // Character references are not expected in these fields;
                    // keep them visible so a bad field is reported as such.
                    text.push('&');
                    text.push_str(&r.into_inner());
                    text.push(';');
                }
                Event::End(e) => {
                    let name = e.local_name();
                    let value = std::mem::take(&mut text);
                    match (name.as_ref(), current.as_mut()) {
                        ("Zone", _) if value != "." => {
                            return Err(AnchorsError::WrongZone { zone: value });
                        }
                        ("KeyTag", Some(p)) => p.key_tag = Some(value),
                        ("Algorithm", Some(p)) => p.algorithm = Some(value),
                        ("DigestType", Some(p)) => p.digest_type = Some(value),
                        ("Digest", Some(p)) => p.digest = Some(value),
                        ("KeyDigest", Some(_)) => {
                            if let Some(p) = current.take() {
                                anchors.push(finish(p)?);
                            }
                        }
                        _ => {}
                    }
                    element.clear();
                }
                Event::Eof => break,
                _ => {}
            }
        }
        if anchors.is_empty() {
            return Err(AnchorsError::Empty);
        }
        Ok(TrustAnchors { anchors })
    }

    /// The anchors valid at `at`.
    pub fn valid_at(&self, at: Timestamp) -> impl Iterator<Item = &TrustAnchor> {
        self.anchors.iter().filter(move |a| a.is_valid_at(at))
    }
}

fn parse_time(id: &str, field: &'static str, value: &str) -> Result<Timestamp, AnchorsError> {
    value.parse().map_err(|source| AnchorsError::BadTime {
        id: id.to_owned(),
        field,
        value: value.to_owned(),
        source,
    })
}

fn finish(p: Partial) -> Result<TrustAnchor, AnchorsError> {
    let bad = |field: &'static str, value: &Option<String>| AnchorsError::BadField {
        id: p.id.clone(),
        field,
        value: value.clone().unwrap_or_default(),
    };
    let key_tag = p
        .key_tag
        .as_deref()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| bad("KeyTag", &p.key_tag))?;
    let algorithm = p
        .algorithm
        .as_deref()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| bad("Algorithm", &p.algorithm))?;
    let digest_type = p
        .digest_type
        .as_deref()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| bad("DigestType", &p.digest_type))?;
    let digest = p
        .digest
        .as_deref()
        .and_then(|v| hex::decode(v).ok())
        .filter(|d| !d.is_empty())
        .ok_or_else(|| bad("Digest", &p.digest))?;
    let valid_from = p.valid_from.ok_or_else(|| bad("validFrom", &None))?;
    Ok(TrustAnchor {
        id: p.id,
        key_tag,
        algorithm,
        digest_type,
        digest,
        valid_from,
        valid_until: p.valid_until,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const REAL: &str = include_str!("../../images/files/root-anchors.xml");

    #[test]
    fn parses_iana_file() {
        let a = TrustAnchors::parse(REAL).unwrap();
        let tags: Vec<u16> = a.anchors.iter().map(|a| a.key_tag).collect();
        assert_eq!(tags, [19036, 20326, 38696]);
        assert_eq!(a.anchors[1].algorithm, 8);
        assert_eq!(a.anchors[1].digest_type, 2);
        assert_eq!(
            hex::encode_upper(&a.anchors[1].digest),
            "E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D"
        );
        assert!(a.anchors[0].valid_until.is_some());
        let at: Timestamp = "2026-08-01T00:00:00Z".parse().unwrap();
        let valid: Vec<u16> = a.valid_at(at).map(|a| a.key_tag).collect();
        assert_eq!(valid, [20326, 38696]);
        let at: Timestamp = "2018-01-01T00:00:00Z".parse().unwrap();
        let valid: Vec<u16> = a.valid_at(at).map(|a| a.key_tag).collect();
        assert_eq!(valid, [19036, 20326]);
    }

    #[test]
    fn rejects_bad_documents() {
        let cases: &[(&str, &str)] = &[
            ("<TrustAnchor><Zone>.</Zone></TrustAnchor>", "no KeyDigest"),
            (
                "<TrustAnchor><Zone>org.</Zone></TrustAnchor>",
                "not the root",
            ),
            (
                "<TrustAnchor><Zone>.</Zone><KeyDigest id=\"x\" validFrom=\"2017-02-02T00:00:00+00:00\">\
                 <KeyTag>abc</KeyTag><Algorithm>8</Algorithm><DigestType>2</DigestType>\
                 <Digest>00</Digest></KeyDigest></TrustAnchor>",
                "KeyTag",
            ),
            (
                "<TrustAnchor><Zone>.</Zone><KeyDigest id=\"x\" validFrom=\"yesterday\">\
                 <KeyTag>1</KeyTag></KeyDigest></TrustAnchor>",
                "validFrom",
            ),
            (
                "<TrustAnchor><Zone>.</Zone><KeyDigest id=\"x\" validFrom=\"2017-02-02T00:00:00+00:00\">\
                 <KeyTag>1</KeyTag><Algorithm>8</Algorithm><DigestType>2</DigestType>\
                 <Digest>XYZ</Digest></KeyDigest></TrustAnchor>",
                "Digest",
            ),
            ("<TrustAnchor><Zone>.</Zone></Other>", "malformed"),
        ];
        for (xml, want) in cases {
            let err = TrustAnchors::parse(xml).unwrap_err().to_string();
            assert!(err.contains(want), "{xml}: {err}");
        }
    }

    #[test]
    fn load_reads_only_a_bounded_regular_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("root-anchors.xml");
        std::fs::write(&p, REAL).unwrap();
        assert_eq!(TrustAnchors::load(&p).unwrap().anchors.len(), 3);
        // `--anchors /dev/zero` once grew to 21 GB: refused before any read.
        let err = TrustAnchors::load(Path::new("/dev/zero")).unwrap_err();
        let msg = crate::error_chain(&err);
        assert!(
            msg.contains("/dev/zero") && msg.contains("character device"),
            "{msg}"
        );
        // Over the limit (sparse: nothing is written or read).
        let big = d.path().join("big.xml");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(MAX_ANCHORS_BYTES + 1)
            .unwrap();
        let msg = crate::error_chain(&TrustAnchors::load(&big).unwrap_err());
        assert!(msg.contains("over the limit of 1 MiB"), "{msg}");
        std::fs::write(&big, b"\xff\xfe<").unwrap();
        let msg = TrustAnchors::load(&big).unwrap_err().to_string();
        assert!(msg.contains("not UTF-8 text (byte 0)"), "{msg}");
    }
}
