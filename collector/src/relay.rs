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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use vmmon_common::wire::DesiredState;

use crate::app::App;
use crate::hub::PushOutcome;

/// The notification channel of command relays.
pub const CHANNEL: &str = "vmmon_commands";
/// How much longer than the command timeout a relaying collector waits for the answer (the
/// owner's own wait, plus the notification round trip).
pub const ANSWER_MARGIN: Duration = Duration::from_secs(2);

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Message {
    Push {
        req: String,
        from: String,
        instance: String,
        state: DesiredState,
        timeout_ms: u64,
    },
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
        app: &App,
        instance_id: &str,
        state: DesiredState,
        timeout: Duration,
    ) -> PushOutcome {
        if !app.store.is_postgres() {
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
            Ok(payload) => app.store.notify(CHANNEL, &payload).await,
            Err(e) => Err(crate::store::StoreError::Corrupt(e.to_string())),
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

    fn answered(&self, req: &str, acked: bool) {
        if let Some(tx) = self.waiting.lock().ok().and_then(|mut w| w.remove(req)) {
            let _ = tx.send(acked);
        }
    }
}

/// Starts listening for relayed commands (PostgreSQL stores only).
pub fn spawn(app: Arc<App>) {
    if !app.store.is_postgres() {
        return;
    }
    let mut rx = app.store.listen(CHANNEL);
    tokio::spawn(async move {
        while let Some(payload) = rx.recv().await {
            let msg: Message = match serde_json::from_str(&payload) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "Ignoring a malformed relay notification.");
                    continue;
                }
            };
            match msg {
                Message::Result { req, to, acked } if to == app.relay.id => {
                    app.relay.answered(&req, acked)
                }
                Message::Result { .. } => {}
                Message::Push {
                    req,
                    from,
                    instance,
                    state,
                    timeout_ms,
                } if from != app.relay.id && app.hub.is_connected(&instance) => {
                    let app = app.clone();
                    tokio::spawn(async move {
                        let timeout = Duration::from_millis(timeout_ms);
                        let outcome = app.hub.push(&instance, state, timeout).await;
                        tracing::info!(instance, ?outcome, "Pushed a relayed command.");
                        if outcome == PushOutcome::NotConnected {
                            return; // It left meanwhile; the requester times out to "queued".
                        }
                        let answer = Message::Result {
                            req,
                            to: from,
                            acked: outcome == PushOutcome::Acked,
                        };
                        if let Ok(payload) = serde_json::to_string(&answer)
                            && let Err(e) = app.store.notify(CHANNEL, &payload).await
                        {
                            tracing::warn!(error = %e, "Cannot answer a relayed command.");
                        }
                    });
                }
                Message::Push { .. } => {}
            }
        }
    });
}
