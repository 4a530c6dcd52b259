//! The method-coded API (`/wsgi_app.py`) in process: validation messages, the Python 2 repr
//! against a real CPython 2.7, local times in a non-UTC zone, figures rounded to 2 decimals, and
//! session expiry and purge.

use serde_json::{Value, json};
use vmmon_common::test_support as ts;
use vmmon_common::vocab::now_ms;
use vmmon_common::wire::{Inventory, ProcessSample, Sample};

use super::rpc::FakeAgent;
use super::{ADMIN_SID, TENANT_A_SID, TENANT_B_SID, World};
use crate::store;
use crate::{CollectorConfig, jobs};

/// `(pid, cmd, cpu, mem, disk_write, disk_read, net_in, net_out, start, shutdown)`, as in
/// `legacy_repr_py2.py`.
type Py2Proc = (
    u32,
    &'static str,
    f64,
    f64,
    f64,
    f64,
    f64,
    f64,
    f64,
    Option<f64>,
);
const PY2_PROCS: &[Py2Proc] = &[
    (
        101,
        "it's",
        90.0,
        33.333333,
        1e10,
        123456789.125,
        1e-05,
        0.5,
        1764000000.5,
        None,
    ),
    (
        102,
        "say \"hi\"",
        80.0,
        0.1,
        1.005,
        2.675,
        0.0,
        100.0,
        1234.0,
        Some(1764000123.25),
    ),
    (
        103,
        "both '\"",
        70.0,
        99.999,
        5e-3,
        9876543210.987,
        7.77777,
        0.125,
        0.0,
        None,
    ),
    (104, "back\\slash", 60.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, None),
    (
        105,
        "tab\there\nnl\rcr",
        50.0,
        1.0,
        0.0,
        0.0,
        0.0,
        0.0,
        1.0,
        None,
    ),
    (106, "ctl\x01\x1f", 40.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, None),
    (107, "del\x7f", 30.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, None),
    (
        108,
        "latin\u{e9}\u{ff}",
        20.0,
        1.0,
        0.0,
        0.0,
        0.0,
        0.0,
        1.0,
        None,
    ),
    (
        109,
        "bmp\u{65e5}\u{2028}",
        10.0,
        1.0,
        0.0,
        0.0,
        0.0,
        0.0,
        1.0,
        None,
    ),
    (
        110,
        "astral\u{1F600}",
        5.0,
        1.0,
        0.0,
        0.0,
        0.0,
        0.0,
        1.0,
        None,
    ),
];

