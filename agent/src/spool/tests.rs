use super::*;
use vmmon_common::wire::VmSample;

fn sample(ms: i64) -> Sample {
    Sample {
        vm: VmSample {
            sampled_at_ms: ms,
            elapsed_ms: 1000,
            cpu_pct: 1.0,
            mem_pct: 1.0,
            proc_count: 1,
            ..VmSample::default()
        },
        processes: None,
    }
}

/// Seqs of the batches waiting, as a restarted agent would find them on disk.
fn on_disk(dir: &Path) -> Vec<u64> {
    read_spooled(dir).unwrap().iter().map(|b| b.seq).collect()
}

/// Where batch `seq`'s record is: its segment's path and the record's offset and payload length.
fn record_of(spool: &Spool, seq: u64) -> (PathBuf, u64, u64) {
    let e = spool.index.iter().find(|e| e.seq == seq).unwrap();
    let path = spool.segments[&e.seg].path().to_path_buf();
    (path, e.offset, e.bytes)
}

/// Overwrites `bytes` at `offset` of `path` (a damaged disk, a torn write).
fn poke(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .write_all_at(bytes, offset)
        .unwrap();
}

/// Damages batch `seq`'s payload on disk (its checksum then fails).
fn spoil(spool: &Spool, seq: u64) {
    let (path, offset, len) = record_of(spool, seq);
    poke(
        &path,
        offset + segment::HEADER_BYTES as u64 + len / 2,
        b"\x00\x00",
    );
}

/// The text of every batch waiting, read from disk in order.
fn texts(spool: &mut Spool) -> Vec<String> {
    let entries: Vec<Entry> = spool.index.iter().copied().collect();
    entries
        .iter()
        .map(|e| {
            spool.read_entry(e).unwrap();
            String::from_utf8(spool.read_buf.clone()).unwrap()
        })
        .collect()
}

/// A batch file of the per-file spool of older agents.
fn legacy_batch(dir: &Path, seq: u64, ms: i64) -> PathBuf {
    let spool = dir.join(SPOOL_DIR);
    fs::create_dir_all(&spool).unwrap();
    let path = spool.join(format!("{seq:020}.batch"));
    let batch = ReportBatch {
        batch_id: Uuid::new_v4(),
        instance_id: "i".into(),
        seq,
        samples: vec![sample(ms)],
        dropped_samples_total: 0,
        cdn: Vec::new(),
        cdn_tail: None,
    };
    fs::write(&path, serde_json::to_vec(&batch).unwrap()).unwrap();
    path
}

fn legacy_files(dir: &Path) -> usize {
    fs::read_dir(dir.join(SPOOL_DIR))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "batch")
        })
        .count()
}

#[test]
fn push_oldest_remove_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, report) = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(report, OpenReport::default());
    let a = spool.push("i", vec![sample(1)]).unwrap();
    let b = spool.push("i", vec![sample(2)]).unwrap();
    assert_eq!((a, b), (0, 1));
    let first = spool.oldest().unwrap().unwrap();
    assert_eq!(first.seq, 0);
    assert_eq!(first.samples[0].vm.sampled_at_ms, 1);
    spool.remove(first.seq).unwrap();
    assert_eq!(spool.oldest().unwrap().unwrap().seq, 1);
    spool.remove(1).unwrap();
    assert!(spool.oldest().unwrap().is_none());
    assert!(spool.is_empty());
    assert_eq!(spool.bytes(), 0);
}

#[test]
fn restart_recovery_keeps_batches_ids_and_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let id;
    {
        let (mut spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
        spool.push("i", vec![sample(1)]).unwrap();
        spool.push("i", vec![sample(2)]).unwrap();
        id = spool.oldest().unwrap().unwrap().batch_id;
        spool
            .set_desired(DesiredState {
                monitoring: true,
                interval_secs: 7,
            })
            .unwrap();
    }
    let (mut spool, report) = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(report.batches, 2);
    assert_eq!(report.moved_aside, 0);
    let first = spool.oldest().unwrap().unwrap();
    assert_eq!(
        first.batch_id, id,
        "a resent batch keeps its id so the collector can dedup it"
    );
    assert_eq!(
        spool.desired(),
        Some(DesiredState {
            monitoring: true,
            interval_secs: 7
        })
    );
    assert_eq!(spool.push("i", vec![sample(3)]).unwrap(), 2);
}

/// Bytes of one spooled batch of instance "i" with one sample.
fn one_batch_bytes() -> u64 {
    serde_json::to_vec(&ReportBatch {
        batch_id: Uuid::new_v4(),
        instance_id: "i".into(),
        seq: 0,
        samples: vec![sample(1)],
        dropped_samples_total: 0,
        cdn: Vec::new(),
        cdn_tail: None,
    })
    .unwrap()
    .len() as u64
}

