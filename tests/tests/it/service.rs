//! Running as a service: config validation, systemd notifications, SIGHUP reload.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use vmmon_tests::*;

const T: Duration = Duration::from_secs(60);

fn fixtures(kind: &str) -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/agent")
        .join(kind);
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    assert!(!v.is_empty());
    v
}

#[test]
fn agent_check_config_accepts_valid_and_names_each_problem() {
    for path in fixtures("valid") {
        let out = Command::new(bin_path("vmmon-agent"))
            .arg("--config")
            .arg(&path)
            .arg("--check-config")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "config ok");
    }
    for path in fixtures("invalid") {
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text
            .lines()
            .next()
            .unwrap()
            .strip_prefix("# expect: ")
            .unwrap();
        let out = Command::new(bin_path("vmmon-agent"))
            .arg("--config")
            .arg(&path)
            .arg("--check-config")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{} must be refused", path.display());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(expect),
            "{}: {err:?} should contain {expect:?}",
            path.display()
        );
    }
    // A missing explicit file is an error naming the path.
    let out = Command::new(bin_path("vmmon-agent"))
        .args(["--config", "/nonexistent/agent.toml", "--check-config"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/agent.toml"));
}

#[test]
fn collector_check_config() {
    let (_d, good) = collector_config("timezone = \"Asia/Shanghai\"\n");
    let ok = Command::new(bin_path("vmmon-collector"))
        .args(["serve", "--check-config", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(ok.status.success());
    let (_d2, bad) = collector_config("timezone = \"Mars/Base\"\nsession_idle_secs = 0\n");
    let out = Command::new(bin_path("vmmon-collector"))
        .args(["serve", "--check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Mars/Base") && err.contains("session_idle_secs"),
        "all problems at once: {err}"
    );
}

fn recv_until(sock: &UnixDatagram, want: &str) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = std::time::Instant::now() + T;
    while std::time::Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]);
            if msg.lines().any(|l| l == want) {
                return true;
            }
        }
    }
    false
}

#[test]
fn agent_notifies_ready_and_pets_the_watchdog() {
    let c = Collector::start();
    let token = c.create_token("p1", "r1");
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut agent = Agent::prepare(&c.rpc_url(), &token, "vm-svc-1", 1, &[]);
    agent.set_env("NOTIFY_SOCKET", sock_path.to_str().unwrap());
    agent.set_env("WATCHDOG_USEC", "400000");
    agent.spawn();
    assert!(
        recv_until(&sock, "READY=1"),
        "READY=1 after the first sample: {}",
        agent.log()
    );
    assert!(
        recv_until(&sock, "WATCHDOG=1"),
        "watchdog pets from the sampling loop"
    );
    assert!(recv_until(&sock, "WATCHDOG=1"), "and they keep coming");
}

#[test]
fn collector_notifies_ready() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let child = Command::new(bin_path("vmmon-collector"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("data"))
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000")
        .env("VMMON_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = ChildGuard(child);
    assert!(recv_until(&sock, "READY=1"));
    assert!(
        recv_until(&sock, "WATCHDOG=1"),
        "watchdog pets after store round-trips"
    );
}

#[test]
fn agent_sighup_swaps_in_a_valid_config_and_keeps_the_old_on_error() {
    let a = Collector::start();
    let b = Collector::start();
    let token_a = a.create_token("p1", "r1");
    let token_b = b.create_token("p1", "r1");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    let write = |url: &str, token: &str| {
        std::fs::write(&cfg, format!("collector = \"{url}\"\ntoken = \"{token}\"\ninterval_secs = 1\ninstance_id = \"vm-hup-1\"\n")).unwrap();
    };
    write(&a.rpc_url(), &token_a);
    let mut agent = Agent::prepare(&a.rpc_url(), &token_a, "vm-hup-1", 1, &[]);
    let state = agent.state.path().display().to_string();
    agent.set_args(&["--config", cfg.to_str().unwrap(), "--state-dir", &state]);
    agent.spawn();
    let count = |c: &Collector| {
        c.query_i64(
            "SELECT COUNT(*) FROM vm_samples WHERE instance_id = 'vm-hup-1'",
            &[],
        )[0]
    };
    assert!(
        wait_until(T, || count(&a) > 0),
        "reports to A: {}",
        agent.log()
    );

    write(&b.rpc_url(), &token_b);
    signal(agent.pid().unwrap(), libc::SIGHUP);
    assert!(
        wait_until(T, || count(&b) > 0),
        "after SIGHUP it reports to B: {}",
        agent.log()
    );

    std::fs::write(&cfg, "collector = \"http://wrong\"\n").unwrap();
    signal(agent.pid().unwrap(), libc::SIGHUP);
    assert!(
        wait_until(T, || agent.log().contains("keeping the running one")),
        "{}",
        agent.log()
    );
    let n = count(&b);
    assert!(
        wait_until(T, || count(&b) >= n + 2),
        "still reporting to B with the old config"
    );
    assert!(agent.is_running());
}

/// Reads one HTTP/1.1 response (head and a Content-Length body) from a keep-alive connection.
fn read_response(conn: &mut std::io::BufReader<std::net::TcpStream>) -> (u16, String) {
    use std::io::{BufRead, Read};
    let mut status = String::new();
    conn.read_line(&mut status).unwrap();
    let code: u16 = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status line: {status:?}"));
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        conn.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; len];
    conn.read_exact(&mut body).unwrap();
    (code, String::from_utf8_lossy(&body).into_owned())
}

