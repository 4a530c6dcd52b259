//! CDN flow end to end: a synthetic nginx access log with known bytes per domain, bucket and cache
//! status, tailed by the real agent through rename and truncate rotations and SIGKILL restarts,
//! must come out of `POST /api/flow` exactly; and every error of the API has its own status.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use md5::{Digest, Md5};
use serde_json::{Value, json};
use vmmon_tests::*;

const T: Duration = Duration::from_secs(60);
/// Start of the test traffic: yesterday, on the hour (epoch seconds). Recent on purpose: the
/// collector refuses CDN buckets older than its retention.
fn t0() -> i64 {
    static T0: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *T0.get_or_init(|| (vmmon_common::vocab::now_ms() / 1000 - 86_400) / 3600 * 3600)
}

/// `t` (epoch seconds) as `yyyy-mm-dd hh:mi` in Asia/Shanghai (UTC+8, no DST).
fn sh_minute(t: i64) -> String {
    chrono::DateTime::from_timestamp(t + 8 * 3600, 0)
        .unwrap()
        .format("%Y-%m-%d %H:%M")
        .to_string()
}
const BUCKETS: i64 = 6;
/// Byte amounts are multiples of 1/16 MB, so MB figures are exact.
const UNIT: u64 = 65_536;
const USER: &str = "jcloud_00";
const DOMAINS: [&str; 2] = ["www.a.com", "www.b.com"];

fn sh_config() -> (tempfile::TempDir, PathBuf) {
    collector_config("timezone = \"Asia/Shanghai\"\n")
}

fn start_collector() -> (Collector, tempfile::TempDir) {
    let (dir, cfg) = sh_config();
    let c = Collector::start_with(&["--config", cfg.to_str().unwrap()]);
    (c, dir)
}

fn add_user(c: &Collector, name: &str, domains: &str) -> String {
    let out = c.cli(
        &["cdn-user", "add", "--name", name, "--domains", domains],
        &[],
    );
    let secret = out.lines().last().unwrap().trim().to_string();
    assert_eq!(secret.len(), 32, "{out}");
    secret
}

/// Date in Asia/Shanghai, `days` from today, as yyyymmdd.
fn sh_date(days: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::hours(8) + chrono::Duration::days(days))
        .format("%Y%m%d")
        .to_string()
}

fn sign(date: &str, user: &str, secret: &str) -> String {
    hex_lower(&Md5::digest(format!("{date}{user}{secret}").as_bytes()))
}

