//! Ingest: what happens to an agent's report batch, in order, in one write transaction.
//!
//! 1. [`checks`] refuse what can never be stored (and cut oversized `cmd`s) — before the store;
//! 2. [`store::samples::start_batch`] remembers the batch id for its instance (and reads the
//!    instance's time-axis state, owner and last counter reading with it); an id seen
//!    before stops here (a resend counts once); the samples are placed on the instance's time
//!    axis ([`crate::timeaxis`]: a stepped or fast guest clock corrected) and
//!    [`store::samples::insert_samples`] stores the raw VM and process samples;
//! 3. [`store::bandwidth::apply_batch`] adds the interval bytes to the 10-minute and daily
//!    bandwidth rollups;
//! 4. [`store::cdn::apply_batch`] adds the CDN deltas and access-log positions;
//! 5. [`store::instances::record_seen`] marks the instance seen (also for a resend).
//!
//! Steps 2–5 run in one transaction of the store's writer, so a batch is stored whole or not at
//! all, and the agent's acknowledgement means "durable".

pub mod checks;

use vmmon_common::vocab::now_ms;
use vmmon_common::wire::ReportBatch;

use crate::app::App;
use crate::error::CollectorError;
use crate::store::{self, AgentTokenRow};
use crate::telemetry::Anomaly;
use crate::timeaxis;

/// Checks and stores `batch` from an agent holding `token`; `Ok(true)` when it was new, `Ok(false)`
/// for a batch id stored before (nothing is counted again).
///
/// Errors: [`CollectorError::InvalidBatch`] for a batch that can never be stored (the agent drops
/// it), [`CollectorError::Store`] when the store failed (the agent keeps it and retries).
pub async fn ingest(
    app: &App,
    token: &AgentTokenRow,
    mut batch: ReportBatch,
) -> Result<bool, CollectorError> {
    // The semaphore is never closed, so acquiring only waits.
    let _slot = app.ingest_slots.acquire().await.ok();
    let refused = |why: String| {
        app.telemetry.anomaly(Anomaly::BatchRefused);
        CollectorError::InvalidBatch(why)
    };
    checks::check_cdn_permission(token, &batch).map_err(refused)?;
    if !batch.cdn.is_empty() {
        keep_bound_domains(app, token, &mut batch).await?;
    }
    checks::cap_cmds(&mut batch);
    checks::clamp_percentages(&mut batch);
    checks::validate_batch(&batch).map_err(refused)?;
    let retention_days = app.settings().config.raw_retention_days;
    checks::validate_times(&batch, now_ms(), retention_days).map_err(refused)?;
    let (samples, process_rows) = (
        batch.samples.len(),
        batch
            .samples
            .iter()
            .map(|s| s.processes.as_ref().map_or(0, Vec::len))
            .sum::<usize>(),
    );
    let started = std::time::Instant::now();
    let (stored, anomalies) = app
        .store
        .write_unguarded(move |c| {
            let mut anomalies = Vec::new();
            let stored = store_batch_noting(c, &mut batch, now_ms(), &mut anomalies)?;
            Ok((stored, anomalies))
        })
        .await?;
    let t = &app.telemetry;
    t.store_write.observe(started.elapsed());
    if stored {
        t.batch_stored(samples, process_rows);
    }
    for a in anomalies {
        t.anomaly(match a {
            timeaxis::ClockAnomaly::Stepped { .. } => Anomaly::ClockStep,
            timeaxis::ClockAnomaly::Ahead { .. } => Anomaly::ClockAhead,
        });
    }
    Ok(stored)
}

/// Drops the CDN deltas of domains that no CDN user bound to the edge token owns (each drop is
/// logged with its bytes): an edge token bills only its own customers' domains. The rest of the
/// batch, and its access-log positions, are kept, so the lines are not read again.
async fn keep_bound_domains(
    app: &App,
    token: &AgentTokenRow,
    batch: &mut ReportBatch,
) -> Result<(), CollectorError> {
    let id = token.id;
    let allowed = app
        .store
        .read(move |c| store::cdn::token_domains(c, id))
        .await?;
    let before = batch.cdn.len();
    let mut dropped_bytes = 0u64;
    batch.cdn.retain(|d| {
        let ok = allowed.binary_search(&d.domain).is_ok();
        if !ok {
            dropped_bytes = dropped_bytes.saturating_add(d.bytes);
        }
        ok
    });
    if batch.cdn.len() < before {
        app.telemetry.anomaly(Anomaly::CdnForeignDomain);
        tracing::warn!(
            instance_id = %batch.instance_id, token_id = id, deltas = before - batch.cdn.len(),
            bytes = dropped_bytes,
            "Dropped CDN traffic of domains no CDN user bound to this edge token owns."
        );
    }
    Ok(())
}

