//! Day partitions of the raw sample tables on PostgreSQL (schema v4 in `pg.rs`): `vm_samples`
//! and `process_samples` are partitioned by range of `sampled_at_ms`, one partition per UTC day
//! (`vm_samples_p20261201`), plus a default partition for rows whose day has none yet.
//!
//! Partitions are made ahead: at open and on every housekeeping round, for yesterday through the
//! day after tomorrow (ingest refuses samples further in the future). Retention drops the days
//! that ended before the cutoff as whole tables, which costs the same whatever they hold, instead
//! of deleting their rows; the chunked delete of [`super::samples::purge_raw_before`] then only
//! sees the day that straddles the cutoff and the default partition.
//!
//! On SQLite there are no partitions: both functions do nothing.

use super::Result;
use super::db::{Connection, params};
use vmmon_common::vocab::DAY_MS;

/// The tables partitioned by day.
pub const PARTITIONED_TABLES: [&str; 2] = ["vm_samples", "process_samples"];

/// Days before today that [`ensure_days_around`] makes sure of.
pub(super) const DAYS_BEHIND: i64 = 1;
/// Days after today that [`ensure_days_around`] makes sure of.
pub(super) const DAYS_AHEAD: i64 = 2;

/// Makes sure every partitioned table has the partitions of the days around `now_ms` (see the
/// module doc), moving rows that waited in the default partition into them; returns how many
/// partitions were created. Collectors sharing the database serialise on an advisory lock.
pub fn ensure_days_around(conn: &Connection, now_ms: i64) -> Result<usize> {
    let today = now_ms.div_euclid(DAY_MS) * DAY_MS;
    let mut created = 0;
    for day in -DAYS_BEHIND..=DAYS_AHEAD {
        created += ensure_day(conn, today + day * DAY_MS)?;
    }
    Ok(created)
}

/// Makes sure every partitioned table has the partition of the day holding `at_ms`; returns how
/// many partitions were created (0 on SQLite).
pub fn ensure_day(conn: &Connection, at_ms: i64) -> Result<usize> {
    if !conn.is_pg() {
        return Ok(0);
    }
    let mut created = 0;
    for table in PARTITIONED_TABLES {
        let new: i64 = conn.query_row(
            "SELECT CASE WHEN vmmon_ensure_day_partition(?1, ?2) THEN 1 ELSE 0 END",
            params![table, at_ms],
            |r| r.get(0),
        )?;
        created += usize::from(new == 1);
    }
    Ok(created)
}