#[test]
fn size_limit_drops_oldest_and_counts_samples() {
    let dir = tempfile::tempdir().unwrap();
    let one = one_batch_bytes();
    // Room for three batches (plus slack for longer sequence numbers).
    let (mut spool, _) = Spool::open(dir.path(), one * 3 + 20).unwrap();
    for ms in 1..=10 {
        spool.push("i", vec![sample(ms)]).unwrap();
    }
    assert_eq!(spool.len(), 3);
    assert_eq!(spool.dropped_samples_total(), 7);
    let first = spool.oldest().unwrap().unwrap();
    assert_eq!(
        first.samples[0].vm.sampled_at_ms, 8,
        "the oldest are dropped, the newest kept"
    );
    assert_eq!(
        first.dropped_samples_total, 7,
        "the drop count travels with the batches"
    );
    assert_eq!(on_disk(dir.path()).len(), 3);
    assert_eq!(
        spool.segment_count(),
        1,
        "dropping writes nothing to the segments"
    );
    drop(spool);
    let (spool, _) = Spool::open(dir.path(), one * 3 + 20).unwrap();
    assert_eq!(
        spool.dropped_samples_total(),
        7,
        "the count survives restarts"
    );
}

/// The per-file spool of an older agent with damage in it: as before, damaged files are moved
/// aside and counted, and the intact batch is kept (now in a segment).
#[test]
fn truncated_and_garbage_files_are_moved_aside_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = (1..=3)
        .map(|ms| legacy_batch(dir.path(), ms as u64 - 1, ms))
        .collect();
    let text = fs::read(&files[0]).unwrap();
    fs::write(&files[0], &text[..text.len() / 2]).unwrap();
    fs::write(&files[1], b"\x00\xffgarbage").unwrap();
    fs::write(
        dir.path().join(SPOOL_DIR).join("00000000000000000009.tmp"),
        b"{\"half",
    )
    .unwrap();
    let (mut spool, report) = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(report.moved_aside, 3);
    assert_eq!(report.batches, 1);
    assert_eq!(spool.corrupt_files_total(), 3);
    assert_eq!(spool.dropped_samples_total(), 3);
    assert_eq!(
        spool.oldest().unwrap().unwrap().samples[0].vm.sampled_at_ms,
        3
    );
    let aside = fs::read_dir(dir.path().join(SPOOL_DIR).join(CORRUPT_DIR))
        .unwrap()
        .count();
    assert_eq!(aside, 3, "damaged files are kept for inspection");
    // Sequence numbers continue after the surviving batch.
    assert_eq!(spool.push("i", vec![sample(4)]).unwrap(), 3);
}

/// Damaged records in a segment (a payload that fails its checksum, a header that does, JSON
/// that is not a batch): set aside for inspection, counted once, the others kept in order.
#[test]
fn damaged_records_are_set_aside_and_counted_once() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
        for ms in 1..=5 {
            spool.push("i", vec![sample(ms)]).unwrap();
        }
        spoil(&spool, 0);
        // A damaged header: the scan of the segment cannot go past it.
        let (path, offset, _) = record_of(&spool, 3);
        poke(&path, offset + 20, b"\x55");
        // A valid record (checksums right) that is not a batch.
        let (path, offset, len) = record_of(&spool, 1);
        let junk = vec![b' '; len as usize];
        let header = segment::Header {
            live: true,
            nonce: spool.segments[&0].nonce,
            seq: 1,
            len: len as u32,
            samples: 1,
            payload_crc: crc32fast::hash(&junk),
        };
        poke(&path, offset, &header.encode());
        poke(&path, offset + segment::HEADER_BYTES as u64, &junk);
    }
    let (mut spool, report) = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(
        report.batches, 1,
        "batch 2 (3 and 4 are behind the torn header)"
    );
    assert_eq!(report.moved_aside, 3);
    assert_eq!(spool.corrupt_files_total(), 3);
    assert_eq!(
        spool.dropped_samples_total(),
        4,
        "0 and 1 damaged, 3 and 4 hidden by the torn header: the state says they were spooled"
    );
    assert_eq!(spool.oldest().unwrap().unwrap().seq, 2);
    let aside = fs::read_dir(dir.path().join(SPOOL_DIR).join(CORRUPT_DIR))
        .unwrap()
        .count();
    assert_eq!(aside, 3, "their bytes are kept for inspection");
    // Numbers go on after the state's, and the damage is not found (or counted) again.
    assert_eq!(spool.push("i", vec![sample(6)]).unwrap(), 5);
    drop(spool);
    let (mut spool, report) = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(
        report,
        OpenReport {
            batches: 2,
            moved_aside: 0
        }
    );
    assert_eq!(spool.dropped_samples_total(), 4);
    let sent: Vec<i64> = std::iter::from_fn(|| {
        let out = spool.next_to_send().unwrap()?;
        spool.remove(out.seq).unwrap();
        Some(sent_batch(&out).samples[0].vm.sampled_at_ms)
    })
    .collect();
    assert_eq!(sent, vec![3, 6]);
}

