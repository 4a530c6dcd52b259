//! vmmon collector: receives agent reports over JSON-RPC, stores them in SQLite and answers the
//! operator's APIs.

pub mod store;
