//! Slots and systemd-boot's type #1 boot loader entries: the entry file names with their boot
//! counters (`imrs-a.conf`, `imrs-b+3.conf`, `imrs-b+2-1.conf`) and the entry text.
//!
//! systemd-boot 252 (docs/facts.md "Boot slots on UEFI") renames `imrs-b+3.conf` to
//! `imrs-b+2-1.conf` before starting the kernel; an entry at `+0-N` sorts after every other
//! entry but stays bootable. Both entries carry `sort-key imrs` and a `version` that grows with
//! every slot written (the generation), so the newest slot boots while it has tries left, and
//! the other one once they are spent. `loader.conf` sets no `default`: a bad slot must never
//! keep winning.

/// Folder of the entries in the ESP.
pub const ENTRIES_DIR: &str = "loader/entries";
/// The loader configuration file in the ESP.
pub const LOADER_CONF: &str = "loader/loader.conf";
/// Its text: boot at once, no editing the kernel command line at the console, no automatic
/// entries (firmware setup, other loaders), and no `default`.
pub const LOADER_CONF_TEXT: &str = "timeout 0\neditor no\nauto-entries no\nauto-firmware no\n";
/// The `sort-key` of every entry.
pub const SORT_KEY: &str = "imrs";
/// Most tries a counted entry may start with (the name must fit one FAT long-name entry:
/// `imrs-b+9.conf` is 13 characters).
pub const MAX_TRIES: u32 = 9;

/// One of the two slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Slot {
    /// Slot A.
    A,
    /// Slot B.
    B,
}

impl Slot {
    /// Both slots.
    pub const ALL: [Slot; 2] = [Slot::A, Slot::B];

    /// `a` or `b`.
    pub fn letter(self) -> char {
        match self {
            Slot::A => 'a',
            Slot::B => 'b',
        }
    }

    /// From `a` or `b`.
    pub fn from_letter(c: char) -> Option<Slot> {
        match c {
            'a' => Some(Slot::A),
            'b' => Some(Slot::B),
            _ => None,
        }
    }

    /// From `a` or `b` as a whole word (a kernel parameter's value, a command-line argument).
    pub fn parse(text: &str) -> Option<Slot> {
        let mut c = text.chars();
        match (c.next().and_then(Slot::from_letter), c.next()) {
            (Some(slot), None) => Some(slot),
            _ => None,
        }
    }

    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// The slot's payload folder in the ESP (`imrs/a`).
    pub fn dir(self) -> String {
        format!("imrs/{}", self.letter())
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.letter())
    }
}

/// A boot counter: tries left and, once systemd-boot has started the entry, tries done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    /// Tries left (`+N`).
    pub left: u32,
    /// Tries done (`-M`), absent before the first try.
    pub done: Option<u32>,
}

/// The name of one of our entry files: the slot and its counter (none: blessed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryName {
    /// The slot the entry boots.
    pub slot: Slot,
    /// The boot counter; `None` for a blessed entry.
    pub counter: Option<Counter>,
}

fn number(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 9 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl EntryName {
    /// A blessed entry for `slot`.
    pub fn blessed(slot: Slot) -> EntryName {
        EntryName {
            slot,
            counter: None,
        }
    }

    /// A fresh counted entry for `slot` with `tries` tries.
    pub fn counted(slot: Slot, tries: u32) -> EntryName {
        EntryName {
            slot,
            counter: Some(Counter {
                left: tries,
                done: None,
            }),
        }
    }

    /// Parses `imrs-<slot>[+LEFT[-DONE]].conf`; `None` for any other name (not ours).
    pub fn parse(file: &str) -> Option<EntryName> {
        let stem = file.strip_prefix("imrs-")?.strip_suffix(".conf")?;
        let mut chars = stem.chars();
        let slot = Slot::from_letter(chars.next()?)?;
        let rest = chars.as_str();
        if rest.is_empty() {
            return Some(EntryName::blessed(slot));
        }
        let counter = rest.strip_prefix('+')?;
        let (left, done) = match counter.split_once('-') {
            Some((l, d)) => (number(l)?, Some(number(d)?)),
            None => (number(counter)?, None),
        };
        Some(EntryName {
            slot,
            counter: Some(Counter { left, done }),
        })
    }

    /// The file name.
    pub fn file_name(&self) -> String {
        match self.counter {
            None => format!("imrs-{}.conf", self.slot),
            Some(Counter { left, done: None }) => format!("imrs-{}+{left}.conf", self.slot),
            Some(Counter {
                left,
                done: Some(d),
            }) => format!("imrs-{}+{left}-{d}.conf", self.slot),
        }
    }

    /// The name while the entry is being written (not `*.conf`: systemd-boot ignores it).
    pub fn temp_name(&self) -> String {
        format!("{}.tmp", self.file_name())
    }

    /// Whether the entry is blessed (no counter).
    pub fn is_blessed(&self) -> bool {
        self.counter.is_none()
    }

    /// Tries left; `None` for a blessed entry.
    pub fn tries_left(&self) -> Option<u32> {
        self.counter.map(|c| c.left)
    }

    /// Tries done; 0 before the first try and for a blessed entry.
    pub fn tries_done(&self) -> u32 {
        self.counter.and_then(|c| c.done).unwrap_or(0)
    }
}

impl std::fmt::Display for EntryName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.file_name())
    }
}

