//! The collector's store, SQLite or PostgreSQL: the only module that holds SQL.
//!
//! Design: one writer thread owns the only write connection. Callers hand it closures through a
//! bounded channel; it runs everything that is waiting in one transaction (a `write` in its own
//! savepoint, so its failure does not undo the others; agent batches, `write_unguarded` and
//! `write_grouped`, without one: their failure rolls back the transaction and every caller in it
//! retries) and answers each caller only after the commit, so an acknowledgement always means
//! "durable". Reads run on a small pool of separate
//! read-only connections on the blocking thread pool; WAL lets them proceed while the writer
//! writes. On SQLite the WAL is checkpointed from a thread of its own (`checkpoint.rs`), not by
//! the writer's commits.

pub mod bandwidth;
pub mod cdn;
mod checkpoint;
pub mod copy;
pub mod db;
pub mod instances;
pub mod locks;
mod migrations;
pub mod notify;
pub mod partitions;
mod pg;
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

use rusqlite::OpenFlags;
use tokio::sync::{mpsc, oneshot};

pub(crate) use db::params;
pub use db::{Connection, NO_PARAMS};

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
    /// PostgreSQL reported an error (or the connection to it failed).
    #[error("database error: {}", pg_message(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// No PostgreSQL connection could be had from the pool.
    #[error("database pool: {0}")]
    Pool(String),
    /// A query that must return a row returned none.
    #[error("query returned no rows")]
    NoRows,
    /// A value did not have the type the code reads it as.
    #[error("column type: {0}")]
    Type(String),
    /// The store location is not usable (e.g. a malformed `postgres://` URL).
    #[error("store location: {0}")]
    Location(String),
}

/// A PostgreSQL error with the server's message and code (tokio-postgres shows only "db error").
fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// An instance and the project (tenant) that owns it. An instance's project never changes
/// (registration from another project's token is refused, `instances::register`), so the
/// project is known wherever the instance is: from its `instances` row, or at ingest from the
/// agent's token.
///
/// On PostgreSQL every instance-keyed table carries the project (the Citus distribution
/// column, `docs/postgres.md`): the store writes it with each row and the queries on one
/// instance's rows carry `project = ?`, so that on Citus they go to one shard. SQLite's tables
/// have no such column (one machine has nothing to distribute, and on a 50M-row store every
/// row would carry the id): the same functions take the key and do not use the project there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceKey<'a> {
    /// The owning project.
    pub project: &'a str,
    /// The instance id.
    pub instance_id: &'a str,
}

/// Result alias for store operations.
pub type Result<T> = std::result::Result<T, StoreError>;

type Completion = Box<dyn FnOnce(Option<&str>) + Send>;
/// A job runs on the writer connection and returns its completion, plus `true` when it failed
/// without a savepoint of its own (the whole transaction must then be rolled back).
type SingleJob = Box<dyn FnOnce(&Connection) -> (Completion, bool) + Send>;
/// Runs the items of one [`GroupedWrite`] kind together: their completions, plus `true` when
/// the group failed (the whole transaction must then be rolled back).
type GroupRunner = fn(&Connection, Vec<Box<dyn std::any::Any + Send>>) -> (Vec<Completion>, bool);

/// What the writer runs: one closure, or one item of a [`GroupedWrite`] kind that it runs
/// together with the items of the same kind queued right after it.
enum Job {
    Single(SingleJob),
    Grouped {
        kind: std::any::TypeId,
        run: GroupRunner,
        item: Box<dyn std::any::Any + Send>,
    },
}

/// A write the store's writer may run together with the other writes of its kind queued in the
/// same transaction: one call for all of them, so that on PostgreSQL their rows go in a few
/// set-based statements (`UNNEST` of arrays) and one round trip instead of a few each. Like
/// [`Store::write_unguarded`], it has no savepoint: an error rolls back the whole transaction
/// and every write in it answers an error (callers retry).
pub trait GroupedWrite: Sized + Send + 'static {
    /// What each write answers.
    type Output: Send + 'static;

    /// Runs `writes` (in arrival order) on the writer connection inside its transaction; one
    /// output per write, in the same order.
    fn run_group(conn: &Connection, writes: Vec<Self>) -> Result<Vec<Self::Output>>;
}

type GroupItem<W> = (W, oneshot::Sender<Result<<W as GroupedWrite>::Output>>);

