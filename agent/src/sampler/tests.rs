//! The sampler over a fake `/proc` + `/sys` tree in a tempdir, and once over the real `/proc`.

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use vmmon_common::wire::ext::SampleExt;
use vmmon_common::wire::{ProcessKey, ProcessSample, Sample};

use super::*;

const BTIME: u64 = 1_700_000_000;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(BTIME + secs)
}

/// One fake process.
#[derive(Clone)]
struct FakeProc {
    pid: u32,
    comm: String,
    utime: u64,
    stime: u64,
    start_ticks: u64,
    rss_pages: u64,
    /// `None`: `io` is a directory, so reading it fails like EACCES would.
    io: Option<(u64, u64)>,
    cmdline: Vec<u8>,
    ppid: u32,
    state: char,
    /// cutime + cstime (reaped children's CPU), all in cutime.
    children_ticks: u64,
    threads: u32,
    /// `(tid, resident pages)` of `task/TID/statm` files.
    tasks: Vec<(u32, u64)>,
}

impl FakeProc {
    fn new(pid: u32, comm: &str, start_ticks: u64) -> Self {
        Self {
            pid,
            comm: comm.to_owned(),
            utime: 0,
            stime: 0,
            start_ticks,
            rss_pages: 0,
            io: Some((0, 0)),
            cmdline: format!("/usr/bin/{comm}\0").into_bytes(),
            ppid: 1,
            state: 'S',
            children_ticks: 0,
            threads: 1,
            tasks: Vec::new(),
        }
    }
}

/// A `/proc` + `/sys` tree whose counters the test sets between samples. Like the kernel, it
/// counts a fork in `/proc/stat` (`processes`) whenever a pid appears or is reused.
struct Fake {
    dir: tempfile::TempDir,
    /// The aggregate `(busy, idle)` ticks last set.
    cpu: std::cell::Cell<(u64, u64)>,
    forks: std::cell::Cell<u64>,
    /// Pid → start ticks of the processes in the tree.
    started: std::cell::RefCell<std::collections::HashMap<u32, u64>>,
}

impl Fake {
    /// Two CPUs, 4 GiB of memory, one physical disk `vda`, one interface `eth0`, uptime 1000 s.
    fn new() -> Self {
        let fake = Self {
            dir: tempfile::tempdir().expect("tempdir"),
            cpu: std::cell::Cell::new((0, 0)),
            forks: std::cell::Cell::new(9),
            started: std::cell::RefCell::default(),
        };
        fs::create_dir_all(fake.proc().join("net")).expect("mkdir");
        fs::create_dir_all(fake.proc().join("sys/kernel")).expect("mkdir");
        fs::create_dir_all(fake.sys().join("devices/system/cpu")).expect("mkdir");
        fake.write("proc/sys/kernel/hostname", b"vm-1\n");
        fake.write("sys/devices/system/cpu/online", b"0-1\n");
        fake.set_uptime(1000.0);
        fake.set_cpu(0, 0);
        fake.set_mem(4 * 1024 * 1024, 1024 * 1024);
        fake.add_block("vda", true, 2_000_000);
        fake.set_disks(&[("vda", 0, 0)]);
        fake.set_net(&[("eth0", 0, 0)]);
        fake
    }

    fn proc(&self) -> PathBuf {
        self.dir.path().join("proc")
    }

    fn sys(&self) -> PathBuf {
        self.dir.path().join("sys")
    }

    fn roots(&self) -> ProcRoots {
        ProcRoots {
            proc: self.proc(),
            sys: self.sys(),
        }
    }

