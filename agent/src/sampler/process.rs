//! Per-process figures (the agent side of `common::wire::process`): the process table and one
//! tick's pass over `/proc/PID/stat` and `/proc/PID/io`.

use std::collections::HashMap;
use std::collections::hash_map::Entry as MapEntry;
use std::fs::File;
use std::io;
use std::time::Duration;

use vmmon_common::wire::{ProcessKey, ProcessSample};

use super::netflow::LiveProcesses;
use super::pidfiles::{FdBudget, PidFiles};
use super::procfs::{self, COMM_TRUNCATED_LEN, IoCounters, PidPath, ReadBuf};
use super::rates;

/// What every process in one tick is measured against.
#[derive(Debug, Clone, Copy)]
pub struct TickCtx {
    /// Time since boot now (`/proc/uptime`), the clock `start_ticks` counts on.
    pub uptime: Duration,
    /// Since the previous tick; `None` on the first tick or when the clock did not advance.
    pub elapsed: Option<Duration>,
    /// Now, Unix epoch seconds: the `shutdown_time` of exits seen this tick.
    pub now_secs: f64,
    /// Boot time, Unix epoch seconds.
    pub btime_secs: f64,
    /// `sysconf(_SC_CLK_TCK)`, never 0.
    pub clk_tck: u64,
    /// `sysconf(_SC_PAGESIZE)`.
    pub page_size: u64,
    /// Online CPUs, at least 1.
    pub ncpu: u32,
    /// MemTotal, bytes.
    pub mem_total_bytes: u64,
}

impl TickCtx {
    /// Clock ticks since boot as a duration, without float rounding.
    fn ticks(&self, ticks: u64) -> Duration {
        let whole = Duration::from_secs(ticks / self.clk_tck);
        let frac_nanos = (ticks % self.clk_tck).saturating_mul(1_000_000_000) / self.clk_tck;
        whole + Duration::from_nanos(frac_nanos)
    }
}

/// Cumulative counters of one process as the kernel reports them **including the children it
/// has reaped**: `wait_task_zombie` (`kernel/exit.c`) adds a reaped child's CPU to the
/// parent's `cutime`/`cstime` and its I/O to the parent's `signal->ioac`, which
/// `/proc/PID/io` includes (`fs/proc/base.c` `do_io_accounting`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Counters {
    /// utime + stime + cutime + cstime, clock ticks.
    cpu_ticks: u64,
    /// `/proc/PID/io`; `None` while it cannot be read.
    io: Option<IoCounters>,
}

/// What a reaped child still owes its parent's next deltas: its counters as last sampled,
/// which the kernel folds into the parent's and which the child's own records already showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Owed {
    cpu_ticks: u64,
    read_bytes: u64,
    write_bytes: u64,
}

impl Owed {
    fn of(c: Counters) -> Owed {
        let io = c.io.unwrap_or_default();
        Owed {
            cpu_ticks: c.cpu_ticks,
            read_bytes: io.read_bytes,
            write_bytes: io.write_bytes,
        }
    }

    fn add(&mut self, o: Owed) {
        self.cpu_ticks = self.cpu_ticks.saturating_add(o.cpu_ticks);
        self.read_bytes = self.read_bytes.saturating_add(o.read_bytes);
        self.write_bytes = self.write_bytes.saturating_add(o.write_bytes);
    }

    fn is_zero(&self) -> bool {
        *self == Owed::default()
    }
}

/// One tick's deltas of a live process, kept until the tick ends so that a child reaped in the
/// same tick can still be taken out of them.
#[derive(Debug, Clone, Copy, Default)]
struct TickDelta {
    /// Index of the process's record in this tick's output.
    record: usize,
    /// What the rates are over; `None`: the record's rates are 0 (no baseline).
    over: Option<Duration>,
    cpu_ticks: u64,
    /// `None`: unreadable.
    io: Option<(u64, u64)>,
}