/// The writer's entry for a [`GroupedWrite`] kind: unpacks the items, runs them, and answers
/// each after the commit.
fn run_grouped<W: GroupedWrite>(
    conn: &Connection,
    items: Vec<Box<dyn std::any::Any + Send>>,
) -> (Vec<Completion>, bool) {
    let mut writes = Vec::with_capacity(items.len());
    let mut senders = Vec::with_capacity(items.len());
    for item in items {
        // The writer groups items by their kind's TypeId, so every item is a GroupItem<W>.
        if let Ok(b) = item.downcast::<GroupItem<W>>() {
            let (w, tx) = *b;
            writes.push(w);
            senders.push(tx);
        }
    }
    let n = senders.len();
    let outputs = W::run_group(conn, writes).and_then(|outs| {
        if outs.len() == n {
            Ok(outs)
        } else {
            Err(StoreError::Commit(format!(
                "a grouped write answered {} of {n} writes",
                outs.len()
            )))
        }
    });
    match outputs {
        Ok(outs) => {
            let done = senders
                .into_iter()
                .zip(outs)
                .map(|(tx, out)| {
                    Box::new(move |commit_err: Option<&str>| {
                        let _ = tx.send(match commit_err {
                            Some(e) => Err(StoreError::Commit(e.to_string())),
                            None => Ok(out),
                        });
                    }) as Completion
                })
                .collect();
            (done, false)
        }
        Err(e) => {
            let msg = e.to_string();
            let mut first = Some(e);
            let done = senders
                .into_iter()
                .map(|tx| {
                    let err = first.take().unwrap_or_else(|| {
                        StoreError::Commit(format!("a write in the same group failed: {msg}"))
                    });
                    Box::new(move |_: Option<&str>| {
                        let _ = tx.send(Err(err));
                    }) as Completion
                })
                .collect();
            (done, true)
        }
    }
}

/// Where the store lives: a SQLite database in a data directory (the embedded default) or a
/// shared PostgreSQL database (`postgres://user:password@host:port/dbname`).
#[derive(Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// The data directory holding `vmmon.sqlite3`.
    Sqlite(PathBuf),
    /// A `postgres://` or `postgresql://` connection URL.
    Postgres(String),
}

impl StoreLocation {
    /// A `postgres://`/`postgresql://` URL is PostgreSQL; anything else is a data directory.
    pub fn parse(s: &str) -> StoreLocation {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            StoreLocation::Postgres(s.to_string())
        } else {
            StoreLocation::Sqlite(PathBuf::from(s))
        }
    }
}

impl std::fmt::Display for StoreLocation {
    /// The location for logs and messages: a URL's password is never shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreLocation::Sqlite(dir) => write!(f, "{}", dir.join(DB_FILE).display()),
            StoreLocation::Postgres(url) => match url::Url::parse(url) {
                Ok(mut u) => {
                    if u.password().is_some() {
                        let _ = u.set_password(Some("***"));
                    }
                    write!(f, "{u}")
                }
                Err(_) => write!(f, "postgres://(malformed URL)"),
            },
        }
    }
}

impl std::fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

enum Backend {
    Sqlite {
        path: PathBuf,
        readers: Mutex<Vec<rusqlite::Connection>>,
    },
    Pg {
        pool: deadpool_postgres::Pool,
        rt: tokio::runtime::Handle,
        shown: String,
        url: String,
    },
}

struct Inner {
    backend: Backend,
    writer: mpsc::Sender<Job>,
    read_slots: Arc<tokio::sync::Semaphore>,
}

impl Store {
    /// Opens (creating if needed) the database in `data_dir`, migrates it and starts the writer
    /// and its checkpoint thread (`checkpoint.rs`).
    pub fn open(data_dir: &Path) -> Result<Store> {
        Self::open_with_wal_limits(data_dir, checkpoint::WalLimits::DEFAULT)
    }

