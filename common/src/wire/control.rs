//! Registration, heartbeats and pushed commands.

use serde::{Deserialize, Serialize};

use super::Inventory;

/// Sent once per connection before anything else.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// The instance this agent reports for.
    pub instance_id: String,
    /// Current inventory.
    pub inventory: Inventory,
    /// The agent's [`crate::PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// The interval the agent was configured with; the collector adopts it unless an admin has
    /// set one for this instance.
    pub configured_interval_secs: u32,
    /// Who is reporting: a random id the agent keeps in its state dir and renews when the kernel's
    /// boot id changes, so two VMs cloned from one image (even with the state dir) differ. The
    /// collector refuses a second live agent for an instance and never differences counters
    /// across two identities. Absent from older agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_uid: Option<String>,
}

/// What the collector wants the agent to do; persisted by the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredState {
    /// Per-process sampling on (`startmonitor`) or off (`stopmonitor`).
    pub monitoring: bool,
    /// Sampling interval in seconds.
    pub interval_secs: u32,
}

/// Periodic liveness report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The reporting instance.
    pub instance_id: String,
    /// The state the agent is applying now.
    pub applied: DesiredState,
    /// Batches waiting in the agent's spool.
    pub spooled_batches: u64,
    /// Samples dropped since the agent's state began (cumulative).
    pub dropped_samples_total: u64,
}

/// Pushed on the command subscription. Carries the whole desired state, so applying it is
/// idempotent and a later command supersedes an earlier one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// Id to echo in [`CommandAck`].
    pub id: u64,
    /// The state to apply.
    pub state: DesiredState,
}

/// The agent's confirmation that [`Command`] `id` was applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandAck {
    /// The instance acknowledging.
    pub instance_id: String,
    /// The command's id.
    pub id: u64,
}
