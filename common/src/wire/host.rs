//! Whole-VM sample and inventory.

use serde::{Deserialize, Serialize};

/// Whole-VM figures for one tick.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
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
    /// How much of the interface traffic above was attributed to processes; `None` when it was
    /// not measured (process sampling off, sock_diag unavailable, or an agent older than this
    /// field).
    #[serde(default)]
    pub net_attribution: Option<NetAttribution>,
    /// Share of all CPUs the hypervisor withheld (steal, `/proc/stat`), 0–100 % of the VM;
    /// `cpu_pct` excludes it. `None` from older agents, on a first sample, or without the
    /// kernel column. (The agent fills it through [`super::ext::VmSampleExt`], same key.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_steal_pct: Option<f64>,
    /// Processes of this sample with a figure the agent could not read; `None` while process
    /// sampling is off or from older agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreadable_procs: Option<u32>,
    /// The guest's `/proc/uptime` at the sample, ms (CLOCK_BOOTTIME: monotonic for the whole
    /// boot, across agent restarts, untouched by wall-clock steps). The collector links
    /// consecutive samples of one boot by it to detect a stepped wall clock. `None` from older
    /// agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_ms: Option<u64>,
}

/// How much of a VM's interface traffic (loopback excluded) its processes account for.
///
/// Attributed: TCP payload bytes of sockets mapped to a process (the sum over the processes'
/// `net_*_kib_per_sec` of the tick, measured over the tick's elapsed time). Unattributed: the
/// interface figure minus the attributed one, never below 0: UDP and other protocols, TCP/IP
/// headers and retransmissions, sockets opened and closed between two samples, sockets no
/// process holds (kernel users such as NFS), traffic forwarded for containers or other guests.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct NetAttribution {
    /// Received by process sockets, KB/s.
    pub attributed_in_kib_per_sec: f64,
    /// Sent by process sockets, KB/s.
    pub attributed_out_kib_per_sec: f64,
    /// Received on the interfaces but not attributed, KB/s.
    pub unattributed_in_kib_per_sec: f64,
    /// Sent on the interfaces but not attributed, KB/s.
    pub unattributed_out_kib_per_sec: f64,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_sample_without_net_attribution_still_parses() {
        // As an agent older than the field sends it.
        let old = r#"{"sampled_at_ms":1,"elapsed_ms":1000,"cpu_pct":1.0,"mem_pct":2.0,
            "disk_read_kib_per_sec":0.0,"disk_write_kib_per_sec":0.0,"net_in_kib_per_sec":3.0,
            "net_out_kib_per_sec":4.0,"rx_bytes_total":5,"tx_bytes_total":6,"proc_count":7}"#;
        let vm: VmSample = serde_json::from_str(old).expect("old sample parses");
        assert_eq!(vm.net_attribution, None);
        assert_eq!(vm.proc_count, 7);

        let new = VmSample {
            net_attribution: Some(NetAttribution {
                attributed_in_kib_per_sec: 1.5,
                attributed_out_kib_per_sec: 2.5,
                unattributed_in_kib_per_sec: 1.5,
                unattributed_out_kib_per_sec: 1.5,
            }),
            ..vm
        };
        let text = serde_json::to_string(&new).expect("serialize");
        let back: VmSample = serde_json::from_str(&text).expect("round trip");
        assert_eq!(back, new);
    }
}
