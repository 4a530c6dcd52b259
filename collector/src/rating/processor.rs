//! Periods and processing: usage of each period becomes one frame per tenant, priced by the
//! enabled modules and stored, replacing whatever was stored for that period before.
//!
//! A period is read, priced and written inside one write transaction of the store, so a period
//! is never half-stored, and two runs of the same period (the loop and an admin's
//! `vmmon-collector rating process`) serialise: the later one sees all the former committed and
//! replaces its result. Rerunning a period therefore never double-counts.
//!
//! The loop keeps the start of the next period to process in `rating_state`. On first start it
//! begins with the current UTC month (as upstream CloudKitty does); a period `[b, e)` is processed
//! once `e + wait_secs <= now`, periods in order, and the state advances even when nothing was
//! used. Older periods can be rated with the CLI.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{Datelike, TimeZone, Utc};
use rusqlite::Connection;
use rust_decimal::Decimal;
use serde_json::Value;

use super::hashmap::Overflow;
use super::metrics::MetricsConfig;
use super::usage::{self, InstanceUsage};
use super::{Usage, decimal, modules, rate};
use crate::App;
use crate::store::rating::{self as db, PointRow, TotalRow};
use crate::store::{self, Store, StoreError};

/// Longest the loop sleeps before looking again.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// What processing one period did.
#[derive(Debug, Clone, PartialEq)]
pub struct PeriodOutcome {
    /// Period start, epoch ms.
    pub begin_ms: i64,
    /// Period end, epoch ms.
    pub end_ms: i64,
    /// Tenants with rated usage.
    pub tenants: usize,
    /// Datapoints stored.
    pub points: usize,
    /// Sum of all prices.
    pub total: Decimal,
    /// Whether an earlier result was replaced.
    pub replaced: bool,
}

/// Start of the period holding `ms`.
pub fn period_start(ms: i64, period_ms: i64) -> i64 {
    ms.div_euclid(period_ms) * period_ms
}

/// 00:00 UTC on the first day of the month holding `ms`.
pub fn month_start(ms: i64) -> i64 {
    Utc.timestamp_millis_opt(ms)
        .single()
        .and_then(|t| {
            Utc.with_ymd_and_hms(t.year(), t.month(), 1, 0, 0, 0)
                .single()
        })
        .map(|t| t.timestamp_millis())
        .unwrap_or(0)
}

fn overflow(e: Overflow) -> StoreError {
    StoreError::Corrupt(format!("rating: {e}"))
}

/// The frames of one period, per tenant: every instance's usage turned into one datapoint per
/// metric (in config order, instances by id), unpriced.
pub fn frames(metrics: &MetricsConfig, usages: &[InstanceUsage]) -> BTreeMap<String, Usage> {
    let mut by_tenant: BTreeMap<String, Vec<&InstanceUsage>> = BTreeMap::new();
    for u in usages {
        by_tenant.entry(u.info.project.clone()).or_default().push(u);
    }
    by_tenant
        .into_iter()
        .map(|(tenant, list)| {
            let usage: Usage = metrics
                .metrics
                .iter()
                .map(|m| {
                    (
                        m.alt_name.clone(),
                        list.iter().map(|u| m.point(u)).collect(),
                    )
                })
                .collect();
            (tenant, usage)
        })
        .collect()
}

/// Reads, prices and stores `[begin_ms, end_ms)` on `conn` (call inside one write transaction).
pub fn process_period(
    conn: &Connection,
    metrics: &MetricsConfig,
    begin_ms: i64,
    end_ms: i64,
    now_ms: i64,
) -> store::Result<PeriodOutcome> {
    let rows = db::period_samples(conn, begin_ms, end_ms, usage::MAX_WINDOW_MS)?;
    let usages: Vec<InstanceUsage> = rows
        .iter()
        .filter_map(|(info, prev, samples)| usage::usage(info, *prev, samples, begin_ms, end_ms))
        .collect();
    let states = modules::states(&db::module_rows(conn)?);
    let order = modules::run_order(&states);
    let rules = db::hashmap_rules(conn)?;
    let mut points = Vec::new();
    let mut totals = Vec::new();
    let mut total = Decimal::ZERO;
    let frames = frames(metrics, &usages);
    let tenants = frames.len();
    for (tenant, mut usage) in frames {
        rate(&order, &rules.compile(Some(&tenant)), &mut usage).map_err(overflow)?;
        for (res_type, list) in usage {
            let mut sum = Decimal::ZERO;
            for p in list {
                sum = sum.checked_add(p.price).ok_or_else(|| {
                    overflow(Overflow {
                        service: res_type.clone(),
                    })
                })?;
                points.push(PointRow {
                    begin_ms,
                    end_ms,
                    tenant_id: tenant.clone(),
                    res_type: res_type.clone(),
                    unit: p.unit.clone(),
                    qty: decimal::to_text(p.qty),
                    rating: decimal::to_text(p.price),
                    desc: Value::Object(p.desc()).to_string(),
                });
            }
            total += sum;
            totals.push(TotalRow {
                begin_ms,
                end_ms,
                tenant_id: tenant.clone(),
                res_type,
                rate: sum,
            });
        }
    }
    let removed = db::replace_period(conn, begin_ms, end_ms, &points, &totals, now_ms)?;
    Ok(PeriodOutcome {
        begin_ms,
        end_ms,
        tenants,
        points: points.len(),
        total,
        replaced: removed > 0,
    })
}

