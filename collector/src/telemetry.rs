//! The collector's own figures for `GET /metrics`: counters and histograms the ingest path, the
//! store writes, the HTTP layer and the jobs update as they go (lock-free counters; one short
//! mutex for the labelled ones). Rendering is [`crate::http::metrics`].

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency histograms, seconds (Prometheus' default buckets).
pub const LATENCY_BUCKETS_SECS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A latency histogram over [`LATENCY_BUCKETS_SECS`].
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS_SECS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

/// A point-in-time copy of a [`Histogram`].
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Cumulative counts per bucket upper bound (seconds), then +Inf = `count`.
    pub buckets: Vec<(f64, u64)>,
    /// Observations.
    pub count: u64,
    /// Sum of observations, seconds.
    pub sum_secs: f64,
}

impl Histogram {
    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (i, le) in LATENCY_BUCKETS_SECS.iter().enumerate() {
            if secs <= *le {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// The histogram now.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: LATENCY_BUCKETS_SECS
                .iter()
                .zip(&self.buckets)
                .map(|(le, n)| (*le, n.load(Ordering::Relaxed)))
                .collect(),
            count: self.count.load(Ordering::Relaxed),
            sum_secs: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

/// Something the collector refused or corrected, counted by kind for operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Anomaly {
    /// A guest clock was stepped (samples placed by the monotonic clock).
    ClockStep,
    /// A sample was stamped ahead of the collector (placed at its receive time).
    ClockAhead,
    /// CDN traffic of a domain the edge token's CDN users do not own was dropped.
    CdnForeignDomain,
    /// A batch was refused as invalid.
    BatchRefused,
    /// A registration was refused (quota, rate, case collision, another project's id).
    RegistrationRefused,
    /// A second live agent for one instance was refused (a cloned image).
    AgentConflict,
}

impl Anomaly {
    /// The `kind` label.
    pub fn label(self) -> &'static str {
        match self {
            Anomaly::ClockStep => "clock_step",
            Anomaly::ClockAhead => "clock_ahead",
            Anomaly::CdnForeignDomain => "cdn_foreign_domain",
            Anomaly::BatchRefused => "batch_refused",
            Anomaly::RegistrationRefused => "registration_refused",
            Anomaly::AgentConflict => "agent_conflict",
        }
    }
}

/// The collector's own counters.
#[derive(Debug, Default)]
pub struct Telemetry {
    /// Agent batches stored (new ones; resends are not counted).
    pub ingested_batches: AtomicU64,
    /// VM samples in those batches.
    pub ingested_samples: AtomicU64,
    /// Process rows in those batches.
    pub ingested_process_rows: AtomicU64,
    /// Time from handing a batch to the store writer to its commit.
    pub store_write: Histogram,
    /// Rating periods processed by the loop.
    pub rating_periods: AtomicU64,
    anomalies: Mutex<BTreeMap<Anomaly, u64>>,
    http: Mutex<BTreeMap<(String, u16), u64>>,
    http_latency: Mutex<BTreeMap<String, std::sync::Arc<Histogram>>>,
}

impl Telemetry {
    /// Counts one anomaly.
    pub fn anomaly(&self, kind: Anomaly) {
        if let Ok(mut m) = self.anomalies.lock() {
            *m.entry(kind).or_default() += 1;
        }
    }

    /// Anomalies so far, by kind.
    pub fn anomalies(&self) -> Vec<(Anomaly, u64)> {
        self.anomalies
            .lock()
            .map(|m| m.iter().map(|(k, v)| (*k, *v)).collect())
            .unwrap_or_default()
    }

    /// Counts one HTTP answer of `route` (the matched route pattern, so cardinality is bounded).
    pub fn http_request(&self, route: &str, status: u16, took: Duration) {
        if let Ok(mut m) = self.http.lock() {
            *m.entry((route.to_string(), status)).or_default() += 1;
        }
        let h = self.http_latency.lock().ok().map(|mut m| {
            m.entry(route.to_string())
                .or_insert_with(Default::default)
                .clone()
        });
        if let Some(h) = h {
            h.observe(took);
        }
    }

    /// HTTP answers so far by (route, status).
    pub fn http_requests(&self) -> Vec<((String, u16), u64)> {
        self.http
            .lock()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default()
    }

    /// HTTP latency per route.
    pub fn http_latency(&self) -> Vec<(String, HistogramSnapshot)> {
        self.http_latency
            .lock()
            .map(|m| m.iter().map(|(k, h)| (k.clone(), h.snapshot())).collect())
            .unwrap_or_default()
    }

    /// Adds a stored batch.
    pub fn batch_stored(&self, samples: usize, process_rows: usize) {
        self.ingested_batches.fetch_add(1, Ordering::Relaxed);
        self.ingested_samples
            .fetch_add(samples as u64, Ordering::Relaxed);
        self.ingested_process_rows
            .fetch_add(process_rows as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        for ms in [1, 7, 7, 300, 20_000] {
            h.observe(Duration::from_millis(ms));
        }
        let s = h.snapshot();
        assert_eq!(s.count, 5);
        assert!((s.sum_secs - 20.315).abs() < 1e-9);
        let at = |le: f64| s.buckets.iter().find(|(b, _)| *b == le).unwrap().1;
        assert_eq!(
            (at(0.005), at(0.01), at(0.25), at(0.5), at(10.0)),
            (1, 3, 3, 4, 4)
        );
    }
}