/// Steps 2–5 for a batch the caller keeps (tests, benches, tools): works on a copy. The ingest
/// path uses [`store_batch_noting`], which places the samples in the batch itself.
/// `now_ms` is when the collector received the batch.
pub fn store_batch(
    conn: &crate::store::Connection,
    batch: &ReportBatch,
    now_ms: i64,
) -> store::Result<bool> {
    store_batch_noting(conn, &mut batch.clone(), now_ms, &mut Vec::new())
}

/// Steps 2–5 on the writer's connection (inside its transaction): the batch's sample times are
/// moved onto the instance's time axis in place, and the clock corrections made are added to
/// `anomalies`. `now_ms` is when the collector received the batch.
pub fn store_batch_noting(
    conn: &crate::store::Connection,
    batch: &mut ReportBatch,
    now_ms: i64,
    anomalies: &mut Vec<timeaxis::ClockAnomaly>,
) -> store::Result<bool> {
    // The dedup and the state the batch continues from, in one statement on PostgreSQL; the
    // writes after it are queued and sent pipelined (`Connection::execute_later`).
    let start = store::samples::start_batch(conn, batch, now_ms)?;
    let new = start.is_some();
    if let Some(start) = start {
        place_on_time_axis(conn, batch, now_ms, start.clock, anomalies)?;
        store::samples::insert_samples(conn, batch)?;
        store::bandwidth::apply_batch_from(conn, batch, now_ms, start.owner, start.last_reading)?;
        store::cdn::apply_batch(conn, batch, now_ms)?;
    }
    let newest = batch
        .samples
        .iter()
        .map(|s| s.vm.sampled_at_ms)
        .max()
        .unwrap_or(now_ms);
    store::instances::record_seen(
        conn,
        &batch.instance_id,
        newest.min(now_ms),
        Some(batch.dropped_samples_total),
        None,
    )?;
    Ok(new)
}

/// Moves the batch's sample times onto the instance's time axis ([`crate::timeaxis`]) in
/// place (no copy of the batch on the ingest path), continuing from `state` (the instance's
/// stored state, read with the dedup). Each correction is logged.
fn place_on_time_axis(
    conn: &crate::store::Connection,
    batch: &mut ReportBatch,
    received_ms: i64,
    mut state: Option<timeaxis::ClockState>,
    anomalies: &mut Vec<timeaxis::ClockAnomaly>,
) -> store::Result<()> {
    for sample in &mut batch.samples {
        let raw = sample.vm.sampled_at_ms;
        let link = timeaxis::Monotonic {
            elapsed_ms: i64::try_from(sample.vm.elapsed_ms).unwrap_or(i64::MAX),
            uptime_ms: sample.vm.uptime_ms.and_then(|u| i64::try_from(u).ok()),
        };
        let (placed, next, anomaly) = timeaxis::place(state, raw, link, received_ms);
        state = Some(next);
        anomalies.extend(anomaly);
        match anomaly {
            Some(timeaxis::ClockAnomaly::Stepped { step_ms }) => tracing::warn!(
                instance_id = %batch.instance_id, step_ms, sampled_at_ms = raw, placed_at_ms = placed,
                "Agent clock stepped; placing its samples by its monotonic clock."
            ),
            Some(timeaxis::ClockAnomaly::Ahead { ahead_ms }) => tracing::warn!(
                instance_id = %batch.instance_id, ahead_ms, sampled_at_ms = raw, placed_at_ms = placed,
                "Agent clock is ahead of the collector; placing the sample at its receive time."
            ),
            None => {}
        }
        sample.vm.sampled_at_ms = placed;
    }
    if let Some(state) = state {
        store::instances::set_clock_state(conn, &batch.instance_id, state)?;
    }
    Ok(())
}
