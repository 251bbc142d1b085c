//! Owner names as this crate keeps them: uncompressed, lowercased wire format.
//!
//! Owns the helpers every other module needs on names: canonical ordering
//! (RFC 4034 section 6.1), ancestry tests, label counting and presentation
//! format for error messages.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

/// An absolute domain name in uncompressed wire format, lowercased
/// (the canonical form of RFC 4034 section 6.2).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct WireName(Arc<[u8]>);

/// The root name `.` in wire format.
pub const ROOT_WIRE: &[u8] = &[0];

impl WireName {
    /// Wraps wire bytes that are already canonical (lowercase, absolute).
    ///
    /// The caller guarantees well-formed labels ending in the root label.
    pub(crate) fn from_canonical(wire: Box<[u8]>) -> Self {
        debug_assert!(wire_is_well_formed(&wire));
        WireName(wire.into())
    }

    /// The root name.
    pub fn root() -> Self {
        WireName(ROOT_WIRE.into())
    }

    /// The wire-format bytes.
    pub fn as_wire(&self) -> &[u8] {
        &self.0
    }

    /// Number of labels, not counting the root label (the RRSIG "labels" count
    /// also ignores a leading `*`; see [`WireName::rrsig_label_count`]).
    pub fn label_count(&self) -> u8 {
        label_count(&self.0)
    }

    /// Label count as RRSIG's Labels field counts it (RFC 4034 section 3.1.3):
    /// without the root label and without a leading wildcard label.
    pub fn rrsig_label_count(&self) -> u8 {
        let n = label_count(&self.0);
        if self.0.len() >= 2 && self.0[0] == 1 && self.0[1] == b'*' {
            n - 1
        } else {
            n
        }
    }

    /// Whether `self` equals `ancestor` or lies below it.
    pub fn is_at_or_below(&self, ancestor: &WireName) -> bool {
        let a = ancestor.as_wire();
        let s = self.as_wire();
        if a.len() > s.len() {
            return false;
        }
        // The ancestor must be a label-aligned suffix.
        let mut pos = 0;
        loop {
            if s.len() - pos == a.len() {
                return &s[pos..] == a;
            }
            let len = s[pos] as usize;
            if len == 0 {
                return false;
            }
            pos += 1 + len;
            if s.len() - pos < a.len() {
                return false;
            }
        }
    }

    /// The name with its first `skip` labels removed.
    pub fn suffix(&self, skip: u8) -> WireName {
        let mut pos = 0;
        for _ in 0..skip {
            let len = self.0[pos] as usize;
            if len == 0 {
                break;
            }
            pos += 1 + len;
        }
        WireName(self.0[pos..].into())
    }

    /// The parent name (the root's parent is the root).
    pub fn parent(&self) -> WireName {
        self.suffix(1)
    }
}

impl Ord for WireName {
    fn cmp(&self, other: &Self) -> Ordering {
        canonical_cmp(&self.0, &other.0)
    }
}

impl PartialOrd for WireName {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for WireName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_wire(&self.0, f)
    }
}

impl fmt::Debug for WireName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WireName({self})")
    }
}

fn wire_is_well_formed(wire: &[u8]) -> bool {
    let mut pos = 0;
    while pos < wire.len() {
        let len = wire[pos] as usize;
        if len == 0 {
            return pos + 1 == wire.len();
        }
        if len > 63 {
            return false;
        }
        pos += 1 + len;
    }
    false
}

fn label_count(wire: &[u8]) -> u8 {
    let mut pos = 0;
    let mut n = 0u8;
    while pos < wire.len() && wire[pos] != 0 {
        n = n.saturating_add(1);
        pos += 1 + wire[pos] as usize;
    }
    n
}

/// Start offsets of the labels (excluding the root label), left to right.
fn label_offsets(wire: &[u8], out: &mut [u8; 128]) -> usize {
    let mut pos = 0usize;
    let mut n = 0usize;
    while pos < wire.len() && wire[pos] != 0 && n < 128 {
        out[n] = pos as u8;
        n += 1;
        pos += 1 + wire[pos] as usize;
    }
    n
}

