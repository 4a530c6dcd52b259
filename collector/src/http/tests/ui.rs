//! The dashboard in process: its embedded page and headers, `GET /api/series` (downsampling,
//! tenant isolation, bad input) and the dashboard's own reads.

use axum::http::{Method, StatusCode, header};
use serde_json::{Value, json};

use super::{ADMIN_SID, NOW_SECS, TENANT_A_SID, TENANT_B_SID, World};
use crate::http::ui::CONTENT_SECURITY_POLICY;

#[tokio::test]
async fn page_and_assets_are_embedded_with_a_strict_policy() {
    let w = World::new().await;
    // (path, status, content type prefix)
    let cases: &[(&str, StatusCode, &str)] = &[
        ("/ui", StatusCode::OK, "text/html"),
        ("/ui/", StatusCode::OK, "text/html"),
        ("/ui/assets/app.js", StatusCode::OK, "text/javascript"),
        ("/ui/assets/app.css", StatusCode::OK, "text/css"),
        (
            "/ui/assets/uPlot.iife.min.js",
            StatusCode::OK,
            "text/javascript",
        ),
        ("/ui/assets/uPlot.min.css", StatusCode::OK, "text/css"),
        ("/ui/assets/uPlot.LICENSE.txt", StatusCode::OK, "text/plain"),
        (
            "/ui/assets/nope.js",
            StatusCode::NOT_FOUND,
            "application/json",
        ),
        (
            "/ui/assets/..%2Fmod.rs",
            StatusCode::NOT_FOUND,
            "application/json",
        ),
    ];
    for &(path, status, ctype) in cases {
        let a = w.call(Method::GET, path, &[], "").await;
        assert_eq!(a.status, status, "{path}");
        let got = a.headers[header::CONTENT_TYPE].to_str().unwrap();
        assert!(got.starts_with(ctype), "{path}: {got}");
        assert_eq!(
            a.headers[header::CONTENT_SECURITY_POLICY],
            CONTENT_SECURITY_POLICY,
            "{path}"
        );
        assert_eq!(a.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(a.headers[header::X_FRAME_OPTIONS], "DENY");
        assert!(a.headers.get(header::SET_COOKIE).is_none(), "{path}");
    }
    // The policy allows no inline code, and the page has none it would block.
    assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
    assert!(CONTENT_SECURITY_POLICY.contains("script-src 'self';"));
    let page = String::from_utf8(w.call(Method::GET, "/ui", &[], "").await.body).unwrap();
    for script in page.split("<script").skip(1) {
        assert!(
            script.trim_start().starts_with("src="),
            "inline script: {script}"
        );
    }
    assert!(!page.contains("style="), "inline style in the page");
    assert!(!page.contains(" onclick="), "inline handler in the page");
    let licence = w
        .call(Method::GET, "/ui/assets/uPlot.LICENSE.txt", &[], "")
        .await;
    assert!(String::from_utf8_lossy(&licence.body).contains("MIT License"));
}

/// GET `path` as `sid`; the status and the JSON body.
async fn get(w: &World, sid: &str, path: &str) -> (StatusCode, Value) {
    let a = w
        .call(Method::GET, path, &[("X-Auth-Token", sid)], "")
        .await;
    (a.status, a.json())
}

/// GET `path` as `sid`, which must answer 200.
async fn ok(w: &World, sid: &str, path: &str) -> Value {
    let (status, body) = get(w, sid, path).await;
    assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
    body
}

fn series_path(id: &str, metric: &str, extra: &str) -> String {
    let start = NOW_SECS * 1000 - 60_000;
    let end = NOW_SECS * 1000 + 60_000;
    format!("/api/series?instance_id={id}&metric={metric}&start={start}&end={end}{extra}")
}

#[tokio::test]
async fn series_is_downsampled_scoped_and_checks_its_input() {
    let w = World::new().await;
    let unknown = json!({"msg": "unknown instance_id \"zz\"", "code": 404});
    // (session, path, status, body or None when the answer is a series)
    let cases: Vec<(&str, String, StatusCode, Option<Value>)> = vec![
        (
            ADMIN_SID,
            series_path("a1", "cpu", ""),
            StatusCode::OK,
            None,
        ),
        (
            TENANT_A_SID,
            series_path("a2", "mem", "&points=3"),
            StatusCode::OK,
            None,
        ),
        (
            TENANT_B_SID,
            series_path("b1", "net_out", ""),
            StatusCode::OK,
            None,
        ),
        // Another project's VM answers exactly like an unknown one.
        (
            TENANT_B_SID,
            series_path("a1", "cpu", ""),
            StatusCode::NOT_FOUND,
            Some(json!({"msg": "unknown instance_id \"a1\"", "code": 404})),
        ),
        (
            ADMIN_SID,
            series_path("zz", "cpu", ""),
            StatusCode::NOT_FOUND,
            Some(unknown.clone()),
        ),
        (
            ADMIN_SID,
            "/api/series?metric=cpu".into(),
            StatusCode::BAD_REQUEST,
            Some(json!({"msg": "missing instance_id", "code": 400})),
        ),
        (
            ADMIN_SID,
            series_path("a1", "cpu_pct", ""),
            StatusCode::BAD_REQUEST,
            Some(
                json!({"msg": "unknown metric \"cpu_pct\": give one of cpu, mem, disk_read, disk_write, net_in, net_out", "code": 400}),
            ),
        ),
        (
            ADMIN_SID,
            series_path("a1", "cpu", "&points=0"),
            StatusCode::BAD_REQUEST,
            Some(
                json!({"msg": "points must be an integer from 1 to 5000, got \"0\"", "code": 400}),
            ),
        ),
        (
            ADMIN_SID,
            series_path("a1", "cpu", "&points=5001"),
            StatusCode::BAD_REQUEST,
            Some(
                json!({"msg": "points must be an integer from 1 to 5000, got \"5001\"", "code": 400}),
            ),
        ),
        (
            ADMIN_SID,
            "/api/series?instance_id=a1&metric=cpu&start=10&end=10".into(),
            StatusCode::BAD_REQUEST,
            Some(json!({"msg": "end must be later than start", "code": 400})),
        ),
        (
            ADMIN_SID,
            "/api/series?instance_id=a1&metric=cpu&start=yesterday".into(),
            StatusCode::BAD_REQUEST,
            Some(
                json!({"msg": "start must be a time in epoch milliseconds, got \"yesterday\"", "code": 400}),
            ),
        ),
        (
            ADMIN_SID,
            "/api/series?instance_id=a1&metric=cpu&start=-9223372036854775808&end=-9223372006854775808".into(),
            StatusCode::BAD_REQUEST,
            Some(
                json!({"msg": "end must be a time in epoch milliseconds, got \"-9223372006854775808\"", "code": 400}),
            ),
        ),
        (
            ADMIN_SID,
            "/api/series?instance_id=a1&metric=cpu&start=0&end=9007199254740992".into(),
            StatusCode::BAD_REQUEST,
            Some(
                json!({"msg": "end must be a time in epoch milliseconds, got \"9007199254740992\"", "code": 400}),
            ),
        ),
        (
            ADMIN_SID,
            "/api/series?instance_id=a1&metric=cpu&start=0&end=99999999999999".into(),
            StatusCode::BAD_REQUEST,
            Some(json!({"msg": "the window may span at most 366 days", "code": 400})),
        ),
        (
            ADMIN_SID,
            "/api/series?instance_id=a%20b&metric=cpu".into(),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            "nope",
            series_path("a1", "cpu", ""),
            StatusCode::UNAUTHORIZED,
            None,
        ),
    ];
    for (sid, path, status, body) in cases {
        let (got, answer) = get(&w, sid, &path).await;
        assert_eq!(got, status, "{path}: {answer}");
        match body {
            Some(b) => assert_eq!(answer, b, "{path}"),
            None if status == StatusCode::OK => {
                // One sample in the window: one step holding it.
                assert_eq!(answer["count"], json!([1]), "{path}: {answer}");
                assert_eq!(answer["t_ms"].as_array().unwrap().len(), 1);
                assert!(answer["step_ms"].as_i64().unwrap() >= 1);
            }
            None => {}
        }
    }
    // Exact figures: the seeded sample has cpu 12.345, net_out 4.0.
    let a = ok(&w, ADMIN_SID, &series_path("a1", "cpu", "&points=10")).await;
    assert_eq!(
        (
            a["min"][0].clone(),
            a["avg"][0].clone(),
            a["max"][0].clone()
        ),
        (json!(12.345), json!(12.345), json!(12.345))
    );
    assert_eq!(a["unit"], "%");
    assert_eq!(a["step_ms"], 12_000);
    assert_eq!(a["resolution"], "samples");
    // 30 days in 1,000 points: read from the per-minute rollup, the window rounded out to whole
    // minutes and the step to whole minutes (43.2 min → 44 min), the same figures.
    let (start, end) = (NOW_SECS * 1000 - 30 * 86_400_000 + 1, NOW_SECS * 1000 + 1);
    let a = ok(
        &w,
        ADMIN_SID,
        &format!("/api/series?instance_id=a1&metric=cpu&start={start}&end={end}&points=1000"),
    )
    .await;
    assert_eq!(a["resolution"], "minutes", "{a}");
    assert_eq!(a["step_ms"], 44 * 60_000, "{a}");
    let (s, e) = (
        a["start_ms"].as_i64().unwrap(),
        a["end_ms"].as_i64().unwrap(),
    );
    assert!(s % 60_000 == 0 && s <= start && start - s < 60_000, "{a}");
    assert!(e % 60_000 == 0 && e >= end && e - end < 60_000, "{a}");
    assert_eq!(
        (
            a["count"].clone(),
            a["min"].clone(),
            a["avg"].clone(),
            a["max"].clone()
        ),
        (
            json!([1]),
            json!([12.345]),
            json!([12.345]),
            json!([12.345])
        )
    );
    let a = ok(&w, TENANT_B_SID, &series_path("b1", "net_out", "")).await;
    assert_eq!(
        (a["avg"][0].clone(), a["unit"].clone()),
        (json!(4.0), json!("KB/s"))
    );
    // Bad input changed nothing and the store still answers.
    assert_eq!(
        ok(&w, ADMIN_SID, "/ui/api/fleet").await["vms"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

#[tokio::test]
async fn fleet_me_and_cdn_are_scoped() {
    let w = World::new().await;
    let ids = |v: &Value| -> Vec<String> {
        v["vms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["instance_id"].as_str().unwrap().to_string())
            .collect()
    };
    // (session, fleet ids)
    for (sid, want) in [
        (ADMIN_SID, vec!["a1", "a2", "b1"]),
        (TENANT_A_SID, vec!["a1", "a2"]),
        (TENANT_B_SID, vec!["b1"]),
    ] {
        let f = ok(&w, sid, "/ui/api/fleet").await;
        assert_eq!(ids(&f), want, "{sid}");
        let row = &f["vms"][0];
        assert_eq!(row["cpu_pct"], 12.345);
        assert_eq!(row["mem_pct"], 41.256);
        assert_eq!(row["name"], format!("host-{}", want[0]));
        assert_eq!(row["monitoring"], false);
        assert_eq!(row["interval_secs"], 30);
        // Seeded long ago: silent now, and nothing in the last hour's sparkline.
        assert_eq!(row["status"], "SHUTOFF");
        assert_eq!(row["cpu_spark"], json!(vec![Value::Null; 30]));
    }
    assert_eq!(
        ok(&w, TENANT_A_SID, "/ui/api/me").await,
        json!({"name": "tenant-a", "is_admin": false, "project": "pa"})
    );
    assert_eq!(
        ok(&w, ADMIN_SID, "/ui/api/me").await,
        json!({"name": "admin", "is_admin": true, "project": null})
    );
    // (session, path, status)
    let cases: &[(&str, &str, StatusCode)] = &[
        ("", "/ui/api/me", StatusCode::UNAUTHORIZED),
        ("nope", "/ui/api/fleet", StatusCode::UNAUTHORIZED),
        (TENANT_A_SID, "/ui/api/cdn/users", StatusCode::FORBIDDEN),
        (TENANT_A_SID, "/ui/api/cdn?user=u", StatusCode::FORBIDDEN),
        (ADMIN_SID, "/ui/api/cdn/users", StatusCode::OK),
        (ADMIN_SID, "/ui/api/cdn", StatusCode::BAD_REQUEST),
        (ADMIN_SID, "/ui/api/cdn?user=nobody", StatusCode::NOT_FOUND),
        (
            ADMIN_SID,
            "/ui/api/cdn?user=u&start=5&end=4",
            StatusCode::BAD_REQUEST,
        ),
        (
            ADMIN_SID,
            "/ui/api/cdn?user=u&start=0&end=9999999999999",
            StatusCode::BAD_REQUEST,
        ),
    ];
    for &(sid, path, status) in cases {
        let (got, body) = get(&w, sid, path).await;
        assert_eq!(got, status, "{sid} {path}: {body}");
    }
    // A CDN user's domains show, its secret never does.
    let secret = crate::admin::cdn::add_user(&w.app.store, "u", "a.example")
        .await
        .unwrap();
    let users = ok(&w, ADMIN_SID, "/ui/api/cdn/users").await;
    assert_eq!(
        users,
        json!({"users": [{"name": "u", "domains": ["a.example"], "revoked": false}]})
    );
    assert!(!users.to_string().contains(&secret));
    let flow = ok(&w, ADMIN_SID, "/ui/api/cdn?user=u").await;
    assert_eq!(
        flow,
        json!({"user": "u", "domains": [{"domain": "a.example", "t_s": [], "bytes": [], "hit_bytes": []}]})
    );
}