    fn write(&self, rel: &str, data: &[u8]) {
        let path = self.dir.path().join(rel);
        fs::write(&path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    fn set_uptime(&self, secs: f64) {
        self.write("proc/uptime", format!("{secs:.2} 0.00\n").as_bytes());
    }

    /// Aggregate busy and idle ticks (split over user and idle); two online CPUs.
    fn set_cpu(&self, busy: u64, idle: u64) {
        self.cpu.set((busy, idle));
        self.write_stat();
    }

    fn write_stat(&self) {
        let ((busy, idle), forks) = (self.cpu.get(), self.forks.get());
        let text = format!(
            "cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\ncpu0 0 0 0 0 0 0 0 0 0 0\ncpu1 0 0 0 0 0 0 0 0 0 0\n\
             intr 1 2 3\nctxt 4\nbtime {BTIME}\nprocesses {forks}\n"
        );
        self.write("proc/stat", text.as_bytes());
    }

    /// A fork the kernel counts (a process, or a thread, was created).
    fn count_fork(&self) {
        self.forks.set(self.forks.get() + 1);
        self.write_stat();
    }

    fn set_mem(&self, total_kib: u64, available_kib: u64) {
        let text =
            format!("MemTotal: {total_kib} kB\nMemFree: 1 kB\nMemAvailable: {available_kib} kB\n");
        self.write("proc/meminfo", text.as_bytes());
    }

    fn add_block(&self, name: &str, physical: bool, size_sectors: u64) {
        let dir = self.sys().join("block").join(name);
        fs::create_dir_all(&dir).expect("mkdir");
        if physical {
            fs::create_dir_all(dir.join("device")).expect("mkdir");
        }
        fs::write(dir.join("size"), format!("{size_sectors}\n")).expect("write");
    }

    /// `(name, sectors read, sectors written)`.
    fn set_disks(&self, disks: &[(&str, u64, u64)]) {
        let mut text = String::new();
        for (i, (name, r, w)) in disks.iter().enumerate() {
            text.push_str(&format!(
                "   8 {i} {name} 10 0 {r} 5 20 0 {w} 7 0 9 12 0 0 0 0 0 0\n"
            ));
        }
        self.write("proc/diskstats", text.as_bytes());
    }

    /// `(interface, rx bytes, tx bytes)`.
    fn set_net(&self, ifaces: &[(&str, u64, u64)]) {
        let mut text = String::from(
            "Inter-|   Receive                                                |  Transmit\n \
             face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n",
        );
        for (name, rx, tx) in ifaces {
            text.push_str(&format!(
                "{name:>6}: {rx} 1 0 0 0 0 0 0 {tx} 1 0 0 0 0 0 0\n"
            ));
        }
        self.write("proc/net/dev", text.as_bytes());
    }

    fn set_proc(&self, p: &FakeProc) {
        if self.started.borrow_mut().insert(p.pid, p.start_ticks) != Some(p.start_ticks) {
            self.count_fork();
        }
        let dir = self.proc().join(p.pid.to_string());
        fs::create_dir_all(&dir).expect("mkdir");
        let stat = format!(
            "{} ({}) {} {} 1 1 0 -1 4194304 0 0 0 0 {} {} {} 0 20 0 {} 0 {} 1000000 {} 18446744073709551615 1 1 0 0 0\n",
            p.pid,
            p.comm,
            p.state,
            p.ppid,
            p.utime,
            p.stime,
            p.children_ticks,
            p.threads,
            p.start_ticks,
            p.rss_pages
        );
        for (tid, pages) in &p.tasks {
            let task = dir.join(format!("task/{tid}"));
            fs::create_dir_all(&task).expect("mkdir");
            fs::write(task.join("statm"), format!("9999 {pages} 10 1 0 20 0\n")).expect("write");
        }
        fs::write(dir.join("stat"), stat).expect("write");
        let io = dir.join("io");
        match p.io {
            Some((r, w)) => {
                if io.is_dir() {
                    fs::remove_dir(&io).expect("rmdir");
                }
                fs::write(
                    &io,
                    format!("rchar: 1\nwchar: 2\nsyscr: 3\nsyscw: 4\nread_bytes: {r}\nwrite_bytes: {w}\ncancelled_write_bytes: 0\n"),
                )
                .expect("write");
            }
            None => {
                let _ = fs::remove_file(&io);
                fs::create_dir_all(&io).expect("mkdir");
            }
        }
        fs::write(dir.join("cmdline"), &p.cmdline).expect("write");
    }

    /// The process is reaped: gone from the listing, and (as the kernel answers `ESRCH`) its
    /// files read empty through descriptors kept open.
    fn remove_proc(&self, pid: u32) {
        self.started.borrow_mut().remove(&pid);
        let dir = self.proc().join(pid.to_string());
        for file in ["stat", "io"] {
            if dir.join(file).is_file() {
                fs::write(dir.join(file), b"").expect("empty");
            }
        }
        fs::remove_dir_all(self.proc().join(pid.to_string())).expect("rm");
    }
}

fn sampler(fake: &Fake) -> Sampler {
    Sampler::new(fake.roots()).expect("sampler")
}

fn procs(s: &Sample) -> &[ProcessSample] {
    s.processes.as_deref().expect("process records")
}

fn live(s: &Sample, pid: u32) -> &ProcessSample {
    let mut found = procs(s)
        .iter()
        .filter(|p| p.pid == pid && p.shutdown_time.is_none());
    let p = found
        .next()
        .unwrap_or_else(|| panic!("pid {pid} live in {:#?}", s.processes));
    assert!(found.next().is_none(), "pid {pid} reported twice");
    p
}

fn exits(s: &Sample) -> Vec<&ProcessSample> {
    procs(s)
        .iter()
        .filter(|p| p.shutdown_time.is_some())
        .collect()
}

#[test]
fn first_sample_has_no_rates() {
    let fake = Fake::new();
    fake.set_cpu(500, 500);
    fake.set_disks(&[("vda", 1000, 2000)]);
    fake.set_net(&[("lo", 7777, 7777), ("eth0", 100, 200)]);
    let mut p = FakeProc::new(100, "nginx", 100);
    (p.utime, p.stime, p.rss_pages, p.io) = (50, 50, 10, Some((4096, 4096)));
    fake.set_proc(&p);
    fake.set_proc(&FakeProc::new(101, "sshd", 100));

    let mut s = sampler(&fake);
    let sample = s.sample(at(1000), true).expect("sample");
    let vm = &sample.vm;
    assert_eq!(
        vm.sampled_at_ms,
        i64::try_from((BTIME + 1000) * 1000).expect("fits")
    );
    assert_eq!(vm.elapsed_ms, 0);
    assert_eq!(
        (
            vm.cpu_pct,
            vm.disk_read_kib_per_sec,
            vm.disk_write_kib_per_sec,
            vm.net_in_kib_per_sec,
            vm.net_out_kib_per_sec
        ),
        (0.0, 0.0, 0.0, 0.0, 0.0)
    );
    assert!(close(vm.mem_pct, 75.0), "{}", vm.mem_pct);
    assert_eq!(
        (vm.rx_bytes_total, vm.tx_bytes_total),
        (100, 200),
        "lo excluded"
    );
    assert_eq!(vm.proc_count, 2);

    assert_eq!(procs(&sample).len(), 2);
    let nginx = live(&sample, 100);
    assert_eq!(nginx.cmd, "nginx");
    assert_eq!(
        (
            nginx.cpu_pct,
            nginx.disk_read_kib_per_sec,
            nginx.disk_write_kib_per_sec,
            nginx.net_in_kib_per_sec
        ),
        (0.0, 0.0, 0.0, 0.0)
    );
    let want_mem = 10.0 * s.page_size as f64 / (4.0 * 1024.0 * 1024.0 * 1024.0) * 100.0;
    assert!(
        close(nginx.mem_pct, want_mem),
        "{} != {want_mem}",
        nginx.mem_pct
    );
    assert!(close(
        nginx.start_time,
        BTIME as f64 + 100.0 / s.clk_tck as f64
    ));
    assert_eq!(s.process_count_tracked(), 2);
}

#[test]
fn vm_rates_physical_disks_only_and_lo_excluded() {
    let fake = Fake::new();
    for (name, physical) in [
        ("sda", true),
        ("loop0", false),
        ("dm-0", false),
        ("zram0", false),
    ] {
        fake.add_block(name, physical, 1000);
    }
    // vda1 is a partition: not in /sys/block at all.
    let disks = |k: u64| {
        [
            ("vda", 100 * k, 200 * k),
            ("vda1", 100 * k, 200 * k),
            ("sda", 20 * k, 0),
            ("loop0", 999 * k, 999 * k),
            ("dm-0", 50 * k, 50 * k),
            ("zram0", 7 * k, 7 * k),
        ]
    };
    let nets = |k: u64| {
        [
            ("lo", 1_000_000 * k, 1_000_000 * k),
            ("eth0", 10_240 * k, 2048 * k),
            ("eth1", 1024 * k, 0),
        ]
    };
    fake.set_cpu(1000, 3000);
    fake.set_disks(&disks(1));
    fake.set_net(&nets(1));
    let mut s = sampler(&fake);
    s.sample(at(1000), false).expect("first");

    fake.set_uptime(1010.0);
    fake.set_cpu(1500, 4500); // 500 busy of 2000 ticks: 25 %.
    fake.set_disks(&disks(3));
    fake.set_net(&nets(3));
    let sample = s.sample(at(1010), false).expect("second");
    let vm = &sample.vm;
    assert_eq!(vm.elapsed_ms, 10_000);
    assert!(close(vm.cpu_pct, 25.0), "{}", vm.cpu_pct);
    // vda + sda: read (100 + 20) × 2 sectors × 512 B over 10 s; write 200 × 2 × 512 B.
    assert!(
        close(
            vm.disk_read_kib_per_sec,
            120.0 * 2.0 * 512.0 / 1024.0 / 10.0
        ),
        "{}",
        vm.disk_read_kib_per_sec
    );
    assert!(
        close(
            vm.disk_write_kib_per_sec,
            200.0 * 2.0 * 512.0 / 1024.0 / 10.0
        ),
        "{}",
        vm.disk_write_kib_per_sec
    );
    // eth0 + eth1, lo excluded.
    assert!(
        close(
            vm.net_in_kib_per_sec,
            (10_240.0 + 1024.0) * 2.0 / 1024.0 / 10.0
        ),
        "{}",
        vm.net_in_kib_per_sec
    );
    assert!(
        close(vm.net_out_kib_per_sec, 2048.0 * 2.0 / 1024.0 / 10.0),
        "{}",
        vm.net_out_kib_per_sec
    );
    assert_eq!(
        (vm.rx_bytes_total, vm.tx_bytes_total),
        ((10_240 + 1024) * 3, 2048 * 3)
    );
    assert!(sample.processes.is_none());
    assert_eq!(s.process_count_tracked(), 0);
}

#[test]
fn counters_going_backwards_give_zero_then_resume() {
    let fake = Fake::new();
    let mut p = FakeProc::new(100, "worker", 0);
    (p.utime, p.io) = (1000, Some((1 << 20, 1 << 20)));
    fake.set_proc(&p);
    fake.set_cpu(1000, 1000);
    fake.set_disks(&[("vda", 1000, 1000)]);
    fake.set_net(&[("eth0", 1 << 20, 1 << 20)]);
    let mut s = sampler(&fake);
    s.sample(at(1000), true).expect("first");

    // Everything goes backwards (wrap, reset).
    fake.set_uptime(1010.0);
    fake.set_cpu(10, 10);
    fake.set_disks(&[("vda", 10, 10)]);
    fake.set_net(&[("eth0", 10, 10)]);
    (p.utime, p.io) = (10, Some((10, 10)));
    fake.set_proc(&p);
    let sample = s.sample(at(1010), true).expect("second");
    let vm = &sample.vm;
    assert_eq!(
        (
            vm.cpu_pct,
            vm.disk_read_kib_per_sec,
            vm.disk_write_kib_per_sec,
            vm.net_in_kib_per_sec,
            vm.net_out_kib_per_sec
        ),
        (0.0, 0.0, 0.0, 0.0, 0.0)
    );
    let w = live(&sample, 100);
    assert_eq!(
        (w.cpu_pct, w.disk_read_kib_per_sec, w.disk_write_kib_per_sec),
        (0.0, 0.0, 0.0)
    );

    // The next tick measures from the new baseline.
    fake.set_uptime(1020.0);
    fake.set_cpu(10 + 1000, 10 + 1000);
    fake.set_disks(&[("vda", 10 + 20, 10)]);
    fake.set_net(&[("eth0", 10 + 10_240, 10)]);
    (p.utime, p.io) = (10 + s.clk_tck * 10, Some((10 + 10_240, 10)));
    fake.set_proc(&p);
    let sample = s.sample(at(1020), true).expect("third");
    let vm = &sample.vm;
    assert!(close(vm.cpu_pct, 50.0), "{}", vm.cpu_pct);
    assert!(close(
        vm.disk_read_kib_per_sec,
        20.0 * 512.0 / 1024.0 / 10.0
    ));
    assert!(close(vm.net_in_kib_per_sec, 1.0));
    let w = live(&sample, 100);
    // One CPU busy for 10 s on a 2-CPU VM.
    assert!(close(w.cpu_pct, 50.0), "{}", w.cpu_pct);
    assert!(close(w.disk_read_kib_per_sec, 1.0));
}

#[test]
fn process_cpu_is_a_share_of_the_whole_vm() {
    let fake = Fake::new();
    let hz = sampler(&fake).clk_tck;
    let mut a = FakeProc::new(100, "a", 0);
    let mut b = FakeProc::new(200, "b", 0);
    a.rss_pages = 1024;
    fake.set_proc(&a);
    fake.set_proc(&b);
    let mut s = sampler(&fake);
    s.sample(at(1000), true).expect("first");

    // Over 10 s on 2 CPUs (20 CPU-seconds): a used 5 CPU-s, b used 10 CPU-s (utime + stime).
    fake.set_uptime(1010.0);
    (a.utime, a.stime) = (3 * hz, 2 * hz);
    (b.utime, b.stime) = (hz, 9 * hz);
    a.io = Some((100 * 1024, 50 * 1024));
    fake.set_proc(&a);
    fake.set_proc(&b);
    let sample = s.sample(at(1010), true).expect("second");
    let (pa, pb) = (live(&sample, 100), live(&sample, 200));
    assert!(close(pa.cpu_pct, 25.0), "{}", pa.cpu_pct);
    assert!(close(pb.cpu_pct, 50.0), "{}", pb.cpu_pct);
    assert!(close(pa.disk_read_kib_per_sec, 10.0));
    assert!(close(pa.disk_write_kib_per_sec, 5.0));
    let want_mem = 1024.0 * s.page_size as f64 / (4.0 * 1024.0 * 1024.0 * 1024.0) * 100.0;
    assert!(close(pa.mem_pct, want_mem));
    assert_eq!((pa.net_in_kib_per_sec, pa.net_out_kib_per_sec), (0.0, 0.0));
}

#[test]
fn new_process_rates_are_since_its_start() {
    let fake = Fake::new();
    let hz = sampler(&fake).clk_tck;
    fake.set_proc(&FakeProc::new(100, "old", 0));
    let mut s = sampler(&fake);
    s.sample(at(1000), true).expect("first");

    // Started at uptime 1005 s, seen at 1010 s: 5 s old, used 1 CPU-s and read 50 KiB.
    fake.set_uptime(1010.0);
    let mut n = FakeProc::new(300, "new", 1005 * hz);
    (n.utime, n.io) = (hz, Some((50 * 1024, 0)));
    fake.set_proc(&n);
    let sample = s.sample(at(1010), true).expect("second");
    let p = live(&sample, 300);
    assert!(close(p.cpu_pct, 10.0), "{}", p.cpu_pct);
    assert!(
        close(p.disk_read_kib_per_sec, 10.0),
        "{}",
        p.disk_read_kib_per_sec
    );
    assert!(close(p.start_time, (BTIME + 1005) as f64));
}

#[test]
fn reused_pid_with_new_start_time_is_a_new_process() {
    let fake = Fake::new();
    let hz = sampler(&fake).clk_tck;
    let mut first = FakeProc::new(100, "first", 10 * hz);
    first.utime = 500 * hz;
    fake.set_proc(&first);
    let mut s = sampler(&fake);
    s.sample(at(1000), true).expect("first");
    assert_eq!(
        s.tracked_processes(),
        [ProcessKey {
            pid: 100,
            start_ticks: 10 * hz
        }]
    );

    // pid 100 now belongs to a process that started at 1008 s and used 1 CPU-s in 2 s. A
    // same-pid delta would be hugely negative; it must not be taken.
    fake.set_uptime(1010.0);
    let mut second = FakeProc::new(100, "second", 1008 * hz);
    second.utime = hz;
    fake.set_proc(&second);
    let sample = s.sample(at(1010), true).expect("second");
    assert_eq!(procs(&sample).len(), 2, "{:#?}", sample.processes);
    let gone = exits(&sample);
    assert_eq!(gone.len(), 1);
    assert_eq!((gone[0].pid, gone[0].cmd.as_str()), (100, "first"));
    assert!(close(gone[0].start_time, (BTIME + 10) as f64));
    assert_eq!(gone[0].shutdown_time, Some((BTIME + 1010) as f64));
    let now = live(&sample, 100);
    assert_eq!(now.cmd, "second");
    assert!(close(now.start_time, (BTIME + 1008) as f64));
    assert!(close(now.cpu_pct, 25.0), "{}", now.cpu_pct);
    assert_eq!(
        s.tracked_processes(),
        [ProcessKey {
            pid: 100,
            start_ticks: 1008 * hz
        }]
    );
}

impl Fake {
    /// Reaps `pid`. On procfs a file opened before then fails (`ESRCH`) from then on, even
    /// once the pid is reused; here the files are emptied before they are removed, so a
    /// descriptor kept open reads 0 bytes, never the old figures.
    fn stat_ino(&self, pid: u32) -> u64 {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(self.proc().join(format!("{pid}/stat")))
            .expect("stat file")
            .ino()
    }
}

#[test]
fn a_reused_pid_is_read_through_new_descriptors() {
    let fake = Fake::new();
    let hz = sampler(&fake).clk_tck;
    fake.set_proc(&FakeProc::new(100, "first", 10 * hz));
    fake.set_proc(&FakeProc::new(101, "other", 5));
    let mut s = sampler(&fake);
    s.sample(at(1000), true).expect("first");
    let first_ino = fake.stat_ino(100);
    assert_eq!(s.kept_open(), [(100, first_ino), (101, fake.stat_ino(101))]);
    assert_eq!(s.fds_kept_open(), 4);

    // The process is reaped and its pid goes to a new process before the next tick.
    fake.remove_proc(100);
    fake.set_uptime(1010.0);
    let mut second = FakeProc::new(100, "second", 1008 * hz);
    second.utime = hz;
    fake.set_proc(&second);
    let second_ino = fake.stat_ino(100);
    assert_ne!(first_ino, second_ino, "the old file is still open");
    let sample = s.sample(at(1010), true).expect("second");
    let gone = exits(&sample);
    assert_eq!(gone.len(), 1);
    assert_eq!((gone[0].pid, gone[0].cmd.as_str()), (100, "first"));
    let now = live(&sample, 100);
    assert_eq!(now.cmd, "second");
    assert!(close(now.start_time, (BTIME + 1008) as f64));
    assert!(close(now.cpu_pct, 25.0), "{}", now.cpu_pct);
    assert_eq!(
        s.kept_open(),
        [(100, second_ino), (101, fake.stat_ino(101))]
    );
    assert_eq!(s.fds_kept_open(), 4);

    // A kept file that reads another start time is not taken for the same process either
    // (procfs cannot do this; a tree of regular files rewritten in place can).
    fake.set_uptime(1020.0);
    fake.set_proc(&FakeProc::new(100, "third", 1015 * hz));
    let sample = s.sample(at(1020), true).expect("third");
    let gone = exits(&sample);
    assert_eq!(gone.len(), 1);
    assert_eq!((gone[0].pid, gone[0].cmd.as_str()), (100, "second"));
    let now = live(&sample, 100);
    assert_eq!(now.cmd, "third");
    assert!(close(now.start_time, (BTIME + 1015) as f64));
    assert_eq!(
        s.tracked_processes(),
        [
            ProcessKey {
                pid: 100,
                start_ticks: 1015 * hz
            },
            ProcessKey {
                pid: 101,
                start_ticks: 5
            }
        ]
    );
    assert_eq!(s.kept_open().len(), 2);
}

#[test]
fn a_vanished_process_closes_its_descriptors() {
    let fake = Fake::new();
    fake.set_proc(&FakeProc::new(100, "stays", 0));
    fake.set_proc(&FakeProc::new(101, "leaves", 7));
    let mut denied = FakeProc::new(102, "secret", 9);
    denied.io = None;
    fake.set_proc(&denied);
    let mut s = sampler(&fake);
    s.sample(at(1000), true).expect("first");
    // `io` refused: only its `stat` is kept.
    assert_eq!(s.fds_kept_open(), 5);
    assert_eq!(s.kept_open().len(), 3);

    fake.remove_proc(101);
    fake.remove_proc(102);
    fake.set_uptime(1010.0);
    let sample = s.sample(at(1010), true).expect("second");
    let mut gone: Vec<u32> = exits(&sample).iter().map(|p| p.pid).collect();
    gone.sort_unstable();
    assert_eq!(gone, [101, 102]);
    assert_eq!(s.kept_open(), [(100, fake.stat_ino(100))]);
    assert_eq!(s.fds_kept_open(), 2);

    // Turning process sampling off closes them all.
    fake.set_uptime(1020.0);
    s.sample(at(1020), false).expect("off");
    assert_eq!(s.fds_kept_open(), 0);
    assert!(s.kept_open().is_empty());
}

/// Over the same ticks (counters moving, a reaped process, a reused pid, a refused `io`, a
/// new process, an exec), samplers keeping every file open, some of them (the cap reached) or
/// none give the same samples.
#[test]
fn beyond_the_descriptor_cap_open_read_close_gives_the_same_figures() {
    let fake = Fake::new();
    let hz = sampler(&fake).clk_tck;
    let mut procs: Vec<FakeProc> = (0..6)
        .map(|i| {
            let mut p = FakeProc::new(100 + i, &format!("p{i}"), u64::from(i) * 3);
            p.rss_pages = 10 * u64::from(i);
            p.io = Some((u64::from(i) * 4096, 0));
            p
        })
        .collect();
    procs[2].io = None;
    for p in &procs {
        fake.set_proc(p);
    }
    let mut samplers: Vec<Sampler> = [usize::MAX, 3, 0]
        .into_iter()
        .map(|cap| {
            let mut s = sampler(&fake);
            s.set_fd_cap(cap);
            s.set_net_attribution(false);
            s
        })
        .collect();
    let tick = |secs: u64, samplers: &mut Vec<Sampler>, procs: usize| {
        fake.set_uptime(secs as f64);
        fake.set_cpu(secs * 10, secs * 10);
        let out: Vec<(Sample, SampleExt)> = samplers
            .iter_mut()
            .map(|s| s.sample_ext(at(secs), true).expect("sample"))
            .collect();
        for o in &out[1..] {
            assert_eq!(*o, out[0], "at {secs} s");
        }
        let kept: Vec<usize> = samplers.iter().map(Sampler::fds_kept_open).collect();
        // All but the refused `io`.
        assert_eq!(kept[0], 2 * procs - 1, "{kept:?}");
        assert!(kept[1] > 0 && kept[1] <= 3, "{kept:?}");
        assert_eq!(kept[2], 0);
        out.into_iter().next().expect("a sample")
    };
    tick(1000, &mut samplers, procs.len());
    for p in &mut procs {
        p.utime += 5 * hz;
        p.io = p.io.map(|(r, w)| (r + 40_960, w + 8192));
        fake.set_proc(p);
    }
    let (second, _) = tick(1010, &mut samplers, procs.len());
    assert!(close(live(&second, 101).cpu_pct, 25.0));

    fake.remove_proc(103);
    procs[4].start_ticks = 1015 * hz; // pid 104 reused
    procs[4].utime = hz;
    fake.remove_proc(104);
    fake.set_proc(&procs[4]);
    procs[5].comm = "python3".into(); // exec
    procs[5].stime += 2 * hz;
    fake.set_proc(&procs[5]);
    let mut born = FakeProc::new(200, "born", 1018 * hz);
    born.utime = hz;
    fake.set_proc(&born);
    procs.retain(|p| p.pid != 103);
    procs.push(born);
    let (third, _) = tick(1020, &mut samplers, procs.len());
    assert_eq!(exits(&third).len(), 2);
    assert_eq!(live(&third, 105).cmd, "python3");

    for p in &mut procs {
        p.utime += hz;
        fake.set_proc(p);
    }
    tick(1030, &mut samplers, procs.len());
}

#[test]
fn exit_gives_exactly_one_final_record() {
    let fake = Fake::new();
    let mut a = FakeProc::new(100, "stays", 0);
    let mut b = FakeProc::new(101, "leaves", 7);
    (a.rss_pages, b.rss_pages, b.utime) = (10, 10, 100);
    fake.set_proc(&a);
    fake.set_proc(&b);
    let mut s = sampler(&fake);
    s.sample(at(1000), true).expect("first");

    fake.remove_proc(101);
    fake.set_uptime(1010.0);
    let sample = s.sample(at(1010), true).expect("second");
    let gone = exits(&sample);
    assert_eq!(gone.len(), 1);
    let g = gone[0];
    assert_eq!(
        (g.pid, g.cmd.as_str(), g.shutdown_time),
        (101, "leaves", Some((BTIME + 1010) as f64))
    );
    assert!(close(g.start_time, BTIME as f64 + 7.0 / s.clk_tck as f64));
    assert_eq!(
        (
            g.cpu_pct,
            g.mem_pct,
            g.disk_read_kib_per_sec,
            g.disk_write_kib_per_sec
        ),
        (0.0, 0.0, 0.0, 0.0)
    );
    live(&sample, 100);
    assert_eq!(sample.vm.proc_count, 1);
    assert_eq!(s.process_count_tracked(), 1);

    fake.set_uptime(1020.0);
    let sample = s.sample(at(1020), true).expect("third");
    assert!(exits(&sample).is_empty());
    assert_eq!(procs(&sample).len(), 1);
}

#[test]
fn toggling_process_sampling_starts_fresh() {
    let fake = Fake::new();
    let mut a = FakeProc::new(100, "a", 0);
    fake.set_proc(&a);
    fake.set_proc(&FakeProc::new(101, "b", 0));
    let mut s = sampler(&fake);
    s.sample(at(1000), true).expect("on");
    assert_eq!(s.process_count_tracked(), 2);

    // Off: no records, table forgotten, nothing reported for what exits meanwhile.
    fake.set_uptime(1010.0);
    let off = s.sample(at(1010), false).expect("off");
    assert!(off.processes.is_none());
    assert_eq!(off.vm.proc_count, 2);
    assert_eq!(s.process_count_tracked(), 0);
    fake.remove_proc(101);

    // On again: fresh table, no stale exit, no baseline yet.
    fake.set_uptime(1020.0);
    a.utime = 1000;
    fake.set_proc(&a);
    let on = s.sample(at(1020), true).expect("on again");
    assert_eq!(procs(&on).len(), 1);
    assert!(exits(&on).is_empty());
    assert_eq!(live(&on, 100).cpu_pct, 0.0);
    // The VM figures keep their baseline across the toggle.
    assert_eq!(on.vm.elapsed_ms, 10_000);

    fake.set_uptime(1030.0);
    a.utime = 1000 + s.clk_tck * 10;
    fake.set_proc(&a);
    let next = s.sample(at(1030), true).expect("next");
    assert!(close(live(&next, 100).cpu_pct, 50.0));
}

#[test]
fn truncated_comm_takes_the_name_from_cmdline_once() {
    let fake = Fake::new();
    let mut journald = FakeProc::new(100, "systemd-journal", 0);
    journald.cmdline = b"/lib/systemd/systemd-journald\0".to_vec();
    let mut kthread = FakeProc::new(101, "kworker/0:1-eve", 0);
    kthread.cmdline = Vec::new();
    let mut retitled = FakeProc::new(102, "sshd-session-xy", 0);
    retitled.cmdline = b"sshd: root@pts/0".to_vec();
    let mut short = FakeProc::new(103, "bash", 0);
    short.cmdline = b"/usr/bin/bash-wrapper\0".to_vec();
    let odd = FakeProc::new(104, "a) (b", 0);
    for p in [&journald, &kthread, &retitled, &short, &odd] {
        fake.set_proc(p);
    }
    let mut s = sampler(&fake);
    let sample = s.sample(at(1000), true).expect("first");
    let cmd = |sample: &Sample, pid| live(sample, pid).cmd.clone();
    assert_eq!(cmd(&sample, 100), "systemd-journald");
    assert_eq!(cmd(&sample, 101), "kworker/0:1-eve");
    assert_eq!(cmd(&sample, 102), "sshd-session-xy");
    assert_eq!(cmd(&sample, 103), "bash");
    assert_eq!(cmd(&sample, 104), "a) (b");

    // cmdline is not read again while comm stays the same.
    journald.cmdline = b"/somewhere/else\0".to_vec();
    fake.set_proc(&journald);
    fake.set_uptime(1010.0);
    let sample = s.sample(at(1010), true).expect("second");
    assert_eq!(cmd(&sample, 100), "systemd-journald");

    // After an exec (comm changed, same pid and start), the name follows the new program.
    short.comm = "python3".to_owned();
    fake.set_proc(&short);
    fake.set_uptime(1020.0);
    let sample = s.sample(at(1020), true).expect("third");
    assert_eq!(cmd(&sample, 103), "python3");
    assert!(exits(&sample).is_empty());
}

#[test]
fn unreadable_io_and_vanishing_pids_do_not_fail_the_sample() {
    let fake = Fake::new();
    let mut denied = FakeProc::new(100, "secret", 0);
    denied.io = None;
    denied.rss_pages = 100;
    fake.set_proc(&denied);
    // A pid directory whose files are gone (exited between readdir and open).
    fs::create_dir_all(fake.proc().join("555")).expect("mkdir");
    // A pid whose `stat` cannot be read as one (as EACCES under hidepid): still a process.
    fs::create_dir_all(fake.proc().join("556")).expect("mkdir");
    fs::write(fake.proc().join("556/stat"), b"garbage\n").expect("write");
    // (An `io` missing beside a readable `stat` is a kernel without task I/O accounting, not a
    // vanished process: see `kernel_3_10_layout_*`.)
    // Not pids.
    fs::create_dir_all(fake.proc().join("self")).expect("mkdir");

    let mut s = sampler(&fake);
    let first = s.sample(at(1000), true).expect("first");
    // Listed, so counted; unreadable, so no record.
    assert_eq!(first.vm.proc_count, 3);
    assert_eq!(procs(&first).len(), 1, "{:#?}", first.processes);
    // The kernel has reaped 555 by the next tick; 556 is still there (and no fork happened,
    // so this tick does not list /proc: 556 is counted from the last listing).
    fs::remove_dir_all(fake.proc().join("555")).expect("rm");
    fake.set_uptime(1010.0);
    denied.utime = s.clk_tck * 10;
    fake.set_proc(&denied);
    let sample = s.sample(at(1010), true).expect("second");
    assert_eq!(sample.vm.proc_count, 2);
    assert_eq!(procs(&sample).len(), 1, "{:#?}", sample.processes);
    let p = live(&sample, 100);
    assert_eq!(
        (p.disk_read_kib_per_sec, p.disk_write_kib_per_sec),
        (0.0, 0.0)
    );
    assert!(close(p.cpu_pct, 50.0));
    assert!(p.mem_pct > 0.0);
}

#[test]
fn missing_files_are_typed_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let roots = ProcRoots {
        proc: dir.path().join("proc"),
        sys: dir.path().join("sys"),
    };
    assert!(matches!(
        Sampler::new(roots),
        Err(SamplerError::Read { .. })
    ));

    let fake = Fake::new();
    let mut s = sampler(&fake);
    fake.write("proc/meminfo", b"nothing useful\n");
    let err = s.sample(at(1000), false).expect_err("no MemTotal");
    assert!(
        matches!(
            err,
            SamplerError::Parse {
                what: "no MemTotal",
                ..
            }
        ),
        "{err}"
    );
    fs::remove_file(fake.proc().join("uptime")).expect("rm");
    assert!(matches!(
        s.sample(at(1000), false),
        Err(SamplerError::Read { .. })
    ));
}

#[test]
fn inventory_from_the_fake_tree() {
    let fake = Fake::new();
    fake.add_block("sdb", true, 1000);
    fake.add_block("loop0", false, 5000);
    let s = sampler(&fake);
    let inv = s.inventory(&[]).0;
    assert_eq!(inv.hostname, "vm-1");
    assert_eq!(inv.cpu_count, 2);
    assert_eq!(inv.mem_total_bytes, 4 * 1024 * 1024 * 1024);
    assert_eq!(inv.disk_total_bytes, (2_000_000 + 1000) * 512);
    assert_eq!(inv.agent_version, env!("CARGO_PKG_VERSION"));
    assert!(!inv.os.is_empty());
    let pinned = s.inventory(&["198.51.100.10".to_owned()]).0;
    assert_eq!(pinned.wan_ips, ["198.51.100.10"]);
}

#[test]
fn without_a_fork_the_last_listing_less_the_exited_is_the_tick() {
    let fake = Fake::new();
    fake.set_proc(&FakeProc::new(100, "stays", 0));
    fake.set_proc(&FakeProc::new(101, "leaves", 7));
    let mut s = sampler(&fake);
    let first = s.sample(at(1000), true).expect("first");
    assert_eq!(first.vm.proc_count, 2);

    // A pid directory that appears without the fork counter moving (no kernel does this) is
    // not seen: the tick did not list /proc. A reaped process still gives its final record.
    fake.set_proc(&FakeProc::new(102, "unforked", 9));
    fake.forks.set(fake.forks.get() - 1);
    fake.write_stat();
    fake.remove_proc(101);
    fake.set_uptime(1010.0);
    let second = s.sample(at(1010), true).expect("second");
    assert_eq!(second.vm.proc_count, 1);
    assert_eq!(
        exits(&second).iter().map(|p| p.pid).collect::<Vec<_>>(),
        [101]
    );
    let mut seen: Vec<u32> = procs(&second).iter().map(|p| p.pid).collect();
    seen.sort_unstable();
    assert_eq!(seen, [100, 101]);

    // The counter moved: /proc is listed again and the new pid found, as a new process.
    fake.count_fork();
    fake.set_uptime(1020.0);
    let third = s.sample(at(1020), true).expect("third");
    assert_eq!(third.vm.proc_count, 2);
    assert_eq!(live(&third, 102).cmd, "unforked");
    assert!(exits(&third).is_empty());

    // Without the `processes` line (a tree or kernel that lacks it), every tick lists /proc.
    let without_counter = || {
        let (busy, idle) = fake.cpu.get();
        fake.write(
            "proc/stat",
            format!("cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\nbtime {BTIME}\n").as_bytes(),
        );
    };
    without_counter();
    fake.set_uptime(1030.0);
    s.sample(at(1030), true).expect("fourth");
    fake.set_proc(&FakeProc::new(103, "uncounted", 11));
    without_counter();
    fake.set_uptime(1040.0);
    let fifth = s.sample(at(1040), true).expect("fifth");
    assert_eq!(fifth.vm.proc_count, 3);
    assert_eq!(live(&fifth, 103).cmd, "uncounted");
}

#[test]
fn a_fork_counter_that_misses_a_process_is_found_out_and_not_trusted_again() {
    let fake = Fake::new();
    fake.set_proc(&FakeProc::new(100, "init", 0));
    let mut s = sampler(&fake);
    s.sample(at(1000), true).expect("first");
    // A process the counter does not count (an emulated kernel's /proc/stat).
    let unforked = |pid: u32| {
        fake.set_proc(&FakeProc::new(pid, "hidden", u64::from(pid)));
        fake.forks.set(fake.forks.get() - 1);
        fake.write_stat();
    };
    unforked(101);
    let mut t = 1000;
    // Ticks 10 s apart: the next five skip the listing, the sixth (a minute on) lists.
    for _ in 0..LIST_EVERY.as_secs() / 10 - 1 {
        t += 10;
        fake.set_uptime(t as f64);
        let sample = s.sample(at(t), true).expect("tick");
        assert!(procs(&sample).iter().all(|p| p.pid != 101));
    }
    // The periodic listing finds it, and the counter is not trusted from then on.
    t += 10;
    fake.set_uptime(t as f64);
    let found = s.sample(at(t), true).expect("listing");
    assert_eq!(live(&found, 101).cmd, "hidden");
    unforked(102);
    t += 10;
    fake.set_uptime(t as f64);
    assert_eq!(
        live(&s.sample(at(t), true).expect("next"), 102).cmd,
        "hidden"
    );

    // A counter that reads 0 is no counter.
    let zero = Fake::new();
    zero.forks.set(0);
    zero.write_stat();
    zero.set_proc(&FakeProc::new(100, "init", 0));
    zero.forks.set(0);
    zero.write_stat();
    let mut z = sampler(&zero);
    z.sample(at(1000), true).expect("first");
    zero.set_proc(&FakeProc::new(101, "new", 9));
    zero.forks.set(0);
    zero.write_stat();
    zero.set_uptime(1010.0);
    assert_eq!(
        live(&z.sample(at(1010), true).expect("second"), 101).cmd,
        "new"
    );
}

#[test]
fn real_proc_finds_a_child_started_between_ticks_and_its_exit() {
    let mut s = Sampler::new(ProcRoots::default()).expect("sampler over /proc");
    s.sample(SystemTime::now(), true).expect("first");
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("spawn sleep");
    let pid = child.id();
    let with_child = s.sample(SystemTime::now(), true).expect("second");
    assert_eq!(live(&with_child, pid).cmd, "sleep");
    child.kill().expect("kill");
    child.wait().expect("reap");
    let after = s.sample(SystemTime::now(), true).expect("third");
    assert_eq!(exits(&after).iter().filter(|p| p.pid == pid).count(), 1);
    assert!(
        procs(&after)
            .iter()
            .all(|p| p.pid != pid || p.shutdown_time.is_some())
    );
}

#[test]
fn real_proc_finds_this_process() {
    let mut s = Sampler::new(ProcRoots::default()).expect("sampler over /proc");
    s.sample(SystemTime::now(), true).expect("first");
    std::thread::sleep(Duration::from_millis(200));
    let sample = s.sample(SystemTime::now(), true).expect("second");
    let me = std::process::id();
    let p = live(&sample, me);
    let comm = fs::read_to_string("/proc/self/comm").expect("comm");
    let comm = comm.trim_end_matches('\n');
    assert!(!p.cmd.is_empty());
    assert!(p.cmd.starts_with(comm), "cmd {:?} vs comm {comm:?}", p.cmd);
    if comm.len() < 15 {
        assert_eq!(p.cmd, comm);
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after epoch")
        .as_secs_f64();
    assert!(
        p.start_time > 1e9 && p.start_time <= now + 2.0,
        "{}",
        p.start_time
    );
    assert!(p.mem_pct > 0.0 && p.mem_pct < 100.0);
    let vm = &sample.vm;
    assert!(vm.proc_count >= 1);
    assert!((0.0..=100.0).contains(&vm.cpu_pct) && (0.0..=100.0).contains(&vm.mem_pct));
    assert!(s.process_count_tracked() >= 1);
    // Shares of the VM. The sum may pass 100 by the clock-tick rounding of the processes'
    // counters (reaped children's included), a few ticks over a 200 ms window.
    assert!(
        procs(&sample)
            .iter()
            .all(|p| (0.0..=100.0).contains(&p.cpu_pct))
    );
    let total_cpu: f64 = procs(&sample).iter().map(|p| p.cpu_pct).sum();
    assert!(total_cpu <= 125.0, "{total_cpu}");

    let inv = s.inventory(&[]).0;
    assert!(inv.cpu_count >= 1 && inv.mem_total_bytes > 0);
    assert!(!inv.hostname.is_empty());
}

/// Scripted sockets for the sampler-level network tests.
#[derive(Debug, Clone, Default)]
struct Sockets(std::sync::Arc<std::sync::Mutex<Vec<sockdiag::TcpSocket>>>);

impl Sockets {
    fn set(&self, socks: &[(u64, u32, u64, u64)]) {
        let v = socks
            .iter()
            .map(|&(cookie, inode, rx, tx)| sockdiag::TcpSocket {
                cookie,
                id: sockdiag::SockId::default(),
                inode,
                loopback: false,
                bytes_received: rx,
                bytes_sent: tx,
            })
            .collect();
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = v;
    }
}

impl netflow::SocketSource for Sockets {
    fn dump(&mut self, out: &mut Vec<sockdiag::TcpSocket>) -> std::io::Result<()> {
        out.clear();
        out.extend_from_slice(&self.0.lock().unwrap_or_else(|p| p.into_inner()));
        Ok(())
    }
}

fn hold_socket(fake: &Fake, pid: u32, fd: u32, inode: u32) {
    let dir = fake.proc().join(pid.to_string()).join("fd");
    fs::create_dir_all(&dir).expect("mkdir");
    std::os::unix::fs::symlink(format!("socket:[{inode}]"), dir.join(fd.to_string()))
        .expect("symlink");
}

#[test]
fn process_network_rates_and_vm_attribution() {
    let fake = Fake::new();
    fake.set_net(&[("lo", 0, 0), ("eth0", 0, 0)]);
    fake.set_proc(&FakeProc::new(100, "curl", 100));
    fake.set_proc(&FakeProc::new(101, "idle", 100));
    hold_socket(&fake, 100, 3, 7);
    hold_socket(&fake, 101, 3, 8);
    let socks = Sockets::default();
    let mut s = sampler(&fake);
    s.net = netflow::NetFlow::with_source(Box::new(socks.clone()));

    socks.set(&[(1, 7, 0, 0), (2, 8, 0, 0)]);
    let first = s.sample(at(1000), true).expect("first");
    assert_eq!(
        first.vm.net_attribution,
        Some(NetAttribution::default()),
        "measured, nothing yet"
    );

    // 10 s later: curl received 100 KiB and sent 200 KiB; eth0 moved 200 KiB each way
    // (lo's traffic is in neither figure).
    fake.set_uptime(1010.0);
    fake.set_net(&[("lo", 9_999_999, 9_999_999), ("eth0", 204_800, 204_800)]);
    socks.set(&[(1, 7, 102_400, 204_800), (2, 8, 0, 0)]);
    let sample = s.sample(at(1010), true).expect("second");
    let curl = live(&sample, 100);
    assert!(close(curl.net_in_kib_per_sec, 10.0), "{curl:?}");
    assert!(close(curl.net_out_kib_per_sec, 20.0), "{curl:?}");
    let idle = live(&sample, 101);
    assert_eq!(
        (idle.net_in_kib_per_sec, idle.net_out_kib_per_sec),
        (0.0, 0.0)
    );
    let a = sample.vm.net_attribution.expect("measured");
    assert!(close(a.attributed_in_kib_per_sec, 10.0), "{a:?}");
    assert!(close(a.attributed_out_kib_per_sec, 20.0), "{a:?}");
    assert!(close(a.unattributed_in_kib_per_sec, 10.0), "{a:?}");
    assert!(close(a.unattributed_out_kib_per_sec, 0.0), "{a:?}");

    // A process started 5 s ago with a new socket: its rate is over its age, as its CPU's.
    fake.set_uptime(1020.0);
    let start_ticks = 1015 * s.clk_tck;
    fake.set_proc(&FakeProc::new(102, "wget", start_ticks));
    hold_socket(&fake, 102, 4, 9);
    socks.set(&[(1, 7, 102_400, 204_800), (2, 8, 0, 0), (3, 9, 51_200, 0)]);
    let sample = s.sample(at(1020), true).expect("third");
    let wget = live(&sample, 102);
    assert!(close(wget.net_in_kib_per_sec, 10.0), "{wget:?}");
    assert_eq!(live(&sample, 100).net_in_kib_per_sec, 0.0);
    let a = sample.vm.net_attribution.expect("measured");
    assert!(
        close(a.attributed_in_kib_per_sec, 5.0),
        "VM figure over the tick: {a:?}"
    );

    // Process sampling off: not measured.
    let off = s.sample(at(1030), false).expect("off");
    assert_eq!(off.vm.net_attribution, None);
    // Back on: a baseline again, whatever the counters did meanwhile.
    socks.set(&[(1, 7, 999_999_999, 204_800)]);
    let on = s.sample(at(1040), true).expect("on");
    assert_eq!(live(&on, 100).net_in_kib_per_sec, 0.0);
}

#[test]
fn attribution_can_be_turned_off() {
    let fake = Fake::new();
    fake.set_proc(&FakeProc::new(100, "curl", 100));
    hold_socket(&fake, 100, 3, 7);
    let socks = Sockets::default();
    let mut s = sampler(&fake);
    s.net = netflow::NetFlow::with_source(Box::new(socks.clone()));
    s.set_net_attribution(false);
    socks.set(&[(1, 7, 0, 0)]);
    let sample = s.sample(at(1000), true).expect("sample");
    assert_eq!(sample.vm.net_attribution, None);
    assert_eq!(s.net_stats().scans, 0);
}

// ---- Issue 13: truth in the guest -------------------------------------------------------------

/// `cpu` line with user, idle and steal ticks (and guest ticks inside user).
fn set_cpu_steal(fake: &Fake, user: u64, idle: u64, steal: u64, guest: u64) {
    let text = format!(
        "cpu  {user} 0 0 {idle} 0 0 0 {steal} {guest} 0\ncpu0 0 0 0 0 0 0 0 0 0 0\ncpu1 0 0 0 0 0 0 0 0 0 0\n\
         btime {BTIME}\n"
    );
    fake.write("proc/stat", text.as_bytes());
}

#[test]
fn steal_is_excluded_from_cpu_util_and_reported_apart() {
    let fake = Fake::new();
    let hz = sampler(&fake).clk_tck;
    set_cpu_steal(&fake, 0, 0, 0, 0);
    let mut p = FakeProc::new(100, "busy", 0);
    fake.set_proc(&p);
    let mut s = sampler(&fake);
    let (_, first) = s.sample_ext(at(1000), true).expect("first");
    assert_eq!(first.vm.cpu_steal_pct, None, "no baseline yet");

    // 10 s on 2 CPUs = 20 CPU-s: 25 % user (5 CPU-s, 1 of them guest), 50 % steal, 25 % idle.
    fake.set_uptime(1010.0);
    set_cpu_steal(&fake, 5 * hz, 5 * hz, 10 * hz, hz);
    p.utime = 5 * hz;
    fake.set_proc(&p);
    let (sample, ext) = s.sample_ext(at(1010), true).expect("second");
    assert!(close(sample.vm.cpu_pct, 25.0), "{}", sample.vm.cpu_pct);
    assert_eq!(
        ext.vm.cpu_steal_pct.map(|v| (v * 1e6).round() / 1e6),
        Some(50.0)
    );
    // The process that used the guest's CPU sums to the VM's cpu_util.
    assert!(close(live(&sample, 100).cpu_pct, 25.0));
}

#[test]
fn a_reaped_childs_io_and_cpu_appear_once() {
    let fake = Fake::new();
    let hz = sampler(&fake).clk_tck;
    let mut parent = FakeProc::new(100, "sh", 0);
    let mut child = FakeProc::new(101, "writer", 50);
    child.ppid = 100;
    fake.set_proc(&parent);
    fake.set_proc(&child);
    let mut s = sampler(&fake);
    s.sample(at(1000), true).expect("first");

    // The child writes 30 MiB over 10 s: its records show it, the parent's nothing.
    let mib = 1024 * 1024;
    fake.set_uptime(1010.0);
    child.io = Some((0, 30 * mib));
    child.utime = 2 * hz;
    fake.set_proc(&child);
    let sample = s.sample(at(1010), true).expect("second");
    assert!(close(live(&sample, 101).disk_write_kib_per_sec, 3072.0));
    assert_eq!(live(&sample, 100).disk_write_kib_per_sec, 0.0);

    // It writes 1 MiB more, exits and is reaped: the kernel folds its 31 MiB and 3 s of CPU into
    // the parent's counters. The parent is charged only what the child did after its last
    // sample; the child keeps its 30 MiB.
    fake.set_uptime(1020.0);
    fake.remove_proc(101);
    parent.io = Some((0, 31 * mib));
    parent.children_ticks = 3 * hz;
    fake.set_proc(&parent);
    let sample = s.sample(at(1020), true).expect("third");
    let p = live(&sample, 100);
    assert!(
        close(p.disk_write_kib_per_sec, 102.4),
        "{}",
        p.disk_write_kib_per_sec
    );
    assert!(close(p.cpu_pct, 5.0), "1 CPU-s of 20: {}", p.cpu_pct);
    assert_eq!(exits(&sample).len(), 1);

    // Next tick: nothing more for anyone.
    fake.set_uptime(1030.0);
    let sample = s.sample(at(1030), true).expect("fourth");
    assert_eq!(live(&sample, 100).disk_write_kib_per_sec, 0.0);

    // A child that lived and died between two samples is charged to its reaper, all of it.
    fake.set_uptime(1040.0);
    parent.io = Some((0, 41 * mib));
    fake.set_proc(&parent);
    let sample = s.sample(at(1040), true).expect("fifth");
    assert!(close(live(&sample, 100).disk_write_kib_per_sec, 1024.0));
}

#[test]
fn a_child_reaped_after_the_parent_was_read_is_taken_from_the_next_tick() {
    // The parent (lower pid, read first) had not yet reaped the child when it was read; the
    // child was gone by the time its turn came. The fold shows up in the parent's next tick.
    let fake = Fake::new();
    let mut parent = FakeProc::new(100, "sh", 0);
    let mut child = FakeProc::new(101, "writer", 50);
    child.ppid = 100;
    child.io = Some((0, 10 * 1024 * 1024));
    fake.set_proc(&parent);
    fake.set_proc(&child);
    let mut s = sampler(&fake);
    s.sample(at(1000), true).expect("first");
    fake.set_uptime(1010.0);
    fake.remove_proc(101);
    let sample = s.sample(at(1010), true).expect("second");
    assert_eq!(live(&sample, 100).disk_write_kib_per_sec, 0.0);
    fake.set_uptime(1020.0);
    parent.io = Some((0, 10 * 1024 * 1024));
    fake.set_proc(&parent);
    let sample = s.sample(at(1020), true).expect("third");
    assert_eq!(live(&sample, 100).disk_write_kib_per_sec, 0.0);
    // And the debt is not kept beyond that: later writes count.
    fake.set_uptime(1030.0);
    parent.io = Some((0, 20 * 1024 * 1024));
    fake.set_proc(&parent);
    let sample = s.sample(at(1030), true).expect("fourth");
    assert!(close(live(&sample, 100).disk_write_kib_per_sec, 1024.0));
}

#[test]
fn a_zombie_main_thread_takes_its_rss_from_a_live_thread() {
    let fake = Fake::new();
    let mut p = FakeProc::new(100, "worker", 0);
    p.rss_pages = 1000;
    p.threads = 2;
    fake.set_proc(&p);
    let mut s = sampler(&fake);
    let first = s.sample(at(1000), true).expect("first");
    let want = live(&first, 100).mem_pct;
    assert!(want > 0.0);

    // The main thread exits: state Z, no RSS in its stat; thread 105 keeps the memory.
    p.state = 'Z';
    p.rss_pages = 0;
    p.tasks = vec![(100, 0), (105, 1000)];
    fake.set_proc(&p);
    fake.set_uptime(1010.0);
    let sample = s.sample(at(1010), true).expect("second");
    assert!(close(live(&sample, 100).mem_pct, want));

    // An ordinary zombie (no thread left) is 0, and no task directory is needed for it.
    let mut z = FakeProc::new(200, "defunct", 0);
    z.state = 'Z';
    fake.set_proc(&z);
    fake.set_uptime(1020.0);
    let sample = s.sample(at(1020), true).expect("third");
    assert_eq!(live(&sample, 200).mem_pct, 0.0);
    assert!(close(live(&sample, 100).mem_pct, want));
}

#[test]
fn setproctitle_titles_name_the_executable() {
    let fake = Fake::new();
    let mut p = FakeProc::new(100, "chromium-browse", 0);
    p.cmdline = b"chromium-browser --type=renderer --enable-pinch\0\0\0\0\0\0".to_vec();
    fake.set_proc(&p);
    let mut s = sampler(&fake);
    let sample = s.sample(at(1000), true).expect("first");
    assert_eq!(live(&sample, 100).cmd, "chromium-browser");
}

#[test]
fn unreadable_figures_are_flagged_and_counted() {
    let fake = Fake::new();
    let mut denied = FakeProc::new(100, "secret", 0);
    denied.io = None;
    fake.set_proc(&denied);
    fake.set_proc(&FakeProc::new(101, "open", 0));
    let mut s = sampler(&fake);
    // A working (empty) socket source, whatever this machine's sock_diag allows: only the disk
    // figures are unreadable here.
    s.net = netflow::NetFlow::with_source(Box::new(Sockets::default()));
    s.sample(at(1000), true).expect("first");
    fake.set_uptime(1010.0);
    let (sample, ext) = s.sample_ext(at(1010), true).expect("second");
    assert_eq!(ext.vm.unreadable_procs, Some(1));
    assert_eq!(ext.processes.len(), 1);
    let (i, flags) = &ext.processes[0];
    assert_eq!(procs(&sample)[*i].pid, 100);
    assert_eq!(flags.unreadable, vmmon_common::wire::ext::DISK_FIELDS);
    // Without process sampling there is no count.
    let (_, ext) = s.sample_ext(at(1011), false).expect("vm only");
    assert_eq!(ext.vm.unreadable_procs, None);
}

#[test]
fn vm_network_counts_device_interfaces_once_with_running_totals() {
    let fake = Fake::new();
    let class = fake.sys().join("class/net");
    fs::create_dir_all(&class).expect("mkdir");
    for (name, target) in [
        (
            "eth0",
            "../../devices/pci0000:00/0000:00:03.0/virtio2/net/eth0",
        ),
        ("veth1", "../../devices/virtual/net/veth1"),
        ("br0", "../../devices/virtual/net/br0"),
    ] {
        std::os::unix::fs::symlink(target, class.join(name)).expect("symlink");
    }
    fake.set_net(&[("eth0", 1000, 100), ("veth1", 0, 0), ("br0", 0, 0)]);
    let mut s = sampler(&fake);
    let first = s.sample(at(1000), false).expect("first");
    assert_eq!(
        (first.vm.rx_bytes_total, first.vm.tx_bytes_total),
        (1000, 100)
    );
    assert_eq!(s.inventory(&[]).1.net_interfaces_counted, ["eth0"]);

    // A container's 10 MiB forwarded: veth rx + bridge rx + eth0 tx. Only eth0 counts.
    let mib = 1024 * 1024;
    fake.set_uptime(1010.0);
    fake.set_net(&[
        ("eth0", 1000, 100 + 10 * mib),
        ("veth1", 10 * mib, 0),
        ("br0", 10 * mib, 0),
        // And an interface moved in with 200 MB of counters adds nothing.
        ("eth1", 200_000_000, 200_000_000),
    ]);
    let sample = s.sample(at(1010), false).expect("second");
    assert_eq!(sample.vm.net_in_kib_per_sec, 0.0);
    assert!(close(sample.vm.net_out_kib_per_sec, 1024.0));
    assert_eq!(
        (sample.vm.rx_bytes_total, sample.vm.tx_bytes_total),
        (1000, 100 + 10 * mib)
    );

    // Glob rules: include replaces the device rule.
    s.set_net_selector(ifaces::NetSelector::new(&["veth*".into()], &[]).expect("globs"));
    assert_eq!(s.inventory(&[]).1.net_interfaces_counted, ["veth1"]);
}

// ---- Issue 15: old kernels degrade to null figures, never to made-up zeros -------------------

/// Log lines captured from the sampler (the warnings must come once, not once per tick).
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }

