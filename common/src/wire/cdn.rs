//! CDN traffic from edge VMs: per-domain 5-minute bucket deltas read from access logs, and the
//! agent's access-log positions that travel with them.
//!
//! Exactly-once: the agent puts a tick's deltas *and* the log positions reached after them into
//! the same spooled batch (written atomically), so a crash can never separate the two; the
//! collector adds the deltas only when it stores the batch for the first time (dedup by batch id).

use serde::{Deserialize, Serialize};

/// Width of a CDN bucket in seconds (5 minutes); bucket starts are multiples of it.
pub const CDN_BUCKET_SECS: i64 = 300;
/// Most bucket deltas one batch may carry.
pub const MAX_CDN_DELTAS_PER_BATCH: usize = 10_000;
/// Most access-log file positions one batch may carry.
pub const MAX_CDN_FILES_PER_BATCH: usize = 1_024;
/// Longest domain name.
pub const MAX_CDN_DOMAIN_LEN: usize = 253;

/// Traffic of one domain in one 5-minute bucket, added since the previous batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CdnBucketDelta {
    /// The request's host, lower case (see [`valid_cdn_domain`]).
    pub domain: String,
    /// Bucket start, Unix epoch seconds, a multiple of [`CDN_BUCKET_SECS`]; from the log line's
    /// own time, not the time it was read.
    pub bucket_start: i64,
    /// Bytes sent to clients.
    pub bytes: u64,
    /// The part of `bytes` served from the cache (see the agent's cache-status rule).
    pub hit_bytes: u64,
    /// Requests counted.
    pub requests: u64,
}

/// Where the agent's access-log tailer stands after the deltas of the batch that carries it.
/// Agent-local bookkeeping: the collector stores only `malformed_lines_total`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct CdnTailState {
    /// One entry per followed file (a log's current file, plus rotated files still draining).
    pub files: Vec<CdnFilePosition>,
    /// Lines skipped as malformed since the agent's state began (cumulative).
    pub malformed_lines_total: u64,
}

/// How far one access-log file has been read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CdnFilePosition {
    /// The configured log path this file was (or is) found at.
    pub log: String,
    /// Device of the file.
    pub dev: u64,
    /// Inode of the file: how a renamed (rotated) file is found again.
    pub inode: u64,
    /// Bytes consumed: always the end of a whole line.
    pub offset: u64,
    /// Length of the file's head covered by `fingerprint` (at most a few hundred bytes).
    pub fingerprint_len: u32,
    /// FNV-1a hash of the head: a truncated-and-rewritten or replaced file is read again from 0.
    pub fingerprint: u64,
    /// True for the file at `log` now; false for a rotated file being read to its end.
    pub current: bool,
}

/// Whether `d` is a domain the CDN pipeline accepts: 1–253 bytes of lower-case ASCII letters,
/// digits, `-`, `.`, `_`, or the `[`, `]`, `:` of an IPv6 literal, with at least one letter or
/// digit and not starting with `-` or `.` (so nginx's `-` for "none" is refused); never a comma
/// (the query API separates domains with commas).
pub fn valid_cdn_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= MAX_CDN_DOMAIN_LEN
        && !d.starts_with(['-', '.'])
        && d.bytes().any(|b| b.is_ascii_alphanumeric())
        && d.bytes().all(|b| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(b, b'-' | b'.' | b'_' | b'[' | b']' | b':')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains() {
        assert!(valid_cdn_domain("www.a.com"));
        assert!(valid_cdn_domain("[::1]"));
        assert!(valid_cdn_domain("10.0.0.1"));
        assert!(!valid_cdn_domain(""));
        assert!(!valid_cdn_domain("-"));
        assert!(!valid_cdn_domain(".a.com"));
        assert!(!valid_cdn_domain("..."));
        assert!(!valid_cdn_domain("A.com"));
        assert!(!valid_cdn_domain("a.com,b.com"));
        assert!(!valid_cdn_domain("a com"));
        assert!(!valid_cdn_domain(&"a".repeat(254)));
    }
}
