//! SQLite WAL checkpoints off the writer thread.
//!
//! A checkpoint copies the pages committed to the write-ahead log back into the database file.
//! With `synchronous=NORMAL` it fsyncs the WAL before copying, and the database file once it has
//! copied the whole log (which must be on disk before the log can start over). SQLite's automatic
//! checkpoint runs it on the committing connection every 1,000 WAL pages, so the store's one
//! writer (and every agent waiting for its acknowledgement) waits for the disk each time.
//! Measured with `cargo bench --bench ingest` (1,000 agents, 1.01 M rows, 2 cores): the writer
//! spent 1.5 s of a 4.0 s run committing, 0.5 s with checkpoints turned off
//! (docs/benchmarks.md §2).
//!
//! So the writer's connection has no automatic checkpoint (a WAL hook replaces it; running
//! `PRAGMA wal_autocheckpoint` on that connection would silently undo this). A second
//! connection on its own thread (`store-checkpoint`) runs PASSIVE checkpoints, woken by the
//! writer each time the WAL has grown by [`WalLimits::background_frames`] pages: the disk flush
//! overlaps the writer's next transactions. A PASSIVE checkpoint never blocks the writer or
//! readers; it copies what no reader still needs. A pass that stops short of the live end of the
//! log leaves the database file unsynced (SQLite syncs it only once the whole log is copied), so
//! the thread then syncs that file itself: the sync the restart below needs is mostly done by
//! the time it is needed.
//!
//! The WAL starts over from its beginning only when a write transaction begins while every frame
//! is copied and no reader still reads from the log; under steady ingest the background pass
//! rarely wins that race, so the writer keeps the bound itself: once the WAL holds
//! [`WalLimits::writer_frames`] pages it checkpoints after its commit (waiting for a running
//! background pass first, so the bound holds; only the remainder is left to copy) and its next
//! transaction restarts the log. The bound is exceeded only while a reader holds an old snapshot
//! or another process checkpoints the same file. Durability is unchanged: a commit is in the
//! WAL, durable across a process crash, before any caller is answered; the checkpoint is what
//! makes it durable across power loss, as before.

use std::cell::Cell;
use std::ffi::c_int;
use std::fs::File;
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

use rusqlite::OpenFlags;
use rusqlite::hooks::Wal;

use super::Result;

/// When checkpoints run, in WAL pages (frames) of the database's page size (4 KiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WalLimits {
    /// WAL growth since the last wake that wakes the background checkpoint.
    pub background_frames: u32,
    /// WAL size at which the writer checkpoints after its commit, bounding the log.
    pub writer_frames: u32,
}

impl WalLimits {
    /// The store's limits: a background pass per 1,000 pages (SQLite's own automatic-checkpoint
    /// size); the writer's own checkpoint past 32,000 (a WAL of ~128 MiB). Each of the writer's
    /// checkpoints costs it tens of milliseconds of fsyncs however little is left to copy, so the
    /// bound is set by how often a burst may pay that: ingest bench real / floor 0.50 with
    /// 8,000, 0.53 – 0.54 with 32,000 (docs/benchmarks.md §2). At a steady fleet's rate the
    /// background pass catches up between transactions and the log restarts without the
    /// writer's checkpoint; after a burst the file is cut back to [`WAL_FILE_KEPT_BYTES`].
    pub(crate) const DEFAULT: WalLimits = WalLimits {
        background_frames: 1_000,
        writer_frames: 32_000,
    };
}

/// Size the WAL file is cut back to when the log restarts (`PRAGMA journal_size_limit`): SQLite
/// reuses the file rather than truncating it, so without a limit it keeps its largest size.
pub(super) const WAL_FILE_KEPT_BYTES: i64 = 32 << 20;

thread_local! {
    /// Pages in the WAL after this thread's last commit that wrote any (SQLite's
    /// `sqlite3_wal_hook`), taken by the next [`Checkpointer::after_commit`]. Each store's writer
    /// commits on a thread of its own, so the writer reads its own figure.
    static WAL_FRAMES: Cell<Option<u32>> = const { Cell::new(None) };
}