    /// Runs `f` with this buffer as the log (WARN and above).
    fn run<T>(&self, f: impl FnOnce() -> T) -> T {
        let me = self.clone();
        let sub = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || me.clone())
            .finish();
        tracing::subscriber::with_default(sub, f)
    }
}

/// A `sock_diag` answer as the kernel sends it: one `SOCK_DIAG_BY_FAMILY` message per socket
/// with an `INET_DIAG_INFO` of `info_len` bytes (the kernel's `sizeof(struct tcp_info)`), then
/// `NLMSG_DONE`; parsed by the agent's own datagram parser.
#[derive(Debug)]
struct KernelDump {
    info_len: usize,
    /// `(cookie, inode, bytes_acked, bytes_received, bytes_sent)`.
    socks: Vec<(u64, u32, u64, u64, u64)>,
}

impl KernelDump {
    fn datagram(&self) -> Vec<u8> {
        let msg = |kind: u16, payload: &[u8]| {
            let mut m = Vec::new();
            m.extend_from_slice(&(16 + payload.len() as u32).to_ne_bytes());
            m.extend_from_slice(&kind.to_ne_bytes());
            m.extend_from_slice(&0x300u16.to_ne_bytes());
            m.extend_from_slice(&1u32.to_ne_bytes()); // seq
            m.extend_from_slice(&0u32.to_ne_bytes());
            m.extend_from_slice(payload);
            m
        };
        let mut d = Vec::new();
        for &(cookie, inode, acked, received, sent) in &self.socks {
            // inet_diag_msg (72 bytes): AF_INET, ESTABLISHED, 10.0.0.2 → 10.0.0.9.
            let mut p = vec![0u8; 72];
            p[0] = libc::AF_INET as u8;
            p[1] = 1;
            p[8..12].copy_from_slice(&[10, 0, 0, 2]);
            p[24..28].copy_from_slice(&[10, 0, 0, 9]);
            p[44..48].copy_from_slice(&(cookie as u32).to_ne_bytes());
            p[48..52].copy_from_slice(&((cookie >> 32) as u32).to_ne_bytes());
            p[68..72].copy_from_slice(&inode.to_ne_bytes());
            // struct tcp_info: bytes_acked at 120, bytes_received at 128, bytes_sent at 200.
            let mut info = vec![0u8; self.info_len.max(208)];
            info[120..128].copy_from_slice(&acked.to_ne_bytes());
            info[128..136].copy_from_slice(&received.to_ne_bytes());
            info[200..208].copy_from_slice(&sent.to_ne_bytes());
            info.truncate(self.info_len);
            p.extend_from_slice(&((4 + info.len()) as u16).to_ne_bytes());
            p.extend_from_slice(&2u16.to_ne_bytes()); // INET_DIAG_INFO
            p.extend_from_slice(&info);
            d.extend_from_slice(&msg(20, &p));
        }
        d.extend_from_slice(&msg(3, &0i32.to_ne_bytes()));
        d
    }
}

