//! The relay listener: on a PostgreSQL store, every collector listens on
//! [`CHANNEL`]; it pushes the commands other collectors relay for agents connected here, and
//! hands the answers to its own relayed commands to the waiting [`crate::relay::Relay::push`].
//! The protocol itself lives in [`crate::relay`].

use std::sync::Arc;
use std::time::Duration;

use crate::app::App;
use crate::hub::PushOutcome;
use crate::relay::{CHANNEL, Message};

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
                Message::Result { req, to, acked } if to == app.relay.id() => {
                    app.relay.answered(&req, acked)
                }
                Message::Result { .. } => {}
                Message::Push {
                    req,
                    from,
                    instance,
                    state,
                    timeout_ms,
                } if from != app.relay.id() && app.hub.is_connected(&instance) => {
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
