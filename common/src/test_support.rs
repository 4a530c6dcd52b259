//! Builders of wire values for tests (feature `test-support`): one set, used by the collector's
//! in-process tests and the end-to-end tests, so a new wire field is added in one place.

use crate::PROTOCOL_VERSION;
use crate::wire::{Inventory, ProcessSample, RegisterRequest, ReportBatch, Sample, VmSample};

/// A registration of `instance_id` with `inventory`.
pub fn register_request(
    instance_id: &str,
    interval_secs: u32,
    inventory: Inventory,
) -> RegisterRequest {
    RegisterRequest {
        instance_id: instance_id.to_string(),
        inventory,
        protocol_version: PROTOCOL_VERSION,
        configured_interval_secs: interval_secs,
        agent_uid: None,
    }
}

/// An inventory; the agent version is `"test"` and the OS `"Test OS"`.
pub fn inventory(
    hostname: &str,
    cpus: u32,
    mem_bytes: u64,
    disk_bytes: u64,
    lan: &[&str],
    wan: &[&str],
) -> Inventory {
    Inventory {
        hostname: hostname.into(),
        cpu_count: cpus,
        mem_total_bytes: mem_bytes,
        disk_total_bytes: disk_bytes,
        lan_ips: lan.iter().map(|s| s.to_string()).collect(),
        wan_ips: wan.iter().map(|s| s.to_string()).collect(),
        agent_version: "test".into(),
        os: "Test OS".into(),
    }
}

/// A VM sample at `at_ms` (30 s elapsed) with cumulative counters `rx`/`tx` and fixed figures
/// (cpu 1 %, mem 10 %, 50 processes); change the rest with struct update syntax.
pub fn vm_sample(at_ms: i64, rx: u64, tx: u64) -> VmSample {
    VmSample {
        sampled_at_ms: at_ms,
        elapsed_ms: 30_000,
        cpu_pct: 1.0,
        mem_pct: 10.0,
        rx_bytes_total: rx,
        tx_bytes_total: tx,
        proc_count: 50,
        ..VmSample::default()
    }
}

/// A live process started at 1_764_000_000.5 with `cpu_pct`, mem 1.234 %, disk write 5.555 KB/s.
pub fn process(pid: u32, cmd: &str, cpu_pct: f64) -> ProcessSample {
    ProcessSample {
        pid,
        start_time: 1_764_000_000.5,
        cmd: cmd.into(),
        cpu_pct,
        mem_pct: 1.234,
        disk_read_kib_per_sec: 0.0,
        disk_write_kib_per_sec: 5.555,
        net_in_kib_per_sec: 0.0,
        net_out_kib_per_sec: 0.0,
        shutdown_time: None,
        unreadable: Vec::new(),
    }
}

/// A batch `seq` of `instance_id` with a fresh batch id.
pub fn batch(instance_id: &str, seq: u64, samples: Vec<Sample>) -> ReportBatch {
    ReportBatch {
        batch_id: uuid::Uuid::new_v4(),
        instance_id: instance_id.into(),
        seq,
        samples,
        dropped_samples_total: 0,
        cdn: Vec::new(),
        cdn_tail: None,
    }
}

/// A batch of counter readings `(sampled_at_ms, rx_total, tx_total)`, 10 minutes apart, without
/// processes (what the bandwidth tests feed).
pub fn counters_batch(instance_id: &str, seq: u64, readings: &[(i64, u64, u64)]) -> ReportBatch {
    let samples = readings
        .iter()
        .map(|&(at, rx, tx)| Sample {
            vm: VmSample {
                elapsed_ms: 600_000,
                ..vm_sample(at, rx, tx)
            },
            processes: None,
        })
        .collect();
    batch(instance_id, seq, samples)
}
