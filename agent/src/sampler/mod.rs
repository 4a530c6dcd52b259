//! The agent's sampler: a hand-written `/proc` reader producing one [`Sample`] per tick.
//!
//! Not sysinfo: cost matters on every guest, and a tick here is close to the floor of reading
//! `/proc/PID/stat` and `/proc/PID/io` for every pid (see `vmmon-sample-bench`).
//!
//! Since issue 15 it goes below that floor: each process's `stat` and `io` stay open between
//! ticks and are re-read with `pread` at offset 0 (`pidfiles.rs`), because the floor's `open`
//! and `close` were a quarter of the running daemon's CPU (`perf`, ~1,090 processes:
//! `openat` 21 %, `close` 4 %; after: 1.2 % and 0.3 %, the `openat`s left being the host files
//! and new processes). Measured 2026-12-01 on the shared 2-vCPU machine, ~1,090 processes,
//! 1 s ticks (docs/benchmarks.md §1c, "descriptors kept open"): the daemon's whole CPU 0.75×
//! (glibc) and 0.78× (musl) the previous build's, run side by side; the sampler alone
//! (`vmmon-sample-bench --procs 1000 --pause-ms 1000`) 0.84–0.91× the paced `/proc` floor,
//! against 1.13–1.34× with every file opened and closed (`--fd-cap 0`) in the same minutes.

mod host;
pub mod ifaces;
pub mod netflow;
mod pidfiles;
mod process;
mod procfs;
pub mod rates;
pub mod sockdiag;

pub use self::pidfiles::{MAX_CACHED_FDS, raise_nofile_limit};

use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[cfg(test)]
use vmmon_common::wire::ProcessKey;
use vmmon_common::wire::ext::{self, InventoryExt, ProcessSampleExt, SampleExt, VmSampleExt};
use vmmon_common::wire::{Inventory, NetAttribution, ProcessSample, Sample, VmSample};

use self::host::{DiskFilter, HostPaths, HostReading};
use self::ifaces::{NetSelector, NetState, NetTotals, SysNet};
use self::netflow::{NetFlow, NetStats};
use self::process::{ProcessTable, TickCtx};
use self::procfs::{PidPath, ReadBuf};

/// Where procfs and sysfs are mounted: a seam so tests can point at a fake tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcRoots {
    /// procfs, normally `/proc`.
    pub proc: PathBuf,
    /// sysfs, normally `/sys`.
    pub sys: PathBuf,
}

impl Default for ProcRoots {
    fn default() -> Self {
        Self {
            proc: PathBuf::from("/proc"),
            sys: PathBuf::from("/sys"),
        }
    }
}

/// Why a sample or the sampler could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SamplerError {
    /// A file every tick needs (`/proc/stat`, `/proc/meminfo`, `/proc/uptime`, the `/proc`
    /// directory itself) could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Such a file did not hold what it should.
    #[error("cannot parse {}: {what}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was missing or malformed.
        what: &'static str,
    },
    /// `sysconf` gave no usable value.
    #[error("sysconf({name}) gave no usable value")]
    Sysconf {
        /// The `sysconf` name.
        name: &'static str,
    },
}

