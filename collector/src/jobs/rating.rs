//! Rating runs: usage of each period becomes one frame per tenant, priced by the
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

use std::sync::Arc;
use std::time::Duration;

use crate::store::Connection;
use rust_decimal::Decimal;
use serde_json::Value;
use vmmon_common::vocab::DAY_MS;

use crate::app::App;
use crate::rating::hashmap::Overflow;
use crate::rating::metrics::MetricsConfig;
use crate::rating::period::{frames, iso, month_start, period_start};
use crate::rating::usage::{self, InstanceUsage};
use crate::rating::{decimal, modules, rate};
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

fn overflow(e: Overflow) -> StoreError {
    StoreError::Corrupt(format!("rating: {e}"))
}

/// Reads, prices and stores `[begin_ms, end_ms)` on `conn` (call inside one write transaction)
/// for every active scope (tenant), or only for `only` (a scope's reprocessing, active or not).
/// Hashmap rules count when their validity period holds `begin_ms`.
pub fn process_period(
    conn: &Connection,
    metrics: &MetricsConfig,
    begin_ms: i64,
    end_ms: i64,
    now_ms: i64,
    only: Option<&str>,
) -> store::Result<PeriodOutcome> {
    let rows = db::period_samples(conn, begin_ms, end_ms, usage::MAX_WINDOW_MS)?;
    let usages: Vec<InstanceUsage> = rows
        .iter()
        .filter_map(|(info, prev, samples)| usage::usage(info, *prev, samples, begin_ms, end_ms))
        .collect();
    let states = modules::states(&db::module_rows(conn)?);
    let order = modules::run_order(&states);
    let rules = db::hashmap_rules(conn)?.at(begin_ms);
    let mut points = Vec::new();
    let mut totals = Vec::new();
    let mut total = Decimal::ZERO;
    let mut frames = frames(metrics, &usages);
    let which = match only {
        Some(t) => {
            frames.retain(|tenant, _| tenant == t);
            db::Replace::Only(t)
        }
        None => {
            let inactive = db::inactive_scopes(conn)?;
            frames.retain(|tenant, _| !inactive.contains(tenant));
            db::Replace::Active
        }
    };
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
    let removed = db::replace_period(conn, begin_ms, end_ms, which, &points, &totals, now_ms)?;
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
    check_retention(first, now, raw_retention_days)?;
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
            .write(move |c| process_period(c, &m, b, e, store::now_ms(), None))
            .await
            .map_err(|e| e.to_string())?;
        out.push(outcome);
    }
    Ok(out)
}

/// Retry delay when another collector (sharing a PostgreSQL store) is rating.
const BUSY_SLEEP: Duration = Duration::from_secs(5);
/// How often a drain of the reprocessing schedules asks again for the rating lock while another
/// collector sharing the PostgreSQL store holds it.
const LOCK_RETRY: Duration = Duration::from_millis(250);

/// Refuses to re-rate from `first_ms` when its raw samples may already be deleted (older than
/// `raw_retention_days`, 0 = kept forever): rating it again would replace its stored ratings
/// with nothing.
pub fn check_retention(first_ms: i64, now_ms: i64, raw_retention_days: u32) -> Result<(), String> {
    if raw_retention_days > 0
        && first_ms < now_ms - i64::from(raw_retention_days) * DAY_MS + usage::MAX_WINDOW_MS
    {
        return Err(format!(
            "the period starting at {} is older than raw_retention_days ({raw_retention_days}): \
             its samples may be deleted, and rating it again would erase its stored ratings",
            iso(first_ms)
        ));
    }
    Ok(())
}

/// One drainer of reprocessing schedules at a time (a second one waits, then finds what the
/// first left, so a schedule added while one runs is never missed).
static DRAINING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs every unfinished reprocessing schedule (`/v2/task/reprocesses`, `/v2/scope` resets) to
/// its end, oldest first, one period of one scope per write transaction (the scope's stored
/// ratings of that period are replaced, so re-rating is idempotent); returns how many periods it
/// re-rated. Progress is stored, so a restart resumes where it stopped.
pub async fn drain_reprocesses(app: &App) -> store::Result<usize> {
    let _one = DRAINING.lock().await;
    // Collectors sharing a PostgreSQL store: one re-rates at a time, and not while another one
    // rates a period (both replace stored ratings); the lock is always granted on SQLite.
    let lock = loop {
        match app.store.try_job_lock(store::locks::Job::Rating).await? {
            Some(lock) => break lock,
            None => tokio::time::sleep(LOCK_RETRY).await,
        }
    };
    let res = drain_locked(app).await;
    lock.release().await;
    res
}