#[test]
fn damaged_state_file_does_not_stop_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
        spool.push("i", vec![sample(1)]).unwrap();
    }
    fs::write(dir.path().join(STATE_SLOTS), b"not slots").unwrap();
    let (mut spool, report) = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(report.moved_aside, 1);
    assert_eq!(report.batches, 1);
    assert_eq!(
        spool.push("i", vec![sample(2)]).unwrap(),
        1,
        "next_seq is recovered from the files"
    );
    drop(spool);
    // A real slot file with both slots damaged (a damaged disk; a torn write damages only
    // one): moved aside for inspection, a new one written, the agent goes on from the batches.
    let slots = dir.path().join(STATE_SLOTS);
    let mut image = fs::read(&slots).unwrap();
    let slot_bytes = image.len() / 2;
    for k in 0..2 {
        image[k * slot_bytes + crate::slots::HEADER_BYTES] ^= 0xff;
    }
    fs::write(&slots, &image).unwrap();
    let (mut spool, report) = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(report.moved_aside, 1);
    assert_eq!(spool.push("i", vec![sample(3)]).unwrap(), 2);
    let aside = fs::read_dir(dir.path().join(SPOOL_DIR).join(CORRUPT_DIR))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(STATE_SLOTS)
        })
        .count();
    assert_eq!(aside, 2, "both damaged state files are kept for inspection");
    assert!(crate::slots::SlotFile::open(&slots).unwrap().is_some());
}

#[test]
fn discard_counts_the_batch_as_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
    let seq = spool.push("i", vec![sample(1), sample(2)]).unwrap();
    spool.discard(seq).unwrap();
    assert_eq!(spool.dropped_samples_total(), 2);
    assert!(spool.is_empty());
}

#[test]
fn extension_keys_are_spooled_and_sent_as_written() {
    use vmmon_common::wire::ext::{SampleExt, VmSampleExt};
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
    let ext = SampleExt {
        vm: VmSampleExt {
            cpu_steal_pct: Some(12.5),
            unreadable_procs: None,
        },
        processes: Vec::new(),
    };
    let seq = spool
        .push_batch_ext("i", vec![sample(7)], &[ext], Vec::new(), None)
        .unwrap();
    // The typed view reads the key into its wire field (`VmSample::cpu_steal_pct`).
    let mut with_steal = sample(7);
    with_steal.vm.cpu_steal_pct = Some(12.5);
    assert_eq!(
        spool.oldest().unwrap().unwrap().samples,
        vec![with_steal.clone()]
    );
    let (raw_seq, raw) = spool.oldest_raw().unwrap().unwrap();
    assert_eq!(raw_seq, seq);
    let sent: serde_json::Value = serde_json::to_value(&raw).unwrap();
    assert_eq!(sent["samples"][0]["vm"]["cpu_steal_pct"], 12.5);
    let typed: ReportBatch = serde_json::from_value(sent).unwrap();
    assert_eq!(typed.samples, vec![with_steal]);
    // A damaged record is set aside, as by `oldest`.
    spoil(&spool, seq);
    assert!(spool.oldest_raw().unwrap().is_none());
    assert_eq!(spool.corrupt_files_total(), 1);
    assert_eq!(spool.dropped_samples_total(), 1);
}

/// A planted symlink at the spool's temp path is replaced, never written through (the agent
/// runs as root).
#[test]
fn a_planted_temp_symlink_is_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
    let victim = dir.path().join("victim");
    fs::write(&victim, b"precious").unwrap();
    // The state file's temp name, and the names of the first segments.
    for tmp in ["agent-state.tmp", "spool/0000.seg", "spool/0001.seg"] {
        let p = dir.path().join(tmp);
        let _ = fs::remove_file(&p);
        if let Some(parent) = p.parent() {
            let _ = fs::create_dir_all(parent);
        }
        std::os::unix::fs::symlink(&victim, &p).unwrap();
    }
    spool.push("i", vec![sample(1)]).unwrap();
    spool.push("i", vec![sample(2)]).unwrap();
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
}

