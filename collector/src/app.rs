//! The collector's shared state: the store, the connected-agent hub and the running settings.
//!
//! The settings sit behind an atomic swap so that a reload (SIGHUP) replaces them in place: the
//! listener, every connection and every request in flight stay as they are, and the next request
//! sees the new values.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::CollectorConfig;
use crate::control::hub::Hub;
use crate::rating::Rating;
use crate::store::Store;

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
}

impl App {
    /// Builds the shared state over an opened store.
    pub fn new(config: CollectorConfig, store: Store) -> Arc<App> {
        Arc::new(App {
            settings: ArcSwap::from_pointee(Settings::new(config)),
            store,
            hub: Hub::default(),
        })
    }

    /// The settings now in force (a snapshot: a reload does not change it under the caller).
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    /// Replaces the settings (a validated config); requests that start afterwards see them.
    /// `listen` and `data_dir` cannot change in place: they keep their running values, and a
    /// change of either is returned so the caller can say that it needs a restart.
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
