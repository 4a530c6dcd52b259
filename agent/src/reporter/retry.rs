//! What to do after a failed RPC, and how long to wait before trying again.

use std::time::Duration;

use jsonrpsee::core::client::Error as ClientError;
use rand::Rng;
use vmmon_common::rpc::codes;

/// The agent's decision after an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAction {
    /// Network or collector trouble: keep the batch, reconnect with backoff.
    Reconnect,
    /// The token was refused (unknown, revoked, wrong project): log an error, wait the longest
    /// backoff, try again (an operator may fix the token or the collector's records).
    AuthRefused,
    /// The collector will never accept this batch: drop it, count it, move on.
    DropBatch,
}

/// Maps a client error to a [`RetryAction`].
pub fn classify(err: &ClientError) -> RetryAction {
    match err {
        ClientError::Call(obj) => match obj.code() {
            codes::UNAUTHORIZED | codes::FORBIDDEN => RetryAction::AuthRefused,
            codes::INVALID_BATCH => RetryAction::DropBatch,
            // Not registered on this connection or the store is busy: a fresh session fixes it.
            _ => RetryAction::Reconnect,
        },
        _ => RetryAction::Reconnect,
    }
}

/// Exponential backoff with full jitter (each wait is uniform in `[0, min(cap, base·2^n)]`), so
/// a fleet of agents does not reconnect in lockstep after a collector restart.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff starting at `base` and never exceeding `cap`.
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The ceiling of the next wait (before jitter).
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The next wait; grows the ceiling. Never below 50 ms, so nothing spins.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let ms = rand::thread_rng().gen_range(0..=ceiling.as_millis().max(1) as u64);
        Duration::from_millis(ms.max(50))
    }

    /// The wait after a refused token: the cap, jittered in its upper half.
    pub fn refused_delay(&mut self) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        let cap = self.cap.as_millis().max(2) as u64;
        Duration::from_millis(rand::thread_rng().gen_range(cap / 2..=cap))
    }

    /// Back to the first step after a healthy session.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonrpsee::types::ErrorObjectOwned;

    #[test]
    fn classification_table() {
        let call = |code| ClientError::Call(ErrorObjectOwned::owned(code, "x", None::<()>));
        let table = [
            (call(codes::UNAUTHORIZED), RetryAction::AuthRefused),
            (call(codes::FORBIDDEN), RetryAction::AuthRefused),
            (call(codes::INVALID_BATCH), RetryAction::DropBatch),
            (call(codes::NOT_REGISTERED), RetryAction::Reconnect),
            (call(codes::UNAVAILABLE), RetryAction::Reconnect),
            (call(-32601), RetryAction::Reconnect),
            (ClientError::RequestTimeout, RetryAction::Reconnect),
        ];
        for (err, want) in table {
            assert_eq!(classify(&err), want, "{err:?}");
        }
    }

    #[test]
    fn backoff_grows_to_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let ceilings: Vec<u128> = (0..8)
            .map(|_| {
                let c = b.ceiling().as_millis();
                let d = b.next_delay();
                assert!(d.as_millis() <= c.max(50));
                c
            })
            .collect();
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        b.reset();
        assert_eq!(b.ceiling().as_millis(), 100);
        let r = b.refused_delay();
        assert!(r >= Duration::from_secs(1) && r <= Duration::from_secs(2));
    }
}