    /// [`Self::open`] with the given checkpoint sizes (tests use small ones).
    pub(crate) fn open_with_wal_limits(
        data_dir: &Path,
        limits: checkpoint::WalLimits,
    ) -> Result<Store> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError::Commit(format!("cannot create {}: {e}", data_dir.display()))
        })?;
        let path = data_dir.join(DB_FILE);
        let mut conn = rusqlite::Connection::open(&path)?;
        configure(&conn)?;
        migrate(&mut conn)?;
        let checkpointer = checkpoint::Checkpointer::start(&path, &conn, limits)?;
        let writer = spawn_writer(Connection::Sqlite(conn), None, Some(checkpointer))?;
        Ok(Store {
            inner: Arc::new(Inner {
                backend: Backend::Sqlite {
                    path,
                    readers: Mutex::new(Vec::new()),
                },
                writer,
                read_slots: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_READS)),
            }),
        })
    }

    /// Opens the store at `location`: [`Self::open`] for a data directory, else connects to
    /// PostgreSQL, migrates its schema (under an advisory lock, so collectors starting together
    /// migrate once) and starts the writer. Must be called inside a tokio runtime.
    pub async fn open_location(location: &StoreLocation) -> Result<Store> {
        match location {
            StoreLocation::Sqlite(dir) => Store::open(dir),
            StoreLocation::Postgres(url) => {
                let pool = pg::pool(url)?;
                let rt = tokio::runtime::Handle::current();
                let first = pool
                    .get()
                    .await
                    .map_err(|e| StoreError::Pool(e.to_string()))?;
                pg::migrate(&first).await?;
                let writer = spawn_writer(
                    Connection::Pg(Box::new(db::PgConn::new(first, rt.clone()))),
                    Some((pool.clone(), rt.clone())),
                    None,
                )?;
                Ok(Store {
                    inner: Arc::new(Inner {
                        backend: Backend::Pg {
                            pool,
                            rt,
                            shown: location.to_string(),
                            url: url.clone(),
                        },
                        writer,
                        read_slots: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_READS)),
                    }),
                })
            }
        }
    }

    /// Path of the SQLite database file; `None` on PostgreSQL.
    pub fn path(&self) -> Option<&Path> {
        match &self.inner.backend {
            Backend::Sqlite { path, .. } => Some(path),
            Backend::Pg { .. } => None,
        }
    }

    /// The store for messages: the SQLite file, or the PostgreSQL URL without its password.
    pub fn describe(&self) -> String {
        match &self.inner.backend {
            Backend::Sqlite { path, .. } => path.display().to_string(),
            Backend::Pg { shown, .. } => shown.clone(),
        }
    }

    /// True when the store is PostgreSQL (shared by several collectors).
    pub fn is_postgres(&self) -> bool {
        matches!(self.inner.backend, Backend::Pg { .. })
    }

    /// The PostgreSQL pool (LISTEN/NOTIFY and advisory locks use their own connections from
    /// it); `None` on SQLite.
    pub fn pg_pool(&self) -> Option<&deadpool_postgres::Pool> {
        match &self.inner.backend {
            Backend::Pg { pool, .. } => Some(pool),
            Backend::Sqlite { .. } => None,
        }
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
        let job: SingleJob = Box::new(move |conn| {
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
            .send(Job::Single(job))
            .await
            .map_err(|_| StoreError::WriterGone)?;
        rx.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Queues `write` for the writer, which runs it together with the writes of its kind
    /// waiting in the same transaction ([`GroupedWrite`]); resolves after the commit.
    pub async fn write_grouped<W: GroupedWrite>(&self, write: W) -> Result<W::Output> {
        let (tx, rx) = oneshot::channel::<Result<W::Output>>();
        let item: GroupItem<W> = (write, tx);
        self.inner
            .writer
            .send(Job::Grouped {
                kind: std::any::TypeId::of::<W>(),
                run: run_grouped::<W>,
                item: Box::new(item),
            })
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
        let pg = match &inner.backend {
            Backend::Pg { pool, rt, .. } => Some(Box::new(db::PgConn::new(
                pool.get()
                    .await
                    .map_err(|e| StoreError::Pool(e.to_string()))?,
                rt.clone(),
            ))),
            Backend::Sqlite { .. } => None,
        };
        tokio::task::spawn_blocking(move || {
            let res = match pg {
                Some(pg) => f(&Connection::Pg(pg)),
                None => {
                    let conn = Connection::Sqlite(inner.take_reader()?);
                    let res = f(&conn);
                    if let Connection::Sqlite(c) = conn {
                        inner.put_reader(c);
                    }
                    res
                }
            };
            drop(permit);
            res
        })
        .await
        .map_err(|e| StoreError::ReadTask(e.to_string()))?
    }
}

impl Inner {
    fn take_reader(&self) -> Result<rusqlite::Connection> {
        let Backend::Sqlite { path, readers } = &self.backend else {
            return Err(StoreError::ReadTask("not a SQLite store".into()));
        };
        if let Some(conn) = readers.lock().ok().and_then(|mut pool| pool.pop()) {
            return Ok(conn);
        }
        let conn = rusqlite::Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(5))?;
        Ok(conn)
    }

    fn put_reader(&self, conn: rusqlite::Connection) {
        if let Backend::Sqlite { readers, .. } = &self.backend
            && let Ok(mut pool) = readers.lock()
            && pool.len() < MAX_IDLE_READERS
        {
            pool.push(conn);
        }
    }
}

type Reconnect = Option<(deadpool_postgres::Pool, tokio::runtime::Handle)>;

fn spawn_writer(
    conn: Connection,
    reconnect: Reconnect,
    checkpointer: Option<checkpoint::Checkpointer>,
) -> Result<mpsc::Sender<Job>> {
    let (tx, rx) = mpsc::channel::<Job>(4096);
    std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || writer_loop(conn, rx, reconnect, checkpointer))
        .map_err(|e| StoreError::Commit(format!("cannot start writer thread: {e}")))?;
    Ok(tx)
}