/// Samples the VM and, on request, every process.
///
/// Per tick it reads `/proc/{uptime,stat,meminfo,diskstats,net/dev}`, lists `/proc` (while
/// processes are requested, only when the fork counter moved since the last listing, or a
/// minute went by), and — only while processes are requested — `/proc/PID/stat` and
/// `/proc/PID/io` of every pid, plus
/// `/proc/PID/cmdline` once for a process whose `comm` may have been truncated. All reads go
/// through one reused buffer; per-process paths are built in place. A process's `stat` and `io`
/// are opened once and kept open while it lives, up to a descriptor cap (see `pidfiles.rs`);
/// beyond it they are opened, read and closed every tick, with the same figures.
///
/// Rates:
/// * Elapsed time is measured on `/proc/uptime` (CLOCK_BOOTTIME, monotonic), not on the `now`
///   passed in, so a wall-clock step cannot make a rate jump; `now` only stamps the sample.
/// * The first sample has `elapsed_ms` 0 and every rate 0 (no previous counters).
/// * A counter that goes backwards yields rate 0 for that tick and restarts its delta. Disk and
///   network rates are summed per device over devices present in both ticks, so a device that
///   resets, appears or vanishes does not disturb the others.
/// * Processes are keyed by [`ProcessKey`](vmmon_common::wire::ProcessKey) (pid, start ticks). The first tick after process
///   sampling is turned on reports every process with rates 0 (no baseline; `mem_pct` is
///   real). From then on, a process first seen in a tick started after the previous one, so
///   its rates are its counters over its age, which is exact. An exited process gets one final
///   record (`shutdown_time` = now, rates and memory 0) and is forgotten.
/// * Turning process sampling off forgets the table without exit records; turning it on starts
///   a fresh one, so nothing that exited in between is reported.
///
/// Network per process (only while processes are requested; see [`netflow`]): every TCP
/// socket's kernel byte counters from `NETLINK_SOCK_DIAG` (one walk of the socket hash, or
/// lookups of the known sockets while none was opened: [`sockdiag::SockDiag::dump`]), taken
/// right after `/proc/net/dev`; deltas per socket cookie; sockets mapped to processes through
/// `/proc/PID/fd`, read only when a socket needs an owner. Loopback traffic is left out, as in
/// the VM figures. The VM sample then says how much of its interface traffic was attributed
/// ([`NetAttribution`]); without process sampling, or without a working `sock_diag`, that is
/// `None`, and (with process sampling) every live process's network figures are null (named
/// in its `unreadable` list, see [`vmmon_common::wire::ext`]).
///
/// Older kernels (docs/compatibility.md): without `MemAvailable` (< 3.14) memory use is
/// estimated; without `/proc/PID/io` (no task I/O accounting) the disk figures are null;
/// without `tcp_info` byte counters (< 4.1) the network figures are null. Each is logged once.
#[derive(Debug)]
pub struct Sampler {
    roots: ProcRoots,
    paths: HostPaths,
    clk_tck: u64,
    page_size: u64,
    buf: ReadBuf,
    pid_path: PidPath,
    disk_filter: DiskFilter,
    /// The previous tick's VM counters; `None` before the first sample.
    prev: Option<HostReading>,
    /// The reading being filled; swapped with `prev` so device lists keep their allocations.
    scratch: HostReading,
    /// `Some` while process sampling is on.
    procs: Option<ProcessTable>,
    /// Records in the last process tick, to size the next one's vector.
    last_records: usize,
    /// Per-process network traffic.
    net: NetFlow,
    /// False: per-process network attribution is skipped (benchmarks compare).
    net_enabled: bool,
    /// Which interfaces are the VM's own.
    net_selector: NetSelector,
    sys_net: SysNet,
    /// Running byte totals over those interfaces.
    net_totals: NetTotals,
    /// The MemAvailable-estimate warning was logged.
    warned_mem_estimate: bool,
    /// Most `/proc/PID` descriptors the process table keeps open between ticks.
    fd_cap: usize,
    /// The pids of the last process tick (read, or there but unreadable), in `/proc` order:
    /// the next tick's when no process can have appeared since (see [`Self::sample_ext`]).
    listed: Vec<u32>,
    /// The fork counter (`processes` in `/proc/stat`) read before `/proc` was last listed;
    /// `None` when that listing was incomplete or the counter is unusable.
    listed_at_forks: Option<u64>,
    /// Every pid of the last listing, sorted (to check the counter against the next one), and
    /// the one before it (kept for its allocation).
    listing: Vec<u32>,
    listing_before: Vec<u32>,
    /// `/proc/uptime` at the last listing.
    listed_at_uptime: Duration,
    /// A listing found a pid the fork counter had not counted (a `/proc/stat` that does not
    /// count forks: some sandboxes' emulated kernels): every tick lists from then on.
    forks_uncounted: bool,
}

