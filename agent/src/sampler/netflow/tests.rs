//! Cookie-keyed deltas, owner lookups and their cache, the shared-socket rule, loopback and
//! failure handling, over a scripted socket source and a fake `/proc/PID/fd` tree.

use std::collections::HashSet;
use std::os::unix::fs::symlink;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::*;

/// A socket source the test scripts between ticks.
#[derive(Debug, Clone, Default)]
struct Script {
    socks: Arc<Mutex<Vec<TcpSocket>>>,
    fail: Arc<AtomicBool>,
}

impl Script {
    fn set(&self, socks: &[TcpSocket]) {
        *self.socks.lock().unwrap_or_else(|p| p.into_inner()) = socks.to_vec();
    }
}

impl SocketSource for Script {
    fn dump(&mut self, out: &mut Vec<TcpSocket>) -> io::Result<()> {
        out.clear();
        if self.fail.load(Ordering::Relaxed) {
            return Err(io::Error::from_raw_os_error(libc::ENOBUFS));
        }
        out.extend_from_slice(&self.socks.lock().unwrap_or_else(|p| p.into_inner()));
        Ok(())
    }
}

#[derive(Default)]
struct Live(HashSet<ProcessKey>);

impl LiveProcesses for Live {
    fn is_live(&self, key: ProcessKey) -> bool {
        self.0.contains(&key)
    }
    fn for_each_live(&self, f: &mut dyn FnMut(ProcessKey)) {
        for &k in &self.0 {
            f(k);
        }
    }
}

/// A fake `/proc` holding only `PID/fd/N` links.
struct Tree {
    dir: tempfile::TempDir,
    next_fd: u32,
}

impl Tree {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
            next_fd: 3,
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("proc")
    }

    /// Gives `pid` an fd linking to `target`.
    fn link(&mut self, pid: u32, target: &str) {
        let dir = self.root().join(pid.to_string()).join("fd");
        fs::create_dir_all(&dir).expect("mkdir");
        self.next_fd += 1;
        symlink(target, dir.join(self.next_fd.to_string())).expect("symlink");
    }

    fn hold(&mut self, pid: u32, inode: u32) {
        self.link(pid, &format!("socket:[{inode}]"));
    }

    /// Removes every fd of `pid`.
    fn close_all(&self, pid: u32) {
        let _ = fs::remove_dir_all(self.root().join(pid.to_string()).join("fd"));
    }
}

use std::fs;

fn key(pid: u32, start_ticks: u64) -> ProcessKey {
    ProcessKey { pid, start_ticks }
}

fn sock(cookie: u64, inode: u32, rx: u64, tx: u64) -> TcpSocket {
    TcpSocket {
        cookie,
        id: super::super::sockdiag::SockId::default(),
        inode,
        loopback: false,
        bytes_received: rx,
        bytes_sent: tx,
    }
}

struct Rig {
    script: Script,
    net: NetFlow,
    tree: Tree,
    live: Live,
    uptime: Duration,
}

impl Rig {
    fn new() -> Self {
        let script = Script::default();
        Self {
            net: NetFlow::with_source(Box::new(script.clone())),
            script,
            tree: Tree::new(),
            live: Live::default(),
            uptime: Duration::from_secs(1000),
        }
    }

    fn spawn(&mut self, k: ProcessKey) {
        self.live.0.insert(k);
    }

    /// One tick over `socks`: the attributed totals.
    fn tick(&mut self, socks: &[TcpSocket]) -> Option<(u64, u64)> {
        self.script.set(socks);
        self.uptime += Duration::from_secs(1);
        self.net.dump();
        self.net
            .attribute(&self.tree.root(), &self.live, self.uptime)
    }

    fn bytes(&self, k: ProcessKey) -> (u64, u64) {
        self.net.per_process().get(&k).copied().unwrap_or((0, 0))
    }
}

