//! The tailer and the spool together: positions survive restarts and crashes exactly.

use std::io::Write;
use std::path::Path;

use vmmon_common::wire::{CdnTailState, Sample, VmSample};

use super::tail::DEFAULT_MAX_BYTES_PER_POLL;
use super::*;
use crate::spool::Spool;

const NOW: i64 = 1_800_000_000;
/// 2024-03-01 10:00:00 UTC.
const T0: i64 = 1_709_287_200;

fn sample() -> Sample {
    Sample {
        vm: VmSample {
            sampled_at_ms: 1,
            proc_count: 1,
            ..VmSample::default()
        },
        processes: None,
    }
}

fn tail(offset: u64) -> CdnTailState {
    CdnTailState {
        files: vec![vmmon_common::wire::CdnFilePosition {
            log: "/x".into(),
            dev: 1,
            inode: 2,
            offset,
            fingerprint_len: 0,
            fingerprint: 0,
            current: true,
        }],
        malformed_lines_total: offset,
    }
}

#[test]
fn spool_resumes_from_the_newest_of_state_and_batches() {
    let dir = tempfile::tempdir().unwrap();
    let state_file = dir.path().join(crate::spool::STATE_SLOTS);
    {
        let (mut s, _) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.cdn_checkpoint(), None);
        s.push_batch("i", vec![sample()], Vec::new(), Some(tail(10)))
            .unwrap();
        let before = std::fs::read(&state_file).unwrap();
        s.push_batch("i", vec![sample()], Vec::new(), Some(tail(20)))
            .unwrap();
        // A batch without CDN (no logs configured) leaves the positions alone.
        s.push("i", vec![sample()]).unwrap();
        // Crash after the second batch was written but before the state was: old state.
        std::fs::write(&state_file, before).unwrap();
    }
    let (mut s, _) = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(s.cdn_checkpoint(), Some(&tail(20)), "the newer batch wins");
    // All batches acknowledged and deleted: the state (rewritten at open) still has them.
    for seq in 0..3 {
        s.remove(seq).unwrap();
    }
    drop(s);
    let (s, _) = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(s.cdn_checkpoint(), Some(&tail(20)));
}

fn line(t: i64, host: &str, bytes: u64, cache: &str) -> String {
    let d = chrono::DateTime::from_timestamp(t, 0).unwrap();
    format!(
        "10.0.0.1 - - [{}] \"GET / HTTP/1.1\" 200 {bytes} \"-\" \"ua\" {host} {cache}\n",
        d.format("%d/%b/%Y:%H:%M:%S +0000")
    )
}

fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// One agent tick: poll, spool, commit (or crash before committing).
fn tick(t: &mut Tailer, s: &mut Spool, commit: bool) {
    let mut p = t.poll(NOW);
    let deltas = std::mem::take(&mut p.deltas);
    s.push_batch("i", vec![sample()], deltas, Some(p.tail_state()))
        .unwrap();
    if commit {
        t.commit(p);
    }
}

fn spooled_bytes(s: &mut Spool) -> (u64, u64) {
    let mut sum = (0, 0);
    while let Some(b) = s.oldest().unwrap() {
        for d in &b.cdn {
            sum.0 += d.bytes;
            sum.1 += d.hit_bytes;
        }
        s.remove(b.seq).unwrap();
    }
    sum
}

#[test]
fn crash_after_spooling_neither_repeats_nor_loses_lines() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let state = dir.path().join("state");
    let open = |s: &Path| Spool::open(s, 1 << 20).unwrap().0;
    let new_tailer = |s: &Spool| {
        Tailer::new(
            std::slice::from_ref(&log),
            LogFormat::compile(DEFAULT_LOG_FORMAT).unwrap(),
            s.cdn_checkpoint(),
            DEFAULT_MAX_BYTES_PER_POLL,
        )
    };
    append(&log, &line(T0, "a.com", 100, "HIT"));
    let mut spool = open(&state);
    let mut t = new_tailer(&spool);
    tick(&mut t, &mut spool, true);
    append(&log, &line(T0, "a.com", 20, "MISS"));
    // The batch is spooled, then the process dies before the tailer adopted the poll.
    tick(&mut t, &mut spool, false);
    drop((t, spool));
    append(&log, &line(T0, "a.com", 3, "HIT"));
    let mut spool = open(&state);
    let mut t = new_tailer(&spool);
    tick(&mut t, &mut spool, true);
    tick(&mut t, &mut spool, true);
    assert_eq!(spooled_bytes(&mut spool), (123, 103));
}