fn record_wal_frames(_: &Wal, frames: c_int) -> rusqlite::Result<()> {
    WAL_FRAMES.set(Some(u32::try_from(frames).unwrap_or(0)));
    Ok(())
}

/// The writer's side: turns off the writer connection's automatic checkpoint and decides, after
/// each commit, whether to wake the background pass or checkpoint itself.
pub(super) struct Checkpointer {
    limits: WalLimits,
    /// `None` once the pass thread is gone (it only ends with the writer, or by a panic).
    wake: Option<SyncSender<()>>,
    /// Held by whichever checkpoint runs: the writer waits for a running pass at its bound
    /// (SQLite would answer a second checkpoint SQLITE_BUSY and leave the log growing).
    running: Arc<Mutex<()>>,
    /// WAL pages at the last wake (0 after the log restarted).
    woken_at: u32,
}

impl Checkpointer {
    /// Starts the `store-checkpoint` thread with its own connection to `path` and hooks
    /// `writer`'s commits (replacing its automatic checkpoint).
    ///
    /// Errors: the second connection or the database file cannot be opened, or the thread
    /// cannot start.
    pub(super) fn start(
        path: &Path,
        writer: &rusqlite::Connection,
        limits: WalLimits,
    ) -> Result<Checkpointer> {
        let conn = rusqlite::Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        let db_file = File::open(path).map_err(|e| {
            super::StoreError::Commit(format!("cannot open {}: {e}", path.display()))
        })?;
        // One pending wake is enough: a pass copies everything committed before it starts.
        let (wake, woken) = sync_channel::<()>(1);
        let running = Arc::new(Mutex::new(()));
        let pass = Pass {
            conn,
            db_file,
            running: running.clone(),
        };
        std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || pass.run(&woken))
            .map_err(|e| {
                super::StoreError::Commit(format!("cannot start checkpoint thread: {e}"))
            })?;
        // Installing a WAL hook replaces SQLite's automatic checkpoint on this connection.
        writer.wal_hook(Some(record_wal_frames));
        Ok(Checkpointer {
            limits,
            wake: Some(wake),
            running,
            woken_at: 0,
        })
    }

    /// Call on the writer thread after each successful commit on the hooked connection.
    pub(super) fn after_commit(&mut self, writer: &rusqlite::Connection) {
        let Some(frames) = WAL_FRAMES.take() else {
            return; // the commit wrote nothing
        };
        if frames < self.woken_at {
            self.woken_at = 0; // the log started over
        }
        if frames >= self.limits.writer_frames {
            // A poisoned lock only means a pass panicked; the checkpoint is still sound.
            let _turn = self.running.lock().unwrap_or_else(|e| e.into_inner());
            match passive_checkpoint(writer) {
                Ok(outcome) => tracing::debug!(?outcome, "Writer's WAL checkpoint."),
                Err(e) => tracing::warn!(error = %e, frames, "Writer's WAL checkpoint failed."),
            }
        } else if frames - self.woken_at >= self.limits.background_frames {
            self.woken_at = frames;
            if let Some(wake) = &self.wake
                && let Err(TrySendError::Disconnected(())) = wake.try_send(())
            {
                // The writer's bound above still keeps the log from growing without end.
                tracing::warn!("Store checkpoint thread has stopped.");
                self.wake = None;
            }
        }
    }
}

/// What `PRAGMA wal_checkpoint` answers: SQLITE_BUSY (another checkpoint held the lock; the
/// pragma reports it in this row, not as an error), pages in the WAL, pages copied.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    busy: bool,
    log: i64,
    copied: i64,
}

/// `PRAGMA wal_checkpoint(PASSIVE)`.
fn passive_checkpoint(conn: &rusqlite::Connection) -> rusqlite::Result<Outcome> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok(Outcome {
            busy: r.get::<_, i64>(0)? != 0,
            log: r.get(1)?,
            copied: r.get(2)?,
        })
    })
}

/// The background thread's connection and the database file it syncs.
struct Pass {
    conn: rusqlite::Connection,
    db_file: File,
    running: Arc<Mutex<()>>,
}

