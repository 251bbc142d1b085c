//! The in-memory zone: every record in canonical form and canonical order.
//!
//! Owns loading a zone from presentation-format text (a zone file, including
//! the `.axfr` dump variant) or from records received by AXFR, canonicalising
//! each record (RFC 4034 section 6.2: lowercase owner, canonical RDATA),
//! sorting by (owner, type, RDATA) in canonical order, removing duplicates,
//! and writing the zone back as text that NSD and Knot load.

use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use domain::base::iana::{Class, Rtype};
use domain::base::name::ToLabelIter;
use domain::base::rdata::ComposeRecordData;
use domain::base::{ParseRecordData, ParsedName};
use domain::rdata::ZoneRecordData;
use domain::zonefile::inplace::{Entry, Zonefile};

use crate::name::{WireName, lowercase_wire};

/// One resource record in canonical form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Owner name, lowercased wire format.
    pub owner: WireName,
    /// Record type.
    pub rtype: Rtype,
    /// Record class.
    pub class: Class,
    /// TTL in seconds.
    pub ttl: u32,
    /// RDATA in canonical wire format (RFC 4034 section 6.2).
    pub rdata: Box<[u8]>,
}

impl Record {
    /// Builds a record from wire-format parts, canonicalising the owner name
    /// and the RDATA (`rdata` is uncompressed wire RDATA of `rtype`).
    pub fn from_wire(
        owner: &[u8],
        rtype: Rtype,
        class: Class,
        ttl: u32,
        rdata: &[u8],
    ) -> Result<Self, LoadError> {
        let mut o = owner.to_vec();
        lowercase_wire(&mut o);
        let parsed = ZoneRecordData::<&[u8], ParsedName<&[u8]>>::parse_rdata(
            rtype,
            &mut domain::dep::octseq::Parser::from_ref(rdata),
        )
        .ok()
        .flatten();
        let canonical = match parsed {
            Some(data) => {
                let mut out = Vec::with_capacity(rdata.len());
                data.compose_canonical_rdata(&mut out)
                    .map_err(|_| LoadError::BadRdata {
                        owner: WireName::from_canonical(o.clone().into()).to_string(),
                        rtype,
                    })?;
                out
            }
            None => {
                return Err(LoadError::BadRdata {
                    owner: WireName::from_canonical(o.into()).to_string(),
                    rtype,
                });
            }
        };
        Ok(Record {
            owner: WireName::from_canonical(o.into()),
            rtype,
            class,
            ttl,
            rdata: canonical.into(),
        })
    }

    /// Canonical record order within a zone: owner, then type, then RDATA.
    fn canonical_cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.owner
            .cmp(&other.owner)
            .then_with(|| self.rtype.to_int().cmp(&other.rtype.to_int()))
            .then_with(|| self.rdata.cmp(&other.rdata))
    }

    /// The record in presentation format (one line, no trailing newline).
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = self.write_text(&mut s);
        s
    }

    fn write_text(&self, out: &mut impl fmt::Write) -> fmt::Result {
        write!(out, "{}\t{}\t{}\t{}\t", self.owner, self.ttl, self.class, self.rtype)?;
        let parsed = ZoneRecordData::<&[u8], ParsedName<&[u8]>>::parse_rdata(
            self.rtype,
            &mut domain::dep::octseq::Parser::from_ref(&self.rdata[..]),
        );
        match parsed {
            Ok(Some(data)) if !matches!(data, ZoneRecordData::Unknown(_)) => {
                write!(out, "{data}")
            }
            // RFC 3597 generic form for anything domain does not know.
            _ => {
                write!(out, "\\# {}", self.rdata.len())?;
                if !self.rdata.is_empty() {
                    write!(out, " {}", hex::encode(&self.rdata))?;
                }
                Ok(())
            }
        }
    }
}

/// Errors from loading a zone.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The zone file could not be read.
    #[error("cannot read zone file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The zone text does not parse.
    #[error("zone text does not parse")]
    Parse {
        /// The cause, with line and column.
        #[source]
        source: domain::zonefile::inplace::Error,
    },
    /// The zone file uses `$INCLUDE`, which a root zone never needs.
    #[error("$INCLUDE is not supported")]
    Include,
    /// RDATA that cannot be brought into canonical form.
    #[error("bad RDATA in {owner} {rtype}")]
    BadRdata {
        /// Owner name of the record.
        owner: String,
        /// Its type.
        rtype: Rtype,
    },
    /// The zone has no SOA record, so it has no apex.
    #[error("no SOA record")]
    NoSoa,
    /// A record lies outside the zone.
    #[error("record {owner} {rtype} is outside the zone {apex}")]
    OutOfZone {
        /// Owner name of the record.
        owner: String,
        /// Its type.
        rtype: Rtype,
        /// The zone apex.
        apex: String,
    },
}

