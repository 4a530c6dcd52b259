//! The bandwidth rollup: bytes per project, region and 10-minute bucket (`bandwidth_buckets`), kept up
//! to date from each newly stored batch in the same transaction, and the per-instance last counter
//! reading (`bandwidth_counters`) the next delta starts from. The arithmetic is in [`crate::bandwidth`].
//!
//! The mana_api flow queries read only this rollup, never the raw samples, so they stay fast and
//! outlive raw-sample retention.

use std::collections::BTreeMap;

use super::db::{Connection, OptionalExtension, params};
use chrono_tz::Tz;
use vmmon_common::wire::ReportBatch;

use super::{Result, StoreError};
use crate::bandwidth::{self, Month, MonthlyAggregator, MonthlyBandwidth, Peak, Reading, Step};

/// One stored bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketRow {
    /// Project.
    pub project: String,
    /// Region.
    pub region: String,
    /// Bucket start, epoch ms.
    pub bucket_start_ms: i64,
    /// Bytes into the project's VMs.
    pub in_bytes: i64,
    /// Bytes out of the project's VMs.
    pub out_bytes: i64,
}

/// Which buckets a query covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// One project, or every project.
    pub project: Option<String>,
    /// One region, or every region.
    pub region: Option<String>,
    /// Buckets starting at or after this, epoch ms.
    pub from_ms: Option<i64>,
    /// Buckets starting before this, epoch ms.
    pub to_ms: Option<i64>,
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The instance's last counter reading, if any.
pub fn last_reading(conn: &Connection, instance_id: &str) -> Result<Option<Reading>> {
    conn.prepare_cached(
        "SELECT sampled_at_ms, rx_bytes, tx_bytes FROM bandwidth_counters WHERE instance_id = ?1",
    )?
    .query_row([instance_id], |r| {
        Ok(Reading {
            at_ms: r.get(0)?,
            // Counters are stored bit-for-bit as i64.
            rx: r.get::<_, i64>(1)? as u64,
            tx: r.get::<_, i64>(2)? as u64,
        })
    })
    .optional()
}

