//! Per-process network traffic: the kernel's per-socket TCP byte counters ([`super::sockdiag`]),
//! deltas per socket cookie, each socket mapped to the process holding it through
//! `/proc/PID/fd`.
//!
//! Per tick (only while process sampling is on):
//! 1. [`NetFlow::dump`], right after `/proc/net/dev` is read so both cover the same interval:
//!    every TCP socket with its counters.
//! 2. [`NetFlow::attribute`], once the process table is up to date:
//!    * Sockets are followed by **cookie**, which the kernel never reuses; an inode can be
//!      reused by a later socket, so it is only a way to find the owner.
//!    * A socket not seen by the previous (successful) dump is newer than it, so its whole
//!      counters are this tick's delta; on the first dump, or after a failed one, unseen
//!      sockets are only a baseline. A counter that goes backwards counts 0 and restarts.
//!    * Owners: a socket is resolved once, when first seen, and keeps its owner while that
//!      process lives, even after the process closed it (inode 0, still flushing data). Only
//!      sockets that need an owner (new ones, ones whose owner exited, and unowned ones due for
//!      a retry) trigger a scan of `/proc/PID/fd`, so a tick without new sockets reads no fd.
//!    * **Shared sockets** (inherited across `fork`, passed over a unix socket) are counted
//!      once, for the **oldest** process holding them (earliest start time, then lowest pid),
//!      as seen when they are resolved: usually the process that opened them, and stable while
//!      short-lived children come and go. The scan visits processes oldest first, so the first
//!      holder found is the owner and the scan stops as soon as every wanted socket is found.
//!    * Sockets no readable process holds (kernel sockets, a process whose `fd` directory is
//!      not readable without privilege, fds in flight) stay unowned: retried on the next tick,
//!      then once a minute.
//! 3. Loopback traffic is left out (see [`super::sockdiag::TcpSocket::loopback`]), as in the VM
//!    figures, so a process's figures are its share of what crosses the VM's interfaces, and
//!    the processes sum to the VM's attributed figure.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::ffi::CStr;
use std::fmt;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use vmmon_common::wire::ProcessKey;

use super::procfs;
use super::sockdiag::{SockDiag, TcpSocket};

/// Where socket dumps come from: the kernel, or a test.
pub trait SocketSource: Send + fmt::Debug {
    /// Every TCP socket now, into `out` (cleared first).
    fn dump(&mut self, out: &mut Vec<TcpSocket>) -> io::Result<()>;

    /// [`Self::dump`], where the source can leave out sockets with a loopback end (they are
    /// left out after the dump anyway); by default the same.
    fn dump_without_loopback(&mut self, out: &mut Vec<TcpSocket>) -> io::Result<()> {
        self.dump(out)
    }
}

impl SocketSource for SockDiag {
    fn dump(&mut self, out: &mut Vec<TcpSocket>) -> io::Result<()> {
        SockDiag::dump(self, out)
    }

    fn dump_without_loopback(&mut self, out: &mut Vec<TcpSocket>) -> io::Result<()> {
        SockDiag::dump_without_loopback(self, out)
    }
}

/// The processes alive in this tick, as the process table knows them.
pub trait LiveProcesses {
    /// Whether `key` is alive (same pid, same start time).
    fn is_live(&self, key: ProcessKey) -> bool;
    /// Calls `f` for every live process.
    fn for_each_live(&self, f: &mut dyn FnMut(ProcessKey));
}

/// How long, and how many, sockets missing from an answer are remembered ([`NetFlow`]'s
/// `gone`): longer than the sock_diag reader goes between walks of the socket hash (a minute),
/// and a bounded memory (~40 KiB).
const GONE_FOR: Duration = Duration::from_secs(120);
const GONE_KEPT: usize = 1024;

/// An unowned socket is looked up again this often (after one immediate retry).
const UNOWNED_RETRY: Duration = Duration::from_secs(60);

