//! mana_api in process: the VM list and project bandwidth, fed through the real RPC handler by
//! [`FakeAgent`] with known cumulative counters, so every answer is exact.

use axum::http::{Method, StatusCode};
use chrono::NaiveDateTime;
use serde_json::Value;
use vmmon_common::wire::Inventory;

use super::rpc::FakeAgent;
use super::{ADMIN_SID, World};
use crate::CollectorConfig;

/// Epoch ms of a UTC `YYYY-MM-DD HH:MM:SS`.
fn utc(s: &str) -> i64 {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S")
        .unwrap()
        .and_utc()
        .timestamp_millis()
}

/// A world whose collector runs in `zone` and keeps (and accepts) samples of any age.
async fn world_in(zone: &str) -> World {
    World::with_config(CollectorConfig {
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
