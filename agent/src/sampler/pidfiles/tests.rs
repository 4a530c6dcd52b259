//! The descriptor budget, and what the cache relies on from the real procfs.

use std::process::{Command, Stdio};

use super::super::procfs::{self, ReadBuf};
use super::*;

#[test]
fn the_budget_never_lets_more_than_the_cap_be_held() {
    let mut b = FdBudget::new(5);
    assert!(b.has_room(2));
    b.took(2);
    b.took(2);
    assert!(!b.has_room(2));
    assert!(b.has_room(1));
    b.recount(1);
    assert_eq!(b.held(), 1);
    assert!(b.has_room(2));
    assert!(!FdBudget::new(0).has_room(1));
    assert!(FdBudget::new(usize::MAX).has_room(usize::MAX));
}

#[test]
fn the_default_cap_stays_under_the_limit_and_the_maximum() {
    let cap = default_cap();
    assert!(cap <= MAX_CACHED_FDS);
    let (soft, hard) = nofile_limit().expect("RLIMIT_NOFILE");
    assert!(soft <= hard);
    assert!(cap as u64 <= soft.saturating_sub(FD_HEADROOM as u64));
    let raised = raise_nofile_limit().expect("RLIMIT_NOFILE");
    assert!(raised >= soft);
}

/// The kernel behaviour the cache stands on: a kept `/proc/PID/stat` re-reads fresh figures
/// with `pread` at 0, and fails with `ESRCH` once the process is reaped.
#[test]
fn a_kept_proc_file_rereads_and_fails_once_its_process_is_reaped() {
    let mut child = Command::new("sleep")
        .arg("30")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn sleep");
    let path = format!("/proc/{}/stat", child.id());
    let mut buf = ReadBuf::default();
    let (file, first) = buf
        .open_single(std::path::Path::new(&path))
        .expect("open stat");
    let first = procfs::parse_pid_stat(first).expect("parse").start_ticks;
    let again = buf.reread_single(&file).expect("pread");
    assert_eq!(
        procfs::parse_pid_stat(again).expect("parse").start_ticks,
        first
    );
    child.kill().expect("kill");
    child.wait().expect("reap");
    let err = buf
        .reread_single(&file)
        .map(<[u8]>::len)
        .expect_err("a reaped process's stat must not read");
    assert!(procfs::is_vanished(&err), "{err}");
}