impl netflow::SocketSource for KernelDump {
    fn dump(&mut self, out: &mut Vec<sockdiag::TcpSocket>) -> std::io::Result<()> {
        out.clear();
        sockdiag::parse_datagram(&self.datagram(), 1, out).map(|_| ())
    }
}

/// `/proc/meminfo` of a 3.10 kernel (CentOS 7): no `MemAvailable`.
const MEMINFO_3_10: &[u8] = b"MemTotal:        4194304 kB\nMemFree:          524288 kB\n\
Buffers:           65536 kB\nCached:          1048576 kB\nSwapCached:            0 kB\n\
Active:          2097152 kB\nInactive:         786432 kB\nSlab:             262144 kB\n\
SReclaimable:     196608 kB\nSUnreclaim:        65536 kB\nCommitLimit:     2097152 kB\n";

/// `/proc/diskstats` line of a 3.10 kernel (14 fields) and of a 4.18 kernel (18: discards).
fn diskstats_line(fields: usize, read: u64, written: u64) -> String {
    let mut line = format!(" 253       0 vda 10 0 {read} 5 20 0 {written} 7 0 9 12");
    if fields == 18 {
        line.push_str(" 0 0 0 0");
    }
    line.push('\n');
    line
}

/// A fake tree in the layout of a 3.10 kernel: 14-field diskstats, no `MemAvailable`, no
/// `/proc/PID/io` (built without task I/O accounting), a 104-byte `tcp_info` (no byte
/// counters).
fn kernel_3_10_tree() -> (Fake, Sampler) {
    let fake = Fake::new();
    fake.write("proc/meminfo", MEMINFO_3_10);
    fake.write("proc/diskstats", diskstats_line(14, 0, 0).as_bytes());
    for (pid, comm) in [(100, "httpd"), (101, "sshd")] {
        let mut p = FakeProc::new(pid, comm, 100);
        p.rss_pages = 1024;
        fake.set_proc(&p);
        fs::remove_file(fake.proc().join(format!("{pid}/io"))).expect("rm io");
    }
    hold_socket(&fake, 100, 3, 7);
    let mut s = sampler(&fake);
    s.net = netflow::NetFlow::with_source(Box::new(KernelDump {
        info_len: 104,
        socks: vec![(1, 7, 0, 0, 0)],
    }));
    (fake, s)
}

