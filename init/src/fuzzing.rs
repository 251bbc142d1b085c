//! Test-only: inputs for the property tests that throw damaged data at every loader of data from
//! disk or the kernel (PID 1 must not panic on any of it). A valid example is damaged by a few
//! random edits (bytes flipped, inserted, removed, a tail cut off, a multi-byte character or a
//! control character spliced in), which reaches deeper into a parser than random bytes do.

use proptest::prelude::*;

/// One edit at a position given as a fraction of the length.
#[derive(Debug, Clone)]
pub enum Edit {
    /// Replace the byte.
    Set(f64, u8),
    /// Insert bytes.
    Insert(f64, Vec<u8>),
    /// Remove a run of bytes.
    Remove(f64, usize),
    /// Cut everything after.
    Truncate(f64),
}

fn edit() -> impl Strategy<Value = Edit> {
    let pos = 0.0..1.0f64;
    let splice = prop_oneof![
        proptest::collection::vec(any::<u8>(), 1..8),
        Just("é".as_bytes().to_vec()),
        Just("\u{202e}".as_bytes().to_vec()),
        Just(b"\x1b[2J\n\r".to_vec()),
        Just(vec![0xff, 0xfe]),
        Just(b"9999999999999999999999".to_vec()),
        Just(b"\"\\u0000\"".to_vec()),
    ];
    prop_oneof![
        (pos.clone(), any::<u8>()).prop_map(|(p, b)| Edit::Set(p, b)),
        (pos.clone(), splice).prop_map(|(p, v)| Edit::Insert(p, v)),
        (pos.clone(), 1usize..32).prop_map(|(p, n)| Edit::Remove(p, n)),
        pos.prop_map(Edit::Truncate),
    ]
}

fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let at = |f: f64, len: usize| ((f * len as f64) as usize).min(len);
        match e {
            Edit::Set(f, b) => {
                if !bytes.is_empty() {
                    let i = at(*f, bytes.len() - 1);
                    bytes[i] = *b;
                }
            }
            Edit::Insert(f, v) => {
                let i = at(*f, bytes.len());
                bytes.splice(i..i, v.iter().copied());
            }
            Edit::Remove(f, n) => {
                let i = at(*f, bytes.len());
                let end = (i + n).min(bytes.len());
                bytes.drain(i..end);
            }
            Edit::Truncate(f) => {
                let i = at(*f, bytes.len());
                bytes.truncate(i);
            }
        }
    }
    bytes
}

/// `valid` damaged by one to four edits.
pub fn damaged(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(edit(), 1..5).prop_map(move |edits| apply(valid.clone(), &edits))
}
