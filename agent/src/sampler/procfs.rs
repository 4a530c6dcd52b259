//! Raw `/proc` and `/sys` readers: one reusable buffer and byte-level parsers, so a tick costs
//! the `open` + `read` system calls and nothing per file on the heap.
//!
//! Why not `std::fs::read`: it `statx`es every file to size its buffer (and `read_to_end` on a
//! `File` does the same plus an `lseek`); on procfs the size is always 0, so that call is pure
//! overhead, paid twice per process per tick.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use super::rates::CpuTimes;

/// Longest name the kernel keeps in `comm` (TASK_COMM_LEN − 1); a name this long may be cut.
pub const COMM_TRUNCATED_LEN: usize = 15;

/// A buffer reused for every file a tick reads.
#[derive(Debug)]
pub struct ReadBuf {
    buf: Vec<u8>,
}

impl Default for ReadBuf {
    fn default() -> Self {
        Self { buf: vec![0; 4096] }
    }
}

impl ReadBuf {
    /// Reads the whole file, looping until `read` returns 0. Needed for multi-record files
    /// (`/proc/stat`, `/proc/net/dev`, `cmdline`…), which the kernel may hand out a page at a time.
    pub fn read_all(&mut self, path: &Path) -> io::Result<&[u8]> {
        self.read(path, false)
    }

    /// Reads a single-record `/proc/PID` file (`stat`, `io`). The kernel renders these whole
    /// (`seq_file` `single_open`) before copying out, so a read shorter than the space offered is
    /// the end of the file: this saves the second `read` that would only return 0.
    pub fn read_single(&mut self, path: &Path) -> io::Result<&[u8]> {
        self.read(path, true)
    }

    /// [`Self::read_single`] that leaves the file open, for [`Self::reread_single`] on later
    /// ticks (see `pidfiles`).
    pub fn open_single(&mut self, path: &Path) -> io::Result<(File, &[u8])> {
        let mut file = File::open(path)?;
        let filled = self.fill(|b, _| file.read(b), true)?;
        Ok((file, &self.buf[..filled]))
    }

    /// Reads a single-record file kept open from offset 0 (`pread`): the kernel renders it
    /// anew (`seq_read_iter` restarts at position 0), so this gives what a fresh `open` + `read`
    /// would, without the path walk, the `struct file` setup and the `close`. A `/proc/PID`
    /// file of a process that has been reaped fails with `ESRCH`.
    pub fn reread_single(&mut self, file: &File) -> io::Result<&[u8]> {
        let filled = self.fill(|b, offset| file.read_at(b, offset), true)?;
        Ok(&self.buf[..filled])
    }

    fn read(&mut self, path: &Path, short_read_is_eof: bool) -> io::Result<&[u8]> {
        let mut file = File::open(path)?;
        let filled = self.fill(|b, _| file.read(b), short_read_is_eof)?;
        Ok(&self.buf[..filled])
    }

    /// Fills the buffer from `read(space, offset)` (growing it as needed) until end of file;
    /// returns the length read.
    fn fill(
        &mut self,
        mut read: impl FnMut(&mut [u8], u64) -> io::Result<usize>,
        short_read_is_eof: bool,
    ) -> io::Result<usize> {
        let mut filled = 0;
        loop {
            if filled == self.buf.len() {
                let grown = (self.buf.len() * 2).max(4096);
                self.buf.resize(grown, 0);
            }
            let space = self.buf.len() - filled;
            let n = match read(&mut self.buf[filled..], filled as u64) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            filled += n;
            if n == 0 || (short_read_is_eof && n < space) {
                break;
            }
        }
        Ok(filled)
    }
}

/// `ROOT/PID/FILE` built in place, so per-process paths cost no allocation.
#[derive(Debug)]
pub struct PidPath {
    bytes: Vec<u8>,
    root_len: usize,
}

impl PidPath {
    /// Paths under `proc_root`.
    pub fn new(proc_root: &Path) -> Self {
        let mut bytes = proc_root.as_os_str().as_bytes().to_vec();
        if bytes.last() != Some(&b'/') {
            bytes.push(b'/');
        }
        let root_len = bytes.len();
        bytes.reserve(32);
        Self { bytes, root_len }
    }

    /// `ROOT/PID/FILE`.
    pub fn get(&mut self, pid: u32, file: &[u8]) -> &Path {
        self.bytes.truncate(self.root_len);
        push_decimal(&mut self.bytes, u64::from(pid));
        self.bytes.push(b'/');
        self.bytes.extend_from_slice(file);
        Path::new(OsStr::from_bytes(&self.bytes))
    }
}

