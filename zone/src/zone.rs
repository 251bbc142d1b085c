//! The in-memory zone: every record in canonical form and canonical order.
//!
//! Owns loading a zone from presentation-format text (a zone file, including
//! the `.axfr` dump variant) or from records received by AXFR, canonicalising
//! each record (RFC 4034 section 6.2: lowercase owner, canonical RDATA),
//! sorting by (owner, type, RDATA) in canonical order, removing duplicates,
//! and writing the zone back as text that NSD and Knot load.

use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use domain::base::iana::{Class, Rtype};
use domain::base::name::ToLabelIter;
use domain::base::rdata::ComposeRecordData;
use domain::base::{ParseRecordData, ParsedName};
use domain::rdata::ZoneRecordData;
use domain::zonefile::inplace::{Entry, Zonefile};
use rayon::prelude::*;

use crate::input::{self, InputError};
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
    /// Builds a canonical record from any `domain` record parts: lowercases
    /// the owner and composes the RDATA in canonical form.
    pub fn from_domain(
        owner: &impl ToLabelIter,
        rtype: Rtype,
        class: Class,
        ttl: u32,
        data: &impl ComposeRecordData,
    ) -> Result<Self, LoadError> {
        let mut o = Vec::with_capacity(32);
        for label in owner.iter_labels() {
            o.push(label.len() as u8);
            o.extend_from_slice(label.as_slice());
        }
        lowercase_wire(&mut o);
        let owner = WireName::from_canonical(o.into());
        let mut rdata = Vec::with_capacity(data.rdlen(false).unwrap_or(64) as usize);
        data.compose_canonical_rdata(&mut rdata)
            .map_err(|_| LoadError::BadRdata {
                owner: owner.to_string(),
                rtype,
            })?;
        Ok(Record {
            owner,
            rtype,
            class,
            ttl,
            rdata: rdata.into(),
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
        write!(
            out,
            "{}\t{}\t{}\t{}\t",
            self.owner, self.ttl, self.class, self.rtype
        )?;
        let parsed = ZoneRecordData::<&[u8], ParsedName<&[u8]>>::parse_rdata(
            self.rtype,
            &mut domain::dep::octseq::Parser::from_ref(&self.rdata[..]),
        );
        match parsed {
            Ok(Some(ZoneRecordData::Rrsig(sig))) => {
                // domain prints the times as integers, which NSD 4.6
                // rejects: use the YYYYMMDDHHmmSS form of RFC 4034 3.2.
                write!(
                    out,
                    "{} {} {} {} {} {} {} ",
                    sig.type_covered(),
                    sig.algorithm().to_int(),
                    sig.labels(),
                    sig.original_ttl().as_secs(),
                    rrsig_time(sig.expiration().into_int()),
                    rrsig_time(sig.inception().into_int()),
                    sig.key_tag(),
                )?;
                crate::name::fmt_wire(&self.rdata[18..], out)?;
                out.write_char(' ')?;
                domain::utils::base64::display(sig.signature(), out)
            }
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
    /// The zone file could not be read: missing, unreadable, not a regular file, over
    /// [`MAX_ZONE_FILE_BYTES`], or changed while it was read.
    #[error("zone file {path} not read")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: InputError,
    },
    /// The zone text does not parse.
    #[error("zone text does not parse")]
    Parse {
        /// The cause, with line and column.
        #[source]
        source: domain::zonefile::inplace::Error,
    },
    /// A parenthesis or quoted string is not closed, or a `)` closes nothing.
    #[error("zone text line {line}: {problem}")]
    Delimiters {
        /// Line (from 1) of the opening `(` or `"`, or of the stray `)`.
        line: usize,
        /// What is wrong.
        problem: &'static str,
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
    /// A record's class differs from the SOA's (RFC 1035 section 5.2).
    #[error("record {owner} {rtype} has class {class}, unlike the SOA")]
    ClassMismatch {
        /// Owner name of the record.
        owner: String,
        /// Its type.
        rtype: Rtype,
        /// Its class.
        class: Class,
    },
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

/// The largest zone file [`Zone::load`] reads: the root zone is about 2.2 MB of text.
pub const MAX_ZONE_FILE_BYTES: u64 = 64 << 20;

impl Zone {
    /// Reads and parses a zone file: a regular file of at most [`MAX_ZONE_FILE_BYTES`] whose
    /// size does not change while it is read (anything else is refused before it fills memory).
    ///
    /// A large file in plain form, as the root zone is published (no directives, parentheses,
    /// quotes or escapes), is read in pieces straight into the parsers' buffers and parsed on
    /// all cores; any other file is read whole and parsed by [`Zone::from_text`].
    pub fn load(path: &Path) -> Result<Zone, LoadError> {
        let read_error = |source: InputError| LoadError::Read {
            path: path.to_owned(),
            source,
        };
        let (mut file, len) = input::open_regular(path, MAX_ZONE_FILE_BYTES).map_err(read_error)?;
        let pieces = parse_plain_pieces(&file, len).map_err(|e| read_error(e.into()))?;
        if let Some(parts) = pieces {
            // The pieces end at the size fstat gave: a file that grew or shrank meanwhile was
            // not read as it is now.
            input::check_unchanged(&file, len).map_err(read_error)?;
            return Zone::from_sorted_parts(parts);
        }
        let text = input::read_exactly(&mut file, len).map_err(read_error)?;
        Zone::from_text(&text)
    }

    /// Parses zone text. Relative names need `$ORIGIN`; the apex is the owner
    /// of the first SOA record.
    ///
    /// Large files without `$` directives are cut at record boundaries that
    /// carry their own owner, TTL and class, and the pieces are parsed on all
    /// cores; on any error the whole text is parsed again in one piece so the
    /// error names the right line.
    pub fn from_text(text: &[u8]) -> Result<Zone, LoadError> {
        if let Some(cuts) = split_points(text, pieces()) {
            let ranges: Vec<(usize, usize)> = std::iter::once(0)
                .chain(cuts.iter().copied())
                .zip(cuts.iter().copied().chain(std::iter::once(text.len())))
                .collect();
            // Each piece is parsed and put in canonical order on its own
            // core; the sorted pieces are then joined.
            let parts: Result<Vec<Vec<Record>>, LoadError> = ranges
                .par_iter()
                .map(|&(a, b)| {
                    let mut records = parse_records(&text[a..b])?;
                    canonical_sort(&mut records);
                    Ok(records)
                })
                .collect();
            if let Ok(parts) = parts {
                return Zone::from_sorted_parts(parts);
            }
        }
        Zone::from_records(parse_records(text)?)
    }

    /// Joins pieces of a zone, each in canonical order, in the order they came in the text.
    fn from_sorted_parts(parts: Vec<Vec<Record>>) -> Result<Zone, LoadError> {
        let total = parts.iter().map(Vec::len).sum::<usize>();
        let mut parts = parts.into_iter();
        // The first piece's vector grows in place (for large vectors the allocator remaps
        // rather than copies) and the others are appended.
        let mut records = parts.next().unwrap_or_default();
        records.reserve(total - records.len());
        let mut bounds = vec![0];
        for part in parts {
            bounds.push(records.len());
            records.extend(part);
        }
        join_sorted_pieces(&mut records, &bounds[1..]);
        Zone::from_sorted_records(records)
    }

    /// Builds a zone from canonical records in any order: sorts them and
    /// removes duplicates. The apex is the owner of the first SOA record.
    pub fn from_records(mut records: Vec<Record>) -> Result<Zone, LoadError> {
        canonical_sort(&mut records);
        Zone::from_sorted_records(records)
    }

    /// [`Zone::from_records`] for records already in canonical order.
    fn from_sorted_records(mut records: Vec<Record>) -> Result<Zone, LoadError> {
        debug_assert!(records.is_sorted_by(|a, b| a.canonical_cmp(b).is_le()));
        let soa = records
            .iter()
            .find(|r| r.rtype == Rtype::SOA)
            .ok_or(LoadError::NoSoa)?;
        let (apex, class) = (soa.owner.clone(), soa.class);
        if let Some(r) = records.iter().find(|r| r.class != class) {
            return Err(LoadError::ClassMismatch {
                owner: r.owner.to_string(),
                rtype: r.rtype,
                class: r.class,
            });
        }
        // Records of one owner are adjacent: test each owner once.
        if let Some(r) = records
            .chunk_by(|a, b| a.owner == b.owner)
            .map(|run| &run[0])
            .find(|r| !r.owner.is_at_or_below(&apex))
        {
            return Err(LoadError::OutOfZone {
                owner: r.owner.to_string(),
                rtype: r.rtype,
                apex: apex.to_string(),
            });
        }
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

/// Parses a piece of zone text with `domain`'s zone file scanner.
fn parse_records(text: &[u8]) -> Result<Vec<Record>, LoadError> {
    check_delimiters(text)?;
    let mut zonefile = Zonefile::with_capacity(text.len() + 1);
    zonefile.extend_from_slice(text);
    // `domain` needs every entry to end in a newline: without one it rejects the last record
    // or, for a TXT record, panics.
    if !text.ends_with(b"\n") {
        zonefile.extend_from_slice(b"\n");
    }
    parse_zonefile(zonefile, text.len())
}

/// Parses the text in `zonefile` (`len` bytes).
fn parse_zonefile(mut zonefile: Zonefile, len: usize) -> Result<Vec<Record>, LoadError> {
    let mut records = Vec::with_capacity(len / 80);
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
        // Consecutive records mostly share their owner: share its storage.
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
    Ok(records)
}

/// Checks that every `(` and `"` is closed before the text ends, that no `)` closes nothing and
/// that parentheses do not nest (RFC 1035 section 5.1), outside comments and escapes.
///
/// `domain` 0.12.3 panics (index out of bounds) on a TXT record left open at the end of the
/// text, such as `x. 300 IN TXT ( "a"`; a panic in the init is fatal, so such text is turned
/// into this clear error before the scanner sees it.
fn check_delimiters(text: &[u8]) -> Result<(), LoadError> {
    // Most zones, the root zone among them, have none of these bytes: one vectorised search
    // settles it.
    if memchr::memchr3(b'(', b')', b'"', text).is_none() {
        return Ok(());
    }
    let err = |at: usize, problem| {
        Err(LoadError::Delimiters {
            line: 1 + memchr::memchr_iter(b'\n', &text[..at]).count(),
            problem,
        })
    };
    let mut paren: Option<usize> = None;
    let mut quote: Option<usize> = None;
    let mut i = 0;
    while i < text.len() {
        match (text[i], quote.is_some()) {
            // The escaped byte is taken literally.
            (b'\\', _) => i += 1,
            (b'"', true) => quote = None,
            (b'"', false) => quote = Some(i),
            // A comment runs to the end of the line.
            (b';', false) => i += memchr::memchr(b'\n', &text[i..]).unwrap_or(text.len() - i),
            (b'(', false) if paren.is_some() => return err(i, "nested parenthesis"),
            (b'(', false) => paren = Some(i),
            (b')', false) if paren.is_none() => return err(i, "')' without '('"),
            (b')', false) => paren = None,
            _ => {}
        }
        i += 1;
    }
    if let Some(at) = quote {
        return err(at, "quoted string not closed before the end of the text");
    }
    if let Some(at) = paren {
        return err(at, "parenthesis not closed before the end of the text");
    }
    Ok(())
}

/// How many pieces a large zone text is cut into: a few per core, so that a core that finishes
/// early takes another piece instead of waiting.
fn pieces() -> usize {
    rayon::current_num_threads() * 4
}

/// Smallest piece worth parsing on its own.
const MIN_PIECE: usize = 256 * 1024;

/// Whether zone text holds none of the bytes that carry scanner state from one line to the
/// next (parentheses, quotes, escapes) or from one record to the next (`$` directives).
fn is_plain(text: &[u8]) -> bool {
    memchr::memchr3(b'(', b')', b'"', text).is_none()
        && memchr::memchr2(b'\\', b'$', text).is_none()
}

/// Reads and parses a large plain zone file in pieces, each read with `pread` straight into its
/// parser's buffer and parsed and sorted on its own core. `None` when the file is small, has a
/// byte that makes it not plain, or a piece does not parse: the caller then parses the whole
/// text, which also makes an error name the right line.
fn parse_plain_pieces(file: &File, len: u64) -> io::Result<Option<Vec<Vec<Record>>>> {
    let pieces = pieces();
    if pieces < 2 || len < 2 * MIN_PIECE as u64 {
        return Ok(None);
    }
    let Some(cuts) = plain_cuts(file, len, pieces)? else {
        return Ok(None);
    };
    let ranges: Vec<(u64, u64)> = std::iter::once(0)
        .chain(cuts.iter().copied())
        .zip(cuts.iter().copied().chain(std::iter::once(len)))
        .collect();
    // Once one piece is found not plain, or does not parse, the others stop at their next
    // chunk: the whole text is parsed again anyway.
    let given_up = AtomicBool::new(false);
    let parts: Vec<io::Result<Option<Vec<Record>>>> = ranges
        .par_iter()
        .map(|&(start, end)| {
            let zonefile = read_plain_piece(file, start, end, &given_up)?;
            let records = zonefile.and_then(|z| parse_zonefile(z, (end - start) as usize).ok());
            let Some(mut records) = records else {
                given_up.store(true, Ordering::Relaxed);
                return Ok(None);
            };
            canonical_sort(&mut records);
            Ok(Some(records))
        })
        .collect();
    parts.into_iter().collect()
}

/// Where to cut a plain file into `pieces`: for each share, the first line after it that starts
/// a self-contained record (every line of a plain file starts outside any record's
/// continuation), found by reading a small window there. `None` if a window holds no such line.
fn plain_cuts(file: &File, len: u64, pieces: usize) -> io::Result<Option<Vec<u64>>> {
    let mut cuts: Vec<u64> = Vec::with_capacity(pieces - 1);
    let mut window = vec![0u8; 16 * 1024];
    for k in 1..pieces as u64 {
        let target = len / pieces as u64 * k;
        let n = read_at_most(file, &mut window, target)?;
        let Some(offset) = first_cut(&window[..n]) else {
            return Ok(None);
        };
        let cut = target + offset as u64;
        if cuts.last().is_some_and(|&c| c >= cut) {
            return Ok(None);
        }
        cuts.push(cut);
    }
    Ok(Some(cuts))
}

/// Reads `file[start..end]` into a parser buffer, or `None` if those bytes are not plain or
/// another piece has `given_up`.
fn read_plain_piece(
    file: &File,
    start: u64,
    end: u64,
    given_up: &AtomicBool,
) -> io::Result<Option<Zonefile>> {
    let mut zonefile = Zonefile::with_capacity((end - start) as usize + 1);
    let mut buf = vec![0u8; 64 * 1024];
    let mut at = start;
    let mut last = b'\n';
    while at < end {
        let want = buf.len().min((end - at) as usize);
        let n = read_at_most(file, &mut buf[..want], at)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the zone file shrank while it was read",
            ));
        }
        let chunk = &buf[..n];
        if !is_plain(chunk) || given_up.load(Ordering::Relaxed) {
            return Ok(None);
        }
        zonefile.extend_from_slice(chunk);
        last = chunk[n - 1];
        at += n as u64;
    }
    // The last piece may end without a newline (see `parse_records`).
    if last != b'\n' {
        zonefile.extend_from_slice(b"\n");
    }
    Ok(Some(zonefile))
}

/// Fills `buf` from `offset` as far as the file goes; the number of bytes read.
fn read_at_most(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Puts records in canonical order (owner, type, RDATA; stable for equal
/// records, so duplicates stay adjacent).
///
/// Zone files and transfers list each owner's records together and owners
/// in canonical order: then only the records within each owner need
/// sorting, by type and RDATA, and owner names are compared once per owner
/// instead of once per comparison. Any other order falls back to a full
/// sort.
fn canonical_sort(records: &mut [Record]) {
    let mut start = 0;
    for i in 1..=records.len() {
        if i < records.len() && records[i].owner == records[start].owner {
            continue;
        }
        if i < records.len() && records[start].owner > records[i].owner {
            records.sort_by(Record::canonical_cmp);
            return;
        }
        sort_within_owner(&mut records[start..i]);
        start = i;
    }
}

/// Sorts records of one owner by type, then RDATA.
fn sort_within_owner(run: &mut [Record]) {
    let key = |a: &Record, b: &Record| {
        a.rtype
            .to_int()
            .cmp(&b.rtype.to_int())
            .then_with(|| a.rdata.cmp(&b.rdata))
    };
    if !run.is_sorted_by(|a, b| key(a, b).is_le()) {
        run.sort_by(key);
    }
}

/// Joins pieces that are each in canonical order (`bounds`: where each piece
/// after the first starts). A piece may start in the middle of an owner's
/// records: that owner's records are sorted again across the seam.
fn join_sorted_pieces(records: &mut [Record], bounds: &[usize]) {
    for &b in bounds {
        if b == 0 || b >= records.len() {
            continue;
        }
        match records[b - 1].owner.cmp(&records[b].owner) {
            std::cmp::Ordering::Less => {}
            std::cmp::Ordering::Equal => {
                let owner = &records[b].owner;
                let start = b - records[..b]
                    .iter()
                    .rev()
                    .take_while(|r| r.owner == *owner)
                    .count();
                let end = b + records[b..]
                    .iter()
                    .take_while(|r| r.owner == *owner)
                    .count();
                sort_within_owner(&mut records[start..end]);
            }
            std::cmp::Ordering::Greater => {
                canonical_sort(records);
                return;
            }
        }
    }
}

/// Byte offsets where `text` can be cut into `pieces` independently
/// parseable parts, or `None` if it cannot be cut safely: there must be no
/// `$` directive anywhere (they carry state), and each cut is at the start of
/// a line outside parentheses and quotes that begins with an absolute owner
/// name followed by an explicit numeric TTL and class `IN` (so nothing is
/// inherited from the previous record).
fn split_points(text: &[u8], pieces: usize) -> Option<Vec<usize>> {
    if pieces < 2 || text.len() < 2 * MIN_PIECE {
        return None;
    }
    if is_plain(text) {
        let cuts = local_cuts(text, pieces);
        return (!cuts.is_empty()).then_some(cuts);
    }
    // `$` directives carry state: a text without any `$` byte has none, and
    // then only the text before the last cut needs scanning (for the state
    // at each cut); otherwise every line start is checked.
    let dollar_free = !text.contains(&b'$');
    let mut cuts = Vec::with_capacity(pieces - 1);
    let mut next_target = text.len() / pieces;
    let (mut depth, mut in_quote, mut in_comment) = (0i32, false, false);
    let mut line_start = true;
    let mut i = 0;
    while i < text.len() {
        let c = text[i];
        if line_start {
            line_start = false;
            if depth == 0 && !in_quote {
                if c == b'$' {
                    return None;
                }
                if i >= next_target && cuts.len() < pieces - 1 && self_contained_line(&text[i..]) {
                    cuts.push(i);
                    next_target = text.len() / pieces * (cuts.len() + 1);
                    if dollar_free && cuts.len() == pieces - 1 {
                        return Some(cuts);
                    }
                }
                // Most lines hold no byte that changes the state: skip
                // straight to the next line (or to the first such byte).
                let skip = text[i..]
                    .iter()
                    .position(|&c| c == b'\n' || SPECIAL[c as usize])
                    .unwrap_or(text.len() - i);
                i += skip;
                if i == text.len() {
                    break;
                }
                if text[i] == b'\n' {
                    line_start = true;
                    i += 1;
                }
                continue;
            }
        }
        match c {
            b'\\' if !in_comment => i += 1,
            b'"' if !in_comment => in_quote = !in_quote,
            b';' if !in_quote => in_comment = true,
            b'(' if !in_quote && !in_comment => depth += 1,
            b')' if !in_quote && !in_comment => depth -= 1,
            b'\n' => {
                in_comment = false;
                line_start = true;
            }
            _ => {}
        }
        i += 1;
    }
    if in_quote || depth != 0 || cuts.is_empty() {
        return None;
    }
    Some(cuts)
}

/// Cut points of a text without directives, parentheses, quotes or escapes: then every line
/// starts outside any record's continuation, so each cut is the first self-contained line at
/// or after its share of the text, found without reading what comes before.
fn local_cuts(text: &[u8], pieces: usize) -> Vec<usize> {
    let mut cuts: Vec<usize> = Vec::with_capacity(pieces - 1);
    for k in 1..pieces {
        let at = (text.len() / pieces * k).max(cuts.last().map_or(0, |&c| c + 1));
        if let Some(offset) = text.get(at..).and_then(first_cut) {
            cuts.push(at + offset);
        }
    }
    cuts
}

/// Where in `window` (text of a plain zone, starting anywhere) the first whole line after the
/// first newline starts that begins a self-contained record.
fn first_cut(window: &[u8]) -> Option<usize> {
    let mut at = memchr::memchr(b'\n', window)? + 1;
    loop {
        let end = memchr::memchr(b'\n', &window[at..])?;
        if self_contained_line(&window[at..at + end]) {
            return Some(at);
        }
        at += end + 1;
    }
}

/// Bytes that change the scanner state of [`split_points`].
const SPECIAL: [bool; 256] = {
    let mut t = [false; 256];
    t[b'\\' as usize] = true;
    t[b'"' as usize] = true;
    t[b';' as usize] = true;
    t[b'(' as usize] = true;
    t[b')' as usize] = true;
    t
};

/// Whether a line starts `owner. TTL IN ...` with an absolute owner.
fn self_contained_line(line: &[u8]) -> bool {
    let end = line.iter().position(|&c| c == b'\n').unwrap_or(line.len());
    let Ok(line) = std::str::from_utf8(&line[..end]) else {
        return false;
    };
    if line.starts_with([' ', '\t', ';']) || line.contains(['(', '"', '\\']) {
        return false;
    }
    let mut f = line.split_ascii_whitespace();
    let (Some(owner), Some(ttl), Some(class)) = (f.next(), f.next(), f.next()) else {
        return false;
    };
    owner.ends_with('.')
        && ttl.bytes().all(|b| b.is_ascii_digit())
        && class.eq_ignore_ascii_case("IN")
}

/// An RRSIG time field as YYYYMMDDHHmmSS (UTC). Times are serial numbers
/// modulo 2^32 (RFC 4034 3.1.5); this prints the value as an unsigned
/// number of seconds, which is exact until 2106.
fn rrsig_time(secs: u32) -> String {
    jiff::Timestamp::from_second(secs as i64)
        .map(|t| t.strftime("%Y%m%d%H%M%S").to_string())
        .unwrap_or_else(|_| secs.to_string())
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
        assert_eq!(
            owners,
            [
                "example.",
                "example.",
                "a.example.",
                "b.example.",
                "ns.example."
            ]
        );
        // SOA RDATA names are lowercased in canonical form.
        assert!(zone.records()[1].to_text().contains("host.example."));
    }

    #[test]
    fn rejects_out_of_zone_and_no_soa() {
        let err =
            Zone::from_text(b"example. 300 IN SOA a. b. 1 2 3 4 5\nother. 300 IN A 192.0.2.1\n")
                .unwrap_err();
        assert!(
            matches!(err, LoadError::OutOfZone { ref owner, .. } if owner == "other."),
            "{err}"
        );
        let err = Zone::from_text(b"example. 300 IN A 192.0.2.1\n").unwrap_err();
        assert!(matches!(err, LoadError::NoSoa));
        let err = Zone::from_text(b"example. 300 IN SOA a. b. 1 2 3\n").unwrap_err();
        assert!(matches!(err, LoadError::Parse { .. }), "{err}");
    }

    #[test]
    fn split_parse_equals_whole_parse() {
        // A zone big enough to be cut, with multi-line records and records
        // that inherit owner/TTL/class, which must never start a piece.
        let mut text = String::from("example. 300 IN SOA ns.example. h.example. 1 2 3 4 5\n");
        for i in 0..20_000 {
            text.push_str(&format!("n{i}.example. 300 IN A 192.0.2.{}\n", i % 250));
            text.push_str(&format!("\t300 IN TXT ( \"part {i}\"\n \"more\" )\n"));
            text.push_str("\tIN AAAA 2001:db8::1\n");
        }
        let bytes = text.as_bytes();
        let cuts = split_points(bytes, 4).expect("cuttable");
        assert_eq!(cuts.len(), 3);
        for &c in &cuts {
            assert!(
                bytes[c - 1] == b'\n' && bytes[c..].starts_with(b"n"),
                "cut at {c}"
            );
        }
        let whole = Zone::from_records(parse_records(bytes).unwrap()).unwrap();
        let split = Zone::from_text(bytes).unwrap();
        assert_eq!(whole.records(), split.records());
        assert_eq!(split.len(), 60_001);
        // `$` directives carry state: never cut.
        let with_ttl = format!("$TTL 300\n{text}");
        assert!(split_points(with_ttl.as_bytes(), 4).is_none());
        let later = format!("{text}$ORIGIN example.\n");
        assert!(split_points(later.as_bytes(), 4).is_none());
        // An error is reported with the line of the whole text.
        let bad = format!("{text}bad.example. 300 IN A 999.1.1.1\n");
        let err = Zone::from_text(bad.as_bytes()).unwrap_err();
        // (domain reports the position after the bad record: the line
        // after the last; a piece-local count would be about a quarter.)
        let line = bad.lines().count() + 1;
        assert!(
            format!("{err:?}").contains(&format!("line: {line},")),
            "{err:?}"
        );
    }

    #[test]
    fn loading_a_plain_file_in_pieces_equals_parsing_it_whole() {
        // Plain form (no directives, parentheses, quotes or escapes), big enough to be read in
        // pieces, with lines that inherit the owner and so must never start a piece.
        let mut text = String::from("example. 300 IN SOA ns.example. h.example. 1 2 3 4 5\n");
        for i in 0..20_000 {
            text.push_str(&format!("n{i}.example. 300 IN A 192.0.2.{}\n", i % 250));
            text.push_str("\t300 IN AAAA 2001:db8::1\n");
            text.push_str(&format!("; comment {i}\n"));
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plain.zone");
        std::fs::write(&path, &text).unwrap();
        let file = File::open(&path).unwrap();
        let len = text.len() as u64;
        let cuts = plain_cuts(&file, len, 8).unwrap().expect("cuttable");
        assert_eq!(cuts.len(), 7);
        for &c in &cuts {
            assert!(text[c as usize..].starts_with('n'), "cut at {c}");
            assert_eq!(text.as_bytes()[c as usize - 1], b'\n');
        }
        assert!(parse_plain_pieces(&file, len).unwrap().is_some());
        let whole = Zone::from_records(parse_records(text.as_bytes()).unwrap()).unwrap();
        let loaded = Zone::load(&path).unwrap();
        assert_eq!(whole.records(), loaded.records());
        assert_eq!(loaded.len(), 40_001);

        // The last line without its newline is still read.
        std::fs::write(&path, text.trim_end()).unwrap();
        assert_eq!(Zone::load(&path).unwrap().records(), whole.records());

        // A `$` directive anywhere makes the file not plain: read whole, same records.
        std::fs::write(&path, format!("{text}$TTL 300\n")).unwrap();
        let file = File::open(&path).unwrap();
        assert!(parse_plain_pieces(&file, len + 10).unwrap().is_none());
        assert_eq!(Zone::load(&path).unwrap().records(), whole.records());

        // A bad record in a late piece: the error names its line in the whole file.
        let bad = format!("{text}bad.example. 300 IN A 999.1.1.1\n");
        std::fs::write(&path, &bad).unwrap();
        let err = Zone::load(&path).unwrap_err();
        let line = bad.lines().count() + 1;
        assert!(
            format!("{err:?}").contains(&format!("line: {line},")),
            "{err:?}"
        );
    }

    #[test]
    fn unclosed_delimiters_are_clear_errors() {
        // `domain` panics on the first two when it is given them.
        for (text, line, problem) in [
            ("x. 300 IN TXT ( \"a\"\n", 1, "parenthesis not closed"),
            (
                "x. 1 IN SOA a. b. 1 2 3 4 5\nx. 300 IN TXT ( a\n",
                2,
                "parenthesis not closed",
            ),
            ("x. 300 IN TXT \"a\nb\n", 1, "quoted string not closed"),
            ("x. 300 IN TXT a )\n", 1, "')' without '('"),
            ("x. 300 IN TXT ( ( a ) )\n", 1, "nested parenthesis"),
        ] {
            match Zone::from_text(text.as_bytes()) {
                Err(LoadError::Delimiters {
                    line: l,
                    problem: p,
                }) => {
                    assert_eq!(l, line, "{text:?}");
                    assert!(p.starts_with(problem), "{text:?}: {p}");
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
        // The last record needs no newline (`domain` panics on a TXT record without one).
        let zone =
            Zone::from_text(b"x. 1 IN SOA a. b. 1 2 3 4 5\nx. 300 IN TXT ( \"a\" b )").unwrap();
        assert_eq!(zone.len(), 2);
        // Delimiters inside comments, quotes and escapes do not count.
        let ok = "x. 300 IN SOA a. b. 1 2 3 4 5 ; ( \"\n\
                  x. 300 IN TXT \"( ; \\\" )\" ( \"b\"\n \"c\" ) ; )\n\
                  x. 300 IN TXT a\\(b\n";
        let zone = Zone::from_text(ok.as_bytes()).unwrap();
        assert_eq!(zone.len(), 3);
    }

    #[test]
    fn fast_canonical_sort_equals_full_sort() {
        // Owners in canonical order with records of one owner out of order,
        // then owners out of order, then an owner split across a seam.
        let text = "example. 300 IN SOA ns.example. h.example. 1 2 3 4 5\n\
            example. 300 IN NS b.example.\n\
            example. 300 IN NS a.example.\n\
            a.example. 300 IN TXT \"z\"\n\
            a.example. 300 IN A 192.0.2.9\n\
            a.example. 300 IN TXT \"a\"\n\
            a.example. 300 IN A 192.0.2.1\n\
            b.example. 300 IN A 192.0.2.2\n";
        let records = parse_records(text.as_bytes()).unwrap();
        let full = |mut r: Vec<Record>| {
            r.sort_by(Record::canonical_cmp);
            r
        };
        let mut fast = records.clone();
        canonical_sort(&mut fast);
        assert_eq!(fast, full(records.clone()));
        let mut reversed: Vec<Record> = records.iter().rev().cloned().collect();
        canonical_sort(&mut reversed);
        assert_eq!(reversed, full(records.clone()));
        // Pieces cut in the middle of a.example.'s records, and pieces in
        // the wrong order.
        for cut in 1..records.len() {
            let (a, b) = records.split_at(cut);
            let (mut a, mut b) = (a.to_vec(), b.to_vec());
            canonical_sort(&mut a);
            canonical_sort(&mut b);
            for (first, second) in [(&a, &b), (&b, &a)] {
                let mut joined = first.clone();
                joined.extend(second.iter().cloned());
                join_sorted_pieces(&mut joined, &[first.len()]);
                assert_eq!(joined, full(records.clone()), "cut {cut}");
            }
        }
    }

    #[test]
    fn text_round_trip() {
        let zone = Zone::from_text(SMALL.as_bytes()).unwrap();
        let mut out = Vec::new();
        zone.write_text(&mut out).unwrap();
        let again = Zone::from_text(&out).unwrap();
        assert_eq!(zone.records(), again.records());
        assert!(
            String::from_utf8(out)
                .unwrap()
                .starts_with("example.\t300\tIN\tSOA")
        );
    }

    #[test]
    fn load_reads_only_a_bounded_regular_file() {
        let d = tempfile::tempdir().unwrap();
        let chain = |path: &Path| crate::error_chain(&Zone::load(path).unwrap_err());
        // `zone verify /dev/zero` once grew to 7.2 GB: refused before any read.
        let msg = chain(Path::new("/dev/zero"));
        assert!(
            msg.starts_with(
                "zone file /dev/zero not read: not a regular file (it is a character device)"
            ),
            "{msg}"
        );
        assert!(chain(d.path()).contains("it is a directory"));
        let msg = chain(&d.path().join("missing.zone"));
        assert!(msg.contains("missing.zone not read: No such file"), "{msg}");
        // Over the limit (sparse: nothing is written or read).
        let big = d.path().join("big.zone");
        File::create(&big)
            .unwrap()
            .set_len(MAX_ZONE_FILE_BYTES + 1)
            .unwrap();
        let msg = chain(&big);
        assert!(
            msg.contains("67108865 bytes, over the limit of 64 MiB"),
            "{msg}"
        );
        // A file that yields more than its size says is not read past that size.
        let msg = chain(Path::new("/proc/self/mountinfo"));
        assert!(msg.contains("its size changed while it was read"), "{msg}");
        assert!(matches!(
            Zone::load(Path::new("/proc/self/mountinfo")),
            Err(LoadError::Read { .. })
        ));
    }
}
