//! The bounded on-disk spool: every report batch is written here before it is sent, and dropped
//! from it only after the collector acknowledged it.
//!
//! Layout under the state directory:
//! * `spool/NNNN.seg` — preallocated, append-only segment files ([`segment`]): each batch is one
//!   checksummed record (header + the batch's JSON), appended with one `pwrite` and one
//!   `fdatasync` into blocks that already exist. A spooled batch is a record whose sequence
//!   number the checkpoint (below) still counts as waiting; an acknowledged one stays in its
//!   segment, unneeded, until the segment is reused. When the segment in use is full the spool
//!   moves on to a segment none of whose records is needed any more (it gets a new nonce, which
//!   makes its old records stale), else makes a new one; at most [`MAX_SPARE_SEGMENTS`] unused
//!   segments are kept. Why segments, and the measurement: [`segment`] and
//!   `docs/benchmarks.md` §1c.
//! * `spool/corrupt/` — anything unreadable found at open or read time is set aside here (a
//!   damaged record's bytes are copied here and the record marked as a tombstone in its
//!   segment; stray files are moved here), kept for inspection, never resent, and counted.
//! * `agent-state.slots` — next sequence number, cumulative drop counters, the last desired
//!   state, the CDN access-log positions and the spool's checkpoint ([`PersistedState`] as
//!   JSON: `spool_head`, the lowest sequence number still waiting, and `spool_holes`, any above
//!   it removed out of order), rewritten in one of two checksummed slots of a preallocated file
//!   (`pwrite`, see [`crate::slots`]): a write torn by a crash leaves the newest synced record
//!   (or a newer one), never an older one (unsynced writes never overwrite it). It is made
//!   durable (`fdatasync`) whenever a counter changes (drops, damage), the desired state
//!   changes, and before a segment is reused or the spool moves to another; after a push or an
//!   ack it is only written (the page cache survives the agent's crash). After a power loss it
//!   may lag: `next_seq` is then recovered from the segments, which hold the newest batch even
//!   once acknowledged (the segment in use is never reused or removed); the CDN positions from
//!   the batches the lagging checkpoint still counts as waiting; and batches acknowledged since
//!   are sent again, which the collector stores once (it dedups by batch id). An
//!   `agent-state.json` of an older agent is read once, when there is no slot file, and removed
//!   once the slot file is written (so a downgrade to such an agent starts as one whose state
//!   was lost: `next_seq` from its spool, CDN positions asked of the collector, the desired
//!   state from the next register).
//!   If neither slot is valid (both damaged: a torn write damages only one, so this takes a
//!   damaged disk or a hand edit), the file is moved aside to `spool/corrupt/` (logged, counted
//!   in [`OpenReport::moved_aside`]) and the agent goes on, as it did with a damaged
//!   `agent-state.json`, rather than refusing to start: from an older agent's
//!   `agent-state.json` if one is left, else from the segments, `next_seq` continuing after the
//!   newest record; with the checkpoint lost, every record still in a segment counts as waiting
//!   and is sent (again): the collector stores each batch once.
//! * `spool/NNNNNNNNNNNNNNNNNNNN.batch` — the one-file-per-batch spool of older agents: read once
//!   at open (damaged ones moved aside and counted, as before), appended to the segments, and
//!   removed once the state is written. One left over (its removal failed) is not appended
//!   again: it is in a segment already, or the checkpoint says it was acknowledged since; it is
//!   only removed.
//!
//! Downgrade: an agent before the segments does not read them; it moves `NNNN.seg` files to
//! `spool/corrupt/` as strangers, so the batches in them are never sent. An agent with segments
//! but before the array form of process records sends the spooled arrays as they are: collectors
//! whose `ProcessSample` has today's 11 fields (`2eaf36c` on) read them; older ones (10 fields)
//! read 10-element records and refuse a batch holding an 11-element one (a record with
//! `unreadable`), which is then dropped and counted. Likewise a spool written by a newer agent
//! with more fields: its batches do not convert to objects and are refused by a collector that
//! knows fewer. Drain the spool (let the agent deliver) before downgrading (README, "Delivery").
//!
//! A failed append (the record written, its sync failed) must not leave a second record of its
//! sequence number, which the next batch takes: [`Segment::append`] erases it or seals the
//! segment, and two records of one number found at open are both set aside as damage, counted
//! (`Spool::set_aside_duplicates` says why neither is kept).
//!
//! Crash and torn writes: a record is appended, then made durable, before the push returns. A
//! record torn by a crash (its header's checksum fails, or its payload's) is found at open,
//! copied to `spool/corrupt/`, marked a tombstone and counted as a dropped batch (its sample was
//! never spooled: the agent had not returned from writing it) — as a leftover temp file of the
//! per-file spool was. Its sequence number is given to the next batch, so there is no gap.
//!
//! Full policy: drop oldest. Monitoring data is most useful fresh, so when the spool exceeds its
//! byte bound (the batches' JSON bytes) the oldest batches are dropped and their samples added to
//! `dropped_samples_total`, which every batch and heartbeat carries to the collector. The batch
//! being sent is not dropped until its answer (the collector may be storing it: counting it
//! dropped would be wrong), so the spool may exceed its bound by the batches spooled meanwhile.
//! Memory use is the index only (a few dozen bytes per batch), whatever the outage length; disk
//! use is the bound plus a segment or two and the spare segments.
//!
//! Sending: the newest batch's text stays in memory after it is spooled ([`Spool::next_to_send`]
//! hands it over as the `monitor_report` params, `[` batch `]`), so the usual tick — spool, send,
//! acknowledge — serialises the batch once and never reads it back from disk. Only a batch that
//! waited behind others, or one whose drop count went stale, is read from its segment. The
//! record stays the durable copy either way until the collector's ack.
//!
//! CDN positions: a batch may carry the access-log positions reached after its CDN deltas
//! ([`ReportBatch::cdn_tail`]); the state keeps the latest ones with the sequence number of their
//! batch. The batch is written first, then the state, so after a crash in between the newest
//! batch is ahead of the state: [`Spool::open`] takes whichever is newer. If the state cannot be
//! written, it is written again before any batch is removed, so the newest positions always
//! survive somewhere.

#[cfg(test)]
mod tests;

mod json_buf;
pub mod segment;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;
use vmmon_common::wire::ext::{self, SampleExt};
use vmmon_common::wire::{CdnBucketDelta, CdnTailState, DesiredState, ReportBatch, Sample};

