//! Ingest: what happens to an agent's report batch, in order, in one write transaction.
//!
//! 1. [`checks`] refuse what can never be stored (and cut oversized `cmd`s) — before the store;
//! 2. [`store::samples::insert_batch`] remembers the batch id and stores the raw VM and process
//!    samples; a batch id seen before stops here (a resend counts once);
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

use crate::App;
use crate::error::CollectorError;
use crate::store::{self, AgentTokenRow};

/// Batches checked and handed to the store at once, across all agents; more wait (their agents
/// wait for the acknowledgement, so nothing is dropped), which bounds the parsed batches the
/// collector holds besides those still being received. 64 keeps the store writer's group commit
/// fed (it commits everything waiting in one transaction; a bound of 4 would cut it to 4 batches
/// per commit) while capping typical held batches (≤ 1 MB each) at ~64 MB.
pub const MAX_CONCURRENT_INGESTS: usize = 64;

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
    checks::check_cdn_permission(token, &batch).map_err(CollectorError::InvalidBatch)?;
    checks::cap_cmds(&mut batch);
    checks::clamp_percentages(&mut batch);
    checks::validate_batch(&batch).map_err(CollectorError::InvalidBatch)?;
    let retention_days = app.settings().config.raw_retention_days;
    checks::validate_times(&batch, now_ms(), retention_days)
        .map_err(CollectorError::InvalidBatch)?;
    let stored = app
        .store
        .write_unguarded(move |c| store_batch(c, &batch, now_ms()))
        .await?;
    Ok(stored)
}

/// Steps 2–5 on the writer's connection (inside its transaction); also used by benches.
pub fn store_batch(
    conn: &rusqlite::Connection,
    batch: &ReportBatch,
    now_ms: i64,
) -> store::Result<bool> {
    let new = store::samples::insert_batch(conn, batch, now_ms)?;
    if new {
        store::bandwidth::apply_batch(conn, batch, now_ms)?;
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
