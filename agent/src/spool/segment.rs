//! Preallocated, append-only segment files: where the spool keeps its batches.
//!
//! Why: one file per batch cost, every tick, an inode create, a write into newly allocated
//! blocks, `fsync`, a rename, a directory `fsync` and, after the ack, an `unlink` that frees the
//! blocks again — metadata work on every tick. A record appended to a segment whose blocks
//! already exist (written once with zeros when the segment is made, then reused) changes no
//! metadata, so it costs one `pwrite` of the batch and one `fdatasync` that writes only its data
//! blocks; an ack writes nothing here (the spool's checkpoint moves, see `spool/mod.rs`).
//! Measured on the running daemon with 1,000 processes (`docs/benchmarks.md` §1c, fourth cut):
//! the batch file write (2.8 %) and its `unlink` (0.6 %) of the daemon's CPU became 1.2 %, and
//! the whole daemon costs 0.94× what it did (0.91–0.98 per round, glibc and musl).
//!
//! A segment is a file `spool/NNNN.seg` of records, back to back from offset 0. A record is a
//! [`HEADER_BYTES`]-byte header and the batch's JSON text (little endian):
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | [`MAGIC`] (or [`TOMBSTONE`]: a damaged record, set aside and skipped) |
//! | 4..8 | CRC-32 of bytes 8..40 (the header's own checksum) |
//! | 8..16 | the segment's nonce: random, new each time the segment is (re)used |
//! | 16..24 | the batch's sequence number |
//! | 24..28 | payload length in bytes |
//! | 28..32 | samples in the batch (counted as dropped if the batch is lost) |
//! | 32..36 | CRC-32 of the payload |
//! | 36..40 | zero |
//!
//! Reading a segment: the nonce of the record at offset 0 is the segment's; records follow one
//! another while their header is valid and carries that nonce. The first one that does not
//! (never-written zeros, or a record of the segment's previous use, whose nonce differs) ends
//! the segment. The magic's first byte is `0xFF`, which never occurs in UTF-8 (so never in a JSON
//! payload): the end of a shorter record overwriting a longer one cannot pass for a header. A
//! record whose header is valid but whose payload fails its checksum is torn (a crash mid-write)
//! or damaged; one whose magic is there but whose header fails its checksum has a torn header.
//! The spool sets either aside (copied to `spool/corrupt/`, counted) and marks it
//! ([`Segment::tombstone`]) so it is counted once; a valid header's length lets the scan go on
//! past it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::slots::create_replacing;

/// First bytes of a record.
pub const MAGIC: [u8; 4] = [0xFF, b'V', b'S', b'R'];
/// First bytes of a record found damaged and set aside (its header's length still skips it).
pub const TOMBSTONE: [u8; 4] = [0xFF, b'V', b'S', b'X'];
/// Bytes of a record header.
pub const HEADER_BYTES: usize = 40;
/// Extension of segment files.
pub const SEGMENT_EXT: &str = "seg";
/// Preallocation unit (one page, one file-system block).
const BLOCK: u64 = 4096;

/// A record header, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Live record, or tombstone.
    pub live: bool,
    /// The segment's nonce when written.
    pub nonce: u64,
    /// The batch's sequence number.
    pub seq: u64,
    /// Payload bytes.
    pub len: u32,
    /// Samples in the batch.
    pub samples: u32,
    /// CRC-32 of the payload.
    pub payload_crc: u32,
}