/// What CPython 2.7.18 (UCS-4 build) printed for each record of [`PY2_PROCS`]
/// (`python2.7 legacy_repr_py2.py`), with `@DATE@` and `@ID@` standing for the record's values.
const PY2_REPRS: &[&str] = &[
    r#"{u'net_incoming': 0.0, u'shutdown_time': None, u'mem': 33.33, u'net_outgoing': 0.5, u'cmd': u"it's", u'pid': 101, u'instance_id': u'py1', u'disk_write': 10000000000.0, u'disk_read': 123456789.13, u'create_date': u'@DATE@', u'_id': ObjectId('@ID@'), u'cpu_util': 90.0, u'running_time': 1764000000.5}"#,
    r#"{u'net_incoming': 0.0, u'shutdown_time': 1764000123.25, u'mem': 0.1, u'net_outgoing': 100.0, u'cmd': u'say "hi"', u'pid': 102, u'instance_id': u'py1', u'disk_write': 1.0, u'disk_read': 2.68, u'create_date': u'@DATE@', u'_id': ObjectId('@ID@'), u'cpu_util': 80.0, u'running_time': 1234.0}"#,
    r#"{u'net_incoming': 7.78, u'shutdown_time': None, u'mem': 100.0, u'net_outgoing': 0.13, u'cmd': u'both \'"', u'pid': 103, u'instance_id': u'py1', u'disk_write': 0.01, u'disk_read': 9876543210.99, u'create_date': u'@DATE@', u'_id': ObjectId('@ID@'), u'cpu_util': 70.0, u'running_time': 0.0}"#,
    r#"{u'net_incoming': 0.0, u'shutdown_time': None, u'mem': 1.0, u'net_outgoing': 0.0, u'cmd': u'back\\slash', u'pid': 104, u'instance_id': u'py1', u'disk_write': 0.0, u'disk_read': 0.0, u'create_date': u'@DATE@', u'_id': ObjectId('@ID@'), u'cpu_util': 60.0, u'running_time': 1.0}"#,
    r#"{u'net_incoming': 0.0, u'shutdown_time': None, u'mem': 1.0, u'net_outgoing': 0.0, u'cmd': u'tab\there\nnl\rcr', u'pid': 105, u'instance_id': u'py1', u'disk_write': 0.0, u'disk_read': 0.0, u'create_date': u'@DATE@', u'_id': ObjectId('@ID@'), u'cpu_util': 50.0, u'running_time': 1.0}"#,
    r#"{u'net_incoming': 0.0, u'shutdown_time': None, u'mem': 1.0, u'net_outgoing': 0.0, u'cmd': u'ctl\x01\x1f', u'pid': 106, u'instance_id': u'py1', u'disk_write': 0.0, u'disk_read': 0.0, u'create_date': u'@DATE@', u'_id': ObjectId('@ID@'), u'cpu_util': 40.0, u'running_time': 1.0}"#,
    r#"{u'net_incoming': 0.0, u'shutdown_time': None, u'mem': 1.0, u'net_outgoing': 0.0, u'cmd': u'del\x7f', u'pid': 107, u'instance_id': u'py1', u'disk_write': 0.0, u'disk_read': 0.0, u'create_date': u'@DATE@', u'_id': ObjectId('@ID@'), u'cpu_util': 30.0, u'running_time': 1.0}"#,
    r#"{u'net_incoming': 0.0, u'shutdown_time': None, u'mem': 1.0, u'net_outgoing': 0.0, u'cmd': u'latin\xe9\xff', u'pid': 108, u'instance_id': u'py1', u'disk_write': 0.0, u'disk_read': 0.0, u'create_date': u'@DATE@', u'_id': ObjectId('@ID@'), u'cpu_util': 20.0, u'running_time': 1.0}"#,
    r#"{u'net_incoming': 0.0, u'shutdown_time': None, u'mem': 1.0, u'net_outgoing': 0.0, u'cmd': u'bmp\u65e5\u2028', u'pid': 109, u'instance_id': u'py1', u'disk_write': 0.0, u'disk_read': 0.0, u'create_date': u'@DATE@', u'_id': ObjectId('@ID@'), u'cpu_util': 10.0, u'running_time': 1.0}"#,
    r#"{u'net_incoming': 0.0, u'shutdown_time': None, u'mem': 1.0, u'net_outgoing': 0.0, u'cmd': u'astral\U0001f600', u'pid': 110, u'instance_id': u'py1', u'disk_write': 0.0, u'disk_read': 0.0, u'create_date': u'@DATE@', u'_id': ObjectId('@ID@'), u'cpu_util': 5.0, u'running_time': 1.0}"#,
];