/// Canonical DNS name order (RFC 4034 section 6.1) of two lowercased wire names:
/// compare labels from the rightmost, each as an octet string.
pub fn canonical_cmp(a: &[u8], b: &[u8]) -> Ordering {
    if a == b {
        return Ordering::Equal;
    }
    let mut oa = [0u8; 128];
    let mut ob = [0u8; 128];
    let na = label_offsets(a, &mut oa);
    let nb = label_offsets(b, &mut ob);
    let (mut ia, mut ib) = (na, nb);
    while ia > 0 && ib > 0 {
        ia -= 1;
        ib -= 1;
        let pa = oa[ia] as usize;
        let pb = ob[ib] as usize;
        let la = &a[pa + 1..pa + 1 + a[pa] as usize];
        let lb = &b[pb + 1..pb + 1 + b[pb] as usize];
        match la.cmp(lb) {
            Ordering::Equal => {}
            other => return other,
        }
    }
    na.cmp(&nb)
}

/// Writes a wire name in presentation format (`www.example.` or `.`).
pub(crate) fn fmt_wire(wire: &[u8], f: &mut impl fmt::Write) -> fmt::Result {
    let mut pos = 0;
    if wire.first().is_none_or(|&l| l == 0) {
        return f.write_char('.');
    }
    while pos < wire.len() {
        let len = wire[pos] as usize;
        if len == 0 {
            break;
        }
        for &c in &wire[pos + 1..(pos + 1 + len).min(wire.len())] {
            match c {
                b'.' | b'\\' | b'(' | b')' | b';' | b'"' | b'@' | b'$' => {
                    write!(f, "\\{}", c as char)?
                }
                0x21..=0x7e => f.write_char(c as char)?,
                _ => write!(f, "\\{c:03}")?,
            }
        }
        f.write_char('.')?;
        pos += 1 + len;
    }
    Ok(())
}

/// Lowercases a wire name in place (ASCII letters only, as DNS does).
pub(crate) fn lowercase_wire(wire: &mut [u8]) {
    let mut pos = 0;
    while pos < wire.len() {
        let len = wire[pos] as usize;
        if len == 0 {
            break;
        }
        let end = (pos + 1 + len).min(wire.len());
        wire[pos + 1..end].make_ascii_lowercase();
        pos = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> WireName {
        let mut w = Vec::new();
        for l in s.split('.').filter(|l| !l.is_empty()) {
            w.push(l.len() as u8);
            w.extend_from_slice(l.as_bytes());
        }
        w.push(0);
        WireName::from_canonical(w.into())
    }

    #[test]
    fn canonical_order_rfc4034_example() {
        // RFC 4034 section 6.1 example, in order (lowercase, without \200).
        let ordered = [
            "example.",
            "a.example.",
            "yljkjljk.a.example.",
            "z.a.example.",
            "zabc.a.example.",
            "z.example.",
            "*.z.example.",
        ];
        let mut names: Vec<WireName> = ordered.iter().rev().map(|s| n(s)).collect();
        names.sort();
        let got: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        assert_eq!(got, ordered);
        // The root sorts before everything.
        assert_eq!(n(".").cmp(&n("aaa.")), Ordering::Less);
        assert_eq!(n("zw.").cmp(&n("aaa.zw.")), Ordering::Less);
        assert_eq!(n("a.zw.").cmp(&n("zw.")), Ordering::Greater);
    }

    #[test]
    fn ancestry_and_labels() {
        assert!(n("a.b.").is_at_or_below(&n("b.")));
        assert!(n("a.b.").is_at_or_below(&n(".")));
        assert!(n("b.").is_at_or_below(&n("b.")));
        assert!(!n("ab.").is_at_or_below(&n("b.")));
        assert!(!n("b.").is_at_or_below(&n("a.b.")));
        assert_eq!(n("*.a.b.").rrsig_label_count(), 2);
        assert_eq!(n("a.b.").label_count(), 2);
        assert_eq!(n(".").label_count(), 0);
        assert_eq!(n("x.a.b.").suffix(1), n("a.b."));
        assert_eq!(n("x.a.b.").suffix(5), n("."));
        assert_eq!(n("x.a.b.").to_string(), "x.a.b.");
        assert_eq!(n(".").to_string(), ".");
    }
}
