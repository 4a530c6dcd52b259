use super::testing::Backend;
use super::*;
use vmmon_common::wire::{Inventory, ReportBatch, Sample, VmSample};

fn token() -> AgentTokenRow {
    testing::token(1, "p1")
}

fn vm(ms: i64) -> VmSample {
    VmSample {
        sampled_at_ms: ms,
        elapsed_ms: 1000,
        cpu_pct: 1.0,
        mem_pct: 2.0,
        rx_bytes_total: 10,
        tx_bytes_total: 20,
        proc_count: 3,
        ..VmSample::default()
    }
}

#[tokio::test]
async fn migrates_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let v: usize = store
        .read(|c| c.query_row("PRAGMA user_version", params![], |r| r.get(0)))
        .await
        .unwrap();
    assert_eq!(v, migrations::MIGRATIONS.len());
    drop(store);
    // Reopening an up-to-date store is a no-op.
    Store::open(dir.path()).unwrap();
}

async fn duplicate_batch_is_stored_once(backend: Backend) {
    let t = testing::open(backend).await;
    let store = t.store.clone();
    store
        .write(|c| {
            instances::register(
                c,
                "i-1",
                &token(),
                &Inventory::default(),
                30,
                0,
                Default::default(),
            )?;
            Ok(())
        })
        .await
        .unwrap();
    let batch = ReportBatch {
        batch_id: uuid::Uuid::new_v4(),
        instance_id: "i-1".into(),
        seq: 1,
        samples: vec![Sample {
            vm: vm(1000),
            processes: None,
        }],
        dropped_samples_total: 0,
        cdn: Vec::new(),
        cdn_tail: None,
    };
    let b1 = batch.clone();
    assert!(
        store
            .write(move |c| samples::insert_batch(c, &b1, "p1", 1))
            .await
            .unwrap()
    );
    let b2 = batch.clone();
    assert!(
        !store
            .write(move |c| samples::insert_batch(c, &b2, "p1", 2))
            .await
            .unwrap()
    );
    let n = store
        .read(|c| samples::vm_sample_count(c, "i-1"))
        .await
        .unwrap();
    assert_eq!(n, 1);
    // The same batch id from another instance (another tenant's agent) is its own batch.
    store
        .write(|c| {
            instances::register(
                c,
                "i-2",
                &token(),
                &Inventory::default(),
                30,
                0,
                Default::default(),
            )?;
            Ok(())
        })
        .await
        .unwrap();
    let mut other = batch.clone();
    other.instance_id = "i-2".into();
    assert!(
        store
            .write(move |c| samples::insert_batch(c, &other, "p1", 3))
            .await
            .unwrap(),
        "dedup is per instance"
    );
    let n = store
        .read(|c| samples::vm_sample_count(c, "i-2"))
        .await
        .unwrap();
    assert_eq!(n, 1);
}

async fn failed_job_rolls_back_only_itself(backend: Backend) {
    let t = testing::open(backend).await;
    let store = t.store.clone();
    let s1 = store.clone();
    let bad = tokio::spawn(async move {
        s1.write(|c| {
            users::upsert_user(c, "a", "h", true, None, 0)?;
            Err::<(), _>(StoreError::Corrupt("boom".into()))
        })
        .await
    });
    let good = store.write(|c| users::upsert_user(c, "b", "h", false, Some("p"), 0));
    let (bad, good) = (bad.await.unwrap(), good.await);
    assert!(bad.is_err());
    assert!(good.is_ok());
    let names: Vec<String> = store
        .read(|c| Ok(users::list_users(c)?.into_iter().map(|u| u.name).collect()))
        .await
        .unwrap();
    assert_eq!(names, vec!["b".to_string()]);
}

