//! mana_api in process: the VM list and project bandwidth, fed through the real RPC handler by
//! [`FakeAgent`] with known cumulative counters, so every answer is exact.

use axum::http::{Method, StatusCode};
use chrono::NaiveDateTime;
use serde_json::{Value, json};
use vmmon_common::test_support::inventory;
use vmmon_common::vocab::now_ms;
use vmmon_common::wire::Inventory;

use super::rpc::FakeAgent;
use super::{ADMIN_SID, World};
use crate::{CollectorConfig, admin, store};

/// Epoch ms of a UTC `YYYY-MM-DD HH:MM:SS`.
fn utc(s: &str) -> i64 {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S")
        .unwrap()
        .and_utc()
        .timestamp_millis()
}

/// A world without instances whose collector runs in `zone` and keeps (and accepts) samples of
/// any age.
async fn world_in(zone: &str) -> World {
    World::bare(CollectorConfig {
        timezone: zone.parse().unwrap(),
        raw_retention_days: 0,
        ..CollectorConfig::default()
    })
    .await
}

impl World {
    /// GET `path` as `sid`; the status and the JSON body.
    async fn get(&self, sid: &str, path: &str) -> (StatusCode, Value) {
        let a = self
            .call(Method::GET, path, &[("X-Auth-Token", sid)], "")
            .await;
        (a.status, a.json())
    }

    /// GET `path` as `sid`, which must answer 200.
    async fn ok(&self, sid: &str, path: &str) -> Value {
        let (status, body) = self.get(sid, path).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        body
    }
}