/// `/proc` is listed at least this often even when the fork counter has not moved, to check
/// that it counts: a new pid it missed turns the skipping off for good.
const LIST_EVERY: Duration = Duration::from_secs(60);

/// The fork counter, unless it reads 0 (no kernel that has run a process does: an emulated
/// `/proc/stat` that does not count).
fn usable_forks(forks_total: Option<u64>) -> Option<u64> {
    forks_total.filter(|&f| f > 0)
}

impl Sampler {
    /// A sampler over `root`; fails when `/proc/stat` cannot be read and parsed there.
    pub fn new(root: ProcRoots) -> Result<Sampler, SamplerError> {
        let clk_tck = sysconf(libc::_SC_CLK_TCK).ok_or(SamplerError::Sysconf {
            name: "_SC_CLK_TCK",
        })?;
        let page_size = sysconf(libc::_SC_PAGESIZE).ok_or(SamplerError::Sysconf {
            name: "_SC_PAGESIZE",
        })?;
        let paths = HostPaths::new(&root.proc);
        let mut buf = ReadBuf::default();
        read_required(
            &mut buf,
            &paths.stat,
            procfs::parse_stat,
            "no aggregate cpu line",
        )?;
        let sys_net = SysNet::new(&root.sys);
        let net_totals = NetTotals::restore(None, &boot_id(&root));
        Ok(Sampler {
            pid_path: PidPath::new(&root.proc),
            disk_filter: DiskFilter::new(&root.sys),
            roots: root,
            paths,
            clk_tck,
            page_size,
            buf,
            prev: None,
            scratch: HostReading::default(),
            procs: None,
            last_records: 0,
            net: NetFlow::default(),
            net_enabled: true,
            net_selector: NetSelector::default(),
            sys_net,
            net_totals,
            warned_mem_estimate: false,
            fd_cap: pidfiles::default_cap(),
            listed: Vec::new(),
            listed_at_forks: None,
            listing: Vec::new(),
            listing_before: Vec::new(),
            listed_at_uptime: Duration::ZERO,
            forks_uncounted: false,
        })
    }

    /// Keeps at most `cap` `/proc/PID` descriptors open between ticks (default: the soft
    /// `RLIMIT_NOFILE` at creation minus a headroom, at most [`MAX_CACHED_FDS`]); 0 opens,
    /// reads and closes every file every tick. Applies from the next time process sampling is
    /// turned on (benchmarks and tests compare).
    #[doc(hidden)]
    pub fn set_fd_cap(&mut self, cap: usize) {
        self.fd_cap = cap;
    }

    /// `/proc/PID` descriptors kept open now.
    pub fn fds_kept_open(&self) -> usize {
        self.procs.as_ref().map_or(0, ProcessTable::fds_held)
    }

    /// Turns per-process network attribution on (the default) or off.
    pub fn set_net_attribution(&mut self, on: bool) {
        self.net_enabled = on;
        if !on {
            self.net.reset();
        }
    }

    /// Also attributes loopback traffic. Only for benchmarks that can open sockets over
    /// loopback alone; the agent never sets it.
    #[doc(hidden)]
    pub fn set_net_count_loopback(&mut self, on: bool) {
        self.net.set_count_loopback(on);
    }

    /// Which interfaces the VM's network figures count (default: those backed by a device).
    pub fn set_net_selector(&mut self, selector: NetSelector) {
        self.net_selector = selector;
    }

    /// Continues the running `rx_bytes`/`tx_bytes` totals from a state an earlier run
    /// persisted ([`Self::net_state`]); see [`ifaces`].
    pub fn restore_net_state(&mut self, saved: Option<NetState>) {
        self.net_totals = NetTotals::restore(saved, &boot_id(&self.roots));
    }

    /// The running network totals and their baselines, to persist after each tick.
    pub fn net_state(&self) -> &NetState {
        self.net_totals.state()
    }

    /// Work counters of the network attribution.
    pub fn net_stats(&self) -> NetStats {
        self.net.stats()
    }