/// What the table remembers of one live process between ticks.
#[derive(Debug)]
struct Tracked {
    start_ticks: u64,
    /// Computed once, so a wall-clock step cannot change a process's identity on the wire.
    start_time: f64,
    ppid: u32,
    counters: Counters,
    /// `/proc/PID/io` refused us (EACCES without root/CAP_SYS_PTRACE): not retried for the life
    /// of the process, which saves two system calls per such process per tick.
    io_denied: bool,
    /// As in `/proc/PID/stat`; a change (exec) re-derives `cmd`.
    comm: Box<[u8]>,
    cmd: String,
    /// Tick generation that last saw it; older means it exited.
    seen: u64,
    /// First seen in the current tick, after it started: its rates are over its age.
    fresh: bool,
    /// This tick's deltas (valid when `seen` is this tick).
    delta: TickDelta,
    /// Owed by children reaped last tick and not yet found in this process's deltas: taken
    /// out of this tick's, then forgotten (a parent that ignores SIGCHLD never gets them).
    owed: Owed,
    /// A live thread whose `statm` gives the RSS while the main thread is a zombie.
    live_tid: Option<u32>,
    /// `stat` and `io` kept open for the next tick (see [`super::pidfiles`]); `None` beyond
    /// the descriptor cap.
    files: Option<PidFiles>,
}

/// What [`ProcessTable::observe`] found of one pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// Read: its record is in this tick's output.
    Read,
    /// Reaped since it was listed (`ENOENT`/`ESRCH`, or an empty `stat`): no such process.
    Gone,
    /// There, but not read this tick (`EACCES` under `hidepid`, out of descriptors, a `stat`
    /// that does not parse): it still counts as a process of the VM.
    Unreadable,
}

/// Processes seen on the previous tick, keyed by pid; the start time stored with each makes the
/// identity a [`ProcessKey`].
///
/// Reaped children appear once: a process's counters include its reaped children's (see
/// [`Counters`]). When a tracked child vanishes, its last sampled counters are taken out of its
/// parent's deltas of that tick (or, if the parent was read before the reap, of the next tick,
/// then forgotten), clamped at 0: the child keeps what its records showed, the parent is charged
/// only what the child did after its last sample. A child that lived and died between two
/// samples was never tracked, so all of it is charged to the parent that reaped it (as
/// netdata's apps.plugin does). No extra file is read for this: `ppid`, `cutime` and `cstime`
/// come from the `stat` already read.
#[derive(Debug)]
pub struct ProcessTable {
    entries: HashMap<u32, Tracked>,
    /// False until the first tick completed: that tick has no baseline and reports 0 rates.
    primed: bool,
    generation: u64,
    /// `(ppid, owed)` of processes gone this tick.
    reaped: Vec<(u32, Owed)>,
    /// Indexes of this tick's records whose disk figures could not be read.
    unreadable: Vec<usize>,
    /// The unreadable-counter warning was logged.
    warned_unreadable: bool,
    /// This kernel has no `/proc/PID/io` at all (built without `CONFIG_TASK_IO_ACCOUNTING`):
    /// no process's is read again, and every disk figure is null.
    io_absent: bool,
    task_path: Vec<u8>,
    /// Descriptors of `stat`/`io` kept open between ticks (see [`super::pidfiles`]).
    fds: FdBudget,
}

impl ProcessTable {
    /// An empty table that keeps at most `fd_cap` descriptors open between ticks (0: every
    /// file is opened, read and closed each tick).
    pub fn new(fd_cap: usize) -> Self {
        Self {
            entries: HashMap::new(),
            primed: false,
            generation: 0,
            reaped: Vec::new(),
            unreadable: Vec::new(),
            warned_unreadable: false,
            io_absent: false,
            task_path: Vec::new(),
            fds: FdBudget::new(fd_cap),
        }
    }

    /// Descriptors kept open now (as counted at the end of the last tick).
    pub fn fds_held(&self) -> usize {
        self.fds.held()
    }

    /// Pid → inode of the `stat` file kept open for it (sorted).
    #[cfg(test)]
    pub fn kept_open(&self) -> Vec<(u32, u64)> {
        use std::os::unix::fs::MetadataExt;
        let mut kept: Vec<(u32, u64)> = self
            .entries
            .iter()
            .filter_map(|(&pid, t)| {
                let ino = t.files.as_ref()?.stat.metadata().ok()?.ino();
                Some((pid, ino))
            })
            .collect();
        kept.sort_unstable();
        kept
    }

