//! vmmon collector: receives agent reports over JSON-RPC, stores them in SQLite and answers the
//! operator's APIs.
//!
//! Data flow: agent ⇢ `/rpc` ([`rpc`]) → [`store`] ← HTTP APIs ([`api`]); commands go the other
//! way through [`control`] and [`rpc::hub`].

pub mod admin;
pub mod api;
pub mod auth;
pub mod cdn;
pub mod config;
pub mod control;
pub mod error;
pub mod flow;
pub mod rating;
pub mod rpc;
pub mod server;
pub mod store;

use std::sync::Arc;

pub use config::CollectorConfig;
pub use error::CollectorError;

/// Shared state of a running collector.
pub struct App {
    /// Validated configuration.
    pub config: CollectorConfig,
    /// The store.
    pub store: store::Store,
    /// Connected agents.
    pub hub: rpc::hub::Hub,
    /// The configured time zone.
    pub tz: chrono_tz::Tz,
    /// Rating (the CloudKitty-compatible API): the loaded metrics config.
    pub rating: rating::Rating,
}

impl App {
    /// Builds the shared state over an opened store.
    pub fn new(config: CollectorConfig, store: store::Store) -> Arc<App> {
        let tz = config.tz();
        let rating = rating::Rating::new(&config.rating);
        Arc::new(App {
            config,
            store,
            hub: rpc::hub::Hub::default(),
            tz,
            rating,
        })
    }
}

/// Rows each retention step deletes per table (one short write transaction).
const RETENTION_CHUNK_ROWS: i64 = 20_000;

/// Background upkeep every 10 minutes: purges expired sessions and raw samples past
/// `raw_retention_days` (in chunks, yielding to ingest between them).
pub fn spawn_housekeeping(app: Arc<App>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(600));
        loop {
            tick.tick().await;
            housekeeping_once(&app).await;
        }
    });
}

/// One round of upkeep (also used by tests).
pub async fn housekeeping_once(app: &App) {
    let idle_ms = (app.config.session_idle_secs as i64).saturating_mul(1000);
    match app
        .store
        .write(move |c| store::users::purge_sessions(c, store::now_ms(), idle_ms))
        .await
    {
        Ok(n) if n > 0 => tracing::info!(purged = n, "Purged expired sessions."),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "Session purge failed."),
    }
    if app.config.raw_retention_days == 0 {
        return;
    }
    let cutoff = store::now_ms() - i64::from(app.config.raw_retention_days) * 86_400_000;
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
            retention_days = app.config.raw_retention_days,
            "Deleted raw samples past retention."
        );
    }
}
