//! Serde types that travel between agent and collector.

mod cdn;
mod control;
pub mod ext;
mod host;
mod process;

pub use cdn::{
    CDN_BUCKET_SECS, CdnBucketDelta, CdnFilePosition, CdnTailState, MAX_CDN_DELTAS_PER_BATCH,
    MAX_CDN_DOMAIN_LEN, MAX_CDN_FILES_PER_BATCH, valid_cdn_domain,
};
pub use control::{Command, CommandAck, DesiredState, Heartbeat, RegisterRequest};
pub use host::{Inventory, NetAttribution, VmSample};
pub use process::{PROCESS_FIELDS, ProcessKey, ProcessSample};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Most samples one batch may carry; larger batches are refused as invalid.
pub const MAX_SAMPLES_PER_BATCH: usize = 1_000;
/// Most process records one sample may carry.
pub const MAX_PROCESSES_PER_SAMPLE: usize = 100_000;

/// One sampling tick: the whole-VM figures, plus every process while monitoring is on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Whole-VM figures; always present.
    pub vm: VmSample,
    /// `None` while monitoring is off; otherwise every process (and one final record per exit).
    pub processes: Option<Vec<ProcessSample>>,
}

/// The unit of delivery: written to the agent's spool, sent, stored at most once, acknowledged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportBatch {
    /// Unique id; the collector ignores a batch whose id it has stored before.
    pub batch_id: Uuid,
    /// The reporting instance; must have registered on this connection's token.
    pub instance_id: String,
    /// Per-agent sequence number, increasing; for ordering and diagnostics.
    pub seq: u64,
    /// Samples in time order.
    pub samples: Vec<Sample>,
    /// Samples the agent has dropped since its state began (spool full or damaged): cumulative.
    pub dropped_samples_total: u64,
    /// CDN access-log traffic read in this batch's tick, per domain and 5-minute bucket.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cdn: Vec<CdnBucketDelta>,
    /// The agent's access-log positions after `cdn` (None when it tails no log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cdn_tail: Option<CdnTailState>,
}

/// The collector's answer to [`ReportBatch`]: the agent may delete the batch from its spool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportAck {
    /// The acknowledged batch.
    pub batch_id: Uuid,
    /// True when the batch had been stored before and this copy was ignored.
    pub duplicate: bool,
    /// How many of [`ProcessSample`]'s fields this collector reads in a record's array form
    /// (the agent's spool form: the fields in declaration order, [`PROCESS_FIELDS`]); a longer
    /// array is refused. 0 (absent: collectors that predate the array form) means objects only.
    /// An agent sends arrays only when this covers every field it writes, otherwise objects
    /// (whose unknown keys a collector ignores).
    #[serde(default)]
    pub process_fields: u32,
}
