//! The bounded on-disk spool: every report batch is written here before it is sent, and deleted
//! only after the collector acknowledged it.
//!
//! Layout under the state directory:
//! * `spool/NNNNNNNNNNNNNNNNNNNN.batch` — one JSON [`ReportBatch`] per file, named by its sequence
//!   number, written to a temp file, fsynced and renamed, so a crash leaves either the whole batch
//!   or nothing under the final name.
//! * `spool/corrupt/` — anything unreadable found at open or read time is moved here (kept for
//!   inspection, never resent) and counted.
//! * `agent-state.slots` — next sequence number, cumulative drop counters, the last desired
//!   state and the CDN access-log positions ([`PersistedState`] as JSON), rewritten after every
//!   batch in one of two checksummed slots of a preallocated file (`pwrite` + `fdatasync`, see
//!   [`crate::slots`]): a crash mid-write leaves the previous record. It exists so that
//!   `next_seq` survives a spool that has emptied (seqs stay contiguous: a gap is a lost sample
//!   to the delivery audits, a repeat a duplicate). An `agent-state.json` of an older agent is
//!   read once, when there is no slot file, and removed once the slot file is written (so a
//!   downgrade to such an agent starts as one whose state was lost: `next_seq` from its spool,
//!   CDN positions asked of the collector, the desired state from the next register).
//!   If neither slot is valid (both damaged: a torn write damages only one, so this takes a
//!   damaged disk or a hand edit), the file is moved aside to `spool/corrupt/` (logged, counted
//!   in [`OpenReport::moved_aside`]) and the agent goes on, as it did with a damaged
//!   `agent-state.json`, rather than refusing to start: from an older agent's
//!   `agent-state.json` if one is left, else from the spooled batches, `next_seq` continuing
//!   after the newest (after an empty spool it starts again at 0: the collector stores those as
//!   new batches, since it dedups by batch id, but a seq audit sees the numbers again).
//!
//! Full policy: drop oldest. Monitoring data is most useful fresh, so when the spool exceeds its
//! byte bound the oldest batches are deleted and their samples added to `dropped_samples_total`,
//! which every batch and heartbeat carries to the collector. The batch being sent is not dropped
//! until its answer (the collector may be storing it: counting it dropped would be wrong), so the
//! spool may exceed its bound by the batches spooled meanwhile. Memory use is the index only
//! (a few dozen bytes per batch), whatever the outage length.
//!
//! Sending: the newest batch's text stays in memory after it is spooled ([`Spool::next_to_send`]
//! hands it over as the `monitor_report` params, `[` batch `]`), so the usual tick — spool, send,
//! acknowledge, delete — serialises the batch once and never reads it back from disk. Only a
//! batch that waited behind others, or one whose drop count went stale, is read from its file.
//! The file stays the durable copy either way: it is deleted only after the collector's ack.
//!
//! CDN positions: a batch may carry the access-log positions reached after its CDN deltas
//! ([`ReportBatch::cdn_tail`]); the state keeps the latest ones with the sequence number of their
//! batch. The batch is written first, then the state, so after a crash in between the newest
//! batch is ahead of the state: [`Spool::open`] takes whichever is newer. If the state cannot be
//! written, it is written again before any batch is deleted, so the newest positions always
//! survive somewhere.

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;
use vmmon_common::wire::ext::{self, SampleExt};
use vmmon_common::wire::{CdnBucketDelta, CdnTailState, DesiredState, ReportBatch, Sample};

use crate::slots::{SlotError, SlotFile, create_replacing};

const SPOOL_DIR: &str = "spool";
const CORRUPT_DIR: &str = "corrupt";
/// The state file of agents before the slot file ([`STATE_SLOTS`]); read once for the upgrade.
const STATE_FILE: &str = "agent-state.json";
/// The state's slot file ([`crate::slots`]).
pub const STATE_SLOTS: &str = "agent-state.slots";
const BATCH_EXT: &str = "batch";

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
    /// `[` batch `]`, the file's text between the brackets.
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
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    seq: u64,
    bytes: u64,
    samples: u64,
}

/// What `open` found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Intact batches waiting to be sent.
    pub batches: usize,
    /// Damaged files moved aside now.
    pub moved_aside: usize,
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
    max_bytes: u64,
    index: VecDeque<Entry>,
    total_bytes: u64,
    state: PersistedState,
    /// The last state write failed: retry before deleting any batch.
    state_dirty: bool,
    /// The newest batch's text, while it is (nearly) next to send.
    fresh: Option<Fresh>,
    /// The batch [`Self::next_to_send`] handed out and whose answer is still awaited: the bound
    /// does not drop it, since the collector may be storing it (dropping it would count as
    /// dropped samples that arrive).
    in_flight: Option<u64>,
}