    /// Processes tracked now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Identities tracked now (unordered).
    #[cfg(test)]
    pub fn keys(&self) -> impl Iterator<Item = ProcessKey> + '_ {
        self.entries.iter().map(|(&pid, t)| ProcessKey {
            pid,
            start_ticks: t.start_ticks,
        })
    }

    /// Indexes of this tick's records whose disk figures are unreadable (null).
    pub fn unreadable(&self) -> &[usize] {
        &self.unreadable
    }

    /// Starts a tick; every live process must then be passed to [`Self::observe`].
    pub fn begin_tick(&mut self) {
        self.generation += 1;
        self.reaped.clear();
        self.unreadable.clear();
    }

    /// Reads one pid and appends its record (and, when the pid was reused, the previous
    /// holder's final record). A pid that vanishes mid-read is skipped: if it was tracked,
    /// [`Self::end_tick`] reports its exit. Returns what was found of the pid.
    pub fn observe(
        &mut self,
        pid: u32,
        buf: &mut ReadBuf,
        path: &mut PidPath,
        ctx: &TickCtx,
        out: &mut Vec<ProcessSample>,
    ) -> Observed {
        // stat: through the descriptor kept from an earlier tick (pread at 0) when there is
        // one and it still reads this process; else by path. Copy out what is needed before
        // the buffer is reused for io.
        let mut kept: Option<PidFiles> = None;
        let mut stat_file: Option<File> = None;
        let mut stat = None;
        if let Some(t) = self.entries.get_mut(&pid) {
            if let Some(files) = t.files.take() {
                let start_ticks = t.start_ticks;
                if let Some(st) = buf
                    .reread_single(&files.stat)
                    .ok()
                    .and_then(procfs::parse_pid_stat)
                    .filter(|st| st.start_ticks == start_ticks)
                {
                    stat = Some(stat_figures(&st, Some(&*t)));
                    kept = Some(files);
                }
                // Otherwise `files` is dropped (closed) here: the process was reaped (ESRCH),
                // and the pid is read by path below, like any pid not kept open.
            }
        }
        let (st, new_comm) = match stat {
            Some(figures) => figures,
            None => {
                let stat_path = path.get(pid, b"stat");
                let data = if self.fds.has_room(2) {
                    buf.open_single(stat_path).map(|(file, data)| {
                        stat_file = Some(file);
                        data
                    })
                } else {
                    buf.read_single(stat_path)
                };
                let st = match data {
                    Ok(data) => match procfs::parse_pid_stat(data) {
                        Some(st) => st,
                        // Reaped since the listing: its `stat` reads empty.
                        None if data.is_empty() => return Observed::Gone,
                        None => return Observed::Unreadable,
                    },
                    Err(e) if procfs::is_vanished(&e) => return Observed::Gone,
                    // EACCES (hidepid), EMFILE, ...: still there, not read this tick.
                    Err(_) => return Observed::Unreadable,
                };
                let known = self
                    .entries
                    .get(&pid)
                    .filter(|t| t.start_ticks == st.start_ticks);
                stat_figures(&st, known)
            }
        };
        let start_ticks = st.start_ticks;
        let known = self
            .entries
            .get(&pid)
            .filter(|t| t.start_ticks == start_ticks);

        let mut denied = self.io_absent || known.is_some_and(|t| t.io_denied);
        let mut io_file: Option<File> = None;
        let io_kept = kept.as_ref().and_then(|f| f.io.as_ref());
        let io = if denied {
            None
        } else {
            let read = match (io_kept, stat_file.is_some()) {
                (Some(file), _) => buf.reread_single(file).and_then(|data| {
                    if data.is_empty() {
                        Err(io::Error::from_raw_os_error(libc::ESRCH))
                    } else {
                        Ok(procfs::parse_pid_io(data))
                    }
                }),
                (None, true) => buf.open_single(path.get(pid, b"io")).map(|(file, data)| {
                    io_file = Some(file);
                    procfs::parse_pid_io(data)
                }),
                (None, false) => buf
                    .read_single(path.get(pid, b"io"))
                    .map(procfs::parse_pid_io),
            };
            match read {
                Ok(io) => io,
                // The kept `io` of a process whose kept `stat` just read: it was reaped between
                // the two reads, as the by-path `stat` re-read below finds.
                Err(e) if io_kept.is_some() && procfs::is_vanished(&e) => return Observed::Gone,
                Err(e) if procfs::is_vanished(&e) => {
                    if buf.read_single(path.get(pid, b"stat")).is_err() {
                        return Observed::Gone; // exited between the two reads
                    }
                    // No `io` beside a readable `stat`: the kernel has no task I/O accounting.
                    self.io_absent = true;
                    denied = true;
                    tracing::warn!(
                        pid,
                        "This kernel has no /proc/PID/io (built without CONFIG_TASK_IO_ACCOUNTING); the disk figures of every process are null."
                    );
                    None
                }
                Err(e) => {
                    denied = true;
                    if !self.warned_unreadable {
                        self.warned_unreadable = true;
                        tracing::warn!(pid, error = %e,
                            "Cannot read /proc/PID/io; the disk figures of such processes are null. Run the agent as root or with CAP_SYS_PTRACE.");
                    }
                    None
                }
            }
        };
        // The descriptors to keep: those kept already (without `io` once it is refused), or
        // those just opened.
        let files = match (kept, stat_file) {
            (Some(mut files), _) => {
                if denied {
                    files.io = None;
                }
                Some(files)
            }
            (None, Some(stat)) => {
                let files = PidFiles { stat, io: io_file };
                self.fds.took(files.count());
                Some(files)
            }
            (None, None) => None,
        };
        let new_cmd = new_comm
            .as_deref()
            .map(|comm| resolve_cmd(pid, comm, buf, path));

        // A zombie main thread with live threads has no mm, so no RSS in its stat: ask a live
        // thread (only then; an ordinary process costs no extra read).
        let mut live_tid = known.and_then(|t| t.live_tid);
        let rss_pages = if st.rss_pages == 0 && st.state == b'Z' && st.num_threads > 1 {
            self.thread_rss(pid, &mut live_tid, buf, path).unwrap_or(0)
        } else {
            live_tid = None;
            st.rss_pages
        };

        let mem_pct = rates::pct(rss_pages.saturating_mul(ctx.page_size), ctx.mem_total_bytes);
        let counters = Counters {
            cpu_ticks: st.cpu_ticks,
            io,
        };
        let generation = self.generation;
        let record = out.len();
        let fresh = |comm: Box<[u8]>, cmd: String, files: Option<PidFiles>| Tracked {
            start_ticks,
            start_time: ctx.btime_secs + start_ticks as f64 / ctx.clk_tck as f64,
            ppid: st.ppid,
            counters,
            io_denied: denied,
            comm,
            cmd,
            seen: generation,
            fresh: false,
            delta: TickDelta::default(),
            owed: Owed::default(),
            live_tid,
            files,
        };

        let tracked = match self.entries.entry(pid) {
            MapEntry::Occupied(slot) if slot.get().start_ticks == start_ticks => {
                let t = slot.into_mut();
                let mut delta = TickDelta {
                    record,
                    over: ctx.elapsed,
                    cpu_ticks: rates::counter_delta(t.counters.cpu_ticks, counters.cpu_ticks)
                        .unwrap_or(0),
                    io: match (t.counters.io, io) {
                        (Some(p), Some(c)) => Some((
                            rates::counter_delta(p.read_bytes, c.read_bytes).unwrap_or(0),
                            rates::counter_delta(p.write_bytes, c.write_bytes).unwrap_or(0),
                        )),
                        (_, Some(_)) => Some((0, 0)),
                        _ => None,
                    },
                };
                let owed = std::mem::take(&mut t.owed);
                settle(&mut delta, owed);
                t.counters = counters;
                t.ppid = st.ppid;
                t.io_denied = denied;
                t.seen = generation;
                t.fresh = false;
                t.delta = delta;
                t.live_tid = live_tid;
                t.files = files;
                if let (Some(comm), Some(cmd)) = (new_comm, new_cmd) {
                    t.comm = comm;
                    t.cmd = cmd;
                }
                &*t
            }
            MapEntry::Occupied(mut slot) => {
                // Same pid, other start time: the old process exited and the pid was reused.
                let comm = new_comm.unwrap_or_default();
                let old = slot.insert(fresh(comm, new_cmd.unwrap_or_default(), files));
                self.reaped.push((old.ppid, Owed::of(old.counters)));
                out.push(exit_record(pid, old, ctx.now_secs));
                let t = slot.into_mut();
                t.fresh = true;
                t.delta = since_start(ctx, start_ticks, counters, record + 1);
                &*t
            }
            MapEntry::Vacant(slot) => {
                let comm = new_comm.unwrap_or_default();
                let t = slot.insert(fresh(comm, new_cmd.unwrap_or_default(), files));
                t.fresh = self.primed;
                t.delta = if self.primed {
                    since_start(ctx, start_ticks, counters, record)
                } else {
                    TickDelta {
                        record,
                        over: None,
                        cpu_ticks: 0,
                        io: io.map(|_| (0, 0)),
                    }
                };
                &*t
            }
        };
        let (cpu_pct, read_kib, write_kib) = tick_rates(&tracked.delta, ctx);
        if tracked.delta.io.is_none() {
            self.unreadable.push(out.len());
        }
        out.push(ProcessSample {
            pid,
            start_time: tracked.start_time,
            cmd: tracked.cmd.clone(),
            cpu_pct,
            mem_pct,
            disk_read_kib_per_sec: read_kib,
            disk_write_kib_per_sec: write_kib,
            // Filled in by `apply_net` once the tick's sockets are attributed.
            net_in_kib_per_sec: 0.0,
            net_out_kib_per_sec: 0.0,
            shutdown_time: None,
            unreadable: Vec::new(),
        });
        Observed::Read
    }

    /// RSS pages of a process whose main thread is a zombie, from a live thread's `statm`
    /// (threads share the `mm`, so any live one gives the process's RSS). `tid` remembers the
    /// thread between ticks; `/proc/PID/task` is listed only when it has none or it died.
    fn thread_rss(
        &mut self,
        pid: u32,
        tid: &mut Option<u32>,
        buf: &mut ReadBuf,
        path: &mut PidPath,
    ) -> Option<u64> {
        for attempt in 0..2 {
            if tid.is_none() || attempt == 1 {
                let dir = std::fs::read_dir(path.get(pid, b"task")).ok()?;
                *tid = dir
                    .filter_map(Result::ok)
                    .filter_map(|e| procfs::parse_pid(e.file_name().as_encoded_bytes()))
                    .find(|&t| t != pid);
            }
            let t = (*tid)?;
            self.task_path.clear();
            self.task_path.extend_from_slice(b"task/");
            self.task_path.extend_from_slice(t.to_string().as_bytes());
            self.task_path.extend_from_slice(b"/statm");
            if let Some(pages) = buf
                .read_single(path.get(pid, &self.task_path))
                .ok()
                .and_then(procfs::parse_statm_resident)
            {
                return Some(pages);
            }
        }
        None
    }

    /// Sets the network rates of this tick's live records from `bytes` (received, sent) per
    /// process: over the elapsed time, or over its age for a process first seen in this tick
    /// (as its other rates).
    pub fn apply_net(
        &self,
        bytes: &HashMap<ProcessKey, (u64, u64)>,
        ctx: &TickCtx,
        out: &mut [ProcessSample],
    ) {
        if bytes.is_empty() {
            return;
        }
        let Some(elapsed) = ctx.elapsed else {
            return;
        };
        for r in out.iter_mut().filter(|r| r.shutdown_time.is_none()) {
            let Some(t) = self.entries.get(&r.pid) else {
                continue;
            };
            let key = ProcessKey {
                pid: r.pid,
                start_ticks: t.start_ticks,
            };
            let Some(&(rx, tx)) = bytes.get(&key) else {
                continue;
            };
            let over = if t.fresh {
                ctx.uptime
                    .checked_sub(ctx.ticks(t.start_ticks))
                    .filter(|age| !age.is_zero())
                    .unwrap_or(elapsed)
            } else {
                elapsed
            };
            r.net_in_kib_per_sec = rates::kib_per_sec(0, rx, over);
            r.net_out_kib_per_sec = rates::kib_per_sec(0, tx, over);
        }
    }

    /// Ends a tick: every tracked process not seen in it gets its one final record and is
    /// forgotten, and what it owes is taken out of its parent's deltas (see the type's doc).
    pub fn end_tick(&mut self, ctx: &TickCtx, out: &mut Vec<ProcessSample>) {
        let generation = self.generation;
        let reaped = &mut self.reaped;
        self.entries.retain(|&pid, t| {
            if t.seen == generation {
                return true;
            }
            reaped.push((t.ppid, Owed::of(t.counters)));
            out.push(exit_record(pid, std::mem::take(t), ctx.now_secs));
            false
        });
        self.fds.recount(
            self.entries
                .values()
                .filter_map(|t| t.files.as_ref())
                .map(PidFiles::count)
                .sum(),
        );
        for &(ppid, owed) in &self.reaped {
            let Some(parent) = self.entries.get_mut(&ppid).filter(|p| p.seen == generation) else {
                continue;
            };
            let mut left = owed;
            settle_into(&mut parent.delta, &mut left);
            parent.owed.add(left);
            if let Some(r) = out.get_mut(parent.delta.record) {
                let (cpu, rd, wr) = tick_rates(&parent.delta, ctx);
                r.cpu_pct = cpu;
                r.disk_read_kib_per_sec = rd;
                r.disk_write_kib_per_sec = wr;
            }
        }
        self.primed = true;
    }
}