    /// One tick: VM figures always, process records only when `with_processes`.
    pub fn sample(
        &mut self,
        now: SystemTime,
        with_processes: bool,
    ) -> Result<Sample, SamplerError> {
        self.sample_ext(now, with_processes).map(|(s, _)| s)
    }

    /// [`Self::sample`] with the figures that travel as wire extensions
    /// ([`vmmon_common::wire::ext`]): steal, and which figures could not be read.
    pub fn sample_ext(
        &mut self,
        now: SystemTime,
        with_processes: bool,
    ) -> Result<(Sample, SampleExt), SamplerError> {
        // Everything that can fail comes first, so a failed tick changes no state.
        let mut cur = std::mem::take(&mut self.scratch);
        let read = self.read_host(&mut cur).and_then(|()| {
            // No fork since the last process tick listed /proc (the counter was read before
            // that listing): no pid can have appeared, so that tick's pids less those found
            // gone are this tick's, and the directory walk (~11 % of the daemon's CPU with
            // 1,000 processes, nearly all kernel: docs/benchmarks.md §1c) is not repeated.
            let unchanged = with_processes
                && self.procs.is_some()
                && !self.forks_uncounted
                && cur.uptime.saturating_sub(self.listed_at_uptime) < LIST_EVERY
                && usable_forks(cur.stat.forks_total).is_some()
                && usable_forks(cur.stat.forks_total) == self.listed_at_forks;
            if unchanged {
                return Ok(None);
            }
            fs::read_dir(&self.roots.proc)
                .map(Some)
                .map_err(|source| SamplerError::Read {
                    path: self.roots.proc.clone(),
                    source,
                })
        });
        let dir = match read {
            Ok(dir) => dir,
            Err(e) => {
                self.scratch = cur;
                return Err(e);
            }
        };

        if !with_processes {
            self.procs = None;
        } else if self.procs.is_none() {
            self.procs = Some(ProcessTable::new(self.fd_cap));
        }
        let with_net = with_processes && self.net_enabled;
        if with_net {
            // Now, so the socket counters cover the same interval as /proc/net/dev.
            self.net.dump();
        } else {
            self.net.reset();
        }

        let elapsed = self
            .prev
            .as_ref()
            .and_then(|p| cur.uptime.checked_sub(p.uptime))
            .filter(|d| !d.is_zero());
        let now_secs = epoch_secs(now);
        let ctx = TickCtx {
            uptime: cur.uptime,
            elapsed,
            now_secs,
            btime_secs: cur
                .stat
                .btime
                .map_or_else(|| now_secs - cur.uptime.as_secs_f64(), |b| b as f64),
            clk_tck: self.clk_tck,
            page_size: self.page_size,
            ncpu: cur.stat.online_cpus.max(1),
            mem_total_bytes: cur.mem.total_bytes,
        };

        let mut records: Option<Vec<ProcessSample>> = with_processes
            .then(|| Vec::with_capacity(self.last_records + self.last_records / 8 + 16));
        if let Some(table) = self.procs.as_mut() {
            table.begin_tick();
        }
        let mut proc_count: u32 = 0;
        let mut listed = std::mem::take(&mut self.listed);
        let forks = usable_forks(cur.stat.forks_total).filter(|_| with_processes);
        if let Some(dir) = dir {
            // A listing while the counter stands still (the periodic check) must find no pid
            // the last complete listing did not have.
            let check = !self.forks_uncounted && forks.is_some() && forks == self.listed_at_forks;
            std::mem::swap(&mut self.listing, &mut self.listing_before);
            self.listing.clear();
            let mut complete = true;
            listed.clear();
            for entry in dir {
                let Ok(entry) = entry else {
                    complete = false; // the rest of the directory is not listed
                    continue;
                };
                let Some(pid) = procfs::parse_pid(entry.file_name().as_bytes()) else {
                    continue;
                };
                proc_count = proc_count.saturating_add(1);
                self.listing.push(pid);
                if let (Some(table), Some(out)) = (self.procs.as_mut(), records.as_mut()) {
                    if table.observe(pid, &mut self.buf, &mut self.pid_path, &ctx, out)
                        != process::Observed::Gone
                    {
                        listed.push(pid);
                    }
                }
            }
            self.listing.sort_unstable();
            self.listed_at_uptime = cur.uptime;
            self.listed_at_forks = forks.filter(|_| complete);
            let before = &self.listing_before;
            let missed = || {
                self.listing
                    .iter()
                    .find(|p| before.binary_search(p).is_err())
            };
            if let Some(&pid) = (check && complete).then(missed).flatten() {
                self.forks_uncounted = true;
                self.listed_at_forks = None;
                tracing::warn!(
                    pid,
                    "/proc/stat's fork counter did not count a new process; listing /proc every tick."
                );
            }
        } else if let (Some(table), Some(out)) = (self.procs.as_mut(), records.as_mut()) {
            listed.retain(|&pid| {
                table.observe(pid, &mut self.buf, &mut self.pid_path, &ctx, out)
                    != process::Observed::Gone
            });
            proc_count = u32::try_from(listed.len()).unwrap_or(u32::MAX);
        }
        self.listed = listed;
        let mut attributed = None;
        if let (Some(table), Some(out)) = (self.procs.as_mut(), records.as_mut()) {
            table.end_tick(&ctx, out);
            self.last_records = out.len();
            if with_net {
                attributed = self.net.attribute(&self.roots.proc, &*table, cur.uptime);
                if attributed.is_some() {
                    table.apply_net(self.net.per_process(), &ctx, out);
                }
            }
        }

        let (mut vm, vm_ext) = self.vm_figures(&cur, elapsed, now, proc_count);
        vm.net_attribution = attributed.map(|(rx, tx)| net_attribution(&vm, rx, tx, elapsed));
        let mut ext = SampleExt {
            vm: vm_ext,
            processes: Vec::new(),
        };
        if let (Some(table), Some(out)) = (self.procs.as_ref(), records.as_ref()) {
            // Null figures: disk where /proc/PID/io is unreadable or absent; network for every
            // live process while the tick's sockets could not be measured.
            let net_null = attributed.is_none();
            let mut disk = table.unreadable().iter().copied().peekable();
            for (i, r) in out.iter().enumerate() {
                let mut unreadable = Vec::new();
                if disk.next_if_eq(&i).is_some() {
                    unreadable.extend(ext::DISK_FIELDS.map(str::to_owned));
                }
                if net_null && r.shutdown_time.is_none() {
                    unreadable.extend(ext::NET_FIELDS.map(str::to_owned));
                }
                if !unreadable.is_empty() {
                    ext.processes.push((i, ProcessSampleExt { unreadable }));
                }
            }
            ext.vm.unreadable_procs = Some(u32::try_from(ext.processes.len()).unwrap_or(u32::MAX));
        }
        self.scratch = self.prev.replace(cur).unwrap_or_default();
        Ok((
            Sample {
                vm,
                processes: records,
            },
            ext,
        ))
    }