#[test]
fn kernel_3_10_layout_gives_null_figures_and_one_warning_each() {
    let log = Captured::default();
    let (fake, mut s) = kernel_3_10_tree();
    let ticks = log.run(|| {
        let mut ticks = Vec::new();
        for (t, written) in [(1000u64, 0u64), (1010, 20_480), (1020, 40_960)] {
            fake.set_uptime(t as f64);
            fake.write("proc/diskstats", diskstats_line(14, 0, written).as_bytes());
            ticks.push(s.sample_ext(at(t), true).expect("sample"));
        }
        ticks
    });
    let (sample, ext) = &ticks[2];
    // Memory: estimated from MemFree + Buffers + Cached + SReclaimable, not 0 and not 100 %.
    let available = 524_288 + 65_536 + 1_048_576 + 196_608;
    let want = (4_194_304.0 - f64::from(available)) / 4_194_304.0 * 100.0;
    assert!(
        close(sample.vm.mem_pct, want),
        "{} vs {want}",
        sample.vm.mem_pct
    );
    // Disk (VM): 14-field diskstats read; 20,480 sectors of 512 B in 10 s = 1,024 KiB/s.
    assert!(
        close(sample.vm.disk_write_kib_per_sec, 1024.0),
        "{:?}",
        sample.vm
    );
    // Every process is still reported, with its CPU and memory...
    assert_eq!(procs(sample).len(), 2, "{:#?}", sample.processes);
    assert!(live(sample, 100).mem_pct > 0.0);
    // ...and its disk and network figures null (named unreadable), not 0.
    assert_eq!(sample.vm.net_attribution, None);
    assert_eq!(ext.vm.unreadable_procs, Some(2));
    let mut want_null: Vec<&str> = vmmon_common::wire::ext::DISK_FIELDS.to_vec();
    want_null.extend(vmmon_common::wire::ext::NET_FIELDS);
    assert_eq!(ext.processes.len(), 2);
    for (_, flags) in &ext.processes {
        assert_eq!(flags.unreadable, want_null);
    }
    // One warning per missing feature over three ticks.
    let text = log.text();
    for what in [
        "no MemAvailable",
        "no /proc/PID/io",
        "no socket byte counters",
    ] {
        assert_eq!(text.matches(what).count(), 1, "{what:?} once in:\n{text}");
    }
}