/// Who a socket's traffic is counted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// Not looked up yet.
    Pending,
    /// The oldest process holding it when it was resolved.
    Process(ProcessKey),
    /// No readable process held it at the last lookup (`at`: uptime then).
    Unowned { attempts: u8, at: Duration },
}

/// One socket followed between ticks.
#[derive(Debug, Clone, Copy)]
struct Followed {
    bytes_received: u64,
    bytes_sent: u64,
    inode: u32,
    owner: Owner,
    /// Tick generation that last saw it; older means it closed.
    seen: u64,
}

/// Counters of the work done, for the bench and the tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Sockets in the last dump (loopback ones only while loopback is counted: the kernel
    /// leaves out most of them otherwise).
    pub sockets: usize,
    /// Sockets followed now.
    pub followed: usize,
    /// `/proc/PID/fd` scans so far.
    pub scans: u64,
    /// `fd` directories listed by scans so far.
    pub fd_dirs_read: u64,
    /// Links read by scans so far.
    pub fds_read: u64,
}

#[derive(Debug)]
enum SourceSlot {
    /// Not opened yet (opened on the first dump).
    Untried,
    Ready(Box<dyn SocketSource>),
    /// Opening failed; tried again when process sampling is next turned on.
    Unavailable,
}

type Opener = fn() -> io::Result<Box<dyn SocketSource>>;

fn open_sock_diag() -> io::Result<Box<dyn SocketSource>> {
    Ok(Box::new(SockDiag::open()?))
}

/// Per-process TCP traffic between ticks. See the module doc.
#[derive(Debug)]
pub struct NetFlow {
    source: SourceSlot,
    opener: Opener,
    /// The current tick's dump; `dumped` says whether it succeeded.
    socks: Vec<TcpSocket>,
    dumped: bool,
    followed: HashMap<u64, Followed>,
    /// Sockets missing from an answer lately: cookie → their last counters and when they went
    /// missing (uptime). A cookie is never reused, so one that comes back is the same socket
    /// (an answer that missed it), whose bytes continue from these counters instead of counting
    /// its whole life again. At most [`GONE_KEPT`], for [`GONE_FOR`].
    gone: HashMap<u64, (u64, u64, Duration)>,
    /// The previous dump succeeded: an unseen cookie is a socket newer than it.
    primed: bool,
    generation: u64,
    /// This tick's bytes per process: `(received, sent)`.
    per_process: HashMap<ProcessKey, (u64, u64)>,
    /// Processes whose `fd` directory could not be listed: not tried again.
    fd_denied: HashSet<ProcessKey>,
    /// Scan scratch: wanted inode → holder found; processes oldest first; path bytes.
    wanted: HashMap<u32, Option<ProcessKey>>,
    order: Vec<ProcessKey>,
    path: Vec<u8>,
    count_loopback: bool,
    warned_open: bool,
    warned_dump: bool,
    warned_fd: bool,
    stats: NetStats,
}

impl Default for NetFlow {
    fn default() -> Self {
        Self::with_opener(open_sock_diag)
    }
}

impl NetFlow {
    /// A tracker whose sockets come from `opener` (the kernel's `sock_diag` by default).
    pub fn with_opener(opener: Opener) -> Self {
        Self {
            source: SourceSlot::Untried,
            opener,
            socks: Vec::new(),
            dumped: false,
            followed: HashMap::new(),
            gone: HashMap::new(),
            primed: false,
            generation: 0,
            per_process: HashMap::new(),
            fd_denied: HashSet::new(),
            wanted: HashMap::new(),
            order: Vec::new(),
            path: Vec::with_capacity(64),
            count_loopback: false,
            warned_open: false,
            warned_dump: false,
            warned_fd: false,
            stats: NetStats::default(),
        }
    }

    /// A tracker over an already open source (tests).
    #[cfg(test)]
    pub fn with_source(source: Box<dyn SocketSource>) -> Self {
        let mut n = Self::with_opener(open_sock_diag);
        n.source = SourceSlot::Ready(source);
        n
    }

