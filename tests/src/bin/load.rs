//! `vmmon-test-load NAME MODE [ARGS]`: a process with a chosen name that makes a known load, for
//! the end-to-end tests. Modes: `burn` (one core, forever), `write MB DIR` (MB megabytes in 1 MB
//! fsynced chunks every 100 ms, then idle), `idle`.

use std::io::Write;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: vmmon-test-load NAME burn|idle|write MB DIR");
        std::process::exit(2);
    }
    // The process name the agent reports (`cmd`), at most 15 bytes.
    let _ = std::fs::write("/proc/self/comm", &args[1]);
    match args[2].as_str() {
        "burn" => {
            let mut x: u64 = 0;
            loop {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                std::hint::black_box(x);
            }
        }
        "write" => {
            let mb: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(20);
            let dir = args.get(4).cloned().unwrap_or_else(|| ".".into());
            let path = std::path::Path::new(&dir).join(format!("load-{}.bin", std::process::id()));
            let mut f = std::fs::File::create(&path).expect("create");
            let chunk = vec![0x5au8; 1024 * 1024];
            for _ in 0..mb {
                f.write_all(&chunk).expect("write");
                f.sync_data().expect("fsync");
                std::thread::sleep(Duration::from_millis(100));
            }
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        _ => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
    }
}
