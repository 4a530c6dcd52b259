//! Chart series for the operator dashboard: a VM metric downsampled in SQL (min/avg/max per
//! step) and the fleet's last-hour CPU sparklines.
//!
//! Steps shorter than a minute read `vm_samples` through its `(instance_id, sampled_at_ms)`
//! index: one range scan per instance, never a scan of the whole table. Steps of a minute or
//! more read `vm_minutes`, the per-minute rollup [`add_to_minutes`] writes in the transaction that
//! stores the samples (min, sum, max per column and the sample count per instance and minute):
//! 30 days of 1 s samples are 43,200 rollup rows instead of 2.6 M samples (issue 18 measured the
//! raw scan at 3.2 s for such a window in a debug build; docs/benchmarks.md §7).

use std::collections::BTreeMap;
use std::str::FromStr;

use vmmon_common::wire::{ReportBatch, VmSample};

use super::Result;
use super::db::{Connection, Param, params};

/// Length of one `vm_minutes` row, ms; minutes start at multiples of it since the epoch.
pub const MINUTE_MS: i64 = 60_000;

/// Most points one series answer may hold (the endpoint's `points` is capped here).
pub const MAX_POINTS: u32 = 5_000;

/// A VM-level metric that can be charted: one `vm_samples` column each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmMetric {
    /// Busy share of all CPUs, % (`cpu_pct`).
    Cpu,
    /// (MemTotal − MemAvailable) / MemTotal, % (`mem_pct`).
    Mem,
    /// Read from physical disks, KB/s (`disk_read`).
    DiskRead,
    /// Written to physical disks, KB/s (`disk_write`).
    DiskWrite,
    /// Received, KB/s (`net_in`).
    NetIn,
    /// Sent, KB/s (`net_out`).
    NetOut,
}

impl VmMetric {
    /// Every metric, in the order the names are listed in errors.
    pub const ALL: [VmMetric; 6] = [
        VmMetric::Cpu,
        VmMetric::Mem,
        VmMetric::DiskRead,
        VmMetric::DiskWrite,
        VmMetric::NetIn,
        VmMetric::NetOut,
    ];

    /// The name used on the wire (`metric=` of `GET /api/series`).
    pub fn name(self) -> &'static str {
        match self {
            VmMetric::Cpu => "cpu",
            VmMetric::Mem => "mem",
            VmMetric::DiskRead => "disk_read",
            VmMetric::DiskWrite => "disk_write",
            VmMetric::NetIn => "net_in",
            VmMetric::NetOut => "net_out",
        }
    }

    /// The unit of the metric's values.
    pub fn unit(self) -> &'static str {
        match self {
            VmMetric::Cpu | VmMetric::Mem => "%",
            _ => "KB/s",
        }
    }

    /// The metric's figure in an agent's VM sample.
    fn of(self, vm: &VmSample) -> f64 {
        match self {
            VmMetric::Cpu => vm.cpu_pct,
            VmMetric::Mem => vm.mem_pct,
            VmMetric::DiskRead => vm.disk_read_kib_per_sec,
            VmMetric::DiskWrite => vm.disk_write_kib_per_sec,
            VmMetric::NetIn => vm.net_in_kib_per_sec,
            VmMetric::NetOut => vm.net_out_kib_per_sec,
        }
    }

    /// The `vm_samples` column (and the prefix of its three `vm_minutes` columns `_min`, `_sum`,
    /// `_max`): a constant, never caller text, so it may be formatted into SQL.
    fn column(self) -> &'static str {
        match self {
            VmMetric::Cpu => "cpu_pct",
            VmMetric::Mem => "mem_pct",
            VmMetric::DiskRead => "disk_read",
            VmMetric::DiskWrite => "disk_write",
            VmMetric::NetIn => "net_in",
            VmMetric::NetOut => "net_out",
        }
    }
}

/// An unknown metric name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown metric {0:?}: give one of cpu, mem, disk_read, disk_write, net_in, net_out")]
pub struct UnknownMetric(pub String);

impl FromStr for VmMetric {
    type Err = UnknownMetric;

    fn from_str(s: &str) -> std::result::Result<VmMetric, UnknownMetric> {
        VmMetric::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| UnknownMetric(s.to_string()))
    }
}

/// One step of a downsampled series: the samples with `t_ms <= sampled_at < t_ms + step`.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesPoint {
    /// Step start, epoch ms.
    pub t_ms: i64,
    /// Smallest value in the step.
    pub min: f64,
    /// Mean of the step's values.
    pub avg: f64,
    /// Largest value in the step.
    pub max: f64,
    /// Samples in the step (≥ 1: empty steps are left out).
    pub count: i64,
}