    /// Swaps the source, keeping every followed socket (tests that change the kernel's answer).
    #[cfg(test)]
    pub fn replace_source_for_test(&mut self, source: Box<dyn SocketSource>) {
        self.source = SourceSlot::Ready(source);
    }

    /// Whether a `sock_diag` source is open.
    #[cfg(test)]
    pub fn is_available(&self) -> bool {
        matches!(self.source, SourceSlot::Ready(_))
    }

    /// Also attribute loopback traffic (benchmarks over loopback only; never in the agent).
    pub fn set_count_loopback(&mut self, on: bool) {
        self.count_loopback = on;
    }

    /// Work counters.
    pub fn stats(&self) -> NetStats {
        NetStats {
            sockets: self.socks.len(),
            followed: self.followed.len(),
            ..self.stats
        }
    }

    /// Forgets every socket (process sampling turned off): the next dump is a baseline. A
    /// source that could not be opened is tried again.
    pub fn reset(&mut self) {
        self.followed.clear();
        self.gone.clear();
        self.per_process.clear();
        self.fd_denied.clear();
        self.socks.clear();
        self.primed = false;
        self.dumped = false;
        if matches!(self.source, SourceSlot::Unavailable) {
            self.source = SourceSlot::Untried;
        }
    }

    /// Step 1 of a tick: dumps every TCP socket. A failure is logged (once until a dump works
    /// again) and makes this tick's network figures unmeasured.
    pub fn dump(&mut self) {
        self.dumped = false;
        if matches!(self.source, SourceSlot::Untried) {
            self.source = match (self.opener)() {
                Ok(s) => SourceSlot::Ready(s),
                Err(e) => {
                    if !self.warned_open {
                        tracing::warn!(error = %e,
                            "Cannot open a NETLINK_SOCK_DIAG socket: per-process network figures \
                             are null and the VM's attributed traffic is not reported.");
                        self.warned_open = true;
                    }
                    SourceSlot::Unavailable
                }
            };
        }
        let SourceSlot::Ready(source) = &mut self.source else {
            return;
        };
        let dumped = if self.count_loopback {
            source.dump(&mut self.socks)
        } else {
            // Loopback sockets are skipped in the kernel, before their `tcp_info` is built.
            source.dump_without_loopback(&mut self.socks)
        };
        match dumped {
            Ok(()) => {
                self.dumped = true;
                if self.warned_dump {
                    tracing::info!("sock_diag dumps work again.");
                    self.warned_dump = false;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                // The kernel cannot count (tcp_info too old): not tried again until process
                // sampling is next turned on, and said once for the agent's life.
                self.socks.clear();
                self.source = SourceSlot::Unavailable;
                if !self.warned_open {
                    tracing::warn!(error = %e,
                        "sock_diag gives no socket byte counters: per-process network figures \
                         are null and the VM's attributed traffic is not reported.");
                    self.warned_open = true;
                }
            }
            Err(e) => {
                self.socks.clear();
                if !self.warned_dump {
                    tracing::warn!(error = %e,
                        "sock_diag dump failed: per-process network figures are null until it works again.");
                    self.warned_dump = true;
                }
            }
        }
    }

    /// This tick's bytes per process, `(received, sent)`, after [`Self::attribute`].
    pub fn per_process(&self) -> &HashMap<ProcessKey, (u64, u64)> {
        &self.per_process
    }

    /// Step 2 of a tick: deltas since the previous dump, attributed to processes. Returns the
    /// attributed `(received, sent)` bytes, or `None` when this tick is not measured (no dump).
    pub fn attribute(
        &mut self,
        proc_root: &Path,
        live: &dyn LiveProcesses,
        uptime: Duration,
    ) -> Option<(u64, u64)> {
        self.per_process.clear();
        if !self.dumped {
            self.followed.clear();
            self.gone.clear();
            self.primed = false;
            return None;
        }
        self.generation += 1;
        let generation = self.generation;

        // Follow every socket; collect the inodes whose owner must be looked up.
        self.wanted.clear();
        for s in &self.socks {
            if s.loopback && !self.count_loopback {
                continue;
            }
            let f = match self.followed.entry(s.cookie) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => {
                    if s.inode == 0 {
                        // Born and closed between two dumps: nobody to count it for.
                        continue;
                    }
                    let (bytes_received, bytes_sent) = match self.gone.remove(&s.cookie) {
                        Some((rx, tx, _)) => (rx, tx),
                        None if self.primed => (0, 0),
                        None => (s.bytes_received, s.bytes_sent),
                    };
                    e.insert(Followed {
                        bytes_received,
                        bytes_sent,
                        inode: s.inode,
                        owner: Owner::Pending,
                        seen: generation,
                    })
                }
            };
            f.seen = generation;
            f.inode = s.inode;
            let needs_lookup = s.inode != 0
                && match f.owner {
                    Owner::Pending => true,
                    Owner::Process(k) => !live.is_live(k),
                    Owner::Unowned { attempts, at } => {
                        attempts < 2 || uptime.saturating_sub(at) >= UNOWNED_RETRY
                    }
                };
            if needs_lookup {
                self.wanted.insert(s.inode, None);
            }
        }
        if !self.wanted.is_empty() {
            self.scan(proc_root, live);
            for f in self.followed.values_mut() {
                if f.seen != generation {
                    continue;
                }
                let Some(found) = self.wanted.get(&f.inode) else {
                    continue;
                };
                f.owner = match (found, f.owner) {
                    (Some(k), _) => Owner::Process(*k),
                    (None, Owner::Unowned { attempts, .. }) => Owner::Unowned {
                        attempts: attempts.saturating_add(1),
                        at: uptime,
                    },
                    (None, _) => Owner::Unowned {
                        attempts: 1,
                        at: uptime,
                    },
                };
            }
        }

        // Deltas, counted once per socket for its owner.
        let mut total = (0u64, 0u64);
        for s in &self.socks {
            let Some(f) = self.followed.get_mut(&s.cookie) else {
                continue;
            };
            if f.seen != generation {
                continue;
            }
            // A counter that went backwards counts 0 and restarts from its new value.
            let rx = s.bytes_received.saturating_sub(f.bytes_received);
            let tx = s.bytes_sent.saturating_sub(f.bytes_sent);
            f.bytes_received = s.bytes_received;
            f.bytes_sent = s.bytes_sent;
            if let Owner::Process(k) = f.owner {
                if live.is_live(k) && (rx > 0 || tx > 0) {
                    let e = self.per_process.entry(k).or_insert((0, 0));
                    e.0 = e.0.saturating_add(rx);
                    e.1 = e.1.saturating_add(tx);
                    total.0 = total.0.saturating_add(rx);
                    total.1 = total.1.saturating_add(tx);
                }
            }
        }
        let gone = &mut self.gone;
        self.followed.retain(|&cookie, f| {
            if f.seen != generation {
                gone.insert(cookie, (f.bytes_received, f.bytes_sent, uptime));
            }
            f.seen == generation
        });
        self.gone
            .retain(|_, (_, _, at)| uptime.saturating_sub(*at) < GONE_FOR);
        if self.gone.len() > GONE_KEPT {
            // Keep the most recent: those are the ones an answer may have missed.
            let mut by_age: Vec<(Duration, u64)> =
                self.gone.iter().map(|(&cookie, g)| (g.2, cookie)).collect();
            by_age.sort_unstable_by(|a, b| b.cmp(a));
            for (_, cookie) in &by_age[GONE_KEPT..] {
                self.gone.remove(cookie);
            }
        }
        self.primed = true;
        Some(total)
    }