/// Drops the day partitions whose day ended at or before `cutoff_ms` (retention); returns their
/// names (empty on SQLite).
pub fn drop_days_before(conn: &Connection, cutoff_ms: i64) -> Result<Vec<String>> {
    if !conn.is_pg() {
        return Ok(Vec::new());
    }
    let mut dropped = Vec::new();
    for table in PARTITIONED_TABLES {
        let mut stmt =
            conn.prepare_cached("SELECT p FROM vmmon_drop_day_partitions_before(?1, ?2) AS p")?;
        let names = stmt.query_map(params![table, cutoff_ms], |r| r.get::<_, String>(0))?;
        for name in names {
            dropped.push(name?);
        }
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{self, TestStore};
    use crate::store::{Store, StoreLocation, samples};
    use vmmon_common::test_support as ts;
    use vmmon_common::vocab::now_ms;
    use vmmon_common::wire::Sample;

    /// Stores one sample of `vm-a` (with one process) at each of `times`, one batch each.
    async fn insert_at(store: &Store, times: &[i64]) {
        let batches: Vec<_> = times
            .iter()
            .enumerate()
            .map(|(seq, &at)| {
                ts::batch(
                    "vm-a",
                    seq as u64,
                    vec![Sample {
                        vm: ts::vm_sample(at, 0, 0),
                        processes: Some(vec![ts::process(1, "init", 1.0)]),
                    }],
                )
            })
            .collect();
        store
            .write(move |c| {
                testing::register(c, "vm-a", "p")?;
                for b in &batches {
                    samples::insert_samples(c, b, "p")?;
                }
                Ok(())
            })
            .await
            .unwrap();
    }

    /// `(partition, rows)` of `table`, by partition name.
    async fn placement(store: &Store, table: &'static str) -> Vec<(String, i64)> {
        store
            .read(move |c| {
                let mut stmt = c.prepare_cached(&format!(
                    "SELECT tableoid::regclass::text AS part, COUNT(*) FROM {table}
                     GROUP BY part ORDER BY part"
                ))?;
                let rows = stmt.query_map(params![], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect::<Result<Vec<_>>>()
            })
            .await
            .unwrap()
    }

    /// The partition name of the day holding `at_ms`, as PostgreSQL spells the date.
    async fn day_name(store: &Store, table: &str, at_ms: i64) -> String {
        let table = table.to_string();
        store
            .read(move |c| {
                c.query_row(
                    "SELECT ?1 || '_p' || to_char(to_timestamp(?2 / 1000) AT TIME ZONE 'UTC', 'YYYYMMDD')",
                    params![table, at_ms],
                    |r| r.get(0),
                )
            })
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs PostgreSQL (scripts/test.sh starts a cluster)"]
    async fn pg_samples_land_in_day_partitions_and_old_days_drop_whole() {
        let t: TestStore = testing::open(testing::Backend::Pg).await;
        let today = now_ms().div_euclid(DAY_MS) * DAY_MS;
        let (d40, d39) = (today - 40 * DAY_MS, today - 39 * DAY_MS);
        insert_at(&t.store, &[d40 + 1_000, d39 + 5_000, today + 1_000]).await;
        for table in PARTITIONED_TABLES {
            // Today's partition was made at open; the old days have none: the default holds them.
            let mut want = vec![
                (format!("{table}_default"), 2),
                (day_name(&t.store, table, today).await, 1),
            ];
            want.sort();
            assert_eq!(placement(&t.store, table).await, want, "{table}");
        }
        // Making a day's partition moves its waiting rows in; a second time does nothing.
        let created = t
            .store
            .write(move |c| ensure_day(c, d40 + 5))
            .await
            .unwrap();
        assert_eq!(created, 2);
        let again = t.store.write(move |c| ensure_day(c, d40)).await.unwrap();
        assert_eq!(again, 0);
        for table in PARTITIONED_TABLES {
            let mut want = vec![
                (format!("{table}_default"), 1),
                (day_name(&t.store, table, d40).await, 1),
                (day_name(&t.store, table, today).await, 1),
            ];
            want.sort();
            assert_eq!(placement(&t.store, table).await, want, "{table}");
        }
        // Retention at the middle of day -39: day -40 goes whole; day -39's row (in the default
        // partition) goes with the chunked delete; today stays.
        let cutoff = d39 + DAY_MS / 2;
        let dropped = t
            .store
            .write(move |c| drop_days_before(c, cutoff))
            .await
            .unwrap();
        let mut want = vec![
            day_name(&t.store, "vm_samples", d40).await,
            day_name(&t.store, "process_samples", d40).await,
        ];
        want.sort();
        let mut got = dropped.clone();
        got.sort();
        assert_eq!(got, want);
        let n = t
            .store
            .write(move |c| samples::purge_raw_before(c, cutoff, 1000))
            .await
            .unwrap();
        assert_eq!(
            n,
            2 + 2,
            "day -39's VM and process rows, both old days' minutes"
        );
        let left = t
            .store
            .read(|c| samples::latest_vm(c, testing::key("p", "vm-a"), 10))
            .await
            .unwrap();
        assert_eq!(
            left.iter().map(|r| r.sampled_at_ms).collect::<Vec<_>>(),
            vec![today + 1_000]
        );
        // SQLite has no partitions: both calls do nothing.
        let s = testing::open(testing::Backend::Sqlite).await;
        assert_eq!(
            s.store
                .write(|c| ensure_days_around(c, now_ms()))
                .await
                .unwrap(),
            0
        );
        assert!(
            s.store
                .write(|c| drop_days_before(c, now_ms()))
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs PostgreSQL (scripts/test.sh starts a cluster)"]
    async fn pg_store_copy_puts_old_days_in_their_own_partitions() {
        let src = testing::open(testing::Backend::Sqlite).await;
        let today = now_ms().div_euclid(DAY_MS) * DAY_MS;
        let old = today - 40 * DAY_MS;
        insert_at(&src.store, &[old + 1_000, today + 1_000]).await;
        let dst = testing::open(testing::Backend::Pg).await;
        crate::store::copy::sqlite_to_postgres(src.dir.path(), &dst.store)
            .await
            .unwrap();
        for table in PARTITIONED_TABLES {
            let mut want = vec![
                (day_name(&dst.store, table, old).await, 1),
                (day_name(&dst.store, table, today).await, 1),
            ];
            want.sort();
            assert_eq!(placement(&dst.store, table).await, want, "{table}");
        }
        // PostgreSQL's rows carry their instance's project (SQLite's tables have no such
        // column): the copy takes it from the copied `instances`.
        for table in ["vm_samples", "process_samples", "vm_minutes"] {
            let projects: Vec<String> = dst
                .store
                .read(move |c| {
                    let mut stmt =
                        c.prepare_cached(&format!("SELECT DISTINCT project FROM {table}"))?;
                    let rows = stmt.query_map(params![], |r| r.get(0))?;
                    rows.collect::<Result<Vec<_>>>()
                })
                .await
                .unwrap();
            assert_eq!(projects, ["p"], "{table}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs PostgreSQL (scripts/test.sh starts a cluster)"]
    async fn pg_migration_moves_existing_samples_into_partitions_keeping_ids() {
        // A database at schema v3 (before partitioning) holding samples with known ids.
        let (url, client, task) = testing::pg_at_version(3).await;
        let today = now_ms().div_euclid(DAY_MS) * DAY_MS;
        let old = today - 40 * DAY_MS;
        for (id, at) in [
            (5i64, today + 1_000),
            (7, old + 2_000),
            (9, 86_400_000i64 * 3),
        ] {
            client
                .execute(
                    "INSERT INTO vm_samples (id, instance_id, sampled_at_ms, elapsed_ms, cpu_pct,
                         mem_pct, disk_read, disk_write, net_in, net_out, rx_bytes_total,
                         tx_bytes_total, proc_count)
                     VALUES ($1, 'vm-a', $2, 1000, 1, 2, 0, 0, 0, 0, 0, 0, 1)",
                    &[&id, &at],
                )
                .await
                .unwrap();
            client
                .execute(
                    "INSERT INTO process_samples (id, instance_id, sampled_at_ms, pid, start_time,
                         cmd, cpu_pct, mem_pct, disk_read, disk_write, net_in, net_out)
                     VALUES ($1, 'vm-a', $2, 1, 0, 'init', 1, 1, 0, 0, 0, 0)",
                    &[&id, &at],
                )
                .await
                .unwrap();
        }
        drop(client);
        let _ = task.await;
        let location = StoreLocation::Postgres(url);
        let store = Store::open_location(&location).await.unwrap();
        for table in PARTITIONED_TABLES {
            let got: Vec<(i64, String)> = store
                .read(move |c| {
                    let mut stmt = c.prepare_cached(&format!(
                        "SELECT id, tableoid::regclass::text FROM {table} ORDER BY id"
                    ))?;
                    let rows = stmt.query_map(params![], |r| Ok((r.get(0)?, r.get(1)?)))?;
                    rows.collect::<Result<Vec<_>>>()
                })
                .await
                .unwrap();
            assert_eq!(
                got,
                vec![
                    (5, day_name(&store, table, today).await),
                    (7, day_name(&store, table, old).await),
                    (9, day_name(&store, table, 86_400_000 * 3).await),
                ],
                "{table}"
            );
        }
        // New rows continue after the kept ids.
        insert_at(&store, &[today + 2_000]).await;
        let newest = store
            .read(|c| samples::latest_vm(c, testing::key("p", "vm-a"), 1))
            .await
            .unwrap();
        assert!(newest[0].id > 9, "{:?}", newest[0].id);
    }
}