use crate::slots::{SlotError, SlotFile};
use json_buf::JsonBuf;
use segment::{Found, HEADER_BYTES, Segment};

const SPOOL_DIR: &str = "spool";
const CORRUPT_DIR: &str = "corrupt";
/// The state file of agents before the slot file ([`STATE_SLOTS`]); read once for the upgrade.
const STATE_FILE: &str = "agent-state.json";
/// The state's slot file ([`crate::slots`]).
pub const STATE_SLOTS: &str = "agent-state.slots";
/// Extension of the per-batch files of older agents (read once, on upgrade).
const BATCH_EXT: &str = "batch";
/// Unused segments kept for reuse; more are removed.
pub const MAX_SPARE_SEGMENTS: usize = 2;
/// Bounds of a new segment's size: an eighth of the spool's bound, a power of two in between.
const MIN_SEGMENT_BYTES: u64 = 64 << 10;
const MAX_SEGMENT_BYTES: u64 = 4 << 20;

/// Spool failures (I/O on the state directory).
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// File system error with the path involved.
    #[error("spool I/O on {path}: {source}")]
    Io {
        /// Path involved.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A batch could not be encoded.
    #[error("cannot encode batch: {0}")]
    Encode(#[from] serde_json::Error),
    /// The state's slot file could not be written.
    #[error(transparent)]
    State(#[from] SlotError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A spooled [`ReportBatch`] with its samples kept as JSON text (extension keys included).
#[derive(Debug, Serialize, Deserialize)]
pub struct RawBatch {
    /// As [`ReportBatch::batch_id`].
    pub batch_id: Uuid,
    /// As [`ReportBatch::instance_id`].
    pub instance_id: String,
    /// As [`ReportBatch::seq`].
    pub seq: u64,
    /// As [`ReportBatch::samples`], unparsed.
    pub samples: Box<RawValue>,
    /// As [`ReportBatch::dropped_samples_total`].
    pub dropped_samples_total: u64,
    /// As [`ReportBatch::cdn`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cdn: Vec<CdnBucketDelta>,
    /// As [`ReportBatch::cdn_tail`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cdn_tail: Option<CdnTailState>,
}

/// What [`Spool::open`] reads of a record: enough to check it is a batch and to resume the CDN
/// positions (the samples are checked for syntax, not built).
#[derive(Deserialize)]
struct Peek {
    #[allow(dead_code)]
    batch_id: Uuid,
    seq: u64,
    #[allow(dead_code)]
    samples: serde::de::IgnoredAny,
    #[serde(default)]
    cdn_tail: Option<CdnTailState>,
}

/// A spooled batch ready to send: `params` is the `monitor_report` params, a one-element JSON
/// array holding the batch exactly as spooled (extension keys included).
#[derive(Debug)]
pub struct Outgoing {
    /// The batch's sequence number (for [`Spool::remove`] after the ack).
    pub seq: u64,
    /// `[` batch `]`, as sent.
    pub params: Box<RawValue>,
}

/// The newest batch's text, kept after spooling so it is sent without a read from disk.
#[derive(Debug)]
struct Fresh {
    seq: u64,
    /// The drop count written into the batch; sent from memory only while it is still current.
    dropped_samples_total: u64,
    /// `[` batch `]`, the record's text between the brackets.
    params: Box<RawValue>,
}

/// Batches waiting (the newest included) up to which the newest one's text is kept in memory: it
/// is sent next, or right after the one before it. With a longer backlog (the collector is
/// away) the reporter reads from disk anyway, so the memory is let go.
const KEEP_FRESH_UP_TO: usize = 2;

/// Counters and state that survive agent restarts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PersistedState {
    /// Sequence number of the next batch.
    pub next_seq: u64,
    /// Samples dropped (spool full, corrupt files, batches the collector refused), cumulative.
    pub dropped_samples_total: u64,
    /// Files found damaged and moved aside, cumulative.
    pub corrupt_files_total: u64,
    /// The last desired state the collector sent.
    pub desired: Option<DesiredState>,
    /// CDN access-log positions as of batch `cdn_tail_seq`.
    pub cdn_tail: Option<CdnTailState>,
    /// Sequence number of the batch `cdn_tail` was spooled with.
    pub cdn_tail_seq: u64,
    /// The spool's checkpoint: every batch below this sequence number was acknowledged or
    /// dropped (its record, if still in a segment, is not sent again). `None` in the state of an
    /// agent before the segments: everything found waits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spool_head: Option<u64>,
    /// Sequence numbers at or above `spool_head` no longer waiting (removed out of order;
    /// usually none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub spool_holes: Vec<u64>,
}

impl PersistedState {
    /// Whether the checkpoint counts batch `seq` as waiting.
    fn waiting(&self, seq: u64) -> bool {
        self.spool_head.is_none_or(|h| seq >= h) && !self.spool_holes.contains(&seq)
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    seq: u64,
    /// The batch's JSON bytes (what the bound counts).
    bytes: u64,
    samples: u64,
    /// Segment id and the record's offset in it.
    seg: u32,
    offset: u64,
}

/// What `open` found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Intact batches waiting to be sent.
    pub batches: usize,
    /// Damaged files and records set aside now.
    pub moved_aside: usize,
}

/// One batch as spooled, read by [`read_spooled`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpooledBatch {
    /// Its sequence number.
    pub seq: u64,
    /// Its JSON text, as written (process records as arrays, see
    /// [`vmmon_common::wire::ProcessSample`]; an older agent's records may hold objects).
    pub json: String,
}

impl SpooledBatch {
    /// The batch as a JSON value with every process record as an object
    /// ([`ext::WithProcessObjects`]), to read by field name.
    ///
    /// Errors: the text is not a batch's JSON.
    pub fn to_object_json(&self) -> Result<serde_json::Value, serde_json::Error> {
        let raw: &RawValue = serde_json::from_str(&self.json)?;
        serde_json::from_str(ext::batch_with_process_objects(raw)?.get())
    }
}

/// The spool.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    corrupt_dir: PathBuf,
    /// `agent-state.slots`.
    state_path: PathBuf,
    /// The open slot file; `None` until the first state write creates it.
    state_file: Option<SlotFile>,
    /// `agent-state.json` of an older agent, still present: removed after the first write.
    legacy_state: Option<PathBuf>,
    /// Reused JSON buffer for the state.
    state_buf: Vec<u8>,
    /// Where each new batch's JSON is written ([`json_buf`]: kept, small pieces copied inline).
    json_buf: JsonBuf,
    max_bytes: u64,
    /// Size of a new segment.
    segment_bytes: u64,
    segments: BTreeMap<u32, Segment>,
    /// The segment records are appended to.
    current: Option<u32>,
    /// Reused buffer for records read back.
    read_buf: Vec<u8>,
    index: VecDeque<Entry>,
    total_bytes: u64,
    state: PersistedState,
    /// The last state write failed: retry before removing any batch.
    state_dirty: bool,
    /// The newest batch's text, while it is (nearly) next to send.
    fresh: Option<Fresh>,
    /// The batch [`Self::next_to_send`] handed out and whose answer is still awaited: the bound
    /// does not drop it, since the collector may be storing it (dropping it would count as
    /// dropped samples that arrive).
    in_flight: Option<u64>,
}

