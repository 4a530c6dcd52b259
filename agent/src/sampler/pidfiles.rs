//! `/proc/PID/stat` and `/proc/PID/io` kept open between ticks and re-read with `pread` at
//! offset 0, within a bound on descriptors.
//!
//! Why: those two reads per process per tick are most of a tick, and most of their kernel time
//! is not the rendering of the text but the `open` (path walk through `/proc/PID`, a `struct
//! file` and a `seq_file` set up) and the `close`. A descriptor kept open skips both: `pread` at
//! 0 makes `seq_read_iter` render the file anew. Measured in `vmmon-sample-bench` and the
//! daemon A/B (docs/benchmarks.md §1c, "descriptors kept open").
//!
//! Why it is safe: an open `/proc/PID` file is bound to the process's `struct pid`, not to the
//! number, so once the process is reaped a read fails with `ESRCH` even if the pid has been
//! reused; the entry is then closed and the pid is read by path in the same tick, which finds
//! the new process exactly as the open + read + close did. The table keeps the descriptors
//! beside the process's identity (pid and start time, field 22 of `stat`) and checks the start
//! time on every read as well (a fake `/proc` tree of regular files has no such binding).
//!
//! The price: two descriptors per process, and the kernel memory of each open `/proc` file
//! once read — the `seq_file` page buffer (4 KiB, kept until `close`), the `struct file` and
//! the `seq_file` — 4.4 KiB per descriptor in those three slab caches, ~5.4 KiB of slab in all
//! (measured: +10.5 MiB of `Slab` for 1,000 processes, 2,000 descriptors), charged to the
//! agent's memory cgroup, not RSS. Hence a cap ([`MAX_CACHED_FDS`], and `RLIMIT_NOFILE` minus
//! [`FD_HEADROOM`]); processes beyond it are read by open + read + close as before, with
//! identical figures.

use std::fs::File;

/// Descriptors left free under `RLIMIT_NOFILE` for everything else the agent opens (the
/// collector connection, spool and slot files, `sock_diag` sockets, the `/proc/PID/fd` scan,
/// the host files read each tick).
pub const FD_HEADROOM: usize = 256;

/// Most descriptors kept open (2 per process, so 2,048 processes), whatever `RLIMIT_NOFILE`
/// allows: at ~5.4 KiB of kernel memory each this bounds the cache at ~22 MiB, inside the
/// unit's `MemoryMax=64M` beside an RSS of at most 8 MiB.
pub const MAX_CACHED_FDS: usize = 4096;

/// The open files of one process.
#[derive(Debug)]
pub struct PidFiles {
    /// `/proc/PID/stat`.
    pub stat: File,
    /// `/proc/PID/io`; `None` when it is not read (refused, absent) or was not kept.
    pub io: Option<File>,
}

impl PidFiles {
    /// Descriptors held.
    pub fn count(&self) -> usize {
        1 + usize::from(self.io.is_some())
    }
}

/// How many descriptors the process table may hold, and how many it holds.
///
/// `held` is exact after [`Self::recount`] (at the end of each tick) and only grows within a
/// tick (descriptors closed mid-tick are counted until then), so the cap is never exceeded.
#[derive(Debug, Clone, Copy)]
pub struct FdBudget {
    cap: usize,
    held: usize,
}

impl FdBudget {
    /// At most `cap` descriptors.
    pub fn new(cap: usize) -> Self {
        Self { cap, held: 0 }
    }

    /// Whether `n` more descriptors fit.
    pub fn has_room(&self, n: usize) -> bool {
        self.held.saturating_add(n) <= self.cap
    }

    /// `n` descriptors were opened and kept.
    pub fn took(&mut self, n: usize) {
        self.held = self.held.saturating_add(n);
    }

    /// The count of descriptors actually held now.
    pub fn recount(&mut self, held: usize) {
        self.held = held;
    }

    /// Descriptors held (as last counted).
    pub fn held(&self) -> usize {
        self.held
    }
}

/// The default cap: `RLIMIT_NOFILE`'s soft limit minus [`FD_HEADROOM`], at most
/// [`MAX_CACHED_FDS`]; 0 (nothing kept open) when the limit cannot be read.
pub fn default_cap() -> usize {
    nofile_limit().map_or(0, |(soft, _)| {
        usize::try_from(soft)
            .unwrap_or(usize::MAX)
            .saturating_sub(FD_HEADROOM)
            .min(MAX_CACHED_FDS)
    })
}

/// `RLIMIT_NOFILE` as (soft, hard).
#[allow(unsafe_code)]
pub fn nofile_limit() -> Option<(u64, u64)> {
    // SAFETY: getrlimit writes one `rlimit` we own; RLIMIT_NOFILE is a valid resource.
    let lim = unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        (libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0).then_some(lim)
    }?;
    Some((lim.rlim_cur, lim.rlim_max))
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (never lowers it), so the sampler can
/// keep descriptors open for ~1,000 processes where the soft limit is the usual 1,024. The
/// agent uses epoll, never `select`, so descriptors above 1,024 are harmless. Returns the soft
/// limit now in force.
#[allow(unsafe_code)]
pub fn raise_nofile_limit() -> Option<u64> {
    let (soft, hard) = nofile_limit()?;
    if soft >= hard {
        return Some(soft);
    }
    let lim = libc::rlimit {
        rlim_cur: hard,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads one `rlimit` we own; RLIMIT_NOFILE is a valid resource, and
    // raising the soft limit up to the hard one needs no privilege.
    let ok = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0;
    Some(if ok { hard } else { soft })
}

#[cfg(test)]
mod tests;
