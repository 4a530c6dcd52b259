//! Hostile load against the real collector, loopback only: every loop is bounded in count and
//! time and stops by itself. Each test asserts a bound (memory, connections closed, answers
//! still given), never a speed; the figures it prints are recorded in docs/benchmarks.md.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;
use vmmon_tests::*;

/// Peak resident memory of `pid` (`VmHWM` in `/proc/PID/status`), bytes.
fn peak_rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
}

fn healthz_ms(c: &Collector) -> f64 {
    let t = Instant::now();
    assert_eq!(c.healthz(), 200, "/healthz must keep answering");
    t.elapsed().as_secs_f64() * 1000.0
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// 2,000 wrong-password logins, 100 at once: without a bound every one would hold a 19 MiB argon2
/// buffer at the same time (gigabytes); with the password pool and the throttle the collector's
/// peak RSS stays under 150 MB and `/healthz` keeps answering.
#[test]
fn login_flood_keeps_memory_bounded() {
    let _x = exclusive();
    let c = Collector::start();
    let url = c.url("/wsgi_app.py");
    let (busy, throttled, refused) = std::thread::scope(|s| {
        let workers: Vec<_> = (0..100)
            .map(|w| {
                let url = url.clone();
                s.spawn(move || {
                    let mut counts = (0, 0, 0);
                    for i in 0..20 {
                        let body = json!({"method": 458753,
                            "data": {"user_name": format!("intruder-{w}-{i}"), "password": "guess"}});
                        let v: serde_json::Value = ureq::post(&url)
                            .timeout(Duration::from_secs(60))
                            .send_json(body)
                            .unwrap()
                            .into_json()
                            .unwrap();
                        assert_eq!(v["status_code"], 3, "{v}");
                        let m = v["message"].as_str().unwrap();
                        if m.contains("busy") {
                            counts.0 += 1;
                        } else if m.contains("too many failed logins") {
                            counts.1 += 1;
                        } else {
                            assert!(m.contains("authentication failed"), "{m}");
                            counts.2 += 1;
                        }
                    }
                    counts
                })
            })
            .collect();
        let mut health = Vec::new();
        while workers.iter().any(|w| !w.is_finished()) {
            health.push(healthz_ms(&c));
            std::thread::sleep(Duration::from_millis(20));
        }
        if !health.is_empty() {
            println!(
                "login flood: /healthz p50 {:.1} ms, p99 {:.1} ms over {} probes",
                percentile(&mut health, 0.5),
                percentile(&mut health, 0.99),
                health.len()
            );
        }
        workers
            .into_iter()
            .map(|w| w.join().unwrap())
            .fold((0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2))
    });
    let peak = peak_rss_bytes(c.pid().unwrap());
    println!(
        "login flood: {refused} checked and refused, {busy} busy, {throttled} throttled; \
         collector peak RSS {:.1} MB",
        peak as f64 / 1e6
    );
    assert_eq!(busy + throttled + refused, 2000);
    assert!(
        throttled > 0,
        "the address is throttled after repeated failures"
    );
    assert!(peak < 150_000_000, "peak RSS {peak} bytes");
}

/// Sockets that send half a request head, or a body one byte at a time, are closed by the
/// collector (header read timeout 10 s, body deadline 30 s), and while they are held `/healthz`
/// and a login still work.
#[test]
fn slow_clients_are_cut_off() {
    let c = Collector::start();
    let open = || {
        let s = TcpStream::connect(c.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(90))).unwrap();
        s
    };
    let mut partial: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut s = open();
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            s
        })
        .collect();
    let mut idle: Vec<TcpStream> = (0..50).map(|_| open()).collect();
    assert_eq!(c.healthz(), 200);
    assert!(!c.admin_session().is_empty());
    // The trickled body: a head promising 1,000 bytes, then one byte every second.
    let mut trickle = open();
    write!(
        trickle,
        "POST /wsgi_app.py HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{{"
    )
    .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut probe = [0u8; 512];
    trickle
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    while started.elapsed() < Duration::from_secs(90) {
        match trickle.read(&mut probe) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&probe[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
        if trickle.write_all(b" ").is_err() {
            break;
        }
    }
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(
        answer.contains("did not arrive within 30 s"),
        "the trickled body gets its answer: {answer:?}"
    );
    // Every held socket is closed by the server (EOF or reset), well before the 90 s read timeout.
    for s in partial.iter_mut().chain(idle.iter_mut()) {
        let mut buf = [0u8; 1024];
        let closed = loop {
            match s.read(&mut buf) {
                Ok(0) => break true,
                Ok(_) => continue,
                Err(e) => {
                    break !matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    );
                }
            }
        };
        assert!(closed);
    }
    assert_eq!(c.healthz(), 200);
}

