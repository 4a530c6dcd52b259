//! Application error codes of the agent RPC, outside JSON-RPC's reserved −32768…−32000.

use jsonrpsee::types::ErrorObjectOwned;

/// The agent token is missing, unknown or revoked: the agent must not retry quickly.
pub const UNAUTHORIZED: i32 = 4001;
/// The token may not act on this instance (another project registered it, or a project mismatch).
pub const FORBIDDEN: i32 = 4003;
/// The instance has not registered on this connection's token yet.
pub const NOT_REGISTERED: i32 = 4004;
/// The batch can never be stored (bad values, too large): the agent drops it and counts it.
pub const INVALID_BATCH: i32 = 4000;
/// The collector could not complete the call (store unavailable): retry later.
pub const UNAVAILABLE: i32 = 5003;

/// Builds an error object with one of the codes above.
pub fn error(code: i32, message: impl Into<String>) -> ErrorObjectOwned {
    ErrorObjectOwned::owned(code, message.into(), None::<()>)
}
