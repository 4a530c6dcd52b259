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

#[test]
fn size_limit_drops_oldest_and_counts_samples() {
    let dir = tempfile::tempdir().unwrap();
    let one = serde_json::to_vec(&ReportBatch {
        batch_id: Uuid::new_v4(),
        instance_id: "i".into(),
        seq: 0,
        samples: vec![sample(1)],
        dropped_samples_total: 0,
        cdn: Vec::new(),
        cdn_tail: None,
    })
    .unwrap()
    .len() as u64;
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
    fs::write(dir.path().join(STATE_FILE), b"not json").unwrap();
    let (mut spool, report) = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(report.moved_aside, 1);
    assert_eq!(report.batches, 1);
    assert_eq!(
        spool.push("i", vec![sample(2)]).unwrap(),
        1,
        "next_seq is recovered from the files"
    );
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