    /// What the collector's inventory shows for this VM. `wan_ips_override`, when not empty,
    /// replaces the public addresses found on the interfaces (for VMs behind 1:1 NAT).
    pub fn inventory(&self, wan_ips_override: &[String]) -> (Inventory, InventoryExt) {
        inventory(&self.roots, wan_ips_override, &self.net_selector)
    }

    /// Processes in the table now (0 while process sampling is off).
    pub fn process_count_tracked(&self) -> usize {
        self.procs.as_ref().map_or(0, ProcessTable::len)
    }

    /// Pid → inode of the `stat` file kept open for it, sorted.
    #[cfg(test)]
    fn kept_open(&self) -> Vec<(u32, u64)> {
        self.procs
            .as_ref()
            .map_or_else(Vec::new, ProcessTable::kept_open)
    }

    /// Identities in the table now, sorted.
    #[cfg(test)]
    fn tracked_processes(&self) -> Vec<ProcessKey> {
        let mut keys: Vec<ProcessKey> = self.procs.iter().flat_map(ProcessTable::keys).collect();
        keys.sort_unstable();
        keys
    }

    fn read_host(&mut self, cur: &mut HostReading) -> Result<(), SamplerError> {
        cur.uptime = read_required(
            &mut self.buf,
            &self.paths.uptime,
            procfs::parse_uptime,
            "no uptime",
        )?;
        cur.stat = read_required(
            &mut self.buf,
            &self.paths.stat,
            procfs::parse_stat,
            "no aggregate cpu line",
        )?;
        cur.mem = read_required(
            &mut self.buf,
            &self.paths.meminfo,
            procfs::parse_meminfo,
            "no MemTotal",
        )?;
        if !cur.mem.available_reported && !self.warned_mem_estimate {
            self.warned_mem_estimate = true;
            tracing::warn!(
                "/proc/meminfo has no MemAvailable (Linux < 3.14): memory use is estimated from \
                 MemFree + Buffers + Cached + SReclaimable."
            );
        }
        host::read_disks(
            &mut self.buf,
            &self.paths.diskstats,
            &mut self.disk_filter,
            &mut cur.disks,
        );
        host::read_nets(&mut self.buf, &self.paths.net_dev, &mut cur.nets);
        Ok(())
    }