fn push_decimal(out: &mut Vec<u8>, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// True for errors meaning the process is gone (`ENOENT` on open, `ESRCH` on read).
pub fn is_vanished(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::NotFound || err.raw_os_error() == Some(libc::ESRCH)
}

/// A decimal `u64`; `None` on anything else (empty, sign, overflow).
#[must_use]
pub fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    Some(v)
}

/// A `/proc` directory entry name that is a pid.
#[must_use]
pub fn parse_pid(name: &[u8]) -> Option<u32> {
    parse_u64(name).and_then(|v| u32::try_from(v).ok())
}

fn fields(s: &[u8]) -> impl Iterator<Item = &[u8]> {
    s.split(u8::is_ascii_whitespace).filter(|f| !f.is_empty())
}

fn lines(s: &[u8]) -> impl Iterator<Item = &[u8]> {
    s.split(|&b| b == b'\n')
}

/// What a tick needs from `/proc/PID/stat` (kernel `fs/proc/array.c` `do_task_stat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PidStat<'a> {
    /// Between the first `(` and the last `)`: may hold spaces and parentheses.
    pub comm: &'a [u8],
    /// Field 3, e.g. `b'R'`, `b'S'`, `b'Z'` (zombie).
    pub state: u8,
    /// Field 4, the parent's pid.
    pub ppid: u32,
    /// Field 14 + field 15 (utime + stime of every thread, dead ones included), clock ticks.
    pub cpu_ticks: u64,
    /// Field 16 + field 17 (cutime + cstime): CPU of the children this process has reaped
    /// (`kernel/exit.c` `wait_task_zombie` folds them in), clock ticks.
    pub children_cpu_ticks: u64,
    /// Field 20, threads alive.
    pub num_threads: u64,
    /// Field 22, clock ticks since boot.
    pub start_ticks: u64,
    /// Field 24, pages. 0 once the main thread has exited (no `mm` on a zombie leader).
    pub rss_pages: u64,
}

/// Parses `/proc/PID/stat`. `comm` is found between the first `(` and the **last** `)`, since a
/// process may name itself `a) (b`; fields are then counted from after that `)`.
#[must_use]
pub fn parse_pid_stat(data: &[u8]) -> Option<PidStat<'_>> {
    let open = data.iter().position(|&b| b == b'(')?;
    let close = data.iter().rposition(|&b| b == b')')?;
    if close < open {
        return None;
    }
    let comm = &data[open + 1..close];
    // Field 3 (state) is index 0 here; field N is index N − 3. Signed fields are never
    // negative in practice; a negative one reads as 0 rather than failing the process.
    let signed = |f: &[u8]| {
        if f.first() == Some(&b'-') {
            Some(0)
        } else {
            parse_u64(f)
        }
    };
    let mut v: [Option<u64>; 22] = [None; 22];
    let mut state = None;
    for (i, f) in fields(&data[close + 1..]).enumerate() {
        match i {
            0 => state = f.first().copied(),
            1 | 11 | 12 | 19 => v[i] = parse_u64(f),
            13 | 14 | 17 | 21 => v[i] = signed(f),
            _ => {}
        }
        if i == 21 {
            break;
        }
    }
    Some(PidStat {
        comm,
        state: state?,
        ppid: u32::try_from(v[1]?).ok()?,
        cpu_ticks: v[11]?.saturating_add(v[12]?),
        children_cpu_ticks: v[13]?.saturating_add(v[14]?),
        num_threads: v[17]?,
        start_ticks: v[19]?,
        rss_pages: v[21]?,
    })
}

/// Resident pages (second field) of `/proc/PID/task/TID/statm` (`fs/proc/array.c`
/// `proc_pid_statm`).
#[must_use]
pub fn parse_statm_resident(data: &[u8]) -> Option<u64> {
    fields(data).nth(1).and_then(parse_u64)
}

/// Storage I/O counters of `/proc/PID/io`, bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IoCounters {
    /// `read_bytes`: bytes fetched from storage.
    pub read_bytes: u64,
    /// `write_bytes`: bytes sent to storage.
    pub write_bytes: u64,
}

/// Parses `/proc/PID/io`; `None` unless both `read_bytes` and `write_bytes` are there.
#[must_use]
pub fn parse_pid_io(data: &[u8]) -> Option<IoCounters> {
    let mut read_bytes = None;
    let mut write_bytes = None;
    for line in lines(data) {
        if let Some(v) = line.strip_prefix(b"read_bytes:") {
            read_bytes = parse_u64(v.trim_ascii());
        } else if let Some(v) = line.strip_prefix(b"write_bytes:") {
            write_bytes = parse_u64(v.trim_ascii());
        }
    }
    Some(IoCounters {
        read_bytes: read_bytes?,
        write_bytes: write_bytes?,
    })
}

