//! Following access logs across rotation and agent restarts.
//!
//! Per configured path the tailer follows the file found there (the *current* file, identified
//! by device and inode) and reads it in whole lines from a byte offset:
//!
//! * rename rotation (`logrotate` `create`, nginx reopening on USR1): when the path names another
//!   inode, the old file becomes *draining*: it is read to its end (through the descriptor the
//!   tailer holds, whatever its new name), kept while it still grows (nginx writes to it until it
//!   reopens), and dropped after a whole poll in which it had nothing new; the new file is read
//!   from byte 0;
//! * truncation (`copytruncate`): a file smaller than the offset, or whose first bytes no longer
//!   match the fingerprint taken of them, is read again from byte 0;
//! * restart: positions come back from the checkpoint (see [`Tailer::new`]); a file that was
//!   rotated while the agent was stopped is found again by inode in the log's directory.
//!
//! [`Tailer::poll`] reads without changing anything; [`Tailer::commit`] adopts the result. The
//! caller commits only after the tick's batch, carrying the deltas and the positions after them,
//! is durably spooled; an uncommitted poll is simply read again next tick.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use vmmon_common::wire::{CdnBucketDelta, CdnFilePosition, CdnTailState, MAX_CDN_DELTAS_PER_BATCH};

use super::aggregate::Aggregator;
use super::format::{LineError, LogFormat};

/// Bytes read per `pread`.
const CHUNK: usize = 256 * 1024;
/// Longest line; a longer one is skipped as malformed.
pub const MAX_LINE: usize = 64 * 1024;
/// Head bytes covered by a file's fingerprint.
const FINGERPRINT_MAX: u64 = 256;
/// Default most bytes read per poll over all logs (the rest is read on the next ticks).
pub const DEFAULT_MAX_BYTES_PER_POLL: u64 = 64 * 1024 * 1024;
/// Most directory entries looked at when searching a rotated file by inode.
const MAX_DIR_SCAN: usize = 10_000;
/// Longest malformed-line example kept for the log.
const EXAMPLE_LEN: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    fn of(md: &std::fs::Metadata) -> FileId {
        FileId {
            dev: md.dev(),
            ino: md.ino(),
        }
    }
}

#[derive(Debug, Clone)]
struct Tracked {
    id: FileId,
    offset: u64,
    fp_len: u32,
    fp: u64,
    current: bool,
}

#[derive(Debug, Clone)]
struct Log {
    path: PathBuf,
    key: String,
    files: Vec<Tracked>,
}

/// Follows a set of access logs.
#[derive(Debug)]
pub struct Tailer {
    format: LogFormat,
    logs: Vec<Log>,
    handles: HashMap<FileId, File>,
    malformed_total: u64,
    max_bytes_per_poll: u64,
    problems: HashMap<String, String>,
}

/// The outcome of one [`Tailer::poll`]: what to report, and the positions after it.
#[derive(Debug)]
pub struct Poll {
    /// Per-domain bucket deltas of the lines read.
    pub deltas: Vec<CdnBucketDelta>,
    /// Lines counted.
    pub lines: u64,
    /// Malformed lines skipped in this poll.
    pub malformed: u64,
    /// The first malformed line of this poll (shortened) and why.
    pub example: Option<(String, LineError)>,
    /// Bytes read.
    pub bytes_read: u64,
    /// Whether reading stopped at the per-poll bound (more is waiting).
    pub behind: bool,
    logs: Vec<Log>,
    opened: HashMap<FileId, File>,
    malformed_total: u64,
    events: Vec<(String, String)>,
    problems: Vec<(String, String)>,
}

impl Poll {
    /// The positions after this poll, to spool with its deltas.
    pub fn tail_state(&self) -> CdnTailState {
        tail_state(&self.logs, self.malformed_total)
    }
}

fn tail_state(logs: &[Log], malformed_total: u64) -> CdnTailState {
    let files = logs
        .iter()
        .flat_map(|l| {
            l.files.iter().map(|t| CdnFilePosition {
                log: l.key.clone(),
                dev: t.id.dev,
                inode: t.id.ino,
                offset: t.offset,
                fingerprint_len: t.fp_len,
                fingerprint: t.fp,
                current: t.current,
            })
        })
        .collect();
    CdnTailState {
        files,
        malformed_lines_total: malformed_total,
    }
}

/// FNV-1a, 64 bits.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn read_head(file: &File, len: u64) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, 0)?;
    Ok(buf)
}