/// The `stat` figures a tick keeps, copied out of the read buffer, and `comm` when it is new
/// for `known` (the tracked process with the same pid and start time, if any).
fn stat_figures(
    st: &procfs::PidStat<'_>,
    known: Option<&Tracked>,
) -> (StatFigures, Option<Box<[u8]>>) {
    let new_comm = match known {
        Some(t) if *t.comm == *st.comm => None,
        _ => Some(Box::<[u8]>::from(st.comm)),
    };
    (
        StatFigures {
            state: st.state,
            ppid: st.ppid,
            cpu_ticks: st.cpu_ticks.saturating_add(st.children_cpu_ticks),
            num_threads: st.num_threads,
            start_ticks: st.start_ticks,
            rss_pages: st.rss_pages,
        },
        new_comm,
    )
}

/// The `stat` figures a tick keeps, copied out of the read buffer.
#[derive(Debug, Clone, Copy)]
struct StatFigures {
    state: u8,
    ppid: u32,
    /// Own and reaped children's.
    cpu_ticks: u64,
    num_threads: u64,
    start_ticks: u64,
    rss_pages: u64,
}

/// Takes `owed` out of `delta`, clamped at 0; what remains is forgotten.
fn settle(delta: &mut TickDelta, mut owed: Owed) {
    if !owed.is_zero() {
        settle_into(delta, &mut owed);
    }
}