#[test]
fn socket_inode_parsing() {
    assert_eq!(socket_inode(b"socket:[12345]"), Some(12345));
    assert_eq!(socket_inode(b"socket:[4294967295]"), Some(u32::MAX));
    assert_eq!(socket_inode(b"socket:[4294967296]"), None);
    assert_eq!(socket_inode(b"pipe:[12345]"), None);
    assert_eq!(socket_inode(b"/dev/null"), None);
    assert_eq!(socket_inode(b"socket:[]"), None);
    assert_eq!(socket_inode(b"socket:[12a]"), None);
    assert_eq!(socket_inode(b"anon_inode:[eventfd]"), None);
}

#[test]
fn first_dump_is_a_baseline_then_deltas_per_cookie() {
    let mut r = Rig::new();
    let p = key(100, 50);
    r.spawn(p);
    r.tree.link(100, "/dev/null");
    r.tree.link(100, "pipe:[9]");
    r.tree.hold(100, 7);
    assert_eq!(
        r.tick(&[sock(1, 7, 5_000, 9_000)]),
        Some((0, 0)),
        "baseline"
    );
    assert_eq!(r.bytes(p), (0, 0));
    assert_eq!(r.tick(&[sock(1, 7, 6_000, 12_000)]), Some((1_000, 3_000)));
    assert_eq!(r.bytes(p), (1_000, 3_000));
    // Idle socket: nothing, and the process has no entry at all.
    assert_eq!(r.tick(&[sock(1, 7, 6_000, 12_000)]), Some((0, 0)));
    assert!(r.net.per_process().is_empty());
}

#[test]
fn a_new_socket_counts_from_zero_and_a_reused_inode_is_another_socket() {
    let mut r = Rig::new();
    let (a, b) = (key(100, 50), key(200, 60));
    r.spawn(a);
    r.spawn(b);
    r.tree.hold(100, 7);
    r.tick(&[sock(1, 7, 1_000_000, 1_000_000)]);
    r.tick(&[sock(1, 7, 1_000_100, 1_000_000)]);
    assert_eq!(r.bytes(a), (100, 0));

    // Socket 1 closes; within the same interval a new socket (cookie 2) of process b gets the
    // same inode. Its counters start at 0, so its whole counters are this tick's bytes: not a
    // delta against socket 1's counters (which would be "negative"), and not counted for a.
    r.tree.close_all(100);
    r.tree.hold(200, 7);
    assert_eq!(r.tick(&[sock(2, 7, 400, 300)]), Some((400, 300)));
    assert_eq!(r.bytes(b), (400, 300));
    assert_eq!(r.bytes(a), (0, 0));
    r.tick(&[sock(2, 7, 500, 300)]);
    assert_eq!(r.bytes(b), (100, 0));
}

#[test]
fn counters_going_backwards_count_zero_and_restart() {
    let mut r = Rig::new();
    let p = key(100, 50);
    r.spawn(p);
    r.tree.hold(100, 7);
    r.tick(&[sock(1, 7, 1_000, 1_000)]);
    assert_eq!(r.tick(&[sock(1, 7, 10, 2_000)]), Some((0, 1_000)));
    assert_eq!(r.tick(&[sock(1, 7, 60, 2_000)]), Some((50, 0)));
}

#[test]
fn shared_socket_counts_once_for_the_oldest_holder() {
    let mut r = Rig::new();
    // pid 300 started first, then 250, then 200: start time decides, not the pid.
    let (old, mid, young) = (key(300, 5), key(250, 10), key(200, 90));
    for k in [old, mid, young] {
        r.spawn(k);
    }
    r.tree.hold(200, 7);
    r.tree.hold(250, 7);
    r.tree.hold(300, 7);
    r.tree.hold(200, 8);
    r.tree.hold(250, 8);
    r.tick(&[]);
    assert_eq!(
        r.tick(&[sock(1, 7, 100, 10), sock(2, 8, 1, 2)]),
        Some((101, 12)),
        "each socket once"
    );
    assert_eq!(r.bytes(old), (100, 10), "oldest start time wins");
    assert_eq!(r.bytes(mid), (1, 2), "the older of socket 8's two holders");
    assert_eq!(r.bytes(young), (0, 0));

    // The owner exits; the socket lives on in the others: looked up again, next oldest wins.
    r.live.0.remove(&old);
    r.tree.close_all(300);
    assert_eq!(
        r.tick(&[sock(1, 7, 150, 10), sock(2, 8, 1, 2)]),
        Some((50, 0))
    );
    assert_eq!(r.bytes(mid), (50, 0));
}

