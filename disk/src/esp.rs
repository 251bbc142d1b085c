//! The EFI system partition (`IMRS-ESP`) and its two slots: what the builder formats, what
//! `flash` and `update` write, and what the init lists and blesses.
//!
//! ```text
//! EFI/BOOT/BOOTX64.EFI          systemd-boot (Debian systemd-boot-efi, pinned in the lock)
//! loader/loader.conf            timeout 0, editor no, no default
//! loader/entries/imrs-a.conf    slot A, blessed          (type #1 entries: linux/initrd/options)
//! loader/entries/imrs-b+3.conf  slot B, 3 tries left
//! imrs/a/{vmlinuz,initramfs.cpio.zst,manifest.json,manifest.sig}
//! imrs/b/...
//! ```
//!
//! [`Esp::write_slot`] writes in crash-safe order: the slot's old entry goes first (a
//! half-written payload is never bootable), then the payload files, a sync, then the entry
//! under a temporary name (`*.conf.tmp`, ignored by systemd-boot), a sync, and the rename to
//! its `.conf` name as the commit point ([`crate::fatdir::rename`], one sector write), synced.
//! A power cut at any point leaves the other slot as it was and this slot with an entry only if
//! its payload is complete. [`Esp::bless`] is the same atomic rename.

use crate::device::{Device, Window};
use crate::entry::{ENTRIES_DIR, EntryName, LOADER_CONF, LOADER_CONF_TEXT, LoaderEntry, Slot};
use crate::error::DiskError;
use crate::fat;
use crate::layout::{ESP_PARTNAME, find};
use crate::payload::{MANIFEST, SlotPayload};

/// Where firmware looks for a removable-media / fallback boot loader.
pub const BOOT_EFI: &str = "EFI/BOOT/BOOTX64.EFI";
/// FAT volume label of the ESP.
pub const ESP_LABEL: &str = "IMRS-ESP";
/// Smallest ESP formatted as FAT32 (65525 clusters of [`fat::ESP_CLUSTER`] bytes and the FATs).
pub const FAT32_MIN: u64 = 160 << 20;
/// Largest entry file read.
const ENTRY_LIMIT: u64 = 64 << 10;
/// Largest slot manifest read.
const MANIFEST_LIMIT: u64 = imrs_config::fsutil::limits::MANIFEST;
/// Free space kept beyond the payload's bytes (cluster rounding, directory growth).
const SLACK: u64 = 1 << 20;
/// Largest manifest signature file read back.
const SIGNATURE_LIMIT: u64 = 4 << 10;

/// A slot's boot loader entry as found in `loader/entries`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryStatus {
    /// Its file name.
    pub file: String,
    /// The slot and counter its name says.
    pub name: EntryName,
    /// Its text, when it parses.
    pub entry: Option<LoaderEntry>,
    /// Why its text does not parse.
    pub problem: Option<String>,
}

impl EntryStatus {
    /// The generation (`version`), when the entry parses.
    pub fn generation(&self) -> Option<u64> {
        self.entry.as_ref().map(|e| e.version)
    }
}

/// The image a slot holds, from its `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotImage {
    /// Image name.
    pub name: String,
    /// Image version.
    pub version: String,
    /// sha256 of the slot's `manifest.json`.
    pub manifest_sha256: String,
}

/// One slot: its entry (none: not bootable) and the image its payload holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotStatus {
    /// Which slot.
    pub slot: Slot,
    /// Its entry, if it has one.
    pub entry: Option<EntryStatus>,
    /// Further entry files for this slot (only a foreign tool makes them; the next
    /// [`Esp::write_slot`] for the slot removes them).
    pub extra_entries: Vec<String>,
    /// The image in its payload folder, if its manifest is there and parses.
    pub image: Option<SlotImage>,
}

impl SlotStatus {
    /// Whether the slot has an entry that parses and a payload manifest.
    pub fn bootable(&self) -> bool {
        self.image.is_some() && self.entry.as_ref().is_some_and(|e| e.entry.is_some())
    }

    /// Whether its entry is blessed.
    pub fn blessed(&self) -> bool {
        self.entry.as_ref().is_some_and(|e| e.name.is_blessed())
    }
}

/// The slot systemd-boot starts next, as it orders the entries (equal `sort-key`, newer
/// `version` first, entries whose tries are spent last): the newest bootable slot that is blessed
/// or has tries left, else the newest bootable one (systemd-boot still boots an exhausted entry
/// when nothing else is left). `None` when no slot is bootable.
pub fn next_boot(slots: &[SlotStatus; 2]) -> Option<Slot> {
    let newest = |good: bool| {
        slots
            .iter()
            .filter(|s| s.bootable())
            .filter(|s| {
                !good
                    || s.entry
                        .as_ref()
                        .is_some_and(|e| e.name.tries_left().is_none_or(|t| t > 0))
            })
            .max_by_key(|s| s.entry.as_ref().and_then(|e| e.generation()))
            .map(|s| s.slot)
    };
    newest(true).or_else(|| newest(false))
}

