//! mana_api (SPEC §3.2, issue 4): the VM list and project bandwidth, tenant-isolated.
//!
//! A test client speaks the agents' real JSON-RPC protocol (WebSocket, `Authorization: Bearer`,
//! `monitor_register` then `monitor_report`) and feeds known cumulative counters for VMs in two
//! projects; the answers must be exact. One test runs the real agent.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonrpsee::ws_client::WsClient;
use serde_json::{Value, json};
use vmmon_common::rpc::MonitorApiClient;
use vmmon_common::wire::{Inventory, RegisterRequest, ReportAck, ReportBatch, Sample, VmSample};
use vmmon_tests::*;

const T: Duration = Duration::from_secs(30);
const GIB: u64 = 1024 * 1024 * 1024;
/// The collector's zone in the bandwidth tests: UTC+8, so the local month boundary is not UTC's.
const TZ_OFFSET_MS: i64 = 8 * 3_600_000;

// ---------------------------------------------------------------------------------------------
// Helpers

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Epoch ms of `YYYY-MM-DD HH:MM:SS` at UTC+`offset_ms`.
fn at_offset(s: &str, offset_ms: i64) -> i64 {
    let n = |r: std::ops::Range<usize>| s[r].parse::<i64>().unwrap();
    let days = days_from_civil(n(0..4), n(5..7), n(8..10));
    (days * 86_400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19)) * 1000 - offset_ms
}

