//! vmmon collector: receives agent reports over JSON-RPC, stores them in SQLite and answers the
//! operator's APIs.
//!
//! Layers, each looking only down (docs/ARCHITECTURE.md has the map):
//!
//! 1. rules, pure functions: [`bandwidth`], [`cdn`], [`rating`], [`timeaxis`] (plus `config`
//!    and [`tls`], which reads certificate files as `config` reads its own);
//! 2. [`store`]: all SQL;
//! 3. actions and jobs: [`admin`], [`auth`], [`control`] (with the connected-agent `hub`),
//!    [`ingest`], [`jobs`], [`relay`], [`telemetry`] (and [`App`]);
//! 4. transports: [`http`] (axum) and [`rpc`] (jsonrpsee), joined on one listener by [`server`].
//!
//! Modules are `pub(crate)` unless a bench or test needs them, so the crate's docs are read with
//! `cargo doc --document-private-items` (CI checks them so): public items' docs may link to
//! crate-private ones.
#![allow(rustdoc::private_intra_doc_links)]

pub mod admin;
pub(crate) mod app;
pub(crate) mod auth;
pub mod bandwidth;
pub(crate) mod cdn;
pub mod config;
pub(crate) mod control;
mod error;
pub mod http;
pub(crate) mod hub;
pub mod ingest;
pub mod jobs;
pub mod rating;
pub mod relay;
pub(crate) mod rpc;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod timeaxis;
pub mod tls;

pub use app::{App, Settings};
pub use config::CollectorConfig;
pub use error::CollectorError;
