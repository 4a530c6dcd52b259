//! End-to-end tests: one binary, modules by feature; each test starts the real binaries.
#![allow(clippy::unwrap_used)]

mod cdn;
mod core_api;
mod dashboard;
mod delivery;
mod failover;
mod guest_truth;
mod hostile;
mod mana;
mod netflow;
mod prometheus;
mod rating;
mod rating_client;
mod service;
mod shared_store;
mod static_agent;
mod tls;
mod truth;
