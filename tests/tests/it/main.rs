//! End-to-end tests: one binary, modules by feature; each test starts the real binaries.
#![allow(clippy::unwrap_used)]

mod cdn;
mod core_api;
mod dashboard;
mod delivery;
mod guest_truth;
mod hostile;
mod mana;
mod netflow;
mod prometheus;
mod rating;
mod service;
mod tls;
mod truth;
