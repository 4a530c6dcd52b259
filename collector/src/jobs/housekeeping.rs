//! Background upkeep every 10 minutes: purges expired sessions and raw samples past
//! `raw_retention_days` (in chunks, yielding to ingest between them); on PostgreSQL it also
//! creates the coming days' sample partitions and drops the days past retention whole.

use std::sync::Arc;

use vmmon_common::vocab::{DAY_MS, now_ms};

use crate::app::App;
use crate::store;

/// Rows each retention step deletes per table (one short write transaction).
const RETENTION_CHUNK_ROWS: i64 = 20_000;
/// How often upkeep runs.
const EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// Starts the upkeep loop.
pub fn spawn(app: Arc<App>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EVERY);
        loop {
            tick.tick().await;
            run_once(&app).await;
        }
    });
}

/// One round of upkeep (also used by tests). With collectors sharing a PostgreSQL store, only the
/// one holding the housekeeping lock does the round; the others skip it.
pub async fn run_once(app: &App) {
    let lock = match app
        .store
        .try_job_lock(store::locks::Job::Housekeeping)
        .await
    {
        Ok(Some(lock)) => lock,
        Ok(None) => {
            tracing::debug!("Another collector is doing the upkeep round.");
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "Cannot take the upkeep lock.");
            return;
        }
    };
    upkeep(app).await;
    lock.release().await;
}

async fn upkeep(app: &App) {
    let settings = app.settings();
    let idle_ms = settings.config.session_idle_ms();
    match app
        .store
        .write(move |c| store::users::purge_sessions(c, now_ms(), idle_ms))
        .await
    {
        Ok(n) if n > 0 => tracing::info!(purged = n, "Purged expired sessions."),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "Session purge failed."),
    }
    // PostgreSQL: the partitions of the coming days exist before their samples arrive.
    match app
        .store
        .write(|c| store::partitions::ensure_days_around(c, now_ms()))
        .await
    {
        Ok(n) if n > 0 => tracing::info!(created = n, "Created day partitions."),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "Creating day partitions failed."),
    }
    let retention_days = settings.config.raw_retention_days;
    if retention_days == 0 {
        return;
    }
    let cutoff = now_ms() - i64::from(retention_days) * DAY_MS;
    // PostgreSQL: whole days past retention go as tables; the chunked delete below does the rest.
    match app
        .store
        .write(move |c| store::partitions::drop_days_before(c, cutoff))
        .await
    {
        Ok(dropped) if !dropped.is_empty() => {
            tracing::info!(
                ?dropped,
                retention_days,
                "Dropped day partitions past retention."
            )
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "Dropping day partitions failed."),
    }
    let mut total = 0usize;
    loop {
        match app
            .store
            .write(move |c| store::samples::purge_raw_before(c, cutoff, RETENTION_CHUNK_ROWS))
            .await
        {
            Ok(0) => break,
            Ok(n) => {
                total += n;
                tokio::task::yield_now().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "Raw-sample retention failed.");
                break;
            }
        }
    }
    if total > 0 {
        tracing::info!(
            rows = total,
            retention_days,
            "Deleted raw samples past retention."
        );
    }
}