/// A zone in canonical order with duplicates removed.
#[derive(Clone, Debug)]
pub struct Zone {
    apex: WireName,
    records: Vec<Record>,
    duplicates: usize,
}

impl Zone {
    /// Reads and parses a zone file.
    pub fn load(path: &Path) -> Result<Zone, LoadError> {
        let text = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.to_owned(),
            source,
        })?;
        Zone::from_text(&text)
    }

    /// Parses zone text. Relative names need `$ORIGIN`; the apex is the owner
    /// of the first SOA record.
    pub fn from_text(text: &[u8]) -> Result<Zone, LoadError> {
        let mut zonefile = Zonefile::with_capacity(text.len());
        zonefile.extend_from_slice(text);
        let mut records = Vec::with_capacity(text.len() / 80);
        let mut owner_buf: Vec<u8> = Vec::with_capacity(256);
        let mut last_owner: Option<WireName> = None;
        loop {
            let entry = zonefile
                .next_entry()
                .map_err(|source| LoadError::Parse { source })?;
            let record = match entry {
                None => break,
                Some(Entry::Record(r)) => r,
                Some(Entry::Include { .. }) => return Err(LoadError::Include),
            };
            owner_buf.clear();
            for label in record.owner().iter_labels() {
                owner_buf.push(label.len() as u8);
                owner_buf.extend_from_slice(label.as_slice());
            }
            lowercase_wire(&mut owner_buf);
            // Consecutive records mostly share their owner: reuse the allocation.
            let owner = match &last_owner {
                Some(o) if o.as_wire() == owner_buf.as_slice() => o.clone(),
                _ => {
                    let o = WireName::from_canonical(owner_buf.as_slice().into());
                    last_owner = Some(o.clone());
                    o
                }
            };
            let data = record.data();
            let mut rdata = Vec::with_capacity(data.rdlen(false).unwrap_or(64) as usize);
            data.compose_canonical_rdata(&mut rdata)
                .map_err(|_| LoadError::BadRdata {
                    owner: owner.to_string(),
                    rtype: record.rtype(),
                })?;
            records.push(Record {
                owner,
                rtype: record.rtype(),
                class: record.class(),
                ttl: record.ttl().as_secs(),
                rdata: rdata.into(),
            });
        }
        Zone::from_records(records)
    }

    /// Builds a zone from canonical records in any order: sorts them and
    /// removes duplicates. The apex is the owner of the first SOA record.
    pub fn from_records(mut records: Vec<Record>) -> Result<Zone, LoadError> {
        let apex = records
            .iter()
            .find(|r| r.rtype == Rtype::SOA)
            .map(|r| r.owner.clone())
            .ok_or(LoadError::NoSoa)?;
        if let Some(r) = records.iter().find(|r| !r.owner.is_at_or_below(&apex)) {
            return Err(LoadError::OutOfZone {
                owner: r.owner.to_string(),
                rtype: r.rtype,
                apex: apex.to_string(),
            });
        }
        // Zone files are usually close to canonical order already; a stable
        // merge sort finds the runs.
        records.sort_by(Record::canonical_cmp);
        let before = records.len();
        records.dedup_by(|a, b| {
            a.owner == b.owner && a.rtype == b.rtype && a.class == b.class && a.rdata == b.rdata
        });
        let duplicates = before - records.len();
        Ok(Zone {
            apex,
            records,
            duplicates,
        })
    }

    /// The apex name (owner of the SOA).
    pub fn apex(&self) -> &WireName {
        &self.apex
    }

    /// All records, canonical order, without duplicates.
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// Number of records (after duplicate removal).
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the zone has no records (never true for a loaded zone).
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// How many duplicate records were removed while loading.
    pub fn duplicates_removed(&self) -> usize {
        self.duplicates
    }

    /// The apex SOA records (exactly one in a sane zone).
    pub fn apex_soas(&self) -> impl Iterator<Item = &Record> {
        self.rrset(&self.apex, Rtype::SOA).iter()
    }

    /// Serial of the (first) apex SOA.
    pub fn serial(&self) -> u32 {
        self.apex_soas()
            .next()
            .and_then(|r| soa_serial(&r.rdata))
            .unwrap_or(0)
    }

    /// The records of one RRset (empty slice if absent).
    pub fn rrset(&self, owner: &WireName, rtype: Rtype) -> &[Record] {
        let start = self.records.partition_point(|r| {
            r.owner
                .cmp(owner)
                .then(r.rtype.to_int().cmp(&rtype.to_int()))
                .is_lt()
        });
        let len = self.records[start..]
            .iter()
            .take_while(|r| r.owner == *owner && r.rtype == rtype)
            .count();
        &self.records[start..start + len]
    }

    /// RRsets in canonical order (consecutive records of equal owner and type).
    pub fn rrsets(&self) -> impl Iterator<Item = &[Record]> {
        self.records
            .chunk_by(|a, b| a.owner == b.owner && a.rtype == b.rtype)
    }

    /// Writes the zone in presentation format, SOA first, one record a line.
    pub fn write_text(&self, out: &mut impl Write) -> io::Result<()> {
        let mut line = String::with_capacity(512);
        let soa = self.apex_soas().next();
        for r in soa.into_iter().chain(
            self.records
                .iter()
                .filter(|r| !(r.rtype == Rtype::SOA && r.owner == self.apex)),
        ) {
            line.clear();
            r.write_text(&mut line)
                .map_err(|_| io::Error::other("formatting a record"))?;
            line.push('\n');
            out.write_all(line.as_bytes())?;
        }
        Ok(())
    }
}