/// The inode of the socket listening on `addr` (from /proc/net/tcp): a re-executed or re-bound
/// listener is a new socket with a new inode, even at the same pid and port.
fn listener_inode(addr: std::net::SocketAddr) -> Option<u64> {
    let std::net::SocketAddr::V4(v4) = addr else {
        panic!("IPv4 only: {addr}")
    };
    let want = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(v4.ip().octets()),
        v4.port()
    );
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f[1] == want && f[3] == "0A")
        .and_then(|f| f[9].parse().ok())
}

/// Connects to `addr` in a loop until stopped; counts the refused attempts.
struct Prober {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(u32, u32)>,
}

impl Prober {
    fn start(addr: std::net::SocketAddr) -> Prober {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut ok, mut refused) = (0, 0);
            while !flag.load(Ordering::Relaxed) {
                match std::net::TcpStream::connect_timeout(&addr, T) {
                    Ok(_) => ok += 1,
                    Err(_) => refused += 1,
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            (ok, refused)
        });
        Prober { stop, thread }
    }

    /// (connections accepted, refused).
    fn finish(self) -> (u32, u32) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

#[test]
fn collector_sighup_reloads_in_place_and_drops_no_connection() {
    use std::io::Write;
    use vmmon_common::rpc::MonitorApiClient;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("collector.toml");
    std::fs::write(&cfg, "max_body_bytes = 4096\n").unwrap();
    let mut c = Collector::start_with(&["--config", cfg.to_str().unwrap()]);
    let listener = listener_inode(c.addr).expect("the collector's listening socket");
    // An agent connection (WebSocket JSON-RPC), registered before the reload.
    let token = c.create_token("p1", "r1");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let agent = rt.block_on(agent_client(&c.rpc_url(), &token));
    rt.block_on(agent.register(register_request("vm-hup-c", 30)))
        .unwrap();
    let big = format!("{{\"method\": 458753, \"pad\": \"{}\"}}", "x".repeat(6000));
    let too_big = |c: &Collector| {
        c.legacy_raw(&big)["message"]
            .as_str()
            .unwrap()
            .contains("exceeds the limit")
    };
    assert!(too_big(&c));

    // A keep-alive connection that has been answered once, and a request in flight: its head and
    // half of its body are sent before the reload, the rest after.
    let open = || {
        let s = std::net::TcpStream::connect(c.addr).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        s
    };
    let mut idle = std::io::BufReader::new(open());
    let health = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", c.addr);
    idle.get_mut().write_all(health.as_bytes()).unwrap();
    assert_eq!(read_response(&mut idle).0, 200);
    let body = r#"{"method": 458753, "data": {"user_name": "admin", "password": "nope"}}"#;
    let (first, rest) = body.split_at(20);
    let mut in_flight = std::io::BufReader::new(open());
    write!(
        in_flight.get_mut(),
        "POST /wsgi_app.py HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n\r\n{first}",
        c.addr,
        body.len()
    )
    .unwrap();

    std::fs::write(&cfg, "max_body_bytes = 1048576\n").unwrap();
    let pid = c.pid().unwrap();
    let prober = Prober::start(c.addr);
    signal(pid, libc::SIGHUP);
    assert!(
        wait_until(T, || std::panic::catch_unwind(|| !too_big(&c))
            .unwrap_or(false)),
        "new cap applies after SIGHUP"
    );
    let (accepted, refused) = prober.finish();
    assert_eq!(
        listener_inode(c.addr),
        Some(listener),
        "the same listening socket serves on (no re-exec, no re-bind)"
    );
    assert!(c.is_running(), "the process we started still runs");
    assert_eq!(
        refused,
        0,
        "the port refused {refused} of {} connections during the reload",
        accepted + refused
    );
    assert!(agent.is_connected(), "the agent connection survived");
    rt.block_on(agent.register(register_request("vm-hup-c", 30)))
        .expect("and still answers");
    // Both connections survived the reload: the in-flight request completes and is answered,
    // the idle one answers its next request.
    in_flight.get_mut().write_all(rest.as_bytes()).unwrap();
    let (code, answer) = read_response(&mut in_flight);
    assert_eq!(code, 200);
    assert!(answer.contains("authentication failed"), "{answer}");
    idle.get_mut().write_all(health.as_bytes()).unwrap();
    assert_eq!(
        read_response(&mut idle),
        (200, r#"{"status":"ok"}"#.to_string())
    );

    std::fs::write(&cfg, "max_body_bytes = \"lots\"\n").unwrap();
    signal(pid, libc::SIGHUP);
    assert!(
        !too_big(&c),
        "invalid file ignored, old config still serving"
    );
    // Signals are handled in order: once a later valid file (a 5000-byte cap) applies, the
    // invalid one has been handled, and the collector is still serving.
    std::fs::write(&cfg, "max_body_bytes = 5000\n").unwrap();
    signal(pid, libc::SIGHUP);
    assert!(
        wait_until(T, || std::panic::catch_unwind(|| too_big(&c))
            .unwrap_or(false)),
        "a valid file after an invalid one applies"
    );
    assert!(c.is_running());
    assert_eq!(listener_inode(c.addr), Some(listener));
    assert_eq!(c.healthz(), 200);
    idle.get_mut().write_all(health.as_bytes()).unwrap();
    assert_eq!(read_response(&mut idle).0, 200, "still the same connection");
}