/// Takes `owed` out of `delta`, clamped at 0, leaving in `owed` what did not fit.
fn settle_into(delta: &mut TickDelta, owed: &mut Owed) {
    let take = |d: &mut u64, o: &mut u64| {
        let t = (*d).min(*o);
        *d -= t;
        *o -= t;
    };
    take(&mut delta.cpu_ticks, &mut owed.cpu_ticks);
    if let Some((r, w)) = delta.io.as_mut() {
        take(r, &mut owed.read_bytes);
        take(w, &mut owed.write_bytes);
    }
}

/// The record's rates from its deltas: CPU share of the VM and disk KB/s.
fn tick_rates(d: &TickDelta, ctx: &TickCtx) -> (f64, f64, f64) {
    let Some(over) = d.over else {
        return (0.0, 0.0, 0.0);
    };
    let cpu = rates::process_cpu_pct(d.cpu_ticks, over, ctx.clk_tck, ctx.ncpu).unwrap_or(0.0);
    let (r, w) = d.io.map_or((0.0, 0.0), |(r, w)| {
        (
            rates::kib_per_sec(0, r, over),
            rates::kib_per_sec(0, w, over),
        )
    });
    (cpu, r, w)
}

impl Default for Tracked {
    fn default() -> Self {
        Self {
            start_ticks: 0,
            start_time: 0.0,
            ppid: 0,
            counters: Counters::default(),
            io_denied: false,
            comm: Box::default(),
            cmd: String::new(),
            seen: 0,
            fresh: false,
            delta: TickDelta::default(),
            owed: Owed::default(),
            live_tid: None,
            files: None,
        }
    }
}