#[test]
fn same_start_time_lowest_pid_wins() {
    let mut r = Rig::new();
    let (low, high) = (key(20, 10), key(30, 10));
    r.spawn(low);
    r.spawn(high);
    r.tree.hold(30, 7);
    r.tree.hold(20, 7);
    r.tick(&[]);
    r.tick(&[sock(1, 7, 10, 0)]);
    assert_eq!(r.bytes(low), (10, 0));
    assert_eq!(r.bytes(high), (0, 0));
}

#[test]
fn only_unseen_sockets_cause_a_scan_and_it_stops_early() {
    let mut r = Rig::new();
    let (old, young) = (key(100, 10), key(200, 20));
    r.spawn(old);
    r.spawn(young);
    for i in 0..50 {
        r.tree.link(200, &format!("pipe:[{i}]"));
    }
    r.tree.hold(100, 7);
    r.tick(&[sock(1, 7, 0, 0)]);
    let s = r.net.stats();
    assert_eq!(s.scans, 1);
    assert_eq!(
        (s.fd_dirs_read, s.fds_read),
        (1, 1),
        "the oldest process held it: the young one's 50 fds are never read"
    );

    // Steady state: no scan however many ticks.
    for n in 1..=5 {
        r.tick(&[sock(1, 7, n, n)]);
    }
    assert_eq!(r.net.stats().scans, 1);
    assert_eq!(r.bytes(old), (1, 1));

    // A new socket: one scan, then cached again.
    r.tree.hold(200, 8);
    r.tick(&[sock(1, 7, 5, 5), sock(2, 8, 9, 9)]);
    assert_eq!(r.net.stats().scans, 2);
    assert_eq!(r.bytes(young), (9, 9));
    r.tick(&[sock(1, 7, 5, 5), sock(2, 8, 10, 10)]);
    assert_eq!(r.net.stats().scans, 2);
    assert_eq!(r.net.stats().followed, 2);

    // A closed socket is forgotten.
    r.tick(&[sock(2, 8, 10, 10)]);
    assert_eq!(r.net.stats().followed, 1);
}

#[test]
fn unowned_sockets_are_retried_once_then_every_minute() {
    let mut r = Rig::new();
    let p = key(100, 10);
    r.spawn(p);
    r.tick(&[]);
    // Nobody holds inode 7 (a kernel socket, say).
    r.tick(&[sock(1, 7, 10, 10)]);
    assert_eq!(r.net.stats().scans, 1);
    r.tick(&[sock(1, 7, 20, 20)]);
    assert_eq!(r.net.stats().scans, 2, "one immediate retry");
    for _ in 0..10 {
        r.tick(&[sock(1, 7, 20, 20)]);
    }
    assert_eq!(r.net.stats().scans, 2, "then left alone");
    // It shows up in a process (an fd passed over a unix socket): found at the next retry,
    // at most a minute later; its bytes before that stay unattributed.
    r.tree.hold(100, 7);
    let mut found_after = None;
    for t in 1..=70 {
        r.tick(&[sock(1, 7, 20 + t, 20)]);
        if r.bytes(p) != (0, 0) {
            found_after = Some(t);
            break;
        }
    }
    let t = found_after.expect("found by a retry");
    assert!(t <= 60, "retried within a minute, took {t} ticks");
    assert_eq!(
        r.bytes(p),
        (1, 0),
        "only the delta of the tick it was found in"
    );
}