fn hex_lower(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn mb(bytes: u64) -> f64 {
    (bytes as f64 / 1_048_576.0 * 1e6).round() / 1e6
}

/// (domain, bucket start) → (bytes, hit bytes).
type Expected = BTreeMap<(String, i64), (u64, u64)>;

/// Writes deterministic access-log lines and remembers what they should add up to.
struct Writer {
    n: u64,
    exp: Expected,
}

const CACHE: [&str; 7] = [
    "HIT",
    "MISS",
    "STALE",
    "-",
    "EXPIRED",
    "UPDATING",
    "REVALIDATED",
];
const HOSTS: [&str; 3] = ["www.a.com", "WWW.B.COM", "other.example"];

impl Writer {
    fn new() -> Writer {
        Writer {
            n: 0,
            exp: Expected::new(),
        }
    }

    /// The next line (bucket, domain, cache status and size vary with the line number).
    fn next_line(&mut self) -> String {
        let i = self.n;
        self.n += 1;
        let t = t0() + (i as i64 % BUCKETS) * 300 + (i as i64 * 37) % 300;
        let host = HOSTS[(i % 3) as usize];
        let cache = CACHE[(i % 7) as usize];
        let bytes = UNIT * (i % 5 + 1);
        let hit = matches!(cache, "HIT" | "STALE" | "UPDATING" | "REVALIDATED");
        let e = self
            .exp
            .entry((host.to_ascii_lowercase(), t - t.rem_euclid(300)))
            .or_default();
        e.0 += bytes;
        if hit {
            e.1 += bytes;
        }
        let local = chrono::DateTime::from_timestamp(t + 8 * 3600, 0).unwrap();
        format!(
            "198.51.100.{} - - [{}] \"GET /obj/{i}.bin HTTP/1.1\" 200 {bytes} \"-\" \"test-agent/1.0 (\\x22x\\x22)\" {host} {cache}\n",
            i % 250,
            local.format("%d/%b/%Y:%H:%M:%S +0800"),
        )
    }

    fn write(&mut self, path: &Path, lines: usize) {
        let mut text = String::new();
        for _ in 0..lines {
            text.push_str(&self.next_line());
        }
        append(path, &text);
    }

    /// Bytes of the domains the edge token's CDN user owns (the others are never stored).
    fn total(&self) -> u64 {
        self.exp
            .iter()
            .filter(|((d, _), _)| DOMAINS.contains(&d.as_str()))
            .map(|(_, v)| v.0)
            .sum()
    }
}

fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

fn stored_total(c: &Collector) -> u64 {
    c.query_i64("SELECT COALESCE(SUM(bytes), 0) FROM cdn_buckets", &[])[0] as u64
}

/// Whether the agent has read the live access log and every rotated file it still tracks (by
/// inode) to the end, and delivered all of it (its spool is empty; a batch carries the positions
/// it read up to, so an empty spool means everything read is stored).
fn caught_up(agent: &Agent, logs: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    if agent.spooled() != 0 {
        return false;
    }
    let state = agent.state_file();
    let Some(files) = state["cdn_tail"]["files"].as_array() else {
        return false;
    };
    let sizes: std::collections::HashMap<u64, u64> = std::fs::read_dir(logs)
        .unwrap()
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| (m.ino(), m.len()))
        .collect();
    let Ok(live) = std::fs::metadata(logs.join("access.log")) else {
        return false;
    };
    files
        .iter()
        .any(|f| f["inode"].as_u64() == Some(live.ino()))
        && files.iter().all(|f| {
            let ino = f["inode"].as_u64().unwrap_or(0);
            sizes
                .get(&ino)
                .is_none_or(|&len| f["offset"].as_u64() == Some(len))
        })
}

/// Waits until the agent has caught up with the logs (no fixed settling time), then checks that
/// every byte was stored exactly once: a double count shows as more, a loss as less.
fn wait_total(c: &Collector, agent: &Agent, logs: &Path, want: u64) {
    assert!(
        wait_until(T, || stored_total(c) >= want && caught_up(agent, logs)),
        "stored {} of {want} bytes; agent state {}; log: {}",
        stored_total(c),
        agent.state_file(),
        agent.log()
    );
    assert_eq!(stored_total(c), want, "every line exactly once");
}

/// POST /api/flow; returns (HTTP status, JSON).
fn post(c: &Collector, query: &str, content_type: Option<&str>, body: &str) -> (u16, Value) {
    let url = if query.is_empty() {
        c.url("/api/flow")
    } else {
        format!("{}?{query}", c.url("/api/flow"))
    };
    let mut req = ureq::post(&url);
    if let Some(ct) = content_type {
        req = req.set("Content-Type", ct);
    }
    let resp = match req.send_string(body) {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("POST /api/flow: {e}"),
    };
    let status = resp.status();
    (status, resp.into_json().unwrap())
}

fn post_json(c: &Collector, body: &Value) -> Value {
    let (http, v) = post(c, "", Some("application/json"), &body.to_string());
    assert_eq!(http, 200, "{v}");
    v
}

fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", url_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            b' ' => "+".into(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The answer's `data` for the first window: 6 buckets of `domains` (each, or summed as "").
fn expected_answer(exp: &Expected, domains: &[&str], sum: bool) -> Value {
    let series = |ds: &[&str]| -> Vec<Value> {
        (0..BUCKETS)
            .map(|k| {
                let b = t0() + k * 300;
                let (mut bytes, mut hit) = (0, 0);
                for d in ds {
                    let v = exp.get(&(d.to_string(), b)).copied().unwrap_or((0, 0));
                    bytes += v.0;
                    hit += v.1;
                }
                json!([b, mb(bytes), mb(hit)])
            })
            .collect()
    };
    if sum {
        json!([{"domain": "", "data": series(domains)}])
    } else {
        Value::Array(
            domains
                .iter()
                .map(|d| json!({"domain": d, "data": series(&[d])}))
                .collect(),
        )
    }
}