/// The step that fits `[start_ms, end_ms)` into at most `points` steps, ms (at least 1).
pub fn step_ms(start_ms: i64, end_ms: i64, points: u32) -> i64 {
    let span = end_ms.saturating_sub(start_ms).max(1);
    let points = i64::from(points.clamp(1, MAX_POINTS));
    // Ceiling division, so span / step never exceeds `points`.
    (span.saturating_add(points - 1) / points).max(1)
}

/// Where a series was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// The raw samples (steps shorter than a minute).
    Samples,
    /// The per-minute rollup (steps of whole minutes; the window rounded out to whole minutes).
    Minutes,
}

impl Resolution {
    /// The name used on the wire (`resolution` of `GET /api/series`).
    pub fn name(self) -> &'static str {
        match self {
            Resolution::Samples => "samples",
            Resolution::Minutes => "minutes",
        }
    }
}

/// A downsampled series and the window and step it was computed for.
#[derive(Debug, Clone, PartialEq)]
pub struct VmSeries {
    /// Window start, epoch ms (inclusive): the asked start, or the start of its minute when read
    /// from the rollup.
    pub start_ms: i64,
    /// Window end, epoch ms (exclusive): the asked end, or the end of its minute when read from
    /// the rollup.
    pub end_ms: i64,
    /// Step length, ms (a whole number of minutes when read from the rollup).
    pub step_ms: i64,
    /// Where the figures come from.
    pub resolution: Resolution,
    /// The steps that hold samples, oldest first (at most the asked `points`).
    pub points: Vec<SeriesPoint>,
}

/// `t` rounded down to the start of its minute.
pub fn minute_floor(t: i64) -> i64 {
    t.div_euclid(MINUTE_MS).saturating_mul(MINUTE_MS)
}

/// `t` rounded up to a minute boundary.
pub fn minute_ceil(t: i64) -> i64 {
    minute_floor(t.saturating_add(MINUTE_MS - 1))
}

/// `metric` of `instance_id` over `[start_ms, end_ms)` in at most `points` steps: min, avg and
/// max per step, computed by the database; steps without samples are absent. Oldest first.
///
/// When [`step_ms`] of the window is under a minute the raw samples are read and the window is
/// the asked one. Otherwise the window is rounded out to whole minutes, the step rounded up to
/// whole minutes so that the rounded window still fits in `points` steps, and the per-minute
/// rollup is read: the figures are exactly those of the raw samples in the rounded window (the
/// mean is the sum over the count, not a mean of means).
pub fn vm_series(
    conn: &Connection,
    key: super::InstanceKey<'_>,
    metric: VmMetric,
    start_ms: i64,
    end_ms: i64,
    points: u32,
) -> Result<VmSeries> {
    let col = metric.column();
    let step = step_ms(start_ms, end_ms, points);
    if step < MINUTE_MS {
        let sql = format!(
            "SELECT (sampled_at_ms - ?2) / ?4 AS step, MIN({col}), AVG({col}), MAX({col}), COUNT(*)
             FROM vm_samples
             WHERE instance_id = ?1 AND sampled_at_ms >= ?2 AND sampled_at_ms < ?3{}
             GROUP BY step ORDER BY step",
            conn.project_filter(5)
        );
        let points = read_steps(conn, &sql, key, start_ms, end_ms, step)?;
        return Ok(VmSeries {
            start_ms,
            end_ms,
            step_ms: step,
            resolution: Resolution::Samples,
            points,
        });
    }
    let (start, end) = (minute_floor(start_ms), minute_ceil(end_ms));
    let step = minute_ceil(step_ms(start, end, points));
    let sql = format!(
        "SELECT (minute_ms - ?2) / ?4 AS step, MIN({col}_min), SUM({col}_sum) / SUM(samples),
             MAX({col}_max), SUM(samples)
         FROM vm_minutes
         WHERE instance_id = ?1 AND minute_ms >= ?2 AND minute_ms < ?3{}
         GROUP BY step ORDER BY step",
        conn.project_filter(5)
    );
    let points = read_steps(conn, &sql, key, start, end, step)?;
    Ok(VmSeries {
        start_ms: start,
        end_ms: end,
        step_ms: step,
        resolution: Resolution::Minutes,
        points,
    })
}

/// Runs a series query whose parameters are (instance, start, end, step, project on PostgreSQL)
/// and whose columns are (step index, min, avg, max, count).
fn read_steps(
    conn: &Connection,
    sql: &str,
    key: super::InstanceKey<'_>,
    start_ms: i64,
    end_ms: i64,
    step: i64,
) -> Result<Vec<SeriesPoint>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let p = params![key.instance_id, start_ms, end_ms, step, key.project];
    let rows = stmt.query_map(conn.scoped(p), |r| {
        Ok(SeriesPoint {
            t_ms: start_ms + r.get::<_, i64>(0)? * step,
            min: r.get(1)?,
            avg: r.get(2)?,
            max: r.get(3)?,
            count: r.get(4)?,
        })
    })?;
    rows.collect::<Result<Vec<_>>>()
}