impl LiveProcesses for ProcessTable {
    fn is_live(&self, key: ProcessKey) -> bool {
        self.entries
            .get(&key.pid)
            .is_some_and(|t| t.start_ticks == key.start_ticks && t.seen == self.generation)
    }

    fn for_each_live(&self, f: &mut dyn FnMut(ProcessKey)) {
        for (&pid, t) in &self.entries {
            if t.seen == self.generation {
                f(ProcessKey {
                    pid,
                    start_ticks: t.start_ticks,
                });
            }
        }
    }
}

/// Deltas of a process first seen this tick, over its whole life: it started after the
/// previous tick (or we would have seen it), so counters / age is exact for it.
fn since_start(ctx: &TickCtx, start_ticks: u64, c: Counters, record: usize) -> TickDelta {
    TickDelta {
        record,
        over: ctx
            .uptime
            .checked_sub(ctx.ticks(start_ticks))
            .filter(|age| !age.is_zero()),
        cpu_ticks: c.cpu_ticks,
        io: c.io.map(|io| (io.read_bytes, io.write_bytes)),
    }
}

/// The one record sent for an exited process: rates and memory 0, `shutdown_time` now.
fn exit_record(pid: u32, t: Tracked, now_secs: f64) -> ProcessSample {
    ProcessSample {
        pid,
        start_time: t.start_time,
        cmd: t.cmd,
        cpu_pct: 0.0,
        mem_pct: 0.0,
        disk_read_kib_per_sec: 0.0,
        disk_write_kib_per_sec: 0.0,
        net_in_kib_per_sec: 0.0,
        net_out_kib_per_sec: 0.0,
        shutdown_time: Some(now_secs),
        unreadable: Vec::new(),
    }
}