/// What [`Spool::open`] gathers from the segments.
#[derive(Default)]
struct OpenScan {
    waiting: Vec<Waiting>,
    /// Numbers of damaged records set aside (counted already).
    damaged: Vec<u64>,
    /// Torn headers set aside (not counted yet: their numbers are unknown).
    torn_headers: usize,
}

/// A batch file of an older agent to move into a segment: seq, path, text, samples, positions.
type Migrate = (u64, PathBuf, Vec<u8>, u64, Option<CdnTailState>);

/// A record found waiting at open.
struct Waiting {
    seq: u64,
    bytes: u64,
    samples: u64,
    seg: u32,
    offset: u64,
    cdn_tail: Option<CdnTailState>,
}

impl Spool {
    /// Opens (creating) the spool in `state_dir`, setting anything damaged aside, and reads an
    /// older agent's per-batch files into segments.
    pub fn open(state_dir: &Path, max_bytes: u64) -> Result<(Spool, OpenReport), SpoolError> {
        let dir = state_dir.join(SPOOL_DIR);
        let corrupt_dir = dir.join(CORRUPT_DIR);
        fs::create_dir_all(&corrupt_dir).map_err(io(&corrupt_dir))?;
        let state_path = state_dir.join(STATE_SLOTS);
        let legacy_path = state_dir.join(STATE_FILE);
        let mut report = OpenReport::default();
        let (state, state_file) = load_state(&state_path, &legacy_path, &corrupt_dir, &mut report)?;
        let legacy_state = legacy_path.exists().then_some(legacy_path);

        let mut seg_paths: Vec<(u32, PathBuf)> = Vec::new();
        let mut batch_files: Vec<(u64, PathBuf)> = Vec::new();
        let mut strangers: Vec<PathBuf> = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            let path = entry.path();
            if path == corrupt_dir {
                continue;
            }
            if let Some(id) = segment::parse_segment_name(&path) {
                seg_paths.push((id, path));
            } else if let Some(seq) = parse_batch_name(&path) {
                batch_files.push((seq, path));
            } else {
                strangers.push(path);
            }
        }
        seg_paths.sort();
        batch_files.sort();
        let segment_bytes = (max_bytes / 8)
            .next_power_of_two()
            .clamp(MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES);
        let mut spool = Spool {
            dir,
            corrupt_dir,
            state_path,
            state_file,
            legacy_state,
            state_buf: Vec::new(),
            json_buf: JsonBuf::default(),
            max_bytes,
            segment_bytes,
            segments: BTreeMap::new(),
            current: None,
            read_buf: Vec::new(),
            index: VecDeque::new(),
            total_bytes: 0,
            state,
            state_dirty: false,
            fresh: None,
            in_flight: None,
        };
        for path in strangers {
            // Leftover temp files of the per-file spool (crash mid-write) and strangers.
            tracing::warn!(path = %path.display(), "Unexpected file in spool; moved aside.");
            let half_written = path.extension().is_some_and(|e| e == "tmp");
            move_aside(&path, &spool.corrupt_dir)?;
            report.moved_aside += 1;
            spool.state.corrupt_files_total += 1;
            if half_written {
                // A batch that never finished writing: its one sample is lost.
                spool.state.dropped_samples_total += 1;
            }
        }

        // The segments: what waits, the newest sequence number, the segment in use.
        let mut scan = OpenScan::default();
        let mut newest: Option<(u64, u32)> = None;
        for (id, path) in seg_paths {
            let seg = match Segment::open(&path, id) {
                Ok(seg) => seg,
                Err(e) => {
                    // Not a segment we can use (a symlink, say): kept for inspection.
                    tracing::warn!(path = %path.display(), error = %e, "Unusable spool segment; moved aside.");
                    move_aside(&path, &spool.corrupt_dir)?;
                    report.moved_aside += 1;
                    spool.state.corrupt_files_total += 1;
                    continue;
                }
            };
            let found = spool.scan_segment(seg, &mut scan, &mut report)?;
            if let Some(max) = found
                && newest.is_none_or(|(s, _)| max >= s)
            {
                newest = Some((max, id));
            }
        }
        spool.current = newest.map(|(_, id)| id);
        let mut max_seq = newest.map(|(s, _)| s);
        let OpenScan {
            mut waiting,
            damaged,
            torn_headers,
        } = scan;
        waiting.sort_by_key(|w| w.seq);
        let mut damaged = damaged;
        spool.set_aside_duplicates(&mut waiting, &mut damaged, &mut report)?;

        // An older agent's per-batch files: read once, into the segments.
        let mut migrate: Vec<Migrate> = Vec::new();
        let mut done_files: Vec<PathBuf> = Vec::new();
        for (seq, path) in batch_files {
            let read = fs::read(&path).map_err(|e| e.to_string()).and_then(|b| {
                let batch = serde_json::from_slice::<ReportBatch>(&b).map_err(|e| e.to_string())?;
                Ok((batch, b))
            });
            match read {
                Ok((batch, bytes)) if batch.seq == seq => {
                    if waiting.binary_search_by_key(&seq, |w| w.seq).is_ok()
                        || spool.state.spool_head.is_some() && !spool.state.waiting(seq)
                    {
                        // Already moved into a segment by a run that stopped before removing
                        // it, or moved and since acknowledged (or dropped): the checkpoint no
                        // longer counts it (a state of an older agent has no checkpoint).
                        done_files.push(path);
                    } else {
                        let samples = batch.samples.len() as u64;
                        migrate.push((seq, path, bytes, samples, batch.cdn_tail));
                    }
                }
                _ => {
                    tracing::warn!(path = %path.display(), "Damaged spool batch; moved aside and counted as dropped.");
                    move_aside(&path, &spool.corrupt_dir)?;
                    report.moved_aside += 1;
                    spool.state.corrupt_files_total += 1;
                    // The agent writes one sample per batch; a damaged batch counts as one.
                    spool.state.dropped_samples_total += 1;
                }
            }
        }