/// One minute of one instance's rollup, before it is merged into `vm_minutes`.
#[derive(Debug, Clone, Copy)]
struct Minute {
    samples: i64,
    min: [f64; 6],
    sum: [f64; 6],
    max: [f64; 6],
}

impl Minute {
    fn first(vm: &VmSample) -> Minute {
        let v = VmMetric::ALL.map(|m| m.of(vm));
        Minute {
            samples: 1,
            min: v,
            sum: v,
            max: v,
        }
    }

    fn add(&mut self, vm: &VmSample) {
        self.samples += 1;
        for (i, m) in VmMetric::ALL.into_iter().enumerate() {
            let v = m.of(vm);
            self.min[i] = self.min[i].min(v);
            self.sum[i] += v;
            self.max[i] = self.max[i].max(v);
        }
    }
}

/// Adds the batch's VM samples to the per-minute rollup `vm_minutes` (one upsert per minute the
/// batch touches). Call once per stored batch, in its transaction: the dedup before it keeps a
/// resent batch from being added twice.
/// `project` is the instance's (a column on PostgreSQL only: [`super::InstanceKey`]).
pub fn add_to_minutes(conn: &Connection, batch: &ReportBatch, project: &str) -> Result<()> {
    let minutes = minutes_of(batch);
    if minutes.is_empty() {
        return Ok(());
    }
    // Built once per backend: this runs for every stored batch.
    static SQLITE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    static PG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let pg = conn.is_pg();
    let sql = if pg { &PG } else { &SQLITE }.get_or_init(|| upsert_sql(pg));
    for (minute_ms, m) in minutes {
        let mut values: Vec<&dyn Param> = vec![&batch.instance_id, &minute_ms, &m.samples];
        for i in 0..VmMetric::ALL.len() {
            values.extend([&m.min[i] as &dyn Param, &m.sum[i], &m.max[i]]);
        }
        values.push(&project);
        conn.execute_later(sql, conn.scoped(values.as_slice()))?;
    }
    Ok(())
}

/// The batch's VM samples summed per minute (start, epoch ms).
fn minutes_of(batch: &ReportBatch) -> BTreeMap<i64, Minute> {
    let mut minutes: BTreeMap<i64, Minute> = BTreeMap::new();
    for sample in &batch.samples {
        let vm = &sample.vm;
        minutes
            .entry(minute_floor(vm.sampled_at_ms))
            .and_modify(|m| m.add(vm))
            .or_insert_with(|| Minute::first(vm));
    }
    minutes
}

/// [`add_to_minutes`] for the batches a writer stores in one transaction, in their order. On
/// PostgreSQL one `UNNEST` upsert for all their minutes instead of one statement per batch and
/// minute (each ~30 parameters): the k-th batch to touch a minute goes into the k-th statement
/// (an upsert cannot touch a row twice), so the database adds each batch's figures to the row
/// in turn, as one upsert per batch does, with the same floating-point results. On SQLite one
/// upsert per batch and minute ([`add_to_minutes`]), cheap in-process calls there.
pub fn add_to_minutes_many(conn: &Connection, batches: &[(&ReportBatch, &str)]) -> Result<()> {
    let Connection::Pg(pg) = conn else {
        for (b, project) in batches {
            add_to_minutes(conn, b, project)?;
        }
        return Ok(());
    };
    // (round, project, instance, minute) → the batch's figures of that minute.
    let mut rounds: Vec<Vec<(&str, &str, i64, Minute)>> = Vec::new();
    let mut seen: std::collections::HashMap<(&str, &str, i64), usize> =
        std::collections::HashMap::new();
    for (b, project) in batches {
        for (minute_ms, m) in minutes_of(b) {
            let round = seen
                .entry((project, b.instance_id.as_str(), minute_ms))
                .and_modify(|r| *r += 1)
                .or_insert(0);
            if rounds.len() <= *round {
                rounds.push(Vec::new());
            }
            rounds[*round].push((project, b.instance_id.as_str(), minute_ms, m));
        }
    }
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let sql = SQL.get_or_init(|| {
        let (cols, sets) = upsert_parts(true);
        let arrays: Vec<String> = cols
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let ty = match c.as_str() {
                    "instance_id" | "project" => "text",
                    "minute_ms" | "samples" => "int8",
                    _ => "float8",
                };
                format!("${}::{ty}[]", i + 1)
            })
            .collect();
        format!(
            "INSERT INTO vm_minutes ({}) SELECT * FROM UNNEST({})
             ON CONFLICT (instance_id, minute_ms, project) DO UPDATE SET {}",
            cols.join(", "),
            arrays.join(", "),
            sets.join(", ")
        )
    });
    for rows in rounds {
        let mut params: Vec<super::db::OwnedParam> = vec![
            Box::new(rows.iter().map(|r| r.1.to_owned()).collect::<Vec<String>>()),
            Box::new(rows.iter().map(|r| r.2).collect::<Vec<i64>>()),
            Box::new(rows.iter().map(|r| r.3.samples).collect::<Vec<i64>>()),
        ];
        for i in 0..VmMetric::ALL.len() {
            params.push(Box::new(
                rows.iter().map(|r| r.3.min[i]).collect::<Vec<f64>>(),
            ));
            params.push(Box::new(
                rows.iter().map(|r| r.3.sum[i]).collect::<Vec<f64>>(),
            ));
            params.push(Box::new(
                rows.iter().map(|r| r.3.max[i]).collect::<Vec<f64>>(),
            ));
        }
        params.push(Box::new(
            rows.iter().map(|r| r.0.to_owned()).collect::<Vec<String>>(),
        ));
        pg.execute_native_later(sql, params)?;
    }
    Ok(())
}