/// The params of an [`Outgoing`] as the collector receives them: one typed batch.
fn sent_batch(out: &Outgoing) -> ReportBatch {
    let mut params: Vec<ReportBatch> = serde_json::from_str(out.params.get()).unwrap();
    assert_eq!(params.len(), 1, "monitor_report takes one batch");
    params.remove(0)
}

#[test]
fn the_batch_just_spooled_is_sent_from_memory_exactly_as_written() {
    use vmmon_common::wire::ext::{SampleExt, VmSampleExt};
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
    let ext = SampleExt {
        vm: VmSampleExt {
            cpu_steal_pct: Some(3.5),
            unreadable_procs: None,
        },
        processes: Vec::new(),
    };
    let seq = spool
        .push_batch_ext("i", vec![sample(7)], &[ext], Vec::new(), None)
        .unwrap();
    let written = texts(&mut spool).remove(0);
    // The record is still the durable copy; spoil it to show the send does not read it back.
    spoil(&spool, seq);
    let out = spool.next_to_send().unwrap().unwrap();
    assert_eq!(out.seq, seq);
    assert_eq!(
        out.params.get(),
        format!("[{written}]"),
        "the spooled text, unchanged"
    );
    assert_eq!(sent_batch(&out).samples[0].vm.cpu_steal_pct, Some(3.5));
    assert_eq!(spool.corrupt_files_total(), 0, "nothing was read from disk");
    // Handed over once: until the ack, a second attempt (after a lost connection) reads the file.
    assert!(
        spool.next_to_send().unwrap().is_none(),
        "the spoiled record is set aside"
    );
    assert_eq!(spool.corrupt_files_total(), 1);
}

#[test]
fn a_batch_not_acknowledged_is_sent_again_from_disk_with_the_same_id() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
    spool.push("i", vec![sample(1)]).unwrap();
    let first = sent_batch(&spool.next_to_send().unwrap().unwrap());
    assert!(spool.fresh.is_none(), "taken by the first attempt");
    // The send failed: no remove. The retry reads the same batch from its file.
    let again = spool.next_to_send().unwrap().unwrap();
    assert_eq!(again.seq, first.seq);
    assert_eq!(sent_batch(&again), first);
    spool.remove(again.seq).unwrap();
    assert!(spool.next_to_send().unwrap().is_none());
}

#[test]
fn a_stale_drop_count_is_refreshed_from_disk_before_sending() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
    let a = spool.push("i", vec![sample(1)]).unwrap();
    let b = spool.push("i", vec![sample(2)]).unwrap();
    assert_eq!(spool.fresh.as_ref().map(|f| f.seq), Some(b));
    // The collector refuses `a`: one sample dropped after `b` was written with a count of 0.
    spool.discard(a).unwrap();
    let out = spool.next_to_send().unwrap().unwrap();
    assert_eq!(out.seq, b);
    assert_eq!(
        sent_batch(&out).dropped_samples_total,
        1,
        "the freshest count"
    );
}

#[test]
fn only_the_newest_batch_near_the_front_is_kept_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
    let a = spool.push("i", vec![sample(1)]).unwrap();
    let b = spool.push("i", vec![sample(2)]).unwrap();
    // `b` waits behind `a`: kept, and sent from memory once `a` is acknowledged.
    let first = spool.next_to_send().unwrap().unwrap();
    assert_eq!(first.seq, a);
    assert_eq!(spool.fresh.as_ref().map(|f| f.seq), Some(b));
    spool.remove(a).unwrap();
    let second = spool.next_to_send().unwrap().unwrap();
    assert_eq!(
        (second.seq, sent_batch(&second).samples[0].vm.sampled_at_ms),
        (b, 2)
    );
    assert!(spool.fresh.is_none());
    // A backlog (the collector is away): the newest batch's text is not held in memory.
    for ms in 3..6 {
        spool.push("i", vec![sample(ms)]).unwrap();
    }
    assert!(spool.fresh.is_none(), "backlog of {} batches", spool.len());
    // Acknowledging the batch in memory lets its text go too.
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
    let c = spool.push("i", vec![sample(1)]).unwrap();
    spool.remove(c).unwrap();
    assert!(spool.fresh.is_none());
    // Every batch goes out once per attempt, oldest first, whichever way it is read.
    let d = spool.push("i", vec![sample(2)]).unwrap();
    let e = spool.push("i", vec![sample(3)]).unwrap();
    let mut sent = Vec::new();
    while let Some(out) = spool.next_to_send().unwrap() {
        sent.push(sent_batch(&out).samples[0].vm.sampled_at_ms);
        spool.remove(out.seq).unwrap();
    }
    assert_eq!(sent, vec![2, 3], "seqs {d} and {e}");
}

