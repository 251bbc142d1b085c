//! Text from reporters made safe for a terminal. Serials, site ids, reasons and refused values
//! come from whoever can reach the receiver; printed raw, an ESC sequence would rewrite the
//! operator's screen, a CR or LF would forge a row, a bidi override would reorder what is read.
//!
//! [`escape`] writes every C0 and C1 control, DEL, the Unicode bidi controls and the line and
//! paragraph separators as Rust-style escapes (`\n`, `\r`, `\t`, `\x1b`, `\u{202e}`) and the
//! backslash as `\\`, so an escape seen on screen can always be told apart from one that was
//! sent. Everything else passes unchanged. JSON output does not need this: its encoder escapes
//! controls already and must stay exact.

use std::borrow::Cow;
use std::fmt::Write;

/// Whether `c` is written escaped.
fn unsafe_char(c: char) -> bool {
    c.is_control()
        || c == '\\'
        || matches!(
            c,
            '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
                | '\u{2028}'
                | '\u{2029}'
        )
}

/// `text` with every control, bidi control and backslash escaped; borrowed when nothing is.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x80 && unsafe_char(c) => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if unsafe_char(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_controls_bidi_and_backslash_only() {
        let cases = [
            ("SN-1", "SN-1"),
            ("sité ünïcode 日本", "sité ünïcode 日本"),
            ("\x1b[2J", "\\x1b[2J"),
            ("a\nb\rc\td", "a\\nb\\rc\\td"),
            ("\0\x07\x7f", "\\x00\\x07\\x7f"),
            ("\u{85}\u{9b}31m", "\\u{85}\\u{9b}31m"),
            ("abc\u{202e}fed", "abc\\u{202e}fed"),
            (
                "\u{2066}\u{2069}\u{200f}\u{61c}",
                "\\u{2066}\\u{2069}\\u{200f}\\u{61c}",
            ),
            ("line\u{2028}sep", "line\\u{2028}sep"),
            ("C:\\x1b", "C:\\\\x1b"),
        ];
        for (raw, want) in cases {
            assert_eq!(escape(raw), want, "{raw:?}");
        }
        assert!(matches!(escape("plain"), Cow::Borrowed(_)));
        // Nothing escaped contains a control any more.
        let all: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        assert!(!escape(&all).chars().any(unsafe_char_but_backslash));
    }

    fn unsafe_char_but_backslash(c: char) -> bool {
        c != '\\' && unsafe_char(c)
    }
}
