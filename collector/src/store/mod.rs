//! The collector's SQLite store: the only module that holds SQL.
//!
//! Design: one writer thread owns the only write connection. Callers hand it closures through a
//! bounded channel; it runs everything that is waiting in one transaction (each closure in its own
//! savepoint, so one failure does not undo the others) and answers each caller only after the
//! commit, so an acknowledgement always means "durable". Reads run on a small pool of separate
//! read-only connections on the blocking thread pool; WAL lets them proceed while the writer
//! writes.

pub mod bandwidth;
pub mod cdn;
pub mod instances;
mod migrations;
pub mod rating;
pub mod samples;
pub mod series;
pub mod users;

pub use instances::{InstanceRow, RegisterOutcome};
pub use samples::{ProcessRow, VmRow};
pub use users::{AgentTokenRow, SessionUser, UserRow};

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::{mpsc, oneshot};

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "vmmon.sqlite3";
/// Most write jobs one transaction takes before committing.
const MAX_JOBS_PER_TX: usize = 512;
/// Read connections kept open for reuse.
const MAX_IDLE_READERS: usize = 8;
/// Reads running at once (each holds a blocking-pool thread and a connection with its own page
/// cache); more wait their turn, so a burst of requests cannot multiply threads and memory.
pub const MAX_CONCURRENT_READS: usize = 8;

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite reported an error.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The transaction holding this write could not commit.
    #[error("commit failed: {0}")]
    Commit(String),
    /// The writer thread has stopped.
    #[error("store writer has stopped")]
    WriterGone,
    /// A blocking read task failed.
    #[error("read task failed: {0}")]
    ReadTask(String),
    /// The schema on disk is newer than this binary knows.
    #[error("database schema version {found} is newer than supported version {supported}")]
    SchemaTooNew {
        /// Version on disk.
        found: usize,
        /// Newest version this binary knows.
        supported: usize,
    },
    /// Stored data that does not parse (e.g. a JSON column).
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
}

/// Result alias for store operations.
pub type Result<T> = std::result::Result<T, StoreError>;

type Completion = Box<dyn FnOnce(Option<&str>) + Send>;
/// A job runs on the writer connection and returns its completion, plus `true` when it failed
/// without a savepoint of its own (the whole transaction must then be rolled back).
type Job = Box<dyn FnOnce(&Connection) -> (Completion, bool) + Send>;

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: mpsc::Sender<Job>,
    readers: Mutex<Vec<Connection>>,
    read_slots: Arc<tokio::sync::Semaphore>,
}

