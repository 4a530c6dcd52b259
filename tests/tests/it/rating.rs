//! Rating (SPEC §3.3): the CloudKitty-compatible `/v1` API over real agent samples. Samples of two
//! tenants are fed through the agents' real JSON-RPC protocol into a past hour, the hour is rated
//! (CLI and processing loop), and reports and dataframes are checked exactly. The hashmap config,
//! modules, info, collector, quote and routing endpoints run in process
//! (`collector/src/http/tests/rating.rs`).

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use vmmon_common::wire::{Inventory, ReportBatch, Sample, VmSample};
use vmmon_tests::*;

pub(crate) const HOUR_MS: i64 = 3_600_000;
const MIN_MS: i64 = 60_000;
const GIB: u64 = 1 << 30;
const HM: &str = "/v1/rating/module_config/hashmap";

/// `YYYY-MM-DDTHH:MM:SS` (UTC) of epoch `ms`.
pub(crate) fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%S")
        .to_string()
}

/// An HTTP answer: status, Location header, JSON body (Null when empty, a string when not JSON).
pub(crate) struct Answer {
    pub(crate) status: u16,
    location: Option<String>,
    pub(crate) body: Value,
}

fn call(
    c: &Collector,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Answer {
    let agent = ureq::AgentBuilder::new().redirects(0).build();
    let mut req = agent.request(method, &c.url(path));
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let res = match body {
        Some(b) => req
            .set("Content-Type", "application/json")
            .send_string(&b.to_string()),
        None => req.call(),
    };
    let resp = match res {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {path}: {e}"),
    };
    let status = resp.status();
    let location = resp.header("location").map(str::to_string);
    let text = resp.into_string().unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    Answer {
        status,
        location,
        body,
    }
}

/// A client acting with one set of headers.
pub(crate) struct Api<'a> {
    c: &'a Collector,
    headers: Vec<(String, String)>,
}

impl<'a> Api<'a> {
    fn token(c: &'a Collector, sid: &str) -> Api<'a> {
        Api {
            c,
            headers: vec![("X-Auth-Token".into(), sid.into())],
        }
    }
    pub(crate) fn with(c: &'a Collector, headers: &[(&str, &str)]) -> Api<'a> {
        Api {
            c,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }
    fn req(&self, method: &str, path: &str, body: Option<Value>) -> Answer {
        let h: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        call(self.c, method, path, &h, body.as_ref())
    }
    pub(crate) fn get(&self, path: &str) -> Answer {
        self.req("GET", path, None)
    }
    /// GET that must answer 200; the body.
    pub(crate) fn ok(&self, path: &str) -> Value {
        let a = self.get(path);
        assert_eq!(a.status, 200, "GET {path}: {}", a.body);
        a.body
    }
    pub(crate) fn post(&self, path: &str, body: Value) -> Answer {
        self.req("POST", path, Some(body))
    }
    /// POST that must create (201 + Location); the object.
    fn create(&self, path: &str, body: Value) -> Value {
        let a = self.post(path, body.clone());
        assert_eq!(a.status, 201, "POST {path} {body}: {}", a.body);
        let loc = a.location.expect("Location on 201");
        let id = a
            .body
            .as_object()
            .unwrap()
            .iter()
            .find(|(k, _)| k.ends_with("_id"))
            .unwrap()
            .1
            .as_str()
            .unwrap()
            .to_string();
        assert!(loc.ends_with(&format!("/{id}")), "{loc} names {id}");
        a.body
    }
}

fn fault(a: &Answer, status: u16, msg: &str) {
    assert_eq!(a.status, status, "{}", a.body);
    assert_eq!(
        a.body,
        json!({"faultcode": if status >= 500 { "Server" } else { "Client" }, "faultstring": msg, "debuginfo": null})
    );
}

/// One VM fed through the agents' protocol.
struct Vm {
    id: &'static str,
    cpus: u32,
    mem_gib: u64,
    disk_gib: u64,
    /// (minutes after the hour, window minutes, cpu %, rx total, tx total)
    samples: Vec<(i64, i64, f64, u64, u64)>,
}

fn feed(c: &Collector, token: &str, hour: i64, vm: &Vm) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use vmmon_common::rpc::MonitorApiClient;
        let client = agent_client(&c.rpc_url(), token).await;
        client
            .register(vmmon_common::wire::RegisterRequest {
                inventory: Inventory {
                    hostname: format!("host-{}", vm.id),
                    cpu_count: vm.cpus,
                    mem_total_bytes: vm.mem_gib * GIB,
                    disk_total_bytes: vm.disk_gib * GIB,
                    lan_ips: vec![],
                    wan_ips: vec![],
                    agent_version: "test".into(),
                    os: "Linux".into(),
                    net_interfaces_counted: Vec::new(),
                },
                ..register_request(vm.id, 600)
            })
            .await
            .unwrap();
        let samples = vm
            .samples
            .iter()
            .map(|&(at, window, cpu, rx, tx)| Sample {
                // Built from JSON so that fields added later with serde defaults need no edit.
                vm: serde_json::from_value::<VmSample>(json!({
                    "sampled_at_ms": hour + at * MIN_MS,
                    "elapsed_ms": window * MIN_MS,
                    "cpu_pct": cpu,
                    "mem_pct": 10.0,
                    "disk_read_kib_per_sec": 0.0,
                    "disk_write_kib_per_sec": 0.0,
                    "net_in_kib_per_sec": 0.0,
                    "net_out_kib_per_sec": 0.0,
                    "rx_bytes_total": rx,
                    "tx_bytes_total": tx,
                    "proc_count": 10,
                }))
                .unwrap(),
                processes: None,
            })
            .collect();
        let ack = client
            .report(ReportBatch {
                batch_id: uuid::Uuid::new_v4(),
                instance_id: vm.id.into(),
                seq: 1,
                samples,
                dropped_samples_total: 0,
                cdn: Vec::new(),
                cdn_tail: None,
            })
            .await
            .unwrap();
        assert!(!ack.duplicate);
    });
}

