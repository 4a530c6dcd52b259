//! Connected agents and their in-flight commands.
//!
//! Each agent's command subscription attaches here; `push` delivers a [`Command`] and waits for
//! the matching `ackCommand`. Locks are std mutexes held only for map updates, never across an
//! await.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use vmmon_common::wire::{Command, DesiredState};

/// Queued commands per agent before a push counts as undeliverable.
const COMMAND_QUEUE: usize = 16;

/// What happened to a pushed command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// No agent of that instance is connected; the state will be sent when it connects.
    NotConnected,
    /// The agent applied it and acknowledged.
    Acked,
    /// The agent is connected but did not acknowledge in time.
    TimedOut,
}

struct Attached {
    conn_id: u64,
    tx: mpsc::Sender<Command>,
}

#[derive(Default)]
struct HubInner {
    agents: HashMap<String, Attached>,
    /// Which live connection reports each instance, with its agent's identity.
    owners: HashMap<String, (u64, String)>,
    pending: HashMap<u64, (String, oneshot::Sender<()>)>,
}

/// Registry of connected agents.
#[derive(Default)]
pub struct Hub {
    inner: Mutex<HubInner>,
    next_command_id: AtomicU64,
    next_conn_id: AtomicU64,
}

impl Hub {
    /// Agents with a live command subscription (connected), by instance.
    pub fn connected_agents(&self) -> usize {
        self.inner.lock().map(|g| g.agents.len()).unwrap_or(0)
    }

    /// Claims `instance_id` for connection `conn_id` of the agent identified by `agent_uid`. The
    /// same agent (same uid) on a new connection replaces its stale one; another agent while the
    /// owner's connection is live is refused with the owner's uid.
    pub fn claim(&self, instance_id: &str, conn_id: u64, agent_uid: &str) -> Result<(), String> {
        let Ok(mut g) = self.inner.lock() else {
            return Ok(());
        };
        if let Some((owner_conn, owner_uid)) = g.owners.get(instance_id)
            && *owner_conn != conn_id
            && owner_uid != agent_uid
        {
            return Err(owner_uid.clone());
        }
        g.owners
            .insert(instance_id.to_string(), (conn_id, agent_uid.to_string()));
        Ok(())
    }

    /// Releases every instance connection `conn_id` owns (the connection ended).
    pub fn release(&self, conn_id: u64) {
        if let Ok(mut g) = self.inner.lock() {
            g.owners.retain(|_, (c, _)| *c != conn_id);
        }
    }

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Attaches a connection's subscription for `instance_id`, replacing an older one.
    pub fn attach(&self, instance_id: &str, conn_id: u64) -> mpsc::Receiver<Command> {
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        if let Ok(mut inner) = self.inner.lock() {
            inner
                .agents
                .insert(instance_id.to_string(), Attached { conn_id, tx });
        }
        rx
    }

    /// Detaches `conn_id`'s subscription (a newer connection's stays).
    pub fn detach(&self, instance_id: &str, conn_id: u64) {
        if let Ok(mut inner) = self.inner.lock()
            && inner
                .agents
                .get(instance_id)
                .is_some_and(|a| a.conn_id == conn_id)
        {
            inner.agents.remove(instance_id);
        }
    }

    /// Whether an agent for `instance_id` holds a command subscription.
    pub fn is_connected(&self, instance_id: &str) -> bool {
        self.inner
            .lock()
            .map(|inner| inner.agents.contains_key(instance_id))
            .unwrap_or(false)
    }

    /// Pushes `state` to the instance's agent and waits up to `timeout` for its acknowledgement.
    pub async fn push(
        &self,
        instance_id: &str,
        state: DesiredState,
        timeout: Duration,
    ) -> PushOutcome {
        let id = self.next_command_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (ack_tx, ack_rx) = oneshot::channel();
        let tx = {
            let Ok(mut inner) = self.inner.lock() else {
                return PushOutcome::NotConnected;
            };
            let Some(agent) = inner.agents.get(instance_id) else {
                return PushOutcome::NotConnected;
            };
            let tx = agent.tx.clone();
            inner.pending.insert(id, (instance_id.to_string(), ack_tx));
            tx
        };
        let outcome = match tx.try_send(Command { id, state }) {
            Err(mpsc::error::TrySendError::Closed(_)) => PushOutcome::NotConnected,
            Err(mpsc::error::TrySendError::Full(_)) => PushOutcome::TimedOut,
            Ok(()) => match tokio::time::timeout(timeout, ack_rx).await {
                Ok(Ok(())) => PushOutcome::Acked,
                _ => PushOutcome::TimedOut,
            },
        };
        if let Ok(mut inner) = self.inner.lock() {
            inner.pending.remove(&id);
        }
        outcome
    }

    /// Resolves a pending command; false when unknown, expired or for another instance.
    pub fn ack(&self, instance_id: &str, id: u64) -> bool {
        let Ok(mut inner) = self.inner.lock() else {
            return false;
        };
        match inner.pending.remove(&id) {
            Some((owner, tx)) if owner == instance_id => tx.send(()).is_ok(),
            Some(entry) => {
                inner.pending.insert(id, entry);
                false
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod ownership_tests {
    use super::*;

    #[test]
    fn one_live_agent_per_instance_and_the_same_agent_may_reconnect() {
        let hub = Hub::default();
        assert_eq!(hub.claim("vm-1", 1, "uid-a"), Ok(()));
        assert_eq!(
            hub.claim("vm-1", 1, "uid-a"),
            Ok(()),
            "again on its connection"
        );
        assert_eq!(
            hub.claim("vm-1", 2, "uid-b"),
            Err("uid-a".into()),
            "a clone is refused"
        );
        assert_eq!(
            hub.claim("vm-1", 3, "uid-a"),
            Ok(()),
            "the same agent reconnecting"
        );
        assert_eq!(hub.claim("vm-1", 2, "uid-b"), Err("uid-a".into()));
        hub.release(3);
        assert_eq!(
            hub.claim("vm-1", 2, "uid-b"),
            Ok(()),
            "after the owner left"
        );
        assert_eq!(
            hub.claim("vm-2", 9, "uid-a"),
            Ok(()),
            "instances are separate"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATE: DesiredState = DesiredState {
        monitoring: true,
        interval_secs: 5,
    };

    #[tokio::test]
    async fn push_without_agent_is_not_connected() {
        let hub = Hub::default();
        assert_eq!(
            hub.push("i", STATE, Duration::from_millis(10)).await,
            PushOutcome::NotConnected
        );
    }

    #[tokio::test]
    async fn acked_and_timed_out() {
        let hub = std::sync::Arc::new(Hub::default());
        let mut rx = hub.attach("i", 1);
        let h = hub.clone();
        let agent = tokio::spawn(async move {
            let cmd = rx.recv().await.unwrap();
            assert_eq!(cmd.state, STATE);
            assert!(
                !h.ack("other", cmd.id),
                "ack for another instance must not count"
            );
            assert!(h.ack("i", cmd.id));
            // Second command is never acknowledged.
            rx.recv().await.unwrap();
            rx
        });
        assert_eq!(
            hub.push("i", STATE, Duration::from_secs(5)).await,
            PushOutcome::Acked
        );
        assert_eq!(
            hub.push("i", STATE, Duration::from_millis(50)).await,
            PushOutcome::TimedOut
        );
        drop(agent.await.unwrap());
        assert!(hub.is_connected("i"));
        hub.detach("i", 2);
        assert!(
            hub.is_connected("i"),
            "an older connection's detach must not remove a newer one"
        );
        hub.detach("i", 1);
        assert!(!hub.is_connected("i"));
    }
}