impl Pass {
    /// A PASSIVE checkpoint per wake, until the writer drops its end.
    fn run(self, woken: &Receiver<()>) {
        while woken.recv().is_ok() {
            let _turn = self.running.lock().unwrap_or_else(|e| e.into_inner());
            match passive_checkpoint(&self.conn) {
                Ok(outcome) => {
                    tracing::trace!(?outcome, "WAL checkpoint pass.");
                    if !outcome.busy && outcome.copied < outcome.log {
                        // Short of the log's end SQLite leaves the copied pages unsynced.
                        if let Err(e) = self.db_file.sync_data() {
                            tracing::warn!(error = %e, "Syncing the database file failed.");
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "WAL checkpoint pass failed."),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::store::{DB_FILE, Store, params};

    /// Commits `txs` transactions of `rows` rows of 2 KiB each (about one WAL page a row).
    async fn write_pages(store: &Store, txs: usize, rows: usize) {
        store
            .write(|c| c.execute_batch("CREATE TABLE IF NOT EXISTS filler (x BLOB)"))
            .await
            .unwrap();
        for _ in 0..txs {
            store
                .write(move |c| {
                    for _ in 0..rows {
                        c.execute("INSERT INTO filler VALUES (randomblob(2048))", params![])?;
                    }
                    Ok(())
                })
                .await
                .unwrap();
        }
    }

    async fn filler_rows(store: &Store) -> i64 {
        store
            .read(|c| c.query_row("SELECT COUNT(*) FROM filler", params![], |r| r.get(0)))
            .await
            .unwrap()
    }

    fn wal_bytes(dir: &Path) -> u64 {
        std::fs::metadata(dir.join(format!("{DB_FILE}-wal")))
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// WAL file size of `frames` pages of 4 KiB (each frame has a 24-byte header).
    fn frames_bytes(frames: u32) -> u64 {
        32 + u64::from(frames) * (4096 + 24)
    }

    #[tokio::test]
    async fn background_pass_copies_the_wal_into_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let limits = WalLimits {
            background_frames: 50,
            writer_frames: 100_000,
        };
        let store = Store::open_with_wal_limits(dir.path(), limits).unwrap();
        let db = dir.path().join(DB_FILE);
        let before = std::fs::metadata(&db).unwrap().len();
        // ~200 pages committed: far below the writer's bound, so only the background pass
        // (there is no automatic checkpoint) can grow the database file.
        write_pages(&store, 20, 10).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let now = std::fs::metadata(&db).unwrap().len();
            if now >= before + 150 * 4096 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "database file still {now} bytes (was {before}): no background checkpoint"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Everything committed is readable, through the checkpointed file and the log.
        assert_eq!(filler_rows(&store).await, 200);
    }

    #[tokio::test]
    async fn the_writer_bounds_the_wal_without_the_background_pass() {
        let dir = tempfile::tempdir().unwrap();
        // The background pass never woken: only the writer's bound keeps the log in check.
        let limits = WalLimits {
            background_frames: u32::MAX,
            writer_frames: 100,
        };
        let store = Store::open_with_wal_limits(dir.path(), limits).unwrap();
        write_pages(&store, 100, 10).await; // ~1,000 pages, ten times the bound
        let wal = wal_bytes(dir.path());
        // The bound plus one transaction's pages (the commit that crossed it; ~12 here).
        assert!(
            wal <= frames_bytes(100 + 40),
            "WAL is {wal} bytes, more than the bound of 100 pages allows"
        );
        assert_eq!(filler_rows(&store).await, 1000);
    }

    #[tokio::test]
    async fn steady_writes_keep_the_wal_bounded_with_both_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let limits = WalLimits {
            background_frames: 20,
            writer_frames: 100,
        };
        let store = Store::open_with_wal_limits(dir.path(), limits).unwrap();
        let mut largest = 0;
        for _ in 0..10 {
            write_pages(&store, 20, 10).await;
            largest = largest.max(wal_bytes(dir.path()));
        }
        // The writer waits for a running pass at its bound, so the log restarts after the
        // commit that crossed it; a pass still copying when the next transaction begins can put
        // the restart off by a transaction or two. It must not grow with what was written
        // (~2,400 pages; ~2,600 when the writer's own checkpoint is left out).
        assert!(
            largest <= frames_bytes(300),
            "WAL reached {largest} bytes for a bound of 100 pages"
        );
    }
}
