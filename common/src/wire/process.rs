//! Per-process sample.

use serde::{Deserialize, Serialize};

/// A process's identity: a reused PID with another start time is another process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ProcessKey {
    /// Process id.
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22): exact, unlike a float.
    pub start_ticks: u64,
}

/// [`ProcessSample`]'s fields in declaration order: the keys of its object form and the
/// positions of its array form.
pub const PROCESS_FIELDS: [&str; 11] = [
    "pid",
    "start_time",
    "cmd",
    "cpu_pct",
    "mem_pct",
    "disk_read_kib_per_sec",
    "disk_write_kib_per_sec",
    "net_in_kib_per_sec",
    "net_out_kib_per_sec",
    "shutdown_time",
    "unreadable",
];

/// One process in one tick.
///
/// On the wire a record is a JSON object or, from agents whose collector announced enough
/// [`ReportAck::process_fields`](super::ReportAck::process_fields), a JSON array of the same
/// fields in declaration order ([`PROCESS_FIELDS`]), trailing `unreadable` only when not empty:
/// `[pid, start_time, cmd, cpu_pct, mem_pct, disk_read_kib_per_sec, disk_write_kib_per_sec,
/// net_in_kib_per_sec, net_out_kib_per_sec, shutdown_time]` (a third of the bytes: the keys are
/// most of a record). The derived `Deserialize` reads both. **Fields are only ever appended,
/// each new one with `#[serde(default)]`, and added to [`PROCESS_FIELDS`]**: their order is
/// the array form, and a collector refuses arrays longer than the fields it knows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessSample {
    /// Process id.
    pub pid: u32,
    /// Start time, Unix epoch seconds (the API's `running_time`).
    pub start_time: f64,
    /// Process name (the API's `cmd`).
    pub cmd: String,
    /// Share of the whole VM's CPU since the previous sample, 0–100; processes sum to the VM's.
    pub cpu_pct: f64,
    /// RSS / MemTotal, 0–100.
    pub mem_pct: f64,
    /// From `/proc/PID/io` `read_bytes` deltas, KB/s.
    pub disk_read_kib_per_sec: f64,
    /// From `/proc/PID/io` `write_bytes` deltas, KB/s.
    pub disk_write_kib_per_sec: f64,
    /// The process's own received traffic (TCP payload of its sockets, loopback excluded), KB/s.
    pub net_in_kib_per_sec: f64,
    /// The process's own sent traffic (TCP payload of its sockets, loopback excluded), KB/s.
    pub net_out_kib_per_sec: f64,
    /// `None` while alive; on the one final record of an exited process, when it was seen gone
    /// (Unix epoch seconds).
    pub shutdown_time: Option<f64>,
    /// Names of this record's figures the agent could not read (e.g.
    /// `disk_read_kib_per_sec` when `/proc/PID/io` is refused): they are null, whatever number
    /// stands beside them. (The agent fills it through [`super::ext::ProcessSampleExt`].)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<String>,
}