/// Baseline at :00, then every 10 minutes to :60 (whose window is the hour's last 10 minutes).
fn full_hour(cpu: f64, rx_step: u64, tx_step: u64) -> Vec<(i64, i64, f64, u64, u64)> {
    (0..=6)
        .map(|k| {
            let n = k as u64;
            (
                k * 10,
                if k == 0 { 0 } else { 10 },
                cpu,
                1_000 + n * rx_step,
                7 + n * tx_step,
            )
        })
        .collect()
}

/// The usage of the test: proj-a has a1 (2c4g, 40 GiB, a full hour at 50 %, 1.5 GB in, 0.6 GB
/// out) and a2 (4c8g, 100 GiB, up the last 30 minutes at 25 %, no traffic); proj-b has b1 (1c2g,
/// 20 GiB, a full hour at 30 %, 3 GB in, 1.5 GB out).
fn vms() -> Vec<(&'static str, Vm)> {
    vec![
        (
            "proj-a",
            Vm {
                id: "a1",
                cpus: 2,
                mem_gib: 4,
                disk_gib: 40,
                samples: full_hour(50.0, 250_000_000, 100_000_000),
            },
        ),
        (
            "proj-a",
            Vm {
                id: "a2",
                cpus: 4,
                mem_gib: 8,
                disk_gib: 100,
                samples: (3..=6)
                    .map(|k| (k * 10, if k == 3 { 0 } else { 10 }, 25.0, 5, 5))
                    .collect(),
            },
        ),
        (
            "proj-b",
            Vm {
                id: "b1",
                cpus: 1,
                mem_gib: 2,
                disk_gib: 20,
                samples: full_hour(30.0, 500_000_000, 250_000_000),
            },
        ),
    ]
}

pub(crate) fn feed_all(c: &Collector, hour: i64) {
    let ta = c.create_token("proj-a", "r1");
    let tb = c.create_token("proj-b", "r2");
    for (project, vm) in vms() {
        feed(c, if project == "proj-a" { &ta } else { &tb }, hour, &vm);
    }
}