/// The untruncated program name from `cmdline` for a `comm` the kernel may have cut (it keeps
/// 15 bytes of the executable's basename: `fs/exec.c` `begin_new_exec` → `__set_task_comm`).
///
/// The rule: the name is the first place in `argv[0]` that starts with `comm` at the start of
/// `argv[0]` or right after a `/`, extended to the end of `argv[0]` — or, when `cmdline` holds
/// nothing after `argv[0]` (a `setproctitle`-style title written as one string, e.g.
/// `chromium-browser --type=renderer`), only up to the first space after `comm`. So
/// `/usr/lib/chromium/chromium-browser` and `chromium-browser --type=renderer --path=/a/b` both
/// give `chromium-browser`, and `/opt/My App/bin/my-long-program-name` keeps its spaces.
/// `None` for an empty `cmdline` (kernel threads, zombies) or an `argv[0]` where `comm` does
/// not start a path component (a title that does not name the program).
#[must_use]
pub fn name_from_cmdline<'a>(comm: &[u8], cmdline: &'a [u8]) -> Option<&'a [u8]> {
    if comm.is_empty() {
        return None;
    }
    let mut args = cmdline.split(|&b| b == 0);
    let argv0 = args.next()?;
    let title = args.all(<[u8]>::is_empty);
    (0..argv0.len())
        .filter(|&i| (i == 0 || argv0[i - 1] == b'/') && argv0[i..].starts_with(comm))
        .map(|i| {
            let rest = &argv0[i..];
            let end = if title {
                rest[comm.len()..]
                    .iter()
                    .position(|&b| b == b' ')
                    .map_or(rest.len(), |p| comm.len() + p)
            } else {
                rest.len()
            };
            &rest[..end]
        })
        // A `/` after comm means comm named a directory, not the program.
        .find(|name| !name.contains(&b'/'))
}

/// What a tick needs from `/proc/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatSummary {
    /// The aggregate `cpu ` line.
    pub cpu: CpuTimes,
    /// Number of `cpuN` lines: the kernel lists online CPUs only.
    pub online_cpus: u32,
    /// Boot time, Unix epoch seconds.
    pub btime: Option<u64>,
    /// The `processes` line: forks (and clones, threads included) since boot, system-wide
    /// (kernel `copy_process` counts `total_forks` under the lock that makes the new pid
    /// visible in `/proc`). Unchanged between two reads: no pid appeared in between.
    pub forks_total: Option<u64>,
}

/// Parses `/proc/stat`; `None` without a well-formed aggregate `cpu ` line.
#[must_use]
pub fn parse_stat(data: &[u8]) -> Option<StatSummary> {
    let mut cpu = None;
    let mut online_cpus = 0u32;
    let mut btime = None;
    let mut forks_total = None;
    for line in lines(data) {
        if let Some(rest) = line.strip_prefix(b"cpu") {
            if rest.first() == Some(&b' ') {
                cpu = parse_cpu_line(rest);
            } else if rest.first().is_some_and(u8::is_ascii_digit) {
                online_cpus += 1;
            }
        } else if let Some(rest) = line.strip_prefix(b"btime ") {
            btime = parse_u64(rest.trim_ascii());
        } else if let Some(rest) = line.strip_prefix(b"processes ") {
            forks_total = parse_u64(rest.trim_ascii());
        }
    }
    Some(StatSummary {
        cpu: cpu?,
        online_cpus,
        btime,
        forks_total,
    })
}

fn parse_cpu_line(rest: &[u8]) -> Option<CpuTimes> {
    // user nice system idle iowait irq softirq steal guest guest_nice (kernel `fs/proc/stat.c`
    // `show_stat`); older kernels print fewer. guest and guest_nice are already inside user and
    // nice (`kernel/sched/cputime.c` `account_guest_time`), so they are not added.
    let mut v = [0u64; 8];
    let mut n = 0;
    for (slot, f) in v.iter_mut().zip(fields(rest)) {
        *slot = parse_u64(f)?;
        n += 1;
    }
    if n < 4 {
        return None;
    }
    let [user, nice, system, idle, iowait, irq, softirq, steal] = v;
    let total = [user, nice, system, idle, iowait, irq, softirq, steal]
        .iter()
        .fold(0u64, |a, &b| a.saturating_add(b));
    Some(CpuTimes {
        total,
        idle: idle.saturating_add(iowait),
        steal: (n >= 8).then_some(steal),
    })
}

/// What a tick needs from `/proc/meminfo`, bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemInfo {
    /// `MemTotal`.
    pub total_bytes: u64,
    /// `MemAvailable`, or on kernels before 3.14 (which lack it) `MemFree + Buffers + Cached +
    /// SReclaimable` (the page cache and the reclaimable slab the kernel's own estimate starts
    /// from; `SReclaimable` appeared in 2.6.19), capped at `MemTotal`.
    pub available_bytes: u64,
    /// `false` when `available_bytes` was estimated (no `MemAvailable` line).
    pub available_reported: bool,
}

