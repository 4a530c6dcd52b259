use std::collections::BTreeMap;
use std::io::Write;

use super::*;
use crate::cdn::DEFAULT_LOG_FORMAT;

const NOW: i64 = 1_800_000_000;
/// 2024-03-01 10:00:00 UTC, a bucket start.
const T0: i64 = 1_709_287_200;

fn fmt() -> LogFormat {
    LogFormat::compile(DEFAULT_LOG_FORMAT).unwrap()
}

fn time_local(t: i64) -> String {
    let d = chrono::DateTime::from_timestamp(t, 0).unwrap();
    d.format("%d/%b/%Y:%H:%M:%S +0000").to_string()
}

fn line(t: i64, host: &str, bytes: u64, cache: &str) -> String {
    format!(
        "10.0.0.1 - - [{}] \"GET /{t} HTTP/1.1\" 200 {bytes} \"-\" \"ua\" {host} {cache}\n",
        time_local(t)
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

type Sums = BTreeMap<(String, i64), (u64, u64, u64)>;

fn add(sums: &mut Sums, p: &Poll) {
    for d in &p.deltas {
        let e = sums.entry((d.domain.clone(), d.bucket_start)).or_default();
        e.0 += d.bytes;
        e.1 += d.hit_bytes;
        e.2 += d.requests;
    }
}

/// Polls and commits until nothing new is read; returns the sums.
fn drain(t: &mut Tailer, sums: &mut Sums) {
    for _ in 0..20 {
        let p = t.poll(NOW);
        let idle = p.lines == 0 && p.malformed == 0 && !p.behind;
        add(sums, &p);
        t.commit(p);
        if idle {
            return;
        }
    }
    panic!("tailer never went idle");
}

fn tailer(path: &Path, checkpoint: Option<&CdnTailState>) -> Tailer {
    Tailer::new(
        &[path.to_path_buf()],
        fmt(),
        checkpoint,
        DEFAULT_MAX_BYTES_PER_POLL,
    )
}

fn key(d: &str, b: i64) -> (String, i64) {
    (d.to_string(), b)
}

#[test]
fn reads_whole_lines_only_and_aggregates() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let mut t = tailer(&log, None);
    // Missing file: nothing, no panic.
    let p = t.poll(NOW);
    assert!(p.deltas.is_empty());
    t.commit(p);
    append(&log, &line(T0 + 1, "a.com", 100, "HIT"));
    append(&log, &line(T0 + 299, "a.com", 50, "MISS"));
    append(&log, &line(T0 + 300, "b.com", 7, "STALE"));
    // A half-written line is left for later.
    let partial = line(T0 + 301, "b.com", 3, "HIT");
    append(&log, &partial[..20]);
    let mut sums = Sums::new();
    drain(&mut t, &mut sums);
    assert_eq!(sums[&key("a.com", T0)], (150, 100, 2));
    assert_eq!(sums[&key("b.com", T0 + 300)], (7, 7, 1));
    append(&log, &partial[20..]);
    drain(&mut t, &mut sums);
    assert_eq!(sums[&key("b.com", T0 + 300)], (10, 10, 2));
    assert_eq!(t.malformed_total(), 0);
}

#[test]
fn uncommitted_polls_are_read_again() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    append(&log, &line(T0, "a.com", 10, "HIT"));
    let mut t = tailer(&log, None);
    let first = t.poll(NOW);
    assert_eq!(first.lines, 1);
    drop(first); // e.g. the spool write failed
    let again = t.poll(NOW);
    assert_eq!(
        again.lines, 1,
        "nothing was adopted, so the line is read again"
    );
    t.commit(again);
    assert_eq!(t.poll(NOW).lines, 0);
}

#[test]
fn malformed_lines_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    append(&log, "not a log line\n");
    append(&log, &line(T0, "a.com", 10, "HIT"));
    append(&log, "\n");
    append(&log, &line(T0, "-", 10, "HIT"));
    append(&log, &format!("{}\n", "x".repeat(MAX_LINE + 10)));
    append(&log, &line(T0, "a.com", 5, "MISS"));
    let mut t = tailer(&log, None);
    let p = t.poll(NOW);
    assert_eq!(p.lines, 2);
    assert_eq!(
        p.malformed, 3,
        "garbage, no host, overlong; blank lines are ignored"
    );
    assert!(p.example.as_ref().unwrap().0.starts_with("not a log line"));
    assert_eq!(p.tail_state().malformed_lines_total, 3);
    t.commit(p);
    assert_eq!(t.malformed_total(), 3);
}

#[test]
fn rename_rotation_drains_the_old_file_then_follows_the_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let rotated = dir.path().join("access.log.1");
    append(&log, &line(T0, "a.com", 1, "HIT"));
    let mut t = tailer(&log, None);
    let mut sums = Sums::new();
    drain(&mut t, &mut sums);
    // logrotate renames; nginx writes a little more to the old file before it reopens.
    std::fs::rename(&log, &rotated).unwrap();
    append(&rotated, &line(T0, "a.com", 10, "HIT"));
    let p = t.poll(NOW);
    add(&mut sums, &p);
    t.commit(p);
    append(&rotated, &line(T0, "a.com", 100, "MISS"));
    append(&log, &line(T0 + 300, "a.com", 1000, "HIT"));
    let p = t.poll(NOW);
    add(&mut sums, &p);
    t.commit(p);
    append(&rotated, &line(T0, "a.com", 10_000, "HIT"));
    drain(&mut t, &mut sums);
    assert_eq!(sums[&key("a.com", T0)], (10_111, 10_011, 4));
    assert_eq!(sums[&key("a.com", T0 + 300)], (1000, 1000, 1));
    let state = t.tail_state();
    assert_eq!(
        state.files.len(),
        1,
        "the rotated file was dropped once idle"
    );
    assert!(state.files[0].current);
    // Lines written to the old file after it was dropped are not seen (nginx has reopened).
}

