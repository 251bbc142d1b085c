//! The slot library on in-memory disks: a fresh disk, an update into the other slot, boot
//! counting and blessing, and a slot write cut by a power loss at every single write.

use std::io::Cursor;

use super::*;
use crate::device::CutAfter;
use crate::layout::{Kind, Layout, MIB};
use crate::payload::tests::payload;
use crate::payload::{INITRAMFS, KERNEL, SIGNATURE};

const EFI: &[u8] = b"MZ fake systemd-boot";

/// A small disk (8 MiB ESP, FAT16) with slot A written and blessed.
fn fresh() -> (Vec<u8>, SlotPayload) {
    let layout = Layout {
        size: 12 * MIB,
        disk_guid: crate::guid::Guid::derive(b"t", "disk"),
        partitions: vec![crate::layout::Partition {
            kind: Kind::Esp,
            extent: crate::layout::Extent {
                offset: MIB,
                len: 8 * MIB,
            },
            guid: crate::guid::Guid::derive(b"t", "esp"),
        }],
    };
    let mut disk = Cursor::new(vec![0u8; layout.size as usize]);
    layout.write_gpt(&mut disk).unwrap();
    let ext = layout.get(Kind::Esp).unwrap().extent;
    let mut esp = Esp::format(Window::new(disk, ext.offset, ext.len), b"t", 1, EFI).unwrap();
    let a = payload("1", 3000);
    assert_eq!(
        esp.write_slot(Slot::A, &a, None, &[]).unwrap(),
        EntryName::blessed(Slot::A)
    );
    (esp.into_inner().into_inner(), a)
}

/// Every entry on the disk boots a complete payload: its files are there, match their
/// manifest, and the manifest is the one the entry's `imrs.manifest=` names.
fn check_entries_boot_complete_payloads(bytes: &[u8]) -> [SlotStatus; 2] {
    let mut esp = Esp::open(Cursor::new(bytes.to_vec())).unwrap();
    let slots = esp.slots().unwrap();
    for st in &slots {
        let Some(e) = &st.entry else { continue };
        let entry = e.entry.as_ref().expect("a committed entry parses");
        let dir = st.slot.dir();
        let read = |esp: &mut Esp<Cursor<Vec<u8>>>, n: &str| {
            esp.read_file(&format!("{dir}/{n}"), 1 << 20)
                .unwrap()
                .unwrap_or_else(|| panic!("slot {} has an entry but no {n}", st.slot))
        };
        let p = SlotPayload::new(
            read(&mut esp, MANIFEST),
            read(&mut esp, SIGNATURE),
            read(&mut esp, KERNEL),
            read(&mut esp, INITRAMFS),
        )
        .expect("the payload matches its manifest");
        assert_eq!(
            entry.option("imrs.manifest"),
            Some(p.manifest_sha256().as_str())
        );
        assert_eq!(
            entry.option("imrs.slot"),
            Some(st.slot.to_string().as_str())
        );
        assert!(st.bootable());
    }
    slots
}

#[test]
fn a_fresh_disk_has_slot_a_blessed_and_b_empty() {
    let (bytes, a) = fresh();
    let mut esp = Esp::open(Cursor::new(bytes.clone())).unwrap();
    assert_eq!(esp.read_file(BOOT_EFI, 1 << 20).unwrap().unwrap(), EFI);
    assert_eq!(
        esp.read_file(LOADER_CONF, 1024).unwrap().unwrap(),
        LOADER_CONF_TEXT.as_bytes()
    );
    let [sa, sb] = check_entries_boot_complete_payloads(&bytes);
    let e = sa.entry.unwrap();
    assert_eq!(e.file, "imrs-a.conf");
    assert_eq!(e.generation(), Some(1));
    assert_eq!(
        e.entry.unwrap().options,
        format!(
            "console=ttyS0 imrs.manifest={} imrs.slot=a",
            a.manifest_sha256()
        )
    );
    assert_eq!(
        sa.image.unwrap(),
        SlotImage {
            name: "imrs-test".into(),
            version: "1".into(),
            manifest_sha256: a.manifest_sha256()
        }
    );
    assert_eq!(sb.entry, None);
    assert!(!sb.bootable());
    assert_eq!(esp.entry_files().unwrap(), ["imrs-a.conf"]);
}

