//! `vmmon-guest-load MODE [ARGS]`: processes in the shapes real VMs hold, for the issue-13
//! end-to-end tests (`tests/it/guest_truth.rs`). Modes:
//! * `reaper DIR MB DELAY_MS`: a parent (`gt-reaper`) that runs a child (`gt-child`) which
//!   sleeps DELAY_MS, writes MB MiB to DIR (fsynced, one MiB every 100 ms when DELAY_MS > 0,
//!   else at once) and exits; the parent `wait`s for it, prints `reaped PID`, then idles;
//! * `child DIR MB DELAY_MS`: the child above (it also waits DELAY_MS after its last write);
//! * `zombie-leader MB`: a worker thread keeps MB MiB resident and burns CPU while the main
//!   thread exits alone (`exit(2)`, as `pthread_exit` does; the leader becomes a zombie, the process lives on);
//! * `title TITLE`: rewrites its argument area to TITLE, as `setproctitle` does (one string,
//!   the rest zeroed), prints `titled`, then idles. Start it with enough argument bytes (pad);
//! * `burn PCT DELAY_MS`: after DELAY_MS idle, PCT % of one core (busy then asleep in 20 ms
//!   periods), until killed;
//! * `write-rate KIB_PER_SEC DIR DELAY_MS`: after DELAY_MS idle, writes to a file in DIR at that
//!   pace (64 KiB chunks, fsynced), until killed;
//! * `udp-send ADDR:PORT BYTES`: sends BYTES of UDP payload in 1,400-byte datagrams, then exits.
//!
//! Every idle mode ends by itself after 10 minutes.

use std::io::{Read, Seek, SeekFrom, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

const IDLE_LIMIT: Duration = Duration::from_secs(600);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    let num = |i: usize| arg(i).parse::<u64>().unwrap_or(0);
    match arg(1).as_str() {
        "reaper" => {
            set_comm("gt-reaper");
            let exe = std::env::current_exe().expect("exe");
            let mut child = Command::new(exe)
                .args(["child", &arg(2), &arg(3), &arg(4)])
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn child");
            let pid = child.id();
            child.wait().expect("wait");
            println!("reaped {pid}");
            std::io::stdout().flush().ok();
            idle();
        }
        "child" => {
            set_comm("gt-child");
            std::thread::sleep(Duration::from_millis(num(4)));
            let path = std::path::Path::new(&arg(2)).join(format!("gt-{}.bin", std::process::id()));
            let mut f = std::fs::File::create(&path).expect("create");
            let chunk = vec![0x5au8; 1024 * 1024];
            for _ in 0..num(3) {
                f.write_all(&chunk).expect("write");
                if num(4) > 0 {
                    f.sync_data().expect("fsync");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            f.sync_data().expect("fsync");
            let _ = std::fs::remove_file(&path);
            // Stay a moment after the last write, so a sample sees it before the reap.
            std::thread::sleep(Duration::from_millis(num(4)));
        }
        "zombie-leader" => {
            set_comm("gt-zombie");
            let mb = usize::try_from(num(2)).unwrap_or(0);
            std::thread::spawn(move || {
                let mut mem = vec![0u8; mb * 1024 * 1024];
                // Touch every page so it is resident.
                for i in (0..mem.len()).step_by(4096) {
                    mem[i] = 1;
                }
                let started = std::time::Instant::now();
                let mut x: u64 = 0;
                while started.elapsed() < IDLE_LIMIT {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                    let i = (x as usize >> 8) % mem.len().max(1);
                    std::hint::black_box(&mut mem[i..]);
                }
            });
            std::thread::sleep(Duration::from_millis(200));
            println!("leader exiting");
            std::io::stdout().flush().ok();
            // The raw exit(2) system call ends only the calling thread (exit_group(2) would end
            // them all). pthread_exit would unwind through Rust's `main`, which aborts.
            #[allow(unsafe_code)]
            // SAFETY: ends only the main thread; the worker keeps the process alive. Nothing on
            // this thread's stack is used afterwards and no lock is held.
            unsafe {
                libc::syscall(libc::SYS_exit, 0);
            }
        }
        "title" => {
            set_title(&arg(2));
            println!("titled");
            std::io::stdout().flush().ok();
            idle();
        }
        "burn" => {
            set_comm(&format!("gt-burn{}", num(2)));
            std::thread::sleep(Duration::from_millis(num(3)));
            let period = Duration::from_millis(20);
            let busy = period * u32::try_from(num(2).min(100)).unwrap_or(100) / 100;
            let started = std::time::Instant::now();
            let mut x: u64 = 0;
            while started.elapsed() < IDLE_LIMIT {
                let t = std::time::Instant::now();
                while t.elapsed() < busy {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                    std::hint::black_box(x);
                }
                if let Some(rest) = period.checked_sub(t.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
        }
        "write-rate" => {
            set_comm(&format!("gt-write{}", num(2)));
            std::thread::sleep(Duration::from_millis(num(4)));
            let path = std::path::Path::new(&arg(3)).join(format!("gt-{}.bin", std::process::id()));
            let mut f = std::fs::File::create(&path).expect("create");
            let chunk = vec![0x5au8; 64 * 1024];
            let started = std::time::Instant::now();
            let mut written: u64 = 0;
            while started.elapsed() < IDLE_LIMIT {
                // Keep the pace over the whole run, not per chunk.
                let due = started.elapsed().as_secs_f64() * num(2) as f64 * 1024.0;
                if (written as f64) < due {
                    if f.seek(SeekFrom::Start(written % (64 * 1024 * 1024)))
                        .is_ok()
                    {
                        f.write_all(&chunk).expect("write");
                        f.sync_data().expect("fsync");
                    }
                    written += chunk.len() as u64;
                } else {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        "udp-send" => {
            let sock = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
            sock.connect(arg(2)).expect("connect");
            let datagram = [0x33u8; 1400];
            let mut left = num(3);
            while left > 0 {
                let n = left.min(1400) as usize;
                // A refused datagram (ICMP unreachable from a previous one) is fine: retry.
                if sock.send(&datagram[..n]).is_ok() {
                    left -= n as u64;
                }
            }
        }
        other => {
            eprintln!("vmmon-guest-load: unknown mode {other:?}");
            std::process::exit(2);
        }
    }
}

fn set_comm(name: &str) {
    let _ = std::fs::write("/proc/self/comm", name);
}

fn idle() {
    std::thread::sleep(IDLE_LIMIT);
}

/// Writes `title` over the process's argument area (`arg_start`..`arg_end` of
/// `/proc/self/stat`, fields 48 and 49) through `/proc/self/mem`, zero-padded.
fn set_title(title: &str) {
    let mut stat = String::new();
    std::fs::File::open("/proc/self/stat")
        .and_then(|mut f| f.read_to_string(&mut stat))
        .expect("stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Field N is index N − 3 here.
    let start: u64 = fields[48 - 3].parse().expect("arg_start");
    let end: u64 = fields[49 - 3].parse().expect("arg_end");
    let len = usize::try_from(end - start).expect("len");
    let mut area = vec![0u8; len];
    let n = title.len().min(len.saturating_sub(1));
    area[..n].copy_from_slice(&title.as_bytes()[..n]);
    let mut mem = std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/self/mem")
        .expect("mem");
    mem.seek(SeekFrom::Start(start)).expect("seek");
    mem.write_all(&area).expect("write title");
}