#[test]
fn the_batch_being_sent_is_not_dropped_by_the_bound_until_its_answer() {
    let dir = tempfile::tempdir().unwrap();
    let one = one_batch_bytes();
    let at = |spool: &mut Spool| -> Vec<i64> {
        texts(spool)
            .iter()
            .map(|t| {
                serde_json::from_str::<ReportBatch>(t).unwrap().samples[0]
                    .vm
                    .sampled_at_ms
            })
            .collect()
    };
    // Room for three batches.
    let (mut spool, _) = Spool::open(dir.path(), one * 3 + 20).unwrap();
    for ms in 1..=3 {
        spool.push("i", vec![sample(ms)]).unwrap();
    }
    let out = spool.next_to_send().unwrap().unwrap();
    // While the oldest is being sent the collector may be storing it: over the bound, kept.
    spool.push("i", vec![sample(4)]).unwrap();
    spool.push("i", vec![sample(5)]).unwrap();
    assert_eq!(at(&mut spool), vec![1, 2, 3, 4, 5]);
    assert_eq!(spool.dropped_samples_total(), 0);
    // Acknowledged: removed; the next push drops the oldest to fit, counted.
    spool.remove(out.seq).unwrap();
    spool.push("i", vec![sample(6)]).unwrap();
    assert_eq!(at(&mut spool), vec![4, 5, 6]);
    assert_eq!(spool.dropped_samples_total(), 2);
    // A send that failed (or was cancelled) ends too: then the bound applies to it again.
    let out = spool.next_to_send().unwrap().unwrap();
    spool.push("i", vec![sample(7)]).unwrap();
    assert_eq!(at(&mut spool), vec![4, 5, 6, 7]);
    spool.end_in_flight(out.seq);
    spool.push("i", vec![sample(8)]).unwrap();
    assert_eq!(at(&mut spool), vec![6, 7, 8]);
    assert_eq!(spool.dropped_samples_total(), 4);
}

/// An older agent's `agent-state.json` is resumed once, then replaced by the slot file; a
/// damaged one is moved aside as before.
#[test]
fn upgrade_from_the_json_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let legacy = dir.path().join(STATE_FILE);
    fs::write(
        &legacy,
        br#"{"next_seq":41,"dropped_samples_total":3,"corrupt_files_total":1,
            "desired":{"monitoring":true,"interval_secs":7}}"#,
    )
    .unwrap();
    let (mut spool, report) = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(report, OpenReport::default());
    assert!(
        !legacy.exists(),
        "removed once the slot file holds the state"
    );
    assert!(dir.path().join(STATE_SLOTS).exists());
    assert_eq!(spool.dropped_samples_total(), 3);
    assert_eq!(spool.corrupt_files_total(), 1);
    assert_eq!(spool.push("i", vec![sample(1)]).unwrap(), 41);
    spool.remove(41).unwrap();
    drop(spool);
    // A stale JSON left beside the slot file (its removal failed) is ignored.
    fs::write(&legacy, br#"{"next_seq":5}"#).unwrap();
    let (mut spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(spool.push("i", vec![sample(2)]).unwrap(), 42);
    assert_eq!(
        spool.desired(),
        Some(DesiredState {
            monitoring: true,
            interval_secs: 7
        })
    );
    assert!(!legacy.exists());

    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join(STATE_FILE), b"{\"next_seq\": ").unwrap();
    let (mut spool, report) = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(report.moved_aside, 1);
    assert_eq!(spool.push("i", vec![sample(1)]).unwrap(), 0);
}

/// Every file of the state directory (the crash image of a test).
fn image(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v = vec![(
        dir.join(STATE_SLOTS),
        fs::read(dir.join(STATE_SLOTS)).unwrap(),
    )];
    for e in fs::read_dir(dir.join(SPOOL_DIR)).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            v.push((p.clone(), fs::read(&p).unwrap()));
        }
    }
    v
}

fn restore(image: &[(PathBuf, Vec<u8>)]) {
    for (p, bytes) in image {
        fs::write(p, bytes).unwrap();
    }
}

