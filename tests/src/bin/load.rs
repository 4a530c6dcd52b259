//! `vmmon-test-load NAME MODE [ARGS]`: a process with a chosen name that makes a known load, for
//! the end-to-end tests. Modes:
//! * `burn`: one core, forever;
//! * `write MB DIR`: waits for a line (or EOF) on stdin, then writes MB megabytes in 1 MB
//!   fsynced chunks every 100 ms, then idles;
//! * `idle`;
//! * `peer PORT`: a TCP server on `0.0.0.0:PORT`. Each connection sends one request line:
//!   `sink` (the server reads and discards until EOF) or `source N` (it sends N bytes, paced,
//!   then waits for EOF);
//! * `send HOST PORT BYTES`: connects to a `peer`, waits for a line (or EOF) on stdin, sends
//!   `sink` and BYTES bytes paced, prints `done`, then idles with the connection open;
//! * `recv HOST PORT BYTES`: connects to a `peer`, waits for a line (or EOF) on stdin, asks for
//!   `source BYTES`, reads them, prints `done`, then idles with the connection open.
//!
//! Network modes keep their connection open to the end so the agent sees the last bytes: the
//! kernel's per-socket counters disappear with the socket. Paced sending is 64 KiB every 20 ms
//! (3.2 MiB/s), so a transfer spans several one-second samples.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

const CHUNK: usize = 64 * 1024;
const PACE: Duration = Duration::from_millis(20);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!(
            "usage: vmmon-test-load NAME burn|idle|write MB DIR|peer PORT|send HOST PORT BYTES|recv HOST PORT BYTES"
        );
        std::process::exit(2);
    }
    // The process name the agent reports (`cmd`), at most 15 bytes.
    let _ = std::fs::write("/proc/self/comm", &args[1]);
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    let num = |i: usize| arg(i).parse::<u64>().unwrap_or(0);
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
            wait_for_go();
            for _ in 0..mb {
                f.write_all(&chunk).expect("write");
                f.sync_data().expect("fsync");
                std::thread::sleep(Duration::from_millis(100));
            }
            idle();
        }
        "peer" => peer(&arg(3)),
        "send" => {
            let mut conn = connect(&arg(3), &arg(4));
            wait_for_go();
            conn.write_all(b"sink\n").expect("request");
            paced_write(&mut conn, num(5));
            println!("done");
            idle_with(conn);
        }
        "recv" => {
            let mut conn = connect(&arg(3), &arg(4));
            wait_for_go();
            let n = num(5);
            conn.write_all(format!("source {n}\n").as_bytes())
                .expect("request");
            let mut got = 0u64;
            let mut buf = vec![0u8; CHUNK];
            while got < n {
                match conn.read(&mut buf) {
                    Ok(0) => break,
                    Ok(k) => got += k as u64,
                    Err(e) => panic!("recv: {e}"),
                }
            }
            println!("done");
            idle_with(conn);
        }
        _ => idle(),
    }
}

fn idle() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn idle_with(conn: TcpStream) -> ! {
    let _keep = conn;
    idle()
}

fn connect(host: &str, port: &str) -> TcpStream {
    TcpStream::connect(format!("{host}:{port}"))
        .unwrap_or_else(|e| panic!("connect {host}:{port}: {e}"))
}

/// Blocks until a line (or EOF) arrives on stdin.
fn wait_for_go() {
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
}

fn paced_write(conn: &mut TcpStream, bytes: u64) {
    let chunk = vec![0xa5u8; CHUNK];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        conn.write_all(&chunk[..n]).expect("send");
        left -= n as u64;
        std::thread::sleep(PACE);
    }
    conn.flush().expect("flush");
}

fn peer(port: &str) -> ! {
    let listener =
        TcpListener::bind(format!("0.0.0.0:{port}")).unwrap_or_else(|e| panic!("bind {port}: {e}"));
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        std::thread::spawn(move || serve(conn));
    }
    idle()
}

fn serve(conn: TcpStream) {
    let Ok(write_half) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut words = line.split_whitespace();
    if let (Some("source"), Some(n)) = (words.next(), words.next()) {
        let mut w = write_half;
        paced_write(&mut w, n.parse().unwrap_or(0));
    }
    // Read (and discard) until the client closes.
    let mut buf = vec![0u8; CHUNK];
    while let Ok(k) = reader.read(&mut buf) {
        if k == 0 {
            break;
        }
    }
}
