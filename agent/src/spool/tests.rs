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

fn batch_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir.join(SPOOL_DIR))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == BATCH_EXT))
        .collect();
    v.sort();
    v
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
    assert_eq!(batch_files(dir.path()).len(), 3);
    drop(spool);
    let (spool, _) = Spool::open(dir.path(), one * 3 + 20).unwrap();
    assert_eq!(
        spool.dropped_samples_total(),
        7,
        "the count survives restarts"
    );
}

#[test]
fn truncated_and_garbage_files_are_moved_aside_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
        for ms in 1..=3 {
            spool.push("i", vec![sample(ms)]).unwrap();
        }
    }
    let files = batch_files(dir.path());
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
    // A damaged file is moved aside, as by `oldest`.
    fs::write(&batch_files(dir.path())[0], b"{\"samples\": [").unwrap();
    assert!(spool.oldest_raw().unwrap().is_none());
    assert_eq!(spool.corrupt_files_total(), 1);
}

/// A planted symlink at the spool's temp path is replaced, never written through (the agent
/// runs as root).
#[test]
fn a_planted_temp_symlink_is_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
    let victim = dir.path().join("victim");
    fs::write(&victim, b"precious").unwrap();
    // The state file's temp name, and a batch file's temp name for the next push.
    for tmp in [
        "agent-state.tmp",
        "spool/00000000000000000000.tmp",
        "spool/00000000000000000001.tmp",
    ] {
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
    let file = batch_files(dir.path()).remove(0);
    let written = fs::read_to_string(&file).unwrap();
    // The file is still the durable copy; spoil it to show the send does not read it back.
    fs::write(&file, b"{\"samples\": [").unwrap();
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
        "the spoiled file is moved aside"
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
        let mut v = Vec::new();
        let mut copy = spool.index.clone();
        while let Some(e) = copy.pop_front() {
            let raw = fs::read_to_string(spool.batch_path(e.seq)).unwrap();
            let b: ReportBatch = serde_json::from_str(&raw).unwrap();
            v.push(b.samples[0].vm.sampled_at_ms);
        }
        v
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

/// The crash cases of the per-tick state write: whatever the crash leaves, a restart neither
/// reuses a sequence number nor skips one.
#[test]
fn no_seq_reuse_or_gap_whatever_state_write_a_crash_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let slots = dir.path().join(STATE_SLOTS);
    let (mut spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
    for n in 0..3 {
        assert_eq!(spool.push("i", vec![sample(n)]).unwrap(), n as u64);
        spool.remove(n as u64).unwrap();
    }
    // Batch 3 spooled, its state write (next_seq 4) torn: the state says 3, the batch is there.
    let before = fs::read(&slots).unwrap();
    assert_eq!(spool.push("i", vec![sample(3)]).unwrap(), 3);
    drop(spool);
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
        assert_eq!(spool.push("i", vec![sample(4)]).unwrap(), 4, "cut at {cut}");
        drop(spool);
        // Back to the crash image for the next case.
        fs::write(&slots, &after).unwrap();
        for f in batch_files(dir.path()) {
            if f.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("00000000000000000004"))
            {
                fs::remove_file(f).unwrap();
            }
        }
    }
    // Batch 3 acknowledged and deleted: the durable state alone carries next_seq.
    let (mut spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
    spool.remove(3).unwrap();
    drop(spool);
    let (mut spool, report) = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(report.batches, 0);
    assert_eq!(spool.push("i", vec![sample(5)]).unwrap(), 4);
}