    fn vm_figures(
        &mut self,
        cur: &HostReading,
        elapsed: Option<Duration>,
        now: SystemTime,
        proc_count: u32,
    ) -> (VmSample, VmSampleExt) {
        let (mut cpu_pct, mut disk, mut net) = (0.0, (0.0, 0.0), (0.0, 0.0));
        let mut cpu_steal_pct = None;
        // The counted interfaces' deltas: the running totals' increment and the VM's rates.
        let (selector, sys_net, buf) = (&self.net_selector, &self.sys_net, &mut self.buf);
        let (rx, tx) = self.net_totals.update(
            &cur.nets,
            |name| selector.counts(name, || sys_net.backed_by_device(name)),
            |name| sys_net.ifindex(buf, name),
        );
        if let Some(prev) = &self.prev {
            cpu_pct = rates::vm_cpu_pct(prev.stat.cpu, cur.stat.cpu).unwrap_or(0.0);
            cpu_steal_pct = rates::vm_steal_pct(prev.stat.cpu, cur.stat.cpu);
            disk = host::device_kib_per_sec(&prev.disks, &cur.disks, host::SECTOR_BYTES, elapsed);
            if let Some(elapsed) = elapsed {
                net = (
                    rates::kib_per_sec(0, rx, elapsed),
                    rates::kib_per_sec(0, tx, elapsed),
                );
            }
        }
        let (rx_bytes_total, tx_bytes_total) = self.net_totals.totals();
        let used = cur.mem.total_bytes.saturating_sub(cur.mem.available_bytes);
        let vm = VmSample {
            sampled_at_ms: epoch_millis(now),
            elapsed_ms: elapsed.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            uptime_ms: Some(u64::try_from(cur.uptime.as_millis()).unwrap_or(u64::MAX)),
            cpu_pct,
            mem_pct: rates::pct(used, cur.mem.total_bytes),
            disk_read_kib_per_sec: disk.0,
            disk_write_kib_per_sec: disk.1,
            net_in_kib_per_sec: net.0,
            net_out_kib_per_sec: net.1,
            rx_bytes_total,
            tx_bytes_total,
            proc_count,
            net_attribution: None,
            cpu_steal_pct: None,
            unreadable_procs: None,
        };
        let ext = VmSampleExt {
            cpu_steal_pct,
            unreadable_procs: None,
        };
        (vm, ext)
    }
}

/// The VM's attributed and unattributed traffic, from the bytes attributed over `elapsed`.
fn net_attribution(
    vm: &VmSample,
    rx_bytes: u64,
    tx_bytes: u64,
    elapsed: Option<Duration>,
) -> NetAttribution {
    let Some(elapsed) = elapsed else {
        return NetAttribution::default();
    };
    let attributed_in = rates::kib_per_sec(0, rx_bytes, elapsed);
    let attributed_out = rates::kib_per_sec(0, tx_bytes, elapsed);
    NetAttribution {
        attributed_in_kib_per_sec: attributed_in,
        attributed_out_kib_per_sec: attributed_out,
        unattributed_in_kib_per_sec: (vm.net_in_kib_per_sec - attributed_in).max(0.0),
        unattributed_out_kib_per_sec: (vm.net_out_kib_per_sec - attributed_out).max(0.0),
    }
}