#[test]
fn orphaned_socket_keeps_its_owner() {
    let mut r = Rig::new();
    let p = key(100, 10);
    r.spawn(p);
    r.tree.hold(100, 7);
    r.tick(&[sock(1, 7, 0, 0)]);
    r.tick(&[sock(1, 7, 0, 1_000)]);
    // The process closed it; the kernel still flushes: inode 0, same cookie.
    r.tree.close_all(100);
    assert_eq!(r.tick(&[sock(1, 0, 0, 1_500)]), Some((0, 500)));
    assert_eq!(r.bytes(p), (0, 500));
    assert_eq!(r.net.stats().scans, 1, "an orphan needs no lookup");
    // A socket that was never seen with an inode is nobody's.
    assert_eq!(
        r.tick(&[sock(1, 0, 0, 1_500), sock(2, 0, 9, 9)]),
        Some((0, 0))
    );
}

#[test]
fn loopback_is_left_out_unless_asked() {
    let mut r = Rig::new();
    let p = key(100, 10);
    r.spawn(p);
    r.tree.hold(100, 7);
    r.tree.hold(100, 8);
    let lo = |cookie, inode, rx, tx| TcpSocket {
        loopback: true,
        ..sock(cookie, inode, rx, tx)
    };
    r.tick(&[lo(1, 7, 0, 0), sock(2, 8, 0, 0)]);
    assert_eq!(
        r.net.stats().followed,
        1,
        "loopback sockets are not even followed"
    );
    assert_eq!(
        r.tick(&[lo(1, 7, 500, 500), sock(2, 8, 3, 4)]),
        Some((3, 4))
    );
    assert_eq!(r.bytes(p), (3, 4));

    r.net.set_count_loopback(true);
    r.tick(&[lo(1, 7, 500, 500), sock(2, 8, 3, 4)]);
    assert_eq!(
        r.tick(&[lo(1, 7, 600, 500), sock(2, 8, 3, 4)]),
        Some((100, 0))
    );
}

#[test]
fn a_failed_dump_is_unmeasured_and_the_next_one_a_baseline() {
    let mut r = Rig::new();
    let p = key(100, 10);
    r.spawn(p);
    r.tree.hold(100, 7);
    r.tick(&[sock(1, 7, 0, 0)]);
    r.script.fail.store(true, Ordering::Relaxed);
    assert_eq!(r.tick(&[sock(1, 7, 100, 100)]), None);
    assert!(r.net.per_process().is_empty());
    r.script.fail.store(false, Ordering::Relaxed);
    // A socket opened during the failed tick is not counted from 0: no spike.
    r.tree.hold(100, 8);
    assert_eq!(
        r.tick(&[sock(1, 7, 200, 200), sock(2, 8, 1_000_000, 0)]),
        Some((0, 0))
    );
    assert_eq!(
        r.tick(&[sock(1, 7, 210, 200), sock(2, 8, 1_000_000, 0)]),
        Some((10, 0))
    );
}

#[test]
fn exited_owner_is_not_counted() {
    let mut r = Rig::new();
    let p = key(100, 10);
    r.spawn(p);
    r.tree.hold(100, 7);
    r.tick(&[sock(1, 7, 0, 0)]);
    r.live.0.remove(&p);
    r.tree.close_all(100);
    // Orphaned and its owner gone: unattributed.
    assert_eq!(r.tick(&[sock(1, 0, 100, 0)]), Some((0, 0)));
    // A reused pid with another start time is another process.
    let reused = key(100, 99);
    r.spawn(reused);
    assert_eq!(r.tick(&[sock(1, 0, 200, 0)]), Some((0, 0)));
    assert_eq!(r.bytes(reused), (0, 0));
}

