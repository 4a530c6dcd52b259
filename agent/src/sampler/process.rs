//! Per-process figures (the agent side of `common::wire::process`): the process table and one
//! tick's pass over `/proc/PID/stat` and `/proc/PID/io`.

use std::collections::HashMap;
use std::collections::hash_map::Entry as MapEntry;
use std::time::Duration;

use vmmon_common::wire::{ProcessKey, ProcessSample};

use super::netflow::LiveProcesses;
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

/// What the table remembers of one live process between ticks.
#[derive(Debug)]
struct Tracked {
    start_ticks: u64,
    /// Computed once, so a wall-clock step cannot change a process's identity on the wire.
    start_time: f64,
    cpu_ticks: u64,
    /// `None` while `/proc/PID/io` cannot be read.
    io: Option<IoCounters>,
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
}

/// Processes seen on the previous tick, keyed by pid; the start time stored with each makes the
/// identity a [`ProcessKey`](vmmon_common::wire::ProcessKey).
#[derive(Debug, Default)]
pub struct ProcessTable {
    entries: HashMap<u32, Tracked>,
    /// False until the first tick completed: that tick has no baseline and reports 0 rates.
    primed: bool,
    generation: u64,
}

impl ProcessTable {
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

    /// Starts a tick; every live process must then be passed to [`Self::observe`].
    pub fn begin_tick(&mut self) {
        self.generation += 1;
    }

    /// Reads one pid and appends its record (and, when the pid was reused, the previous
    /// holder's final record). A pid that vanishes mid-read is skipped: if it was tracked,
    /// [`Self::end_tick`] reports its exit.
    pub fn observe(
        &mut self,
        pid: u32,
        buf: &mut ReadBuf,
        path: &mut PidPath,
        ctx: &TickCtx,
        out: &mut Vec<ProcessSample>,
    ) {
        // stat: copy out what is needed before the buffer is reused for io.
        let (cpu_ticks, start_ticks, rss_pages, new_comm) = {
            let Ok(data) = buf.read_single(path.get(pid, b"stat")) else {
                return;
            };
            let Some(st) = procfs::parse_pid_stat(data) else {
                return;
            };
            let known = self
                .entries
                .get(&pid)
                .filter(|t| t.start_ticks == st.start_ticks);
            let new_comm = match known {
                Some(t) if *t.comm == *st.comm => None,
                _ => Some(Box::<[u8]>::from(st.comm)),
            };
            (st.cpu_ticks, st.start_ticks, st.rss_pages, new_comm)
        };
        let known = self
            .entries
            .get(&pid)
            .filter(|t| t.start_ticks == start_ticks);

        let io = if known.is_some_and(|t| t.io_denied) {
            None
        } else {
            match buf.read_single(path.get(pid, b"io")) {
                Ok(data) => procfs::parse_pid_io(data),
                Err(e) if procfs::is_vanished(&e) => return,
                Err(_) => None,
            }
        };
        let new_cmd = new_comm
            .as_deref()
            .map(|comm| resolve_cmd(pid, comm, buf, path));

        let mem_pct = rates::pct(rss_pages.saturating_mul(ctx.page_size), ctx.mem_total_bytes);
        let generation = self.generation;
        let fresh = |comm: Box<[u8]>, cmd: String| Tracked {
            start_ticks,
            start_time: ctx.btime_secs + start_ticks as f64 / ctx.clk_tck as f64,
            cpu_ticks,
            io,
            io_denied: io.is_none(),
            comm,
            cmd,
            seen: generation,
            fresh: false,
        };

        let (tracked, (cpu_pct, read_kib, write_kib)) = match self.entries.entry(pid) {
            MapEntry::Occupied(slot) if slot.get().start_ticks == start_ticks => {
                let t = slot.into_mut();
                let rates = ctx.elapsed.map_or((0.0, 0.0, 0.0), |elapsed| {
                    let cpu = rates::counter_delta(t.cpu_ticks, cpu_ticks)
                        .and_then(|d| rates::process_cpu_pct(d, elapsed, ctx.clk_tck, ctx.ncpu))
                        .unwrap_or(0.0);
                    let (r, w) = match (t.io, io) {
                        (Some(p), Some(c)) => (
                            rates::kib_per_sec(p.read_bytes, c.read_bytes, elapsed),
                            rates::kib_per_sec(p.write_bytes, c.write_bytes, elapsed),
                        ),
                        _ => (0.0, 0.0),
                    };
                    (cpu, r, w)
                });
                t.cpu_ticks = cpu_ticks;
                t.io = io;
                t.io_denied = io.is_none();
                t.seen = generation;
                t.fresh = false;
                if let (Some(comm), Some(cmd)) = (new_comm, new_cmd) {
                    t.comm = comm;
                    t.cmd = cmd;
                }
                (&*t, rates)
            }
            MapEntry::Occupied(mut slot) => {
                // Same pid, other start time: the old process exited and the pid was reused.
                let comm = new_comm.unwrap_or_default();
                let old = slot.insert(fresh(comm, new_cmd.unwrap_or_default()));
                out.push(exit_record(pid, old, ctx.now_secs));
                let rates = since_start(ctx, start_ticks, cpu_ticks, io);
                let t = slot.into_mut();
                t.fresh = true;
                (&*t, rates)
            }
            MapEntry::Vacant(slot) => {
                let rates = if self.primed {
                    since_start(ctx, start_ticks, cpu_ticks, io)
                } else {
                    (0.0, 0.0, 0.0)
                };
                let comm = new_comm.unwrap_or_default();
                let t = slot.insert(fresh(comm, new_cmd.unwrap_or_default()));
                t.fresh = self.primed;
                (&*t, rates)
            }
        };
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
        });
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
    /// forgotten.
    pub fn end_tick(&mut self, ctx: &TickCtx, out: &mut Vec<ProcessSample>) {
        let generation = self.generation;
        self.entries.retain(|&pid, t| {
            if t.seen == generation {
                return true;
            }
            out.push(exit_record(pid, std::mem::take(t), ctx.now_secs));
            false
        });
        self.primed = true;
    }
}

impl Default for Tracked {
    fn default() -> Self {
        Self {
            start_ticks: 0,
            start_time: 0.0,
            cpu_ticks: 0,
            io: None,
            io_denied: false,
            comm: Box::default(),
            cmd: String::new(),
            seen: 0,
            fresh: false,
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

/// Rates of a process first seen this tick, over its whole life: it started after the
/// previous tick (or we would have seen it), so counters / age is exact for it.
fn since_start(
    ctx: &TickCtx,
    start_ticks: u64,
    cpu_ticks: u64,
    io: Option<IoCounters>,
) -> (f64, f64, f64) {
    let Some(age) = ctx.uptime.checked_sub(ctx.ticks(start_ticks)) else {
        return (0.0, 0.0, 0.0);
    };
    let cpu = rates::process_cpu_pct(cpu_ticks, age, ctx.clk_tck, ctx.ncpu).unwrap_or(0.0);
    let (r, w) = io.map_or((0.0, 0.0), |io| {
        (
            rates::kib_per_sec(0, io.read_bytes, age),
            rates::kib_per_sec(0, io.write_bytes, age),
        )
    });
    (cpu, r, w)
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
