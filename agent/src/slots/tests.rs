use super::*;

fn slot_range(slot: usize, slot_bytes: usize) -> std::ops::Range<usize> {
    slot * slot_bytes..(slot + 1) * slot_bytes
}

#[test]
fn absent_file_is_none_and_records_round_trip_newest_wins() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.slots");
    assert!(SlotFile::open(&path).unwrap().is_none());
    let mut f = SlotFile::create(&path, b"one").unwrap();
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        2 * MIN_SLOT_BYTES as u64
    );
    f.write(b"two", true).unwrap();
    f.write(b"three", false).unwrap();
    drop(f);
    let (mut f, payload) = SlotFile::open(&path).unwrap().unwrap();
    assert_eq!(payload, b"three");
    // Writing after a reopen continues the generations in the other slot.
    f.write(b"four", true).unwrap();
    assert_eq!(SlotFile::open(&path).unwrap().unwrap().1, b"four");
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        2 * MIN_SLOT_BYTES as u64,
        "in-place writes never change the file's size"
    );
}

/// A write torn anywhere (header or payload) leaves the previous record.
#[test]
fn a_torn_write_falls_back_to_the_previous_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.slots");
    let mut f = SlotFile::create(&path, b"old record").unwrap();
    f.write(b"previous record", true).unwrap(); // slot 1, generation 2
    let good = fs::read(&path).unwrap();
    let new = {
        let mut buf = Vec::new();
        encode(&mut buf, 3, b"the newest record, never completed").unwrap();
        buf
    };
    // Slot 0 gets the torn generation-3 write: every prefix of it, over the old slot 0.
    for cut in 0..new.len() {
        let mut image = good.clone();
        image[..cut].copy_from_slice(&new[..cut]);
        fs::write(&path, &image).unwrap();
        let (_, payload) = SlotFile::open(&path).unwrap().unwrap();
        assert!(
            payload == b"previous record" || (cut == new.len() && payload == new[HEADER_BYTES..]),
            "cut at {cut}: {:?}",
            String::from_utf8_lossy(&payload)
        );
    }
    // A flipped payload byte is caught by the checksum.
    let mut image = good.clone();
    image[MIN_SLOT_BYTES + HEADER_BYTES] ^= 1;
    fs::write(&path, &image).unwrap();
    assert_eq!(SlotFile::open(&path).unwrap().unwrap().1, b"old record");
}

#[test]
fn both_slots_damaged_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.slots");
    let mut f = SlotFile::create(&path, b"a").unwrap();
    f.write(b"b", true).unwrap();
    let mut image = fs::read(&path).unwrap();
    for slot in 0..2 {
        image[slot_range(slot, MIN_SLOT_BYTES)][HEADER_BYTES] ^= 0xff;
    }
    fs::write(&path, &image).unwrap();
    let e = SlotFile::open(&path).unwrap_err();
    assert!(matches!(e, SlotError::Damaged { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("no valid record") && text.contains("checksum"),
        "{text}"
    );
    // Not a slot file at all: wrong length, or zeros.
    fs::write(&path, b"{\"next_seq\": 5}").unwrap();
    assert!(matches!(
        SlotFile::open(&path),
        Err(SlotError::Damaged { .. })
    ));
    fs::write(&path, vec![0u8; 2 * MIN_SLOT_BYTES]).unwrap();
    assert!(matches!(
        SlotFile::open(&path),
        Err(SlotError::Damaged { .. })
    ));
}

#[test]
fn a_record_larger_than_a_slot_grows_the_file_and_keeps_the_generation_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.slots");
    let mut f = SlotFile::create(&path, b"small").unwrap();
    let big = vec![b'x'; 3 * MIN_SLOT_BYTES];
    f.write(&big, true).unwrap();
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        2 * 4 * MIN_SLOT_BYTES as u64
    );
    assert_eq!(SlotFile::open(&path).unwrap().unwrap().1, big);
    f.write(b"small again", true).unwrap();
    let (_, payload) = SlotFile::open(&path).unwrap().unwrap();
    assert_eq!(payload, b"small again");
    assert!(matches!(
        f.write(&vec![0u8; MAX_SLOT_BYTES], true),
        Err(SlotError::TooLarge { .. })
    ));
    assert_eq!(SlotFile::open(&path).unwrap().unwrap().1, b"small again");
}

/// The agent runs as root: a symlink at the file's or the temp file's path is never followed.
#[test]
fn planted_symlinks_are_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.slots");
    let victim = dir.path().join("victim");
    fs::write(&victim, b"precious").unwrap();
    std::os::unix::fs::symlink(&victim, dir.path().join("s.tmp")).unwrap();
    SlotFile::create(&path, b"x").unwrap();
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
    fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink(&victim, &path).unwrap();
    assert!(matches!(SlotFile::open(&path), Err(SlotError::Io { .. })));
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
}

/// Synced D, then unsynced E and F; a power loss may lose or tear any slot written since the
/// sync (each either reaches the disk, keeps what the disk had at the sync, or is torn). In
/// every case D or a newer record is read: an unsynced write never lands on D's slot.
#[test]
fn unsynced_writes_never_overwrite_the_newest_synced_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.slots");
    let mut f = SlotFile::create(&path, b"A").unwrap();
    f.write(b"B", false).unwrap();
    f.write(b"C", false).unwrap();
    f.write(b"D", true).unwrap();
    let at_sync = fs::read(&path).unwrap();
    f.write(b"E", false).unwrap();
    f.write(b"F", false).unwrap();
    let now = fs::read(&path).unwrap();
    drop(f);
    let changed: Vec<usize> = (0..2)
        .filter(|&s| now[slot_range(s, MIN_SLOT_BYTES)] != at_sync[slot_range(s, MIN_SLOT_BYTES)])
        .collect();
    assert_eq!(changed.len(), 1, "both unsynced writes went to one slot");
    for fate in 0..3usize.pow(changed.len() as u32) {
        let mut image = now.clone();
        let mut f = fate;
        for &slot in &changed {
            let r = slot_range(slot, MIN_SLOT_BYTES);
            match f % 3 {
                0 => {}                                                     // reached the disk
                1 => image[r.clone()].copy_from_slice(&at_sync[r.clone()]), // never flushed
                _ => image[r.start + HEADER_BYTES] ^= 0xff,                 // torn
            }
            f /= 3;
        }
        fs::write(&path, &image).unwrap();
        let (_, payload) = SlotFile::open(&path).unwrap().unwrap();
        assert!(
            [&b"D"[..], b"E", b"F"].contains(&payload.as_slice()),
            "fate {fate}: {:?}",
            String::from_utf8_lossy(&payload)
        );
    }
    // The next synced write after a reopen also spares the record read at open.
    fs::write(&path, &now).unwrap();
    let (mut f, payload) = SlotFile::open(&path).unwrap().unwrap();
    assert_eq!(payload, b"F");
    f.write(b"G", false).unwrap();
    let mut image = fs::read(&path).unwrap();
    let g_slot = (0..2)
        .find(|&s| image[slot_range(s, MIN_SLOT_BYTES)] != now[slot_range(s, MIN_SLOT_BYTES)])
        .unwrap();
    image[slot_range(g_slot, MIN_SLOT_BYTES)][HEADER_BYTES] ^= 0xff;
    fs::write(&path, &image).unwrap();
    assert_eq!(SlotFile::open(&path).unwrap().unwrap().1, b"F");
}