#[test]
fn kernel_4_18_layout_counts_with_acked_bytes() {
    // RHEL 8: MemAvailable, 18-field diskstats, /proc/PID/io, a 200-byte tcp_info (bytes
    // received, but bytes_acked instead of bytes_sent, which came in 4.19).
    let log = Captured::default();
    let fake = Fake::new();
    fake.set_mem(4 * 1024 * 1024, 1024 * 1024);
    let mut p = FakeProc::new(100, "curl", 100);
    fake.set_proc(&p);
    hold_socket(&fake, 100, 3, 7);
    let mut s = sampler(&fake);
    let dump = |acked: u64, received: u64| KernelDump {
        info_len: 200,
        socks: vec![(1, 7, acked, received, 999_999)],
    };
    let ticks = log.run(|| {
        fake.write("proc/diskstats", diskstats_line(18, 0, 0).as_bytes());
        s.net = netflow::NetFlow::with_source(Box::new(dump(0, 0)));
        let first = s.sample_ext(at(1000), true).expect("first");
        fake.set_uptime(1010.0);
        fake.write("proc/diskstats", diskstats_line(18, 20_480, 0).as_bytes());
        (p.io, p.utime) = (Some((1024 * 1024, 0)), 0);
        fake.set_proc(&p);
        // The source is replaced by one with grown counters (the followed state stays).
        s.net
            .replace_source_for_test(Box::new(dump(102_400, 204_800)));
        let second = s.sample_ext(at(1010), true).expect("second");
        vec![first, second]
    });
    let (sample, ext) = &ticks[1];
    assert!(close(sample.vm.mem_pct, 75.0));
    assert!(
        close(sample.vm.disk_read_kib_per_sec, 1024.0),
        "{:?}",
        sample.vm
    );
    let curl = live(sample, 100);
    assert!(close(curl.disk_read_kib_per_sec, 102.4), "{curl:?}");
    assert!(close(curl.net_in_kib_per_sec, 20.0), "{curl:?}");
    assert!(
        close(curl.net_out_kib_per_sec, 10.0),
        "sent = acked: {curl:?}"
    );
    assert!(
        ext.processes.is_empty(),
        "nothing null: {:?}",
        ext.processes
    );
    assert!(sample.vm.net_attribution.is_some());
    assert!(log.text().is_empty(), "no warning on 4.18: {}", log.text());
}