/// Opens `path` if it is the file `id`, else looks for `id` among the regular files of its
/// directory (a rotated file under its new name).
fn locate(path: &Path, id: FileId) -> Option<File> {
    if let Ok(f) = File::open(path)
        && f.metadata().is_ok_and(|m| FileId::of(&m) == id)
    {
        return Some(f);
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    for entry in std::fs::read_dir(dir).ok()?.flatten().take(MAX_DIR_SCAN) {
        let Ok(md) = entry.metadata() else { continue };
        if md.is_file() && FileId::of(&md) == id {
            let f = File::open(entry.path()).ok()?;
            return f
                .metadata()
                .is_ok_and(|m| FileId::of(&m) == id)
                .then_some(f);
        }
    }
    None
}

/// Shared by every file of one poll.
struct PollCtx<'a> {
    format: &'a LogFormat,
    now: i64,
    agg: Aggregator,
    budget: u64,
    full: bool,
    lines: u64,
    malformed: u64,
    example: Option<(String, LineError)>,
    bytes_read: u64,
}

impl PollCtx<'_> {
    fn line(&mut self, raw: &[u8]) -> bool {
        let text = String::from_utf8_lossy(raw);
        if text.trim().is_empty() {
            return true;
        }
        match self.format.parse(&text, self.now) {
            Ok(entry) => {
                if self.agg.len() >= MAX_CDN_DELTAS_PER_BATCH && self.agg.is_new_key(&entry) {
                    self.full = true;
                    return false;
                }
                self.agg.add(&entry);
                self.lines += 1;
            }
            Err(e) => self.bad(&text, e),
        }
        true
    }

    fn bad(&mut self, text: &str, why: LineError) {
        self.malformed += 1;
        if self.example.is_none() {
            let short: String = text.chars().take(EXAMPLE_LEN).collect();
            self.example = Some((short, why));
        }
    }
}

/// How reading one file ended.
struct ReadOutcome {
    consumed: u64,
    /// No whole line is left (as opposed to stopping at a bound).
    eof: bool,
}

impl Tailer {
    /// A tailer for `paths`, resuming from `checkpoint` (the newest of the agent state's and the
    /// newest spooled batch's positions). Files of the checkpoint that cannot be found any more
    /// are logged and forgotten; a path with no position is read from its beginning. At most
    /// `max_bytes_per_poll` bytes (but at least two maximal lines) are read per poll.
    pub fn new(
        paths: &[PathBuf],
        format: LogFormat,
        checkpoint: Option<&CdnTailState>,
        max_bytes_per_poll: u64,
    ) -> Tailer {
        let mut seen = HashSet::new();
        let mut logs = Vec::new();
        let mut handles = HashMap::new();
        for path in paths {
            let key = path.to_string_lossy().into_owned();
            if !seen.insert(key.clone()) {
                continue;
            }
            let mut files = Vec::new();
            for pos in checkpoint
                .iter()
                .flat_map(|c| c.files.iter())
                .filter(|p| p.log == key)
            {
                let id = FileId {
                    dev: pos.dev,
                    ino: pos.inode,
                };
                match locate(path, id) {
                    Some(f) => {
                        handles.insert(id, f);
                        files.push(Tracked {
                            id,
                            offset: pos.offset,
                            fp_len: pos.fingerprint_len,
                            fp: pos.fingerprint,
                            current: pos.current,
                        });
                    }
                    None => tracing::warn!(log = %key, inode = pos.inode, offset = pos.offset,
                        "A followed access-log file is gone (rotated away and removed while the agent was stopped); lines written to it after this offset were not counted."),
                }
            }
            logs.push(Log {
                path: path.clone(),
                key,
                files,
            });
        }
        Tailer {
            format,
            logs,
            handles,
            malformed_total: checkpoint.map_or(0, |c| c.malformed_lines_total),
            // At least two of the longest lines, so every line fits in one poll.
            max_bytes_per_poll: max_bytes_per_poll.max(2 * (MAX_LINE as u64 + 1)),
            problems: HashMap::new(),
        }
    }

    /// The committed positions.
    pub fn tail_state(&self) -> CdnTailState {
        tail_state(&self.logs, self.malformed_total)
    }

    /// Cumulative malformed lines (committed).
    pub fn malformed_total(&self) -> u64 {
        self.malformed_total
    }