#[test]
fn truncation_restarts_at_zero() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    append(&log, &line(T0, "a.com", 1, "HIT"));
    append(&log, &line(T0, "a.com", 2, "HIT"));
    let mut t = tailer(&log, None);
    let mut sums = Sums::new();
    drain(&mut t, &mut sums);
    // copytruncate: emptied in place, then a shorter line.
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&log)
        .unwrap();
    append(&log, &line(T0 + 300, "a.com", 4, "MISS"));
    drain(&mut t, &mut sums);
    // Truncated and rewritten past the old offset before the tailer looked: the fingerprint of
    // the head tells.
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&log)
        .unwrap();
    for i in 0..5 {
        append(&log, &line(T0 + 600 + i, "b.com", 8, "HIT"));
    }
    drain(&mut t, &mut sums);
    assert_eq!(sums[&key("a.com", T0)], (3, 3, 2));
    assert_eq!(sums[&key("a.com", T0 + 300)], (4, 0, 1));
    assert_eq!(sums[&key("b.com", T0 + 600)], (40, 40, 5));
}

#[test]
fn restart_resumes_from_the_checkpoint_and_finds_rotated_files_by_inode() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    append(&log, &line(T0, "a.com", 1, "HIT"));
    let mut sums = Sums::new();
    let checkpoint = {
        let mut t = tailer(&log, None);
        drain(&mut t, &mut sums);
        t.tail_state()
    };
    // While the agent is stopped: more lines, a rename rotation, lines in the new file.
    append(&log, &line(T0, "a.com", 20, "HIT"));
    std::fs::rename(&log, dir.path().join("access.log.1")).unwrap();
    append(&log, &line(T0 + 300, "a.com", 300, "MISS"));
    let mut t = tailer(&log, Some(&checkpoint));
    drain(&mut t, &mut sums);
    assert_eq!(
        sums[&key("a.com", T0)],
        (21, 21, 2),
        "nothing twice, nothing missed"
    );
    assert_eq!(sums[&key("a.com", T0 + 300)], (300, 0, 1));

    // Restart with the same checkpoint again: exactly the same lines are read again (what the
    // spool's newest-of rule relies on when a batch was written but the state was not).
    let mut again = Sums::new();
    let mut t2 = tailer(&log, Some(&checkpoint));
    drain(&mut t2, &mut again);
    assert_eq!(again[&key("a.com", T0)], (20, 20, 1));
    assert_eq!(again[&key("a.com", T0 + 300)], (300, 0, 1));
}

#[test]
fn a_vanished_file_is_forgotten_and_the_new_one_read() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    append(&log, &line(T0, "a.com", 1, "HIT"));
    let checkpoint = {
        let mut t = tailer(&log, None);
        drain(&mut t, &mut Sums::new());
        t.tail_state()
    };
    std::fs::remove_file(&log).unwrap();
    append(&log, &line(T0, "a.com", 5, "HIT"));
    let mut t = tailer(&log, Some(&checkpoint));
    let mut sums = Sums::new();
    drain(&mut t, &mut sums);
    assert_eq!(sums[&key("a.com", T0)], (5, 5, 1));
}

#[test]
fn bounded_work_per_poll_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let mut expected = 0u64;
    let mut text = String::new();
    for i in 0..20_000u64 {
        text.push_str(&line(T0 + (i as i64 % 600), "a.com", i, "HIT"));
        expected += i;
    }
    append(&log, &text);
    let mut t = Tailer::new(std::slice::from_ref(&log), fmt(), None, 1);
    let mut sums = Sums::new();
    let mut polls = 0;
    loop {
        let p = t.poll(NOW);
        polls += 1;
        let done = !p.behind && p.lines == 0;
        add(&mut sums, &p);
        t.commit(p);
        if done {
            break;
        }
        assert!(polls < 1_000);
    }
    assert!(polls > 10, "the byte bound split the work: {polls} polls");
    let total: u64 = sums.values().map(|v| v.0).sum();
    let requests: u64 = sums.values().map(|v| v.2).sum();
    assert_eq!((total, requests), (expected, 20_000));
}

#[test]
fn delta_bound_splits_a_tick_at_a_line() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let n = MAX_CDN_DELTAS_PER_BATCH + 5;
    let mut text = String::new();
    for i in 0..n {
        text.push_str(&line(T0, &format!("d{i}.com"), 1, "MISS"));
    }
    append(&log, &text);
    let mut t = tailer(&log, None);
    let p = t.poll(NOW);
    assert_eq!(p.deltas.len(), MAX_CDN_DELTAS_PER_BATCH);
    assert!(p.behind);
    t.commit(p);
    let p = t.poll(NOW);
    assert_eq!(p.deltas.len(), 5);
}
