//! `vmmon-sample-bench`: CPU time of one sampler tick with every process, against the floor of
//! merely reading `/proc/PID/stat` and `/proc/PID/io` for every pid.
//!
//! It spawns `--procs` idle children (`sleep`), primes a [`Sampler`], then takes `--samples`
//! ticks and measures this process's own CPU time (`getrusage`, not wall time) per tick. Without
//! `--floor`/`--agent` it interleaves floor passes and sampler ticks, so both see the same
//! system, and prints their ratio. It asserts nothing: it only prints.
//!
//! The floor uses the sampler's own system-call pattern (`open`, one `read` into a reused
//! buffer, `close`), so the ratio is the sampler's overhead: the VM-level files, parsing, the
//! process table and building the records.
//!
//! `--sockets N` then measures what per-process network attribution adds to a tick with N open
//! TCP sockets: it opens N/2 loopback connections (both ends held here), and interleaves ticks
//! of two samplers, one attributing (loopback counted, so these sockets take the full path a
//! real one takes) and one not; the difference is the extra CPU per sample. Two phases: steady
//! (no new socket: one sock_diag dump per address family, no `/proc/PID/fd` read) and churn
//! (one new connection before every tick, so every tick looks up owners in `/proc/PID/fd`).

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use std::net::{TcpListener, TcpStream};

use anyhow::{Context, Result};
use clap::Parser;
use vmmon_agent::sampler::{ProcRoots, Sampler};

/// Measure the sampler's CPU cost per tick against the /proc reading floor.
#[derive(Debug, Parser)]
#[command(name = "vmmon-sample-bench")]
struct Args {
    /// Extra idle processes (`sleep`) to spawn for the run; they are killed on exit.
    #[arg(long, default_value_t = 500)]
    procs: usize,
    /// Measured ticks (after one priming tick).
    #[arg(long, default_value_t = 20)]
    samples: usize,
    /// Measure only the floor: read /proc/PID/stat and /proc/PID/io of every pid.
    #[arg(long, conflicts_with = "agent")]
    floor: bool,
    /// Measure only the sampler.
    #[arg(long)]
    agent: bool,
    /// Open TCP sockets (over loopback) and measure the network attribution's extra cost.
    #[arg(long, default_value_t = 0)]
    sockets: usize,
    /// Sleep this long (not measured) before every measured pass, as the daemon does between
    /// ticks: caches (CPU, TLB) are then as cold as the running agent's, not warm from the
    /// previous pass. 0: back to back.
    #[arg(long, default_value_t = 0)]
    pause_ms: u64,
    /// Most `/proc/PID` descriptors the samplers keep open between ticks (default: the
    /// agent's, from `RLIMIT_NOFILE`); 0 opens, reads and closes every file every tick, as the
    /// floor does.
    #[arg(long)]
    fd_cap: Option<usize>,
}

/// Kills and reaps the children however `main` ends, panics included. (Ctrl-C reaches them
/// too: they share the terminal's process group. They also end by themselves after 10 minutes.)
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

fn spawn_idle(n: usize) -> Result<Children> {
    let mut children = Children(Vec::with_capacity(n));
    for i in 0..n {
        let child = Command::new("sleep")
            .arg("600")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("spawning idle child {i} of {n}"))?;
        children.0.push(child);
    }
    Ok(children)
}

/// User and system CPU time of this process so far.
#[allow(unsafe_code)]
fn cpu_times() -> (Duration, Duration) {
    // SAFETY: getrusage writes one `rusage` into the zeroed value we own; RUSAGE_SELF is valid.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    (tv(usage.ru_utime), tv(usage.ru_stime))
}

/// Accumulated CPU time of one kind of pass.
#[derive(Debug, Default)]
struct Cost {
    user: Duration,
    sys: Duration,
    runs: u32,
}