/// Longest `cmd` reported: any user can give a program an arbitrarily long `argv[0]`.
pub const MAX_CMD_BYTES: usize = 255;

/// Cuts `cmd` to [`MAX_CMD_BYTES`] on a character boundary.
fn cap_cmd(mut cmd: String) -> String {
    if cmd.len() > MAX_CMD_BYTES {
        let mut end = MAX_CMD_BYTES;
        while !cmd.is_char_boundary(end) {
            end -= 1;
        }
        cmd.truncate(end);
    }
    cmd
}

/// `cmd` for a process: `comm`, unless `comm` is 15 bytes long (the kernel may have cut it) and
/// the basename of `argv[0]` starts with it; then that basename. Only called when a process is
/// first seen or its `comm` changed (exec), so `cmdline` is read once per program image.
fn resolve_cmd(pid: u32, comm: &[u8], buf: &mut ReadBuf, path: &mut PidPath) -> String {
    if comm.len() == COMM_TRUNCATED_LEN {
        if let Ok(cmdline) = buf.read_all(path.get(pid, b"cmdline")) {
            if let Some(name) = procfs::name_from_cmdline(comm, cmdline) {
                return cap_cmd(String::from_utf8_lossy(name).into_owned());
            }
        }
    }
    String::from_utf8_lossy(comm).into_owned()
}

#[cfg(test)]
mod cap_tests {
    use super::*;

    #[test]
    fn long_names_are_cut_on_a_char_boundary() {
        assert_eq!(cap_cmd("sshd".into()), "sshd");
        let long = "é".repeat(200);
        let cut = cap_cmd(long);
        assert!(cut.len() <= MAX_CMD_BYTES && cut.len() >= MAX_CMD_BYTES - 1);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}
