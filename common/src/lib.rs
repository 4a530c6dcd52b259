//! Wire types and the JSON-RPC contract shared by the vmmon agent and collector.
//!
//! Both sides compile against the same [`rpc::MonitorApiClient`] / [`rpc::MonitorApiServer`]
//! pair generated from one trait, so method names and payloads cannot drift.

pub mod config;
pub mod legacy;
pub mod rpc;
#[cfg(feature = "test-support")]
pub mod test_support;
pub mod vocab;
pub mod wire;

/// Version of the agent ⇄ collector protocol; bumped on incompatible wire changes.
pub const PROTOCOL_VERSION: u32 = 1;

/// HTTP path of the agents' WebSocket JSON-RPC endpoint.
pub const RPC_PATH: &str = "/rpc";