impl Header {
    /// The header's 40 bytes.
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut h = [0u8; HEADER_BYTES];
        h[..4].copy_from_slice(if self.live { &MAGIC } else { &TOMBSTONE });
        h[8..16].copy_from_slice(&self.nonce.to_le_bytes());
        h[16..24].copy_from_slice(&self.seq.to_le_bytes());
        h[24..28].copy_from_slice(&self.len.to_le_bytes());
        h[28..32].copy_from_slice(&self.samples.to_le_bytes());
        h[32..36].copy_from_slice(&self.payload_crc.to_le_bytes());
        let crc = crc32fast::hash(&h[8..]);
        h[4..8].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// What the 40 bytes at a record's place hold.
    pub fn decode(h: &[u8; HEADER_BYTES]) -> Slot {
        let live = match h[..4] {
            [0xFF, b'V', b'S', b'R'] => true,
            [0xFF, b'V', b'S', b'X'] => false,
            _ => return Slot::Empty,
        };
        let word32 = |at: usize| u32::from_le_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
        let word64 = |at: usize| u64::from(word32(at)) | (u64::from(word32(at + 4)) << 32);
        if crc32fast::hash(&h[8..]) != word32(4) || word32(36) != 0 {
            return Slot::TornHeader;
        }
        Slot::Header(Header {
            live,
            nonce: word64(8),
            seq: word64(16),
            len: word32(24),
            samples: word32(28),
            payload_crc: word32(32),
        })
    }
}

/// The bytes at a record's place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// No magic: never written (zeros), or not a record: the end of the segment.
    Empty,
    /// The magic, but a header that fails its checksum (torn or damaged).
    TornHeader,
    /// A valid header (the payload is checked apart).
    Header(Header),
}

/// One record found by [`Segment::scan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// A record with a valid header, at `offset`. `intact` tells whether its payload matched
    /// its checksum (`None`: not checked, as asked).
    Record {
        /// Where its header starts.
        offset: u64,
        /// Its header.
        header: Header,
        /// Payload checked and intact.
        intact: Option<bool>,
    },
    /// A record already set aside.
    Tombstone {
        /// Where its header starts.
        offset: u64,
    },
    /// The magic with a torn header at `offset`: the scan of this segment ends here.
    TornHeader {
        /// Where the header starts.
        offset: u64,
    },
}

/// One segment file, open.
#[derive(Debug)]
pub struct Segment {
    /// The number in its name.
    pub id: u32,
    path: PathBuf,
    file: File,
    /// The nonce of the current use (records of another nonce are stale).
    pub nonce: u64,
    /// Bytes preallocated (the file's length).
    pub capacity: u64,
    /// Where the next record goes (after the last one of the current use).
    pub end: u64,
    /// Records of this segment still in the spool.
    pub live: usize,
    /// An append failed and its record could not be erased for sure: nothing more is appended
    /// to this use of the segment (it counts as full), so that record, if it reaches the disk,
    /// stays the last one of its segment and is found as a duplicate at open (see
    /// [`Self::append`]).
    pub sealed: bool,
    /// Tests only: how many of the next `fdatasync`s fail (EIO), to drive failed appends.
    #[cfg(test)]
    pub fail_syncs: std::cell::Cell<u32>,
    /// Tests only: the next erase of a failed record fails (EIO) before writing anything.
    #[cfg(test)]
    pub fail_erase: std::cell::Cell<bool>,
}

/// A fresh random nonce.
pub fn new_nonce() -> u64 {
    uuid::Uuid::new_v4().as_u64_pair().0
}

/// `dir/NNNN.seg`.
pub fn segment_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("{id:04}.{SEGMENT_EXT}"))
}

