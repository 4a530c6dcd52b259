//! Whole-VM sample and inventory.

use serde::{Deserialize, Serialize};

/// Whole-VM figures for one tick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmSample {
    /// When the sample was taken, Unix epoch milliseconds.
    pub sampled_at_ms: i64,
    /// Time covered by the rates, milliseconds (0 for the very first sample).
    pub elapsed_ms: u64,
    /// Busy share of all CPUs since the previous sample, 0–100.
    pub cpu_pct: f64,
    /// (MemTotal − MemAvailable) / MemTotal, 0–100.
    pub mem_pct: f64,
    /// Physical block devices only, KB/s (1 KB = 1024 bytes).
    pub disk_read_kib_per_sec: f64,
    /// Physical block devices only, KB/s.
    pub disk_write_kib_per_sec: f64,
    /// All interfaces but loopback, KB/s.
    pub net_in_kib_per_sec: f64,
    /// All interfaces but loopback, KB/s.
    pub net_out_kib_per_sec: f64,
    /// Cumulative received bytes over all interfaces but loopback (resets on reboot).
    pub rx_bytes_total: u64,
    /// Cumulative sent bytes over all interfaces but loopback (resets on reboot).
    pub tx_bytes_total: u64,
    /// Number of processes.
    pub proc_count: u32,
}

/// What the collector's inventory knows about a VM; sent on register and on change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Inventory {
    /// Hostname (the API's `instance_name`).
    pub hostname: String,
    /// Online CPUs.
    pub cpu_count: u32,
    /// MemTotal in bytes.
    pub mem_total_bytes: u64,
    /// Sum of the physical block devices' sizes in bytes.
    pub disk_total_bytes: u64,
    /// Private (RFC 1918 / ULA) addresses on the guest's interfaces.
    pub lan_ips: Vec<String>,
    /// Public addresses on the guest's interfaces, or from the agent's config.
    pub wan_ips: Vec<String>,
    /// Agent version.
    pub agent_version: String,
    /// Operating system (PRETTY_NAME of /etc/os-release).
    pub os: String,
}
