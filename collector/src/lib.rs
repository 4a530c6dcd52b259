//! vmmon collector: receives agent reports over JSON-RPC, stores them in SQLite and answers the
//! operator's APIs.
//!
//! Data flow: agent ⇢ `/rpc` ([`rpc`]) → [`store`] ← HTTP APIs ([`api`]); commands go the other
//! way through [`control`] and [`rpc::hub`].

pub mod admin;
pub mod api;
pub mod auth;
pub mod config;
pub mod control;
pub mod error;
pub mod flow;
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
}

impl App {
    /// Builds the shared state over an opened store.
    pub fn new(config: CollectorConfig, store: store::Store) -> Arc<App> {
        let tz = config.tz();
        Arc::new(App {
            config,
            store,
            hub: rpc::hub::Hub::default(),
            tz,
        })
    }
}

/// Background upkeep: purges expired sessions every 10 minutes.
pub fn spawn_housekeeping(app: Arc<App>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(600));
        loop {
            tick.tick().await;
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
        }
    });
}