/// The serial field of SOA RDATA (canonical wire).
pub(crate) fn soa_serial(rdata: &[u8]) -> Option<u32> {
    let mut pos = 0;
    for _ in 0..2 {
        loop {
            let len = *rdata.get(pos)? as usize;
            pos += 1 + len;
            if len == 0 {
                break;
            }
        }
    }
    let b = rdata.get(pos..pos + 4)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: &str = "$ORIGIN example.\n$TTL 300\n\
        @ IN SOA ns.example. host.Example. 7 1800 900 604800 86400\n\
        @ IN NS ns\n\
        B IN A 192.0.2.2\n\
        a IN A 192.0.2.1\n\
        a IN A 192.0.2.1\n\
        ns IN A 192.0.2.53\n";

    #[test]
    fn loads_sorts_and_dedups() {
        let zone = Zone::from_text(SMALL.as_bytes()).unwrap();
        assert_eq!(zone.apex().to_string(), "example.");
        assert_eq!(zone.len(), 5);
        assert_eq!(zone.duplicates_removed(), 1);
        assert_eq!(zone.serial(), 7);
        let owners: Vec<String> = zone.records().iter().map(|r| r.owner.to_string()).collect();
        assert_eq!(owners, ["example.", "example.", "a.example.", "b.example.", "ns.example."]);
        // SOA RDATA names are lowercased in canonical form.
        assert!(zone.records()[1].to_text().contains("host.example."));
    }

    #[test]
    fn rejects_out_of_zone_and_no_soa() {
        let err = Zone::from_text(b"example. 300 IN SOA a. b. 1 2 3 4 5\nother. 300 IN A 192.0.2.1\n")
            .unwrap_err();
        assert!(matches!(err, LoadError::OutOfZone { ref owner, .. } if owner == "other."), "{err}");
        let err = Zone::from_text(b"example. 300 IN A 192.0.2.1\n").unwrap_err();
        assert!(matches!(err, LoadError::NoSoa));
        let err = Zone::from_text(b"example. 300 IN SOA a. b. 1 2 3\n").unwrap_err();
        assert!(matches!(err, LoadError::Parse { .. }), "{err}");
    }

    #[test]
    fn text_round_trip() {
        let zone = Zone::from_text(SMALL.as_bytes()).unwrap();
        let mut out = Vec::new();
        zone.write_text(&mut out).unwrap();
        let again = Zone::from_text(&out).unwrap();
        assert_eq!(zone.records(), again.records());
        assert!(String::from_utf8(out).unwrap().starts_with("example.\t300\tIN\tSOA"));
    }
}