/// The `vm_minutes` upsert: a new minute is inserted, a known one merged (counts and sums added,
/// extremes kept). PostgreSQL's two-argument minimum is `LEAST`, SQLite's `MIN`; PostgreSQL's
/// rows carry the project, in the key (its last column).
fn upsert_sql(pg: bool) -> String {
    let (cols, sets) = upsert_parts(pg);
    let key = if pg {
        "instance_id, minute_ms, project"
    } else {
        "instance_id, minute_ms"
    };
    let marks: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
    format!(
        "INSERT INTO vm_minutes ({}) VALUES ({})
         ON CONFLICT ({key}) DO UPDATE SET {}",
        cols.join(", "),
        marks.join(", "),
        sets.join(", ")
    )
}

/// The `vm_minutes` upsert's columns (in [`Minute`]'s order, the project last on PostgreSQL)
/// and its `SET` clauses.
fn upsert_parts(pg: bool) -> (Vec<String>, Vec<String>) {
    let (least, greatest) = if pg {
        ("LEAST", "GREATEST")
    } else {
        ("MIN", "MAX")
    };
    let mut cols = vec![
        "instance_id".to_string(),
        "minute_ms".into(),
        "samples".into(),
    ];
    let mut sets = vec!["samples = vm_minutes.samples + excluded.samples".to_string()];
    for m in VmMetric::ALL {
        let c = m.column();
        cols.extend([format!("{c}_min"), format!("{c}_sum"), format!("{c}_max")]);
        sets.push(format!(
            "{c}_min = {least}(vm_minutes.{c}_min, excluded.{c}_min)"
        ));
        sets.push(format!("{c}_sum = vm_minutes.{c}_sum + excluded.{c}_sum"));
        sets.push(format!(
            "{c}_max = {greatest}(vm_minutes.{c}_max, excluded.{c}_max)"
        ));
    }
    if pg {
        cols.push("project".into());
    }
    (cols, sets)
}

/// One instance's CPU sparkline: the average `cpu_pct` per step (`None` where the step has no
/// sample).
#[derive(Debug, Clone, PartialEq)]
pub struct Sparkline {
    /// Instance id.
    pub instance_id: String,
    /// One value per step, oldest first; as long as [`Sparklines::steps`].
    pub cpu_pct: Vec<Option<f64>>,
}

/// The fleet's sparklines and the window they cover.
#[derive(Debug, Clone, PartialEq)]
pub struct Sparklines {
    /// Start of the first step, epoch ms (a minute boundary).
    pub start_ms: i64,
    /// Step length, ms (whole minutes).
    pub step_ms: i64,
    /// Steps per sparkline (at most the asked `points`).
    pub steps: usize,
    /// One per instance, by instance id.
    pub lines: Vec<Sparkline>,
}