/// The slot an update writes: never the running one (`running`, from `imrs.slot=` on the
/// appliance), else (a disk that is not running) not the one that would boot next; slot A on a
/// disk with no bootable slot.
pub fn update_target(slots: &[SlotStatus; 2], running: Option<Slot>) -> Slot {
    match running.or_else(|| next_boot(slots)) {
        Some(s) => s.other(),
        None => Slot::A,
    }
}

/// What [`Esp::bless`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blessed {
    /// Renamed from the counted name to the blessed one.
    Renamed {
        /// Old file name.
        from: String,
        /// New file name.
        to: String,
    },
    /// The entry had no counter: nothing to do.
    Already,
}

/// The EFI system partition of a disk.
#[derive(Debug)]
pub struct Esp<D: Device> {
    vol: Window<D>,
}

impl<D: Device> Esp<D> {
    /// The ESP of a disk (image file, block device or in-memory disk): the partition named
    /// `IMRS-ESP` in its GPT.
    pub fn open(mut disk: D) -> Result<Esp<D>, DiskError> {
        let e = find(&mut disk, ESP_PARTNAME)?;
        Ok(Esp {
            vol: Window::new(disk, e.offset, e.len),
        })
    }

    /// The ESP in a window already found.
    pub fn from_window(vol: Window<D>) -> Esp<D> {
        Esp { vol }
    }

    /// Formats the window as the ESP: FAT32 (FAT16 below [`FAT32_MIN`], small test disks) with a
    /// volume id from `seed`, systemd-boot as
    /// [`BOOT_EFI`], `loader/loader.conf`, empty slot folders; every timestamp `epoch`.
    pub fn format(
        mut vol: Window<D>,
        seed: &[u8],
        epoch: i64,
        loader_efi: &[u8],
    ) -> Result<Esp<D>, DiskError> {
        let id = crate::guid::Guid::derive_u32(seed, "esp volume id");
        let fat32 = vol.len() >= FAT32_MIN;
        fat::format(&mut vol, ESP_PARTNAME, ESP_LABEL, id, fat32)?;
        let mut esp = Esp { vol };
        let fs = esp.fs(epoch)?;
        for d in ["EFI/BOOT", ENTRIES_DIR, "imrs/a", "imrs/b"] {
            fat::mkdirs(&fs, ESP_PARTNAME, d)?;
        }
        fat::write_file(&fs, ESP_PARTNAME, BOOT_EFI, loader_efi)?;
        fat::write_file(&fs, ESP_PARTNAME, LOADER_CONF, LOADER_CONF_TEXT.as_bytes())?;
        fat::close(fs, ESP_PARTNAME)?;
        esp.sync()?;
        Ok(esp)
    }

    /// Gives the device back.
    pub fn into_inner(self) -> D {
        self.vol.into_inner()
    }