    /// Reads what is new in every log (bounded), at time `now` (Unix seconds), without changing
    /// the committed positions.
    pub fn poll(&self, now: i64) -> Poll {
        let mut ctx = PollCtx {
            format: &self.format,
            now,
            agg: Aggregator::default(),
            budget: self.max_bytes_per_poll,
            full: false,
            lines: 0,
            malformed: 0,
            example: None,
            bytes_read: 0,
        };
        let mut logs = self.logs.clone();
        let mut opened = HashMap::new();
        let mut events = Vec::new();
        let mut problems = Vec::new();
        for log in &mut logs {
            let draining_before: HashSet<FileId> = log
                .files
                .iter()
                .filter(|t| !t.current)
                .map(|t| t.id)
                .collect();
            if let Err(problem) = follow_path(log, &mut opened, &mut events) {
                problems.push((log.key.clone(), problem));
            } else {
                problems.push((log.key.clone(), String::new()));
            }
            // Rotated files first: they hold the older lines.
            log.files.sort_by_key(|t| t.current);
            let mut keep = Vec::with_capacity(log.files.len());
            for mut t in std::mem::take(&mut log.files) {
                let Some(file) = opened.get(&t.id).or_else(|| self.handles.get(&t.id)) else {
                    continue;
                };
                let outcome = match read_file(file, &mut t, &mut ctx, &log.key, &mut events) {
                    Ok(o) => o,
                    Err(e) => {
                        problems.push((log.key.clone(), format!("cannot read: {e}")));
                        keep.push(t);
                        continue;
                    }
                };
                if !t.current
                    && draining_before.contains(&t.id)
                    && outcome.consumed == 0
                    && outcome.eof
                    && finish_draining(file, &mut t, &mut ctx)
                {
                    events.push((
                        log.key.clone(),
                        format!(
                            "finished the rotated file (inode {}) at byte {}",
                            t.id.ino, t.offset
                        ),
                    ));
                    continue;
                }
                keep.push(t);
            }
            log.files = keep;
        }
        let behind = ctx.full || ctx.budget == 0;
        Poll {
            malformed_total: self.malformed_total + ctx.malformed,
            deltas: ctx.agg.into_deltas(),
            lines: ctx.lines,
            malformed: ctx.malformed,
            example: ctx.example,
            bytes_read: ctx.bytes_read,
            behind,
            logs,
            opened,
            events,
            problems,
        }
    }

    /// Adopts a poll whose deltas and positions were durably spooled.
    pub fn commit(&mut self, poll: Poll) {
        for (log, event) in &poll.events {
            tracing::info!(log = %log, "Access log: {event}.");
        }
        for (log, problem) in poll.problems {
            let before = self.problems.get(&log).cloned().unwrap_or_default();
            if problem != before {
                if problem.is_empty() {
                    tracing::info!(log = %log, "Access log readable again.");
                } else {
                    tracing::warn!(log = %log, problem = %problem, "Access log problem.");
                }
                self.problems.insert(log, problem);
            }
        }
        if poll.malformed > 0
            && let Some((line, why)) = &poll.example
        {
            tracing::warn!(skipped = poll.malformed, malformed_lines_total = poll.malformed_total,
                example = %line, reason = %why, "Skipped malformed access-log lines (check cdn_log_format).");
        }
        self.logs = poll.logs;
        self.malformed_total = poll.malformed_total;
        self.handles.extend(poll.opened);
        let live: HashSet<FileId> = self
            .logs
            .iter()
            .flat_map(|l| l.files.iter().map(|t| t.id))
            .collect();
        self.handles.retain(|id, _| live.contains(id));
    }
}

/// Notices a new file at the log's path (rotation, or the first file); the previous current file
/// becomes draining. A missing path is not a problem (between a rename and the reopen).
fn follow_path(
    log: &mut Log,
    opened: &mut HashMap<FileId, File>,
    events: &mut Vec<(String, String)>,
) -> Result<(), String> {
    let md = match std::fs::metadata(&log.path) {
        Ok(md) => md,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return if log.files.is_empty() {
                Err("does not exist (yet)".into())
            } else {
                Ok(())
            };
        }
        Err(e) => return Err(format!("cannot stat: {e}")),
    };
    if !md.is_file() {
        return Err("is not a regular file".into());
    }
    if log
        .files
        .iter()
        .any(|t| t.current && t.id == FileId::of(&md))
    {
        return Ok(());
    }
    let file = File::open(&log.path).map_err(|e| format!("cannot open: {e}"))?;
    let id = FileId::of(&file.metadata().map_err(|e| format!("cannot stat: {e}"))?);
    if log.files.iter().any(|t| t.current && t.id == id) {
        return Ok(());
    }
    for t in log.files.iter_mut().filter(|t| t.current) {
        t.current = false;
        events.push((
            log.key.clone(),
            format!(
                "rotated; reading the old file (inode {}) to its end",
                t.id.ino
            ),
        ));
    }
    if let Some(t) = log.files.iter_mut().find(|t| t.id == id) {
        t.current = true;
    } else {
        log.files.push(Tracked {
            id,
            offset: 0,
            fp_len: 0,
            fp: 0,
            current: true,
        });
        events.push((
            log.key.clone(),
            format!(
                "following the file with inode {} from its beginning",
                id.ino
            ),
        ));
    }
    opened.insert(id, file);
    Ok(())
}

