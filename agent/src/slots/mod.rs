//! A small record rewritten in place every tick, durably and cheaply: two checksummed slots in a
//! preallocated file, written alternately with one `pwrite` (+ `fdatasync`).
//!
//! Why: the agent state (`next_seq`, drop counters, CDN positions) and the network totals change
//! every tick. Rewriting a file the usual atomic way (temp file, write, fsync, rename, directory
//! fsync) creates and renames an inode and commits the journal every tick: about 250 µs of the
//! agent's CPU per file on the project's ext4 VM (docs/benchmarks.md §1c). Overwriting a slot of
//! a file whose blocks already exist changes no metadata, so `fdatasync` only writes the data
//! block: about 50 µs, and 1 µs without the sync.
//!
//! Layout (little endian): the file is two slots of `slot_bytes` each (`file length / 2`, a
//! multiple of [`MIN_SLOT_BYTES`]). A slot is
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | [`MAGIC`] |
//! | 8..16 | generation (`u64`), +1 per write |
//! | 16..20 | payload length in bytes (`u32`) |
//! | 20..24 | CRC-32 (IEEE) of bytes 8..20 and the payload |
//! | 24.. | payload |
//!
//! A write goes to the slot **not** holding the newest *synced* record (`durable` below), so a
//! write torn by a crash or a power loss damages only that slot: its checksum fails and the
//! other slot, the newest synced record (or a newer one), is read. Why not simply "the slot not
//! holding the newest record": with unsynced writes in between, synced D in slot k, unsynced E in
//! the other slot, unsynced F back in slot k over D; a power loss that tears F and never flushed
//! E would leave only the record before D. So unsynced writes after a sync all go to the slot
//! not holding it (each overwrites the previous unsynced one), and so does the next synced one. At open the valid slot with the highest generation wins. A file with no
//! valid slot is reported as [`SlotError::Damaged`]; what to do then is the caller's choice
//! (the spool and the network totals document theirs). A payload larger than a slot makes the
//! file be written anew with larger slots, atomically (temp file, fsync, rename, directory fsync),
//! as is the first write.

#[cfg(test)]
mod tests;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// First bytes of every valid slot.
pub const MAGIC: &[u8; 8] = b"VMMSLOT1";
/// Bytes before the payload in a slot.
pub const HEADER_BYTES: usize = 24;
/// Smallest slot, and the unit slot sizes are multiples of (one page, one file-system block).
pub const MIN_SLOT_BYTES: usize = 4096;
/// Largest slot this code writes or reads (a larger file is not ours, or damaged).
pub const MAX_SLOT_BYTES: usize = 16 << 20;