impl Spool {
    /// Opens (creating) the spool in `state_dir`, moving anything damaged aside.
    pub fn open(state_dir: &Path, max_bytes: u64) -> Result<(Spool, OpenReport), SpoolError> {
        let dir = state_dir.join(SPOOL_DIR);
        let corrupt_dir = dir.join(CORRUPT_DIR);
        fs::create_dir_all(&corrupt_dir).map_err(io(&corrupt_dir))?;
        let state_path = state_dir.join(STATE_SLOTS);
        let legacy_path = state_dir.join(STATE_FILE);
        let mut report = OpenReport::default();
        let (mut state, state_file) =
            load_state(&state_path, &legacy_path, &corrupt_dir, &mut report)?;
        let legacy_state = legacy_path.exists().then_some(legacy_path);

        let mut found: Vec<(u64, PathBuf)> = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            let path = entry.path();
            if path == corrupt_dir {
                continue;
            }
            match parse_name(&path) {
                Some(seq) => found.push((seq, path)),
                None => {
                    // Leftover temp files (crash mid-write) and strangers.
                    tracing::warn!(path = %path.display(), "Unexpected file in spool; moved aside.");
                    let half_written = path.extension().is_some_and(|e| e == "tmp");
                    move_aside(&path, &corrupt_dir)?;
                    report.moved_aside += 1;
                    state.corrupt_files_total += 1;
                    if half_written {
                        // A batch that never finished writing: its one sample is lost.
                        state.dropped_samples_total += 1;
                    }
                }
            }
        }
        found.sort_by_key(|(seq, _)| *seq);
        let mut index = VecDeque::with_capacity(found.len());
        let mut total_bytes = 0;
        for (seq, path) in found {
            match read_batch(&path) {
                Ok((batch, bytes)) if batch.seq == seq => {
                    if let Some(tail) = batch.cdn_tail
                        && (state.cdn_tail.is_none() || seq > state.cdn_tail_seq)
                    {
                        // Spooled after the state was last written: these positions are newer.
                        state.cdn_tail = Some(tail);
                        state.cdn_tail_seq = seq;
                    }
                    index.push_back(Entry {
                        seq,
                        bytes,
                        samples: batch.samples.len() as u64,
                    });
                    total_bytes += bytes;
                }
                _ => {
                    tracing::warn!(path = %path.display(), "Damaged spool batch; moved aside and counted as dropped.");
                    move_aside(&path, &corrupt_dir)?;
                    report.moved_aside += 1;
                    state.corrupt_files_total += 1;
                    // The agent writes one sample per batch; a damaged batch counts as one.
                    state.dropped_samples_total += 1;
                }
            }
        }
        if let Some(last) = index.back() {
            state.next_seq = state.next_seq.max(last.seq + 1);
        }
        report.batches = index.len();
        let mut spool = Spool {
            dir,
            corrupt_dir,
            state_path,
            state_file,
            legacy_state,
            state_buf: Vec::new(),
            max_bytes,
            index,
            total_bytes,
            state,
            state_dirty: false,
            fresh: None,
            in_flight: None,
        };
        spool.save_state()?;
        spool.enforce_bound(0)?;
        Ok((spool, report))
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
        // Serialised once, as the report's params (`[` batch `]`); the file holds the batch.
        let params = serde_json::value::to_raw_value(&[ext::BatchWithExt {
            batch: &batch,
            exts,
        }])?;
        let bytes = params
            .get()
            .strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .ok_or_else(|| {
                <serde_json::Error as serde::ser::Error>::custom("batch params are not an array")
            })?
            .as_bytes();
        let len = bytes.len() as u64;
        let path = self.batch_path(seq);
        write_atomically(&path, bytes)?;
        self.state.next_seq = seq + 1;
        if let Some(tail) = batch.cdn_tail {
            self.state.cdn_tail = Some(tail);
            self.state.cdn_tail_seq = seq;
        }
        self.index.push_back(Entry {
            seq,
            bytes: len,
            samples: batch.samples.len() as u64,
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
        if let Err(e) = self.save_state() {
            tracing::error!(error = %e, "Cannot write the agent state; retrying before the next delete.");
        }
        Ok(seq)
    }

    /// The oldest batch, read from disk; damaged files are moved aside and skipped.
    pub fn oldest(&mut self) -> Result<Option<ReportBatch>, SpoolError> {
        while let Some(entry) = self.index.front().copied() {
            let path = self.batch_path(entry.seq);
            match read_batch(&path) {
                Ok((mut batch, _)) => {
                    // Send the freshest drop count, not the one frozen at write time.
                    batch.dropped_samples_total = batch
                        .dropped_samples_total
                        .max(self.state.dropped_samples_total);
                    return Ok(Some(batch));
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "Spool batch became unreadable; moved aside.");
                    if path.exists() {
                        move_aside(&path, &self.corrupt_dir)?;
                    }
                    self.forget_front(entry);
                    self.state.corrupt_files_total += 1;
                    self.state.dropped_samples_total += entry.samples;
                    self.save_state()?;
                }
            }
        }
        Ok(None)
    }