/// The hashmap rules of the test, created through the API; returns (service ids by name).
pub(crate) fn price_book(api: &Api<'_>) -> Value {
    let mut ids = serde_json::Map::new();
    for name in ["instance", "cpu.hours", "network.out", "disk.size"] {
        let s = api.create(&format!("{HM}/services"), json!({"name": name}));
        ids.insert(name.into(), s["service_id"].clone());
    }
    let flavor = api.create(
        &format!("{HM}/fields"),
        json!({"service_id": ids["instance"], "name": "flavor_name"}),
    );
    for (value, cost) in [("2c4g", "0.05"), ("4c8g", "0.12"), ("1c2g", "0.02")] {
        api.create(
            &format!("{HM}/mappings"),
            json!({"field_id": flavor["field_id"], "value": value, "cost": cost, "type": "flat"}),
        );
    }
    // proj-b pays less for 1c2g.
    api.create(
        &format!("{HM}/mappings"),
        json!({"field_id": flavor["field_id"], "value": "1c2g", "cost": "0.015", "tenant_id": "proj-b"}),
    );
    api.create(
        &format!("{HM}/mappings"),
        json!({"service_id": ids["cpu.hours"], "cost": 0.03, "type": "flat"}),
    );
    api.create(
        &format!("{HM}/mappings"),
        json!({"service_id": ids["network.out"], "cost": "0.08"}),
    );
    // Half price from 1 GB per hour.
    api.create(
        &format!("{HM}/thresholds"),
        json!({"service_id": ids["network.out"], "level": "1", "cost": "0.5", "type": "rate"}),
    );
    api.create(
        &format!("{HM}/mappings"),
        json!({"service_id": ids["disk.size"], "cost": "0.0001"}),
    );
    // Big disks: a separate group charging 0.002 per GiB-hour from 50 GiB on.
    let big = api.create(&format!("{HM}/groups"), json!({"name": "big-disk"}));
    let size = api.create(
        &format!(
            "{HM}/services/{}/fields",
            ids["disk.size"].as_str().unwrap()
        ),
        json!({"name": "disk_size"}),
    );
    assert_eq!(size["service_id"], ids["disk.size"]);
    api.create(
        &format!("{HM}/thresholds"),
        json!({"field_id": size["field_id"], "level": 50, "cost": "0.002", "group_id": big["group_id"]}),
    );
    Value::Object(ids)
}

pub(crate) fn q(path: &str, params: &[(&str, &str)]) -> String {
    let mut s = path.to_string();
    for (i, (k, v)) in params.iter().enumerate() {
        s.push(if i == 0 { '?' } else { '&' });
        s.push_str(k);
        s.push('=');
        s.push_str(v);
    }
    s
}