        for w in &waiting {
            if let Some(seg) = spool.segments.get_mut(&w.seg) {
                seg.live += 1;
            }
        }
        let mut tails: Vec<(u64, CdnTailState)> = Vec::new();
        for w in waiting {
            if let Some(tail) = w.cdn_tail {
                tails.push((w.seq, tail));
            }
            spool.index.push_back(Entry {
                seq: w.seq,
                bytes: w.bytes,
                samples: w.samples,
                seg: w.seg,
                offset: w.offset,
            });
            spool.total_bytes += w.bytes;
        }
        for (seq, path, bytes, samples, cdn_tail) in migrate {
            let (seg, offset) = spool.append(seq, samples, &bytes)?;
            if let Some(tail) = cdn_tail {
                tails.push((seq, tail));
            }
            // In order: a state write while moving to another segment takes the checkpoint
            // from the index.
            let at = spool.index.partition_point(|e| e.seq < seq);
            spool.index.insert(
                at,
                Entry {
                    seq,
                    bytes: bytes.len() as u64,
                    samples,
                    seg,
                    offset,
                },
            );
            spool.total_bytes += bytes.len() as u64;
            max_seq = max_seq.max(Some(seq));
            done_files.push(path);
        }
        spool.count_missing(&damaged, torn_headers);
        for (seq, tail) in tails {
            if spool.state.cdn_tail.is_none() || seq > spool.state.cdn_tail_seq {
                // Spooled after the state was last written: these positions are newer.
                spool.state.cdn_tail = Some(tail);
                spool.state.cdn_tail_seq = seq;
            }
        }
        if let Some(max) = max_seq {
            spool.state.next_seq = spool.state.next_seq.max(max + 1);
        }
        report.batches = spool.index.len();
        spool.save_state(true)?;
        for path in done_files {
            // In a segment and in the durable state now.
            if let Err(e) = fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "Cannot remove an old spool batch file; it is read again at the next start.");
            }
        }
        spool.enforce_bound(0)?;
        spool.trim_spares();
        spool.let_go_of_read_buf();
        Ok((spool, report))
    }

    /// Reads one segment at open: its waiting records into `scan`, damaged ones set aside.
    /// Returns the newest sequence number it holds (`None`: no record of its current use).
    fn scan_segment(
        &mut self,
        mut seg: Segment,
        scan: &mut OpenScan,
        report: &mut OpenReport,
    ) -> Result<Option<u64>, SpoolError> {
        // Headers only: a waiting record's payload is read and checked once, by `Segment::read`.
        let (nonce, found, end) = seg
            .scan(|_| false, &mut self.read_buf)
            .map_err(io(seg.path()))?;
        seg.nonce = nonce.unwrap_or_else(segment::new_nonce);
        seg.end = end;
        let mut newest = None;
        for f in found {
            let (offset, header, intact) = match f {
                Found::Tombstone { .. } => continue,
                Found::TornHeader { offset } => {
                    // Counted in `open` with the batches it hides (its number is unknown).
                    tracing::warn!(path = %seg.path().display(), offset, "Torn spool record header; set aside.");
                    self.set_aside(&seg, offset, HEADER_BYTES as u64, false)?;
                    report.moved_aside += 1;
                    self.state.corrupt_files_total += 1;
                    scan.torn_headers += 1;
                    continue;
                }
                Found::Record {
                    offset,
                    header,
                    intact,
                } => (offset, header, intact),
            };
            let len = u64::from(header.len);
            let peek = match intact {
                None if !self.state.waiting(header.seq) => {
                    // Acknowledged or dropped before: not waiting, but its number was used.
                    newest = newest.max(Some(header.seq));
                    continue;
                }
                None | Some(true) => seg
                    .read(offset, header.seq, &mut self.read_buf)
                    .map_err(|e| e.to_string())
                    .and_then(|()| {
                        serde_json::from_slice::<Peek>(&self.read_buf).map_err(|e| e.to_string())
                    })
                    .and_then(|p| {
                        if p.seq == header.seq {
                            Ok(p)
                        } else {
                            Err(format!("batch {} in the record of {}", p.seq, header.seq))
                        }
                    }),
                Some(false) => Err("checksum mismatch (torn or damaged)".to_string()),
            };
            match peek {
                Ok(p) => {
                    newest = newest.max(Some(header.seq));
                    scan.waiting.push(Waiting {
                        seq: header.seq,
                        bytes: len,
                        samples: u64::from(header.samples),
                        seg: seg.id,
                        offset,
                        cdn_tail: p.cdn_tail,
                    });
                }
                Err(reason) => {
                    // A torn last record (a crash mid-write) or a damaged one: its number is
                    // given again (no gap), its samples counted as dropped.
                    tracing::warn!(path = %seg.path().display(), offset, seq = header.seq, reason, "Damaged spool record; set aside and counted as dropped.");
                    self.set_aside(&seg, offset, HEADER_BYTES as u64 + len, true)?;
                    report.moved_aside += 1;
                    self.state.corrupt_files_total += 1;
                    self.state.dropped_samples_total += u64::from(header.samples.max(1));
                    scan.damaged.push(header.seq);
                }
            }
        }
        self.segments.insert(seg.id, seg);
        Ok(newest)
    }

    /// Two waiting records of one sequence number (`waiting` sorted by it): an append that
    /// failed, whose record could not be erased ([`Segment::append`]) but reached the disk
    /// anyway, and the next batch, given the same number, in another segment. Which one was
    /// written last cannot be told (segment ids and nonces carry no order), and keeping either
    /// could lose the other's CDN deltas or count the failed one's twice (the next batch
    /// carries them again). So all of them are set aside as damage, counted once: one batch's
    /// samples as dropped (the failed one's sample was already reported lost) and each record in
    /// `corrupt_files_total`. Needs both a failed sync and a failed erase: a failing disk.
    fn set_aside_duplicates(
        &mut self,
        waiting: &mut Vec<Waiting>,
        damaged: &mut Vec<u64>,
        report: &mut OpenReport,
    ) -> Result<(), SpoolError> {
        let dups: BTreeSet<u64> = waiting
            .windows(2)
            .filter(|w| w[0].seq == w[1].seq)
            .map(|w| w[0].seq)
            .collect();
        if dups.is_empty() {
            return Ok(());
        }
        let mut samples: BTreeMap<u64, u64> = BTreeMap::new();
        for w in waiting.iter().filter(|w| dups.contains(&w.seq)) {
            tracing::warn!(
                seq = w.seq,
                segment = w.seg,
                offset = w.offset,
                "Two spool records of one batch number; both set aside and counted as dropped."
            );
            if let Some(seg) = self.segments.get(&w.seg) {
                self.set_aside(seg, w.offset, HEADER_BYTES as u64 + w.bytes, true)?;
            }
            report.moved_aside += 1;
            self.state.corrupt_files_total += 1;
            let n = samples.entry(w.seq).or_default();
            *n = (*n).max(w.samples.max(1));
        }
        self.state.dropped_samples_total += samples.values().sum::<u64>();
        waiting.retain(|w| !dups.contains(&w.seq));
        damaged.extend(dups);
        Ok(())
    }

    /// Counts as dropped the batches the state says were spooled and still waiting but that no
    /// segment holds any more (hidden behind a torn header, or on a damaged disk), one sample
    /// each; a torn header with none missing (a crash mid-write of the newest record, whose
    /// number is then given again) counts as one. Called once the index is complete.
    fn count_missing(&mut self, damaged: &[u64], torn_headers: usize) {
        let Some(head) = self.state.spool_head else {
            // An older agent's state: no checkpoint to compare with.
            self.state.dropped_samples_total += torn_headers as u64;
            return;
        };
        let end = self.state.next_seq;
        let mut accounted: BTreeSet<u64> = self
            .index
            .iter()
            .map(|e| e.seq)
            .chain(damaged.iter().copied())
            .chain(self.state.spool_holes.iter().copied())
            .filter(|s| (head..end).contains(s))
            .collect();
        accounted.retain(|s| (head..end).contains(s));
        let missing = end.saturating_sub(head) - accounted.len() as u64;
        if missing > 0 {
            tracing::warn!(
                missing,
                head,
                next_seq = end,
                "Spooled batches not found in the spool; counted as dropped."
            );
        }
        self.state.dropped_samples_total += missing.max(torn_headers as u64);
    }

    /// Wraps `samples` in a new batch, writes it durably, then drops the oldest batches while the
    /// spool is over its bound. Returns the new batch's sequence number.
    pub fn push(&mut self, instance_id: &str, samples: Vec<Sample>) -> Result<u64, SpoolError> {
        self.push_batch(instance_id, samples, Vec::new(), None)
    }

    /// [`Self::push`] with CDN deltas and the access-log positions after them. `Ok` means the
    /// batch is durably spooled (a failure to update the state or to enforce the bound afterwards
    /// is logged and retried later); `Err` means it was not written at all.
    pub fn push_batch(
        &mut self,
        instance_id: &str,
        samples: Vec<Sample>,
        cdn: Vec<CdnBucketDelta>,
        cdn_tail: Option<CdnTailState>,
    ) -> Result<u64, SpoolError> {
        self.push_batch_ext(instance_id, samples, &[], cdn, cdn_tail)
    }

    /// [`Self::push_batch`] with the samples' newer figures ([`SampleExt`], one per sample),
    /// written as extra keys of the same JSON objects (see [`vmmon_common::wire::ext`]).
    pub fn push_batch_ext(
        &mut self,
        instance_id: &str,
        samples: Vec<Sample>,
        exts: &[SampleExt],
        cdn: Vec<CdnBucketDelta>,
        cdn_tail: Option<CdnTailState>,
    ) -> Result<u64, SpoolError> {
        let seq = self.state.next_seq;
        let batch = ReportBatch {
            batch_id: Uuid::new_v4(),
            instance_id: instance_id.to_string(),
            seq,
            samples,
            dropped_samples_total: self.state.dropped_samples_total,
            cdn,
            cdn_tail,
        };
        // Serialised once, as the report's params (`[` batch `]`); the record holds the batch.
        self.json_buf.trim();
        self.json_buf.clear();
        serde_json::to_writer(
            &mut self.json_buf,
            &[ext::BatchWithExt {
                batch: &batch,
                exts,
            }],
        )?;
        // serde_json writes UTF-8 JSON; both are checked all the same (no `unsafe`), ~0.05 ms.
        let text = std::str::from_utf8(self.json_buf.as_bytes())
            .map_err(<serde_json::Error as serde::ser::Error>::custom)?;
        let params = RawValue::from_string(text.to_owned())?;
        let bytes = params
            .get()
            .strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .ok_or_else(|| {
                <serde_json::Error as serde::ser::Error>::custom("batch params are not an array")
            })?
            .as_bytes();
        let len = bytes.len() as u64;
        let samples = batch.samples.len() as u64;
        let (seg, offset) = self.append(seq, samples, bytes)?;
        self.state.next_seq = seq + 1;
        if let Some(tail) = batch.cdn_tail {
            self.state.cdn_tail = Some(tail);
            self.state.cdn_tail_seq = seq;
        }
        self.index.push_back(Entry {
            seq,
            bytes: len,
            samples,
            seg,
            offset,
        });
        self.total_bytes += len;
        if let Err(e) = self.enforce_bound(1) {
            tracing::error!(error = %e, "Cannot enforce the spool bound.");
        }
        self.fresh = (self.index.len() <= KEEP_FRESH_UP_TO).then_some(Fresh {
            seq,
            dropped_samples_total: batch.dropped_samples_total,
            params,
        });
        // Not synced: the record just written carries `next_seq` and the CDN positions across a
        // power loss (module header).
        if let Err(e) = self.save_state(false) {
            tracing::error!(error = %e, "Cannot write the agent state; retrying before the next removal.");
        }
        Ok(seq)
    }

    /// Appends batch `seq`'s record durably, moving to another segment when the one in use is
    /// full. Returns where it went.
    fn append(&mut self, seq: u64, samples: u64, payload: &[u8]) -> Result<(u32, u64), SpoolError> {
        let id = self.segment_for(payload.len())?;
        let samples = u32::try_from(samples).unwrap_or(u32::MAX);
        let seg = self
            .segments
            .get_mut(&id)
            .ok_or_else(|| io(&self.dir)(std::io::Error::other("segment in use vanished")))?;
        let offset = seg
            .append(seq, samples, payload)
            .map_err(|e| io(seg.path())(e))?;
        seg.live += 1;
        Ok((id, offset))
    }

    /// The segment the next record of `payload` bytes goes to: the one in use while it has room
    /// (or holds nothing yet: a batch larger than a segment grows it), else an unused one (a new
    /// use, after the checkpoint that frees it is made durable), else a new one.
    fn segment_for(&mut self, payload: usize) -> Result<u32, SpoolError> {
        if let Some(seg) = self.current.and_then(|id| self.segments.get(&id))
            && !seg.sealed
            && (seg.fits(payload) || seg.end == 0)
        {
            return Ok(seg.id);
        }
        // Moving on: the records the checkpoint no longer counts must stay unneeded after a
        // power loss before any of them is overwritten, and every record left behind must be
        // below a durable `next_seq` before the segment holding it can be removed.
        self.save_state(true)?;
        let need = (HEADER_BYTES + payload) as u64;
        let unused = self
            .segments
            .values()
            .filter(|s| s.live == 0 && Some(s.id) != self.current)
            .min_by_key(|s| (s.capacity < need, s.id))
            .map(|s| s.id);
        let id = match unused {
            Some(id) => {
                if let Some(seg) = self.segments.get_mut(&id) {
                    seg.recycle();
                }
                id
            }
            None => {
                let id = (0..)
                    .find(|i| !self.segments.contains_key(i))
                    .unwrap_or(u32::MAX);
                let seg = Segment::create(&self.dir, id, self.segment_bytes.max(need))
                    .map_err(io(&segment::segment_path(&self.dir, id)))?;
                self.segments.insert(id, seg);
                id
            }
        };
        self.current = Some(id);
        Ok(id)
    }

    /// The oldest batch, read from disk; damaged records are set aside and skipped.
    pub fn oldest(&mut self) -> Result<Option<ReportBatch>, SpoolError> {
        while let Some(entry) = self.index.front().copied() {
            let read = self.read_entry(&entry).and_then(|()| {
                serde_json::from_slice::<ReportBatch>(&self.read_buf).map_err(|e| e.to_string())
            });
            self.let_go_of_read_buf();
            match read {
                Ok(mut batch) => {
                    // Send the freshest drop count, not the one frozen at write time.
                    batch.dropped_samples_total = batch
                        .dropped_samples_total
                        .max(self.state.dropped_samples_total);
                    return Ok(Some(batch));
                }
                Err(e) => self.unreadable_front(entry, &e)?,
            }
        }
        Ok(None)
    }

    /// The oldest batch as written, extension keys included, for sending: `(seq, batch)`. The
    /// samples stay raw JSON text (checked for syntax only), so sending a large batch costs a
    /// copy of its text, not a tree of it. Damaged records are set aside and skipped as in
    /// [`Self::oldest`].
    pub fn oldest_raw(&mut self) -> Result<Option<(u64, RawBatch)>, SpoolError> {
        while let Some(entry) = self.index.front().copied() {
            let read = self.read_entry(&entry).and_then(|()| {
                serde_json::from_slice::<RawBatch>(&self.read_buf).map_err(|e| e.to_string())
            });
            self.let_go_of_read_buf();
            match read {
                Ok(mut batch) => {
                    // Send the freshest drop count, not the one frozen at write time.
                    batch.dropped_samples_total = batch
                        .dropped_samples_total
                        .max(self.state.dropped_samples_total);
                    return Ok(Some((batch.seq, batch)));
                }
                Err(e) => self.unreadable_front(entry, &e)?,
            }
        }
        Ok(None)
    }

    /// Batches are read back only after an outage or a failed send: the buffer is not kept
    /// (a batch is ~300 KB with 1,000 processes).
    fn let_go_of_read_buf(&mut self) {
        if self.read_buf.capacity() > 64 << 10 {
            self.read_buf = Vec::new();
        }
    }

    /// The record of `entry` into `read_buf`, checked.
    fn read_entry(&mut self, entry: &Entry) -> Result<(), String> {
        let seg = self
            .segments
            .get(&entry.seg)
            .ok_or_else(|| format!("segment {} is gone", entry.seg))?;
        seg.read(entry.offset, entry.seq, &mut self.read_buf)
    }

    /// The oldest batch's record became unreadable: set aside, forgotten, counted.
    fn unreadable_front(&mut self, entry: Entry, reason: &str) -> Result<(), SpoolError> {
        tracing::warn!(
            seq = entry.seq,
            segment = entry.seg,
            offset = entry.offset,
            reason,
            "Spool batch became unreadable; set aside."
        );
        if let Some(seg) = self.segments.remove(&entry.seg) {
            let res = self.set_aside(&seg, entry.offset, HEADER_BYTES as u64 + entry.bytes, true);
            self.segments.insert(seg.id, seg);
            res?;
        }
        self.forget_front(entry);
        self.state.corrupt_files_total += 1;
        self.state.dropped_samples_total += entry.samples;
        self.save_state(true)
    }

    /// The oldest batch, ready to send ([`Outgoing`]). The batch just spooled comes from memory,
    /// as written (see the module header); any other batch, or one whose drop count has
    /// changed since it was written, is read from its segment as by [`Self::oldest_raw`], with
    /// the freshest drop count. The batch stays spooled until [`Self::remove`].
    pub fn next_to_send(&mut self) -> Result<Option<Outgoing>, SpoolError> {
        // Sends are one at a time: asking for the next one ends the previous one.
        self.in_flight = None;
        let front = self.index.front().map(|e| e.seq);
        if let Some(fresh) = self.fresh.take_if(|f| {
            Some(f.seq) == front && f.dropped_samples_total == self.state.dropped_samples_total
        }) {
            self.in_flight = Some(fresh.seq);
            return Ok(Some(Outgoing {
                seq: fresh.seq,
                params: fresh.params,
            }));
        }
        match self.oldest_raw()? {
            Some((seq, batch)) => {
                let params = serde_json::value::to_raw_value(&[&batch])?;
                self.in_flight = Some(seq);
                Ok(Some(Outgoing { seq, params }))
            }
            None => Ok(None),
        }
    }

    /// The answer to batch `seq` (handed out by [`Self::next_to_send`]) came, or will not: it
    /// may be dropped by the bound again. [`Self::remove`] and [`Self::discard`] do this too.
    pub fn end_in_flight(&mut self, seq: u64) {
        self.in_flight.take_if(|s| *s == seq);
    }

    /// Removes an acknowledged batch: the checkpoint moves past it (written, not synced; its
    /// record stays in its segment until the segment is reused).
    pub fn remove(&mut self, seq: u64) -> Result<(), SpoolError> {
        self.end_in_flight(seq);
        let Some(pos) = self.index.iter().position(|e| e.seq == seq) else {
            return Ok(());
        };
        if self.state_dirty {
            // The batch may hold the only copy of the newest CDN positions.
            self.save_state(true)?;
        }
        if let Some(entry) = self.index.remove(pos) {
            self.total_bytes -= entry.bytes;
            self.release(entry.seg);
        }
        self.fresh.take_if(|f| f.seq == seq);
        self.save_state(false)
    }

    /// Removes a batch the collector will never accept, counting its samples as dropped.
    pub fn discard(&mut self, seq: u64) -> Result<(), SpoolError> {
        if let Some(entry) = self.index.iter().find(|e| e.seq == seq).copied() {
            self.state.dropped_samples_total += entry.samples;
            self.remove(seq)?;
            self.save_state(true)?;
        }
        Ok(())
    }

    /// Batches waiting.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Bytes waiting (the batches' JSON).
    pub fn bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Cumulative dropped samples.
    pub fn dropped_samples_total(&self) -> u64 {
        self.state.dropped_samples_total
    }

    /// Cumulative damaged files and records set aside.
    pub fn corrupt_files_total(&self) -> u64 {
        self.state.corrupt_files_total
    }

    /// The last desired state persisted.
    pub fn desired(&self) -> Option<DesiredState> {
        self.state.desired
    }

    /// The CDN access-log positions to resume from: the newest of the state's and the spooled
    /// batches'.
    pub fn cdn_checkpoint(&self) -> Option<&CdnTailState> {
        self.state.cdn_tail.as_ref()
    }

    /// Persists the desired state (so a restarted agent resumes it before reconnecting).
    pub fn set_desired(&mut self, desired: DesiredState) -> Result<(), SpoolError> {
        if self.state.desired != Some(desired) {
            self.state.desired = Some(desired);
            self.save_state(true)?;
        }
        Ok(())
    }

    /// Segment files on disk (in use, holding waiting batches, or spare).
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    fn forget_front(&mut self, entry: Entry) {
        self.index.pop_front();
        self.total_bytes -= entry.bytes;
        self.release(entry.seg);
        self.fresh.take_if(|f| f.seq == entry.seq);
    }

    /// One record of segment `id` no longer waits.
    fn release(&mut self, id: u32) {
        if let Some(seg) = self.segments.get_mut(&id) {
            seg.live = seg.live.saturating_sub(1);
            if seg.live == 0 {
                self.trim_spares();
            }
        }
    }

    /// Removes unused segments beyond [`MAX_SPARE_SEGMENTS`] (after an outage drained). Each
    /// holds only records below the durable `next_seq` ([`Self::segment_for`] made it durable
    /// when the spool moved on); the checkpoint is made durable first, so after a power loss no
    /// record it held is looked for (and counted missing).
    fn trim_spares(&mut self) {
        let unused: Vec<u32> = self
            .segments
            .values()
            .filter(|s| s.live == 0 && Some(s.id) != self.current)
            .map(|s| s.id)
            .collect();
        if unused.len() <= MAX_SPARE_SEGMENTS {
            return;
        }
        if let Err(e) = self.save_state(true) {
            tracing::warn!(error = %e, "Cannot write the agent state; unused spool segments kept for now.");
            return;
        }
        for id in unused.iter().skip(MAX_SPARE_SEGMENTS) {
            if let Some(seg) = self.segments.remove(id)
                && let Err(e) = fs::remove_file(seg.path())
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %seg.path().display(), error = %e, "Cannot remove an unused spool segment.");
            }
        }
    }

    /// Drops oldest batches while over the bound, keeping at least `keep_newest` batches.
    fn enforce_bound(&mut self, keep_newest: usize) -> Result<(), SpoolError> {
        let mut dropped_batches = 0u64;
        let mut dropped_samples = 0u64;
        while self.total_bytes > self.max_bytes && self.index.len() > keep_newest {
            let Some(entry) = self.index.front().copied() else {
                break;
            };
            if self.in_flight == Some(entry.seq) {
                // Being sent: the collector may store it. Over the bound until its answer
                // (at most the request timeout); the oldest is dropped then, if still needed.
                break;
            }
            self.forget_front(entry);
            dropped_batches += 1;
            dropped_samples += entry.samples;
        }
        if dropped_batches > 0 {
            self.state.dropped_samples_total += dropped_samples;
            tracing::warn!(
                dropped_batches,
                dropped_samples,
                dropped_samples_total = self.state.dropped_samples_total,
                max_bytes = self.max_bytes,
                "Spool full, dropped oldest batches."
            );
            self.save_state(true)?;
        }
        Ok(())
    }

    /// Copies the `len` bytes at `offset` of `seg` to `spool/corrupt/` and marks the record
    /// there as set aside ([`Segment::tombstone`]), so it is counted once.
    fn set_aside(
        &self,
        seg: &Segment,
        offset: u64,
        len: u64,
        valid_header: bool,
    ) -> Result<(), SpoolError> {
        let bytes = seg.raw(offset, len).map_err(io(seg.path()))?;
        let target = self.corrupt_dir.join(format!(
            "{}-{:04}.seg-{offset}.record",
            Uuid::new_v4().simple(),
            seg.id
        ));
        fs::write(&target, bytes).map_err(io(&target))?;
        seg.tombstone(offset, valid_header).map_err(io(seg.path()))
    }

    /// The checkpoint from the index: the lowest waiting sequence number and any gaps above it.
    fn update_checkpoint(&mut self) {
        let head = self.index.front().map_or(self.state.next_seq, |e| e.seq);
        self.state.spool_head = Some(head);
        self.state.spool_holes.clear();
        let mut expect = head;
        for e in &self.index {
            while expect < e.seq {
                self.state.spool_holes.push(expect);
                expect += 1;
            }
            expect = e.seq + 1;
        }
        while expect < self.state.next_seq {
            self.state.spool_holes.push(expect);
            expect += 1;
        }
    }

    fn save_state(&mut self, durable: bool) -> Result<(), SpoolError> {
        self.update_checkpoint();
        let res = self.write_state(durable);
        self.state_dirty = res.is_err();
        res
    }

    /// The state into its slot file (`fdatasync` when `durable`), creating the file the first
    /// time.
    fn write_state(&mut self, durable: bool) -> Result<(), SpoolError> {
        self.state_buf.clear();
        serde_json::to_writer(&mut self.state_buf, &self.state)?;
        match self.state_file.as_mut() {
            Some(f) => f.write(&self.state_buf, durable)?,
            None => {
                self.state_file = Some(SlotFile::create(&self.state_path, &self.state_buf)?);
            }
        }
        if let Some(legacy) = self.legacy_state.take() {
            // The slot file is durable and read first from now on.
            match fs::remove_file(&legacy) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %legacy.display(), error = %e, "Cannot remove the old agent state file; it is ignored.");
                }
            }
        }
        Ok(())
    }
}

