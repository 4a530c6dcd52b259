//! Job locks: work that must run once across every collector sharing a PostgreSQL store (hourly
//! rating, retention, session purge) takes a session-level advisory lock first; a collector that
//! does not get it skips the round (another one is doing it). On SQLite there is one collector
//! per store, so the lock is always granted.

use super::{Result, Store, StoreError};

/// The jobs that run once across collectors; each is its own advisory lock key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    /// Rating periods (`jobs/rating.rs`).
    Rating,
    /// Session purge and raw-sample retention (`jobs/housekeeping.rs`).
    Housekeeping,
}

impl Job {
    /// The advisory lock key ("vmmon" + a job number).
    pub fn key(self) -> i64 {
        0x766d_6d6f_6e00
            + match self {
                Job::Rating => 0x10,
                Job::Housekeeping => 0x11,
            }
    }
}

/// A held job lock; [`JobLock::release`] it when the round is done. Dropped without release, its
/// connection is closed rather than returned to the pool, which also ends the lock.
pub struct JobLock {
    held: Option<(deadpool_postgres::Object, i64)>,
}

impl JobLock {
    /// Releases the lock (its connection goes back to the pool).
    pub async fn release(mut self) {
        if let Some((client, key)) = self.held.take() {
            match client
                .execute("SELECT pg_advisory_unlock($1)", &[&key])
                .await
            {
                Ok(_) => drop(client),
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot release a job lock; closing its connection.");
                    let _ = deadpool_postgres::Object::take(client);
                }
            }
        }
    }
}

impl Drop for JobLock {
    fn drop(&mut self) {
        if let Some((client, _)) = self.held.take() {
            // Detached from the pool: the connection closes, and the server ends the lock.
            let _ = deadpool_postgres::Object::take(client);
        }
    }
}

impl Store {
    /// Tries to take `job`'s lock: `None` when another collector holds it.
    pub async fn try_job_lock(&self, job: Job) -> Result<Option<JobLock>> {
        let Some(pool) = self.pg_pool() else {
            return Ok(Some(JobLock { held: None }));
        };
        let client = pool
            .get()
            .await
            .map_err(|e| StoreError::Pool(e.to_string()))?;
        let key = job.key();
        let got: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
            .await?
            .get(0);
        Ok(got.then_some(JobLock {
            held: Some((client, key)),
        }))
    }
}