fn summary_rates(v: &Value, key: &str) -> Vec<(String, String)> {
    v["summary"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e[key].as_str().unwrap().to_string(),
                e["rate"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn no_loop_config() -> (tempfile::TempDir, std::path::PathBuf) {
    collector_config("[rating]\nprocess = false\n")
}

#[test]
fn summary_total_tenants_and_dataframes_over_real_samples() {
    let (_d, cfg) = no_loop_config();
    let c = Collector::start_with(&["--config", cfg.to_str().unwrap()]);
    let hour = (now_ms() / HOUR_MS - 3) * HOUR_MS;
    let (b, e) = (iso(hour), iso(hour + HOUR_MS));
    feed_all(&c, hour);
    let sid = c.admin_session();
    let admin = Api::token(&c, &sid);
    price_book(&admin);

    let out = c.cli(&["rating", "process", "--period-start", &b], &[]);
    assert!(out.contains("tenants=2"), "{out}");
    assert!(out.contains("total=0.563"), "{out}");
    // Rerunning the period replaces it: nothing is counted twice.
    let again = c.cli(
        &["rating", "process", "--period-start", &b, "--periods", "1"],
        &[],
    );
    assert!(
        again.contains("total=0.563") && again.contains("replaced"),
        "{again}"
    );
    let rows = c.query_i64(
        "SELECT COUNT(*) FROM rated_points WHERE begin_ms = ?1",
        &[&hour],
    );
    assert_eq!(rows, vec![15], "3 instances × 5 metrics");

    let w = [("begin", b.as_str()), ("end", e.as_str())];
    let with = |extra: &[(&'static str, &'static str)]| -> Vec<(&str, &str)> {
        let mut p: Vec<(&str, &str)> = w.to_vec();
        p.extend_from_slice(extra);
        p
    };
    // total: all tenants, one tenant, one service.
    let total = |p: &[(&str, &str)]| admin.ok(&q("/v1/report/total", p));
    assert_eq!(total(&with(&[("all_tenants", "true")])), json!("0.563"));
    assert_eq!(total(&with(&[("tenant_id", "proj-a")])), json!("0.477"));
    assert_eq!(total(&with(&[("tenant_id", "proj-b")])), json!("0.086"));
    assert_eq!(
        total(&with(&[("all_tenants", "1"), ("service", "network.out")])),
        json!("0.108")
    );
    // An admin session has no project: without a filter it sees every tenant.
    assert_eq!(total(&w), json!("0.563"));
    // begin after end, or a window without data: "0".
    assert_eq!(
        total(&[("begin", e.as_str()), ("end", b.as_str())]),
        json!("0")
    );

    // summary without groupby: exactly one element echoing the window.
    let s = admin.ok(&q("/v1/report/summary", &with(&[("all_tenants", "true")])));
    assert_eq!(
        s,
        json!({"summary": [{"begin": b, "end": e, "tenant_id": "ALL", "res_type": "ALL", "rate": "0.563"}]})
    );
    let s = admin.ok(&q(
        "/v1/report/summary",
        &with(&[("groupby", "res_type"), ("all_tenants", "true")]),
    ));
    assert_eq!(
        summary_rates(&s, "res_type"),
        vec![
            ("network.in".to_string(), "0".to_string()),
            ("cpu.hours".into(), "0.054".into()),
            ("network.out".into(), "0.108".into()),
            ("instance".into(), "0.185".into()),
            ("disk.size".into(), "0.216".into()),
        ]
    );
    assert!(
        s["summary"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["tenant_id"] == "ALL")
    );
    let s = admin.ok(&q("/v1/report/summary", &with(&[("groupby", "tenant_id")])));
    assert_eq!(
        summary_rates(&s, "tenant_id"),
        vec![
            ("proj-b".to_string(), "0.086".to_string()),
            ("proj-a".into(), "0.477".into())
        ]
    );
    let s = admin.ok(&q(
        "/v1/report/summary",
        &with(&[
            ("groupby", "tenant_id,res_type"),
            ("tenant_id", "proj-b"),
            ("service", "instance"),
        ]),
    ));
    assert_eq!(
        s["summary"],
        json!([{"begin": b, "end": e, "tenant_id": "proj-b", "res_type": "instance", "rate": "0.015"}])
    );
    // A grouping with no data is an empty list; without one, a single zero.
    let empty_w = [("begin", "2001-01-01"), ("end", "2001-02-01")];
    assert_eq!(
        admin.ok(&q(
            "/v1/report/summary",
            &[empty_w[0], empty_w[1], ("groupby", "res_type")]
        )),
        json!({"summary": []})
    );
    assert_eq!(
        admin.ok(&q("/v1/report/summary", &empty_w))["summary"][0]["rate"],
        "0"
    );

    // tenants (admin).
    assert_eq!(
        admin.ok(&q("/v1/report/tenants", &w)),
        json!(["proj-a", "proj-b"])
    );
    assert_eq!(admin.ok(&q("/v1/report/tenants", &empty_w)), json!([]));

    // dataframes: one frame per period, tenant and type; decimals as strings.
    let df = admin.ok(&q(
        "/v1/storage/dataframes",
        &with(&[("tenant_id", "proj-a")]),
    ));
    let frames = df["dataframes"].as_array().unwrap();
    assert_eq!(frames.len(), 5);
    let inst = frames
        .iter()
        .find(|f| f["resources"][0]["service"] == "instance")
        .unwrap();
    assert_eq!(inst["begin"], b);
    assert_eq!(inst["end"], e);
    assert_eq!(inst["tenant_id"], "proj-a");
    let r = inst["resources"].as_array().unwrap();
    assert_eq!(r.len(), 2);
    assert_eq!(
        r[0],
        json!({
            "service": "instance", "volume": "1", "rating": "0.05",
            "desc": {"flavor_name": "2c4g", "cpu_num": 2, "mem_size": 4, "disk_size": 40,
                     "region": "r1", "party": "acme", "instance_name": "host-a1",
                     "id": "a1", "project_id": "proj-a"}
        })
    );
    assert_eq!(
        (&r[1]["desc"]["id"], &r[1]["volume"], &r[1]["rating"]),
        (&json!("a2"), &json!("1"), &json!("0.12"))
    );
    let by_type = |t: &str| -> Vec<(String, String)> {
        frames
            .iter()
            .filter(|f| f["resources"][0]["service"] == t)
            .flat_map(|f| f["resources"].as_array().unwrap().clone())
            .map(|r| {
                (
                    r["volume"].as_str().unwrap().into(),
                    r["rating"].as_str().unwrap().into(),
                )
            })
            .collect()
    };
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    assert_eq!(
        by_type("cpu.hours"),
        pairs(&[("1", "0.03"), ("0.5", "0.015")])
    );
    assert_eq!(by_type("network.in"), pairs(&[("1.5", "0"), ("0", "0")]));
    assert_eq!(
        by_type("network.out"),
        pairs(&[("0.6", "0.048"), ("0", "0")])
    );
    assert_eq!(
        by_type("disk.size"),
        pairs(&[("40", "0.004"), ("100", "0.21")])
    );
    let df = admin.ok(&q(
        "/v1/storage/dataframes",
        &with(&[("tenant_id", "proj-b"), ("resource_type", "network.out")]),
    ));
    assert_eq!(
        df["dataframes"][0]["resources"],
        json!([{"service": "network.out", "volume": "1.5", "rating": "0.06",
                "desc": {"region": "r2", "id": "b1", "project_id": "proj-b"}}])
    );
    let all = admin.ok(&q("/v1/storage/dataframes", &w));
    assert_eq!(all["dataframes"].as_array().unwrap().len(), 10);
    assert_eq!(
        admin.ok(&q("/v1/storage/dataframes", &empty_w)),
        json!({"dataframes": []})
    );

    // A tenant sees its own project only.
    let pw = c.add_tenant("alice", "proj-a");
    let alice_sid = c.login("alice", &pw);
    let alice = Api::token(&c, &alice_sid);
    assert_eq!(alice.ok(&q("/v1/report/total", &w)), json!("0.477"));
    assert_eq!(
        alice.ok(&q("/v1/report/summary", &w))["summary"][0]["tenant_id"],
        "proj-a"
    );
    let df = alice.ok(&q("/v1/storage/dataframes", &w));
    assert!(
        df["dataframes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["tenant_id"] == "proj-a")
    );
    assert_eq!(df["dataframes"].as_array().unwrap().len(), 5);
    for (path, rule) in [
        (
            q("/v1/report/total", &with(&[("tenant_id", "proj-b")])),
            "report:get_total",
        ),
        (
            q("/v1/report/summary", &with(&[("all_tenants", "true")])),
            "report:get_summary",
        ),
        (
            q("/v1/storage/dataframes", &with(&[("tenant_id", "proj-b")])),
            "storage:list_data_frames",
        ),
        (q("/v1/report/tenants", &w), "report:list_tenants"),
        ("/v1/rating/modules".to_string(), "rating:list_modules"),
        (format!("{HM}/services"), "rating:module_config"),
        (
            "/v1/collector/mappings".to_string(),
            "collector:list_mappings",
        ),
    ] {
        fault(
            &alice.get(&path),
            403,
            &format!("Policy doesn't allow {rule} to be performed."),
        );
    }
    fault(
        &alice.post(&format!("{HM}/services"), json!({"name": "x"})),
        403,
        "Policy doesn't allow rating:module_config to be performed.",
    );
    // No token, or a bad one: 401 where a policy applies; open endpoints still answer.
    let anon = Api::with(&c, &[]);
    let forged = Api::token(&c, "00000000-0000-4000-8000-000000000000");
    for api in [&anon, &forged] {
        for path in [
            "/v1/report/total",
            "/v1/storage/dataframes",
            "/v1/rating/modules",
        ] {
            let a = api.get(path);
            assert_eq!(a.status, 401, "{path}: {}", a.body);
            assert_eq!(a.body["faultcode"], "Client");
        }
        assert_eq!(api.get("/v1/info/metrics").status, 200);
    }
}

#[test]
fn processing_loop_rates_due_periods_once() {
    // Feed with the loop off, then restart with it on: every complete period is due at once.
    let hour = (now_ms() / HOUR_MS - 1) * HOUR_MS;
    let (_d, cfg) = no_loop_config();
    let mut c = Collector::start_with(&["--config", cfg.to_str().unwrap()]);
    let sid = c.admin_session();
    let admin = Api::token(&c, &sid);
    price_book(&admin);
    feed_all(&c, hour);
    std::fs::write(&cfg, "[rating]\nwait_secs = 0\n").unwrap();
    // Start the loop two hours before ours (on first start it would begin at the current UTC
    // month, which misses our hour on the 1st of a month).
    c.kill();
    c.execute_sql(
        "INSERT INTO rating_state (name, value) VALUES ('next_period_ms', ?1)",
        &[&(hour - 2 * HOUR_MS)],
    );
    c.restart();
    let admin = Api::token(&c, &sid);
    let (b, e) = (iso(hour), iso(hour + HOUR_MS));
    let path = q(
        "/v1/report/total",
        &[("begin", &b), ("end", &e), ("all_tenants", "true")],
    );
    let total = wait_for(Duration::from_secs(60), "the loop to rate the hour", || {
        let v = admin.ok(&path);
        (v != json!("0")).then_some(v)
    });
    assert_eq!(total, json!("0.563"));
    // The next period's state moved past the hour; a manual rerun replaces, never adds.
    let next = c.query_i64(
        "SELECT value FROM rating_state WHERE name = 'next_period_ms'",
        &[],
    );
    assert!(next[0] >= hour + HOUR_MS, "{next:?}");
    c.cli(&["rating", "process", "--period-start", &b], &[]);
    assert_eq!(admin.ok(&path), json!("0.563"));
    assert_eq!(
        c.query_i64(
            "SELECT COUNT(*) FROM rated_totals WHERE begin_ms = ?1",
            &[&hour]
        ),
        vec![10]
    );
    // Periods that have not ended, or whose raw samples may be gone, are refused.
    for (start, why) in [
        (iso(now_ms() + HOUR_MS), "has not ended"),
        ("2001-01-01".to_string(), "raw_retention_days"),
    ] {
        let out = Command::new(bin_path("vmmon-collector"))
            .args(["rating", "process", "--period-start", &start, "--data"])
            .arg(c.data.path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "{err}");
    }
}

#[test]
fn auth_modes_trusted_headers_and_noauth() {
    // Without the proxies' addresses the mode is refused at config load.
    let (_d0, cfg0) = collector_config("[rating]\nauth = \"trusted_headers\"\nprocess = false\n");
    let out = Command::new(bin_path("vmmon-collector"))
        .args(["serve", "--check-config", "--config"])
        .arg(&cfg0)
        .arg("--data")
        .arg(_d0.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("trusted_proxies"),
        "{out:?}"
    );
    // Headers from an address that is not a trusted proxy identify nobody.
    let (_d1, cfg1) = collector_config(
        "[rating]\nauth = \"trusted_headers\"\ntrusted_proxies = [\"192.0.2.0/24\"]\nprocess = false\n",
    );
    let c = Collector::start_with(&["--config", cfg1.to_str().unwrap()]);
    let forged = Api::with(&c, &[("X-Roles", "admin"), ("X-Project-Id", "ops")]);
    fault(
        &forged.get("/v1/rating/modules"),
        401,
        "identity headers are only accepted from the configured trusted proxies",
    );
    drop(c);

    let (_d, cfg) = collector_config(
        "[rating]\nauth = \"trusted_headers\"\ntrusted_proxies = [\"127.0.0.0/8\", \"::1/128\"]\nprocess = false\n",
    );
    let c = Collector::start_with(&["--config", cfg.to_str().unwrap()]);
    let admin = Api::with(&c, &[("X-Roles", "reader,admin"), ("X-Project-Id", "ops")]);
    let member = Api::with(&c, &[("X-Roles", "member"), ("X-Project-Id", "proj-a")]);
    let anon = Api::with(&c, &[]);
    assert_eq!(admin.get("/v1/rating/modules").status, 200);
    fault(
        &member.get("/v1/rating/modules"),
        403,
        "Policy doesn't allow rating:list_modules to be performed.",
    );
    assert_eq!(anon.get("/v1/rating/modules").status, 401);
    // A session token means nothing behind the proxy.
    let sid = c.admin_session();
    assert_eq!(Api::token(&c, &sid).get("/v1/rating/modules").status, 401);
    // Scoping by X-Project-Id: the admin sees its own project unless all_tenants.
    let s = admin.ok("/v1/report/summary");
    assert_eq!(s["summary"][0]["tenant_id"], "ops");
    assert_eq!(
        admin.ok("/v1/report/summary?all_tenants=true")["summary"][0]["tenant_id"],
        "ALL"
    );
    assert_eq!(
        member.ok("/v1/report/summary")["summary"][0]["tenant_id"],
        "proj-a"
    );
    assert_eq!(member.get("/v1/report/total?tenant_id=proj-b").status, 403);
    assert_eq!(
        member.ok("/v1/storage/dataframes"),
        json!({"dataframes": []})
    );
    let no_project = Api::with(&c, &[("X-Roles", "member")]);
    assert_eq!(
        no_project.ok("/v1/storage/dataframes"),
        json!({"dataframes": []})
    );
    drop(c);

    // noauth: everything passes on loopback...
    let (_d2, cfg2) = collector_config("[rating]\nauth = \"noauth\"\nprocess = false\n");
    let c = Collector::start_with(&["--config", cfg2.to_str().unwrap()]);
    let anon = Api::with(&c, &[]);
    assert_eq!(anon.get("/v1/rating/modules").status, 200);
    assert_eq!(
        anon.create(&format!("{HM}/services"), json!({"name": "instance"}))["name"],
        "instance"
    );
    assert_eq!(
        anon.ok("/v1/report/summary")["summary"][0]["tenant_id"],
        "ALL"
    );
    drop(c);
    // ...and is refused at config load on any other address.
    let out = Command::new(bin_path("vmmon-collector"))
        .args(["serve", "--listen", "0.0.0.0:8086", "--config"])
        .arg(&cfg2)
        .args(["--check-config", "--data"])
        .arg(_d2.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("noauth") && err.contains("loopback"), "{err}");
}

/// The Horizon recipe (docs/rating.md "Running under Horizon"): behind a Keystone-validating
/// proxy, `X-Identity-Status` decides first, 401 texts name the proxy's headers, and links follow
/// the proxy's `X-Forwarded-*`; a member reads only its project on `/v2`.
#[test]
fn keystone_proxy_identity_status_forwarded_links_and_v2_scoping() {
    let (_d, cfg) = collector_config(
        "[rating]\nauth = \"trusted_headers\"\ntrusted_proxies = [\"127.0.0.0/8\", \"::1/128\"]\nprocess = false\n",
    );
    let c = Collector::start_with(&["--config", cfg.to_str().unwrap()]);
    let confirmed = [("X-Identity-Status", "Confirmed")];
    let admin = Api::with(
        &c,
        &[confirmed[0], ("X-Roles", "admin"), ("X-Project-Id", "ops")],
    );
    let member = Api::with(
        &c,
        &[
            confirmed[0],
            ("X-Roles", "member"),
            ("X-Project-Id", "proj-a"),
        ],
    );
    // keystonemiddleware with delay_auth_decision: an invalid token still forwards the request.
    let invalid = Api::with(
        &c,
        &[
            ("X-Identity-Status", "Invalid"),
            ("X-Roles", "admin"),
            ("X-Project-Id", "ops"),
        ],
    );
    let nobody = Api::with(&c, &[]);
    assert_eq!(admin.get("/v2/rating/modules").status, 200);
    for (api, path, want) in [
        (&invalid, "/v2/rating/modules", "X-Identity-Status: Invalid"),
        (&invalid, "/v1/rating/modules", "X-Identity-Status: Invalid"),
        (&nobody, "/v2/summary", "sent no identity"),
        (&nobody, "/v1/report/total", "sent no identity"),
    ] {
        let a = api.get(path);
        assert_eq!(a.status, 401, "{path}: {}", a.body);
        let text = a.body["message"]
            .as_str()
            .or(a.body["faultstring"].as_str())
            .unwrap();
        assert!(text.contains(want), "{path}: {text}");
    }
    let a = member.get("/v2/scope");
    assert_eq!(a.status, 403, "{}", a.body);
    // An unscoped answer for a member: its own project only (nothing rated: no rows).
    let s = member.ok("/v2/summary?groupby=project_id&filters=project_id:proj-b");
    assert_eq!(s["total"], 0);
    // Links from the proxy's X-Forwarded-Proto/Host.
    let fwd = Api::with(
        &c,
        &[
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "rating.example.com"),
        ],
    );
    assert_eq!(
        fwd.ok("/v2")["links"][0]["href"],
        "https://rating.example.com/v2"
    );
    assert_eq!(
        fwd.ok("/")["versions"][0]["links"][0]["href"],
        "https://rating.example.com/v1"
    );
}