/// The id in a segment file's name, if it is one.
pub fn parse_segment_name(path: &Path) -> Option<u32> {
    if path.extension()?.to_str()? != SEGMENT_EXT {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    if stem.len() < 4 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

impl Segment {
    /// Makes a new segment `dir/NNNN.seg` of `capacity` bytes (rounded up to whole blocks),
    /// written with zeros so that later records overwrite allocated blocks, durably (file and
    /// directory entry). A symlink planted at the path is replaced, not followed.
    pub fn create(dir: &Path, id: u32, capacity: u64) -> std::io::Result<Segment> {
        let path = segment_path(dir, id);
        let capacity = capacity.div_ceil(BLOCK).max(1) * BLOCK;
        let mut file = create_replacing(&path, 0o600)?;
        let zeros = vec![0u8; 64 * 1024];
        let mut left = capacity;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            file.write_all(&zeros[..n])?;
            left -= n as u64;
        }
        file.sync_all()?;
        drop(file);
        if let Ok(d) = File::open(dir) {
            // Make the new entry itself durable.
            let _ = d.sync_all();
        }
        let file = open_rw(&path)?;
        Ok(Segment::handle(id, path, file, new_nonce(), capacity))
    }

    /// A segment of `capacity` bytes open as `file`, empty until scanned or appended to.
    fn handle(id: u32, path: PathBuf, file: File, nonce: u64, capacity: u64) -> Segment {
        Segment {
            id,
            path,
            file,
            nonce,
            capacity,
            end: 0,
            live: 0,
            sealed: false,
            #[cfg(test)]
            fail_syncs: std::cell::Cell::new(0),
            #[cfg(test)]
            fail_erase: std::cell::Cell::new(false),
        }
    }

    /// Opens an existing segment for reading and writing (a symlink is refused). Its nonce and
    /// end are set by the caller from [`Self::scan`].
    pub fn open(path: &Path, id: u32) -> std::io::Result<Segment> {
        let file = open_rw(path)?;
        let capacity = file.metadata()?.len();
        Ok(Segment::handle(id, path.to_path_buf(), file, 0, capacity))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The records of the segment's current use, in order (see the module header): the nonce
    /// (that of the record at offset 0; `None` when there is none: an unused segment), what was
    /// found, and where the next record would go (after the last valid header, or at a torn
    /// header). A record's payload is checked when `check(&header)` says so.
    pub fn scan(
        &self,
        mut check: impl FnMut(&Header) -> bool,
        buf: &mut Vec<u8>,
    ) -> std::io::Result<(Option<u64>, Vec<Found>, u64)> {
        scan_file(&self.file, self.capacity, &mut check, buf)
    }

    /// Appends a record of batch `seq` holding `payload` at [`Self::end`] and makes it durable
    /// (`fdatasync`). Returns its offset. On error the segment's end is unchanged.
    ///
    /// A failed append may still leave its record whole in the page cache (the write worked,
    /// the sync did not), to reach the disk later. The caller gives `seq` to the next batch,
    /// which may go to another segment: two records of one sequence number. So the failed
    /// record's header is overwritten with zeros and synced (the next append overwrites the
    /// rest); if that fails too, the segment is sealed ([`Self::sealed`]: full until reused),
    /// and the spool treats two records of one number found at open as damage.
    pub fn append(&mut self, seq: u64, samples: u32, payload: &[u8]) -> std::io::Result<u64> {
        if self.sealed {
            return Err(std::io::Error::other(
                "segment sealed after a failed append",
            ));
        }
        let offset = self.end;
        let res = self.write_record(seq, samples, payload, offset);
        if res.is_err() {
            let erased = self.erase(offset);
            if let Err(e) = erased {
                tracing::warn!(path = %self.path.display(), offset, error = %e, "Cannot erase a failed spool record; no more records go to this segment.");
                self.sealed = true;
            }
        }
        res
    }

    /// Zeros over the header at `offset`, synced.
    fn erase(&self, offset: u64) -> std::io::Result<()> {
        #[cfg(test)]
        if self.fail_erase.replace(false) {
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        self.file.write_all_at(&[0u8; HEADER_BYTES], offset)?;
        self.sync_data()
    }

    fn write_record(
        &mut self,
        seq: u64,
        samples: u32,
        payload: &[u8],
        offset: u64,
    ) -> std::io::Result<u64> {
        let len = u32::try_from(payload.len()).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "batch larger than 4 GiB")
        })?;
        let header = Header {
            live: true,
            nonce: self.nonce,
            seq,
            len,
            samples,
            payload_crc: crc32fast::hash(payload),
        };
        self.file.write_all_at(&header.encode(), offset)?;
        self.file
            .write_all_at(payload, offset + HEADER_BYTES as u64)?;
        self.sync_data()?;
        self.end = offset + HEADER_BYTES as u64 + u64::from(len);
        self.capacity = self.capacity.max(self.end);
        Ok(offset)
    }

    /// The payload of batch `seq`'s record at `offset` into `buf`, checked (header, nonce, seq,
    /// payload checksum); `Err` says why it is unusable.
    pub fn read(&self, offset: u64, seq: u64, buf: &mut Vec<u8>) -> Result<(), String> {
        let header = read_header(&self.file, offset).map_err(|e| e.to_string())?;
        let header = match header {
            Slot::Header(h) if h.live && h.nonce == self.nonce && h.seq == seq => h,
            Slot::Header(h) => {
                return Err(format!(
                    "record at {offset} is batch {} of another use (expected {seq})",
                    h.seq
                ));
            }
            Slot::TornHeader => return Err(format!("torn header at {offset}")),
            Slot::Empty => return Err(format!("no record at {offset}")),
        };
        if !read_checked(&self.file, offset, &header, buf).map_err(|e| e.to_string())? {
            return Err(format!("checksum mismatch in batch {seq} at {offset}"));
        }
        Ok(())
    }

    /// The raw bytes from `offset`, up to `len` and the file's end (to set a damaged record
    /// aside for inspection).
    pub fn raw(&self, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
        let len = len.min(self.capacity.saturating_sub(offset));
        let mut v = vec![0u8; len as usize];
        let n = read_at_most(&self.file, &mut v, offset)?;
        v.truncate(n);
        Ok(v)
    }

    /// Marks the record at `offset` as set aside, durably: a record with a valid header becomes
    /// a [`TOMBSTONE`] (skipped by its length); a torn header loses its magic (the scan ends
    /// there, as before, but finds nothing to count).
    pub fn tombstone(&self, offset: u64, valid_header: bool) -> std::io::Result<()> {
        let mark: [u8; 4] = if valid_header { TOMBSTONE } else { [0; 4] };
        self.file.write_all_at(&mark, offset)?;
        self.sync_data()
    }

    /// `fdatasync` (failing as tests ask, see the test-only `fail_syncs`).
    fn sync_data(&self) -> std::io::Result<()> {
        #[cfg(test)]
        if self.fail_syncs.get() > 0 {
            self.fail_syncs.set(self.fail_syncs.get() - 1);
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        self.file.sync_data()
    }

    /// Starts a new use of a segment none of whose records is needed any more: a new nonce
    /// makes the old records stale; the next record goes at offset 0.
    pub fn recycle(&mut self) {
        self.nonce = new_nonce();
        self.end = 0;
        self.live = 0;
        // A record a failed append may have left has the old nonce: stale now.
        self.sealed = false;
    }

    /// Room for a record of `payload` bytes at the end.
    pub fn fits(&self, payload: usize) -> bool {
        !self.sealed && self.end + (HEADER_BYTES + payload) as u64 <= self.capacity
    }
}

fn open_rw(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// [`Segment::scan`] over any open file (read-only readers use it too).
pub fn scan_file(
    file: &File,
    file_len: u64,
    check: &mut dyn FnMut(&Header) -> bool,
    buf: &mut Vec<u8>,
) -> std::io::Result<(Option<u64>, Vec<Found>, u64)> {
    let mut found = Vec::new();
    let mut nonce: Option<u64> = None;
    let mut offset = 0u64;
    while offset + HEADER_BYTES as u64 <= file_len {
        match read_header(file, offset)? {
            Slot::Empty => break,
            Slot::TornHeader => {
                found.push(Found::TornHeader { offset });
                break;
            }
            Slot::Header(h) => {
                match nonce {
                    None => nonce = Some(h.nonce),
                    Some(n) if n != h.nonce => break,
                    Some(_) => {}
                }
                let next = offset + HEADER_BYTES as u64 + u64::from(h.len);
                if !h.live {
                    found.push(Found::Tombstone { offset });
                } else if next > file_len {
                    // Longer than the file: the length is valid (header checksum) but the
                    // payload was never all written.
                    found.push(Found::Record {
                        offset,
                        header: h,
                        intact: Some(false),
                    });
                } else {
                    let intact = if check(&h) {
                        Some(read_checked(file, offset, &h, buf)?)
                    } else {
                        None
                    };
                    found.push(Found::Record {
                        offset,
                        header: h,
                        intact,
                    });
                }
                offset = next;
            }
        }
    }
    let end = match found.last() {
        Some(Found::TornHeader { offset }) => *offset,
        _ => offset,
    };
    Ok((nonce, found, end))
}

fn read_header(file: &File, offset: u64) -> std::io::Result<Slot> {
    let mut h = [0u8; HEADER_BYTES];
    let n = read_at_most(file, &mut h, offset)?;
    if n < HEADER_BYTES {
        return Ok(Slot::Empty);
    }
    Ok(Header::decode(&h))
}

/// The payload of the record at `offset` whose header is `h` into `buf`, and whether it matches
/// its checksum (every reader of a payload goes through here).
pub fn read_checked(
    file: &File,
    offset: u64,
    h: &Header,
    buf: &mut Vec<u8>,
) -> std::io::Result<bool> {
    buf.clear();
    buf.resize(h.len as usize, 0);
    file.read_exact_at(buf, offset + HEADER_BYTES as u64)?;
    Ok(crc32fast::hash(buf) == h.payload_crc)
}

fn read_at_most(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(seg: &Segment) -> (Option<u64>, Vec<Found>, u64) {
        seg.scan(|_| true, &mut Vec::new()).unwrap()
    }

    #[test]
    fn header_round_trips_and_rejects_any_flipped_bit() {
        let h = Header {
            live: true,
            nonce: 0x0123_4567_89ab_cdef,
            seq: 42,
            len: 300_000,
            samples: 1,
            payload_crc: 0xdead_beef,
        };
        let bytes = h.encode();
        assert_eq!(Header::decode(&bytes), Slot::Header(h));
        for i in 4..HEADER_BYTES {
            for bit in 0..8 {
                let mut b = bytes;
                b[i] ^= 1 << bit;
                assert_eq!(Header::decode(&b), Slot::TornHeader, "byte {i} bit {bit}");
            }
        }
        assert_eq!(Header::decode(&[0; HEADER_BYTES]), Slot::Empty);
        let dead = Header { live: false, ..h };
        assert_eq!(Header::decode(&dead.encode()), Slot::Header(dead));
    }

    #[test]
    fn append_scan_read_and_recycle() {
        let dir = tempfile::tempdir().unwrap();
        let mut seg = Segment::create(dir.path(), 3, 10_000).unwrap();
        assert_eq!(seg.capacity, 12_288, "whole blocks");
        assert_eq!(std::fs::metadata(seg.path()).unwrap().len(), 12_288);
        assert_eq!(scan_all(&seg), (None, Vec::new(), 0), "zeros: unused");
        let a = seg.append(7, 1, b"{\"a\":1}").unwrap();
        let b = seg.append(8, 2, b"{\"b\":22}").unwrap();
        assert_eq!((a, b), (0, 47));
        let (nonce, found, end) = scan_all(&seg);
        assert_eq!(nonce, Some(seg.nonce));
        assert_eq!(end, seg.end);
        assert_eq!(found.len(), 2);
        let mut buf = Vec::new();
        seg.read(b, 8, &mut buf).unwrap();
        assert_eq!(buf, b"{\"b\":22}");
        assert!(seg.read(b, 7, &mut buf).is_err(), "wrong seq");
        // Reopened, the same records.
        let mut again = Segment::open(seg.path(), 3).unwrap();
        let (n2, f2, e2) = scan_all(&again);
        assert_eq!((n2, f2, e2), (nonce, found, end));
        // Recycled: the old records are stale; a shorter new record ends the segment.
        again.recycle();
        again.append(9, 1, b"{}").unwrap();
        let (n3, f3, e3) = scan_all(&again);
        assert_eq!(n3, Some(again.nonce));
        assert_ne!(n3, nonce);
        assert_eq!(f3.len(), 1, "{f3:?}");
        assert_eq!(e3, (HEADER_BYTES + 2) as u64);
    }

    #[test]
    fn torn_payload_torn_header_and_tombstones() {
        let dir = tempfile::tempdir().unwrap();
        let mut seg = Segment::create(dir.path(), 0, 4096).unwrap();
        seg.append(1, 1, b"[1,2,3]").unwrap();
        let torn = seg.append(2, 1, b"[4,5,6]").unwrap();
        // A crash mid-write: the payload's last byte never reached the disk.
        std::fs::OpenOptions::new()
            .write(true)
            .open(seg.path())
            .unwrap()
            .write_all_at(b"\0", torn + HEADER_BYTES as u64 + 6)
            .unwrap();
        let (_, found, end) = scan_all(&seg);
        assert!(matches!(
            found[1],
            Found::Record {
                intact: Some(false),
                ..
            }
        ));
        assert_eq!(end, seg.end, "a valid header's length still skips it");
        seg.tombstone(torn, true).unwrap();
        let (_, found, _) = scan_all(&seg);
        assert_eq!(found[1], Found::Tombstone { offset: torn });
        // A torn header: the scan stops there; once marked, nothing is found there.
        let mut raw = std::fs::OpenOptions::new()
            .write(true)
            .open(seg.path())
            .unwrap();
        raw.write_all_at(&[0xAA; 3], torn + 10).unwrap();
        raw.flush().unwrap();
        let (_, found, end) = scan_all(&seg);
        assert_eq!(found.last(), Some(&Found::TornHeader { offset: torn }));
        assert_eq!(end, torn, "the next record overwrites the torn one");
        seg.tombstone(torn, false).unwrap();
        let (_, found, end) = scan_all(&seg);
        assert_eq!((found.len(), end), (1, torn));
        // A payload longer than the file (its header written, the rest never): torn.
        let mut seg = Segment::create(dir.path(), 1, 4096).unwrap();
        seg.end = 4096 - HEADER_BYTES as u64 - 4;
        let mut long = Segment::open(seg.path(), 1).unwrap();
        long.nonce = seg.nonce;
        long.end = 0;
        let h = Header {
            live: true,
            nonce: seg.nonce,
            seq: 5,
            len: 10_000,
            samples: 1,
            payload_crc: 0,
        };
        long.file.write_all_at(&h.encode(), 0).unwrap();
        let (_, found, _) = scan_all(&long);
        assert!(matches!(
            found[0],
            Found::Record {
                intact: Some(false),
                ..
            }
        ));
    }

    /// A failed append (the sync fails: EIO) erases its record's header, so the next append
    /// overwrites it; when the erase fails too, the segment takes no more records until reused.
    #[test]
    fn a_failed_append_is_erased_or_seals_the_segment() {
        let dir = tempfile::tempdir().unwrap();
        let mut seg = Segment::create(dir.path(), 0, 4096).unwrap();
        seg.append(1, 1, b"[1]").unwrap();
        let end = seg.end;
        seg.fail_syncs.set(1);
        assert!(seg.append(2, 1, b"[2,2]").is_err());
        assert_eq!((seg.end, seg.sealed), (end, false));
        let (_, found, scan_end) = scan_all(&seg);
        assert_eq!((found.len(), scan_end), (1, end), "{found:?}");
        seg.append(2, 1, b"[2]").unwrap();
        // The sync and the erase fail: the record may reach the disk (it is in the page cache
        // here), so nothing more goes after it.
        let end = seg.end;
        seg.fail_syncs.set(1);
        seg.fail_erase.set(true);
        assert!(seg.append(3, 1, b"[3,3]").is_err());
        assert!(seg.sealed && !seg.fits(1));
        assert_eq!(seg.end, end);
        assert_eq!(scan_all(&seg).1.len(), 3);
        assert!(seg.append(4, 1, b"[4]").is_err(), "sealed");
        assert_eq!(scan_all(&seg).1.len(), 3);
        // Reused: the failed record is stale with the old nonce.
        seg.recycle();
        assert!(!seg.sealed);
        seg.append(5, 1, b"[5]").unwrap();
        assert_eq!(scan_all(&seg).1.len(), 1);
    }

    #[test]
    fn segment_names() {
        let dir = Path::new("/s");
        assert_eq!(segment_path(dir, 7), Path::new("/s/0007.seg"));
        assert_eq!(parse_segment_name(&segment_path(dir, 12_345)), Some(12_345));
        assert_eq!(parse_segment_name(Path::new("/s/7.seg")), None);
        assert_eq!(parse_segment_name(Path::new("/s/0007.batch")), None);
        assert_eq!(parse_segment_name(Path::new("/s/00x7.seg")), None);
    }
}