/// The text of a type #1 entry as we write it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoaderEntry {
    /// `title`: what a console shows.
    pub title: String,
    /// `version`: the generation (grows with every slot written).
    pub version: u64,
    /// `sort-key`.
    pub sort_key: String,
    /// `linux`: the kernel's path in the ESP.
    pub linux: String,
    /// `initrd`: the initramfs's path in the ESP.
    pub initrd: String,
    /// `options`: the kernel command line.
    pub options: String,
}

impl LoaderEntry {
    /// The entry for `slot`'s payload.
    pub fn for_slot(slot: Slot, title: String, generation: u64, options: String) -> LoaderEntry {
        LoaderEntry {
            title,
            version: generation,
            sort_key: SORT_KEY.into(),
            linux: format!("/{}/{}", slot.dir(), crate::payload::KERNEL),
            initrd: format!("/{}/{}", slot.dir(), crate::payload::INITRAMFS),
            options,
        }
    }

    /// The file's text.
    pub fn render(&self) -> String {
        format!(
            "title {}\nversion {}\nsort-key {}\nlinux {}\ninitrd {}\noptions {}\n",
            self.title, self.version, self.sort_key, self.linux, self.initrd, self.options
        )
    }

    /// Parses an entry's text (`key value` lines, `#` comments); `version`, `linux`, `initrd`
    /// and `options` are required, `version` a number.
    pub fn parse(text: &str) -> Result<LoaderEntry, String> {
        let mut e = LoaderEntry {
            title: String::new(),
            version: 0,
            sort_key: String::new(),
            linux: String::new(),
            initrd: String::new(),
            options: String::new(),
        };
        let mut version = None;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line
                .split_once(char::is_whitespace)
                .map(|(k, v)| (k, v.trim()))
                .unwrap_or((line, ""));
            match k {
                "title" => e.title = v.to_string(),
                "version" => {
                    version = Some(v.parse::<u64>().map_err(|_| {
                        format!(
                            "line {}: version {} is not a generation number",
                            i + 1,
                            imrs_config::escape(v)
                        )
                    })?)
                }
                "sort-key" => e.sort_key = v.to_string(),
                "linux" => e.linux = v.to_string(),
                "initrd" => e.initrd = v.to_string(),
                "options" => e.options = v.to_string(),
                _ => {}
            }
        }
        e.version = version.ok_or("no version line")?;
        for (k, v) in [
            ("linux", &e.linux),
            ("initrd", &e.initrd),
            ("options", &e.options),
        ] {
            if v.is_empty() {
                return Err(format!("no {k} line"));
            }
        }
        Ok(e)
    }

    /// The value of kernel parameter `key` in `options` (`imrs.manifest`).
    pub fn option(&self, key: &str) -> Option<&str> {
        self.options
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_parse_as_whole_words() {
        assert_eq!(Slot::parse("a"), Some(Slot::A));
        assert_eq!(Slot::parse("b"), Some(Slot::B));
        for bad in ["", "ab", "c", "A"] {
            assert_eq!(Slot::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn entry_names_round_trip() {
        for (name, slot, left, done) in [
            ("imrs-a.conf", Slot::A, None, 0),
            ("imrs-b+3.conf", Slot::B, Some(3), 0),
            ("imrs-b+2-1.conf", Slot::B, Some(2), 1),
            ("imrs-a+0-3.conf", Slot::A, Some(0), 3),
        ] {
            let e = EntryName::parse(name).unwrap();
            assert_eq!((e.slot, e.tries_left(), e.tries_done()), (slot, left, done));
            assert_eq!(e.file_name(), name);
            assert_eq!(e.is_blessed(), left.is_none());
        }
        for bad in [
            "imrs-c.conf",
            "imrs-a+.conf",
            "imrs-a+x.conf",
            "imrs-a+1-.conf",
            "imrs-a.conf.tmp",
            "imrs-a+3.conf.tmp",
            "other.conf",
            "imrs-ab.conf",
            "imrs-a+99999999999.conf",
        ] {
            assert_eq!(EntryName::parse(bad), None, "{bad}");
        }
        assert_eq!(
            EntryName::counted(Slot::B, 3).temp_name(),
            "imrs-b+3.conf.tmp"
        );
        assert!(EntryName::counted(Slot::B, MAX_TRIES).file_name().len() <= 13);
    }

    #[test]
    fn entries_render_and_parse() {
        let e = LoaderEntry::for_slot(
            Slot::B,
            "IMRS imrs-qemu 0.1.0 (slot b)".into(),
            7,
            "console=ttyS0 imrs.manifest=abc imrs.slot=b".into(),
        );
        let text = e.render();
        assert_eq!(
            text,
            "title IMRS imrs-qemu 0.1.0 (slot b)\nversion 7\nsort-key imrs\n\
             linux /imrs/b/vmlinuz\ninitrd /imrs/b/initramfs.cpio.zst\n\
             options console=ttyS0 imrs.manifest=abc imrs.slot=b\n"
        );
        let back = LoaderEntry::parse(&text).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.option("imrs.manifest"), Some("abc"));
        assert_eq!(back.option("imrs.slot"), Some("b"));
        assert_eq!(back.option("imrs"), None);
        assert_eq!(
            LoaderEntry::parse("version x\n").unwrap_err(),
            "line 1: version x is not a generation number"
        );
        assert_eq!(
            LoaderEntry::parse("version 1\nlinux /k\ninitrd /i\n").unwrap_err(),
            "no options line"
        );
        assert_eq!(LoaderEntry::parse("").unwrap_err(), "no version line");
    }
}