#[test]
fn access_log_rotations_and_agent_kills_count_every_line_exactly_once() {
    let (c, _cfg) = start_collector();
    let secret = add_user(&c, USER, "www.a.com,www.b.com");
    let token = c.create_cdn_token("cdn", "edge", &[USER]);
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("access.log");
    let mut w = Writer::new();

    // Phase 1: a log with history and three malformed lines before the agent starts.
    w.write(&log, 40);
    append(&log, "garbage that is no access-log line\n");
    append(
        &log,
        "198.51.100.1 - - [01/Mar/2024:10:00:00 +0800] \"GET / HTTP/1.1\" 200 5 \"-\" \"ua\" - HIT\n",
    );
    append(
        &log,
        "198.51.100.1 - - [01/Foo/2024:10:00:00 +0800] \"GET / HTTP/1.1\" 200 5 \"-\" \"ua\" www.a.com HIT\n",
    );
    let log_arg = log.display().to_string();
    let mut agent = Agent::start(&c, &token, "edge-1", 1, &["--cdn-access-log", &log_arg]);
    wait_total(&c, &agent, logs.path(), w.total());

    // Phase 2: rename rotation; nginx keeps writing to the renamed file until it reopens (and
    // creates the new file).
    std::fs::rename(&log, logs.path().join("access.log.1")).unwrap();
    w.write(&logs.path().join("access.log.1"), 15);
    std::thread::sleep(Duration::from_millis(1_200));
    w.write(&logs.path().join("access.log.1"), 5);
    w.write(&log, 20);
    wait_total(&c, &agent, logs.path(), w.total());

    // Phase 3: lines keep coming while the agent is SIGKILLed twice, once with a rename rotation
    // while it is down.
    for round in 0..2 {
        for _ in 0..10 {
            w.write(&log, 3);
            std::thread::sleep(Duration::from_millis(60));
        }
        agent.kill();
        w.write(&log, 7);
        if round == 1 {
            std::fs::rename(&log, logs.path().join("access.log.2")).unwrap();
            w.write(&logs.path().join("access.log.2"), 4);
            w.write(&log, 6);
        }
        agent.spawn();
        for _ in 0..10 {
            w.write(&log, 2);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    wait_total(&c, &agent, logs.path(), w.total());

    // Phase 4: copytruncate (the copy is a new inode and is not read), shorter and longer refills.
    std::fs::copy(&log, logs.path().join("access.log.3")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&log)
        .unwrap();
    w.write(&log, 2);
    wait_total(&c, &agent, logs.path(), w.total());
    std::fs::copy(&log, logs.path().join("access.log.4")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&log)
        .unwrap();
    w.write(&log, 30);
    wait_total(&c, &agent, logs.path(), w.total());

    // Per bucket and domain, exactly (the owned domains; the other one is never stored).
    for ((domain, bucket), (bytes, hit)) in w
        .exp
        .iter()
        .filter(|((d, _), _)| DOMAINS.contains(&d.as_str()))
    {
        let p: [&dyn rusqlite::ToSql; 2] = [domain, bucket];
        let got = (
            c.query_i64(
                "SELECT bytes FROM cdn_buckets WHERE domain = ?1 AND bucket_start = ?2",
                &p,
            ),
            c.query_i64(
                "SELECT hit_bytes FROM cdn_buckets WHERE domain = ?1 AND bucket_start = ?2",
                &p,
            ),
        );
        assert_eq!(
            got,
            (vec![*bytes as i64], vec![*hit as i64]),
            "{domain} {bucket}"
        );
    }

    // Malformed lines are counted exactly (across the kills) and visible to the admin.
    let sources = c.cli(&["cdn-sources"], &[]);
    let row = sources
        .lines()
        .find(|l| l.starts_with("edge-1\t"))
        .unwrap_or_else(|| panic!("{sources}"));
    assert_eq!(row.split('\t').nth(2), Some("3"), "{sources}");
    assert_eq!(agent.state_file()["cdn_tail"]["malformed_lines_total"], 3);

    // The API: JSON, form-encoded and query string give the same exact MB per bucket.
    let sig = sign(&sh_date(0), USER, &secret);
    let (start, end) = (sh_minute(t0()), sh_minute(t0() + 29 * 60));
    let fields = [
        ("username", USER),
        ("signature", sig.as_str()),
        ("domain", "www.a.com,www.b.com"),
        ("start_time", start.as_str()),
        ("end_time", end.as_str()),
    ];
    let want = expected_answer(&w.exp, &DOMAINS, false);
    let obj: serde_json::Map<String, Value> = fields
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    let r = post_json(&c, &Value::Object(obj.clone()));
    assert_eq!(r["status"], 0, "{r}");
    assert_eq!(r["msg"], "成功");
    assert_eq!(r["data"], want);
    let (http, r) = post(
        &c,
        "",
        Some("application/x-www-form-urlencoded"),
        &form(&fields),
    );
    assert_eq!((http, &r["data"]), (200, &want), "{r}");
    let (http, r) = post(&c, &form(&fields), None, "");
    assert_eq!((http, &r["data"]), (200, &want), "{r}");
    // Empty domain: the sum of all the user's domains, as one entry with domain "".
    let mut all = obj.clone();
    all.insert("domain".into(), json!(""));
    let r = post_json(&c, &Value::Object(all));
    assert_eq!(r["data"], expected_answer(&w.exp, &DOMAINS, true), "{r}");
    // One domain, any case; the other domain's traffic is not in it.
    let mut one = obj;
    one.insert("domain".into(), json!("WWW.B.COM"));
    let r = post_json(&c, &Value::Object(one));
    assert_eq!(
        r["data"],
        expected_answer(&w.exp, &["www.b.com"], false),
        "{r}"
    );
    assert_eq!(
        c.query_i64(
            "SELECT COUNT(*) FROM cdn_buckets WHERE domain = 'other.example'",
            &[]
        )[0],
        0,
        "traffic of a domain the edge token's CDN users do not own is not stored"
    );
    assert!(
        w.exp.keys().any(|(d, _)| d == "other.example"),
        "the log also had traffic of a domain no user owns"
    );
}

#[test]
fn flow_api_errors_each_have_their_own_status() {
    let (c, _cfg) = start_collector();
    let secret = add_user(&c, USER, "www.a.com,www.b.com");
    let other = add_user(&c, "someone_else", "www.c.com");
    let today = sign(&sh_date(0), USER, &secret);
    let base = json!({
        "username": USER, "signature": today, "domain": "www.a.com",
        "start_time": "2024-03-01 10:00", "end_time": "2024-03-01 10:09",
    });
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    let status = |body: &Value| -> (i64, String) {
        let r = post_json(&c, body);
        (
            r["status"].as_i64().unwrap(),
            r["msg"].as_str().unwrap().to_string(),
        )
    };

    // Success, with zero-filled buckets (no traffic recorded).
    let r = post_json(&c, &base);
    assert_eq!(r["status"], 0, "{r}");
    assert_eq!(
        r["data"],
        json!([{"domain": "www.a.com", "data": [[1_709_258_400, 0.0, 0.0], [1_709_258_700, 0.0, 0.0]]}])
    );
    // Yesterday's and tomorrow's signatures are accepted, the day before yesterday's is not.
    for d in [-1, 1] {
        let r = post_json(
            &c,
            &with("signature", json!(sign(&sh_date(d), USER, &secret))),
        );
        assert_eq!(r["status"], 0, "day {d}: {r}");
    }
    let (s, msg) = status(&with("signature", json!(sign(&sh_date(-2), USER, &secret))));
    assert_eq!(s, 1004, "{msg}");
    assert!(msg.contains("bad signature"), "{msg}");
    // Another user's secret does not sign for this user.
    let (s, _) = status(&with("signature", json!(sign(&sh_date(0), USER, &other))));
    assert_eq!(s, 1004);

    let cases: Vec<(Value, i64, &str)> = vec![
        (with("username", json!("nobody")), 1003, "unknown CDN user"),
        (with("domain", json!("www.c.com")), 1008, "not owned"),
        (
            with("domain", json!("www.a.com,nope.com")),
            1008,
            "nope.com",
        ),
        (
            with("start_time", json!("2024/03/01 10:00")),
            1005,
            "yyyy-mm-dd hh:mi",
        ),
        (with("end_time", json!("10:09")), 1005, "end_time"),
        (with("end_time", json!("2024-03-01 09:59")), 1006, "before"),
        (with("end_time", json!("2024-04-01 10:01")), 1007, "31 days"),
        (with("start_time", json!("")), 1002, "start_time"),
        (json!({"username": USER}), 1002, "signature, start_time"),
        (with("username", json!(7)), 1001, "must be a string"),
    ];
    for (body, want, text) in cases {
        let (s, msg) = status(&body);
        assert_eq!(s, want, "{body}: {msg}");
        assert!(
            msg.contains(text),
            "{body}: {msg:?} should mention {text:?}"
        );
    }
    // 31 days exactly is fine.
    let r = post_json(&c, &with("end_time", json!("2024-04-01 10:00")));
    assert_eq!(r["status"], 0);
    assert_eq!(r["data"][0]["data"].as_array().unwrap().len(), 31 * 288 + 1);

    // Malformed bodies.
    for (ct, body) in [
        (Some("application/json"), "{\"username\": "),
        (Some("application/json"), "[1, 2]"),
        (None, "{oops"),
        (Some("multipart/form-data; boundary=x"), "--x--"),
    ] {
        let (http, r) = post(&c, "", ct, body);
        assert_eq!(
            (http, r["status"].as_i64()),
            (200, Some(1001)),
            "{body}: {r}"
        );
        assert_eq!(r["data"], json!([]));
    }
    // A field in both the query string and the body.
    let (_, r) = post(
        &c,
        &format!("username={USER}"),
        Some("application/json"),
        &base.to_string(),
    );
    assert_eq!(r["status"], 1001, "{r}");

    // Oversized body, wrong method.
    let big = format!("{{\"username\": \"{}\"}}", "x".repeat(2 << 20));
    let (http, r) = post(&c, "", Some("application/json"), &big);
    assert_eq!((http, r["status"].as_i64()), (413, Some(1009)), "{r}");
    let (http, r) = c.get("/api/flow", &[]);
    assert_eq!((http, r["status"].as_i64()), (405, Some(1010)), "{r}");

    // Form-encoded and query-string errors look the same.
    let (_, r) = post(
        &c,
        "",
        Some("application/x-www-form-urlencoded"),
        &form(&[
            ("username", USER),
            ("signature", "0000"),
            ("start_time", "2024-03-01 10:00"),
        ]),
    );
    assert_eq!(r["status"], 1004, "{r}");
    let (_, r) = post(
        &c,
        &form(&[
            ("username", USER),
            ("signature", &today),
            ("start_time", "soon"),
        ]),
        None,
        "",
    );
    assert_eq!(r["status"], 1005, "{r}");

    // Revoked users are unknown; listing shows them revoked and never prints secrets.
    c.cli(&["cdn-user", "revoke", "--name", USER], &[]);
    let (s, _) = status(&base);
    assert_eq!(s, 1003);
    let list = c.cli(&["cdn-user", "list"], &[]);
    assert!(
        list.contains("jcloud_00\twww.a.com,www.b.com\tyes"),
        "{list}"
    );
    assert!(list.contains("someone_else\twww.c.com\tno"), "{list}");
    assert!(!list.contains(&secret) && !list.contains(&other), "{list}");
    // Re-adding gives a new secret and makes the user active again.
    let renewed = add_user(&c, USER, "www.a.com");
    assert_ne!(renewed, secret);
    let r = post_json(
        &c,
        &with("signature", json!(sign(&sh_date(0), USER, &renewed))),
    );
    assert_eq!(r["status"], 0, "{r}");
}

#[test]
fn only_cdn_edge_tokens_may_report_cdn_traffic() {
    let c = Collector::start();
    let tenant = c.create_token("tenant-x", "r1");
    add_user(&c, "customer_a", "victim.example");
    add_user(&c, "customer_b", "stolen.example");
    // An edge token needs its CDN users named, and they must exist.
    let out = Command::new(bin_path("vmmon-collector"))
        .args([
            "token",
            "create",
            "--project",
            "cdn",
            "--region",
            "edge",
            "--cdn",
            "--data",
        ])
        .arg(c.data.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cdn-user"));
    let edge = c.create_cdn_token("cdn", "edge", &["customer_a"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = c.rpc_url();
    let now_ms = now_ms();
    let (tenant_err, edge_ok) = rt.block_on(async move {
        use vmmon_common::rpc::MonitorApiClient;
        let batch = |instance: &str| -> vmmon_common::wire::ReportBatch {
            serde_json::from_value(serde_json::json!({
                "batch_id": uuid::Uuid::new_v4(), "instance_id": instance, "seq": 0,
                "dropped_samples_total": 0,
                "samples": [{"vm": {"sampled_at_ms": now_ms, "elapsed_ms": 1000, "cpu_pct": 1.0,
                    "mem_pct": 1.0, "disk_read_kib_per_sec": 0.0, "disk_write_kib_per_sec": 0.0,
                    "net_in_kib_per_sec": 0.0, "net_out_kib_per_sec": 0.0, "rx_bytes_total": 0,
                    "tx_bytes_total": 0, "proc_count": 1}, "processes": null}],
                "cdn": [{"domain": "victim.example", "bucket_start": (now_ms / 1000) / 300 * 300,
                    "bytes": 1_000_000_000u64, "hit_bytes": 0, "requests": 1},
                    {"domain": "stolen.example", "bucket_start": (now_ms / 1000) / 300 * 300,
                    "bytes": 5_368_709_120u64, "hit_bytes": 0, "requests": 1}]
            }))
            .unwrap()
        };
        let t = agent_client(&url, &tenant).await;
        t.register(register_request("vm-tenant", 30)).await.unwrap();
        let tenant_err = t.report(batch("vm-tenant")).await.unwrap_err();
        let e = agent_client(&url, &edge).await;
        e.register(register_request("vm-edge", 30)).await.unwrap();
        let edge_ok = e.report(batch("vm-edge")).await;
        (tenant_err, edge_ok)
    });
    match tenant_err {
        jsonrpsee::core::client::Error::Call(o) => {
            assert_eq!(o.code(), vmmon_common::rpc::codes::INVALID_BATCH);
            assert!(o.message().contains("CDN edge token"), "{}", o.message());
        }
        other => panic!("{other}"),
    }
    assert!(edge_ok.is_ok(), "{edge_ok:?}");
    assert_eq!(
        c.query_i64(
            "SELECT COUNT(*) FROM vm_samples WHERE instance_id = 'vm-tenant'",
            &[]
        )[0],
        0,
        "the refused batch changed nothing"
    );
    // The edge token billed its own customer's domain, never another customer's.
    let bytes = |d: &str| {
        c.query_i64(
            "SELECT COALESCE(SUM(bytes), 0) FROM cdn_buckets WHERE domain = ?1",
            &[&d],
        )[0]
    };
    assert_eq!(bytes("victim.example"), 1_000_000_000);
    assert_eq!(
        bytes("stolen.example"),
        0,
        "a domain of a CDN user not bound to the token"
    );
}

/// An edge agent that lost its state dir (a reinstall with purge, a tmpfs) resumes from the
/// positions of its newest batch the collector stored, instead of billing its logs again.
#[test]
fn an_edge_agent_that_lost_its_state_does_not_bill_its_logs_twice() {
    let (c, _cfg) = start_collector();
    add_user(&c, USER, "www.a.com,www.b.com");
    let token = c.create_cdn_token("cdn", "edge", &[USER]);
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("access.log");
    let mut w = Writer::new();
    w.write(&log, 60);
    let log_arg = log.display().to_string();
    let mut agent = Agent::start(&c, &token, "edge-lost", 1, &["--cdn-access-log", &log_arg]);
    wait_total(&c, &agent, logs.path(), w.total());
    agent.kill();
    // The state dir is emptied: no spool, no positions.
    for entry in std::fs::read_dir(agent.state.path()).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
    }
    w.write(&log, 25);
    agent.spawn();
    // Only the 25 new lines are added: the 60 counted ones are not billed again.
    wait_total(&c, &agent, logs.path(), w.total());
}