impl Store {
    /// Opens (creating if needed) the database in `data_dir`, migrates it and starts the writer.
    pub fn open(data_dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError::Commit(format!("cannot create {}: {e}", data_dir.display()))
        })?;
        let path = data_dir.join(DB_FILE);
        let mut conn = Connection::open(&path)?;
        configure(&conn)?;
        migrate(&mut conn)?;
        let (tx, rx) = mpsc::channel::<Job>(4096);
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(conn, rx))
            .map_err(|e| StoreError::Commit(format!("cannot start writer thread: {e}")))?;
        Ok(Store {
            inner: Arc::new(Inner {
                path,
                writer: tx,
                readers: Mutex::new(Vec::new()),
                read_slots: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_READS)),
            }),
        })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` on the writer connection inside the current batch transaction; resolves after the
    /// commit. An `Err` from `f` rolls back only `f`'s own changes.
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        self.submit(f, true).await
    }

    /// Like [`Self::write`] but without a savepoint of its own, for hot, idempotent writes whose
    /// callers retry (agent batches): a failure rolls back the whole batch transaction and every
    /// write in it answers an error. Savepoints copy each page they touch into a sub-journal,
    /// which costs ingest about a tenth of its throughput.
    pub async fn write_unguarded<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        self.submit(f, false).await
    }

    async fn submit<T, F>(&self, f: F, guarded: bool) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<Result<T>>();
        let job: Job = Box::new(move |conn| {
            let res = if guarded {
                run_in_savepoint(conn, f)
            } else {
                f(conn)
            };
            let poisons = !guarded && res.is_err();
            let done: Completion = Box::new(move |commit_err: Option<&str>| {
                let out = match (commit_err, res) {
                    // Our own error says more than the rollback it caused.
                    (Some(_), Err(e)) => Err(e),
                    (Some(e), Ok(_)) => Err(StoreError::Commit(e.to_string())),
                    (None, res) => res,
                };
                let _ = tx.send(out);
            });
            (done, poisons)
        });
        self.inner
            .writer
            .send(job)
            .await
            .map_err(|_| StoreError::WriterGone)?;
        rx.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Runs `f` on a read connection on the blocking pool.
    pub async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        let permit = inner
            .read_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| StoreError::ReadTask(e.to_string()))?;
        tokio::task::spawn_blocking(move || {
            let conn = inner.take_reader()?;
            let res = f(&conn);
            inner.put_reader(conn);
            drop(permit);
            res
        })
        .await
        .map_err(|e| StoreError::ReadTask(e.to_string()))?
    }
}

impl Inner {
    fn take_reader(&self) -> Result<Connection> {
        if let Some(conn) = self.readers.lock().ok().and_then(|mut pool| pool.pop()) {
            return Ok(conn);
        }
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(5))?;
        Ok(conn)
    }

    fn put_reader(&self, conn: Connection) {
        if let Ok(mut pool) = self.readers.lock()
            && pool.len() < MAX_IDLE_READERS
        {
            pool.push(conn);
        }
    }
}

fn configure(conn: &Connection) -> Result<()> {
    conn.busy_timeout(Duration::from_secs(5))?;
    // WAL: readers never block the writer; NORMAL sync is durable across process crashes
    // (SIGKILL), which is the failure the agents' resend protocol relies on.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Ingest touches more distinct statements per batch (samples, dedup, rollups, inventory) than
    // rusqlite's default cache of 16 holds; a thrashing cache re-prepares them on every batch.
    conn.set_prepared_statement_cache_capacity(128);
    // A bigger page cache keeps the hot index pages of large tables in memory (64 MiB).
    conn.pragma_update(None, "cache_size", -65_536)?;
    Ok(())
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let current: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let supported = migrations::MIGRATIONS.len();
    if current > supported {
        return Err(StoreError::SchemaTooNew {
            found: current,
            supported,
        });
    }
    for (version, sql) in migrations::MIGRATIONS.iter().enumerate().skip(current) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version + 1)?;
        tx.commit()?;
        tracing::info!(version = version + 1, "Migrated store schema.");
    }
    Ok(())
}

fn run_in_savepoint<T>(conn: &Connection, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
    conn.execute_batch("SAVEPOINT job")?;
    let res = f(conn);
    let end = if res.is_ok() {
        conn.execute_batch("RELEASE job")
    } else {
        conn.execute_batch("ROLLBACK TO job; RELEASE job")
    };
    match (res, end) {
        (Ok(v), Ok(())) => Ok(v),
        (Err(e), _) => Err(e),
        (Ok(_), Err(e)) => Err(e.into()),
    }
}

fn writer_loop(conn: Connection, mut rx: mpsc::Receiver<Job>) {
    let mut jobs: Vec<Job> = Vec::with_capacity(MAX_JOBS_PER_TX);
    while let Some(first) = rx.blocking_recv() {
        jobs.push(first);
        while jobs.len() < MAX_JOBS_PER_TX {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let mut completions: Vec<Completion> = Vec::with_capacity(jobs.len());
        let begin = conn.execute_batch("BEGIN IMMEDIATE");
        if let Err(e) = begin {
            let msg = e.to_string();
            tracing::error!(error = %msg, "Store writer cannot begin a transaction.");
            for job in jobs.drain(..) {
                // The job never ran; report the failure without running it.
                drop(job);
            }
            continue;
        }
        let mut poisoned = false;
        for job in jobs.drain(..) {
            let (done, poisons) = job(&conn);
            poisoned |= poisons;
            completions.push(done);
        }
        if poisoned {
            tracing::warn!("An unguarded write failed; rolling back its whole batch transaction.");
            let _ = conn.execute_batch("ROLLBACK");
            for done in completions {
                done(Some("a write in the same transaction failed; retry"));
            }
            continue;
        }
        let commit = conn.execute_batch("COMMIT");
        let err = match commit {
            Ok(()) => None,
            Err(e) => {
                let msg = e.to_string();
                tracing::error!(error = %msg, "Store commit failed.");
                let _ = conn.execute_batch("ROLLBACK");
                Some(msg)
            }
        };
        for done in completions {
            done(err.as_deref());
        }
    }
    tracing::debug!("Store writer stopped.");
}

pub use vmmon_common::vocab::now_ms;

/// A trivial query: proves a read connection works (the health check).
pub fn ping(conn: &Connection) -> Result<()> {
    conn.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?;
    Ok(())
}

#[cfg(test)]
mod tests;