#[tokio::test]
async fn repr_matches_a_real_python_2_7() {
    let w = World::new().await;
    let (mut agent, _) = FakeAgent::new_token(&w.app, "pa", "r1", "x").await;
    agent.register("py1", Inventory::default()).await;
    let at = now_ms() - 60_000;
    let processes: Vec<ProcessSample> = PY2_PROCS
        .iter()
        .map(
            |&(pid, cmd, cpu, mem, dw, dr, ni, no, start, shutdown)| ProcessSample {
                pid,
                cmd: cmd.into(),
                cpu_pct: cpu,
                mem_pct: mem,
                disk_write_kib_per_sec: dw,
                disk_read_kib_per_sec: dr,
                net_in_kib_per_sec: ni,
                net_out_kib_per_sec: no,
                start_time: start,
                shutdown_time: shutdown,
                unreadable: Vec::new(),
            },
        )
        .collect();
    let sample = Sample {
        vm: ts::vm_sample(at, 0, 0),
        processes: Some(processes),
    };
    agent.report_samples("py1", vec![sample]).await.unwrap();

    let query = |method: i64, proc_name: &str, repr: bool| {
        json!({"method": method, "legacy_repr": repr, "limit": 100, "proc_name": proc_name,
               "session_id": ADMIN_SID, "data": {"instance_id": "py1"}})
    };
    let json_recs = w.legacy(query(611711, "", false)).await["data"].clone();
    let repr_recs = w.legacy(query(611711, "", true)).await["data"].clone();
    assert_eq!(repr_recs.as_array().unwrap().len(), PY2_REPRS.len());
    for (i, want) in PY2_REPRS.iter().enumerate() {
        let (rec, cmd) = (&json_recs[i], PY2_PROCS[i].1);
        assert_eq!(rec["cmd"], cmd, "busiest first, the input order");
        let want = want
            .replace("@DATE@", rec["create_date"].as_str().unwrap())
            .replace("@ID@", rec["_id"].as_str().unwrap());
        assert_eq!(
            repr_recs[i].as_str().unwrap(),
            want,
            "611711 record of {cmd:?}"
        );
        // 611712 finds the same record by its name, however odd, and prints it the same way.
        let by_name = w.legacy(query(611712, cmd, true)).await;
        assert_eq!(by_name["data"], json!([want]), "611712 {cmd:?}");
    }
}

#[tokio::test]
async fn several_instances_answer_in_request_order_in_both_shapes() {
    let w = World::new().await;
    for repr in [false, true] {
        for ids in ["b1;a2;a1;", "a2;b1"] {
            let v = w
                .legacy(
                    json!({"method": 611611, "legacy_repr": repr, "session_id": ADMIN_SID,
                               "data": {"instance_id": ids}}),
                )
                .await;
            let got: Vec<String> = v["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| match r {
                    Value::String(s) => {
                        let start = s.find("u'instance_id': u'").unwrap() + 18;
                        s[start..start + 2].to_string()
                    }
                    r => r["instance_id"].as_str().unwrap().to_string(),
                })
                .collect();
            let want: Vec<&str> = ids.split(';').filter(|s| !s.is_empty()).collect();
            assert_eq!(got, want, "repr {repr}: {ids}");
        }
    }
}

#[tokio::test]
async fn local_times_in_the_configured_zone_and_figures_to_2_decimals() {
    // (zone, create_date of the a1 sample at 2025-11-30T10:53:20Z)
    let cases = [
        ("UTC", "2025-11-30T10:53:20.000000"),
        ("Asia/Shanghai", "2025-11-30T18:53:20.000000"),
        ("America/New_York", "2025-11-30T05:53:20.000000"),
        ("Asia/Kolkata", "2025-11-30T16:23:20.000000"),
    ];
    for (zone, date) in cases {
        let w = World::with_config(CollectorConfig {
            timezone: zone.parse().unwrap(),
            ..CollectorConfig::default()
        })
        .await;
        let vm = w
            .legacy(
                json!({"method": 611611, "session_id": ADMIN_SID, "data": {"instance_id": "a1"}}),
            )
            .await;
        let r = &vm["data"][0];
        assert_eq!(r["create_date"], date, "{zone}");
        // Stored 12.345 / 41.256 / 1.0: two decimals, as numbers.
        assert_eq!(
            (r["cpu_util"].clone(), r["mem"].clone()),
            (json!(12.35), json!(41.26))
        );
        let p = w
            .legacy(
                json!({"method": 611711, "session_id": ADMIN_SID, "data": {"instance_id": "a1"}}),
            )
            .await;
        let p = &p["data"][0];
        assert_eq!(p["create_date"], date, "{zone}");
        assert_eq!(
            (p["mem"].clone(), p["disk_write"].clone()),
            (json!(1.23), json!(5.56))
        );
        let repr = w
            .legacy(json!({"method": 611711, "legacy_repr": true, "session_id": ADMIN_SID, "data": {"instance_id": "a1"}}))
            .await;
        assert!(
            repr["data"][0]
                .as_str()
                .unwrap()
                .contains(&format!("u'create_date': u'{date}'")),
            "{zone}: {repr}"
        );
    }
}