    /// Looks up the holders of the `wanted` inodes in `/proc/PID/fd`, oldest process first,
    /// stopping once all are found.
    fn scan(&mut self, proc_root: &Path, live: &dyn LiveProcesses) {
        self.stats.scans += 1;
        self.order.clear();
        live.for_each_live(&mut |k| self.order.push(k));
        self.order.sort_unstable_by_key(|k| (k.start_ticks, k.pid));
        self.fd_denied.retain(|k| live.is_live(*k));
        let mut missing = self.wanted.len();
        let mut denied_now = 0usize;
        let mut name = Vec::with_capacity(16);
        let mut link = [0u8; 64];
        for &key in &self.order {
            if missing == 0 {
                break;
            }
            if self.fd_denied.contains(&key) {
                continue;
            }
            set_fd_dir(&mut self.path, proc_root, key.pid);
            let path = Path::new(std::ffi::OsStr::from_bytes(&self.path));
            // Listed by name; each link read relative to the open directory, which spares the
            // kernel resolving ROOT/PID/fd again for every fd.
            let opened = std::fs::read_dir(path)
                .and_then(|entries| Ok((entries, std::fs::File::open(path)?)));
            let (entries, dir) = match opened {
                Ok(d) => d,
                Err(e) if procfs::is_vanished(&e) => continue,
                Err(_) => {
                    // EACCES without root/CAP_SYS_PTRACE: skip it from now on.
                    self.fd_denied.insert(key);
                    denied_now += 1;
                    continue;
                }
            };
            self.stats.fd_dirs_read += 1;
            for entry in entries.flatten() {
                name.clear();
                name.extend_from_slice(entry.file_name().as_bytes());
                name.push(0);
                let Ok(name) = CStr::from_bytes_with_nul(&name) else {
                    continue;
                };
                self.stats.fds_read += 1;
                let Some(n) = read_link_at(&dir, name, &mut link) else {
                    continue;
                };
                let Some(inode) = socket_inode(&link[..n]) else {
                    continue;
                };
                if let Some(slot @ None) = self.wanted.get_mut(&inode) {
                    *slot = Some(key);
                    missing -= 1;
                    if missing == 0 {
                        break;
                    }
                }
            }
        }
        if denied_now > 0 && !self.warned_fd {
            tracing::warn!(
                processes = denied_now,
                "Cannot read /proc/PID/fd of some processes (the agent needs root, or \
                 CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH): their TCP traffic is counted as \
                 unattributed."
            );
            self.warned_fd = true;
        }
    }
}