async fn drain_locked(app: &App) -> store::Result<usize> {
    let mut done = 0;
    loop {
        let settings = app.settings();
        let Ok(metrics) = settings.rating.metrics.clone() else {
            return Ok(done);
        };
        let period_ms = (settings.config.rating.period_secs as i64).saturating_mul(1000);
        drop(settings);
        let Some(r) = app.store.read(db::next_reprocess).await? else {
            return Ok(done);
        };
        let begin = r.current_ms;
        let end = begin.saturating_add(period_ms).min(r.end_ms).max(begin + 1);
        app.store
            .write(move |c| {
                process_period(c, &metrics, begin, end, store::now_ms(), Some(&r.scope_id))?;
                db::advance_reprocess(c, r.id, end)
            })
            .await?;
        done += 1;
        tokio::task::yield_now().await;
    }
}

/// Drains the reprocessing schedules in the background (after a schedule was added).
pub fn spawn_drain(app: Arc<App>) {
    tokio::spawn(async move {
        if let Err(e) = drain_reprocesses(&app).await {
            tracing::error!(error = %e, "Reprocessing failed; the rating loop retries it.");
        }
    });
}

/// Processes the next due period, if any; returns it, or how long until one is due. Collectors
/// sharing a PostgreSQL store rate each period once: only the holder of the rating lock works,
/// and it checks inside the write that the period is still the next one.
async fn step(
    store: &Store,
    metrics: &Arc<MetricsConfig>,
    period_ms: i64,
    wait_ms: i64,
) -> store::Result<Result<PeriodOutcome, Duration>> {
    let Some(lock) = store.try_job_lock(store::locks::Job::Rating).await? else {
        return Ok(Err(BUSY_SLEEP));
    };
    let res = step_locked(store, metrics, period_ms, wait_ms).await;
    lock.release().await;
    res
}

async fn step_locked(
    store: &Store,
    metrics: &Arc<MetricsConfig>,
    period_ms: i64,
    wait_ms: i64,
) -> store::Result<Result<PeriodOutcome, Duration>> {
    let now = store::now_ms();
    let first = period_start(month_start(now), period_ms);
    let next = store
        .read(|c| db::state(c, db::NEXT_PERIOD))
        .await?
        .unwrap_or(first);
    let due_at = next + period_ms + wait_ms;
    if due_at > now {
        let ms = u64::try_from(due_at - now).unwrap_or(0);
        return Ok(Err(Duration::from_millis(ms).min(MAX_SLEEP)));
    }
    let m = metrics.clone();
    let outcome = store
        .write(move |c| {
            // Another collector may have rated it between our read and our lock.
            if db::state(c, db::NEXT_PERIOD)?.unwrap_or(first) != next {
                return Ok(None);
            }
            let o = process_period(c, &m, next, next + period_ms, store::now_ms(), None)?;
            db::set_state(c, db::NEXT_PERIOD, next + period_ms)?;
            Ok(Some(o))
        })
        .await?;
    Ok(outcome.ok_or(Duration::ZERO))
}

/// Starts the processing loop (when `rating.process` is on and the metrics config loaded).
/// Starts the processing loop. Each round reads the settings now in force, so a reload
/// (SIGHUP) that turns `rating.process` on or off, or changes the period, the wait or the metrics
/// file, applies from the next round on.
pub fn spawn(app: Arc<App>) {
    tokio::spawn(async move {
        let mut said_off = false;
        loop {
            if let Err(e) = drain_reprocesses(&app).await {
                tracing::error!(error = %e, "Reprocessing failed; retrying in a minute.");
            }
            let settings = app.settings();
            let cfg = &settings.config.rating;
            let metrics = match (&settings.rating.metrics, cfg.process) {
                (Ok(m), true) => m.clone(),
                _ => {
                    if !said_off {
                        tracing::info!(
                            "Rating processing is off (rating.process = false or no metrics config)."
                        );
                        said_off = true;
                    }
                    tokio::time::sleep(MAX_SLEEP).await;
                    continue;
                }
            };
            said_off = false;
            let period_ms = (cfg.period_secs as i64).saturating_mul(1000);
            let wait_ms = (cfg.wait_secs as i64).saturating_mul(1000);
            drop(settings);
            match step(&app.store, &metrics, period_ms, wait_ms).await {
                Ok(Ok(o)) => {
                    app.telemetry
                        .rating_periods
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