/// Reads and parses a file a tick cannot do without.
fn read_required<T>(
    buf: &mut ReadBuf,
    path: &Path,
    parse: impl FnOnce(&[u8]) -> Option<T>,
    what: &'static str,
) -> Result<T, SamplerError> {
    let data = buf.read_all(path).map_err(|source| SamplerError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(data).ok_or_else(|| SamplerError::Parse {
        path: path.to_path_buf(),
        what,
    })
}

fn epoch_secs(t: SystemTime) -> f64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

fn epoch_millis(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

/// A positive `sysconf` value.
#[allow(unsafe_code)]
fn sysconf(name: libc::c_int) -> Option<u64> {
    // SAFETY: sysconf reads a configuration value; it takes no pointers and has no
    // preconditions, and an unknown name only yields -1.
    let v = unsafe { libc::sysconf(name) };
    u64::try_from(v).ok().filter(|&v| v > 0)
}

#[cfg(test)]
mod tests;

/// `/proc/sys/kernel/random/boot_id`, empty when unreadable.
pub fn boot_id(roots: &ProcRoots) -> String {
    fs::read_to_string(roots.proc.join("sys/kernel/random/boot_id"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The interfaces `selector` counts among those of `/proc/net/dev` now, sorted.
pub fn counted_interfaces(roots: &ProcRoots, selector: &NetSelector) -> Vec<String> {
    let mut buf = ReadBuf::default();
    let mut nets = Vec::new();
    host::read_nets(&mut buf, &HostPaths::new(&roots.proc).net_dev, &mut nets);
    let sys = SysNet::new(&roots.sys);
    let mut names: Vec<String> = nets
        .into_iter()
        .map(|d| d.name)
        .filter(|n| selector.counts(n, || sys.backed_by_device(n)))
        .collect();
    names.sort();
    names
}

/// What the collector's inventory shows for this VM, read fresh (no sampler state needed),
/// with the interfaces the network figures count.
pub fn inventory(
    roots: &ProcRoots,
    wan_ips_override: &[String],
    selector: &NetSelector,
) -> (Inventory, InventoryExt) {
    let paths = HostPaths::new(&roots.proc);
    let mut buf = ReadBuf::default();
    let hostname = fs::read_to_string(roots.proc.join("sys/kernel/hostname"))
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let stat = buf.read_all(&paths.stat).ok().and_then(procfs::parse_stat);
    let cpu_count = buf
        .read_all(&roots.sys.join("devices/system/cpu/online"))
        .ok()
        .and_then(procfs::parse_cpu_list)
        .or_else(|| stat.map(|s| s.online_cpus).filter(|&n| n > 0))
        .unwrap_or(1);
    let mem_total_bytes = buf
        .read_all(&paths.meminfo)
        .ok()
        .and_then(procfs::parse_meminfo)
        .map_or(0, |m| m.total_bytes);
    let disk_total_bytes = host::disk_total_bytes(&mut buf, &roots.sys);
    let addrs = host::interface_addresses();
    let (lan_ips, wan_ips) =
        host::classify_addresses(addrs.iter().map(|(n, lo, ip)| (n.as_str(), *lo, *ip)));
    let ext = InventoryExt {
        net_interfaces_counted: counted_interfaces(roots, selector),
    };
    let inv = Inventory {
        hostname,
        cpu_count,
        mem_total_bytes,
        disk_total_bytes,
        lan_ips,
        wan_ips: if wan_ips_override.is_empty() {
            wan_ips
        } else {
            wan_ips_override.to_vec()
        },
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        os: host::os_name(),
        net_interfaces_counted: Vec::new(),
    };
    (inv, ext)
}