/// Parses `/proc/meminfo`; `None` without `MemTotal`.
#[must_use]
pub fn parse_meminfo(data: &[u8]) -> Option<MemInfo> {
    let (mut total, mut available) = (None, None);
    let (mut free, mut buffers, mut cached, mut reclaimable) = (0u64, 0u64, 0u64, 0u64);
    for line in lines(data) {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (key, rest) = (&line[..colon], &line[colon + 1..]);
        let kib = || fields(rest).next().and_then(parse_u64);
        match key {
            b"MemTotal" => total = kib(),
            b"MemAvailable" => available = kib(),
            b"MemFree" => free = kib().unwrap_or(0),
            b"Buffers" => buffers = kib().unwrap_or(0),
            b"Cached" => cached = kib().unwrap_or(0),
            b"SReclaimable" => reclaimable = kib().unwrap_or(0),
            _ => {}
        }
    }
    let total = total?;
    let available_reported = available.is_some();
    let available = available
        .unwrap_or_else(|| {
            free.saturating_add(buffers)
                .saturating_add(cached)
                .saturating_add(reclaimable)
        })
        .min(total);
    Some(MemInfo {
        total_bytes: total.saturating_mul(1024),
        available_bytes: available.saturating_mul(1024),
        available_reported,
    })
}

/// Parses `/proc/uptime` (first field, seconds with a fraction) as time since boot.
#[must_use]
pub fn parse_uptime(data: &[u8]) -> Option<Duration> {
    let first = fields(data).next()?;
    let (secs, frac) = match first.iter().position(|&b| b == b'.') {
        Some(dot) => (&first[..dot], &first[dot + 1..]),
        None => (first, &b""[..]),
    };
    let secs = parse_u64(secs)?;
    let mut nanos: u32 = 0;
    let mut scale: u32 = 100_000_000;
    for &c in frac.iter().take(9) {
        if !c.is_ascii_digit() {
            return None;
        }
        nanos += u32::from(c - b'0') * scale;
        scale /= 10;
    }
    Some(Duration::new(secs, nanos))
}

/// `(name, sectors_read, sectors_written)` of each `/proc/diskstats` line. Sectors are always
/// 512 bytes here, whatever the device's own sector size.
pub fn diskstats(data: &[u8]) -> impl Iterator<Item = (&[u8], u64, u64)> {
    lines(data).filter_map(|line| {
        let mut f = fields(line);
        let name = f.nth(2)?;
        let sectors_read = parse_u64(f.nth(2)?)?;
        let sectors_written = parse_u64(f.nth(3)?)?;
        Some((name, sectors_read, sectors_written))
    })
}

/// `(interface, rx_bytes, tx_bytes)` of each `/proc/net/dev` line.
pub fn net_dev(data: &[u8]) -> impl Iterator<Item = (&[u8], u64, u64)> {
    lines(data).filter_map(|line| {
        // Interface names cannot hold ':'; old kernels print no space after it.
        let colon = line.iter().position(|&b| b == b':')?;
        let name = line[..colon].trim_ascii();
        let mut f = fields(&line[colon + 1..]);
        let rx = parse_u64(f.next()?)?;
        let tx = parse_u64(f.nth(7)?)?;
        Some((name, rx, tx))
    })
}

/// Online CPUs from a `/sys/devices/system/cpu/online` list such as `0-3,5,7-8`.
#[must_use]
pub fn parse_cpu_list(data: &[u8]) -> Option<u32> {
    let mut n = 0u32;
    for part in data.trim_ascii().split(|&b| b == b',') {
        if part.is_empty() {
            continue;
        }
        match part.iter().position(|&b| b == b'-') {
            Some(dash) => {
                let lo = parse_u64(&part[..dash])?;
                let hi = parse_u64(&part[dash + 1..])?;
                n += u32::try_from(hi.checked_sub(lo)? + 1).ok()?;
            }
            None => {
                parse_u64(part)?;
                n += 1;
            }
        }
    }
    (n > 0).then_some(n)
}

/// `PRETTY_NAME` of an os-release file, unquoted.
#[must_use]
pub fn os_pretty_name(text: &str) -> Option<String> {
    let value = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("PRETTY_NAME="))?
        .trim();
    let unquoted = ['"', '\'']
        .iter()
        .find_map(|&q| value.strip_prefix(q).and_then(|v| v.strip_suffix(q)))
        .unwrap_or(value);
    let mut out = String::with_capacity(unquoted.len());
    let mut escaped = false;
    for c in unquoted.chars() {
        if escaped || c != '\\' {
            out.push(c);
            escaped = false;
        } else {
            escaped = true;
        }
    }
    let out = out.trim().to_owned();
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests;
