//! End-to-end tests: one binary, modules by feature; each test starts the real binaries.
#![allow(clippy::unwrap_used)]

mod cdn;
mod core_api;
mod delivery;
mod failover;
mod guest_truth;
mod hostile;
mod mana;
mod netflow;
mod prometheus;
mod rating;
mod service;
mod shared_store;
mod tls;
mod truth;