/// `(begin_rate_date, end_rate_date, in_bytes)` of each row.
fn spans(body: &Value) -> Vec<(String, String, i64)> {
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["begin_rate_date"].as_str().unwrap().to_string(),
                r["end_rate_date"].as_str().unwrap().to_string(),
                r["in_bytes"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn flow_days_of_23_and_25_hours_in_a_dst_zone() {
    let w = world_in("Europe/Berlin").await;
    let (mut agent, _) = FakeAgent::new_token(&w.app, "pd", "r1", "x").await;
    agent.register("d1", Inventory::default()).await;
    // 2025-03-30: 02:00 CET → 03:00 CEST. 1,200 B in over 00:50–01:10 UTC (01:50 CET – 03:10
    // CEST): 600 B in the bucket before the gap, 600 B in the one after it.
    agent
        .report("d1", &[(utc("2025-03-30 00:50:00"), 0, 0)])
        .await;
    agent
        .report("d1", &[(utc("2025-03-30 01:10:00"), 1_200, 0)])
        .await;
    // 2025-10-26: 03:00 CEST → 02:00 CET. 600 B in each of 00:00–00:10 UTC (02:00 CEST) and
    // 01:00–01:10 UTC (02:00 CET): the same local label twice, an hour apart.
    agent
        .report("d1", &[(utc("2025-10-26 00:00:00"), 10_000, 0)])
        .await;
    agent
        .report("d1", &[(utc("2025-10-26 00:10:00"), 10_600, 0)])
        .await;
    agent
        .report("d1", &[(utc("2025-10-26 01:00:00"), 10_600, 0)])
        .await;
    agent
        .report("d1", &[(utc("2025-10-26 01:10:00"), 11_200, 0)])
        .await;

    // (query, rows, first begin, last end, the rows that moved bytes)
    type Case<'a> = (
        &'a str,
        usize,
        &'a str,
        &'a str,
        Vec<(&'a str, &'a str, i64)>,
    );
    let cases: Vec<Case> = vec![
        (
            "start=2025-03-30&end=2025-03-30",
            23 * 6,
            "2025-03-30 00:00:00",
            "2025-03-31 00:00:00",
            vec![
                ("2025-03-30 01:50:00", "2025-03-30 03:00:00", 600),
                ("2025-03-30 03:00:00", "2025-03-30 03:10:00", 600),
            ],
        ),
        (
            "start=2025-10-26&end=2025-10-26",
            25 * 6,
            "2025-10-26 00:00:00",
            "2025-10-27 00:00:00",
            vec![
                ("2025-10-26 02:00:00", "2025-10-26 02:10:00", 600),
                ("2025-10-26 02:00:00", "2025-10-26 02:10:00", 600),
            ],
        ),
        // A start inside the gap is the gap's end (docs/mana_api.md): 02:10 → 03:00.
        (
            "start=2025-03-30%2002:10:00&end=2025-03-30%2003:20:00",
            2,
            "2025-03-30 03:00:00",
            "2025-03-30 03:20:00",
            vec![("2025-03-30 03:00:00", "2025-03-30 03:10:00", 600)],
        ),
        // An ambiguous start is its earlier instant: 02:30 CEST, so both 02:30s are in.
        (
            "start=2025-10-26%2002:30:00&end=2025-10-26%2003:00:00",
            9,
            "2025-10-26 02:30:00",
            "2025-10-26 03:00:00",
            vec![("2025-10-26 02:00:00", "2025-10-26 02:10:00", 600)],
        ),
    ];
    for (query, n, first, last, moved) in cases {
        let body = w
            .ok(
                ADMIN_SID,
                &format!("/mana_api/flow?project_id=pd&region=r1&{query}"),
            )
            .await;
        let rows = spans(&body);
        assert_eq!(rows.len(), n, "{query}");
        assert_eq!(rows[0].0, first, "{query}");
        assert_eq!(rows[n - 1].1, last, "{query}");
        let got: Vec<(&str, &str, i64)> = rows
            .iter()
            .filter(|r| r.2 != 0)
            .map(|r| (r.0.as_str(), r.1.as_str(), r.2))
            .collect();
        assert_eq!(got, moved, "{query}");
    }
}

const GIB: u64 = 1024 * 1024 * 1024;

/// Epoch ms of an Asia/Shanghai (UTC+8) local `YYYY-MM-DD HH:MM:SS`.
fn local(s: &str) -> i64 {
    utc(s) - 8 * 3_600_000
}

/// Query-string encoding for the few characters the tests use.
fn enc(s: &str) -> String {
    s.replace(' ', "%20")
        .replace(',', "%2C")
        .replace('\'', "%27")
}

impl World {
    /// A tenant user of `project` with a session; returns the session id.
    async fn tenant_session(&self, name: &str, project: &str) -> String {
        let id = admin::add_user(
            &self.app.store,
            name,
            &format!("{name}-password"),
            Some(project),
        )
        .await
        .unwrap();
        let sid = format!("sid-{name}");
        let s = sid.clone();
        self.app
            .store
            .write(move |c| store::users::create_session(c, &s, id, now_ms()))
            .await
            .unwrap();
        sid
    }

    /// Asserts an error answer: the status, `{"msg", "code"}` with the same code, and a part of
    /// the message.
    async fn err(&self, sid: Option<&str>, path: &str, status: u16, needle: &str) {
        let headers: Vec<(&str, &str)> = sid.map(|s| vec![("X-Auth-Token", s)]).unwrap_or_default();
        let a = self.call(Method::GET, path, &headers, "").await;
        let body = a.json();
        assert_eq!(a.status.as_u16(), status, "GET {path}: {body}");
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
}

/// A world in UTC+8 fed with known counters through the RPC handler:
///
/// * project `alpha`, region `r1` (party `acme`): VMs `a1` and `a2`; region `r2` (party `acme`):
///   VM `a3`;
/// * project `beta`, region `r1` (party `other`): VM `b1`.
///
/// `a1` covers a bucket-spanning interval across the local month boundary, a counter reset, a
/// duplicate resend and a late sample; `a3` an uneven integer split.
struct Fed {
    w: World,
    admin: String,
    alpha: String,
    beta: String,
    registered_at: i64,
}

async fn fed() -> Fed {
    let w = world_in("Asia/Shanghai").await;
    let app = w.app.clone();
    let registered_at = now_ms();
    let (mut ga, _) = FakeAgent::new_token(&app, "alpha", "r1", "acme").await;
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
    )
    .await;
    ga.register(
        "a2",
        inventory("alpha-two", 2, 4 * GIB, 40 * GIB, &["10.0.0.2"], &[]),
    )
    .await;
    let (mut gr2, _) = FakeAgent::new_token(&app, "alpha", "r2", "acme").await;
    gr2.register(
        "a3",
        inventory("alpha-three", 1, GIB / 2, 10 * GIB, &[], &["203.0.113.7"]),
    )
    .await;
    let (mut gb, _) = FakeAgent::new_token(&app, "beta", "r1", "other").await;
    gb.register(
        "b1",
        inventory("beta-one", 4, 8 * GIB, 20 * GIB, &["192.168.9.9"], &[]),
    )
    .await;
    // a1: a two-sample batch: 60,000 B in and 1,200 B out during 23:40–23:50.
    let first = ga
        .report(
            "a1",
            &[
                (local("2025-01-31 23:40:00"), 1_000, 5_000),
                (local("2025-01-31 23:50:00"), 61_000, 6_200),
            ],
        )
        .await;
    // The agent resends it (e.g. the ack was lost): acknowledged as a duplicate, counted once.
    assert!(ga.send(&first).await.unwrap().duplicate);
    // 23:50 → 00:05 crosses a bucket edge and the month boundary: 60,000 + 30,000.
    ga.report("a1", &[(local("2025-02-01 00:05:00"), 151_000, 6_200)])
        .await;
    // Reboot: the counters restart; nothing is attributed to 00:05–00:15.
    ga.report("a1", &[(local("2025-02-01 00:15:00"), 500, 10)])
        .await;
    // 00:15 → 00:25: 6,000 in and 1,200 out, half in each bucket.
    ga.report("a1", &[(local("2025-02-01 00:25:00"), 6_500, 1_210)])
        .await;
    // A late sample older than the last one is ignored for flow (no spike from its counters).
    ga.report(
        "a1",
        &[(local("2025-02-01 00:20:00"), 9_999_999, 9_999_999)],
    )
    .await;

    // a2: 6,000 B in during 23:45–23:55, half in each bucket.
    ga.report("a2", &[(local("2025-01-31 23:45:00"), 0, 0)])
        .await;
    ga.report("a2", &[(local("2025-01-31 23:55:00"), 6_000, 0)])
        .await;

    // a3 (alpha/r2): 600,000 B per bucket 10:00–10:30, then 1,000 B over 15 minutes → 666 + 334.
    gr2.report(
        "a3",
        &[
            (local("2025-01-31 10:00:00"), 0, 0),
            (local("2025-01-31 10:30:00"), 1_800_000, 0),
        ],
    )
    .await;
    gr2.report("a3", &[(local("2025-01-31 10:45:00"), 1_801_000, 0)])
        .await;

    // b1 (beta/r1, same region name as alpha's): 6,000,000 B in, 600 B out in 23:40.
    gb.report(
        "b1",
        &[
            (local("2025-01-31 23:40:00"), 0, 0),
            (local("2025-01-31 23:50:00"), 6_000_000, 600),
        ],
    )
    .await;

    let alpha = w.tenant_session("alice", "alpha").await;
    let beta = w.tenant_session("bob", "beta").await;
    Fed {
        w,
        admin: ADMIN_SID.to_string(),
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

#[tokio::test]
async fn flow_per_bucket_is_exact() {
    let f = fed().await;
    let (w, admin) = (&f.w, f.admin.as_str());
    let window = format!(
        "start={}&end={}",
        enc("2025-01-31 23:40:00"),
        enc("2025-02-01 00:30:00")
    );

    // Exactly the five buckets overlapping [23:40, 00:30), with the exact rates.
    let body = w
        .ok(
            admin,
            &format!("/mana_api/flow?project_id=alpha&region=r1&{window}"),
        )
        .await;
    assert_eq!(rows(&body), alpha_r1_rows());
    assert_eq!(body["data"][0]["in_rate"], json!(105.0));
    assert_eq!(body["data"][2]["in_rate"], json!(50.0));
    assert_eq!(body["data"][3]["out_rate"], json!(1.0));

    // Whole days (end day inclusive): one row per bucket, zero where nothing moved.
    let days = w
        .ok(
            admin,
            "/mana_api/flow?project_id=alpha&region=r1&start=2025-01-31&end=2025-02-01",
        )
        .await;
    let all = rows(&days);
    assert_eq!(all.len(), 2 * 144);
    assert_eq!(all[0]["begin_rate_date"], "2025-01-31 00:00:00");
    assert_eq!(all[0]["in_rate"], json!(0.0));
    assert_eq!(all[287]["end_rate_date"], "2025-02-02 00:00:00");
    assert_eq!(nonzero(&days), alpha_r1_rows());

    // No region: every region of the project, each as its own series.
    let both = w
        .ok(
            admin,
            "/mana_api/flow?project_id=alpha&start=2025-01-31&end=2025-01-31",
        )
        .await;
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
    let part = w
        .ok(
            admin,
            &format!(
                "/mana_api/flow?project_id=alpha&region=r1&start={}&end={}",
                enc("2025-01-31 23:45:00"),
                enc("2025-02-01 00:00:00")
            ),
        )
        .await;
    assert_eq!(rows(&part), alpha_r1_rows()[..2].to_vec());

    // Default: the last 24 hours — the series exist, with nothing measured in them.
    let recent = w.ok(admin, "/mana_api/flow?project_id=alpha").await;
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
    w.app
        .store
        .write(|c| {
            c.execute("DELETE FROM vm_samples", crate::store::params![])?;
            Ok(())
        })
        .await
        .unwrap();
    let again = w
        .ok(
            admin,
            &format!("/mana_api/flow?project_id=alpha&region=r1&{window}"),
        )
        .await;
    assert_eq!(rows(&again), alpha_r1_rows());
}

#[tokio::test]
async fn flow_monthly_peaks_dates_and_totals_are_exact() {
    let f = fed().await;
    let (w, admin) = (&f.w, f.admin.as_str());
    // No month: every month with data, in the collector's zone (Feb starts at 00:00 UTC+8).
    let body = w.ok(admin, "/mana_api/flow_monthly?project_id=alpha").await;
    assert_eq!(body, json!({"monthly_data": alpha_months()}));
    assert_eq!(body["monthly_data"][0]["max_in_rate"], json!(105.0));
    assert_eq!(body["monthly_data"][0]["total_in"], json!(126_000));

    let feb = w
        .ok(
            admin,
            "/mana_api/flow_monthly?project_id=alpha&month=2025-02",
        )
        .await;
    assert_eq!(feb["monthly_data"], json!([alpha_months()[2]]));
    let r2 = w
        .ok(admin, "/mana_api/flow_monthly?project_id=alpha&region=r2")
        .await;
    assert_eq!(r2["monthly_data"], json!([alpha_months()[1]]));
    let empty = w
        .ok(
            admin,
            "/mana_api/flow_monthly?project_id=alpha&month=2025-03",
        )
        .await;
    assert_eq!(empty, json!({"monthly_data": []}));

    // Admin without project_id: every project.
    let all = w.ok(admin, "/mana_api/flow_monthly").await;
    let mut want = alpha_months();
    want.extend(beta_months());
    assert_eq!(all["monthly_data"], json!(want));
}

#[tokio::test]
async fn tenants_see_only_their_project() {
    let f = fed().await;
    let w = &f.w;

    // VM list: alice (alpha) sees a1, a2, a3; bob (beta) sees b1; the admin sees all four.
    let ids = |body: &Value| -> Vec<String> {
        body["vm_servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["instance_id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        ids(&w.ok(&f.alpha, "/mana_api/vm").await),
        ["a1", "a2", "a3"]
    );
    assert_eq!(
        ids(&w
            .ok(&f.alpha, "/mana_api/vm?tenant_id=alpha&region=r1")
            .await),
        ["a1", "a2"]
    );
    assert_eq!(ids(&w.ok(&f.beta, "/mana_api/vm").await), ["b1"]);
    assert_eq!(
        ids(&w.ok(&f.admin, "/mana_api/vm").await),
        ["a1", "a2", "a3", "b1"]
    );
    assert_eq!(
        ids(&w.ok(&f.admin, "/mana_api/vm?tenant_id=beta").await),
        ["b1"]
    );
    // Same region name in both projects: a tenant's region filter stays inside its project.
    assert_eq!(ids(&w.ok(&f.beta, "/mana_api/vm?region=r1").await), ["b1"]);
    assert_eq!(
        ids(&w.ok(&f.beta, "/mana_api/vm?party=acme").await),
        Vec::<String>::new()
    );

    // Asking for the other project: 403 with the seed's message shape, on every endpoint.
    w.err(
        Some(&f.alpha),
        "/mana_api/vm?tenant_id=beta",
        403,
        "Malformed request URL: URL's tenant_id 'beta' doesn't match Context's project_id 'alpha'",
    )
    .await;
    w.err(
        Some(&f.beta),
        "/mana_api/flow?project_id=alpha",
        403,
        "Malformed request URL: URL's project_id 'alpha' doesn't match Context's project_id 'beta'",
    )
    .await;
    w.err(
        Some(&f.beta),
        "/mana_api/flow_monthly?project_id=alpha&month=2025-01",
        403,
        "Malformed request URL: URL's project_id 'alpha' doesn't match Context's project_id 'beta'",
    )
    .await;

    // Flows: a tenant without project_id gets its own project only, never the other's bytes,
    // although both have a region r1 with traffic in the same bucket.
    let days = "start=2025-01-31&end=2025-02-01";
    let alice = w.ok(&f.alpha, &format!("/mana_api/flow?{days}")).await;
    assert!(rows(&alice).iter().all(|r| r["project_id"] == "alpha"));
    let alice_r1: Vec<Value> = nonzero(&alice)
        .into_iter()
        .filter(|r| r["region"] == "r1")
        .collect();
    assert_eq!(alice_r1, alpha_r1_rows());
    let bob = w.ok(&f.beta, &format!("/mana_api/flow?{days}")).await;
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
        w.ok(&f.alpha, "/mana_api/flow_monthly").await,
        json!({"monthly_data": alpha_months()})
    );
    assert_eq!(
        w.ok(&f.alpha, "/mana_api/flow_monthly?project_id=alpha")
            .await,
        json!({"monthly_data": alpha_months()})
    );
    assert_eq!(
        w.ok(&f.beta, "/mana_api/flow_monthly").await,
        json!({"monthly_data": beta_months()})
    );
}

#[tokio::test]
async fn vm_list_fields_filters_and_paging() {
    let f = fed().await;
    let w = &f.w;
    let body = w
        .ok(
            &f.admin,
            "/mana_api/vm?tenant_id=alpha&region=r1&party=acme",
        )
        .await;
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
            "net_interfaces": "",
        })
    );
    assert_eq!(body["vm_servers"][1]["wan_ip_set"], "");
    assert_eq!(body["vm_servers"][1]["lan_ip_set"], "10.0.0.2");

    // Half a GiB of memory rounds to 1, not 0.
    let a3 = w.ok(&f.admin, "/mana_api/vm?region=r2").await;
    assert_eq!(a3["vm_servers"][0]["instance_id"], "a3");
    assert_eq!(a3["vm_servers"][0]["mem_size"], 1);
    let other = w.ok(&f.admin, "/mana_api/vm?party=other").await;
    assert_eq!(other["vm_servers"].as_array().unwrap().len(), 1);
    assert_eq!(other["vm_servers"][0]["instance_id"], "b1");
    let none = w.ok(&f.admin, "/mana_api/vm?region=nowhere").await;
    assert_eq!(none, json!({"code": 200, "vm_servers": [], "total": 0}));

    // 1-based inclusive f/t over the instance ids in order; total counts every match.
    // (query, ids listed, total); empty values mean "not given" (portals send them).
    let cases: &[(&str, &[&str], i64)] = &[
        ("f=1&t=2", &["a1", "a2"], 4),
        ("f=2&t=3", &["a2", "a3"], 4),
        ("f=3", &["a3", "b1"], 4),
        ("t=1", &["a1"], 4),
        ("f=4&t=10", &["b1"], 4),
        ("f=5&t=9", &[], 4),
        ("tenant_id=alpha&f=2&t=2", &["a2"], 3),
        (
            "tenant_id=&region=&party=&f=&t=",
            &["a1", "a2", "a3", "b1"],
            4,
        ),
    ];
    for (q, want, total) in cases {
        let b = w.ok(&f.admin, &format!("/mana_api/vm?{q}")).await;
        let ids: Vec<&str> = b["vm_servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["instance_id"].as_str().unwrap())
            .collect();
        assert_eq!(
            (ids.as_slice(), b["total"].as_i64().unwrap()),
            (*want, *total),
            "{q}"
        );
    }
}

#[tokio::test]
async fn errors_have_status_and_body() {
    let w = World::new().await;
    let admin = ADMIN_SID;
    let tenant = w.tenant_session("carol", "gamma").await;
    let paths = ["/mana_api/vm", "/mana_api/flow", "/mana_api/flow_monthly"];

    // 401: no token, an empty one, an unknown one.
    for p in paths {
        w.err(None, p, 401, "missing X-Auth-Token").await;
        w.err(Some(""), p, 401, "X-Auth-Token").await;
        w.err(
            Some("3b5e2f4c-0000-4000-8000-000000000000"),
            p,
            401,
            "expired or unknown",
        )
        .await;
    }

    // 404: unknown paths under /mana_api, with or without a token.
    for p in [
        "/mana_api/nope",
        "/mana_api",
        "/mana_api/",
        "/mana_api/vm/extra",
        "/mana_api/flow_monthly/x",
    ] {
        w.err(None, p, 404, &format!("no such path: {p}")).await;
        w.err(Some(admin), p, 404, "no such path").await;
    }

    // 405: not GET.
    let a = w
        .call(Method::POST, "/mana_api/vm", &[("X-Auth-Token", admin)], "")
        .await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(a.json()["code"], 405);

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
        w.err(Some(admin), path, 400, needle).await;
    }
    // A tenant's bad parameter is 400 too (checked before anything is read).
    w.err(Some(&tenant), "/mana_api/vm?f=0", 400, "f must be")
        .await;

    // 403 for a tenant naming another project, even one that does not exist.
    w.err(
        Some(&tenant),
        "/mana_api/vm?tenant_id=delta",
        403,
        "URL's tenant_id 'delta' doesn't match Context's project_id 'gamma'",
    )
    .await;
    w.err(
        Some(&tenant),
        "/mana_api/flow?project_id=delta",
        403,
        "URL's project_id 'delta'",
    )
    .await;
    w.err(
        Some(&tenant),
        "/mana_api/flow_monthly?project_id=delta",
        403,
        "Context's project_id 'gamma'",
    )
    .await;
    // SQL metacharacters in a name are just a name: nothing matches, nothing breaks.
    let q = w
        .ok(
            admin,
            &format!("/mana_api/vm?tenant_id={}", enc("x' OR '1'='1")),
        )
        .await;
    assert_eq!(q["vm_servers"], json!([]));

    // A tenant with nothing registered yet gets empty answers, not errors.
    assert_eq!(
        w.ok(&tenant, "/mana_api/vm").await,
        json!({"code": 200, "vm_servers": [], "total": 0})
    );
    assert_eq!(
        w.ok(&tenant, "/mana_api/flow_monthly").await,
        json!({"monthly_data": []})
    );
    assert_eq!(w.ok(&tenant, "/mana_api/flow").await, json!({"data": []}));
}

#[tokio::test]
async fn expired_session_is_401() {
    let w = World::new().await;
    let admin_id = w
        .app
        .store
        .read(|c| store::users::user_by_name(c, "admin"))
        .await
        .unwrap()
        .unwrap()
        .id;
    // Idle for longer than the default 24 h.
    let stale = now_ms() - 25 * 3_600_000;
    w.app
        .store
        .write(move |c| store::users::create_session(c, "stale", admin_id, stale))
        .await
        .unwrap();
    w.ok(ADMIN_SID, "/mana_api/vm").await;
    for p in [
        "/mana_api/vm",
        "/mana_api/flow?project_id=pa",
        "/mana_api/flow_monthly",
    ] {
        w.err(Some("stale"), p, 401, "X-Auth-Token is expired or unknown")
            .await;
    }
}
