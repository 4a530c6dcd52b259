//! CDN edge traffic: tails nginx-style access logs and sums bytes sent and cache-hit bytes per
//! domain per 5-minute bucket (by each line's own time), for delivery with the tick's batch.
//!
//! * [`format`](mod@format): an nginx `log_format` string compiled into a line matcher;
//! * [`tail`]: following files across rotation (rename and truncate) and restarts;
//! * [`aggregate`]: the per-domain, per-bucket sums.
//!
//! Exactly once: every tick the sampling loop polls the tailer, puts the deltas *and* the file
//! positions after them into the tick's batch (one atomic spool write), then commits the poll;
//! the positions are also kept in the agent state. On start the newest of the two (by batch
//! sequence number) is where reading resumes, so a crash at any point neither loses nor repeats a
//! line, and the collector's batch-id dedup makes resending harmless. See `docs/cdn.md`.

pub mod aggregate;
pub mod format;
pub mod tail;

pub use format::{DEFAULT_LOG_FORMAT, LogFormat};
pub use tail::{Poll, Tailer};

#[cfg(test)]
mod tests;
