//! CloudKitty-compatible rating (SPEC §3.3): usage from the agents' samples becomes dataframes
//! per tenant and period, priced by the enabled rating modules and stored.
//!
//! * [`metrics`]: the metrics config (what is rated, units, attributes, conversions);
//! * [`usage`]: samples → one instance's usage of one period;
//! * [`hashmap`]: the hashmap module's rules and arithmetic; [`modules`]: module list and order;
//! * [`period`]: period arithmetic and per-tenant frames; [`config`]: `[rating]` settings;
//!   the runs that rate and store periods are [`crate::jobs::rating`];
//! * [`decimal`]: exact decimals and their JSON text.
//!
//! The HTTP side is [`crate::http::rating`], all SQL is in [`crate::store::rating`]. Prices are
//! [`rust_decimal::Decimal`] end to end: no float touches a price.

pub mod config;
pub mod decimal;
pub mod hashmap;
pub mod metrics;
pub mod modules;
pub mod period;
pub mod usage;

use std::sync::Arc;

use rust_decimal::Decimal;
use serde_json::{Map, Value};

pub use config::{RatingAuth, RatingConfig};

use hashmap::{Compiled, Overflow};
use metrics::MetricsConfig;

/// One rated (or to-be-rated) datapoint.
#[derive(Debug, Clone, PartialEq)]
pub struct DataPoint {
    /// Unit of `qty`.
    pub unit: String,
    /// Quantity for the period.
    pub qty: Decimal,
    /// Price so far.
    pub price: Decimal,
    /// Grouping attributes.
    pub groupby: Map<String, Value>,
    /// Extra attributes.
    pub metadata: Map<String, Value>,
}

impl DataPoint {
    /// An attribute: groupby first, then metadata.
    pub fn attribute(&self, name: &str) -> Option<&Value> {
        self.groupby.get(name).or_else(|| self.metadata.get(name))
    }

    /// The stored/API description: metadata merged with groupby, groupby winning a clash.
    pub fn desc(&self) -> Map<String, Value> {
        let mut out = self.metadata.clone();
        for (k, v) in &self.groupby {
            out.insert(k.clone(), v.clone());
        }
        out
    }
}

/// The datapoints of one tenant and period, per rated type (metric alt_name), in config order.
pub type Usage = Vec<(String, Vec<DataPoint>)>;

/// Runs the enabled modules (`order`, from [`modules::run_order`]) over `usage`.
pub fn rate(order: &[&str], hashmap: &Compiled, usage: &mut Usage) -> Result<(), Overflow> {
    for module in order {
        if *module != modules::HASHMAP {
            continue; // noop changes nothing; pyscripts never runs
        }
        for (service, points) in usage.iter_mut() {
            if !hashmap.has_service(service) {
                continue;
            }
            for p in points.iter_mut() {
                let add = hashmap.price(service, p)?;
                p.price = p.price.checked_add(add).ok_or_else(|| Overflow {
                    service: service.clone(),
                })?;
            }
        }
    }
    Ok(())
}

/// Rating's share of the collector's shared state.
#[derive(Debug, Clone)]
pub struct Rating {
    /// The metrics config, or why it could not be loaded (the metrics routes then answer 405, as
    /// upstream does for an invalid metrics.yml).
    pub metrics: Result<Arc<MetricsConfig>, String>,
}

impl Rating {
    /// Loads the metrics config named by `config` (validated at config load; a failure here means
    /// the file changed since).
    pub fn new(config: &RatingConfig) -> Rating {
        let metrics = MetricsConfig::load(config.metrics_file.as_deref()).map(Arc::new);
        if let Err(e) = &metrics {
            tracing::error!(error = %e, "Rating metrics config cannot be loaded; rating is off.");
        }
        Rating { metrics }
    }
}