/// The persisted state: from the slot file, else (upgrade) from an older agent's
/// `agent-state.json`, else the default. A damaged file is moved aside and counted; the state
/// then starts from the default and the spooled batches (see the module header).
fn load_state(
    slots_path: &Path,
    legacy_path: &Path,
    corrupt_dir: &Path,
    report: &mut OpenReport,
) -> Result<(PersistedState, Option<SlotFile>), SpoolError> {
    let mut corrupt = 0;
    let found = match SlotFile::open(slots_path) {
        Ok(Some((file, payload))) => match serde_json::from_slice::<PersistedState>(&payload) {
            Ok(state) => Some((state, file)),
            Err(e) => {
                drop(file);
                tracing::warn!(path = %slots_path.display(), error = %e, "Agent state record is damaged; moved aside.");
                move_aside(slots_path, corrupt_dir)?;
                corrupt += 1;
                None
            }
        },
        Ok(None) => None,
        Err(SlotError::Damaged { path, reason }) => {
            tracing::warn!(path = %path.display(), reason, "Agent state file holds no valid record; moved aside.");
            move_aside(slots_path, corrupt_dir)?;
            corrupt += 1;
            None
        }
        Err(e) => return Err(e.into()),
    };
    let (state, file) = match found {
        Some((state, file)) => (state, Some(file)),
        None => match fs::read(legacy_path) {
            Ok(bytes) => match serde_json::from_slice::<PersistedState>(&bytes) {
                Ok(s) => (s, None),
                Err(e) => {
                    tracing::warn!(path = %legacy_path.display(), error = %e, "Agent state file is damaged; moved aside.");
                    move_aside(legacy_path, corrupt_dir)?;
                    corrupt += 1;
                    (PersistedState::default(), None)
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (PersistedState::default(), None),
            Err(e) => return Err(io(legacy_path)(e)),
        },
    };
    // Counted in the open report only: the counters in the state were lost with it.
    report.moved_aside += corrupt;
    Ok((state, file))
}

/// The agent's persisted state in `state_dir` as the agent would resume it, without moving
/// anything aside (for tests and tools): `Ok(None)` when there is none.
pub fn read_state(state_dir: &Path) -> Result<Option<PersistedState>, SpoolError> {
    if let Some((_, payload)) = SlotFile::open(&state_dir.join(STATE_SLOTS))? {
        return Ok(Some(serde_json::from_slice(&payload)?));
    }
    match fs::read(state_dir.join(STATE_FILE)) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(&state_dir.join(STATE_FILE))(e)),
    }
}

