//! A bound on the agent report bytes being decoded and stored at once, across all connections.
//!
//! A report's JSON is read whole by jsonrpsee (at most the per-message cap, 32 MiB), then decoded
//! into typed records and stored; decoded, a report takes up to [`DECODED_PER_JSON_BYTE`] times
//! its JSON in memory until it is committed. Without a bound, N agents sending large reports at
//! the same moment cost N times that (14 reports of 30 MB: 788 MB peak RSS). This middleware
//! makes each `monitor_report` call hold that estimate in permits of [`REPORT_BYTES_IN_FLIGHT`]
//! while it is decoded and stored;
//! further reports wait for permits (back-pressure: the agent waits for its ack, nothing is
//! dropped). Other methods pass untouched. Batch requests are disabled on the agent endpoint
//! (agents never send them), so every report passes through [`ReportBudget::call`].

use std::future::Future;
use std::sync::Arc;

use jsonrpsee::core::middleware::{Batch, Notification, RpcServiceT};
use jsonrpsee::types::Request;
use tokio::sync::Semaphore;

use super::receive::Connection;

/// Decoded report bytes (estimated, [`DECODED_PER_JSON_BYTE`]) held at once while decoded and
/// stored, across all agents: 64 MiB, room for one report of the largest legal size at a time
/// (a sample of 100,000 processes: ~6 MB of JSON as arrays, ~23 MB as objects; a larger
/// estimate is held as the whole budget) or hundreds of ordinary ones (a 1,000-process sample
/// is ~62 KB of JSON as arrays).
pub const REPORT_BYTES_IN_FLIGHT: usize = 64 * 1024 * 1024;

/// Memory a report's JSON takes once decoded, per JSON byte, as charged: the typical array form
/// (a process record ~60 bytes of JSON, ~150 decoded with its `cmd`, more while the record vector
/// grows). Measured at the 32 MiB message cap: minimal array records (26 bytes) decode to ~4.8×
/// (such a report, clamped to the whole budget, overshoots it: ~160 MB), object records ~0.7×
/// (charged above their cost). A report of 16 MiB of JSON or more holds the whole budget, so the
/// largest ones pass one at a time while the others wait (first come, first served).
const DECODED_PER_JSON_BYTE: usize = 4;

/// Permits count KiB (a tokio semaphore holds at most `usize::MAX >> 3` permits).
const PERMIT_BYTES: usize = 1024;

/// The wire name of `MonitorApi::report`.
const REPORT_METHOD: &str = "monitor_report";

/// Layer that wraps the agent RPC service in a [`ReportBudget`].
#[derive(Clone, Debug)]
pub struct ReportBudgetLayer {
    permits: Arc<Semaphore>,
    capacity: usize,
    connection: Option<Arc<Connection>>,
}

impl ReportBudgetLayer {
    /// A budget of `bytes` (rounded up to whole KiB) shared by every connection built with this
    /// layer.
    pub fn new(bytes: usize) -> ReportBudgetLayer {
        let capacity = bytes.div_ceil(PERMIT_BYTES).max(1);
        ReportBudgetLayer {
            permits: Arc::new(Semaphore::new(capacity)),
            capacity,
            connection: None,
        }
    }

    /// The same budget for one connection whose received messages are bounded by
    /// [`super::receive`]: a JSON-RPC notification, which gets no answer on the wire, counts as
    /// answered when its handling ends.
    pub fn for_connection(&self, connection: Arc<Connection>) -> ReportBudgetLayer {
        ReportBudgetLayer {
            connection: Some(connection),
            ..self.clone()
        }
    }
}

impl<S> tower::Layer<S> for ReportBudgetLayer {
    type Service = ReportBudget<S>;

    fn layer(&self, inner: S) -> ReportBudget<S> {
        ReportBudget {
            inner,
            permits: self.permits.clone(),
            capacity: self.capacity,
            connection: self.connection.clone(),
        }
    }
}

/// The middleware: see the module doc.
#[derive(Clone, Debug)]
pub struct ReportBudget<S> {
    inner: S,
    permits: Arc<Semaphore>,
    /// All permits: a report larger than the budget takes all of it (it still gets through,
    /// alone).
    capacity: usize,
    connection: Option<Arc<Connection>>,
}

impl<S> RpcServiceT for ReportBudget<S>
where
    S: RpcServiceT + Clone + Send + Sync + 'static,
{
    type MethodResponse = S::MethodResponse;
    type NotificationResponse = S::NotificationResponse;
    type BatchResponse = S::BatchResponse;

    fn call<'a>(
        &self,
        request: Request<'a>,
    ) -> impl Future<Output = Self::MethodResponse> + Send + 'a {
        let inner = self.inner.clone();
        let permits = self.permits.clone();
        let capacity = self.capacity;
        async move {
            let _held = if request.method_name() == REPORT_METHOD {
                let bytes = request.params.as_ref().map_or(0, |p| p.get().len());
                let want = permits_for(bytes, capacity);
                // u32 is what tokio takes; the capacity is far below it.
                let want = u32::try_from(want).unwrap_or(u32::MAX);
                // The semaphore is never closed, so this only waits.
                permits.acquire_many_owned(want).await.ok()
            } else {
                None
            };
            inner.call(request).await
        }
    }

    fn batch<'a>(
        &self,
        requests: Batch<'a>,
    ) -> impl Future<Output = Self::BatchResponse> + Send + 'a {
        self.inner.batch(requests)
    }

    fn notification<'a>(
        &self,
        n: Notification<'a>,
    ) -> impl Future<Output = Self::NotificationResponse> + Send + 'a {
        let inner = self.inner.clone();
        let connection = self.connection.clone();
        async move {
            let response = inner.notification(n).await;
            if let Some(c) = connection {
                c.answered();
            }
            response
        }
    }
}

/// Permits a report of `json_bytes` holds: its estimated decoded size in KiB, at least one and at
/// most the whole budget (`capacity`), so every legal report gets through.
fn permits_for(json_bytes: usize, capacity: usize) -> usize {
    json_bytes
        .saturating_mul(DECODED_PER_JSON_BYTE)
        .div_ceil(PERMIT_BYTES)
        .clamp(1, capacity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_holds_its_estimated_decoded_size_within_the_budget() {
        let capacity = REPORT_BYTES_IN_FLIGHT / PERMIT_BYTES;
        assert_eq!(permits_for(0, capacity), 1);
        assert_eq!(permits_for(1, capacity), 1);
        // A 1,000-process sample as arrays (~62 KB): ~242 KiB decoded.
        assert_eq!(permits_for(62_000, capacity), 243);
        // The largest legal object-form report takes the whole budget, and still passes.
        assert_eq!(permits_for(23_000_000, capacity), capacity);
        assert_eq!(permits_for(usize::MAX, capacity), capacity);
    }
}
