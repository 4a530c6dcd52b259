//! Guards of the login path: password checks on a small pool of their own threads, and growing
//! delays after failed logins per user and per client address.
//!
//! Why: one argon2id check needs a 19 MiB buffer and ~50 ms of a core. Run on the async workers
//! or on tokio's blocking pool without a bound, a flood of wrong passwords makes the collector
//! allocate gigabytes (and glibc keeps freed arena memory per thread). Here at most
//! [`PASSWORD_WORKERS`] checks run at once, on threads that exist for nothing else, behind a
//! queue of [`PASSWORD_QUEUE`]: a request that cannot be checked within its wait answers "busy,
//! retry" instead of piling up.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// Threads that verify passwords.
pub const PASSWORD_WORKERS: usize = 2;
/// Checks waiting for a worker; more are refused at once as busy.
pub const PASSWORD_QUEUE: usize = 32;
/// Longest a login waits for a worker.
pub const PASSWORD_WAIT: Duration = Duration::from_secs(5);

/// The password pool is saturated: the caller should answer "busy, retry".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the collector is busy checking other logins; retry in a few seconds")]
pub struct Busy;

struct Job {
    password: String,
    phc: String,
    deadline: Instant,
    done: oneshot::Sender<bool>,
}

/// Verifies passwords on [`PASSWORD_WORKERS`] dedicated threads.
pub struct PasswordChecker {
    tx: mpsc::SyncSender<Job>,
}

impl Default for PasswordChecker {
    fn default() -> Self {
        Self::new(PASSWORD_WORKERS, PASSWORD_QUEUE)
    }
}

impl PasswordChecker {
    /// A pool of `workers` threads behind a queue of `queue` checks.
    pub fn new(workers: usize, queue: usize) -> PasswordChecker {
        let (tx, rx) = mpsc::sync_channel::<Job>(queue);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..workers.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("vmmon-password-{i}"))
                .spawn(move || {
                    // One argon2 working buffer per thread, reused by every check.
                    let mut blocks = Vec::new();
                    loop {
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = job else { return };
                        // A check whose caller has given up is not worth 50 ms of a core.
                        if Instant::now() > job.deadline || job.done.is_closed() {
                            continue;
                        }
                        let ok = super::verify_password_in(&job.password, &job.phc, &mut blocks);
                        let _ = job.done.send(ok);
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "Cannot start a password-check thread.");
            }
        }
        PasswordChecker { tx }
    }

    /// Whether `password` matches the PHC hash `phc`; [`Busy`] when no worker takes the check
    /// within `wait`.
    pub async fn verify(&self, password: &str, phc: &str, wait: Duration) -> Result<bool, Busy> {
        let (done, answer) = oneshot::channel();
        let job = Job {
            password: password.to_string(),
            phc: phc.to_string(),
            deadline: Instant::now() + wait,
            done,
        };
        self.tx.try_send(job).map_err(|_| Busy)?;
        // The worker answers within `wait` plus one check, or drops the job (expired).
        match tokio::time::timeout(wait + Duration::from_secs(5), answer).await {
            Ok(Ok(ok)) => Ok(ok),
            _ => Err(Busy),
        }
    }
}

/// Failed logins of one user name allowed before its delays start.
pub const FREE_FAILURES: u32 = 5;
/// Failed logins from one client address allowed before its delays start: higher than a user's,
/// because a portal may log many users in from one address.
pub const FREE_ADDR_FAILURES: u32 = 20;
/// Longest delay for one user name (short, so an attacker cannot lock a user out for long).
pub const MAX_USER_DELAY: Duration = Duration::from_secs(60);
/// Longest delay for one client address.
pub const MAX_ADDR_DELAY: Duration = Duration::from_secs(5 * 60);
/// Most keys remembered; expired ones are dropped first, then the oldest.
const MAX_KEYS: usize = 10_000;

/// What a throttle is kept for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ThrottleKey {
    /// A user name as sent (known or not).
    User(String),
    /// A client address.
    Addr(IpAddr),
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    blocked_until: Instant,
    last: Instant,
}

/// Growing delays after failed logins: after [`FREE_FAILURES`] failures of a user name (or
/// [`FREE_ADDR_FAILURES`] from an address) the key waits 1 s, then 2 s, 4 s, … up to its cap
/// ([`MAX_USER_DELAY`], [`MAX_ADDR_DELAY`]); a success clears the user and the address. Attempts during a delay are refused without a password check.
#[derive(Default)]
pub struct LoginThrottle {
    keys: Mutex<HashMap<ThrottleKey, Failures>>,
}

/// A login refused because of earlier failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many failed logins for this user or address; retry in {retry_after_secs} s")]
pub struct Throttled {
    /// Seconds until the next attempt is looked at.
    pub retry_after_secs: u64,
}