impl Cost {
    fn measure<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let (u0, s0) = cpu_times();
        let out = f();
        let (u1, s1) = cpu_times();
        self.user += u1.saturating_sub(u0);
        self.sys += s1.saturating_sub(s0);
        self.runs += 1;
        out
    }

    fn ms_per_run(&self, d: Duration) -> f64 {
        d.as_secs_f64() * 1000.0 / f64::from(self.runs.max(1))
    }

    fn total_ms(&self) -> f64 {
        self.ms_per_run(self.user + self.sys)
    }

    fn print(&self, mode: &str, procs_present: usize, extra: &str) {
        println!(
            "mode={mode} procs_present={procs_present} samples={} cpu_ms_per_sample={:.3} user_ms={:.3} sys_ms={:.3}{extra}",
            self.runs,
            self.total_ms(),
            self.ms_per_run(self.user),
            self.ms_per_run(self.sys),
        );
    }
}

/// The floor: read `/proc/PID/stat` and `/proc/PID/io` of every pid into one reused buffer.
/// Returns the number of pids.
fn floor_pass(buf: &mut [u8], path: &mut Vec<u8>) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut pids = 0;
    for entry in dir.flatten() {
        let name = entry.file_name();
        if name.is_empty() || !name.as_bytes().iter().all(u8::is_ascii_digit) {
            continue;
        }
        pids += 1;
        for file in [&b"stat"[..], b"io"] {
            path.clear();
            path.extend_from_slice(b"/proc/");
            path.extend_from_slice(name.as_bytes());
            path.push(b'/');
            path.extend_from_slice(file);
            if let Ok(mut f) = File::open(Path::new(OsStr::from_bytes(path))) {
                let _ = f.read(buf);
            }
        }
    }
    pids
}

/// Raises the soft open-file limit to the hard one (N sockets need N descriptors).
#[allow(unsafe_code)]
fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit read and write one `rlimit` we own; RLIMIT_NOFILE is valid.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Loopback connections, both ends held: two sockets each.
struct Conns {
    listener: TcpListener,
    held: Vec<TcpStream>,
}

impl Conns {
    fn open(sockets: usize) -> Result<Conns> {
        raise_nofile();
        let listener = TcpListener::bind("127.0.0.1:0").context("bind")?;
        let mut conns = Conns {
            listener,
            held: Vec::with_capacity(sockets + 64),
        };
        for _ in 0..sockets / 2 {
            conns.add()?;
        }
        Ok(conns)
    }

    /// One more connection, with a few bytes each way so its counters move.
    fn add(&mut self) -> Result<()> {
        use std::io::Write;
        let mut c = TcpStream::connect(self.listener.local_addr()?).context("connect")?;
        let (mut s, _) = self.listener.accept().context("accept")?;
        c.write_all(b"ping")?;
        s.write_all(b"pong")?;
        self.held.push(c);
        self.held.push(s);
        Ok(())
    }
}

/// The network attribution's extra CPU per sample with `sockets` open sockets.
fn net_bench(sockets: usize, samples: usize) -> Result<()> {
    let mut conns = Conns::open(sockets)?;
    let mut with = Sampler::new(ProcRoots::default()).context("sampler")?;
    with.set_net_count_loopback(true);
    let mut without = Sampler::new(ProcRoots::default()).context("sampler")?;
    without.set_net_attribution(false);
    with.sample(SystemTime::now(), true).context("priming")?;
    without.sample(SystemTime::now(), true).context("priming")?;
    // One more tick each, so the owners are resolved before measuring the steady state.
    with.sample(SystemTime::now(), true).context("sample")?;
    without.sample(SystemTime::now(), true).context("sample")?;

    for churn in [false, true] {
        let (mut on, mut off) = (Cost::default(), Cost::default());
        let before = with.net_stats();
        for _ in 0..samples {
            if churn {
                conns.add()?;
            }
            on.measure(|| with.sample(SystemTime::now(), true))
                .context("sample")?;
            off.measure(|| without.sample(SystemTime::now(), true))
                .context("sample")?;
        }
        let after = with.net_stats();
        let phase = if churn { "churn" } else { "steady" };
        let scans = after.scans - before.scans;
        println!(
            "net phase={phase} sockets_open={} sockets_followed={} scans={scans} fds_read_per_scan={:.0} \
             with_ms={:.3} without_ms={:.3} extra_cpu_ms_per_sample={:.3}",
            conns.held.len(),
            after.followed,
            if scans == 0 {
                0.0
            } else {
                (after.fds_read - before.fds_read) as f64 / scans as f64
            },
            on.total_ms(),
            off.total_ms(),
            on.total_ms() - off.total_ms(),
        );
    }
    Ok(())
}