/// The crash cases of the state write: whatever the crash leaves, a restart neither reuses a
/// sequence number nor skips one.
#[test]
fn no_seq_reuse_or_gap_whatever_state_write_a_crash_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let slots = dir.path().join(STATE_SLOTS);
    let (mut spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
    for n in 0..3 {
        assert_eq!(spool.push("i", vec![sample(n)]).unwrap(), n as u64);
        spool.remove(n as u64).unwrap();
    }
    // The checkpoint synced (as whenever a counter changes or the spool moves on): a torn
    // unsynced write falls back to it, not to an unsynced record that may never have reached
    // the disk either (`crate::slots`).
    spool.save_state(true).unwrap();
    // Batch 3 spooled, its state write (next_seq 4) torn: the state says 3, the batch is there.
    let before = fs::read(&slots).unwrap();
    assert_eq!(spool.push("i", vec![sample(3)]).unwrap(), 3);
    drop(spool);
    let crash = image(dir.path());
    let after = fs::read(&slots).unwrap();
    let slot_bytes = before.len() / 2;
    let changed: Vec<usize> = (0..2)
        .filter(|&k| {
            before[k * slot_bytes..(k + 1) * slot_bytes]
                != after[k * slot_bytes..(k + 1) * slot_bytes]
        })
        .collect();
    assert_eq!(changed.len(), 1, "one slot written per state write");
    let k = changed[0];
    for cut in [0, 8, 20, 24, 40] {
        let mut torn = after.clone();
        torn[k * slot_bytes + cut..(k + 1) * slot_bytes]
            .copy_from_slice(&before[k * slot_bytes + cut..(k + 1) * slot_bytes]);
        fs::write(&slots, &torn).unwrap();
        let (mut spool, report) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(report.batches, 1);
        assert_eq!(spool.dropped_samples_total(), 0, "cut at {cut}");
        assert_eq!(spool.push("i", vec![sample(4)]).unwrap(), 4, "cut at {cut}");
        drop(spool);
        // Back to the crash image for the next case.
        restore(&crash);
    }
    // Batch 3 acknowledged: the checkpoint moves past it; nothing waits, numbers go on.
    let (mut spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
    spool.remove(3).unwrap();
    drop(spool);
    let (mut spool, report) = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(report.batches, 0);
    assert_eq!(spool.push("i", vec![sample(5)]).unwrap(), 4);
    drop(spool);
    // The state lost altogether (both slots damaged): the segment still holds the newest
    // record, acknowledged or not, so numbers still go on without reuse.
    fs::write(&slots, b"damaged").unwrap();
    let (mut spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(spool.push("i", vec![sample(6)]).unwrap(), 5);
}

/// A crash (or power loss) in the middle of appending the newest record: the torn record is
/// found by its checksums, set aside, counted once as a dropped batch, and its number given to
/// the next batch (no gap, no reuse of a number that went out).
#[test]
fn a_torn_tail_record_is_discarded_and_counted_once() {
    for torn_header in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
        for ms in 0..3 {
            spool.push("i", vec![sample(ms)]).unwrap();
        }
        spool.remove(0).unwrap();
        let state_before = fs::read(dir.path().join(STATE_SLOTS)).unwrap();
        spool.push("i", vec![sample(3)]).unwrap();
        let (path, offset, len) = record_of(&spool, 3);
        drop(spool);
        // The crash: the record's end (or its header) never reached the disk, nor did the state
        // written after it.
        if torn_header {
            poke(&path, offset + 30, &[0u8; 10]);
        } else {
            poke(
                &path,
                offset + segment::HEADER_BYTES as u64 + len - 5,
                &[0u8; 5],
            );
        }
        fs::write(dir.path().join(STATE_SLOTS), &state_before).unwrap();
        let (mut spool, report) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(report.batches, 2, "torn header: {torn_header}");
        assert_eq!(report.moved_aside, 1);
        assert_eq!(spool.dropped_samples_total(), 1);
        assert_eq!(spool.corrupt_files_total(), 1);
        assert_eq!(on_disk(dir.path()), vec![1, 2]);
        assert_eq!(spool.push("i", vec![sample(4)]).unwrap(), 3, "no gap");
        drop(spool);
        let (mut spool, report) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(
            report,
            OpenReport {
                batches: 3,
                moved_aside: 0
            },
            "counted once"
        );
        assert_eq!(spool.dropped_samples_total(), 1);
        let mut sent = Vec::new();
        while let Some(out) = spool.next_to_send().unwrap() {
            sent.push(sent_batch(&out).samples[0].vm.sampled_at_ms);
            spool.remove(out.seq).unwrap();
        }
        assert_eq!(sent, vec![1, 2, 4]);
    }
}

/// A crash between spooling a batch and its ack sends it again with the same id (the collector
/// stores it once); after the ack it is not sent again, though its record is still in the
/// segment; and if the ack's checkpoint was lost (a power loss before it reached the disk), the
/// batch is sent again, never lost.
#[test]
fn crash_between_write_and_ack() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
    spool.push("i", vec![sample(1)]).unwrap();
    let first = sent_batch(&spool.next_to_send().unwrap().unwrap());
    drop(spool); // crash before the answer
    let (mut spool, report) = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(report.batches, 1);
    let again = spool.next_to_send().unwrap().unwrap();
    assert_eq!(sent_batch(&again), first, "same batch, same id");
    let before_ack = fs::read(dir.path().join(STATE_SLOTS)).unwrap();
    spool.remove(again.seq).unwrap();
    drop(spool);
    let (mut spool, report) = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(report.batches, 0, "acknowledged: not sent again");
    assert!(spool.next_to_send().unwrap().is_none());
    drop(spool);
    // The checkpoint of the ack lost: sent again, same id.
    fs::write(dir.path().join(STATE_SLOTS), &before_ack).unwrap();
    let (mut spool, report) = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!((report.batches, spool.dropped_samples_total()), (1, 0));
    assert_eq!(sent_batch(&spool.next_to_send().unwrap().unwrap()), first);
}

