//! Collector errors and their JSON-RPC mapping.

use jsonrpsee::types::ErrorObjectOwned;
use vmmon_common::rpc::codes;

use crate::store::StoreError;

/// Failures a caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    /// The store failed; details are logged, never sent to clients.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Missing, unknown or revoked credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// Valid credentials that may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// The instance has not registered on this connection.
    #[error("{0}")]
    NotRegistered(String),
    /// A report that can never be stored.
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
    /// Refused for now; the same request may succeed later (the agent backs off and retries).
    #[error("{0}")]
    Unavailable(String),
}

impl From<CollectorError> for ErrorObjectOwned {
    fn from(e: CollectorError) -> Self {
        match e {
            CollectorError::Store(e) => {
                tracing::error!(error = %e, "Store failure while serving an agent.");
                codes::error(
                    codes::UNAVAILABLE,
                    "collector store unavailable, retry later",
                )
            }
            CollectorError::Unauthorized(m) => codes::error(codes::UNAUTHORIZED, m),
            CollectorError::Forbidden(m) => codes::error(codes::FORBIDDEN, m),
            CollectorError::NotRegistered(m) => codes::error(codes::NOT_REGISTERED, m),
            CollectorError::Unavailable(m) => codes::error(codes::UNAVAILABLE, m),
            CollectorError::InvalidBatch(m) => {
                codes::error(codes::INVALID_BATCH, format!("invalid batch: {m}"))
            }
        }
    }
}