fn fingerprint_matches(file: &File, t: &Tracked) -> io::Result<bool> {
    if t.fp_len == 0 {
        return Ok(true);
    }
    match read_head(file, u64::from(t.fp_len)) {
        Ok(head) => Ok(fnv1a(&head) == t.fp),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// Reads whole lines from `t.offset` until the end, the byte budget or the delta bound.
fn read_file(
    file: &File,
    t: &mut Tracked,
    ctx: &mut PollCtx<'_>,
    key: &str,
    events: &mut Vec<(String, String)>,
) -> io::Result<ReadOutcome> {
    let size = file.metadata()?.len();
    if size < t.offset || !fingerprint_matches(file, t)? {
        events.push((
            key.to_string(),
            format!(
                "the file with inode {} was truncated or replaced; reading it again from its beginning",
                t.id.ino
            ),
        ));
        t.offset = 0;
        t.fp_len = 0;
        t.fp = 0;
    }
    let start = t.offset;
    let mut chunk = vec![0u8; CHUNK];
    let mut buf: Vec<u8> = Vec::new();
    // File offset of buf[0]; t.offset is always the end of the last whole line handled.
    let mut base = t.offset;
    let mut skipping = false;
    let mut eof = false;
    'read: loop {
        // An overlong line is skipped to its end whatever the budget (it is only scanned).
        if !skipping && (ctx.budget == 0 || ctx.full) {
            break;
        }
        let want = if skipping {
            CHUNK
        } else {
            CHUNK.min(usize::try_from(ctx.budget).unwrap_or(CHUNK))
        };
        let n = file.read_at(&mut chunk[..want], base + buf.len() as u64)?;
        if n == 0 {
            eof = true;
            break;
        }
        ctx.budget = ctx.budget.saturating_sub(n as u64);
        ctx.bytes_read += n as u64;
        buf.extend_from_slice(&chunk[..n]);
        let mut from = 0;
        while let Some(nl) = buf[from..].iter().position(|b| *b == b'\n') {
            let line = &buf[from..from + nl];
            if skipping {
                skipping = false;
                ctx.malformed += 1;
            } else if !ctx.line(line) {
                // Delta bound reached: this line waits for the next batch.
                break 'read;
            }
            from += nl + 1;
            t.offset = base + from as u64;
        }
        buf.drain(..from);
        base += from as u64;
        if buf.len() > MAX_LINE {
            if !skipping && ctx.example.is_none() {
                ctx.example = Some((
                    String::from_utf8_lossy(&buf[..EXAMPLE_LEN]).into_owned(),
                    LineError::Layout,
                ));
            }
            skipping = true;
            base += buf.len() as u64;
            buf.clear();
        }
    }
    update_fingerprint(file, t)?;
    Ok(ReadOutcome {
        consumed: t.offset - start,
        eof,
    })
}

fn update_fingerprint(file: &File, t: &mut Tracked) -> io::Result<()> {
    if u64::from(t.fp_len) < FINGERPRINT_MAX && t.offset > u64::from(t.fp_len) {
        let len = t.offset.min(FINGERPRINT_MAX);
        let head = read_head(file, len)?;
        t.fp = fnv1a(&head);
        t.fp_len = len as u32;
    }
    Ok(())
}

/// A rotated file is done: a last line without its newline still counts. False when that line
/// does not fit in this poll's deltas (the file is kept for the next poll).
fn finish_draining(file: &File, t: &mut Tracked, ctx: &mut PollCtx<'_>) -> bool {
    let Ok(size) = file.metadata().map(|m| m.len()) else {
        return true;
    };
    if size <= t.offset {
        return true;
    }
    let len = (size - t.offset).min(MAX_LINE as u64 + 1) as usize;
    let mut buf = vec![0u8; len];
    if file.read_exact_at(&mut buf, t.offset).is_err() {
        return true;
    }
    if len > MAX_LINE {
        ctx.malformed += 1;
    } else if !ctx.line(&buf) {
        return false;
    }
    t.offset = size;
    true
}

#[cfg(test)]
mod tests;