/// Processes `count` consecutive periods from the one holding `start_ms` (admin reprocessing);
/// each period in its own transaction. Periods that have not ended yet are refused, and so are
/// periods whose raw samples may already be deleted (older than `raw_retention_days`, 0 = kept
/// forever): rating them again would replace their stored ratings with nothing.
pub async fn process_range(
    store: &Store,
    metrics: Arc<MetricsConfig>,
    period_ms: i64,
    start_ms: i64,
    count: u32,
    raw_retention_days: u32,
) -> Result<Vec<PeriodOutcome>, String> {
    let first = period_start(start_ms, period_ms);
    let now = store::now_ms();
    if raw_retention_days > 0
        && first < now - i64::from(raw_retention_days) * 86_400_000 + usage::MAX_WINDOW_MS
    {
        return Err(format!(
            "the period starting at {} is older than raw_retention_days ({raw_retention_days}): \
             its samples may be deleted, and rating it again would erase its stored ratings",
            iso(first)
        ));
    }
    let mut out = Vec::new();
    for i in 0..i64::from(count) {
        let b = first + i * period_ms;
        let e = b + period_ms;
        if e > now {
            return Err(format!(
                "the period starting at {} has not ended yet",
                iso(b)
            ));
        }
        let m = metrics.clone();
        let outcome = store
            .write(move |c| process_period(c, &m, b, e, store::now_ms()))
            .await
            .map_err(|e| e.to_string())?;
        out.push(outcome);
    }
    Ok(out)
}

/// Naive UTC ISO-8601, as the API writes datetimes.
pub fn iso(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S").to_string())
        .unwrap_or_default()
}

/// Processes the next due period, if any; returns it, or how long until one is due.
async fn step(
    store: &Store,
    metrics: &Arc<MetricsConfig>,
    period_ms: i64,
    wait_ms: i64,
) -> store::Result<Result<PeriodOutcome, Duration>> {
    let now = store::now_ms();
    let next = store
        .read(|c| db::state(c, db::NEXT_PERIOD))
        .await?
        .unwrap_or_else(|| period_start(month_start(now), period_ms));
    let due_at = next + period_ms + wait_ms;
    if due_at > now {
        let ms = u64::try_from(due_at - now).unwrap_or(0);
        return Ok(Err(Duration::from_millis(ms).min(MAX_SLEEP)));
    }
    let m = metrics.clone();
    let outcome = store
        .write(move |c| {
            let o = process_period(c, &m, next, next + period_ms, store::now_ms())?;
            db::set_state(c, db::NEXT_PERIOD, next + period_ms)?;
            Ok(o)
        })
        .await?;
    Ok(Ok(outcome))
}

/// Starts the processing loop (when `rating.process` is on and the metrics config loaded).
pub fn spawn_processing(app: Arc<App>) {
    let cfg = app.config.rating.clone();
    if !cfg.process {
        tracing::info!("Rating processing is off (rating.process = false).");
        return;
    }
    let Ok(metrics) = app.rating.metrics.clone() else {
        return;
    };
    let period_ms = (cfg.period_secs as i64).saturating_mul(1000);
    let wait_ms = (cfg.wait_secs as i64).saturating_mul(1000);
    tokio::spawn(async move {
        loop {
            match step(&app.store, &metrics, period_ms, wait_ms).await {
                Ok(Ok(o)) => {
                    if o.points > 0 || o.replaced {
                        tracing::info!(
                            begin = %iso(o.begin_ms), tenants = o.tenants, points = o.points,
                            total = %decimal::to_text(o.total), "Rated a period."
                        );
                    }
                    tokio::task::yield_now().await;
                }
                Ok(Err(sleep)) => tokio::time::sleep(sleep).await,
                Err(e) => {
                    tracing::error!(error = %e, "Rating a period failed; retrying in a minute.");
                    tokio::time::sleep(MAX_SLEEP).await;
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rating::usage::InstanceInfo;

    #[test]
    fn period_math() {
        let h = 3_600_000;
        assert_eq!(period_start(1_700_000_123_456, h), 1_699_999_200_000);
        // 2023-11-14T22:13:20Z → 2023-11-01T00:00:00Z
        assert_eq!(month_start(1_700_000_000_000), 1_698_796_800_000);
        assert_eq!(iso(1_698_796_800_000), "2023-11-01T00:00:00");
    }

    #[test]
    fn frames_group_by_tenant_in_config_order() {
        let metrics = MetricsConfig::defaults().unwrap();
        let u = |id: &str, p: &str| InstanceUsage {
            info: InstanceInfo {
                instance_id: id.into(),
                project: p.into(),
                cpu_count: 2,
                mem_total_bytes: 4 << 30,
                disk_total_bytes: 40 << 30,
                ..InstanceInfo::default()
            },
            uptime_ms: 3_600_000,
            cpu_core_secs: Decimal::from(3600),
            rx_bytes: 2_000_000_000,
            tx_bytes: 500_000_000,
        };
        let f = frames(&metrics, &[u("b1", "B"), u("a1", "A"), u("a2", "A")]);
        assert_eq!(f.keys().collect::<Vec<_>>(), vec!["A", "B"]);
        let a = &f["A"];
        let types: Vec<&str> = a.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            types,
            vec![
                "instance",
                "cpu.hours",
                "network.in",
                "network.out",
                "disk.size"
            ]
        );
        let qty: Vec<String> = a.iter().map(|(_, p)| decimal::to_text(p[0].qty)).collect();
        assert_eq!(qty, vec!["1", "1", "2", "0.5", "40"]);
        assert_eq!(a[0].1[0].desc()["flavor_name"], "2c4g");
        assert_eq!(a[0].1[1].desc()["id"], "a2");
    }
}
