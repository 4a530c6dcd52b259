//! The agent ⇄ collector JSON-RPC contract (WebSocket at [`crate::RPC_PATH`]).
//!
//! The agent authenticates the WebSocket upgrade with `Authorization: Bearer <agent token>`;
//! every method answers [`codes::UNAUTHORIZED`] when that token is unknown or revoked.

pub mod codes;

use jsonrpsee::core::SubscriptionResult;
use jsonrpsee::proc_macros::rpc;
use jsonrpsee::types::ErrorObjectOwned;

use crate::wire::{
    CdnTailState, Command, CommandAck, DesiredState, Heartbeat, RegisterRequest, ReportAck,
    ReportBatch,
};

/// Methods the collector serves to agents.
#[rpc(client, server, namespace = "monitor")]
pub trait MonitorApi {
    /// Registers (or re-registers) an instance with its inventory; answers the desired state.
    #[method(name = "register")]
    async fn register(&self, request: RegisterRequest) -> Result<DesiredState, ErrorObjectOwned>;

    /// Liveness and agent-side counters; answers the desired state so a lost command heals.
    #[method(name = "heartbeat")]
    async fn heartbeat(&self, heartbeat: Heartbeat) -> Result<DesiredState, ErrorObjectOwned>;

    /// Stores one report batch at most once (dedup by `batch_id`) and acknowledges it.
    #[method(name = "report")]
    async fn report(&self, batch: ReportBatch) -> Result<ReportAck, ErrorObjectOwned>;

    /// The CDN access-log positions of the newest batch the collector stored for `instance_id`
    /// (registered on this connection), `None` when it has none: an edge agent that lost its
    /// state resumes from them instead of reading its logs again from the start.
    #[method(name = "cdnPositions")]
    async fn cdn_positions(
        &self,
        instance_id: String,
    ) -> Result<Option<CdnTailState>, ErrorObjectOwned>;

    /// Confirms that a pushed [`Command`] was applied.
    #[method(name = "ackCommand")]
    async fn ack_command(&self, ack: CommandAck) -> Result<(), ErrorObjectOwned>;

    /// Commands for one registered instance, pushed by the collector.
    #[subscription(name = "subscribeCommands" => "command", unsubscribe = "unsubscribeCommands", item = Command)]
    async fn subscribe_commands(&self, instance_id: String) -> SubscriptionResult;
}