#[tokio::test]
async fn validation_names_the_exact_problem() {
    let w = World::new().await;
    // (request, the whole message)
    let cases: &[(Value, &str)] = &[
        (
            json!({"method": 458753, "data": {"user_name": 5, "password": "x"}}),
            "login needs data.user_name and data.password as strings",
        ),
        (
            json!({"method": 458753, "data": {"user_name": "nobody", "password": "x"}}),
            "'authentication failed: wrong user name or password'",
        ),
        (
            json!({"method": 999999, "session_id": ADMIN_SID}),
            "unknown method code 999999; known codes: 458753 login, 611611 getVMMonitoringData, 611711 getVMMonitoringProcData, 611712 getVMMonitoringProcByNameData, 32523 startmonitor, 32524 stopmonitor, 32525 setinterval, 458754 logout",
        ),
        (
            json!({"method": {"x": 1}, "session_id": ADMIN_SID}),
            r#""method" must be an integer code, got {"x":1}"#,
        ),
        (
            json!({"data": {}}),
            r#"missing "method": give a method code such as 458753"#,
        ),
        (
            json!({"method": 611611, "session_id": ADMIN_SID, "data": {"instance_id": "x' OR '1'='1"}}),
            r#"instance_id "x' OR '1'='1" contains the character '\''; allowed are letters, digits and . _ : -"#,
        ),
        (
            json!({"method": 611611, "session_id": ADMIN_SID, "data": {"instance_id": 7}}),
            "data.instance_id must be a string of ids separated by ';'",
        ),
        (
            json!({"method": 611611, "session_id": ADMIN_SID, "limit": -1, "data": {"instance_id": "a1"}}),
            "limit must be a positive integer",
        ),
        (
            json!({"method": 611611, "session_id": ADMIN_SID, "limit": "many", "data": {"instance_id": "a1"}}),
            "limit must be a positive integer",
        ),
        (
            json!({"method": 611611, "session_id": ADMIN_SID, "limit": 1.5, "data": {"instance_id": "a1"}}),
            "limit must be a positive integer",
        ),
        (
            json!({"method": 611712, "session_id": ADMIN_SID, "data": {"instance_id": "a1"}}),
            "missing proc_name (the process name to look up)",
        ),
        (
            json!({"method": 32525, "session_id": ADMIN_SID, "data": {"instance_id": "a1"}}),
            "data.interval_secs must be an integer number of seconds within 1..=86400",
        ),
        (
            json!({"method": 32525, "session_id": ADMIN_SID, "data": {"instance_id": "a1", "interval_secs": "5"}}),
            "data.interval_secs must be an integer number of seconds within 1..=86400",
        ),
        // Another tenant's instance answers exactly like an unknown one, on every method.
        (
            json!({"method": 611611, "session_id": TENANT_B_SID, "data": {"instance_id": "a1"}}),
            r#"unknown instance_id "a1""#,
        ),
        (
            json!({"method": 611711, "session_id": TENANT_B_SID, "data": {"instance_id": "a1"}}),
            r#"unknown instance_id "a1""#,
        ),
        (
            json!({"method": 611712, "proc_name": "sshd", "session_id": TENANT_B_SID, "data": {"instance_id": "a1"}}),
            r#"unknown instance_id "a1""#,
        ),
        (
            json!({"method": 32523, "session_id": TENANT_B_SID, "data": {"instance_id": "a1"}}),
            r#"unknown instance_id "a1""#,
        ),
        (
            json!({"method": 32524, "session_id": TENANT_B_SID, "data": {"instance_id": "a1"}}),
            r#"unknown instance_id "a1""#,
        ),
        (
            json!({"method": 32523, "session_id": ADMIN_SID, "data": {"instance_id": "a1;no-such-vm;"}}),
            r#"unknown instance_id "no-such-vm""#,
        ),
    ];
    let before = w
        .app
        .store
        .read(|c| store::instances::list(c, None))
        .await
        .unwrap();
    let sessions = |w: &World| {
        let store = w.app.store.clone();
        async move {
            store
                .read(|c| {
                    c.query_row(
                        "SELECT COUNT(*) FROM sessions",
                        crate::store::params![],
                        |r| r.get::<_, i64>(0),
                    )
                })
                .await
                .unwrap()
        }
    };
    let sessions_before = sessions(&w).await;
    let mut wrong = Vec::new();
    for (req, want) in cases {
        let v = w.legacy(req.clone()).await;
        if v["status_code"] != 3 || v["message"] != *want || v["data"] != Value::Null {
            wrong.push(format!(
                "{req}\n  got {} {}\n  want 3 {want:?}",
                v["status_code"], v["message"]
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let after = w
        .app
        .store
        .read(|c| store::instances::list(c, None))
        .await
        .unwrap();
    assert_eq!(
        before.iter().map(|i| &i.desired).collect::<Vec<_>>(),
        after.iter().map(|i| &i.desired).collect::<Vec<_>>(),
        "a failed request (even a partly valid one) changed no desired state"
    );
    assert_eq!(
        sessions(&w).await,
        sessions_before,
        "failed logins made no session"
    );
    let _ = TENANT_A_SID;
}

#[tokio::test]
async fn sessions_expire_when_idle_stay_alive_in_use_and_are_purged() {
    let w = World::with_config(CollectorConfig {
        session_idle_secs: 60,
        ..CollectorConfig::default()
    })
    .await;
    let now = now_ms();
    let admin_id = w
        .app
        .store
        .read(|c| store::users::user_by_name(c, "admin"))
        .await
        .unwrap()
        .unwrap()
        .id;
    // (session, last used ms ago, answers while alive)
    let cases = [
        ("fresh", 1_000, true),
        ("nearly", 55_000, true),
        ("idle", 61_000, false),
        ("old", 86_400_000, false),
    ];
    for (sid, ago, _) in cases {
        w.app
            .store
            .write(move |c| store::users::create_session(c, sid, admin_id, now - ago))
            .await
            .unwrap();
    }
    for (sid, _, alive) in cases {
        let v = w
            .legacy(json!({"method": 611611, "session_id": sid, "data": {"instance_id": "a1"}}))
            .await;
        if alive {
            assert_eq!(v["status_code"], 1, "{sid}: {v}");
        } else {
            assert_eq!(
                v["message"], "session expired or unknown: log in again (method 458753)",
                "{sid}"
            );
        }
    }
    // Each use marks the session: "nearly" was just used, so it survives a purge now.
    jobs::housekeeping::run_once(&w.app).await;
    let mut left: Vec<String> = w
        .app
        .store
        .read(|c| {
            let mut st = c.prepare("SELECT id FROM sessions")?;
            let ids = st
                .query_map(crate::store::params![], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(ids)
        })
        .await
        .unwrap();
    left.sort();
    let mut want = vec!["fresh", "nearly", ADMIN_SID, TENANT_A_SID, TENANT_B_SID];
    want.sort();
    assert_eq!(left, want, "idle sessions purged, used ones kept");
}