/// CPU sparklines of every instance of `project` (or all), by instance id, read from the
/// per-minute rollup: the window is rounded out to whole minutes and the step up to whole
/// minutes, as in [`vm_series`]. One indexed range query per instance on one connection, reading
/// at most one row per instance and minute however often the agents sample.
pub fn cpu_sparklines(
    conn: &Connection,
    project: Option<&str>,
    start_ms: i64,
    end_ms: i64,
    points: u32,
) -> Result<Sparklines> {
    let (start, end) = (
        minute_floor(start_ms),
        minute_ceil(end_ms.max(start_ms + 1)),
    );
    let step = minute_ceil(step_ms(start, end, points));
    let steps = usize::try_from((end - start + step - 1) / step).unwrap_or(0);
    let mut list = conn.prepare_cached(
        "SELECT instance_id, project FROM instances WHERE ?1 IS NULL OR project = ?1
         ORDER BY instance_id",
    )?;
    let ids = list
        .query_map(params![project], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?
        .collect::<Result<Vec<_>>>()?;
    let mut per = conn.prepare_cached(&format!(
        "SELECT (minute_ms - ?2) / ?4 AS step, SUM(cpu_pct_sum) / SUM(samples) FROM vm_minutes
         WHERE instance_id = ?1 AND minute_ms >= ?2 AND minute_ms < ?3{}
         GROUP BY step",
        conn.project_filter(5)
    ))?;
    let mut lines = Vec::with_capacity(ids.len());
    for (id, owner) in ids {
        let mut cpu_pct = vec![None; steps];
        let p = params![id, start, end, step, owner];
        let rows = per.query_map(conn.scoped(p), |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, f64>(1)?))
        })?;
        for row in rows {
            let (i, v) = row?;
            if let Some(slot) = usize::try_from(i).ok().and_then(|i| cpu_pct.get_mut(i)) {
                *slot = Some(v);
            }
        }
        lines.push(Sparkline {
            instance_id: id,
            cpu_pct,
        });
    }
    Ok(Sparklines {
        start_ms: start,
        step_ms: step,
        steps,
        lines,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{self, Backend, TestStore};
    use crate::store::{instances, samples};
    use vmmon_common::test_support as ts;
    use vmmon_common::wire::{ReportBatch, Sample, VmSample};

    /// A store holding `samples` `(instance, project, at_ms, cpu_pct)`, registered and inserted
    /// through the store's own functions.
    async fn store_with(backend: Backend, samples: &[(&str, &str, i64, f64)]) -> TestStore {
        let t = testing::open(backend).await;
        let rows: Vec<(String, String, i64, f64)> = samples
            .iter()
            .map(|(i, p, at, cpu)| (i.to_string(), p.to_string(), *at, *cpu))
            .collect();
        t.store
            .write(move |c| {
                for (seq, (id, project, at, cpu)) in rows.iter().enumerate() {
                    testing::register(c, id, project)?;
                    let vm = VmSample {
                        cpu_pct: *cpu,
                        mem_pct: 50.0,
                        ..ts::vm_sample(*at, 0, 0)
                    };
                    let batch = ts::batch(
                        id,
                        seq as u64,
                        vec![Sample {
                            vm,
                            processes: None,
                        }],
                    );
                    samples::insert_samples(c, &batch, project)?;
                }
                Ok(())
            })
            .await
            .unwrap();
        t
    }

    #[test]
    fn step_fits_the_span_into_points() {
        for (start, end, points, step) in [
            (0, 1000, 10, 100),
            (0, 1001, 10, 101),
            (0, 30 * 86_400_000, 1000, 2_592_000),
            (5, 5, 10, 1),
            (10, 0, 10, 1),
            (0, 100, 0, 100),
            (0, 10, 1000, 1),
        ] {
            assert_eq!(step_ms(start, end, points), step, "{start} {end} {points}");
            let n = (end - start).max(1);
            assert!(n.div_euclid(step) <= i64::from(points.clamp(1, MAX_POINTS)));
        }
    }

    #[test]
    fn metric_names_roundtrip_and_unknown_is_refused() {
        for m in VmMetric::ALL {
            assert_eq!(m.name().parse::<VmMetric>(), Ok(m));
        }
        let e = "cpu_pct; DROP TABLE x".parse::<VmMetric>().unwrap_err();
        assert!(e.to_string().contains("unknown metric"), "{e}");
    }

    async fn series_gives_min_avg_max_per_step_and_skips_empty_steps(backend: Backend) {
        // 1 s samples 0..10 s on vm-a, values = seconds; one sample on vm-b that must not leak.
        let mut s: Vec<(&str, &str, i64, f64)> =
            (0..10).map(|i| ("vm-a", "p", i * 1000, i as f64)).collect();
        s.push(("vm-b", "p", 1000, 99.0));
        // A gap: nothing between 10 s and 25 s, then one sample at 25 s.
        s.push(("vm-a", "p", 25_000, 7.0));
        let t = store_with(backend, &s).await;
        t.store
            .read(|c| {
                let pts =
                    vm_series(c, testing::key("p", "vm-a"), VmMetric::Cpu, 0, 30_000, 6)?.points;
                // Step 5 s: [0,5) = 0..4, [5,10) = 5..9, [25,30) = 7.
                assert_eq!(pts.len(), 3);
                assert_eq!(
                    (pts[0].t_ms, pts[0].min, pts[0].avg, pts[0].max),
                    (0, 0.0, 2.0, 4.0)
                );
                assert_eq!(pts[0].count, 5);
                assert_eq!(
                    (pts[1].t_ms, pts[1].min, pts[1].avg, pts[1].max),
                    (5000, 5.0, 7.0, 9.0)
                );
                assert_eq!((pts[2].t_ms, pts[2].count, pts[2].max), (25_000, 1, 7.0));
                // The end is exclusive, the start inclusive.
                let pts =
                    vm_series(c, testing::key("p", "vm-a"), VmMetric::Cpu, 1000, 3000, 100)?.points;
                assert_eq!(pts.iter().map(|p| p.count).sum::<i64>(), 2);
                // Another column, another instance, an unknown instance.
                let pts =
                    vm_series(c, testing::key("p", "vm-a"), VmMetric::Mem, 0, 30_000, 1)?.points;
                assert_eq!((pts.len(), pts[0].avg, pts[0].count), (1, 50.0, 11));
                let pts =
                    vm_series(c, testing::key("p", "vm-b"), VmMetric::Cpu, 0, 30_000, 1)?.points;
                assert_eq!(pts[0].max, 99.0);
                assert!(
                    vm_series(c, testing::key("p", "nope"), VmMetric::Cpu, 0, 30_000, 10)?
                        .points
                        .is_empty()
                );
                Ok(())
            })
            .await
            .unwrap();
    }

    async fn many_samples_never_exceed_points(backend: Backend) {
        let s: Vec<(&str, &str, i64, f64)> =
            (0..3000).map(|i| ("vm-a", "p", i * 1000, 1.0)).collect();
        let t = store_with(backend, &s).await;
        t.store
            .read(|c| {
                for points in [1, 7, 100, 999, 5000, 100_000] {
                    let pts = vm_series(
                        c,
                        testing::key("p", "vm-a"),
                        VmMetric::Cpu,
                        0,
                        3_000_000,
                        points,
                    )?
                    .points;
                    assert!(
                        pts.len() as u32 <= points.min(MAX_POINTS),
                        "{points}: {}",
                        pts.len()
                    );
                    assert_eq!(pts.iter().map(|p| p.count).sum::<i64>(), 3000);
                }
                Ok(())
            })
            .await
            .unwrap();
    }

    async fn sparklines_are_per_instance_scoped_and_fixed_length(backend: Backend) {
        let t = store_with(
            backend,
            &[
                ("vm-a", "p", 0, 10.0),
                ("vm-a", "p", 30_000, 20.0),
                ("vm-b", "q", 210_000, 5.0),
            ],
        )
        .await;
        t.store
            .read(|c| {
                // The window as whole minutes (here already), 4 steps of a minute.
                for (start, end) in [(0, 240_000), (1, 239_999), (59_999, 180_001)] {
                    let all = cpu_sparklines(c, None, start, end, 4)?;
                    assert_eq!((all.start_ms, all.step_ms, all.steps), (0, 60_000, 4));
                    assert_eq!(all.lines.len(), 2);
                    assert_eq!(all.lines[0].instance_id, "vm-a");
                    assert_eq!(all.lines[0].cpu_pct, vec![Some(15.0), None, None, None]);
                    assert_eq!(all.lines[1].cpu_pct, vec![None, None, None, Some(5.0)]);
                }
                // An hour in 30 points: steps of 2 minutes.
                let hour = cpu_sparklines(c, None, 3_600_000, 7_200_000, 30)?;
                assert_eq!(
                    (hour.start_ms, hour.step_ms, hour.steps),
                    (3_600_000, 120_000, 30)
                );
                assert_eq!(hour.lines[0].cpu_pct, vec![None; 30]);
                let q = cpu_sparklines(c, Some("q"), 0, 240_000, 4)?.lines;
                assert_eq!(q.len(), 1);
                assert_eq!(q[0].instance_id, "vm-b");
                assert!(
                    cpu_sparklines(c, Some("none"), 0, 240_000, 4)?
                        .lines
                        .is_empty()
                );
                Ok(())
            })
            .await
            .unwrap();
    }

    /// A VM sample at `at_ms` whose six figures differ (multiples of 0.25, so sums are exact).
    fn varied(at_ms: i64, i: i64) -> VmSample {
        let q = |k: i64| ((i * k).rem_euclid(101)) as f64 * 0.25;
        VmSample {
            cpu_pct: q(37),
            mem_pct: q(11),
            disk_read_kib_per_sec: q(53),
            disk_write_kib_per_sec: q(7),
            net_in_kib_per_sec: q(89),
            net_out_kib_per_sec: q(29),
            ..ts::vm_sample(at_ms, 0, 0)
        }
    }

    /// Stores `samples` of `instance` in batches of `per_batch`, in the order given.
    async fn insert_in_batches(t: &TestStore, instance: &str, samples: &[VmSample], per: usize) {
        let batches: Vec<ReportBatch> = samples
            .chunks(per)
            .enumerate()
            .map(|(seq, chunk)| {
                ts::batch(
                    instance,
                    seq as u64,
                    chunk
                        .iter()
                        .map(|vm| Sample {
                            vm: vm.clone(),
                            processes: None,
                        })
                        .collect(),
                )
            })
            .collect();
        let id = instance.to_string();
        t.store
            .write(move |c| {
                testing::register(c, &id, "p")?;
                for b in &batches {
                    samples::insert_samples(c, b, "p")?;
                }
                Ok(())
            })
            .await
            .unwrap();
    }

    /// The step figures of `samples` over `[start, end)` in steps of `step`, computed here from
    /// the samples themselves.
    fn expected(
        samples: &[VmSample],
        m: VmMetric,
        start: i64,
        end: i64,
        step: i64,
    ) -> Vec<SeriesPoint> {
        let mut steps: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
        for vm in samples {
            let t = vm.sampled_at_ms;
            if t >= start && t < end {
                steps.entry((t - start) / step).or_default().push(m.of(vm));
            }
        }
        steps
            .into_iter()
            .map(|(k, v)| SeriesPoint {
                t_ms: start + k * step,
                min: v.iter().copied().fold(f64::INFINITY, f64::min),
                avg: v.iter().sum::<f64>() / v.len() as f64,
                max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                count: v.len() as i64,
            })
            .collect()
    }

    async fn long_steps_read_the_minute_rollup_and_match_the_samples(backend: Backend) {
        // 3 hours of samples every 7 s from an unaligned start (minutes straddle batches), sent
        // out of order: the second half first, so minutes are merged from several batches.
        let t0 = 1_764_000_000_000 + 12_345;
        let mut all: Vec<VmSample> = (0..1543).map(|i| varied(t0 + i * 7_000, i)).collect();
        let t = testing::open(backend).await;
        let (first, second) = all.split_at(800);
        let reordered: Vec<VmSample> = second.iter().chain(first).cloned().collect();
        insert_in_batches(&t, "vm-a", &reordered, 13).await;
        all.sort_by_key(|v| v.sampled_at_ms);
        let cases = [
            // (start, end, points, rounded start, rounded end, step)
            (
                t0,
                t0 + 3 * 3_600_000,
                100,
                1_764_000_000_000,
                1_764_010_860_000,
                120_000,
            ),
            (
                t0 - 1,
                t0 + 3_600_000 + 1,
                60,
                1_764_000_000_000,
                1_764_003_660_000,
                120_000,
            ),
            (
                t0 + 600_000,
                t0 + 4_200_000,
                60,
                1_764_000_600_000,
                1_764_004_260_000,
                120_000,
            ),
            (
                t0,
                t0 + 7_200_000,
                120,
                1_764_000_000_000,
                1_764_007_260_000,
                120_000,
            ),
            (
                t0,
                t0 + 7_200_000,
                1,
                1_764_000_000_000,
                1_764_007_260_000,
                7_260_000,
            ),
            (
                0,
                2_000_000_000_000,
                5000,
                0,
                2_000_000_040_000,
                400_020_000,
            ),
        ];
        for (start, end, points, rs, re, step) in cases {
            for m in VmMetric::ALL {
                let got = t
                    .store
                    .read(move |c| vm_series(c, testing::key("p", "vm-a"), m, start, end, points))
                    .await
                    .unwrap();
                let what = format!("{} {start}..{end} points={points}", m.name());
                assert_eq!(got.resolution, Resolution::Minutes, "{what}");
                assert_eq!(
                    (got.start_ms, got.end_ms, got.step_ms),
                    (rs, re, step),
                    "{what}"
                );
                assert!(got.points.len() <= points as usize, "{what}");
                assert_eq!(got.points, expected(&all, m, rs, re, step), "{what}");
            }
        }
        // Under a minute per step: the raw samples, the window as asked.
        let got = t
            .store
            .read(move |c| {
                vm_series(
                    c,
                    testing::key("p", "vm-a"),
                    VmMetric::Cpu,
                    t0,
                    t0 + 600_000,
                    100,
                )
            })
            .await
            .unwrap();
        assert_eq!(got.resolution, Resolution::Samples);
        assert_eq!(
            (got.start_ms, got.end_ms, got.step_ms),
            (t0, t0 + 600_000, 6_000)
        );
        assert_eq!(
            got.points,
            expected(&all, VmMetric::Cpu, t0, t0 + 600_000, 6_000)
        );
    }

    /// (minute, samples, cpu min, cpu sum, cpu max) of every `vm_minutes` row of `instance`.
    async fn minute_rows(t: &TestStore, instance: &str) -> Vec<(i64, i64, f64, f64, f64)> {
        let id = instance.to_string();
        t.store
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT minute_ms, samples, cpu_pct_min, cpu_pct_sum, cpu_pct_max
                     FROM vm_minutes WHERE instance_id = ?1 ORDER BY minute_ms",
                )?;
                let rows = stmt.query_map([id.as_str()], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })?;
                rows.collect::<Result<Vec<_>>>()
            })
            .await
            .unwrap()
    }

    async fn a_resent_batch_adds_nothing_and_late_samples_merge(backend: Backend) {
        let t = testing::open(backend).await;
        let cpu = |at: i64, v: f64| Sample {
            vm: VmSample {
                cpu_pct: v,
                ..ts::vm_sample(at, 0, 0)
            },
            processes: None,
        };
        let b1 = ts::batch(
            "vm-a",
            1,
            vec![cpu(60_000, 5.0), cpu(90_000, 7.0), cpu(120_500, 1.0)],
        );
        let late = ts::batch("vm-a", 2, vec![cpu(61_000, 2.0), cpu(119_999, 9.5)]);
        t.store
            .write(move |c| {
                testing::register(c, "vm-a", "p")?;
                assert!(samples::insert_batch(c, &b1, "p", 1)?);
                assert!(
                    !samples::insert_batch(c, &b1, "p", 2)?,
                    "a resend is a duplicate"
                );
                assert!(samples::insert_batch(c, &late, "p", 3)?);
                assert!(!samples::insert_batch(c, &late, "p", 4)?);
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(
            minute_rows(&t, "vm-a").await,
            vec![(60_000, 4, 2.0, 23.5, 9.5), (120_000, 1, 1.0, 1.0, 1.0)]
        );
        // Retention: a minute goes once it has ended by the cutoff, with its samples.
        let n = t
            .store
            .write(|c| samples::purge_raw_before(c, 179_999, 1000))
            .await
            .unwrap();
        assert_eq!(
            n,
            5 + 1 + 2,
            "5 samples, 1 minute, 2 batch ids (received at 1 and 3)"
        );
        assert_eq!(
            minute_rows(&t, "vm-a").await,
            vec![(120_000, 1, 1.0, 1.0, 1.0)]
        );
        // Removing the instance removes its minutes.
        t.store
            .write(|c| instances::remove(c, "vm-a"))
            .await
            .unwrap();
        assert!(minute_rows(&t, "vm-a").await.is_empty());
    }

    #[tokio::test]
    async fn the_migration_rolls_up_samples_stored_before_it() {
        // A store at the schema version before the rollup, holding raw samples.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(crate::store::DB_FILE);
        let before = super::super::migrations::MIGRATIONS.len() - 1;
        let samples: Vec<VmSample> = (0..300)
            .map(|i| varied(1_764_000_000_000 + i * 1_000, i))
            .collect();
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            for sql in &super::super::migrations::MIGRATIONS[..before] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", before).unwrap();
            for (i, vm) in samples.iter().enumerate() {
                conn.execute(
                    "INSERT INTO vm_samples (instance_id, sampled_at_ms, elapsed_ms, cpu_pct,
                         mem_pct, disk_read, disk_write, net_in, net_out, rx_bytes_total,
                         tx_bytes_total, proc_count)
                     VALUES (?1, ?2, 1000, ?3, ?4, ?5, ?6, ?7, ?8, 0, 0, 1)",
                    rusqlite::params![
                        if i % 2 == 0 { "vm-a" } else { "vm-b" },
                        vm.sampled_at_ms,
                        vm.cpu_pct,
                        vm.mem_pct,
                        vm.disk_read_kib_per_sec,
                        vm.disk_write_kib_per_sec,
                        vm.net_in_kib_per_sec,
                        vm.net_out_kib_per_sec
                    ],
                )
                .unwrap();
            }
        }
        let t = TestStore {
            store: crate::store::Store::open(dir.path()).unwrap(),
            location: crate::store::StoreLocation::Sqlite(dir.path().to_path_buf()),
            dir,
        };
        let a: Vec<VmSample> = samples.iter().step_by(2).cloned().collect();
        let (start, end) = (1_764_000_000_000, 1_764_000_300_000);
        for m in VmMetric::ALL {
            let got = t
                .store
                .read(move |c| vm_series(c, testing::key("p", "vm-a"), m, start, end, 5))
                .await
                .unwrap();
            assert_eq!(got.resolution, Resolution::Minutes);
            assert_eq!(
                got.points,
                expected(&a, m, start, end, 60_000),
                "{}",
                m.name()
            );
        }
        assert_eq!(minute_rows(&t, "vm-b").await.len(), 5);
    }

    crate::store::testing::on_both_backends!(
        series_gives_min_avg_max_per_step_and_skips_empty_steps,
        many_samples_never_exceed_points,
        sparklines_are_per_instance_scoped_and_fixed_length,
        long_steps_read_the_minute_rollup_and_match_the_samples,
        a_resent_batch_adds_nothing_and_late_samples_merge
    );
}