/// Epoch ms of a Asia/Shanghai local time.
fn local(s: &str) -> i64 {
    at_offset(s, TZ_OFFSET_MS)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Query-string encoding for the few characters the tests use.
fn enc(s: &str) -> String {
    s.replace(' ', "%20")
        .replace(',', "%2C")
        .replace('\'', "%27")
}

fn get(c: &Collector, sid: &str, path: &str) -> (u16, Value) {
    c.get(path, &[("X-Auth-Token", sid)])
}

fn ok(c: &Collector, sid: &str, path: &str) -> Value {
    let (status, body) = get(c, sid, path);
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

/// Asserts an error answer: the status, `{"msg", "code"}` with the same code, and a message part.
fn err(c: &Collector, sid: Option<&str>, path: &str, status: u16, needle: &str) {
    let headers: Vec<(&str, &str)> = sid.map(|s| vec![("X-Auth-Token", s)]).unwrap_or_default();
    let (got, body) = c.get(path, &headers);
    assert_eq!(got, status, "GET {path}: {body}");
    let obj = body
        .as_object()
        .unwrap_or_else(|| panic!("GET {path}: body is not an object: {body}"));
    assert_eq!(obj.len(), 2, "only msg and code: {body}");
    assert_eq!(body["code"], json!(status), "{body}");
    let msg = body["msg"].as_str().unwrap();
    assert!(
        msg.contains(needle),
        "GET {path}: message {msg:?} should contain {needle:?}"
    );
}

fn token(c: &Collector, project: &str, region: &str, party: &str) -> String {
    c.token(project, region, party, None)
}

/// A client speaking the agents' JSON-RPC protocol over one WebSocket, on its own runtime so
/// the tests' blocking HTTP calls stay off it.
struct FakeAgent {
    rt: tokio::runtime::Runtime,
    client: WsClient,
    seq: u64,
    last_at: std::collections::HashMap<String, i64>,
}

impl FakeAgent {
    fn connect(c: &Collector, token: &str) -> FakeAgent {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let client = rt.block_on(agent_client(&c.rpc_url(), token));
        FakeAgent {
            rt,
            client,
            seq: 0,
            last_at: Default::default(),
        }
    }

    fn register(&self, instance_id: &str, inventory: Inventory) {
        let req = RegisterRequest {
            inventory,
            ..register_request(instance_id, 30)
        };
        self.rt.block_on(self.client.register(req)).unwrap();
    }

    /// A batch of `(sampled_at_ms, rx_total, tx_total)` readings.
    fn batch(&mut self, instance_id: &str, readings: &[(i64, u64, u64)]) -> ReportBatch {
        self.seq += 1;
        // The monotonic time since the instance's previous sample, as a real agent's clock
        // measures it (0 for its first): the collector checks the wall clock against it.
        let mut last = self.last_at.get(instance_id).copied();
        let elapsed: Vec<u64> = readings
            .iter()
            .map(|&(at, _, _)| {
                let e = last.map_or(0, |l| u64::try_from(at - l).unwrap_or(0));
                last = Some(at);
                e
            })
            .collect();
        if let Some(l) = last {
            self.last_at.insert(instance_id.to_string(), l);
        }
        ReportBatch {
            batch_id: uuid::Uuid::new_v4(),
            instance_id: instance_id.into(),
            seq: self.seq,
            samples: readings
                .iter()
                .zip(elapsed)
                .map(|(&(at, rx, tx), elapsed_ms)| Sample {
                    vm: VmSample {
                        sampled_at_ms: at,
                        elapsed_ms,
                        cpu_pct: 1.0,
                        mem_pct: 10.0,
                        rx_bytes_total: rx,
                        tx_bytes_total: tx,
                        proc_count: 50,
                        ..VmSample::default()
                    },
                    processes: None,
                })
                .collect(),
            dropped_samples_total: 0,
            cdn: Vec::new(),
            cdn_tail: None,
        }
    }

    fn send(&self, batch: &ReportBatch) -> ReportAck {
        self.rt.block_on(self.client.report(batch.clone())).unwrap()
    }

    /// Builds, sends and checks one new batch.
    fn report(&mut self, instance_id: &str, readings: &[(i64, u64, u64)]) -> ReportBatch {
        let b = self.batch(instance_id, readings);
        let ack = self.send(&b);
        assert!(!ack.duplicate, "a new batch is stored");
        b
    }
}

fn inventory(
    hostname: &str,
    cpus: u32,
    mem: u64,
    disk: u64,
    lan: &[&str],
    wan: &[&str],
) -> Inventory {
    Inventory {
        hostname: hostname.into(),
        cpu_count: cpus,
        mem_total_bytes: mem,
        disk_total_bytes: disk,
        lan_ips: lan.iter().map(|s| s.to_string()).collect(),
        wan_ips: wan.iter().map(|s| s.to_string()).collect(),
        agent_version: "test".into(),
        os: "Test OS".into(),
    }
}

/// A collector in UTC+8 fed with known counters:
///
/// * project `alpha`, region `r1` (party `acme`): VMs `a1` and `a2`; region `r2` (party `acme`):
///   VM `a3`;
/// * project `beta`, region `r1` (party `other`): VM `b1`.
///
/// `a1` covers a bucket-spanning interval across the local month boundary, a counter reset, a
/// duplicate resend and a late sample; `a3` an uneven integer split.
struct Fed {
    c: Collector,
    _cfg: tempfile::TempDir,
    admin: String,
    alpha: String,
    beta: String,
    registered_at: i64,
}

fn fed() -> Fed {
    let (cfg_dir, cfg) = collector_config(
        "timezone = \"Asia/Shanghai\"\n# Replays 2025 history: keep raw samples (and accept them) regardless of age.\nraw_retention_days = 0\n",
    );
    let c = Collector::start_with(&["--config", cfg.to_str().unwrap()]);
    let alpha_r1 = token(&c, "alpha", "r1", "acme");
    let alpha_r2 = token(&c, "alpha", "r2", "acme");
    let beta_r1 = token(&c, "beta", "r1", "other");

    let registered_at = now_ms();
    let mut ga = FakeAgent::connect(&c, &alpha_r1);
    ga.register(
        "a1",
        inventory(
            "alpha-one",
            8,
            16 * GIB - 300 * 1024 * 1024,
            20 * GIB,
            &["192.168.0.2", "192.168.0.3"],
            &["122.22.3.45", "122.22.3.46"],
        ),
    );
    ga.register(
        "a2",
        inventory("alpha-two", 2, 4 * GIB, 40 * GIB, &["10.0.0.2"], &[]),
    );
    let mut gr2 = FakeAgent::connect(&c, &alpha_r2);
    gr2.register(
        "a3",
        inventory("alpha-three", 1, GIB / 2, 10 * GIB, &[], &["203.0.113.7"]),
    );
    let mut gb = FakeAgent::connect(&c, &beta_r1);
    gb.register(
        "b1",
        inventory("beta-one", 4, 8 * GIB, 20 * GIB, &["192.168.9.9"], &[]),
    );

    // a1: a two-sample batch: 60,000 B in and 1,200 B out during 23:40–23:50.
    let first = ga.report(
        "a1",
        &[
            (local("2025-01-31 23:40:00"), 1_000, 5_000),
            (local("2025-01-31 23:50:00"), 61_000, 6_200),
        ],
    );
    // The agent resends it (e.g. the ack was lost): acknowledged as a duplicate, counted once.
    assert!(ga.send(&first).duplicate);
    // 23:50 → 00:05 crosses a bucket edge and the month boundary: 60,000 + 30,000.
    ga.report("a1", &[(local("2025-02-01 00:05:00"), 151_000, 6_200)]);
    // Reboot: the counters restart; nothing is attributed to 00:05–00:15.
    ga.report("a1", &[(local("2025-02-01 00:15:00"), 500, 10)]);
    // 00:15 → 00:25: 6,000 in and 1,200 out, half in each bucket.
    ga.report("a1", &[(local("2025-02-01 00:25:00"), 6_500, 1_210)]);
    // A late sample older than the last one is ignored for flow (no spike from its counters).
    ga.report(
        "a1",
        &[(local("2025-02-01 00:20:00"), 9_999_999, 9_999_999)],
    );

    // a2: 6,000 B in during 23:45–23:55, half in each bucket.
    ga.report("a2", &[(local("2025-01-31 23:45:00"), 0, 0)]);
    ga.report("a2", &[(local("2025-01-31 23:55:00"), 6_000, 0)]);

    // a3 (alpha/r2): 600,000 B per bucket 10:00–10:30, then 1,000 B over 15 minutes → 666 + 334.
    gr2.report(
        "a3",
        &[
            (local("2025-01-31 10:00:00"), 0, 0),
            (local("2025-01-31 10:30:00"), 1_800_000, 0),
        ],
    );
    gr2.report("a3", &[(local("2025-01-31 10:45:00"), 1_801_000, 0)]);

    // b1 (beta/r1, same region name as alpha's): 6,000,000 B in, 600 B out in 23:40.
    gb.report(
        "b1",
        &[
            (local("2025-01-31 23:40:00"), 0, 0),
            (local("2025-01-31 23:50:00"), 6_000_000, 600),
        ],
    );

    let admin = c.admin_session();
    let pw = c.add_tenant("alice", "alpha");
    let alpha = c.login("alice", &pw);
    let pw = c.add_tenant("bob", "beta");
    let beta = c.login("bob", &pw);
    Fed {
        c,
        _cfg: cfg_dir,
        admin,
        alpha,
        beta,
        registered_at,
    }
}

fn flow_row(
    begin: &str,
    end: &str,
    project: &str,
    region: &str,
    in_bytes: i64,
    out_bytes: i64,
) -> Value {
    json!({
        "begin_rate_date": begin,
        "date": &begin[..10],
        "end_rate_date": end,
        "in_rate": in_bytes as f64 / 600.0,
        "out_rate": out_bytes as f64 / 600.0,
        "project_id": project,
        "region": region,
        "in_bytes": in_bytes,
        "out_bytes": out_bytes,
    })
}

fn rows(body: &Value) -> Vec<Value> {
    body["data"].as_array().unwrap().clone()
}

fn nonzero(body: &Value) -> Vec<Value> {
    rows(body)
        .into_iter()
        .filter(|r| r["in_bytes"] != 0 || r["out_bytes"] != 0)
        .collect()
}

fn alpha_r1_rows() -> Vec<Value> {
    vec![
        flow_row(
            "2025-01-31 23:40:00",
            "2025-01-31 23:50:00",
            "alpha",
            "r1",
            63_000,
            1_200,
        ),
        flow_row(
            "2025-01-31 23:50:00",
            "2025-02-01 00:00:00",
            "alpha",
            "r1",
            63_000,
            0,
        ),
        flow_row(
            "2025-02-01 00:00:00",
            "2025-02-01 00:10:00",
            "alpha",
            "r1",
            30_000,
            0,
        ),
        flow_row(
            "2025-02-01 00:10:00",
            "2025-02-01 00:20:00",
            "alpha",
            "r1",
            3_000,
            600,
        ),
        flow_row(
            "2025-02-01 00:20:00",
            "2025-02-01 00:30:00",
            "alpha",
            "r1",
            3_000,
            600,
        ),
    ]
}

fn alpha_r2_rows() -> Vec<Value> {
    vec![
        flow_row(
            "2025-01-31 10:00:00",
            "2025-01-31 10:10:00",
            "alpha",
            "r2",
            600_000,
            0,
        ),
        flow_row(
            "2025-01-31 10:10:00",
            "2025-01-31 10:20:00",
            "alpha",
            "r2",
            600_000,
            0,
        ),
        flow_row(
            "2025-01-31 10:20:00",
            "2025-01-31 10:30:00",
            "alpha",
            "r2",
            600_000,
            0,
        ),
        flow_row(
            "2025-01-31 10:30:00",
            "2025-01-31 10:40:00",
            "alpha",
            "r2",
            666,
            0,
        ),
        flow_row(
            "2025-01-31 10:40:00",
            "2025-01-31 10:50:00",
            "alpha",
            "r2",
            334,
            0,
        ),
    ]
}

#[allow(clippy::too_many_arguments)]
fn month_entry(
    date: &str,
    project: &str,
    region: &str,
    max_in: i64,
    max_in_at: &str,
    max_out: i64,
    max_out_at: &str,
    total_in: i64,
    total_out: i64,
) -> Value {
    json!({
        "date": date,
        "max_in_rate": max_in as f64 / 600.0,
        "max_in_rate_date": max_in_at,
        "max_out_rate": max_out as f64 / 600.0,
        "max_out_rate_date": max_out_at,
        "project_id": project,
        "region": region,
        "total_in": total_in,
        "total_out": total_out,
    })
}

fn alpha_months() -> Vec<Value> {
    vec![
        // 23:40 and 23:50 tie at 63,000 B: the earlier bucket is the peak.
        month_entry(
            "2025-01",
            "alpha",
            "r1",
            63_000,
            "2025-01-31 23:40:00",
            1_200,
            "2025-01-31 23:40:00",
            126_000,
            1_200,
        ),
        month_entry(
            "2025-01",
            "alpha",
            "r2",
            600_000,
            "2025-01-31 10:00:00",
            0,
            "2025-01-31 10:00:00",
            1_801_000,
            0,
        ),
        month_entry(
            "2025-02",
            "alpha",
            "r1",
            30_000,
            "2025-02-01 00:00:00",
            600,
            "2025-02-01 00:10:00",
            36_000,
            1_200,
        ),
    ]
}

fn beta_months() -> Vec<Value> {
    vec![month_entry(
        "2025-01",
        "beta",
        "r1",
        6_000_000,
        "2025-01-31 23:40:00",
        600,
        "2025-01-31 23:40:00",
        6_000_000,
        600,
    )]
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn flow_per_bucket_is_exact() {
    let f = fed();
    let (c, admin) = (&f.c, f.admin.as_str());
    let window = format!(
        "start={}&end={}",
        enc("2025-01-31 23:40:00"),
        enc("2025-02-01 00:30:00")
    );

    // Exactly the five buckets overlapping [23:40, 00:30), with the exact rates.
    let body = ok(
        c,
        admin,
        &format!("/mana_api/flow?project_id=alpha&region=r1&{window}"),
    );
    assert_eq!(rows(&body), alpha_r1_rows());
    assert_eq!(body["data"][0]["in_rate"], json!(105.0));
    assert_eq!(body["data"][2]["in_rate"], json!(50.0));
    assert_eq!(body["data"][3]["out_rate"], json!(1.0));

    // Whole days (end day inclusive): one row per bucket, zero where nothing moved.
    let days = ok(
        c,
        admin,
        "/mana_api/flow?project_id=alpha&region=r1&start=2025-01-31&end=2025-02-01",
    );
    let all = rows(&days);
    assert_eq!(all.len(), 2 * 144);
    assert_eq!(all[0]["begin_rate_date"], "2025-01-31 00:00:00");
    assert_eq!(all[0]["in_rate"], json!(0.0));
    assert_eq!(all[287]["end_rate_date"], "2025-02-02 00:00:00");
    assert_eq!(nonzero(&days), alpha_r1_rows());

    // No region: every region of the project, each as its own series.
    let both = ok(
        c,
        admin,
        "/mana_api/flow?project_id=alpha&start=2025-01-31&end=2025-01-31",
    );
    assert_eq!(rows(&both).len(), 2 * 144);
    let mut want = alpha_r1_rows()[..2].to_vec();
    want.extend(alpha_r2_rows());
    want.sort_by_key(|r| {
        (
            r["region"].as_str().unwrap().to_string(),
            r["begin_rate_date"].as_str().unwrap().to_string(),
        )
    });
    assert_eq!(nonzero(&both), want);

    // The 1,000 B split unevenly still adds up exactly.
    let r2 = nonzero(&both);
    let r2_total: i64 = r2
        .iter()
        .filter(|r| r["region"] == "r2")
        .map(|r| r["in_bytes"].as_i64().unwrap())
        .sum();
    assert_eq!(r2_total, 1_801_000);

    // A datetime end is exclusive; start inside a bucket includes that bucket.
    let part = ok(
        c,
        admin,
        &format!(
            "/mana_api/flow?project_id=alpha&region=r1&start={}&end={}",
            enc("2025-01-31 23:45:00"),
            enc("2025-02-01 00:00:00")
        ),
    );
    assert_eq!(rows(&part), alpha_r1_rows()[..2].to_vec());

    // Default: the last 24 hours — the series exist, with nothing measured in them.
    let recent = ok(c, admin, "/mana_api/flow?project_id=alpha");
    let recent = rows(&recent);
    for region in ["r1", "r2"] {
        let n = recent.iter().filter(|r| r["region"] == region).count();
        assert!((144..=145).contains(&n), "{region}: {n} rows");
    }
    assert!(
        recent
            .iter()
            .all(|r| r["in_bytes"] == 0 && r["out_bytes"] == 0)
    );

    // Raw samples are not what the answer is computed from: deleting them changes nothing.
    let conn = rusqlite::Connection::open(c.db_path()).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.execute("DELETE FROM vm_samples", []).unwrap();
    drop(conn);
    let again = ok(
        c,
        admin,
        &format!("/mana_api/flow?project_id=alpha&region=r1&{window}"),
    );
    assert_eq!(rows(&again), alpha_r1_rows());
}

#[test]
fn flow_monthly_peaks_dates_and_totals_are_exact() {
    let f = fed();
    let (c, admin) = (&f.c, f.admin.as_str());
    // No month: every month with data, in the collector's zone (Feb starts at 00:00 UTC+8).
    let body = ok(c, admin, "/mana_api/flow_monthly?project_id=alpha");
    assert_eq!(body, json!({"monthly_data": alpha_months()}));
    assert_eq!(body["monthly_data"][0]["max_in_rate"], json!(105.0));
    assert_eq!(body["monthly_data"][0]["total_in"], json!(126_000));

    let feb = ok(
        c,
        admin,
        "/mana_api/flow_monthly?project_id=alpha&month=2025-02",
    );
    assert_eq!(feb["monthly_data"], json!([alpha_months()[2]]));
    let r2 = ok(
        c,
        admin,
        "/mana_api/flow_monthly?project_id=alpha&region=r2",
    );
    assert_eq!(r2["monthly_data"], json!([alpha_months()[1]]));
    let empty = ok(
        c,
        admin,
        "/mana_api/flow_monthly?project_id=alpha&month=2025-03",
    );
    assert_eq!(empty, json!({"monthly_data": []}));

    // Admin without project_id: every project.
    let all = ok(c, admin, "/mana_api/flow_monthly");
    let mut want = alpha_months();
    want.extend(beta_months());
    assert_eq!(all["monthly_data"], json!(want));
}

#[test]
fn tenants_see_only_their_project() {
    let f = fed();
    let c = &f.c;

    // VM list: alice (alpha) sees a1, a2, a3; bob (beta) sees b1; the admin sees all four.
    let ids = |body: &Value| -> Vec<String> {
        body["vm_servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["instance_id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&ok(c, &f.alpha, "/mana_api/vm")), ["a1", "a2", "a3"]);
    assert_eq!(
        ids(&ok(c, &f.alpha, "/mana_api/vm?tenant_id=alpha&region=r1")),
        ["a1", "a2"]
    );
    assert_eq!(ids(&ok(c, &f.beta, "/mana_api/vm")), ["b1"]);
    assert_eq!(
        ids(&ok(c, &f.admin, "/mana_api/vm")),
        ["a1", "a2", "a3", "b1"]
    );
    assert_eq!(ids(&ok(c, &f.admin, "/mana_api/vm?tenant_id=beta")), ["b1"]);
    // Same region name in both projects: a tenant's region filter stays inside its project.
    assert_eq!(ids(&ok(c, &f.beta, "/mana_api/vm?region=r1")), ["b1"]);
    assert_eq!(
        ids(&ok(c, &f.beta, "/mana_api/vm?party=acme")),
        Vec::<String>::new()
    );

    // Asking for the other project: 403 with the seed's message shape, on every endpoint.
    err(
        c,
        Some(&f.alpha),
        "/mana_api/vm?tenant_id=beta",
        403,
        "Malformed request URL: URL's tenant_id 'beta' doesn't match Context's project_id 'alpha'",
    );
    err(
        c,
        Some(&f.beta),
        "/mana_api/flow?project_id=alpha",
        403,
        "Malformed request URL: URL's project_id 'alpha' doesn't match Context's project_id 'beta'",
    );
    err(
        c,
        Some(&f.beta),
        "/mana_api/flow_monthly?project_id=alpha&month=2025-01",
        403,
        "Malformed request URL: URL's project_id 'alpha' doesn't match Context's project_id 'beta'",
    );

    // Flows: a tenant without project_id gets its own project only, never the other's bytes,
    // although both have a region r1 with traffic in the same bucket.
    let days = "start=2025-01-31&end=2025-02-01";
    let alice = ok(c, &f.alpha, &format!("/mana_api/flow?{days}"));
    assert!(rows(&alice).iter().all(|r| r["project_id"] == "alpha"));
    let alice_r1: Vec<Value> = nonzero(&alice)
        .into_iter()
        .filter(|r| r["region"] == "r1")
        .collect();
    assert_eq!(alice_r1, alpha_r1_rows());
    let bob = ok(c, &f.beta, &format!("/mana_api/flow?{days}"));
    assert!(rows(&bob).iter().all(|r| r["project_id"] == "beta"));
    assert_eq!(
        nonzero(&bob),
        vec![flow_row(
            "2025-01-31 23:40:00",
            "2025-01-31 23:50:00",
            "beta",
            "r1",
            6_000_000,
            600
        )]
    );
    assert_eq!(
        ok(c, &f.alpha, "/mana_api/flow_monthly"),
        json!({"monthly_data": alpha_months()})
    );
    assert_eq!(
        ok(c, &f.alpha, "/mana_api/flow_monthly?project_id=alpha"),
        json!({"monthly_data": alpha_months()})
    );
    assert_eq!(
        ok(c, &f.beta, "/mana_api/flow_monthly"),
        json!({"monthly_data": beta_months()})
    );
}

#[test]
fn vm_list_fields_filters_and_paging() {
    let f = fed();
    let c = &f.c;
    let body = ok(
        c,
        &f.admin,
        "/mana_api/vm?tenant_id=alpha&region=r1&party=acme",
    );
    assert_eq!(body["code"], 200);
    assert_eq!(body["total"], 2);
    let a1 = &body["vm_servers"][0];
    let create_at = a1["create_at"].as_str().unwrap();
    assert_eq!(create_at.len(), 19, "YYYY-MM-DD HH:MM:SS: {create_at}");
    // Local (UTC+8) registration time, to the second.
    let t = local(create_at);
    assert!(
        t >= f.registered_at - 1000 && t <= now_ms(),
        "create_at {create_at} is not the local registration time"
    );
    assert_eq!(
        a1["update_at"], a1["create_at"],
        "inventory unchanged since registration"
    );
    assert_eq!(
        *a1,
        json!({
            "instance_name": "alpha-one",
            "instance_id": "a1",
            "cpu_num": 8,
            "mem_size": 16,
            "disk_size": 20,
            "lan_ip_set": "192.168.0.2,192.168.0.3",
            "wan_ip_set": "122.22.3.45,122.22.3.46",
            "status": "ACTIVE",
            "create_at": create_at,
            "update_at": create_at,
            "tenant_id": "alpha",
            "party": "acme",
            "region": "r1",
            "dropped_samples": 0,
            "clock_skew_secs": 0,
            "agent_conflicts": 0,
        })
    );
    assert_eq!(body["vm_servers"][1]["wan_ip_set"], "");
    assert_eq!(body["vm_servers"][1]["lan_ip_set"], "10.0.0.2");

    // Half a GiB of memory rounds to 1, not 0.
    let a3 = ok(c, &f.admin, "/mana_api/vm?region=r2");
    assert_eq!(a3["vm_servers"][0]["instance_id"], "a3");
    assert_eq!(a3["vm_servers"][0]["mem_size"], 1);
    let other = ok(c, &f.admin, "/mana_api/vm?party=other");
    assert_eq!(other["vm_servers"].as_array().unwrap().len(), 1);
    assert_eq!(other["vm_servers"][0]["instance_id"], "b1");
    let none = ok(c, &f.admin, "/mana_api/vm?region=nowhere");
    assert_eq!(none, json!({"code": 200, "vm_servers": [], "total": 0}));

    // 1-based inclusive f/t over the instance ids in order; total counts every match.
    let page = |q: &str| -> (Vec<String>, i64) {
        let b = ok(c, &f.admin, &format!("/mana_api/vm?{q}"));
        let ids = b["vm_servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["instance_id"].as_str().unwrap().to_string())
            .collect();
        (ids, b["total"].as_i64().unwrap())
    };
    assert_eq!(page("f=1&t=2"), (vec!["a1".into(), "a2".into()], 4));
    assert_eq!(page("f=2&t=3"), (vec!["a2".into(), "a3".into()], 4));
    assert_eq!(page("f=3"), (vec!["a3".into(), "b1".into()], 4));
    assert_eq!(page("t=1"), (vec!["a1".into()], 4));
    assert_eq!(page("f=4&t=10"), (vec!["b1".into()], 4));
    assert_eq!(page("f=5&t=9"), (vec![], 4));
    assert_eq!(page("tenant_id=alpha&f=2&t=2"), (vec!["a2".into()], 3));
    // Empty values mean "not given" (portals send them).
    assert_eq!(page("tenant_id=&region=&party=&f=&t=").0.len(), 4);
}

#[test]
fn errors_have_status_and_body() {
    let c = Collector::start();
    let admin = c.admin_session();
    let pw = c.add_tenant("carol", "gamma");
    let tenant = c.login("carol", &pw);
    let paths = ["/mana_api/vm", "/mana_api/flow", "/mana_api/flow_monthly"];

    // 401: no token, an empty one, an unknown one.
    for p in paths {
        err(&c, None, p, 401, "missing X-Auth-Token");
        err(&c, Some(""), p, 401, "X-Auth-Token");
        err(
            &c,
            Some("3b5e2f4c-0000-4000-8000-000000000000"),
            p,
            401,
            "expired or unknown",
        );
    }

    // 404: unknown paths under /mana_api, with or without a token.
    for p in [
        "/mana_api/nope",
        "/mana_api",
        "/mana_api/",
        "/mana_api/vm/extra",
        "/mana_api/flow_monthly/x",
    ] {
        err(&c, None, p, 404, &format!("no such path: {p}"));
        err(&c, Some(&admin), p, 404, "no such path");
    }

    // 405: not GET.
    let resp = ureq::post(&c.url("/mana_api/vm"))
        .set("X-Auth-Token", &admin)
        .send_string("");
    let Err(ureq::Error::Status(405, r)) = resp else {
        panic!("POST must be 405")
    };
    let body: Value = r.into_json().unwrap();
    assert_eq!(body["code"], 405);

    // 400: bad parameters name the parameter.
    let bad = [
        ("/mana_api/vm?f=0", "f must be a positive integer"),
        ("/mana_api/vm?f=x", "f must be a positive integer"),
        ("/mana_api/vm?t=-1", "t must be a positive integer"),
        (
            "/mana_api/vm?f=3&t=2",
            "t (2) must not be smaller than f (3)",
        ),
        ("/mana_api/vm?f=1&f=2", "given more than once"),
        ("/mana_api/vm?tenant_id=a%2Cb", "tenant_id must be"),
        ("/mana_api/vm?region=a%0Ab", "region must be"),
        ("/mana_api/vm?party=a%2Cb", "party must be"),
        (
            "/mana_api/flow?project_id=p&start=yesterday",
            "start must be YYYY-MM-DD",
        ),
        (
            "/mana_api/flow?project_id=p&end=2025-02-30",
            "end must be YYYY-MM-DD",
        ),
        (
            "/mana_api/flow?project_id=p&start=2025-01-01%2025:00:00",
            "start must be YYYY-MM-DD",
        ),
        (
            "/mana_api/flow?project_id=p&start=2025-02-02&end=2025-02-01",
            "end must be later than start",
        ),
        (
            "/mana_api/flow?project_id=p&start=2025-01-01&end=2025-03-01",
            "at most 31 days",
        ),
        ("/mana_api/flow?project_id=a%2Cb", "project_id must be"),
        (
            "/mana_api/flow",
            "project_id is required with an admin session",
        ),
        ("/mana_api/flow?region=r1", "project_id is required"),
        (
            "/mana_api/flow_monthly?month=2025-13",
            "month must be YYYY-MM",
        ),
        (
            "/mana_api/flow_monthly?month=2025-1",
            "month must be YYYY-MM",
        ),
        (
            "/mana_api/flow_monthly?month=%27%20OR%201=1--",
            "month must be YYYY-MM",
        ),
    ];
    for (path, needle) in bad {
        err(&c, Some(&admin), path, 400, needle);
    }
    // A tenant's bad parameter is 400 too (checked before anything is read).
    err(&c, Some(&tenant), "/mana_api/vm?f=0", 400, "f must be");

    // 403 for a tenant naming another project, even one that does not exist.
    err(
        &c,
        Some(&tenant),
        "/mana_api/vm?tenant_id=delta",
        403,
        "URL's tenant_id 'delta' doesn't match Context's project_id 'gamma'",
    );
    err(
        &c,
        Some(&tenant),
        "/mana_api/flow?project_id=delta",
        403,
        "URL's project_id 'delta'",
    );
    err(
        &c,
        Some(&tenant),
        "/mana_api/flow_monthly?project_id=delta",
        403,
        "Context's project_id 'gamma'",
    );
    // SQL metacharacters in a name are just a name: nothing matches, nothing breaks.
    let q = ok(
        &c,
        &admin,
        &format!("/mana_api/vm?tenant_id={}", enc("x' OR '1'='1")),
    );
    assert_eq!(q["vm_servers"], json!([]));

    // A tenant with nothing registered yet gets empty answers, not errors.
    assert_eq!(
        ok(&c, &tenant, "/mana_api/vm"),
        json!({"code": 200, "vm_servers": [], "total": 0})
    );
    assert_eq!(
        ok(&c, &tenant, "/mana_api/flow_monthly"),
        json!({"monthly_data": []})
    );
    assert_eq!(ok(&c, &tenant, "/mana_api/flow"), json!({"data": []}));
}

#[test]
fn expired_session_is_401() {
    let (_cfg_dir, cfg) = collector_config("session_idle_secs = 1\n");
    let c = Collector::start_with(&["--config", cfg.to_str().unwrap()]);
    let sid = c.admin_session();
    ok(&c, &sid, "/mana_api/vm");
    std::thread::sleep(Duration::from_millis(2_500));
    err(&c, Some(&sid), "/mana_api/vm", 401, "expired or unknown");
}

fn mem_total_bytes() -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap();
    let line = info.lines().find(|l| l.starts_with("MemTotal:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[test]
fn real_agent_appears_in_the_vm_list_and_goes_shutoff() {
    let c = Collector::start();
    let tok = token(&c, "proj-e2e", "region-e2e", "vendor-e2e");
    let mut agent = Agent::start(&c, &tok, "vm-mana-e2e", 1, &[]);
    let pw = c.add_tenant("erin", "proj-e2e");
    let sid = c.login("erin", &pw);

    let vm = wait_for(T, "the agent's VM in /mana_api/vm", || {
        let b = ok(&c, &sid, "/mana_api/vm");
        b["vm_servers"].as_array().and_then(|a| a.first().cloned())
    });
    assert_eq!(vm["instance_id"], "vm-mana-e2e");
    assert_eq!(vm["status"], "ACTIVE");
    assert_eq!(vm["tenant_id"], "proj-e2e");
    assert_eq!(vm["region"], "region-e2e");
    assert_eq!(vm["party"], "vendor-e2e");
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(vm["instance_name"], hostname.trim());
    assert!(vm["cpu_num"].as_u64().unwrap() >= 1);
    let mem = mem_total_bytes();
    let want_mem = ((mem + GIB / 2) / GIB).max(1);
    assert_eq!(
        vm["mem_size"].as_u64().unwrap(),
        want_mem,
        "MemTotal {mem} B in whole GiB"
    );
    assert!(vm["disk_size"].is_u64());
    assert!(vm["lan_ip_set"].is_string() && vm["wan_ip_set"].is_string());
    // UTC (the default zone): create_at is the registration time, to the second.
    let t = at_offset(vm["create_at"].as_str().unwrap(), 0);
    assert!(
        (now_ms() - t).abs() < 60_000,
        "create_at {}",
        vm["create_at"]
    );

    // The admin sees it as well; the region filter finds it.
    let admin = c.admin_session();
    let b = ok(
        &c,
        &admin,
        "/mana_api/vm?region=region-e2e&party=vendor-e2e",
    );
    assert_eq!(b["vm_servers"][0]["instance_id"], "vm-mana-e2e");

    // Its project has a bandwidth series (the agent's counters feed it).
    let flow = ok(&c, &sid, "/mana_api/flow");
    let flow = rows(&flow);
    assert!(flow.len() >= 144, "{} rows", flow.len());
    assert!(
        flow.iter()
            .all(|r| r["project_id"] == "proj-e2e" && r["region"] == "region-e2e")
    );
    wait_for(T, "a flow bucket from the agent's counters", || {
        let m = ok(&c, &sid, "/mana_api/flow_monthly");
        m["monthly_data"]
            .as_array()
            .and_then(|a| a.first().cloned())
    });

    // Silent for three intervals (1 s each): SHUTOFF.
    agent.kill();
    let off = wait_for(T, "SHUTOFF after the agent stops", || {
        let b = ok(&c, &sid, "/mana_api/vm");
        let v = b["vm_servers"][0].clone();
        (v["status"] == "SHUTOFF").then_some(v)
    });
    assert_eq!(off["instance_id"], "vm-mana-e2e");
}