/// Peak resident set size of this process (`VmHWM`), KiB.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() -> Result<()> {
    let args = Args::parse();
    let run_agent = !args.floor;
    let run_floor = !args.agent;

    let _children = spawn_idle(args.procs)?;
    if args.sockets > 0 {
        return net_bench(args.sockets, args.samples);
    }

    // As the agent does at start (the descriptor cap follows the soft limit).
    vmmon_agent::sampler::raise_nofile_limit();
    let mut sampler = Sampler::new(ProcRoots::default()).context("creating the sampler")?;
    // The same sampler without per-process network attribution: what the /proc floor covers.
    let mut procfs_only = Sampler::new(ProcRoots::default()).context("creating the sampler")?;
    procfs_only.set_net_attribution(false);
    if let Some(cap) = args.fd_cap {
        sampler.set_fd_cap(cap);
        procfs_only.set_fd_cap(cap);
    }
    let mut buf = vec![0u8; 4096];
    let mut path = Vec::with_capacity(64);
    // Prime: the sampler's baseline and table, and warm caches for both.
    sampler
        .sample(SystemTime::now(), true)
        .context("priming sample")?;
    procfs_only
        .sample(SystemTime::now(), true)
        .context("priming sample")?;
    floor_pass(&mut buf, &mut path);

    let (mut agent, mut floor, mut agent_procfs) =
        (Cost::default(), Cost::default(), Cost::default());
    let (mut records, mut procs_present) = (0, 0);
    let pause = || {
        if args.pause_ms > 0 {
            std::thread::sleep(Duration::from_millis(args.pause_ms));
        }
    };
    for _ in 0..args.samples {
        if run_floor {
            pause();
            procs_present = floor.measure(|| floor_pass(&mut buf, &mut path));
        }
        if run_agent {
            pause();
            let sample = agent
                .measure(|| sampler.sample(SystemTime::now(), true))
                .context("sample")?;
            records = sample.processes.as_ref().map_or(0, Vec::len);
            procs_present = sample.vm.proc_count as usize;
            if run_floor {
                pause();
                agent_procfs
                    .measure(|| procfs_only.sample(SystemTime::now(), true))
                    .context("sample")?;
            }
        }
    }

    if run_floor {
        floor.print("floor", procs_present, "");
    }
    if run_agent {
        let extra = format!(
            " records={records} tracked={} fds_kept_open={}",
            sampler.process_count_tracked(),
            sampler.fds_kept_open()
        );
        agent.print("agent", procs_present, &extra);
    }
    if run_agent && run_floor {
        agent_procfs.print("agent_without_net_attribution", procs_present, "");
        println!(
            "ratio_agent_over_floor={:.3} ratio_without_net_attribution={:.3}",
            agent.total_ms() / floor.total_ms().max(f64::MIN_POSITIVE),
            agent_procfs.total_ms() / floor.total_ms().max(f64::MIN_POSITIVE)
        );
    }
    if let Some(kib) = peak_rss_kib() {
        println!("peak_rss_kib={kib}");
    }
    let last = if run_agent { &agent } else { &floor };
    println!("cpu_ms_per_sample {:.3}", last.total_ms());
    Ok(())
}