/// Batches fill a segment, the spool moves on to the next, reuses a segment once all of its
/// batches are acknowledged, keeps at most a few unused ones after an outage drains, and reads
/// everything back in order across segments after a restart.
#[test]
fn segments_roll_over_and_are_reused() {
    let dir = tempfile::tempdir().unwrap();
    let one = one_batch_bytes() + segment::HEADER_BYTES as u64;
    let (mut spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
    // An eighth of the bound: a few hundred batches each.
    assert_eq!(spool.segment_bytes, 128 << 10);
    let per_segment = spool.segment_bytes / one;
    // Steady state: every batch acknowledged before the next.
    let mut seq = 0;
    for ms in 0..(3 * per_segment as i64) {
        seq = spool.push("i", vec![sample(ms)]).unwrap();
        let out = spool.next_to_send().unwrap().unwrap();
        spool.remove(out.seq).unwrap();
    }
    assert_eq!(spool.segment_count(), 2, "one in use, the other reused");
    // An outage: batches pile up over several segments.
    let backlog = 3 * per_segment + 7;
    for ms in 0..backlog as i64 {
        spool.push("i", vec![sample(1_000_000 + ms)]).unwrap();
    }
    let segments_during = spool.segment_count();
    assert!(segments_during >= 4, "{segments_during}");
    drop(spool);
    let (mut spool, report) = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(report.batches as u64, backlog);
    assert_eq!(spool.dropped_samples_total(), 0);
    let mut sent = Vec::new();
    while let Some(out) = spool.next_to_send().unwrap() {
        sent.push(sent_batch(&out).samples[0].vm.sampled_at_ms);
        spool.remove(out.seq).unwrap();
    }
    assert_eq!(
        sent,
        (0..backlog as i64)
            .map(|ms| 1_000_000 + ms)
            .collect::<Vec<_>>()
    );
    assert!(
        spool.segment_count() <= 1 + MAX_SPARE_SEGMENTS,
        "{} segments after draining",
        spool.segment_count()
    );
    let files = fs::read_dir(dir.path().join(SPOOL_DIR))
        .unwrap()
        .filter(|e| segment::parse_segment_name(&e.as_ref().unwrap().path()).is_some())
        .count();
    assert_eq!(files, spool.segment_count());
    assert_eq!(spool.push("i", vec![sample(7)]).unwrap(), seq + backlog + 1);
    // A batch larger than a segment goes into one grown to hold it.
    let big: Vec<Sample> = (0..400).map(sample).collect();
    let big_seq = spool.push("i", big).unwrap();
    drop(spool);
    let (mut spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
    let mut last = None;
    while let Some(out) = spool.next_to_send().unwrap() {
        last = Some((out.seq, sent_batch(&out).samples.len()));
        spool.remove(out.seq).unwrap();
    }
    assert_eq!(last, Some((big_seq, 400)));
}

/// An older agent's per-file spool is read once: its batches move into a segment (same ids,
/// same numbers, in order) and the files go; a crash before they were removed does not
/// duplicate them.
#[test]
fn the_per_file_spool_of_an_older_agent_is_read_once() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join(STATE_FILE),
        br#"{"next_seq":12,"dropped_samples_total":2}"#,
    )
    .unwrap();
    let ids: Vec<Uuid> = [9u64, 10, 11]
        .iter()
        .map(|&seq| {
            let p = legacy_batch(dir.path(), seq, seq as i64);
            serde_json::from_slice::<ReportBatch>(&fs::read(p).unwrap())
                .unwrap()
                .batch_id
        })
        .collect();
    let kept = fs::read(dir.path().join(SPOOL_DIR).join(format!("{:020}.batch", 10))).unwrap();
    let (mut spool, report) = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(
        report,
        OpenReport {
            batches: 3,
            moved_aside: 0
        }
    );
    assert_eq!(legacy_files(dir.path()), 0, "removed once in a segment");
    assert_eq!(spool.dropped_samples_total(), 2);
    assert_eq!(spool.push("i", vec![sample(12)]).unwrap(), 12);
    drop(spool);
    // A leftover file (its removal failed, or a crash came first) is not read twice.
    fs::write(
        dir.path().join(SPOOL_DIR).join(format!("{:020}.batch", 10)),
        &kept,
    )
    .unwrap();
    let (mut spool, report) = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(report.batches, 4);
    assert_eq!(legacy_files(dir.path()), 0);
    let mut sent = Vec::new();
    while let Some(out) = spool.next_to_send().unwrap() {
        let b = sent_batch(&out);
        sent.push((b.seq, b.batch_id));
        spool.remove(out.seq).unwrap();
    }
    assert_eq!(
        sent.iter().map(|s| s.0).collect::<Vec<_>>(),
        vec![9, 10, 11, 12]
    );
    assert_eq!(sent[..3].iter().map(|s| s.1).collect::<Vec<_>>(), ids);
    drop(spool);
    // Left over again after its batch was acknowledged: removed, not sent again.
    fs::write(
        dir.path().join(SPOOL_DIR).join(format!("{:020}.batch", 10)),
        &kept,
    )
    .unwrap();
    assert_eq!(on_disk(dir.path()), Vec::<u64>::new());
    let (mut spool, report) = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(report, OpenReport::default());
    assert_eq!(legacy_files(dir.path()), 0);
    assert!(spool.next_to_send().unwrap().is_none());
    assert_eq!(spool.push("i", vec![sample(13)]).unwrap(), 13);
}

