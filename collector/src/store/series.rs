//! Chart series for the operator dashboard: a VM metric downsampled in SQL (min/avg/max per
//! step) and the fleet's last-hour CPU sparklines.
//!
//! Both read `vm_samples` through its `(instance_id, sampled_at_ms)` index only: one range scan per
//! instance, never a scan of the whole table, whatever the fleet's size.

use std::str::FromStr;

use super::Result;
use super::db::{Connection, params};

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

    /// The `vm_samples` column: a constant, never caller text, so it may be formatted into SQL.
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
    ((span + points - 1) / points).max(1)
}

/// `metric` of `instance_id` over `[start_ms, end_ms)` in steps of [`step_ms`]: min, avg and max
/// per step, computed by SQLite; steps without samples are absent. Oldest first.
pub fn vm_series(
    conn: &Connection,
    instance_id: &str,
    metric: VmMetric,
    start_ms: i64,
    end_ms: i64,
    points: u32,
) -> Result<Vec<SeriesPoint>> {
    let step = step_ms(start_ms, end_ms, points);
    let col = metric.column();
    let sql = format!(
        "SELECT (sampled_at_ms - ?2) / ?4 AS step, MIN({col}), AVG({col}), MAX({col}), COUNT(*)
         FROM vm_samples
         WHERE instance_id = ?1 AND sampled_at_ms >= ?2 AND sampled_at_ms < ?3
         GROUP BY step ORDER BY step"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params![instance_id, start_ms, end_ms, step], |r| {
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

/// One instance's CPU sparkline: the average `cpu_pct` per step of `[start_ms, end_ms)`
/// (`points` steps, `None` where the step has no sample).
#[derive(Debug, Clone, PartialEq)]
pub struct Sparkline {
    /// Instance id.
    pub instance_id: String,
    /// One value per step, oldest first; always `points` long.
    pub cpu_pct: Vec<Option<f64>>,
}

/// CPU sparklines of every instance of `project` (or all), by instance id: one indexed range
/// query per instance on one connection.
pub fn cpu_sparklines(
    conn: &Connection,
    project: Option<&str>,
    start_ms: i64,
    end_ms: i64,
    points: u32,
) -> Result<Vec<Sparkline>> {
    let points = points.clamp(1, MAX_POINTS);
    let step = step_ms(start_ms, end_ms, points);
    let mut list = conn.prepare_cached(
        "SELECT instance_id FROM instances WHERE ?1 IS NULL OR project = ?1 ORDER BY instance_id",
    )?;
    let ids = list
        .query_map(params![project], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>>>()?;
    let mut per = conn.prepare_cached(
        "SELECT (sampled_at_ms - ?2) / ?4 AS step, AVG(cpu_pct) FROM vm_samples
         WHERE instance_id = ?1 AND sampled_at_ms >= ?2 AND sampled_at_ms < ?3
         GROUP BY step",
    )?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let mut cpu_pct = vec![None; points as usize];
        let rows = per.query_map(params![id, start_ms, end_ms, step], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, f64>(1)?))
        })?;
        for row in rows {
            let (i, v) = row?;
            if let Some(slot) = usize::try_from(i).ok().and_then(|i| cpu_pct.get_mut(i)) {
                *slot = Some(v);
            }
        }
        out.push(Sparkline {
            instance_id: id,
            cpu_pct,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{self, Backend, TestStore};
    use crate::store::{AgentTokenRow, instances, samples};
    use vmmon_common::test_support as ts;
    use vmmon_common::wire::{Inventory, Sample, VmSample};

    fn token(project: &str) -> AgentTokenRow {
        AgentTokenRow {
            id: 1,
            project: project.into(),
            region: "r1".into(),
            party: "x".into(),
            created_at_ms: 0,
            revoked_at_ms: None,
            cdn_edge: false,
        }
    }

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
                    instances::register(
                        c,
                        id,
                        &token(project),
                        &Inventory::default(),
                        1,
                        0,
                        Default::default(),
                    )?;
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
                    samples::insert_samples(c, &batch)?;
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
                let pts = vm_series(c, "vm-a", VmMetric::Cpu, 0, 30_000, 6)?;
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
                let pts = vm_series(c, "vm-a", VmMetric::Cpu, 1000, 3000, 100)?;
                assert_eq!(pts.iter().map(|p| p.count).sum::<i64>(), 2);
                // Another column, another instance, an unknown instance.
                let pts = vm_series(c, "vm-a", VmMetric::Mem, 0, 30_000, 1)?;
                assert_eq!((pts.len(), pts[0].avg, pts[0].count), (1, 50.0, 11));
                let pts = vm_series(c, "vm-b", VmMetric::Cpu, 0, 30_000, 1)?;
                assert_eq!(pts[0].max, 99.0);
                assert!(vm_series(c, "nope", VmMetric::Cpu, 0, 30_000, 10)?.is_empty());
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
                    let pts = vm_series(c, "vm-a", VmMetric::Cpu, 0, 3_000_000, points)?;
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
                ("vm-a", "p", 500, 20.0),
                ("vm-b", "q", 3500, 5.0),
            ],
        )
        .await;
        t.store
            .read(|c| {
                let all = cpu_sparklines(c, None, 0, 4000, 4)?;
                assert_eq!(all.len(), 2);
                assert_eq!(all[0].instance_id, "vm-a");
                assert_eq!(all[0].cpu_pct, vec![Some(15.0), None, None, None]);
                assert_eq!(all[1].cpu_pct, vec![None, None, None, Some(5.0)]);
                let q = cpu_sparklines(c, Some("q"), 0, 4000, 4)?;
                assert_eq!(q.len(), 1);
                assert_eq!(q[0].instance_id, "vm-b");
                assert!(cpu_sparklines(c, Some("none"), 0, 4000, 4)?.is_empty());
                Ok(())
            })
            .await
            .unwrap();
    }

    crate::on_both_backends!(
        series_gives_min_avg_max_per_step_and_skips_empty_steps,
        many_samples_never_exceed_points,
        sparklines_are_per_instance_scoped_and_fixed_length
    );
}