async fn foreign_project_cannot_take_over_an_instance(backend: Backend) {
    let t = testing::open(backend).await;
    let store = t.store.clone();
    let mut other = token();
    other.project = "p2".into();
    let out = store
        .write(move |c| {
            instances::register(
                c,
                "i-1",
                &token(),
                &Inventory::default(),
                30,
                0,
                Default::default(),
            )?;
            instances::register(
                c,
                "i-1",
                &other,
                &Inventory::default(),
                30,
                0,
                Default::default(),
            )
        })
        .await
        .unwrap();
    assert_eq!(out, RegisterOutcome::ForeignProject);
    let row = store
        .read(|c| instances::get(c, "i-1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.project, "p1");
}

async fn sessions_expire_when_idle(backend: Backend) {
    let t = testing::open(backend).await;
    let store = t.store.clone();
    store
        .write(|c| {
            let id = users::upsert_user(c, "u", "h", false, Some("p"), 0)?;
            users::create_session(c, "s1", id, 1_000)
        })
        .await
        .unwrap();
    let live = store
        .read(|c| users::session_user(c, "s1", 1_500, 1_000))
        .await
        .unwrap();
    assert!(live.is_some());
    let dead = store
        .read(|c| users::session_user(c, "s1", 2_000, 1_000))
        .await
        .unwrap();
    assert!(dead.is_none());
}

async fn retention_deletes_only_old_raw_rows(backend: Backend) {
    let t = testing::open(backend).await;
    let store = t.store.clone();
    store
        .write(|c| {
            instances::register(
                c,
                "i-1",
                &token(),
                &Inventory::default(),
                30,
                0,
                Default::default(),
            )?;
            Ok(())
        })
        .await
        .unwrap();
    for (ms, received) in [(1_000, 10), (2_000, 20), (90_000, 60_000)] {
        let batch = ReportBatch {
            batch_id: uuid::Uuid::new_v4(),
            instance_id: "i-1".into(),
            seq: 0,
            samples: vec![Sample {
                vm: vm(ms),
                processes: None,
            }],
            dropped_samples_total: 0,
            cdn: Vec::new(),
            cdn_tail: None,
        };
        store
            .write(move |c| samples::insert_batch(c, &batch, "p1", received))
            .await
            .unwrap();
    }
    // Chunks of one row: repeated calls finish the job.
    let mut deleted = 0;
    loop {
        let n = store
            .write(|c| samples::purge_raw_before(c, 50_000, 1))
            .await
            .unwrap();
        if n == 0 {
            break;
        }
        deleted += n;
    }
    assert_eq!(deleted, 4, "two old VM samples and two old batch ids");
    let left = store
        .read(|c| samples::latest_vm(c, testing::key("p1", "i-1"), 10))
        .await
        .unwrap();
    assert_eq!(
        left.iter().map(|r| r.sampled_at_ms).collect::<Vec<_>>(),
        vec![90_000]
    );
}

async fn unguarded_failure_rolls_back_its_whole_transaction_and_everyone_hears(backend: Backend) {
    let t = testing::open(backend).await;
    let store = t.store.clone();
    // Submit both before the writer can run either, so they share one transaction.
    let s1 = store.clone();
    let s2 = store.clone();
    let bad = tokio::spawn(async move {
        s1.write_unguarded(|c| {
            users::upsert_user(c, "a", "h", true, None, 0)?;
            Err::<(), _>(StoreError::Corrupt("boom".into()))
        })
        .await
    });
    let good = tokio::spawn(async move {
        s2.write(|c| users::upsert_user(c, "b", "h", false, Some("p"), 0))
            .await
    });
    let (bad, good) = (bad.await.unwrap(), good.await.unwrap());
    assert!(
        matches!(bad, Err(StoreError::Corrupt(_))),
        "the failing write gets its own error"
    );
    let names: Vec<String> = store
        .read(|c| Ok(users::list_users(c)?.into_iter().map(|u| u.name).collect()))
        .await
        .unwrap();
    assert!(
        !names.contains(&"a".to_string()),
        "the unguarded partial write is rolled back"
    );
    // The other write either shared the transaction (and was told to retry) or committed alone.
    match good {
        Ok(_) => assert_eq!(names, vec!["b".to_string()]),
        Err(StoreError::Commit(_)) => assert!(names.is_empty()),
        Err(e) => panic!("unexpected {e}"),
    }
    // The writer keeps working afterwards.
    store
        .write(|c| users::upsert_user(c, "c", "h", false, Some("p"), 0))
        .await
        .unwrap();
}

async fn registration_limits_per_token_and_ids_unique_ignoring_case(backend: Backend) {
    let t = testing::open(backend).await;
    let store = t.store.clone();
    let limits = instances::RegisterLimits {
        max_instances_per_token: 5,
        max_new_per_minute: 3,
    };
    let t = 1_000_000;
    let reg = |id: &'static str, at: i64| {
        let store = store.clone();
        async move {
            store
                .write(move |c| {
                    instances::register(c, id, &token(), &Inventory::default(), 30, at, limits)
                })
                .await
                .unwrap()
        }
    };
    let ok = |o: &RegisterOutcome| matches!(o, RegisterOutcome::Registered(_));
    // (id, time, expected outcome)
    for (id, at, want) in [
        ("vm-b-001", t, "ok"),
        ("VM-B-001", t, "case"),
        ("vm-b-002", t, "ok"),
        ("vm-b-003", t, "ok"),
        ("vm-b-004", t + 1_000, "rate"),
        ("vm-b-001", t + 1_000, "ok"), // a known instance re-registers freely
        ("vm-b-004", t + 61_000, "ok"),
        ("vm-b-005", t + 61_000, "ok"),
        ("vm-b-006", t + 200_000, "quota"),
    ] {
        let out = reg(id, at).await;
        let got = match &out {
            o if ok(o) => "ok",
            RegisterOutcome::CaseCollision { existing } => {
                assert_eq!(existing, "vm-b-001");
                "case"
            }
            RegisterOutcome::RateLimited { per_minute } => {
                assert_eq!(*per_minute, 3);
                "rate"
            }
            RegisterOutcome::QuotaExceeded { limit } => {
                assert_eq!(*limit, 5);
                "quota"
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(got, want, "{id} at {at}");
    }
}

#[tokio::test]
#[ignore = "needs PostgreSQL (scripts/test.sh starts a cluster)"]
async fn pg_migrates_once_and_reopens() {
    let url = testing::fresh_pg_url().await;
    let location = StoreLocation::Postgres(url);
    // Two collectors starting together: the advisory lock lets one migrate, the other finds the
    // schema current.
    let (a, b) = tokio::join!(
        Store::open_location(&location),
        Store::open_location(&location)
    );
    let (a, _b) = (a.unwrap(), b.unwrap());
    let v: i64 = a
        .read(|c| {
            c.query_row(
                "SELECT MAX(version) FROM schema_migrations",
                params![],
                |r| r.get(0),
            )
        })
        .await
        .unwrap();
    assert_eq!(v as usize, super::pg::MIGRATIONS.len());
    drop(a);
    Store::open_location(&location).await.unwrap();
}

fn rule(
    id: &str,
    value: &str,
    start_ms: Option<i64>,
    end_ms: Option<i64>,
) -> crate::rating::hashmap::Rule {
    crate::rating::hashmap::Rule {
        id: id.into(),
        value: Some(value.into()),
        level: None,
        map_type: crate::rating::hashmap::MapType::Flat,
        cost: rust_decimal::Decimal::new(15, 1),
        service_id: Some("svc".into()),
        field_id: None,
        group_id: None,
        tenant_id: None,
        start_ms,
        end_ms,
        name: Some(format!("name {id}")),
        description: None,
    }
}

/// Hashmap rules keep their validity periods, names and descriptions; a rule with the same key
/// duplicates another only when their validity periods overlap (NULL tenants and groups compare
/// equal).
async fn rating_rules_keep_validity_and_duplicates_need_overlap(backend: Backend) {
    use super::rating::{self as db, RuleKind};
    let t = testing::open(backend).await;
    t.store
        .write(|c| {
            db::insert_service(
                c,
                &crate::rating::hashmap::Service {
                    service_id: "svc".into(),
                    name: "instance".into(),
                },
            )?;
            let until_1000 = rule("r1", "m1.small", None, Some(1000));
            db::save_rule(c, RuleKind::Mapping, &until_1000)?;
            // Starts where r1 ends: no overlap, not a duplicate.
            let from_1000 = rule("r2", "m1.small", Some(1000), None);
            assert_eq!(db::duplicate_rule(c, RuleKind::Mapping, &from_1000)?, None);
            db::save_rule(c, RuleKind::Mapping, &from_1000)?;
            // Overlaps r2 only.
            let later = rule("r3", "m1.small", Some(2000), Some(3000));
            assert_eq!(
                db::duplicate_rule(c, RuleKind::Mapping, &later)?.as_deref(),
                Some("r2")
            );
            // Unbounded: overlaps both.
            let always = rule("r4", "m1.small", None, None);
            assert!(db::duplicate_rule(c, RuleKind::Mapping, &always)?.is_some());
            // Another value, or another tenant: never a duplicate.
            assert_eq!(
                db::duplicate_rule(c, RuleKind::Mapping, &rule("r5", "m1.large", None, None))?,
                None
            );
            let tenant = crate::rating::hashmap::Rule {
                tenant_id: Some("p1".into()),
                ..rule("r6", "m1.small", None, None)
            };
            assert_eq!(db::duplicate_rule(c, RuleKind::Mapping, &tenant)?, None);
            // A rule never duplicates itself.
            assert_eq!(db::duplicate_rule(c, RuleKind::Mapping, &until_1000)?, None);
            // The validity period, name and description round-trip, and an update changes them.
            assert_eq!(
                db::rule(c, RuleKind::Mapping, "r1")?,
                Some(until_1000.clone())
            );
            let changed = crate::rating::hashmap::Rule {
                end_ms: Some(500),
                description: Some("shorter".into()),
                ..until_1000
            };
            db::save_rule(c, RuleKind::Mapping, &changed)?;
            assert_eq!(db::rule(c, RuleKind::Mapping, "r1")?, Some(changed));
            // Thresholds too (keyed by level).
            let th = crate::rating::hashmap::Rule {
                value: None,
                level: Some(rust_decimal::Decimal::new(10, 0)),
                ..rule("t1", "", Some(0), Some(100))
            };
            db::save_rule(c, RuleKind::Threshold, &th)?;
            let th2 = crate::rating::hashmap::Rule {
                id: "t2".into(),
                start_ms: Some(50),
                end_ms: None,
                ..th.clone()
            };
            assert_eq!(
                db::duplicate_rule(c, RuleKind::Threshold, &th2)?.as_deref(),
                Some("t1")
            );
            assert_eq!(db::rule(c, RuleKind::Threshold, "t1")?, Some(th));
            Ok(())
        })
        .await
        .unwrap();
}

fn point(begin_ms: i64, tenant: &str, rating: &str) -> super::rating::PointRow {
    super::rating::PointRow {
        begin_ms,
        end_ms: begin_ms + 3_600_000,
        tenant_id: tenant.into(),
        res_type: "instance".into(),
        unit: "instance".into(),
        qty: "1".into(),
        rating: rating.into(),
        desc: "{}".into(),
    }
}

/// Scope states, pushed datapoints, re-rating that spares inactive scopes, and reprocessing
/// schedules (listed by scope, overlapping, next, advanced).
async fn rating_scopes_points_and_reprocess_schedules(backend: Backend) {
    use super::rating::{self as db, Replace, ReportFilter, ScopeRow, TotalRow};
    let t = testing::open(backend).await;
    t.store
        .write(|c| {
            let h = 3_600_000;
            db::add_points(
                c,
                &[
                    point(0, "p1", "1.5"),
                    point(0, "p1", "2.25"),
                    point(0, "p2", "4"),
                ],
                7,
            )?;
            // Pushed points add to an existing total.
            db::add_points(c, &[point(0, "p1", "0.25")], 8)?;
            let all = ReportFilter {
                begin_ms: 0,
                end_ms: h,
                ..ReportFilter::default()
            };
            let totals: Vec<(String, String)> = db::totals(c, &all)?
                .into_iter()
                .map(|t| (t.tenant_id, crate::rating::decimal::to_text(t.rate)))
                .collect();
            assert_eq!(
                totals,
                vec![("p1".into(), "4".into()), ("p2".into(), "4".into())]
            );
            let mut seen = 0;
            db::for_each_point(c, &all, |_| {
                seen += 1;
                Ok(())
            })?;
            assert_eq!(seen, 4);
            // p2 inactive: re-rating every active tenant leaves its ratings alone.
            db::set_scope(
                c,
                &ScopeRow {
                    scope_id: "p2".into(),
                    scope_key: "project_id".into(),
                    fetcher: "vmmon".into(),
                    collector: "vmmon".into(),
                    active: false,
                    toggled_ms: None,
                },
                42,
            )?;
            assert_eq!(db::inactive_scopes(c)?, vec!["p2".to_string()]);
            let scopes = db::scopes(c)?;
            assert_eq!(
                scopes
                    .iter()
                    .map(|s| (s.scope_id.as_str(), s.active, s.toggled_ms))
                    .collect::<Vec<_>>(),
                vec![("p1", true, None), ("p2", false, Some(42))]
            );
            let total = |tenant: &str, rate: i64| TotalRow {
                begin_ms: 0,
                end_ms: h,
                tenant_id: tenant.into(),
                res_type: "instance".into(),
                rate: rust_decimal::Decimal::new(rate, 0),
            };
            let removed = db::replace_period(
                c,
                0,
                h,
                Replace::Active,
                &[point(0, "p1", "9")],
                &[total("p1", 9)],
                9,
            )?;
            assert_eq!(removed, 3, "p1's three points, not p2's");
            let by_tenant = |c: &Connection| -> Result<Vec<(String, String)>> {
                Ok(db::totals(c, &all)?
                    .into_iter()
                    .map(|t| (t.tenant_id, crate::rating::decimal::to_text(t.rate)))
                    .collect())
            };
            assert_eq!(
                by_tenant(c)?,
                vec![("p1".into(), "9".into()), ("p2".into(), "4".into())]
            );
            // One scope's reprocessing replaces that scope only.
            db::replace_period(c, 0, h, Replace::Only("p2"), &[], &[total("p2", 1)], 10)?;
            assert_eq!(
                by_tenant(c)?,
                vec![("p1".into(), "9".into()), ("p2".into(), "1".into())]
            );

            // Reprocessing schedules.
            let a = db::add_reprocess(c, "p1", "price fix", 0, 2 * h, 11)?;
            let b = db::add_reprocess(c, "p2", "late data", h, 3 * h, 12)?;
            assert!(b > a);
            let ids =
                |rows: Vec<db::ReprocessRow>| rows.into_iter().map(|r| r.id).collect::<Vec<_>>();
            assert_eq!(ids(db::reprocesses(c, &[], false, 0, 100)?), vec![a, b]);
            assert_eq!(ids(db::reprocesses(c, &[], true, 0, 100)?), vec![b, a]);
            assert_eq!(ids(db::reprocesses(c, &[], false, 1, u64::MAX)?), vec![b]);
            assert_eq!(
                ids(db::reprocesses(c, &["p2".into()], false, 0, 100)?),
                vec![b]
            );
            assert_eq!(
                ids(db::reprocesses(
                    c,
                    &["p1".into(), "p2".into()],
                    false,
                    0,
                    100
                )?),
                vec![a, b]
            );
            assert!(db::reprocesses(c, &["nope".into()], false, 0, 100)?.is_empty());
            let overlap = db::overlapping_reprocess(c, "p1", h, 5 * h)?;
            assert_eq!(
                overlap.map(|r| (r.id, r.current_ms, r.reason)),
                Some((a, 0, "price fix".to_string()))
            );
            assert_eq!(db::overlapping_reprocess(c, "p1", 2 * h, 5 * h)?, None);
            assert_eq!(db::next_reprocess(c)?.map(|r| r.id), Some(a));
            assert_eq!(
                db::pending_reprocess_starts(c)?,
                vec![("p1".to_string(), 0), ("p2".to_string(), h)]
            );
            db::advance_reprocess(c, a, 2 * h)?;
            assert_eq!(db::next_reprocess(c)?.map(|r| r.id), Some(b));
            assert_eq!(
                db::overlapping_reprocess(c, "p1", 0, h)?,
                None,
                "a done schedule"
            );
            assert_eq!(
                db::pending_reprocess_starts(c)?,
                vec![("p2".to_string(), h)]
            );
            Ok(())
        })
        .await
        .unwrap();
}

/// Batches of two instances (counters growing, one with processes) and a resend among them.
fn group_batches(now_ms: i64) -> Vec<ReportBatch> {
    let proc = |pid: u32| vmmon_common::wire::ProcessSample {
        pid,
        start_time: 1.7e9,
        cmd: format!("p{pid}"),
        cpu_pct: 1.0,
        mem_pct: 2.0,
        disk_read_kib_per_sec: 0.0,
        disk_write_kib_per_sec: 0.0,
        net_in_kib_per_sec: 0.0,
        net_out_kib_per_sec: 0.0,
        shutdown_time: None,
        unreadable: Vec::new(),
    };
    let batch = |id: &str, k: i64| ReportBatch {
        batch_id: uuid::Uuid::new_v4(),
        instance_id: id.into(),
        seq: k as u64,
        samples: (0..3)
            .map(|s| {
                let n = k * 3 + s;
                Sample {
                    vm: VmSample {
                        rx_bytes_total: 1_000 * n as u64 * n as u64,
                        tx_bytes_total: 700 * n as u64,
                        ..vm(now_ms - 900_000 + n * 30_000)
                    },
                    // i-1's third batch has enough rows for PostgreSQL's COPY path.
                    processes: (id == "i-1")
                        .then(|| (1..=if k == 2 { 700 } else { 2 }).map(proc).collect()),
                }
            })
            .collect(),
        dropped_samples_total: k as u64,
        cdn: Vec::new(),
        cdn_tail: None,
    };
    let mut out = vec![batch("i-1", 0), batch("i-2", 0), batch("i-1", 1)];
    out.push(out[2].clone()); // a resend in the same group
    out.extend([batch("i-1", 2), batch("i-2", 1), batch("i-2", 2)]);
    out
}

/// Every table ingest writes, as text, for comparing two stores.
fn ingest_tables(c: &Connection) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (sql, cols) in [
        (
            "SELECT instance_id, sampled_at_ms, rx_bytes_total FROM vm_samples ORDER BY 1, 2",
            3,
        ),
        (
            "SELECT instance_id, sampled_at_ms, pid FROM process_samples ORDER BY 1, 2, 3",
            3,
        ),
        (
            "SELECT instance_id, minute_ms, samples FROM vm_minutes ORDER BY 1, 2",
            3,
        ),
        (
            "SELECT project, region, bucket_start_ms, in_bytes, out_bytes FROM bandwidth_buckets
             ORDER BY 1, 2, 3",
            5,
        ),
        (
            "SELECT project, region, day_start_ms, total_in, total_out, max_in, max_in_at_ms,
                 max_out, max_out_at_ms FROM bandwidth_days ORDER BY 1, 2, 3",
            9,
        ),
        (
            "SELECT instance_id, sampled_at_ms, rx_bytes, tx_bytes FROM bandwidth_counters
             ORDER BY 1",
            4,
        ),
        (
            "SELECT instance_id, last_seen_ms, dropped_samples, clock_last_raw_ms,
                 clock_last_placed_ms, clock_offset_ms FROM instances ORDER BY 1",
            6,
        ),
        ("SELECT instance_id, seq FROM batches ORDER BY 1, 2", 2),
    ] {
        out.extend(rendered_rows(c, sql, cols)?);
    }
    Ok(out)
}

/// The rows of `sql` (its first `cols` columns), each rendered as one line of typed values.
fn rendered_rows(c: &Connection, sql: &str, cols: usize) -> Result<Vec<String>> {
    let mut out = Vec::new();
    c.prepare(sql)?.for_each(params![], |r| {
        let row: Vec<String> = (0..cols)
            .map(|i| r.get_ref(i).map(|v| format!("{v:?}")))
            .collect::<Result<_>>()?;
        out.push(row.join(" "));
        Ok(())
    })?;
    Ok(out)
}

async fn grouped_ingest_stores_what_one_by_one_does(backend: Backend) {
    use crate::ingest::{Received, store_batch, store_batches};
    let now_ms = 1_790_000_000_000;
    let batches = group_batches(now_ms);
    let one = testing::open(backend).await;
    let grouped = testing::open(backend).await;
    let queued = testing::open(backend).await;
    for t in [&one, &grouped, &queued] {
        t.store
            .write(|c| {
                testing::register(c, "i-1", "p1")?;
                testing::register(c, "i-2", "p1")
            })
            .await
            .unwrap();
    }
    // One transaction per batch.
    let mut new_one = Vec::new();
    for b in batches.clone() {
        new_one.push(
            one.store
                .write_unguarded(move |c| store_batch(c, &b, now_ms))
                .await
                .unwrap(),
        );
    }
    // All in one call.
    let b = batches.clone();
    let new_grouped: Vec<bool> = grouped
        .store
        .write_unguarded(move |c| {
            let mut writes: Vec<Received> = b
                .into_iter()
                .map(|batch| Received {
                    batch,
                    received_ms: now_ms,
                    project: "p1".into(),
                })
                .collect();
            Ok(store_batches(c, &mut writes)?
                .into_iter()
                .map(|stored| stored.expect("not foreign").0)
                .collect())
        })
        .await
        .unwrap();
    // Through the writer's queue (grouped as they wait).
    let new_queued: Vec<bool> = futures::future::join_all(batches.into_iter().map(|batch| {
        queued.store.write_grouped(Received {
            batch,
            received_ms: now_ms,
            project: "p1".into(),
        })
    }))
    .await
    .into_iter()
    .map(|r| r.unwrap().expect("not foreign").0)
    .collect();
    assert_eq!(new_one, [true, true, true, false, true, true, true]);
    assert_eq!(new_grouped, new_one);
    assert_eq!(new_queued, new_one);
    let want = one.store.read(ingest_tables).await.unwrap();
    assert!(
        want.iter().any(|r| r.starts_with("Text(\"p1\")")),
        "{want:?}"
    );
    assert_eq!(grouped.store.read(ingest_tables).await.unwrap(), want);
    assert_eq!(queued.store.read(ingest_tables).await.unwrap(), want);
}

/// PostgreSQL's group statements (one `UNNEST` upsert per round of distinct minutes, one
/// `UPDATE … FROM UNNEST` for the instance rows) leave every column of `vm_minutes` and of the
/// instance rows exactly as SQLite's per-batch statements do: floating-point sums of batches
/// sharing a minute (in a group and across groups), a second project, a batch without samples,
/// an instance whose clock is never set, a group holding only a resend, an agent's uptime, and
/// a foreign batch beside its owner's in one group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (scripts/test.sh starts a cluster)"]
async fn pg_group_statements_leave_the_rows_sqlites_per_batch_statements_do() {
    use crate::ingest::{Received, store_batches};
    // After the registrations, so the samples, not registration, set `last_seen_ms`.
    let now_ms = vmmon_common::vocab::now_ms() + 3_600_000;
    let sample = |ms: i64, k: f64| Sample {
        vm: VmSample {
            cpu_pct: 0.1 + k / 3.0,
            mem_pct: 100.0 / (k + 7.0),
            disk_read_kib_per_sec: k * 1.1,
            net_in_kib_per_sec: 1.0 / (k + 3.0),
            uptime_ms: u64::try_from(ms % 10_000_000).ok(),
            ..vm(ms)
        },
        processes: None,
    };
    let batch = |id: &str, seq: u64, at: &[i64], dropped: u64| ReportBatch {
        batch_id: uuid::Uuid::new_v4(),
        instance_id: id.into(),
        seq,
        samples: at
            .iter()
            .enumerate()
            .map(|(i, &ms)| sample(ms, seq as f64 * 10.0 + i as f64))
            .collect(),
        dropped_samples_total: dropped,
        cdn: Vec::new(),
        cdn_tail: None,
    };
    // A minute's start: the minutes below are filled as written whatever the time of day.
    let base = (now_ms - 600_000) / 60_000 * 60_000;
    let earlier = vec![
        (batch("i-3", 0, &[base], 1), "p1"),
        (batch("i-1", 0, &[base, base + 20_000], 0), "p1"),
    ];
    // Resent with the agent's freshest drop count: the instance row takes it.
    let mut resend = earlier[0].0.clone();
    resend.dropped_samples_total = 7;
    let mut group = vec![
        (batch("i-1", 1, &[base + 40_000, base + 50_000], 2), "p1"),
        (batch("i-1", 2, &[base + 55_000, base + 70_000], 1), "p1"),
        (batch("i-2", 0, &[base + 10_000], 5), "p2"),
        (batch("i-2", 1, &[], 6), "p2"),
        (batch("i-4", 0, &[base + 30_000], 9), "p1"), // i-4 is p2's: refused
        (batch("i-4", 0, &[base + 30_000], 3), "p2"),
        (batch("i-1", 3, &[base + 59_000], 4), "p1"),
    ];
    group[5].0.batch_id = uuid::Uuid::new_v4();
    let resend_only = vec![(resend, "p1")];
    let rows = |c: &Connection| -> Result<Vec<String>> {
        let minute_cols = "instance_id, minute_ms, samples, cpu_pct_min, cpu_pct_sum, cpu_pct_max,
            mem_pct_min, mem_pct_sum, mem_pct_max, disk_read_min, disk_read_sum, disk_read_max,
            disk_write_min, disk_write_sum, disk_write_max, net_in_min, net_in_sum, net_in_max,
            net_out_min, net_out_sum, net_out_max";
        let mut out = rendered_rows(
            c,
            &format!("SELECT {minute_cols} FROM vm_minutes ORDER BY 1, 2"),
            21,
        )?;
        out.extend(rendered_rows(
            c,
            "SELECT instance_id, last_seen_ms, dropped_samples, clock_last_raw_ms,
                 clock_last_placed_ms, clock_offset_ms, clock_last_uptime_ms, spooled_batches
             FROM instances ORDER BY 1",
            8,
        )?);
        Ok(out)
    };
    let mut results = Vec::new();
    for backend in [Backend::Sqlite, Backend::Pg] {
        let t = testing::open(backend).await;
        t.store
            .write(|c| {
                testing::register(c, "i-1", "p1")?;
                testing::register(c, "i-3", "p1")?;
                testing::register(c, "i-2", "p2")?;
                testing::register(c, "i-4", "p2")
            })
            .await
            .unwrap();
        let mut outcomes = Vec::new();
        for g in [&earlier, &group, &resend_only] {
            let g = g.clone();
            let stored = t
                .store
                .write_unguarded(move |c| {
                    let mut writes: Vec<Received> = g
                        .into_iter()
                        .map(|(batch, project)| Received {
                            batch,
                            received_ms: now_ms,
                            project: project.into(),
                        })
                        .collect();
                    store_batches(c, &mut writes)
                })
                .await
                .unwrap();
            outcomes.push(format!(
                "{:?}",
                stored
                    .iter()
                    .map(|s| s.as_ref().map(|o| o.0))
                    .collect::<Vec<_>>()
            ));
        }
        results.push((outcomes, t.store.read(rows).await.unwrap()));
    }
    let (sqlite, pg) = (&results[0], &results[1]);
    assert_eq!(
        sqlite.0,
        [
            "[Ok(true), Ok(true)]",
            "[Ok(true), Ok(true), Ok(true), Ok(true), Err(ForeignInstance), Ok(true), Ok(true)]",
            "[Ok(false)]"
        ]
    );
    assert_eq!(pg.0, sqlite.0);
    // Not trivially equal: i-1's first minute sums six samples of four batches in two groups.
    assert!(
        sqlite
            .1
            .iter()
            .any(|r| r.starts_with("Text(\"i-1\")") && r.split(' ').nth(2) == Some("Int(6)")),
        "{:#?}",
        sqlite.1
    );
    let i3 = sqlite
        .1
        .iter()
        .rev()
        .find(|r| r.starts_with("Text(\"i-3\")"));
    assert_eq!(
        i3.and_then(|r| r.split(' ').nth(2)),
        Some("Int(7)"),
        "{i3:?}"
    );
    for (a, b) in sqlite.1.iter().zip(&pg.1) {
        assert_eq!(a, b);
    }
    assert_eq!(sqlite.1.len(), pg.1.len());
}

/// `/metrics`' and the dashboard's fleet: every instance of the project (or all), each with its
/// newest VM sample, including one whose newest sample is far older than its last contact (the
/// PostgreSQL statement looks at the day before first, then falls back) and one with none.
async fn fleet_has_every_instance_with_its_newest_sample(backend: Backend) {
    let t = testing::open(backend).await;
    let now_ms = 1_790_000_000_000;
    let sample_batch = |id: &str, at: &[i64]| ReportBatch {
        batch_id: uuid::Uuid::new_v4(),
        instance_id: id.into(),
        seq: 0,
        samples: at
            .iter()
            .map(|ms| Sample {
                vm: vm(*ms),
                processes: None,
            })
            .collect(),
        dropped_samples_total: 0,
        cdn: Vec::new(),
        cdn_tail: None,
    };
    let batches = [
        sample_batch("i-1", &[now_ms - 60_000, now_ms - 30_000]),
        sample_batch("i-2", &[now_ms - 30_000]),
        sample_batch("i-4", &[now_ms - 10_000]),
    ];
    t.store
        .write(move |c| {
            for (id, project) in [("i-1", "p1"), ("i-2", "p1"), ("i-3", "p1"), ("i-4", "p2")] {
                testing::register(c, id, project)?;
            }
            for b in &batches {
                let project = if b.instance_id == "i-4" { "p2" } else { "p1" };
                samples::insert_batch(c, b, project, now_ms)?;
            }
            // i-2 was heard from three days after its newest sample (heartbeats only).
            c.execute(
                "UPDATE instances SET last_seen_ms = ?1 WHERE instance_id = 'i-2'",
                params![now_ms + 3 * 86_400_000],
            )?;
            Ok(())
        })
        .await
        .unwrap();
    let newest = |rows: Vec<samples::FleetRow>| -> Vec<(String, Option<i64>)> {
        rows.into_iter()
            .map(|r| (r.project, r.vm.map(|v| v.sampled_at_ms)))
            .collect()
    };
    let all = t.store.read(|c| samples::fleet(c, None)).await.unwrap();
    assert_eq!(
        newest(all),
        [
            ("p1".to_string(), Some(now_ms - 30_000)),
            ("p1".to_string(), Some(now_ms - 30_000)),
            ("p1".to_string(), None),
            ("p2".to_string(), Some(now_ms - 10_000)),
        ]
    );
    let p2 = t
        .store
        .read(|c| samples::fleet(c, Some("p2")))
        .await
        .unwrap();
    assert_eq!(p2.len(), 1);
    assert_eq!(
        p2[0].vm.as_ref().map(|v| v.instance_id.as_str()),
        Some("i-4")
    );
}

/// A batch whose instance id another project has registered (removed and taken while the old
/// agent was still connected) is refused on both backends: not remembered (so not a duplicate
/// later), not stored, and the other project's instance untouched.
async fn a_batch_for_another_projects_instance_is_refused(backend: Backend) {
    use crate::ingest::{ForeignInstance, Received, store_batches};
    let t = testing::open(backend).await;
    let now_ms = 1_790_000_000_000;
    t.store
        .write(|c| testing::register(c, "i-1", "p-new"))
        .await
        .unwrap();
    let stale = ReportBatch {
        batch_id: uuid::Uuid::new_v4(),
        instance_id: "i-1".into(),
        seq: 7,
        samples: vec![Sample {
            vm: vm(now_ms - 5_000),
            processes: None,
        }],
        dropped_samples_total: 42,
        cdn: Vec::new(),
        cdn_tail: None,
    };
    // The owner's instance row as registration left it.
    let seen = |c: &Connection| -> Result<(i64, i64)> {
        c.query_row(
            "SELECT last_seen_ms, dropped_samples FROM instances WHERE instance_id = 'i-1'",
            params![],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    };
    let registered = t.store.read(seen).await.unwrap();
    let group = |project: &str| -> Vec<Received> {
        [stale.clone(), stale.clone()]
            .into_iter()
            .map(|batch| Received {
                batch,
                received_ms: now_ms,
                project: project.into(),
            })
            .collect()
    };
    let mut old = group("p-old");
    let outcome = t
        .store
        .write_unguarded(move |c| store_batches(c, &mut old))
        .await
        .unwrap();
    assert_eq!(outcome, [Err(ForeignInstance), Err(ForeignInstance)]);
    // Nor is the owner's instance marked seen, or its drop count raised, by the other agent.
    assert_eq!(t.store.read(seen).await.unwrap(), registered);
    let counts = |c: &Connection| -> Result<(i64, i64)> {
        Ok((
            c.query_row("SELECT COUNT(*) FROM batches", params![], |r| r.get(0))?,
            c.query_row("SELECT COUNT(*) FROM vm_samples", params![], |r| r.get(0))?,
        ))
    };
    assert_eq!(t.store.read(counts).await.unwrap(), (0, 0));
    // The owner's own batch of that id is new (the refused one was not remembered).
    let mut own = group("p-new");
    own.truncate(1);
    let outcome = t
        .store
        .write_unguarded(move |c| store_batches(c, &mut own))
        .await
        .unwrap();
    assert_eq!(outcome.len(), 1);
    assert!(matches!(outcome[0], Ok((true, _))), "{outcome:?}");
    assert_eq!(t.store.read(counts).await.unwrap(), (1, 1));
}

/// Every process record of a sample is stored as sent, field by field: 37 rows with every
/// figure distinct (on PostgreSQL one UNNEST of them).
async fn every_process_record_is_stored_as_sent(backend: Backend) {
    use vmmon_common::wire::ProcessSample;
    let t = testing::open(backend).await;
    t.store
        .write(|c| testing::register(c, "i-1", "p1"))
        .await
        .unwrap();
    let at = 1_790_000_000_000;
    let sent: Vec<ProcessSample> = (0..37u32)
        .map(|i| ProcessSample {
            pid: 100 + i,
            start_time: 1_700_000_000.25 + f64::from(i),
            cmd: format!("p-{i}"),
            cpu_pct: f64::from(37 - i) * 0.5,
            mem_pct: f64::from(i) * 0.125,
            disk_read_kib_per_sec: f64::from(i) * 2.0,
            disk_write_kib_per_sec: f64::from(i) * 3.0,
            net_in_kib_per_sec: f64::from(i) * 4.0,
            net_out_kib_per_sec: f64::from(i) * 5.0,
            shutdown_time: (i % 5 == 0).then_some(1_790_000_000.5),
            unreadable: if i % 3 == 0 {
                vec!["disk_read_kib_per_sec".into()]
            } else {
                Vec::new()
            },
        })
        .collect();
    let batch = ReportBatch {
        batch_id: uuid::Uuid::new_v4(),
        instance_id: "i-1".into(),
        seq: 1,
        samples: vec![Sample {
            vm: vm(at),
            processes: Some(sent.clone()),
        }],
        dropped_samples_total: 0,
        cdn: Vec::new(),
        cdn_tail: None,
    };
    assert!(
        t.store
            .write(move |c| samples::insert_batch(c, &batch, "p1", 1))
            .await
            .unwrap()
    );
    let key = InstanceKey {
        project: "p1",
        instance_id: "i-1",
    };
    let mut stored = t
        .store
        .read(move |c| samples::latest_processes(c, key, 100))
        .await
        .unwrap();
    stored.sort_by_key(|r| r.pid);
    assert_eq!(stored.len(), sent.len());
    for (r, p) in stored.iter().zip(&sent) {
        let want = (
            r.instance_id.as_str(),
            r.sampled_at_ms,
            r.pid,
            r.start_time,
            r.cmd.as_str(),
            r.cpu_pct,
            r.mem_pct,
            (r.disk_read, r.disk_write, r.net_in, r.net_out),
            r.shutdown_time,
            r.disk_unreadable,
        );
        assert_eq!(
            want,
            (
                "i-1",
                at,
                i64::from(p.pid),
                p.start_time,
                p.cmd.as_str(),
                p.cpu_pct,
                p.mem_pct,
                (
                    p.disk_read_kib_per_sec,
                    p.disk_write_kib_per_sec,
                    p.net_in_kib_per_sec,
                    p.net_out_kib_per_sec
                ),
                p.shutdown_time,
                !p.unreadable.is_empty(),
            ),
            "pid {}",
            p.pid
        );
    }
}

crate::store::testing::on_both_backends!(
    every_process_record_is_stored_as_sent,
    grouped_ingest_stores_what_one_by_one_does,
    a_batch_for_another_projects_instance_is_refused,
    fleet_has_every_instance_with_its_newest_sample,
    duplicate_batch_is_stored_once,
    failed_job_rolls_back_only_itself,
    foreign_project_cannot_take_over_an_instance,
    sessions_expire_when_idle,
    retention_deletes_only_old_raw_rows,
    unguarded_failure_rolls_back_its_whole_transaction_and_everyone_hears,
    registration_limits_per_token_and_ids_unique_ignoring_case,
    rating_rules_keep_validity_and_duplicates_need_overlap,
    rating_scopes_points_and_reprocess_schedules
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (scripts/test.sh starts a cluster)"]
async fn pg_job_locks_let_one_collector_run_a_job() {
    use super::locks::Job;
    let location = StoreLocation::Postgres(testing::fresh_pg_url().await);
    let a = Store::open_location(&location).await.unwrap();
    let b = Store::open_location(&location).await.unwrap();
    let held = a
        .try_job_lock(Job::Rating)
        .await
        .unwrap()
        .expect("A gets it");
    assert!(
        b.try_job_lock(Job::Rating).await.unwrap().is_none(),
        "B skips the round"
    );
    let other = b.try_job_lock(Job::Housekeeping).await.unwrap();
    assert!(other.is_some(), "jobs are locked separately");
    held.release().await;
    let again = b.try_job_lock(Job::Rating).await.unwrap();
    assert!(again.is_some(), "free again after release");
    // A lock dropped without release ends with its connection.
    drop(again);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(l) = a.try_job_lock(Job::Rating).await.unwrap() {
            l.release().await;
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a dropped lock was never freed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (scripts/test.sh starts a cluster)"]
async fn pg_notifications_reach_every_listener() {
    let location = StoreLocation::Postgres(testing::fresh_pg_url().await);
    let a = Store::open_location(&location).await.unwrap();
    let b = Store::open_location(&location).await.unwrap();
    let mut rx = b.listen("vmmon_test");
    // LISTEN starts asynchronously: send until one arrives.
    let got = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            a.notify("vmmon_test", "hello").await.unwrap();
            if let Ok(Some(m)) =
                tokio::time::timeout(std::time::Duration::from_millis(200), rx.recv()).await
            {
                return m;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(got, "hello");
    let too_big = "x".repeat(super::notify::MAX_PAYLOAD + 1);
    assert!(a.notify("vmmon_test", &too_big).await.is_err());
}
