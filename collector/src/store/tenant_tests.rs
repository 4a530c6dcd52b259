//! The project (tenant) column of PostgreSQL's instance-keyed tables (schema v5, `pg.rs`;
//! [`super::InstanceKey`]): the migration backfills it, every insert path fills it, queries
//! name it. SQLite has no such column (nothing here runs on SQLite).

use super::testing::{self, key};
use super::{RegisterOutcome, Store, StoreLocation, instances, samples};
use crate::ingest::{ForeignInstance, Received, Stored, store_batches};
use vmmon_common::test_support as ts;
use vmmon_common::vocab::{DAY_MS, now_ms};
use vmmon_common::wire::{CdnTailState, Inventory, Sample};

/// The instance-keyed tables that carry the project since v5.
const TENANT_TABLES: [&str; 6] = [
    "vm_samples",
    "process_samples",
    "vm_minutes",
    "batches",
    "bandwidth_counters",
    "cdn_sources",
];

/// `(instance_id, project)` of every row of `table`, distinct, sorted.
async fn owners(store: &Store, table: &'static str) -> Vec<(String, String)> {
    store
        .read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT DISTINCT instance_id, project FROM {table} ORDER BY 1, 2"
            ))?;
            let rows = stmt.query_map(super::params![], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<super::Result<Vec<_>>>()
        })
        .await
        .unwrap()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(i, p)| (i.to_string(), p.to_string()))
        .collect()
}

/// A batch of `samples` samples of `instance_id` at `at_ms` + 1 s steps, each with `procs`
/// processes, and a CDN tail (so that `cdn_sources` gets a row).
fn batch(instance_id: &str, seq: u64, at_ms: i64, samples: usize, procs: u32) -> ReportBatchT {
    let mut b = ts::batch(
        instance_id,
        seq,
        (0..samples)
            .map(|k| Sample {
                vm: ts::vm_sample(at_ms + k as i64 * 1_000, 1_000 * seq, 2_000 * seq),
                processes: Some((0..procs).map(|p| ts::process(p, "cmd", 1.0)).collect()),
            })
            .collect(),
    );
    b.cdn_tail = Some(CdnTailState {
        files: Vec::new(),
        malformed_lines_total: 0,
    });
    b
}
type ReportBatchT = vmmon_common::wire::ReportBatch;

/// Stores `batches` in one group (the writer's path), with the agent token's `project`.
async fn ingest(store: &Store, project: &str, batches: Vec<ReportBatchT>) -> Vec<Stored> {
    ingest_each(store, batches.into_iter().map(|b| (project, b)).collect()).await
}