    /// The oldest batch as written, extension keys included, for sending: `(seq, batch)`. The
    /// samples stay raw JSON text (checked for syntax only), so sending a large batch costs a
    /// copy of its text, not a tree of it. Damaged files are moved aside and skipped as in
    /// [`Self::oldest`].
    pub fn oldest_raw(&mut self) -> Result<Option<(u64, RawBatch)>, SpoolError> {
        while let Some(entry) = self.index.front().copied() {
            let path = self.batch_path(entry.seq);
            let read = fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<RawBatch>(&b).map_err(|e| e.to_string()));
            match read {
                Ok(mut batch) => {
                    // Send the freshest drop count, not the one frozen at write time.
                    batch.dropped_samples_total = batch
                        .dropped_samples_total
                        .max(self.state.dropped_samples_total);
                    return Ok(Some((batch.seq, batch)));
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "Spool batch became unreadable; moved aside.");
                    if path.exists() {
                        move_aside(&path, &self.corrupt_dir)?;
                    }
                    self.forget_front(entry);
                    self.state.corrupt_files_total += 1;
                    self.state.dropped_samples_total += entry.samples;
                    self.save_state()?;
                }
            }
        }
        Ok(None)
    }

    /// The oldest batch, ready to send ([`Outgoing`]). The batch just spooled comes from memory,
    /// as written (see the module header); any other batch, or one whose drop count has
    /// changed since it was written, is read from disk as by [`Self::oldest_raw`], with the
    /// freshest drop count. The batch stays spooled until [`Self::remove`].
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

    /// Deletes an acknowledged batch.
    pub fn remove(&mut self, seq: u64) -> Result<(), SpoolError> {
        self.end_in_flight(seq);
        let Some(pos) = self.index.iter().position(|e| e.seq == seq) else {
            return Ok(());
        };
        if self.state_dirty {
            // The batch may hold the only copy of the newest CDN positions.
            self.save_state()?;
        }
        let path = self.batch_path(seq);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path)(e)),
        }
        if let Some(entry) = self.index.remove(pos) {
            self.total_bytes -= entry.bytes;
        }
        self.fresh.take_if(|f| f.seq == seq);
        Ok(())
    }

    /// Deletes a batch the collector will never accept, counting its samples as dropped.
    pub fn discard(&mut self, seq: u64) -> Result<(), SpoolError> {
        if let Some(entry) = self.index.iter().find(|e| e.seq == seq).copied() {
            self.state.dropped_samples_total += entry.samples;
            self.remove(seq)?;
            self.save_state()?;
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

    /// Bytes waiting.
    pub fn bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Cumulative dropped samples.
    pub fn dropped_samples_total(&self) -> u64 {
        self.state.dropped_samples_total
    }

    /// Cumulative damaged files moved aside.
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
            self.save_state()?;
        }
        Ok(())
    }

    fn forget_front(&mut self, entry: Entry) {
        self.index.pop_front();
        self.total_bytes -= entry.bytes;
        self.fresh.take_if(|f| f.seq == entry.seq);
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
            let path = self.batch_path(entry.seq);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&path)(e)),
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
            self.save_state()?;
        }
        Ok(())
    }

    fn batch_path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.{BATCH_EXT}"))
    }

    fn save_state(&mut self) -> Result<(), SpoolError> {
        let res = self.write_state();
        self.state_dirty = res.is_err();
        res
    }

    /// The state into its slot file, durably (`fdatasync`), creating the file the first time.
    fn write_state(&mut self) -> Result<(), SpoolError> {
        self.state_buf.clear();
        serde_json::to_writer(&mut self.state_buf, &self.state)?;
        match self.state_file.as_mut() {
            Some(f) => f.write(&self.state_buf, true)?,
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

fn parse_name(path: &Path) -> Option<u64> {
    if path.extension()?.to_str()? != BATCH_EXT {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

fn read_batch(path: &Path) -> Result<(ReportBatch, u64), String> {
    let bytes = fs::read(path).map_err(|e| e.to_string())?;
    let batch = serde_json::from_slice::<ReportBatch>(&bytes).map_err(|e| e.to_string())?;
    Ok((batch, bytes.len() as u64))
}

fn move_aside(path: &Path, corrupt_dir: &Path) -> Result<(), SpoolError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "unnamed".into());
    let target = corrupt_dir.join(format!("{}-{name}", Uuid::new_v4().simple()));
    fs::rename(path, &target).map_err(io(path))
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), SpoolError> {
    let tmp = path.with_extension("tmp");
    {
        // Mode as `File::create` gives it (0o666 before the umask).
        let mut f = create_replacing(&tmp, 0o666).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(parent) = path.parent()
        && let Ok(d) = File::open(parent)
    {
        // Make the rename itself durable.
        let _ = d.sync_all();
    }
    Ok(())
}