/// `read_spooled` (tests and tools) sees what the spool sees, without changing anything.
#[test]
fn read_spooled_matches_the_spool() {
    let dir = tempfile::tempdir().unwrap();
    assert!(read_spooled(dir.path()).unwrap().is_empty());
    let (mut spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
    for ms in 0..4 {
        spool.push("i", vec![sample(ms)]).unwrap();
    }
    spool.remove(0).unwrap();
    let texts_now = texts(&mut spool);
    let seen = read_spooled(dir.path()).unwrap();
    assert_eq!(
        seen.iter().map(|b| b.seq).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(
        seen.into_iter().map(|b| b.json).collect::<Vec<_>>(),
        texts_now
    );
}

/// A push whose record was written but not synced (EIO) fails, and its number goes to the next
/// batch: the failed record must not come back as a second batch of that number.
#[test]
fn a_failed_append_never_leaves_two_batches_of_one_number() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(spool.push("i", vec![sample(0)]).unwrap(), 0);
    let first = spool.current.unwrap();
    // The sync fails, the erase works: the next batch takes the number, in the same place.
    spool.segments[&first].fail_syncs.set(1);
    assert!(spool.push("i", vec![sample(1)]).is_err());
    assert_eq!(spool.push("i", vec![sample(2)]).unwrap(), 1);
    assert_eq!(spool.current, Some(first));
    drop(spool);
    let (mut spool, report) = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(
        report,
        OpenReport {
            batches: 2,
            moved_aside: 0
        }
    );
    // The sync and the erase fail: the segment is sealed, the next batch (same number) goes to
    // another one; the failed record reaches the disk (it is in the page cache here).
    let first = spool.current.unwrap();
    spool.segments[&first].fail_syncs.set(1);
    spool.segments[&first].fail_erase.set(true);
    assert!(spool.push("i", vec![sample(3)]).is_err());
    assert_eq!(spool.push("i", vec![sample(4)]).unwrap(), 2);
    assert_ne!(spool.current, Some(first));
    let dropped = spool.dropped_samples_total();
    drop(spool);
    // Which of the two is the right one cannot be told: both are set aside, counted once.
    assert_eq!(on_disk(dir.path()), vec![0, 1]);
    let (mut spool, report) = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(
        report,
        OpenReport {
            batches: 2,
            moved_aside: 2
        }
    );
    assert_eq!(spool.dropped_samples_total(), dropped + 1);
    assert_eq!(spool.corrupt_files_total(), 2);
    let mut sent = Vec::new();
    while let Some(out) = spool.next_to_send().unwrap() {
        sent.push(sent_batch(&out).samples[0].vm.sampled_at_ms);
        spool.remove(out.seq).unwrap();
    }
    assert_eq!(sent, vec![0, 2]);
    assert_eq!(spool.push("i", vec![sample(5)]).unwrap(), 3);
    drop(spool);
    let (spool, report) = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(
        report,
        OpenReport {
            batches: 1,
            moved_aside: 0
        },
        "counted once"
    );
    assert_eq!(spool.dropped_samples_total(), dropped + 1);
}
