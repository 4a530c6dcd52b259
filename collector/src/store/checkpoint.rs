//! SQLite WAL checkpoints off the writer thread.
//!
//! A checkpoint copies the pages committed to the write-ahead log back into the database file
//! and, with `synchronous=NORMAL`, fsyncs both files. SQLite's automatic checkpoint runs it on
//! the committing connection every 1,000 WAL pages, so the store's one writer (and every agent
//! waiting for its acknowledgement) waits for the disk each time. Measured with `cargo bench
//! --bench ingest` (1,000 agents, 1.01 M rows, 2 cores): the writer spent 1.5 s of a 4.0 s run
//! committing, 0.5 s with checkpoints turned off (docs/benchmarks.md §2).
//!
//! So the writer's connection has no automatic checkpoint. A second connection on its own thread
//! (`store-checkpoint`) runs PASSIVE checkpoints, woken by the writer each time the WAL has grown
//! by [`WalLimits::background_frames`] pages: the disk flush overlaps the writer's next
//! transactions. A PASSIVE checkpoint never blocks the writer or readers; it backfills what no
//! reader still needs.
//!
//! The WAL starts over from its beginning only when a write transaction begins while every frame
//! is backfilled; under steady ingest the background pass rarely wins that race, so the writer
//! keeps the bound itself: once the WAL holds [`WalLimits::writer_frames`] pages it checkpoints
//! after its commit (only the remainder since the last background pass is left to copy) and its
//! next transaction restarts the log. Durability is unchanged: a commit is in the WAL, durable
//! across a process crash, before any caller is answered; the checkpoint is what makes it
//! durable across power loss, as before.

use std::cell::Cell;
use std::ffi::c_int;
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

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
    /// checkpoints costs it 20 – 70 ms of fsyncs however little is left to copy, so the bound is
    /// set by how often a burst may pay that: ingest bench real / floor 0.47 – 0.49 with 8,000,
    /// 0.51 with 16,000, 0.51 – 0.56 with 32,000 (docs/benchmarks.md §2). At a steady fleet's
    /// rate the background pass catches up between transactions and the log restarts without
    /// the writer's checkpoint; after a burst the file is cut back to [`WAL_FILE_KEPT_BYTES`].
    pub(crate) const DEFAULT: WalLimits = WalLimits {
        background_frames: 1_000,
        writer_frames: 32_000,
    };
}

/// Size the WAL file is cut back to when the log restarts (`PRAGMA journal_size_limit`): SQLite
/// reuses the file rather than truncating it, so without a limit it keeps its largest size.
pub(super) const WAL_FILE_KEPT_BYTES: i64 = 32 << 20;

thread_local! {
    /// Pages in the WAL after this thread's last commit (SQLite's `sqlite3_wal_hook`). Each
    /// store's writer commits on a thread of its own, so the writer reads its own figure.
    static WAL_FRAMES: Cell<u32> = const { Cell::new(0) };
}

fn record_wal_frames(_: &Wal, frames: c_int) -> rusqlite::Result<()> {
    WAL_FRAMES.set(u32::try_from(frames).unwrap_or(0));
    Ok(())
}

/// The writer's side: turns off the writer connection's automatic checkpoint and decides, after
/// each commit, whether to wake the background pass or checkpoint itself.
pub(super) struct Checkpointer {
    limits: WalLimits,
    wake: SyncSender<()>,
    /// WAL pages at the last wake (0 after the log restarted).
    woken_at: u32,
}

impl Checkpointer {
    /// Starts the `store-checkpoint` thread with its own connection to `path` and hooks
    /// `writer`'s commits (replacing its automatic checkpoint).
    ///
    /// Errors: the second connection cannot be opened or the thread cannot start.
    pub(super) fn start(
        path: &Path,
        writer: &rusqlite::Connection,
        limits: WalLimits,
    ) -> Result<Checkpointer> {
        let conn = rusqlite::Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // As on the writer's connection (`configure`): one durability setting per store.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // One pending wake is enough: a pass backfills everything committed before it starts.
        let (wake, woken) = sync_channel::<()>(1);
        std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || run_passes(&conn, &woken))
            .map_err(|e| {
                super::StoreError::Commit(format!("cannot start checkpoint thread: {e}"))
            })?;
        // Installing a WAL hook replaces SQLite's automatic checkpoint on this connection.
        writer.wal_hook(Some(record_wal_frames));
        Ok(Checkpointer {
            limits,
            wake,
            woken_at: 0,
        })
    }

    /// Call on the writer thread after each successful commit on the hooked connection.
    pub(super) fn after_commit(&mut self, writer: &rusqlite::Connection) {
        let frames = WAL_FRAMES.get();
        if frames < self.woken_at {
            self.woken_at = 0; // the log started over
        }
        if frames >= self.limits.writer_frames {
            // The remainder since the last background pass; returns SQLITE_BUSY at once (and the
            // next commit tries again) while that pass holds the checkpoint lock.
            if let Err(e) = passive_checkpoint(writer) {
                tracing::debug!(error = %e, frames, "Writer's WAL checkpoint did not run.");
            }
        } else if frames - self.woken_at >= self.limits.background_frames {
            match self.wake.try_send(()) {
                Ok(()) | Err(TrySendError::Full(())) => self.woken_at = frames,
                Err(TrySendError::Disconnected(())) => {
                    // The pass thread is gone (it only ends with the writer); the writer's
                    // bound above still keeps the log from growing without end.
                    tracing::warn!("Store checkpoint thread has stopped.");
                    self.woken_at = frames;
                }
            }
        }
    }
}

/// `PRAGMA wal_checkpoint(PASSIVE)`: (SQLITE_BUSY flag, pages in the WAL, pages backfilled).
fn passive_checkpoint(conn: &rusqlite::Connection) -> rusqlite::Result<(i64, i64, i64)> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })
}

/// The background thread: a PASSIVE checkpoint per wake, until the writer drops its end.
fn run_passes(conn: &rusqlite::Connection, woken: &Receiver<()>) {
    while woken.recv().is_ok() {
        match passive_checkpoint(conn) {
            Ok((busy, log, backfilled)) => {
                tracing::trace!(busy, log, backfilled, "WAL checkpoint pass.");
            }
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint pass failed."),
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
        let n: i64 = store
            .read(|c| c.query_row("SELECT COUNT(*) FROM filler", params![], |r| r.get(0)))
            .await
            .unwrap();
        assert_eq!(n, 200);
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
        // The bound plus one transaction's pages (the commit that crossed it; ~25 here).
        assert!(
            wal <= frames_bytes(100 + 40),
            "WAL is {wal} bytes, more than the bound of 100 pages allows"
        );
        let n: i64 = store
            .read(|c| c.query_row("SELECT COUNT(*) FROM filler", params![], |r| r.get(0)))
            .await
            .unwrap();
        assert_eq!(n, 1000);
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
        // While a background pass holds the checkpoint lock the writer's own checkpoint is
        // skipped, so the log may outgrow the bound by what commits during one pass; it must
        // not keep growing with what was written (~2,000 pages).
        assert!(
            largest <= frames_bytes(1_000),
            "WAL reached {largest} bytes for a bound of 100 pages"
        );
    }
}
