//! Commands across collectors sharing a PostgreSQL store: an operator's `startmonitor`,
//! `stopmonitor` or `setinterval` may reach collector B while the agent is connected to
//! collector A. B persists the desired state (as always), then, the agent not being connected to
//! B, sends a `push` notification on [`CHANNEL`]; the collector that has the agent connected
//! pushes the command over its subscription and answers with a `result` notification naming the
//! outcome, which B returns as if the agent were its own (confirmed, or silent). No answer within
//! the command timeout (plus [`ANSWER_MARGIN`]) means no collector has the agent: queued, like
//! a local agent that is not connected (it gets the persisted state when it connects).
//!
//! On SQLite there is one collector per store, and nothing is relayed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use vmmon_common::wire::DesiredState;

use crate::hub::PushOutcome;
use crate::store::{Store, StoreError};

/// The notification channel of command relays.
pub const CHANNEL: &str = "vmmon_commands";
/// How much longer than the command timeout a relaying collector waits for the answer (the
/// owner's own wait, plus the notification round trip).
pub const ANSWER_MARGIN: Duration = Duration::from_secs(2);

/// One notification on [`CHANNEL`], JSON with an `op` tag.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Message {
    /// A collector asks whichever has `instance`'s agent to push `state` to it.
    Push {
        req: String,
        from: String,
        instance: String,
        state: DesiredState,
        timeout_ms: u64,
    },
    /// The owner's answer to `to`'s request `req`: acked or timed out.
    Result {
        req: String,
        to: String,
        acked: bool,
    },
}

/// This collector's side of the relay: its id and the relayed commands awaiting an answer.
pub struct Relay {
    id: String,
    waiting: Mutex<HashMap<String, oneshot::Sender<bool>>>,
}

impl Default for Relay {
    fn default() -> Self {
        Relay {
            id: uuid::Uuid::new_v4().to_string(),
            waiting: Mutex::new(HashMap::new()),
        }
    }
}

impl Relay {
    /// Asks the other collectors to push `state` to `instance_id`'s agent: `Acked` or
    /// `TimedOut` from the collector that has it, `NotConnected` when none answers.
    pub async fn push(
        &self,
        store: &Store,
        instance_id: &str,
        state: DesiredState,
        timeout: Duration,
    ) -> PushOutcome {
        if !store.is_postgres() {
            return PushOutcome::NotConnected;
        }
        let req = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = oneshot::channel();
        if let Ok(mut w) = self.waiting.lock() {
            w.insert(req.clone(), tx);
        }
        let msg = Message::Push {
            req: req.clone(),
            from: self.id.clone(),
            instance: instance_id.to_string(),
            state,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        };
        let sent = match serde_json::to_string(&msg) {
            Ok(payload) => store.notify(CHANNEL, &payload).await,
            Err(e) => Err(StoreError::Corrupt(e.to_string())),
        };
        let outcome = match sent {
            Err(e) => {
                tracing::warn!(error = %e, instance_id, "Cannot relay a command.");
                PushOutcome::NotConnected
            }
            Ok(()) => match tokio::time::timeout(timeout + ANSWER_MARGIN, rx).await {
                Ok(Ok(true)) => PushOutcome::Acked,
                Ok(Ok(false)) => PushOutcome::TimedOut,
                _ => PushOutcome::NotConnected,
            },
        };
        if let Ok(mut w) = self.waiting.lock() {
            w.remove(&req);
        }
        outcome
    }

    /// This collector's relay id (a UUID, new on every start).
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// Hands the owner's answer to the waiting [`Relay::push`], if it still waits.
    pub(crate) fn answered(&self, req: &str, acked: bool) {
        if let Some(tx) = self.waiting.lock().ok().and_then(|mut w| w.remove(req)) {
            let _ = tx.send(acked);
        }
    }
}
