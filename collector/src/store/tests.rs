use super::testing::Backend;
use super::*;
use vmmon_common::wire::{Inventory, ReportBatch, Sample, VmSample};

fn token() -> AgentTokenRow {
    AgentTokenRow {
        id: 1,
        project: "p1".into(),
        region: "r1".into(),
        party: "x".into(),
        created_at_ms: 0,
        revoked_at_ms: None,
        cdn_edge: false,
    }
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
            .write(move |c| samples::insert_batch(c, &b1, 1))
            .await
            .unwrap()
    );
    let b2 = batch.clone();
    assert!(
        !store
            .write(move |c| samples::insert_batch(c, &b2, 2))
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
            .write(move |c| samples::insert_batch(c, &other, 3))
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
            .write(move |c| samples::insert_batch(c, &batch, received))
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
        .read(|c| samples::latest_vm(c, "i-1", 10))
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

crate::on_both_backends!(
    duplicate_batch_is_stored_once,
    failed_job_rolls_back_only_itself,
    foreign_project_cannot_take_over_an_instance,
    sessions_expire_when_idle,
    retention_deletes_only_old_raw_rows,
    unguarded_failure_rolls_back_its_whole_transaction_and_everyone_hears,
    registration_limits_per_token_and_ids_unique_ignoring_case
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