/// `/rpc` is served only as a WebSocket upgrade opening its connection (the receive budget must
/// know where the WebSocket stream starts): a plain POST, an upgrade with a body, and an upgrade
/// after another request on the same connection are answered 400 and change nothing.
#[test]
fn rpc_only_as_the_first_request_of_a_connection() {
    let c = Collector::start();
    let token = c.create_token("p-rpc", "r1");
    let upgrade = format!(
        "GET /rpc HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Authorization: Bearer {token}\r\n"
    );
    let status_of = |requests: &[String]| -> Vec<String> {
        let mut s = TcpStream::connect(c.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut statuses = Vec::new();
        for r in requests {
            s.write_all(r.as_bytes()).unwrap();
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            statuses.push(text.lines().next().unwrap_or("").to_string());
        }
        statuses
    };
    let cases: &[(&str, Vec<String>, &str)] = &[
        ("upgrade first", vec![format!("{upgrade}\r\n")], "101"),
        (
            "plain POST",
            vec!["POST /rpc HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}".into()],
            "400",
        ),
        (
            "upgrade with a body",
            vec![format!("{upgrade}Content-Length: 4\r\n\r\nabcd")],
            "400",
        ),
    ];
    for (name, requests, want) in cases {
        let got = status_of(requests);
        assert!(got[0].contains(want), "{name}: {got:?}");
    }
    let second = status_of(&[
        "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".into(),
        format!("{upgrade}\r\n"),
    ]);
    assert!(second[0].contains("200"), "{second:?}");
    assert!(
        second[1].contains("400"),
        "upgrade after another request: {second:?}"
    );
}

/// One report of `processes` process records, each with a 100-character command line: about
/// 300 bytes of JSON per record, so 100,000 records (the most one sample may hold) make a ~30 MB
/// message, just under the collector's 32 MiB cap.
fn big_report(instance: &str, processes: u32) -> vmmon_common::wire::ReportBatch {
    use vmmon_common::test_support as ts;
    let now = vmmon_common::vocab::now_ms();
    let cmd = format!("/usr/lib/hostile/{}", "x".repeat(83));
    let procs = (1..=processes)
        .map(|pid| ts::process(pid, &cmd, 0.5))
        .collect();
    ts::batch(
        instance,
        0,
        vec![vmmon_common::wire::Sample {
            vm: ts::vm_sample(now, 1, 1),
            processes: Some(procs),
        }],
    )
}

/// 14 agents of one tenant each send a valid ~30 MB report at the same moment (before the fixes,
/// 14 such reports aborted the collector under a 2 GiB cap). Every report is stored, none is
/// refused for load (agents wait their turn), and the collector's peak RSS stays within the bound
/// that does not grow with the number of agents: its start, plus the receive budget (96 MiB of
/// message bytes, `rpc/receive.rs`), plus up to twice the decode budget (64 MiB of reports
/// estimated at 4× their JSON decoded at once, `rpc/budget.rs`: these pass one at a time), plus
/// the writer's 64 MiB SQLite page cache, with room for the
/// allocator (before the receive budget: 668 MB, growing by a message per agent).
#[test]
fn concurrent_large_reports_keep_memory_bounded() {
    use vmmon_common::rpc::MonitorApiClient;
    let _x = exclusive();
    let c = Collector::start();
    let token = c.create_token("p-big", "r1");
    let before = peak_rss_bytes(c.pid().unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let rpc = c.rpc_url();
    let agents = 14;
    let acks = rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..agents {
            let rpc = rpc.clone();
            let token = token.clone();
            tasks.push(tokio::spawn(async move {
                use jsonrpsee::ws_client::{HeaderMap, HeaderValue, WsClientBuilder};
                let mut h = HeaderMap::new();
                h.insert(
                    "authorization",
                    HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
                );
                let client = WsClientBuilder::default()
                    .set_headers(h)
                    .max_request_size(64 * 1024 * 1024)
                    .request_timeout(Duration::from_secs(600))
                    .build(&rpc)
                    .await
                    .unwrap();
                let id = format!("vm-big-{i}");
                client.register(register_request(&id, 30)).await.unwrap();
                let batch = big_report(&id, 100_000);
                client.report(batch).await
            }));
        }
        let mut acks = Vec::new();
        for t in tasks {
            acks.push(t.await.unwrap());
        }
        acks
    });
    let peak = peak_rss_bytes(c.pid().unwrap());
    println!(
        "{agents} concurrent ~30 MB reports: collector peak RSS {:.0} MB (before {:.0} MB)",
        peak as f64 / 1e6,
        before as f64 / 1e6
    );
    for (i, a) in acks.iter().enumerate() {
        let ack = a
            .as_ref()
            .unwrap_or_else(|e| panic!("report {i} refused: {e}"));
        assert!(!ack.duplicate, "report {i}");
    }
    let stored = c.query_i64(
        "SELECT COUNT(*) FROM process_samples WHERE instance_id LIKE 'vm-big-%'",
        &[],
    )[0];
    assert_eq!(stored, 14 * 100_000, "every process record stored once");
    const MIB: u64 = 1024 * 1024;
    let bound = before + 96 * MIB + 2 * 64 * MIB + 64 * MIB + 150 * MIB;
    assert!(peak < bound, "peak RSS {peak} bytes, bound {bound}");
}