/// Stores one group of batches, each with its own agent token's project.
async fn ingest_each(store: &Store, batches: Vec<(&str, ReportBatchT)>) -> Vec<Stored> {
    let now = now_ms();
    let writes: Vec<Received> = batches
        .into_iter()
        .map(|(project, batch)| Received {
            batch,
            received_ms: now,
            project: project.to_string(),
        })
        .collect();
    store
        .write_unguarded(move |c| {
            let mut writes = writes;
            store_batches(c, &mut writes)
        })
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (scripts/test.sh starts a cluster)"]
async fn pg_ingest_fills_the_project_on_both_insert_paths_and_queries_name_it() {
    let t = testing::open(testing::Backend::Pg).await;
    t.store
        .write(|c| {
            testing::register(c, "i-1", "p1")?;
            testing::register(c, "i-2", "p2")
        })
        .await
        .unwrap();
    let at = now_ms() - 60_000;
    // A small group: its process rows go in with the `UNNEST` insert (under 2,000 rows).
    ingest_each(
        &t.store,
        vec![
            ("p1", batch("i-1", 1, at, 2, 3)),
            ("p2", batch("i-2", 1, at, 2, 3)),
        ],
    )
    .await;
    let small = t
        .store
        .read(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM process_samples",
                super::params![],
                |r| r.get::<_, i64>(0),
            )
        })
        .await
        .unwrap();
    assert_eq!(small, 12);
    // A large group: its process rows go in with the binary `COPY` (2,000 rows and more).
    ingest_each(
        &t.store,
        vec![
            ("p1", batch("i-1", 2, at + 10_000, 20, 60)),
            ("p2", batch("i-2", 2, at + 10_000, 20, 60)),
        ],
    )
    .await;
    for table in TENANT_TABLES {
        assert_eq!(
            owners(&t.store, table).await,
            pairs(&[("i-1", "p1"), ("i-2", "p2")]),
            "{table}: each row has its own batch's project (not the group's first one's)"
        );
    }
    let copied = t
        .store
        .read(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM process_samples WHERE project = 'p2'",
                super::params![],
                |r| r.get::<_, i64>(0),
            )
        })
        .await
        .unwrap();
    assert_eq!(copied, 6 + 20 * 60);

    // An instance's project is fixed: a token of another project cannot register it (so
    // cannot move its rows), and its rows keep their project.
    let other = testing::token(2, "p2");
    let out = t
        .store
        .write(move |c| {
            instances::register(
                c,
                "i-1",
                &other,
                &Inventory::default(),
                1,
                0,
                Default::default(),
            )
        })
        .await
        .unwrap();
    assert_eq!(out, RegisterOutcome::ForeignProject);
    assert_eq!(
        owners(&t.store, "vm_samples").await,
        pairs(&[("i-1", "p1"), ("i-2", "p2")])
    );

    // Queries name the project: the right one finds the rows, another finds none.
    let (right, wrong, procs, history) = t
        .store
        .read(|c| {
            Ok((
                samples::latest_vm(c, key("p1", "i-1"), 5)?.len(),
                samples::latest_vm(c, key("p2", "i-1"), 5)?.len(),
                samples::latest_processes(c, key("p1", "i-1"), 100)?.len(),
                samples::process_history(c, key("p1", "i-1"), "cmd", 3)?.len(),
            ))
        })
        .await
        .unwrap();
    assert_eq!((right, wrong, procs, history), (5, 0, 60, 3));

    // An instance removed while its agent is still connected: its next batch's rows take the
    // agent token's project.
    assert!(
        t.store
            .write(|c| instances::remove(c, "i-2"))
            .await
            .unwrap()
    );
    ingest(&t.store, "p2", vec![batch("i-2", 3, at + 40_000, 1, 1)]).await;
    assert_eq!(
        owners(&t.store, "vm_samples").await,
        pairs(&[("i-1", "p1"), ("i-2", "p2")])
    );

    // Then another project registers the id while the old agent is still connected: its next
    // batch (and a repeat of it in the same group) is refused, neither stored nor remembered,
    // and nothing of the new owner's (time axis, bandwidth counter) is continued from it.
    let third = testing::token(3, "p3");
    t.store
        .write(move |c| {
            instances::register(
                c,
                "i-2",
                &third,
                &Inventory::default(),
                1,
                0,
                Default::default(),
            )
        })
        .await
        .unwrap();
    let stale = batch("i-2", 4, at + 50_000, 1, 1);
    let outcome = ingest(&t.store, "p2", vec![stale.clone(), stale]).await;
    assert_eq!(outcome, [Err(ForeignInstance), Err(ForeignInstance)]);
    for table in ["vm_samples", "batches"] {
        assert_eq!(
            owners(&t.store, table).await,
            pairs(&[("i-1", "p1"), ("i-2", "p2")]),
            "{table}: nothing of the old agent's goes to the new owner p3"
        );
    }
    let p3_counters = t
        .store
        .read(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM bandwidth_counters WHERE project = 'p3'",
                super::params![],
                |r| r.get::<_, i64>(0),
            )
        })
        .await
        .unwrap();
    assert_eq!(p3_counters, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (scripts/test.sh starts a cluster)"]
async fn pg_migration_v5_backfills_the_project_of_existing_rows() {
    // A database at schema v4 (partitioned, no project column) holding rows of two instances
    // of two projects, and of one instance no longer registered.
    let (url, client, task) = testing::pg_at_version(4).await;
    let today = now_ms().div_euclid(DAY_MS) * DAY_MS;
    let old = today - 3 * DAY_MS;
    client
        .execute(
            "SELECT vmmon_ensure_day_partition(t, $1) FROM unnest(ARRAY['vm_samples', 'process_samples']) t",
            &[&old],
        )
        .await
        .unwrap();
    for (id, project) in [("i-1", "p1"), ("i-2", "p2")] {
        client
            .execute(
                "INSERT INTO instances (instance_id, project, region, party, token_id, hostname,
                     cpu_count, mem_total_bytes, disk_total_bytes, lan_ips, wan_ips,
                     agent_version, os, created_at_ms, updated_at_ms, last_seen_ms,
                     interval_secs)
                 VALUES ($1, $2, 'r1', 'x', 1, 'h', 1, 1, 1, '', '', 'v', 'linux', 0, 0, $3, 30)",
                &[&id, &project, &(today + 5_000)],
            )
            .await
            .unwrap();
    }
    for id in ["i-1", "i-2", "i-gone"] {
        for at in [old + 1_000, today + 1_000] {
            client
                .execute(
                    "INSERT INTO vm_samples (instance_id, sampled_at_ms, elapsed_ms, cpu_pct,
                         mem_pct, disk_read, disk_write, net_in, net_out, rx_bytes_total,
                         tx_bytes_total, proc_count)
                     VALUES ($1, $2, 1000, 1, 2, 0, 0, 0, 0, 0, 0, 1)",
                    &[&id, &at],
                )
                .await
                .unwrap();
            client
                .execute(
                    "INSERT INTO process_samples (instance_id, sampled_at_ms, pid, start_time,
                         cmd, cpu_pct, mem_pct, disk_read, disk_write, net_in, net_out)
                     VALUES ($1, $2, 1, 0, 'init', 1, 1, 0, 0, 0, 0)",
                    &[&id, &at],
                )
                .await
                .unwrap();
        }
        client
            .batch_execute(&format!(
                "INSERT INTO vm_minutes SELECT '{id}', {today}, 1,
                     1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1;
                 INSERT INTO batches VALUES ('{id}', 'b-{id}', 0, 1);
                 INSERT INTO bandwidth_counters VALUES ('{id}', 0, 1, 2);
                 INSERT INTO cdn_sources VALUES ('{id}', 0, 0, 0, NULL);"
            ))
            .await
            .unwrap();
    }
    client
        .batch_execute(
            "INSERT INTO rated_points (begin_ms, end_ms, tenant_id, res_type, unit, qty, rating,
                 descr, processed_ms)
             VALUES (0, 1, 'p1', 'instance', 'h', '1', '1', '', 0)",
        )
        .await
        .unwrap();
    drop(client);
    let _ = task.await;

    // Opening the store migrates it.
    let store = Store::open_location(&StoreLocation::Postgres(url))
        .await
        .unwrap();
    let want = pairs(&[("i-1", "p1"), ("i-2", "p2"), ("i-gone", "")]);
    for table in TENANT_TABLES {
        assert_eq!(owners(&store, table).await, want, "{table}");
    }
    // Every primary key holds the distribution column (Citus needs it), last; the instance id
    // stays unique on its own on PostgreSQL.
    let keys: Vec<(String, String)> = store
        .read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint
                 WHERE contype = 'p' AND conrelid::regclass::text = ANY(CAST(?1 AS TEXT[]))
                 ORDER BY 1",
            )?;
            let rows = stmt.query_map(
                super::params!["{vm_samples,process_samples,vm_minutes,batches,bandwidth_counters,cdn_sources,instances,rated_points}"],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            rows.collect::<super::Result<Vec<_>>>()
        })
        .await
        .unwrap();
    assert_eq!(
        keys,
        pairs(&[
            ("bandwidth_counters", "PRIMARY KEY (instance_id, project)"),
            ("batches", "PRIMARY KEY (instance_id, batch_id, project)"),
            ("cdn_sources", "PRIMARY KEY (instance_id, project)"),
            ("instances", "PRIMARY KEY (instance_id, project)"),
            (
                "process_samples",
                "PRIMARY KEY (id, sampled_at_ms, project)"
            ),
            ("rated_points", "PRIMARY KEY (id, tenant_id)"),
            (
                "vm_minutes",
                "PRIMARY KEY (instance_id, minute_ms, project)"
            ),
            ("vm_samples", "PRIMARY KEY (id, sampled_at_ms, project)"),
        ])
    );
    // The migrated store takes new rows (the project has no default: inserts name it) and its
    // queries find the old ones under their project.
    let b = batch("i-1", 9, today + 2_000, 1, 1);
    ingest(&store, "p1", vec![b]).await;
    let (newest, old_proc) = store
        .read(|c| {
            Ok((
                samples::latest_vm(c, key("p1", "i-1"), 10)?.len(),
                samples::process_history(c, key("p2", "i-2"), "init", 10)?.len(),
            ))
        })
        .await
        .unwrap();
    assert_eq!((newest, old_proc), (3, 2));
}