/// Slot-file failures.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    /// File system error with the path involved.
    #[error("I/O on {path}: {source}")]
    Io {
        /// Path involved.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file exists but holds no valid record (both slots torn or damaged, or not a slot file).
    #[error("{path} holds no valid record: {reason}")]
    Damaged {
        /// Path involved.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// A payload larger than [`MAX_SLOT_BYTES`] allows.
    #[error("record of {len} bytes is too large for {path}")]
    TooLarge {
        /// Path involved.
        path: PathBuf,
        /// Payload length in bytes.
        len: usize,
    },
}

/// Creates `path` for writing with `mode`, replacing whatever is there. The agent runs as root:
/// a planted symlink at `path` must not make it write through the link, so the old entry is
/// removed (a link is removed, not followed) and the file created exclusively (`O_CREAT|O_EXCL`
/// never follows a link).
pub(crate) fn create_replacing(path: &Path, mode: u32) -> std::io::Result<File> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SlotError + '_ {
    move |source| SlotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// An open slot file (see the module header).
#[derive(Debug)]
pub struct SlotFile {
    path: PathBuf,
    file: File,
    /// Bytes per slot.
    slot_bytes: usize,
    /// Generation of the newest valid record.
    generation: u64,
    /// Slot (0 or 1) holding the newest record known to be on stable storage (synced); every
    /// write goes to the other (module header).
    durable: usize,
    /// Reused header + payload buffer.
    buf: Vec<u8>,
}

impl SlotFile {
    /// Opens the slot file at `path` and returns it with its newest valid record's payload;
    /// `Ok(None)` when there is no file. A symlink at `path` is refused (the agent runs as root).
    pub fn open(path: &Path) -> Result<Option<(SlotFile, Vec<u8>)>, SlotError> {
        let mut file = match OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(path)(e)),
        };
        let damaged = |reason: String| SlotError::Damaged {
            path: path.to_path_buf(),
            reason,
        };
        let len = file.metadata().map_err(io(path))?.len();
        let file_bytes = usize::try_from(len)
            .ok()
            .filter(|&l| {
                (2 * MIN_SLOT_BYTES..=2 * MAX_SLOT_BYTES).contains(&l)
                    && l % (2 * MIN_SLOT_BYTES) == 0
            })
            .ok_or_else(|| damaged(format!("length {len} is not two slots")))?;
        let mut bytes = Vec::with_capacity(file_bytes);
        file.read_to_end(&mut bytes).map_err(io(path))?;
        if bytes.len() != file_bytes {
            return Err(damaged(format!(
                "length changed while reading ({len} → {})",
                bytes.len()
            )));
        }
        let slot_bytes = file_bytes / 2;
        let (a, b) = bytes.split_at(slot_bytes);
        let best = match (decode(a), decode(b)) {
            (Ok(x), Ok(y)) if y.0 > x.0 => (1, y),
            (Ok(x), _) => (0, x),
            (Err(_), Ok(y)) => (1, y),
            (Err(ea), Err(eb)) => return Err(damaged(format!("slot 0: {ea}; slot 1: {eb}"))),
        };
        let (newest, (generation, payload)) = best;
        let payload = payload.to_vec();
        // What was read may be in the page cache only (written unsynced before a crash of the
        // agent): synced now, it is the newest durable record the next writes must not touch.
        file.sync_data().map_err(io(path))?;
        Ok(Some((
            SlotFile {
                path: path.to_path_buf(),
                file,
                slot_bytes,
                generation,
                durable: newest,
                buf: Vec::new(),
            },
            payload,
        )))
    }

    /// Writes a new slot file at `path` holding `payload` (generation 1), atomically: temp file,
    /// fsync, rename, directory fsync. Whatever was at `path` is replaced.
    pub fn create(path: &Path, payload: &[u8]) -> Result<SlotFile, SlotError> {
        Self::create_with_generation(path, payload, 1)
    }

    /// Writes `payload` as the newest record. With `durable`, it is on stable storage when this
    /// returns (`fdatasync`); without, it is in the page cache (survives a crash of the agent,
    /// not a power loss). A failed write leaves the previous record readable.
    pub fn write(&mut self, payload: &[u8], durable: bool) -> Result<(), SlotError> {
        if HEADER_BYTES + payload.len() > self.slot_bytes {
            // Rare (the record grew): a new file with larger slots, atomically.
            let next = Self::create_with_generation(&self.path, payload, self.generation + 1)?;
            *self = next;
            return Ok(());
        }
        let generation = self.generation + 1;
        let slot = 1 - self.durable;
        encode(&mut self.buf, generation, payload)?;
        let offset = (slot * self.slot_bytes) as u64;
        self.file
            .write_all_at(&self.buf, offset)
            .map_err(io(&self.path))?;
        // Written (to the page cache): newer than anything else in the file, even if the sync
        // below fails.
        self.generation = generation;
        if durable {
            self.file.sync_data().map_err(io(&self.path))?;
            self.durable = slot;
        }
        Ok(())
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn create_with_generation(
        path: &Path,
        payload: &[u8],
        generation: u64,
    ) -> Result<SlotFile, SlotError> {
        let need = HEADER_BYTES + payload.len();
        let slot_bytes = need.div_ceil(MIN_SLOT_BYTES).max(1) * MIN_SLOT_BYTES;
        let slot_bytes = slot_bytes.next_power_of_two();
        if slot_bytes > MAX_SLOT_BYTES {
            return Err(SlotError::TooLarge {
                path: path.to_path_buf(),
                len: payload.len(),
            });
        }
        let mut image = Vec::with_capacity(2 * slot_bytes);
        encode(&mut image, generation, payload)?;
        // Both slots preallocated (written, not sparse), so later writes allocate nothing.
        image.resize(2 * slot_bytes, 0);
        let tmp = path.with_extension("tmp");
        {
            let mut f = create_replacing(&tmp, 0o600).map_err(io(&tmp))?;
            f.write_all(&image).map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
        }
        fs::rename(&tmp, path).map_err(io(path))?;
        if let Some(parent) = path.parent()
            && let Ok(d) = File::open(parent)
        {
            // Make the rename itself durable.
            let _ = d.sync_all();
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(io(path))?;
        Ok(SlotFile {
            path: path.to_path_buf(),
            file,
            slot_bytes,
            generation,
            durable: 0,
            buf: Vec::new(),
        })
    }
}

/// `buf` ← header + payload.
fn encode(buf: &mut Vec<u8>, generation: u64, payload: &[u8]) -> Result<(), SlotError> {
    let len = u32::try_from(payload.len()).map_err(|_| SlotError::TooLarge {
        path: PathBuf::new(),
        len: payload.len(),
    })?;
    buf.clear();
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&generation.to_le_bytes());
    buf.extend_from_slice(&len.to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&buf[8..20]);
    crc.update(payload);
    buf.extend_from_slice(&crc.finalize().to_le_bytes());
    buf.extend_from_slice(payload);
    Ok(())
}

/// `(generation, payload)` of a valid slot, or why it is not.
fn decode(slot: &[u8]) -> Result<(u64, &[u8]), &'static str> {
    let header = slot.get(..HEADER_BYTES).ok_or("shorter than a header")?;
    if &header[..8] != MAGIC {
        return Err("no magic (never written, or not a slot)");
    }
    let word = |r: std::ops::Range<usize>| header.get(r).ok_or("short header");
    let generation = u64::from_le_bytes(
        word(8..16)?
            .try_into()
            .map_err(|_| "bad generation field")?,
    );
    let len = u32::from_le_bytes(word(16..20)?.try_into().map_err(|_| "bad length field")?);
    let crc = u32::from_le_bytes(word(20..24)?.try_into().map_err(|_| "bad checksum field")?);
    let payload = usize::try_from(len)
        .ok()
        .and_then(|l| slot.get(HEADER_BYTES..HEADER_BYTES.checked_add(l)?))
        .ok_or("length beyond the slot (torn or damaged)")?;
    let mut h = crc32fast::Hasher::new();
    h.update(&header[8..20]);
    h.update(payload);
    if h.finalize() != crc {
        return Err("checksum mismatch (torn or damaged)");
    }
    Ok((generation, payload))
}