    fn fs(&mut self, epoch: i64) -> Result<fat::Fat<'_, Window<D>>, DiskError> {
        fat::open(&mut self.vol, ESP_PARTNAME, epoch)
    }

    fn sync(&mut self) -> Result<(), DiskError> {
        self.vol.sync().map_err(DiskError::io(format!(
            "syncing the {ESP_PARTNAME} partition"
        )))
    }

    /// Reads a file of the ESP (`None` when absent), at most `limit` bytes.
    pub fn read_file(&mut self, path: &str, limit: u64) -> Result<Option<Vec<u8>>, DiskError> {
        let fs = self.fs(0)?;
        let r = fat::read_file(&fs, ESP_PARTNAME, path, limit);
        drop(fs);
        r
    }

    /// The payload a slot holds, read back from the ESP and checked against its manifest
    /// (sizes and sha256; the manifest's signature is the caller's to check); `None` when the
    /// slot has no manifest.
    pub fn read_slot(&mut self, slot: Slot) -> Result<Option<SlotPayload>, DiskError> {
        use crate::payload::{INITRAMFS, KERNEL, SIGNATURE};
        let dir = slot.dir();
        let fs = self.fs(0)?;
        let Some(manifest) = fat::read_file(
            &fs,
            ESP_PARTNAME,
            &format!("{dir}/{MANIFEST}"),
            MANIFEST_LIMIT,
        )?
        else {
            return Ok(None);
        };
        let parsed: imrs_config::image::Manifest =
            serde_json::from_slice(&manifest).map_err(|e| DiskError::Payload {
                detail: format!("{dir}/{MANIFEST}: not an image manifest: {e}"),
            })?;
        // Each artifact is read up to the size its manifest gives (a longer file fails here,
        // a shorter one in `SlotPayload::new`).
        let read = |name: &str| {
            let limit = parsed
                .artifacts
                .iter()
                .find(|a| a.name == name)
                .map_or(SIGNATURE_LIMIT, |a| a.size);
            fat::read_file(&fs, ESP_PARTNAME, &format!("{dir}/{name}"), limit)?.ok_or_else(|| {
                DiskError::Payload {
                    detail: format!("{dir}/{name} is missing"),
                }
            })
        };
        let signature = read(SIGNATURE)?;
        let kernel = read(KERNEL)?;
        let initramfs = read(INITRAMFS)?;
        drop(fs);
        SlotPayload::new(manifest, signature, kernel, initramfs).map(Some)
    }

    /// The file names in `loader/entries`.
    pub fn entry_files(&mut self) -> Result<Vec<String>, DiskError> {
        let fs = self.fs(0)?;
        let r = fat::list_files(&fs, ESP_PARTNAME, ENTRIES_DIR);
        drop(fs);
        r
    }

    /// Both slots, A first.
    pub fn slots(&mut self) -> Result<[SlotStatus; 2], DiskError> {
        let fs = self.fs(0)?;
        let files = fat::list_files(&fs, ESP_PARTNAME, ENTRIES_DIR)?;
        let mut out = Slot::ALL.map(|slot| SlotStatus {
            slot,
            entry: None,
            extra_entries: Vec::new(),
            image: None,
        });
        for f in files {
            let Some(name) = EntryName::parse(&f) else {
                continue;
            };
            let st = &mut out[name.slot as usize];
            if st.entry.is_some() {
                st.extra_entries.push(f);
                continue;
            }
            let path = format!("{ENTRIES_DIR}/{f}");
            let text = fat::read_file(&fs, ESP_PARTNAME, &path, ENTRY_LIMIT)?.unwrap_or_default();
            let parsed = std::str::from_utf8(&text)
                .map_err(|_| "not UTF-8 text".to_string())
                .and_then(LoaderEntry::parse);
            let (entry, problem) = match parsed {
                Ok(e) => (Some(e), None),
                Err(p) => (None, Some(p)),
            };
            st.entry = Some(EntryStatus {
                file: f,
                name,
                entry,
                problem,
            });
        }
        for st in &mut out {
            let path = format!("{}/{MANIFEST}", st.slot.dir());
            let Some(bytes) = fat::read_file(&fs, ESP_PARTNAME, &path, MANIFEST_LIMIT)? else {
                continue;
            };
            if let Ok(m) = serde_json::from_slice::<imrs_config::image::Manifest>(&bytes) {
                st.image = Some(SlotImage {
                    name: m.name,
                    version: m.version,
                    manifest_sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)),
                });
            }
        }
        drop(fs);
        Ok(out)
    }

    /// Writes `payload` into `slot` and commits its entry: blessed when `tries` is `None`
    /// (a freshly built disk), else counted with `tries` (1 to [`crate::entry::MAX_TRIES`]) so
    /// that systemd-boot tries it next. The entry's options are the image's command line,
    /// `imrs.manifest=<sha256> imrs.slot=<slot>`, then `extra_options`; its generation is one
    /// more than any entry on the ESP. Which slot to write (never the running one) is the
    /// caller's choice. Returns the entry name committed.
    pub fn write_slot(
        &mut self,
        slot: Slot,
        payload: &SlotPayload,
        tries: Option<u32>,
        extra_options: &[String],
    ) -> Result<EntryName, DiskError> {
        if let Some(t) = tries
            && !(1..=crate::entry::MAX_TRIES).contains(&t)
        {
            return Err(DiskError::Payload {
                detail: format!(
                    "{t} tries: a counted entry starts with 1 to {} tries",
                    crate::entry::MAX_TRIES
                ),
            });
        }
        let m = payload.manifest();
        let epoch = m.source_date_epoch;
        let dir = slot.dir();
        let committed = match tries {
            Some(t) => EntryName::counted(slot, t),
            None => EntryName::blessed(slot),
        };
        let title = format!("IMRS {} {} (slot {slot})", m.name, m.version);
        let mut options = format!(
            "{} imrs.manifest={} imrs.slot={slot}",
            m.cmdline,
            payload.manifest_sha256()
        );
        for o in extra_options {
            options.push(' ');
            options.push_str(o);
        }

        // 0. Room and generation, before anything is changed.
        let (generation, ours) = {
            let fs = self.fs(epoch)?;
            let mut old = 0u64;
            for (name, _) in payload.files() {
                old += fat::file_len(&fs, ESP_PARTNAME, &format!("{dir}/{name}"))?.unwrap_or(0);
            }
            let free = fat::free_bytes(&fs, ESP_PARTNAME)? + old;
            let needed = payload.total_len() + SLACK;
            if needed > free {
                return Err(DiskError::NoSpace {
                    slot: slot.letter(),
                    needed,
                    free,
                });
            }
            let mut max = 0u64;
            let mut ours = Vec::new();
            for f in fat::list_files(&fs, ESP_PARTNAME, ENTRIES_DIR)? {
                let base = f.strip_suffix(".tmp").unwrap_or(&f);
                let Some(n) = EntryName::parse(base) else {
                    continue;
                };
                if n.slot == slot {
                    ours.push(f.clone());
                }
                if f.ends_with(".tmp") {
                    continue;
                }
                let path = format!("{ENTRIES_DIR}/{f}");
                if let Some(t) = fat::read_file(&fs, ESP_PARTNAME, &path, ENTRY_LIMIT)?
                    && let Ok(e) = LoaderEntry::parse(&String::from_utf8_lossy(&t))
                {
                    max = max.max(e.version);
                }
            }
            drop(fs);
            (max + 1, ours)
        };

        // 1. The slot stops being bootable.
        {
            let fs = self.fs(epoch)?;
            for f in &ours {
                fat::remove(&fs, ESP_PARTNAME, &format!("{ENTRIES_DIR}/{f}"))?;
            }
            fat::close(fs, ESP_PARTNAME)?;
        }
        self.sync()?;

        // 2. The payload: every old file is removed before anything is allocated. (A power
        // cut inside a FAT removal can leave a file over freed clusters; removing it again
        // before the clusters can be reused keeps it from freeing another file's.)
        {
            let fs = self.fs(epoch)?;
            fat::mkdirs(&fs, ESP_PARTNAME, &dir)?;
            for (name, _) in payload.files() {
                fat::remove(&fs, ESP_PARTNAME, &format!("{dir}/{name}"))?;
            }
            for (name, data) in payload.files() {
                fat::write_file(&fs, ESP_PARTNAME, &format!("{dir}/{name}"), data)?;
            }
            fat::close(fs, ESP_PARTNAME)?;
        }
        self.sync()?;

        // 3. The entry under its temporary name.
        let entry = LoaderEntry::for_slot(slot, title, generation, options);
        let temp = committed.temp_name();
        {
            let fs = self.fs(epoch)?;
            fat::mkdirs(&fs, ESP_PARTNAME, ENTRIES_DIR)?;
            fat::write_file(
                &fs,
                ESP_PARTNAME,
                &format!("{ENTRIES_DIR}/{temp}"),
                entry.render().as_bytes(),
            )?;
            fat::close(fs, ESP_PARTNAME)?;
        }
        self.sync()?;

        // 4. Commit: the atomic rename (synced inside).
        crate::fatdir::rename(
            &mut self.vol,
            ESP_PARTNAME,
            ENTRIES_DIR,
            &temp,
            &committed.file_name(),
        )?;
        Ok(committed)
    }

    /// Marks a counted entry good: renames it (as named now, e.g. from `LoaderBootCountPath`)
    /// to the name without counter, in one atomic step. Refuses when the slot already has a
    /// blessed entry beside it (two entries for one slot make systemd-boot record a good boot
    /// as bad, systemd#33504).
    pub fn bless(&mut self, entry: &EntryName) -> Result<Blessed, DiskError> {
        let files = self.entry_files()?;
        let from = entry.file_name();
        let to = EntryName::blessed(entry.slot).file_name();
        if entry.is_blessed() {
            return if files.contains(&from) {
                Ok(Blessed::Already)
            } else {
                Err(DiskError::NotFound {
                    path: format!("{ENTRIES_DIR}/{from}"),
                    volume: ESP_PARTNAME,
                })
            };
        }
        if !files.contains(&from) {
            return Err(DiskError::NotFound {
                path: format!("{ENTRIES_DIR}/{from}"),
                volume: ESP_PARTNAME,
            });
        }
        crate::fatdir::rename(&mut self.vol, ESP_PARTNAME, ENTRIES_DIR, &from, &to)?;
        Ok(Blessed::Renamed { from, to })
    }
}

#[cfg(test)]
mod tests;