/// 16 clients with a session each post 10,000-resource quotes (CPU work) as fast as they can
/// for a bounded number of rounds: pricing runs off the async workers and is bounded, so
/// `/healthz` keeps answering quickly (p99 printed; asserted only that it answers: speed targets
/// live in benchmarks, the figure is recorded in docs/benchmarks.md).
#[test]
fn quote_flood_leaves_healthz_answering() {
    let _x = exclusive();
    let c = Collector::start();
    let sid = c.admin_session();
    let resources: Vec<serde_json::Value> = (0..10_000)
        .map(|i| json!({"service": format!("svc-{i}"), "volume": "1.5"}))
        .collect();
    let body = json!({ "resources": resources }).to_string();
    let url = c.url("/v1/rating/quote");
    let (ok, busy) = std::thread::scope(|s| {
        let workers: Vec<_> = (0..16)
            .map(|_| {
                let (url, body, sid) = (url.clone(), body.clone(), sid.clone());
                s.spawn(move || {
                    let (mut ok, mut busy) = (0, 0);
                    for _ in 0..8 {
                        let r = ureq::post(&url)
                            .set("X-Auth-Token", &sid)
                            .set("Content-Type", "application/json")
                            .timeout(Duration::from_secs(120))
                            .send_string(&body);
                        match r {
                            Ok(r) => {
                                assert_eq!(r.status(), 200);
                                ok += 1;
                            }
                            Err(ureq::Error::Status(503, _)) => busy += 1,
                            Err(e) => panic!("quote: {e}"),
                        }
                    }
                    (ok, busy)
                })
            })
            .collect();
        let mut health = Vec::new();
        while workers.iter().any(|w| !w.is_finished()) {
            health.push(healthz_ms(&c));
            std::thread::sleep(Duration::from_millis(20));
        }
        if !health.is_empty() {
            println!(
                "quote flood: /healthz p50 {:.1} ms, p99 {:.1} ms over {} probes",
                percentile(&mut health, 0.5),
                percentile(&mut health, 0.99),
                health.len()
            );
        }
        workers
            .into_iter()
            .map(|w| w.join().unwrap())
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    });
    println!("quote flood: {ok} priced, {busy} answered busy");
    assert_eq!(ok + busy, 16 * 8);
    assert!(ok > 0, "quotes are priced under load");
}