/// The instance's project and region; `None` for an unknown instance.
pub fn owner(conn: &Connection, instance_id: &str) -> Result<Option<(String, String)>> {
    conn.prepare_cached("SELECT project, region FROM instances WHERE instance_id = ?1")?
        .query_row([instance_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
}

fn set_last_reading(conn: &Connection, key: super::InstanceKey<'_>, r: Reading) -> Result<()> {
    let sql = if conn.is_pg() {
        "INSERT INTO bandwidth_counters (instance_id, sampled_at_ms, rx_bytes, tx_bytes, project)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(instance_id, project) DO UPDATE SET sampled_at_ms = excluded.sampled_at_ms,
             rx_bytes = excluded.rx_bytes, tx_bytes = excluded.tx_bytes"
    } else {
        "INSERT INTO bandwidth_counters (instance_id, sampled_at_ms, rx_bytes, tx_bytes)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(instance_id) DO UPDATE SET sampled_at_ms = excluded.sampled_at_ms,
             rx_bytes = excluded.rx_bytes, tx_bytes = excluded.tx_bytes"
    };
    let p = params![
        key.instance_id,
        r.at_ms,
        r.rx as i64,
        r.tx as i64,
        key.project
    ];
    conn.execute_later(sql, conn.scoped(p))
}

/// The bucket upsert (its new values returned for the day's peak).
const BUCKET_UPSERT: &str = "INSERT INTO bandwidth_buckets AS b (project, bucket_start_ms, region, in_bytes, out_bytes)
     VALUES (?1, ?2, ?3, ?4, ?5)
     ON CONFLICT(project, bucket_start_ms, region) DO UPDATE SET
         in_bytes = CASE WHEN b.in_bytes > 9223372036854775807 - excluded.in_bytes THEN 9223372036854775807 ELSE b.in_bytes + excluded.in_bytes END,
         out_bytes = CASE WHEN b.out_bytes > 9223372036854775807 - excluded.out_bytes THEN 9223372036854775807 ELSE b.out_bytes + excluded.out_bytes END
     RETURNING in_bytes, out_bytes";

/// The day upsert's conflict clause (totals added, the peak moved when beaten).
fn day_conflict(greatest: &str) -> String {
    format!(
        "ON CONFLICT(project, day_start_ms, region) DO UPDATE SET
             total_in = CASE WHEN d.total_in > 9223372036854775807 - excluded.total_in
                 THEN 9223372036854775807 ELSE d.total_in + excluded.total_in END,
             total_out = CASE WHEN d.total_out > 9223372036854775807 - excluded.total_out
                 THEN 9223372036854775807 ELSE d.total_out + excluded.total_out END,
             max_in_at_ms = CASE WHEN excluded.max_in > d.max_in
                     OR (excluded.max_in = d.max_in AND excluded.max_in_at_ms < d.max_in_at_ms)
                 THEN excluded.max_in_at_ms ELSE d.max_in_at_ms END,
             max_in = {greatest}(d.max_in, excluded.max_in),
             max_out_at_ms = CASE WHEN excluded.max_out > d.max_out
                     OR (excluded.max_out = d.max_out AND excluded.max_out_at_ms < d.max_out_at_ms)
                 THEN excluded.max_out_at_ms ELSE d.max_out_at_ms END,
             max_out = {greatest}(d.max_out, excluded.max_out)"
    )
}

/// Adds bytes to one bucket (creating it with these bytes) and to its UTC day's totals, moving
/// the day's peak when the bucket's new value beats it (the earlier bucket wins a tie). Bucket
/// values only grow, so the day's peak stays exact.
pub fn add_bucket_bytes(
    conn: &Connection,
    project: &str,
    region: &str,
    bucket_start_ms: i64,
    in_bytes: i64,
    out_bytes: i64,
) -> Result<()> {
    let day_start_ms = bandwidth::day_start(bucket_start_ms);
    if conn.is_pg() {
        // One statement (the day upsert reads the bucket upsert's new values), queued with the
        // batch's other writes: no round trip of its own.
        static PG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let sql = PG.get_or_init(|| {
            format!(
                "WITH b AS ({BUCKET_UPSERT})
                 INSERT INTO bandwidth_days AS d (project, day_start_ms, region, total_in,
                     total_out, max_in, max_in_at_ms, max_out, max_out_at_ms)
                 SELECT ?1, ?6, ?3, ?4, ?5, b.in_bytes, ?2, b.out_bytes, ?2 FROM b
                 {}",
                day_conflict("GREATEST")
            )
        });
        return conn.execute_later(
            sql,
            params![
                project,
                bucket_start_ms,
                region,
                in_bytes,
                out_bytes,
                day_start_ms
            ],
        );
    }
    let (new_in, new_out): (i64, i64) = conn.prepare_cached(BUCKET_UPSERT)?.query_row(
        params![project, bucket_start_ms, region, in_bytes, out_bytes],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    static SQLITE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let sql = SQLITE.get_or_init(|| {
        format!(
            "INSERT INTO bandwidth_days AS d (project, day_start_ms, region, total_in, total_out,
                 max_in, max_in_at_ms, max_out, max_out_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?7)
             {}",
            day_conflict("MAX")
        )
    });
    conn.prepare_cached(sql)?.execute(params![
        project,
        day_start_ms,
        region,
        in_bytes,
        out_bytes,
        new_in,
        bucket_start_ms,
        new_out,
    ])?;
    Ok(())
}

/// Rolls a newly stored batch into the buckets of its instance's project and region. Call only
/// for a batch stored for the first time, in the transaction that stored it.
pub fn apply_batch(conn: &Connection, batch: &ReportBatch, now_ms: i64) -> Result<()> {
    let owner = owner(conn, &batch.instance_id)?;
    let start = last_reading(conn, &batch.instance_id)?;
    apply_batch_from(conn, batch, now_ms, owner, start)
}

/// [`apply_batch`] with the instance's owner (project, region) and last counter reading
/// already read (ingest reads them with the batch's dedup: [`super::samples::start_batch`]).
pub fn apply_batch_from(
    conn: &Connection,
    batch: &ReportBatch,
    now_ms: i64,
    owner: Option<(String, String)>,
    start: Option<Reading>,
) -> Result<()> {
    apply_batches(
        conn,
        &[BatchFlow {
            batch,
            now_ms,
            owner,
            start,
        }],
    )
}

/// One newly stored batch for [`apply_batches`].
#[derive(Debug, Clone)]
pub struct BatchFlow<'a> {
    /// The batch (its samples already on the instance's time axis).
    pub batch: &'a ReportBatch,
    /// When the collector received it, epoch ms.
    pub now_ms: i64,
    /// Its instance's project and region; `None` for an unknown instance (nothing is rolled up).
    pub owner: Option<(String, String)>,
    /// Its instance's stored last counter reading (before any batch of this call).
    pub start: Option<Reading>,
}

/// [`apply_batch_from`] for several new batches (in arrival order): a later batch of the same
/// instance continues from the reading the earlier one left; the bytes of all of them are
/// summed per bucket before they are added, so each bucket and day row is written once.
/// (Bucket values only grow, so a day's peak and its time come out as with one add per batch.)
pub fn apply_batches(conn: &Connection, flows: &[BatchFlow<'_>]) -> Result<()> {
    // Per (instance, project): (stored reading, reading after this call's batches so far).
    type Readings = (Option<Reading>, Option<Reading>);
    let mut last: BTreeMap<(&str, &str), Readings> = BTreeMap::new();
    let mut sums: BTreeMap<(&str, &str, i64), (u64, u64)> = BTreeMap::new();
    for f in flows {
        let Some((project, region)) = &f.owner else {
            continue;
        };
        let entry = last
            .entry((f.batch.instance_id.as_str(), project.as_str()))
            .or_insert((f.start, f.start));
        let mut readings: Vec<Reading> = f
            .batch
            .samples
            .iter()
            .map(|s| Reading {
                at_ms: s.vm.sampled_at_ms,
                rx: s.vm.rx_bytes_total,
                tx: s.vm.tx_bytes_total,
            })
            .collect();
        readings.sort_by_key(|r| r.at_ms);
        for cur in readings {
            match bandwidth::step(entry.1, cur, f.now_ms) {
                Step::Ignore => {}
                Step::Baseline => entry.1 = Some(cur),
                Step::Flow(parts) => {
                    for p in parts {
                        let e = sums
                            .entry((project.as_str(), region.as_str(), p.bucket_start_ms))
                            .or_default();
                        e.0 = e.0.saturating_add(p.in_bytes);
                        e.1 = e.1.saturating_add(p.out_bytes);
                    }
                    entry.1 = Some(cur);
                }
            }
        }
    }
    for ((project, region, bucket), (i, o)) in sums {
        add_bucket_bytes(conn, project, region, bucket, to_i64(i), to_i64(o))?;
    }
    for ((instance_id, project), (stored, now)) in last {
        if let Some(l) = now
            && now != stored
        {
            let key = super::InstanceKey {
                project,
                instance_id,
            };
            set_last_reading(conn, key, l)?;
        }
    }
    Ok(())
}

const BUCKET_SQL_BY_PROJECT: &str = "SELECT project, region, bucket_start_ms, in_bytes, out_bytes
    FROM bandwidth_buckets
    WHERE project = ?1 AND bucket_start_ms >= ?2 AND bucket_start_ms < ?3
      AND (?4 IS NULL OR region = ?4)
    ORDER BY project, bucket_start_ms, region";

const BUCKET_SQL_ALL: &str = "SELECT project, region, bucket_start_ms, in_bytes, out_bytes
    FROM bandwidth_buckets
    WHERE bucket_start_ms >= ?2 AND bucket_start_ms < ?3 AND (?4 IS NULL OR region = ?4)
      AND CAST(?1 AS TEXT) IS NULL
    ORDER BY project, bucket_start_ms, region";

/// Streams the buckets matching `filter` to `f`, ordered by project, bucket start and region.
pub fn for_each_bucket(
    conn: &Connection,
    filter: &Filter,
    mut f: impl FnMut(&str, &str, i64, i64, i64),
) -> Result<()> {
    let sql = if filter.project.is_some() {
        BUCKET_SQL_BY_PROJECT
    } else {
        BUCKET_SQL_ALL
    };
    let mut stmt = conn.prepare_cached(sql)?;
    stmt.for_each(
        params![
            filter.project,
            filter.from_ms.unwrap_or(i64::MIN),
            filter.to_ms.unwrap_or(i64::MAX),
            filter.region,
        ],
        |r| {
            let project = r.get_ref(0)?.as_str()?;
            let region = r.get_ref(1)?.as_str()?;
            f(project, region, r.get(2)?, r.get(3)?, r.get(4)?);
            Ok(())
        },
    )
}

/// The buckets matching `filter`, ordered by project, bucket start and region.
pub fn buckets(conn: &Connection, filter: &Filter) -> Result<Vec<BucketRow>> {
    let mut out = Vec::new();
    for_each_bucket(
        conn,
        filter,
        |project, region, bucket_start_ms, in_bytes, out_bytes| {
            out.push(BucketRow {
                project: project.to_string(),
                region: region.to_string(),
                bucket_start_ms,
                in_bytes,
                out_bytes,
            })
        },
    )?;
    Ok(out)
}

const DAY_SQL_BY_PROJECT: &str = "SELECT project, region, total_in, total_out, max_in,
        max_in_at_ms, max_out, max_out_at_ms
    FROM bandwidth_days
    WHERE project = ?1 AND day_start_ms >= ?2 AND day_start_ms < ?3
      AND (?4 IS NULL OR region = ?4)";

const DAY_SQL_ALL: &str = "SELECT project, region, total_in, total_out, max_in,
        max_in_at_ms, max_out, max_out_at_ms
    FROM bandwidth_days
    WHERE day_start_ms >= ?2 AND day_start_ms < ?3 AND (?4 IS NULL OR region = ?4)
      AND CAST(?1 AS TEXT) IS NULL";

/// Folds the whole UTC days in `[from_day, to_day)` into `agg` as part of `month`.
fn add_days(
    conn: &Connection,
    filter: &Filter,
    month: Month,
    from_day: i64,
    to_day: i64,
    agg: &mut MonthlyAggregator,
) -> Result<()> {
    let sql = if filter.project.is_some() {
        DAY_SQL_BY_PROJECT
    } else {
        DAY_SQL_ALL
    };
    let mut stmt = conn.prepare_cached(sql)?;
    stmt.for_each(
        params![filter.project, from_day, to_day, filter.region],
        |r| {
            let project = r.get_ref(0)?.as_str()?;
            let region = r.get_ref(1)?.as_str()?;
            agg.add(
                project,
                region,
                month,
                (r.get(2)?, r.get(3)?),
                Peak {
                    bytes: r.get(4)?,
                    at_ms: r.get(5)?,
                },
                Peak {
                    bytes: r.get(6)?,
                    at_ms: r.get(7)?,
                },
            );
            Ok(())
        },
    )
}

/// Folds the buckets starting in `[from_ms, to_ms)` into `agg` as part of `month`.
fn add_buckets(
    conn: &Connection,
    filter: &Filter,
    month: Month,
    from_ms: i64,
    to_ms: i64,
    agg: &mut MonthlyAggregator,
) -> Result<()> {
    if from_ms >= to_ms {
        return Ok(());
    }
    let part = Filter {
        from_ms: Some(from_ms),
        to_ms: Some(to_ms),
        ..filter.clone()
    };
    for_each_bucket(conn, &part, |project, region, b, i, o| {
        agg.add_bucket(project, region, month, b, i, o)
    })
}

/// Start of the first and of the last bucket matching `filter`.
fn bucket_span(conn: &Connection, filter: &Filter) -> Result<Option<(i64, i64)>> {
    let ends = ["ASC", "DESC"].map(|dir| {
        let scope = if filter.project.is_some() {
            "project = ?1"
        } else {
            "CAST(?1 AS TEXT) IS NULL"
        };
        format!(
            "SELECT bucket_start_ms FROM bandwidth_buckets
             WHERE {scope} AND bucket_start_ms >= ?2 AND bucket_start_ms < ?3
               AND (?4 IS NULL OR region = ?4)
             ORDER BY bucket_start_ms {dir} LIMIT 1"
        )
    });
    let mut found = [0i64; 2];
    for (slot, sql) in found.iter_mut().zip(ends.iter()) {
        let v: Option<i64> = conn
            .prepare_cached(sql)?
            .query_row(
                params![
                    filter.project,
                    filter.from_ms.unwrap_or(i64::MIN),
                    filter.to_ms.unwrap_or(i64::MAX),
                    filter.region
                ],
                |r| r.get(0),
            )
            .optional()?;
        match v {
            Some(v) => *slot = v,
            None => return Ok(None),
        }
    }
    Ok(Some((found[0], found[1])))
}

/// Per project, local month of `tz` and region: the peak buckets and the totals of the buckets
/// matching `filter` (a bucket belongs to the month holding its start). Each month reads the
/// daily rollup for the UTC days that lie wholly inside it and the 10-minute buckets only for the
/// partial days at its edges (none when the zone is UTC), so a year costs a few thousand rows
/// per region, not 52,560.
pub fn monthly(conn: &Connection, tz: Tz, filter: &Filter) -> Result<Vec<MonthlyBandwidth>> {
    let mut agg = MonthlyAggregator::new();
    let Some((first, last)) = bucket_span(conn, filter)? else {
        return Ok(Vec::new());
    };
    let lower = filter.from_ms.unwrap_or(i64::MIN);
    let upper = filter.to_ms.unwrap_or(i64::MAX);
    let mut month =
        Month::of(tz, first).ok_or_else(|| StoreError::Corrupt(format!("bucket time {first}")))?;
    loop {
        let (a, b) = month
            .window(tz)
            .ok_or_else(|| StoreError::Corrupt(format!("month {}", month.label())))?;
        if a > last {
            break;
        }
        let (a, b) = (a.max(lower), b.min(upper));
        let (d0, d1) = (bandwidth::day_ceil(a), bandwidth::day_start(b));
        if d0 < d1 {
            add_buckets(conn, filter, month, a, d0, &mut agg)?;
            add_days(conn, filter, month, d0, d1, &mut agg)?;
            add_buckets(conn, filter, month, d1, b, &mut agg)?;
        } else {
            add_buckets(conn, filter, month, a, b, &mut agg)?;
        }
        month = month.next();
    }
    Ok(agg.finish())
}

/// The (project, region) pairs of registered instances that the filter names, ordered.
pub fn instance_series(
    conn: &Connection,
    project: Option<&str>,
    region: Option<&str>,
) -> Result<Vec<(String, String)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT DISTINCT project, region FROM instances
         WHERE (?1 IS NULL OR project = ?1) AND (?2 IS NULL OR region = ?2)
         ORDER BY project, region",
    )?;
    let rows = stmt.query_map(params![project, region], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect::<Result<Vec<_>>>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AgentTokenRow, Store, instances};
    use vmmon_common::wire::{Inventory, Sample, VmSample};

    const M: i64 = 60_000;
    /// 2025-01-31 23:40:00 UTC.
    const T0: i64 = 1_738_366_800_000;

    fn token(project: &str, region: &str) -> AgentTokenRow {
        AgentTokenRow {
            id: 1,
            project: project.into(),
            region: region.into(),
            party: "x".into(),
            created_at_ms: 0,
            revoked_at_ms: None,
            cdn_edge: false,
        }
    }

    fn sample(at_ms: i64, rx: u64, tx: u64) -> Sample {
        Sample {
            vm: VmSample {
                sampled_at_ms: at_ms,
                rx_bytes_total: rx,
                tx_bytes_total: tx,
                proc_count: 1,
                ..VmSample::default()
            },
            processes: None,
        }
    }

    fn batch(instance: &str, samples: Vec<Sample>) -> ReportBatch {
        ReportBatch {
            batch_id: uuid::Uuid::new_v4(),
            instance_id: instance.into(),
            seq: 0,
            samples,
            dropped_samples_total: 0,
            cdn: Vec::new(),
            cdn_tail: None,
        }
    }

    async fn setup() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .write(|c| {
                instances::register(
                    c,
                    "a1",
                    &token("p1", "r1"),
                    &Inventory::default(),
                    30,
                    0,
                    Default::default(),
                )?;
                instances::register(
                    c,
                    "a2",
                    &token("p1", "r1"),
                    &Inventory::default(),
                    30,
                    0,
                    Default::default(),
                )?;
                instances::register(
                    c,
                    "b1",
                    &token("p2", "r1"),
                    &Inventory::default(),
                    30,
                    0,
                    Default::default(),
                )?;
                Ok(())
            })
            .await
            .unwrap();
        (dir, store)
    }

    async fn send(store: &Store, b: &ReportBatch) -> bool {
        let b = b.clone();
        store
            .write(move |c| {
                // The store's own steps (dedup, then the rollup), as ingest runs them.
                let now = T0 + 24 * 3600 * 1000;
                let new = super::super::samples::remember_batch(c, &b, "p1", now)?;
                if new {
                    apply_batch(c, &b, now)?;
                }
                Ok(new)
            })
            .await
            .unwrap()
    }

    async fn rows(store: &Store, project: &str) -> Vec<(i64, i64, i64)> {
        let f = Filter {
            project: Some(project.into()),
            ..Filter::default()
        };
        store
            .read(move |c| buckets(c, &f))
            .await
            .unwrap()
            .into_iter()
            .map(|r| ((r.bucket_start_ms - T0) / M, r.in_bytes, r.out_bytes))
            .collect()
    }

    #[tokio::test]
    async fn rollup_follows_counters_and_ignores_resends() {
        let (_dir, store) = setup().await;
        let first = batch(
            "a1",
            vec![sample(T0, 1000, 5000), sample(T0 + 10 * M, 61_000, 6_200)],
        );
        assert!(send(&store, &first).await);
        // The same batch again (agent resend): stored once, counted once.
        assert!(!send(&store, &first).await);
        assert_eq!(rows(&store, "p1").await, vec![(0, 60_000, 1_200)]);

        // Spanning the bucket edge at +20 min; a second VM in the same project adds up.
        send(
            &store,
            &batch("a1", vec![sample(T0 + 25 * M, 151_000, 6_200)]),
        )
        .await;
        send(
            &store,
            &batch(
                "a2",
                vec![sample(T0 + 5 * M, 0, 0), sample(T0 + 15 * M, 6_000, 0)],
            ),
        )
        .await;
        assert_eq!(
            rows(&store, "p1").await,
            vec![(0, 63_000, 1_200), (10, 63_000, 0), (20, 30_000, 0)]
        );

        // Reboot: counters restart; the interval is observed with zero bytes, no spike.
        send(&store, &batch("a1", vec![sample(T0 + 35 * M, 500, 10)])).await;
        send(
            &store,
            &batch("a1", vec![sample(T0 + 45 * M, 6_500, 1_210)]),
        )
        .await;
        assert_eq!(
            rows(&store, "p1").await,
            vec![
                (0, 63_000, 1_200),
                (10, 63_000, 0),
                (20, 30_000, 0),
                (30, 3_000, 600),
                (40, 3_000, 600)
            ]
        );

        // A late sample older than the last reading is ignored for flow.
        send(&store, &batch("a1", vec![sample(T0 + 40 * M, 1, 1)])).await;
        assert_eq!(rows(&store, "p1").await.len(), 5);
        let last = store
            .read(|c| last_reading(c, "a1"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            last,
            Reading {
                at_ms: T0 + 45 * M,
                rx: 6_500,
                tx: 1_210
            }
        );

        // Another project's VM never lands in p1.
        send(
            &store,
            &batch("b1", vec![sample(T0, 0, 0), sample(T0 + 10 * M, 9, 9)]),
        )
        .await;
        assert_eq!(rows(&store, "p2").await, vec![(0, 9, 9)]);
        assert_eq!(rows(&store, "p1").await.len(), 5);

        // Monthly in UTC: January holds +0 and +10 (23:40, 23:50), February the rest.
        let f = Filter {
            project: Some("p1".into()),
            ..Filter::default()
        };
        let months = store
            .read(move |c| monthly(c, chrono_tz::UTC, &f))
            .await
            .unwrap();
        assert_eq!(months.len(), 2);
        assert_eq!(months[0].month.label(), "2025-01");
        assert_eq!(
            (months[0].max_in_bytes, months[0].max_in_at_ms),
            (63_000, T0)
        );
        assert_eq!((months[0].total_in, months[0].total_out), (126_000, 1_200));
        assert_eq!(months[1].month.label(), "2025-02");
        assert_eq!(
            (months[1].max_in_bytes, months[1].max_in_at_ms),
            (30_000, T0 + 20 * M)
        );
        assert_eq!(
            (months[1].max_out_bytes, months[1].max_out_at_ms),
            (600, T0 + 30 * M)
        );
        assert_eq!((months[1].total_in, months[1].total_out), (36_000, 1_200));
    }

    #[tokio::test]
    async fn unknown_instance_adds_nothing() {
        let (_dir, store) = setup().await;
        send(
            &store,
            &batch("ghost", vec![sample(T0, 0, 0), sample(T0 + M, 10, 10)]),
        )
        .await;
        let all = store
            .read(|c| buckets(c, &Filter::default()))
            .await
            .unwrap();
        assert!(all.is_empty());
    }

    #[tokio::test]
    async fn series_and_filters() {
        let (_dir, store) = setup().await;
        let s = store
            .read(|c| instance_series(c, None, None))
            .await
            .unwrap();
        assert_eq!(
            s,
            vec![("p1".into(), "r1".into()), ("p2".into(), "r1".into())]
        );
        let s = store
            .read(|c| instance_series(c, Some("p2"), Some("r9")))
            .await
            .unwrap();
        assert!(s.is_empty());
        store
            .write(|c| {
                add_bucket_bytes(c, "p1", "r1", T0, 1, 2)?;
                add_bucket_bytes(c, "p1", "r2", T0, 3, 4)?;
                add_bucket_bytes(c, "p1", "r1", T0 + 10 * M, 5, 6)?;
                add_bucket_bytes(c, "p1", "r1", T0, 10, 20)
            })
            .await
            .unwrap();
        let f = Filter {
            project: Some("p1".into()),
            region: Some("r1".into()),
            from_ms: Some(T0),
            to_ms: Some(T0 + 10 * M),
        };
        let got = store.read(move |c| buckets(c, &f)).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].in_bytes, got[0].out_bytes), (11, 22));
        let all = store
            .read(|c| buckets(c, &Filter::default()))
            .await
            .unwrap();
        let order: Vec<(&str, i64)> = all
            .iter()
            .map(|r| (r.region.as_str(), r.bucket_start_ms))
            .collect();
        assert_eq!(order, vec![("r1", T0), ("r2", T0), ("r1", T0 + 10 * M)]);
    }

    /// The daily rollup plus edge buckets give exactly what folding every bucket by its local
    /// month gives, in zones with whole-hour, half-hour and 45-minute offsets, with month and
    /// region filters.
    #[tokio::test]
    async fn monthly_matches_a_fold_over_every_bucket() {
        let (_dir, store) = setup().await;
        let start = T0 - 40 * 24 * 60 * M;
        store
            .write(move |c| {
                for k in 0..(100 * 144) {
                    let x = (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
                    // Repeated values make ties; some buckets stay empty.
                    if x % 7 == 0 {
                        continue;
                    }
                    let b = start + k * 10 * M;
                    add_bucket_bytes(
                        c,
                        "p1",
                        if x % 3 == 0 { "r2" } else { "r1" },
                        b,
                        (x % 13) as i64,
                        (x % 5) as i64,
                    )?;
                    // Added to twice: the peak must follow the bucket's new value.
                    if x % 11 == 0 {
                        add_bucket_bytes(c, "p1", "r1", b, 20, 0)?;
                    }
                    add_bucket_bytes(c, "p2", "r1", b, 1, 1)?;
                }
                Ok(())
            })
            .await
            .unwrap();
        for tz in [
            "UTC",
            "Asia/Shanghai",
            "Asia/Kolkata",
            "Asia/Kathmandu",
            "America/New_York",
        ] {
            let tz: Tz = tz.parse().unwrap();
            for (region, month) in [
                (None, None),
                (Some("r1"), None),
                (
                    None,
                    Some(Month {
                        year: 2025,
                        month: 1,
                    }),
                ),
            ] {
                let (from_ms, to_ms) = match month {
                    Some(m) => {
                        let (a, b) = m.window(tz).unwrap();
                        (Some(a), Some(b))
                    }
                    None => (None, None),
                };
                let f = Filter {
                    project: Some("p1".into()),
                    region: region.map(str::to_string),
                    from_ms,
                    to_ms,
                };
                let f2 = f.clone();
                let got = store.read(move |c| monthly(c, tz, &f2)).await.unwrap();
                let all = store.read(move |c| buckets(c, &f)).await.unwrap();
                let mut want = MonthlyAggregator::new();
                for r in &all {
                    let m = Month::of(tz, r.bucket_start_ms).unwrap();
                    want.add_bucket(
                        &r.project,
                        &r.region,
                        m,
                        r.bucket_start_ms,
                        r.in_bytes,
                        r.out_bytes,
                    );
                }
                let want = want.finish();
                assert!(!want.is_empty());
                assert_eq!(got, want, "{tz} {region:?} {month:?}");
            }
        }
        // Every project (admin): p2 shows up too.
        let got = store
            .read(|c| monthly(c, chrono_tz::UTC, &Filter::default()))
            .await
            .unwrap();
        assert!(got.iter().any(|m| m.project == "p2") && got.iter().any(|m| m.project == "p1"));
        // Nothing matches: no months.
        let none = Filter {
            project: Some("nobody".into()),
            ..Filter::default()
        };
        assert!(
            store
                .read(move |c| monthly(c, chrono_tz::UTC, &none))
                .await
                .unwrap()
                .is_empty()
        );
    }
}