fn configure(conn: &rusqlite::Connection) -> Result<()> {
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
    conn.pragma_update(None, "journal_size_limit", checkpoint::WAL_FILE_KEPT_BYTES)?;
    Ok(())
}

fn migrate(conn: &mut rusqlite::Connection) -> Result<()> {
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
        (Ok(_), Err(e)) => Err(e),
    }
}

fn writer_loop(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Job>,
    reconnect: Reconnect,
    mut checkpointer: Option<checkpoint::Checkpointer>,
) {
    let begin_sql = if conn.is_pg() {
        "BEGIN"
    } else {
        "BEGIN IMMEDIATE"
    };
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
        if let (Connection::Pg(pg), Some((pool, rt))) = (&conn, &reconnect)
            && pg.is_closed()
        {
            // The server connection went away (a restart or failover): take a fresh one.
            match rt.block_on(pool.get()) {
                Ok(fresh) => conn = Connection::Pg(Box::new(db::PgConn::new(fresh, rt.clone()))),
                Err(e) => tracing::error!(error = %e, "Store writer cannot reconnect."),
            }
        }
        let begin = conn.execute_batch(begin_sql);
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
        let mut queued = jobs.drain(..).peekable();
        while let Some(job) = queued.next() {
            match job {
                Job::Single(job) => {
                    let (done, poisons) = job(&conn);
                    poisoned |= poisons;
                    completions.push(done);
                }
                Job::Grouped { kind, run, item } => {
                    // The items of this kind queued right after it run with it (arrival order
                    // is kept: a job of another kind ends the group).
                    let mut items = vec![item];
                    while let Some(Job::Grouped { kind: next, .. }) = queued.peek() {
                        if *next != kind {
                            break;
                        }
                        if let Some(Job::Grouped { item, .. }) = queued.next() {
                            items.push(item);
                        }
                    }
                    let (done, poisons) = run(&conn, items);
                    poisoned |= poisons;
                    completions.extend(done);
                }
            }
        }
        drop(queued);
        // A queued PostgreSQL write that failed aborted the transaction, whichever job's
        // statement reported it: nothing in it may be reported committed.
        poisoned |= conn.take_deferred_failure();
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
        // After the answers: a checkpoint by the writer delays its next transaction, not these.
        if let (None, Some(checkpointer), Connection::Sqlite(c)) = (&err, &mut checkpointer, &conn)
        {
            checkpointer.after_commit(c);
        }
    }
    tracing::debug!("Store writer stopped.");
}

pub use vmmon_common::vocab::now_ms;

/// The PostgreSQL database's size in bytes (`pg_database_size`); `None` on SQLite, whose size is
/// its files'.
pub fn database_size(conn: &Connection) -> Result<Option<u64>> {
    if !conn.is_pg() {
        return Ok(None);
    }
    let n: i64 = conn.query_row(
        "SELECT pg_database_size(current_database())",
        params![],
        |r| r.get(0),
    )?;
    Ok(Some(u64::try_from(n).unwrap_or(0)))
}

/// A trivial query: proves a read connection works (the health check).
pub fn ping(conn: &Connection) -> Result<()> {
    conn.query_row("SELECT 1", params![], |r| r.get::<_, i64>(0))?;
    Ok(())
}

#[cfg(test)]
mod tenant_tests;
#[cfg(test)]
pub mod testing;
#[cfg(test)]
mod tests;