#[test]
fn unreadable_fd_directories_are_skipped_from_then_on() {
    let mut r = Rig::new();
    let (other, mine) = (key(100, 10), key(200, 20));
    r.spawn(other);
    r.spawn(mine);
    // pid 100's fd "directory" cannot be listed (as EACCES would do without privilege).
    fs::create_dir_all(r.tree.root().join("100")).expect("mkdir");
    fs::write(r.tree.root().join("100/fd"), b"").expect("write");
    r.tree.hold(200, 8);
    r.tick(&[]);
    r.tick(&[sock(1, 7, 5, 5), sock(2, 8, 6, 6)]);
    assert_eq!(r.bytes(mine), (6, 6));
    let dirs = r.net.stats().fd_dirs_read;
    assert!(r.net.fd_denied.contains(&other));
    // The retry does not try pid 100 again.
    r.tick(&[sock(1, 7, 5, 5), sock(2, 8, 6, 6)]);
    assert_eq!(r.net.stats().scans, 2);
    assert_eq!(
        r.net.stats().fd_dirs_read,
        dirs + 1,
        "only pid 200 listed again"
    );
}

#[test]
fn unavailable_sock_diag_means_unmeasured_not_a_crash() {
    let mut net = NetFlow::with_opener(|| Err(io::Error::from_raw_os_error(libc::EPROTONOSUPPORT)));
    let live = Live::default();
    let root = PathBuf::from("/nonexistent");
    for t in 0..3 {
        net.dump();
        assert_eq!(net.attribute(&root, &live, Duration::from_secs(t)), None);
        assert!(!net.is_available());
        assert!(net.warned_open, "one warning, kept");
    }
    // Tried again when process sampling is next turned on.
    net.reset();
    assert!(matches!(net.source, SourceSlot::Untried));
}

#[test]
fn reset_forgets_sockets() {
    let mut r = Rig::new();
    let p = key(100, 10);
    r.spawn(p);
    r.tree.hold(100, 7);
    r.tick(&[sock(1, 7, 0, 0)]);
    r.net.reset();
    assert_eq!(r.net.stats().followed, 0);
    assert_eq!(
        r.tick(&[sock(1, 7, 500, 500)]),
        Some((0, 0)),
        "a baseline again"
    );
}

#[test]
fn a_socket_an_answer_missed_continues_from_its_last_counters() {
    let mut r = Rig::new();
    let p = key(100, 50);
    r.spawn(p);
    r.tree.hold(100, 7);
    r.tree.hold(100, 8);
    r.tick(&[sock(1, 7, 1_000_000, 2_000_000), sock(2, 8, 0, 0)]);
    r.tick(&[sock(1, 7, 1_000_100, 2_000_000), sock(2, 8, 0, 0)]);
    assert_eq!(r.bytes(p), (100, 0));
    // One answer misses socket 1 (still open); the next has it again, 50 bytes on: those 50
    // count, not its whole million.
    r.tick(&[sock(2, 8, 0, 0)]);
    assert_eq!(r.bytes(p), (0, 0));
    assert_eq!(
        r.tick(&[sock(1, 7, 1_000_150, 2_000_000), sock(2, 8, 0, 0)]),
        Some((50, 0))
    );
    // Missing for longer than it is remembered (forgotten by then): counted as a socket
    // first seen, from zero.
    r.tick(&[sock(2, 8, 0, 0)]);
    r.uptime += GONE_FOR;
    r.tick(&[sock(2, 8, 0, 0)]);
    assert!(r.net.gone.is_empty());
    assert_eq!(
        r.tick(&[sock(1, 7, 1_000_200, 2_000_000), sock(2, 8, 0, 0)]),
        Some((1_000_200, 2_000_000))
    );
    // At most GONE_KEPT are remembered, the most recent kept.
    let many: Vec<TcpSocket> = (10..10 + GONE_KEPT as u64 + 5)
        .map(|c| sock(c, 8, c, 0))
        .collect();
    r.tick(&many);
    r.tick(&[sock(2, 8, 0, 0)]);
    assert_eq!(r.net.gone.len(), GONE_KEPT);
}