#[test]
fn an_update_is_tried_counted_then_blessed() {
    let (bytes, _) = fresh();
    let mut esp = Esp::open(Cursor::new(bytes)).unwrap();
    let b = payload("2", 5000);
    let extra = ["imrs.stop_after=hardware".to_string()];
    let name = esp.write_slot(Slot::B, &b, Some(3), &extra).unwrap();
    assert_eq!(name.file_name(), "imrs-b+3.conf");
    let slots = esp.slots().unwrap();
    // The new slot is tried next; an update now would write A (B is about to run).
    assert_eq!(next_boot(&slots), Some(Slot::B));
    assert_eq!(update_target(&slots, None), Slot::A);
    assert_eq!(update_target(&slots, Some(Slot::A)), Slot::B);
    let [sa, sb] = slots;
    assert!(sa.blessed());
    let eb = sb.entry.unwrap();
    assert_eq!((eb.name.tries_left(), eb.generation()), (Some(3), Some(2)));
    assert!(
        eb.entry
            .unwrap()
            .options
            .ends_with(" imrs.slot=b imrs.stop_after=hardware")
    );

    // systemd-boot counts a try before starting the kernel (through the firmware's FAT driver:
    // fatfs's rename stands in for it here).
    {
        let fs = esp.fs(0).unwrap();
        {
            let d = fs.root_dir().open_dir(ENTRIES_DIR).unwrap();
            d.rename("imrs-b+3.conf", &d, "imrs-b+2-1.conf").unwrap();
        }
        fat::close(fs, ESP_PARTNAME).unwrap();
    }
    let selected = EntryName::parse("imrs-b+2-1.conf").unwrap();
    // Tries spent: A (blessed, older) boots next.
    {
        let fs = esp.fs(0).unwrap();
        {
            let d = fs.root_dir().open_dir(ENTRIES_DIR).unwrap();
            d.rename("imrs-b+2-1.conf", &d, "imrs-b+0-3.conf").unwrap();
        }
        fat::close(fs, ESP_PARTNAME).unwrap();
    }
    assert_eq!(next_boot(&esp.slots().unwrap()), Some(Slot::A));
    {
        let fs = esp.fs(0).unwrap();
        {
            let d = fs.root_dir().open_dir(ENTRIES_DIR).unwrap();
            d.rename("imrs-b+0-3.conf", &d, "imrs-b+2-1.conf").unwrap();
        }
        fat::close(fs, ESP_PARTNAME).unwrap();
    }
    assert_eq!(
        esp.bless(&selected).unwrap(),
        Blessed::Renamed {
            from: "imrs-b+2-1.conf".into(),
            to: "imrs-b.conf".into()
        }
    );
    assert_eq!(
        esp.bless(&EntryName::blessed(Slot::B)).unwrap(),
        Blessed::Already
    );
    let e = esp.bless(&selected).unwrap_err().to_string();
    assert_eq!(
        e,
        "loader/entries/imrs-b+2-1.conf: not found on the IMRS-ESP partition"
    );
    let bytes = esp.into_inner().into_inner();
    let [sa, sb] = check_entries_boot_complete_payloads(&bytes);
    assert!(sa.blessed() && sb.blessed());
    assert_eq!(sb.entry.unwrap().generation(), Some(2));

    // Writing A again gives it the next generation and removes its old entry.
    let mut esp = Esp::open(Cursor::new(bytes)).unwrap();
    esp.write_slot(Slot::A, &payload("3", 10), Some(1), &[])
        .unwrap();
    assert_eq!(esp.entry_files().unwrap(), ["imrs-a+1.conf", "imrs-b.conf"]);
    let [sa, _] = esp.slots().unwrap();
    assert_eq!(sa.entry.unwrap().generation(), Some(3));
    assert_eq!(sa.image.unwrap().version, "3");
}

#[test]
fn bad_requests_change_nothing() {
    let (bytes, _) = fresh();
    let mut esp = Esp::open(Cursor::new(bytes.clone())).unwrap();
    let e = esp
        .write_slot(Slot::B, &payload("2", 10), Some(10), &[])
        .unwrap_err();
    assert!(e.to_string().contains("1 to 9 tries"), "{e}");
    let e = esp
        .write_slot(Slot::B, &payload("big", 9 << 20), Some(3), &[])
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("slot b: the payload needs ") && e.contains("the EFI system partition has"),
        "{e}"
    );
    assert!(
        esp.into_inner().into_inner() == bytes,
        "nothing may be written"
    );
    let e = Esp::open(Cursor::new(vec![0u8; 1 << 20])).unwrap_err();
    assert!(e.to_string().starts_with("no readable GPT"), "{e}");
}