/// `readlinkat(2)` of `name` in the open directory `dir`: the target's length in `out`, `None` on
/// an error. A target longer than `out` is cut (a socket's, `socket:[4294967295]`, fits in 64).
#[allow(unsafe_code)]
fn read_link_at(dir: &std::fs::File, name: &CStr, out: &mut [u8]) -> Option<usize> {
    // SAFETY: `dir` is an open descriptor, `name` is NUL-terminated, and `out` is a writable
    // buffer of `out.len()` bytes; readlinkat writes at most that many bytes into it and keeps
    // none of the pointers after returning.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            out.as_mut_ptr().cast(),
            out.len(),
        )
    };
    usize::try_from(n).ok()
}

/// `ROOT/PID/fd` into `out`.
fn set_fd_dir(out: &mut Vec<u8>, proc_root: &Path, pid: u32) {
    out.clear();
    out.extend_from_slice(proc_root.as_os_str().as_bytes());
    if out.last() != Some(&b'/') {
        out.push(b'/');
    }
    out.extend_from_slice(pid.to_string().as_bytes());
    out.extend_from_slice(b"/fd");
}

/// The inode of a `/proc/PID/fd/N` link target `socket:[INODE]`.
#[must_use]
pub fn socket_inode(target: &[u8]) -> Option<u32> {
    let digits = target.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    procfs::parse_u64(digits).and_then(|v| u32::try_from(v).ok())
}

#[cfg(test)]
mod tests;