impl LoginThrottle {
    /// Refuses when any of `keys` is inside its delay.
    pub fn check(&self, keys: &[ThrottleKey], now: Instant) -> Result<(), Throttled> {
        let Ok(map) = self.keys.lock() else {
            return Ok(());
        };
        let wait = keys
            .iter()
            .filter_map(|k| map.get(k))
            .map(|f| f.blocked_until.saturating_duration_since(now))
            .max()
            .unwrap_or_default();
        if wait.is_zero() {
            Ok(())
        } else {
            Err(Throttled {
                retry_after_secs: wait.as_secs_f64().ceil() as u64,
            })
        }
    }

    /// Counts a failure against each of `keys`.
    pub fn failed(&self, keys: &[ThrottleKey], now: Instant) {
        let Ok(mut map) = self.keys.lock() else {
            return;
        };
        if map.len() >= MAX_KEYS {
            map.retain(|_, f| f.blocked_until > now);
            if map.len() >= MAX_KEYS
                && let Some(oldest) = map
                    .iter()
                    .min_by_key(|(_, f)| f.last)
                    .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        for k in keys {
            let (free, cap) = match k {
                ThrottleKey::User(_) => (FREE_FAILURES, MAX_USER_DELAY),
                ThrottleKey::Addr(_) => (FREE_ADDR_FAILURES, MAX_ADDR_DELAY),
            };
            let f = map.entry(k.clone()).or_insert(Failures {
                count: 0,
                blocked_until: now,
                last: now,
            });
            f.count = f.count.saturating_add(1);
            f.last = now;
            if f.count > free {
                let doublings = (f.count - free - 1).min(20);
                let delay = Duration::from_secs(1u64 << doublings).min(cap);
                f.blocked_until = now + delay;
            }
        }
    }

    /// Clears `keys` after a successful login.
    pub fn succeeded(&self, keys: &[ThrottleKey]) {
        if let Ok(mut map) = self.keys.lock() {
            for k in keys {
                map.remove(k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_per_key_up_to_their_caps_and_success_clears() {
        let t = LoginThrottle::default();
        let t0 = Instant::now();
        let user = ThrottleKey::User("admin".into());
        let addr = ThrottleKey::Addr("192.0.2.1".parse().unwrap());
        let keys = [user.clone(), addr.clone()];
        for _ in 0..FREE_FAILURES {
            assert_eq!(t.check(&keys, t0), Ok(()));
            t.failed(&keys, t0);
        }
        assert_eq!(t.check(&keys, t0), Ok(()), "the free failures cost nothing");
        let wait = |k: &ThrottleKey| match t.check(std::slice::from_ref(k), t0) {
            Ok(()) => 0,
            Err(e) => e.retry_after_secs,
        };
        // (failures so far, the user's delay, the address's delay), in seconds
        for (n, user_delay, addr_delay) in [
            (6, 1, 0),
            (7, 2, 0),
            (8, 4, 0),
            (12, 60, 0),
            (20, 60, 0),
            (21, 60, 1),
            (24, 60, 8),
            (40, 60, 300),
        ] {
            while t.keys.lock().unwrap()[&user].count < n {
                t.failed(&keys, t0);
            }
            assert_eq!(
                (wait(&user), wait(&addr)),
                (user_delay, addr_delay),
                "after {n}"
            );
        }
        let later = t0 + Duration::from_secs(61);
        assert_eq!(t.check(std::slice::from_ref(&user), later), Ok(()));
        assert!(t.check(&keys, later).is_err(), "the address still waits");
        let other = ThrottleKey::User("bob".into());
        assert_eq!(
            t.check(std::slice::from_ref(&other), t0),
            Ok(()),
            "keys are separate"
        );
        t.succeeded(&keys);
        assert_eq!(t.check(&keys, t0), Ok(()));
    }

    #[test]
    fn remembered_keys_are_bounded() {
        let t = LoginThrottle::default();
        let now = Instant::now();
        for i in 0..(MAX_KEYS + 50) {
            t.failed(&[ThrottleKey::User(format!("u{i}"))], now);
        }
        assert!(t.keys.lock().unwrap().len() <= MAX_KEYS);
    }

    #[tokio::test]
    async fn checks_run_on_the_pool_and_a_full_queue_is_busy() {
        let hash = super::super::hash_password("right-password").unwrap();
        let pool = PasswordChecker::new(1, 1);
        assert_eq!(
            pool.verify("right-password", &hash, PASSWORD_WAIT).await,
            Ok(true)
        );
        assert_eq!(pool.verify("wrong", &hash, PASSWORD_WAIT).await, Ok(false));
        // One worker, a queue of one: of many checks sent at once, some are refused as busy
        // and every other one is answered.
        let answers =
            futures::future::join_all((0..8).map(|_| pool.verify("wrong", &hash, PASSWORD_WAIT)))
                .await;
        assert!(answers.contains(&Err(Busy)), "{answers:?}");
        assert!(answers.iter().all(|a| *a == Err(Busy) || *a == Ok(false)));
    }
}