/// The core promise: a slot write cut at any write leaves the other slot bootable as it was,
/// and an entry for the slot being written only if its payload is complete.
#[test]
fn a_slot_write_cut_at_every_write_never_breaks_a_slot() {
    let (bytes, a) = fresh();
    // Two rounds: B empty before, and B holding an older image that is being replaced.
    let mut start = bytes;
    for round in 0..2 {
        let b = payload(&format!("b{round}"), 7000 + round * 3000);
        let mut cut_at = 0;
        let final_bytes = loop {
            let mut dev = CutAfter::in_memory(start.clone(), cut_at);
            let r =
                Esp::open(&mut dev).and_then(|mut esp| esp.write_slot(Slot::B, &b, Some(3), &[]));
            let after = dev.inner.into_inner();
            let [sa, sb] = check_entries_boot_complete_payloads(&after);
            // A is untouched.
            assert!(sa.blessed(), "round {round}, cut after {cut_at} writes");
            assert_eq!(
                sa.image.as_ref().unwrap().manifest_sha256,
                a.manifest_sha256()
            );
            match r {
                Ok(_) => {
                    assert_eq!(dev.refused, 0);
                    let img = sb.image.unwrap();
                    assert_eq!(img.manifest_sha256, b.manifest_sha256());
                    assert_eq!(sb.entry.unwrap().file, "imrs-b+3.conf");
                    break after;
                }
                Err(_) => {
                    // B has no entry, or its previous image's (cut before the removal was
                    // written), or the new one (cut after the commit's sector write, in the
                    // sync): never one for a half-written payload (checked above).
                    if let Some(e) = &sb.entry {
                        let opt = e.entry.as_ref().unwrap().option("imrs.manifest").unwrap();
                        let new = opt == b.manifest_sha256();
                        assert!(new || round == 1, "round 0 had no B entry (cut {cut_at})");
                        if new {
                            assert_eq!(e.file, "imrs-b+3.conf");
                        }
                    }
                }
            }
            cut_at += 1;
            assert!(cut_at < 10_000, "the write never completed");
        };
        assert!(
            cut_at > 10,
            "the write takes more than a few writes ({cut_at})"
        );
        start = final_bytes;
    }
}

#[test]
fn a_slot_reads_back_and_can_be_written_again_to_roll_back() {
    let (bytes, a) = fresh();
    let mut esp = Esp::open(Cursor::new(bytes)).unwrap();
    assert!(esp.read_slot(Slot::B).unwrap().is_none(), "slot B is empty");
    let back = esp
        .read_slot(Slot::A)
        .unwrap()
        .expect("slot A holds a payload");
    assert_eq!(back.manifest_sha256(), a.manifest_sha256());
    assert_eq!(back.files(), a.files());
    // An update into B, then a rollback: A's own payload, read back, written again as the
    // newest (counted) entry, so that systemd-boot tries A next.
    esp.write_slot(Slot::B, &payload("2", 5000), Some(3), &[])
        .unwrap();
    let again = esp.write_slot(Slot::A, &back, Some(3), &[]).unwrap();
    assert_eq!(again.file_name(), "imrs-a+3.conf");
    assert_eq!(next_boot(&esp.slots().unwrap()), Some(Slot::A));
    check_entries_boot_complete_payloads(&esp.into_inner().into_inner());

    // A kernel cut short on the ESP is named, not read as a payload.
    let (bytes, _) = fresh();
    let mut esp = Esp::open(Cursor::new(bytes)).unwrap();
    {
        let fs = esp.fs(0).unwrap();
        fat::remove(&fs, ESP_PARTNAME, &format!("{}/{KERNEL}", Slot::A.dir())).unwrap();
        fat::write_file(
            &fs,
            ESP_PARTNAME,
            &format!("{}/{KERNEL}", Slot::A.dir()),
            b"short",
        )
        .unwrap();
        fat::close(fs, ESP_PARTNAME).unwrap();
    }
    let e = esp.read_slot(Slot::A).unwrap_err().to_string();
    assert!(e.contains("vmlinuz is 5 bytes"), "{e}");
}
