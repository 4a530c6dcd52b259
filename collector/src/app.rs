//! The collector's shared state: the store, the connected-agent hub and the running settings.
//!
//! The settings sit behind an atomic swap so that a reload (SIGHUP) replaces them in place: the
//! listener, every connection and every request in flight stay as they are, and the next request
//! sees the new values.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Semaphore;

use crate::auth::guard::{LoginThrottle, PasswordChecker};
use crate::config::CollectorConfig;
use crate::hub::Hub;
use crate::rating::Rating;
use crate::store::Store;
use crate::telemetry::Telemetry;
use crate::tls::CertResolver;

/// Settings of a running collector that a reload may change together.
#[derive(Debug)]
pub struct Settings {
    /// Validated configuration.
    pub config: CollectorConfig,
    /// Rating: the loaded metrics config (from `config.rating.metrics_file`).
    pub rating: Rating,
}

/// Shared state of a running collector.
pub struct App {
    settings: ArcSwap<Settings>,
    /// The store.
    pub store: Store,
    /// Connected agents and their pending commands.
    pub hub: Hub,
    /// Commands relayed to agents connected to other collectors (PostgreSQL stores).
    pub relay: crate::relay::Relay,
    /// Password checks, bounded (see [`crate::auth::guard`]).
    pub passwords: PasswordChecker,
    /// Growing delays after failed logins.
    pub logins: LoginThrottle,
    cpu_slots: Arc<Semaphore>,
    /// The collector's own figures for `/metrics`.
    pub telemetry: Telemetry,
    /// Agent batches being checked and stored at once ([`MAX_CONCURRENT_INGESTS`]).
    pub ingest_slots: Semaphore,
    /// The listener's certificate when it serves TLS (fixed at start: TLS on or off needs a
    /// restart; the certificate itself is replaced by [`App::reload`]).
    tls: Option<Arc<CertResolver>>,
}

/// Batches checked and handed to the store at once, across all agents; more wait (their agents
/// wait for the acknowledgement, so nothing is dropped), which bounds the parsed batches the
/// collector holds besides those still being received. 512, the most jobs the store writer
/// commits in one transaction, keeps its group commit fed (a bound of 4 cut it to 4 batches per
/// commit) while capping typical held batches (≤ 100 KB each at 100 processes) at ~50 MB.
pub const MAX_CONCURRENT_INGESTS: usize = 512;

/// CPU-heavy requests run at once (pricing a quote, …), on the blocking pool.
pub const CPU_SLOTS: usize = 2;
/// Longest a CPU-heavy request waits for a slot before answering busy.
pub const CPU_WAIT: Duration = Duration::from_secs(5);

/// Every CPU slot stayed taken for [`CPU_WAIT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the collector is busy with other heavy requests; retry in a few seconds")]
pub struct CpuBusy;

impl App {
    /// Builds the shared state over an opened store.
    pub fn new(config: CollectorConfig, store: Store) -> Arc<App> {
        let tls = config
            .tls
            .as_ref()
            .map(|t| Arc::new(CertResolver::new(t.certified.clone())));
        Arc::new(App {
            tls,
            settings: ArcSwap::from_pointee(Settings::new(config)),
            store,
            hub: Hub::default(),
            relay: crate::relay::Relay::default(),
            passwords: PasswordChecker::default(),
            logins: LoginThrottle::default(),
            cpu_slots: Arc::new(Semaphore::new(CPU_SLOTS)),
            ingest_slots: Semaphore::new(MAX_CONCURRENT_INGESTS),
            telemetry: Telemetry::default(),
        })
    }

    /// Runs CPU-heavy `work` off the async workers (which must stay free for `/healthz`, agents
    /// and cheap requests), at most [`CPU_SLOTS`] at once; [`CpuBusy`] after [`CPU_WAIT`].
    pub async fn run_cpu<T, F>(&self, work: F) -> Result<T, CpuBusy>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let permit = tokio::time::timeout(CPU_WAIT, self.cpu_slots.clone().acquire_owned())
            .await
            .map_err(|_| CpuBusy)?
            .map_err(|_| CpuBusy)?;
        let out = tokio::task::spawn_blocking(move || {
            let out = work();
            drop(permit);
            out
        })
        .await
        .map_err(|_| CpuBusy)?;
        Ok(out)
    }

    /// The listener's certificate resolver, when it serves TLS.
    pub fn tls(&self) -> Option<Arc<CertResolver>> {
        self.tls.clone()
    }

    /// The settings now in force (a snapshot: a reload does not change it under the caller).
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    /// Replaces the settings (a validated config); requests that start afterwards see them.
    /// `listen` and `data_dir` cannot change in place, nor can TLS be switched on or off: they
    /// keep their running values, and such a change is returned so the caller can say that it
    /// needs a restart. A new certificate (the files re-read by the caller's validation) is
    /// served to every handshake from now on.
    pub fn reload(&self, mut config: CollectorConfig) -> Vec<&'static str> {
        let old = self.settings();
        let mut ignored = Vec::new();
        if config.listen != old.config.listen {
            config.listen = old.config.listen;
            ignored.push("listen");
        }
        if config.data_dir != old.config.data_dir {
            config.data_dir = old.config.data_dir.clone();
            ignored.push("data_dir");
        }
        match (&self.tls, &config.tls) {
            // New handshakes get the new certificate; established connections keep theirs.
            (Some(resolver), Some(tls)) => resolver.set(tls.certified.clone()),
            (None, None) => {}
            _ => {
                config.tls = old.config.tls.clone();
                ignored.push("tls_cert_file");
            }
        }
        self.settings.store(Arc::new(Settings::new(config)));
        ignored
    }
}

impl Settings {
    fn new(config: CollectorConfig) -> Settings {
        let rating = Rating::new(&config.rating);
        Settings { config, rating }
    }
}

#[cfg(test)]
mod tests;