/// The batches waiting in the spool of `state_dir`, oldest first, as a restarted agent would
/// find them, without changing anything (for tests and tools; safe beside a running agent: a
/// record being written is not listed). Damaged records and files are left out.
pub fn read_spooled(state_dir: &Path) -> Result<Vec<SpooledBatch>, SpoolError> {
    let state = read_state(state_dir).ok().flatten().unwrap_or_default();
    let dir = state_dir.join(SPOOL_DIR);
    let entries = match fs::read_dir(&dir) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(&dir)(e)),
    };
    let mut out: BTreeMap<u64, String> = BTreeMap::new();
    // Numbers found in two intact records: set aside at open (`Spool::set_aside_duplicates`).
    let mut twice: BTreeSet<u64> = BTreeSet::new();
    let mut legacy: BTreeSet<(u64, PathBuf)> = BTreeSet::new();
    let mut buf = Vec::new();
    for entry in entries {
        let path = entry.map_err(io(&dir))?.path();
        if let Some(seq) = parse_batch_name(&path) {
            legacy.insert((seq, path));
            continue;
        }
        if segment::parse_segment_name(&path).is_none() {
            continue;
        }
        let file = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(&path)(e)),
        };
        let len = file.metadata().map_err(io(&path))?.len();
        // Headers only: each waiting payload is read and checked once, below.
        let (_, found, _) =
            segment::scan_file(&file, len, &mut |_| false, &mut buf).map_err(io(&path))?;
        for f in found {
            if let Found::Record {
                offset,
                header,
                intact: None,
            } = f
                && state.waiting(header.seq)
                && segment::read_checked(&file, offset, &header, &mut buf).is_ok_and(|ok| ok)
                && let Ok(text) = String::from_utf8(std::mem::take(&mut buf))
                && out.insert(header.seq, text).is_some()
            {
                twice.insert(header.seq);
            }
        }
    }
    out.retain(|seq, _| !twice.contains(seq));
    for (seq, path) in legacy {
        if out.contains_key(&seq)
            || twice.contains(&seq)
            || state.spool_head.is_some() && !state.waiting(seq)
        {
            // In a segment already, or acknowledged since (see `Spool::open`).
            continue;
        }
        if let Ok(text) = fs::read_to_string(&path)
            && serde_json::from_str::<ReportBatch>(&text).is_ok_and(|b| b.seq == seq)
        {
            out.insert(seq, text);
        }
    }
    Ok(out
        .into_iter()
        .map(|(seq, json)| SpooledBatch { seq, json })
        .collect())
}

fn parse_batch_name(path: &Path) -> Option<u64> {
    if path.extension()?.to_str()? != BATCH_EXT {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

fn move_aside(path: &Path, corrupt_dir: &Path) -> Result<(), SpoolError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "unnamed".into());
    let target = corrupt_dir.join(format!("{}-{name}", Uuid::new_v4().simple()));
    fs::rename(path, &target).map_err(io(path))
}
