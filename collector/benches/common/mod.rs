//! What the ingest benches share: the batches the simulated agents send and how they send them
//! (`ingest`, `ingest_pg`).

use jsonrpsee::core::client::ClientT;
use jsonrpsee::core::traits::ToRpcParams;
use serde_json::value::RawValue;
use vmmon_common::wire::ext::BatchWithExt;
use vmmon_common::wire::{ProcessSample, ReportAck, ReportBatch, Sample, VmSample};

/// `name` from the environment as a count, or `default`.
pub fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Batch `seq` of `instance`: one VM sample at `at_ms` with `procs` processes.
pub fn batch(instance: &str, seq: u64, at_ms: i64, procs: usize) -> ReportBatch {
    let processes = (0..procs)
        .map(|i| ProcessSample {
            pid: 1000 + i as u32,
            start_time: 1_700_000_000.0 + i as f64,
            cmd: format!("proc-{i}"),
            cpu_pct: (i % 7) as f64 * 0.5,
            mem_pct: 0.3,
            disk_read_kib_per_sec: 0.0,
            disk_write_kib_per_sec: 1.5,
            net_in_kib_per_sec: 0.0,
            net_out_kib_per_sec: 0.0,
            shutdown_time: None,
            unreadable: Vec::new(),
        })
        .collect();
    ReportBatch {
        batch_id: uuid::Uuid::new_v4(),
        instance_id: instance.to_string(),
        seq,
        samples: vec![Sample {
            vm: VmSample {
                sampled_at_ms: at_ms,
                elapsed_ms: 30_000,
                cpu_pct: 12.5,
                mem_pct: 40.0,
                disk_read_kib_per_sec: 1.0,
                disk_write_kib_per_sec: 2.0,
                net_in_kib_per_sec: 3.0,
                net_out_kib_per_sec: 4.0,
                rx_bytes_total: 1_000_000 + seq * 1000,
                tx_bytes_total: 2_000_000 + seq * 1000,
                proc_count: procs as u32,
                net_attribution: None,
                cpu_steal_pct: None,
                unreadable_procs: None,
                uptime_ms: None,
            },
            processes: Some(processes),
        }],
        dropped_samples_total: 0,
        cdn: Vec::new(),
        cdn_tail: Default::default(),
    }
}

/// Rows a batch stores (one VM row plus one per process).
pub fn rows_of(b: &ReportBatch) -> usize {
    b.samples
        .iter()
        .map(|s| 1 + s.processes.as_ref().map_or(0, Vec::len))
        .sum()
}

/// A batch as an agent holds it in its spool: `monitor_report`'s params serialised once, when it
/// sampled (process records as arrays, `vmmon_common::wire::ProcessSample`), and the rows it
/// stores. Simulated agents spool before the timing starts, as agents do before they send.
pub struct Spooled {
    params: Box<RawValue>,
    /// [`rows_of`] the batch.
    pub rows: usize,
}

/// `batch` spooled ([`Spooled`]).
pub fn spool(batch: &ReportBatch) -> serde_json::Result<Spooled> {
    Ok(Spooled {
        params: serde_json::value::to_raw_value(&[BatchWithExt { batch, exts: &[] }])?,
        rows: rows_of(batch),
    })
}

/// Each agent's batches spooled, in order.
pub fn spool_all(per_agent: &[Vec<ReportBatch>]) -> serde_json::Result<Vec<Vec<Spooled>>> {
    per_agent
        .iter()
        .map(|batches| batches.iter().map(spool).collect())
        .collect()
}

impl ToRpcParams for Spooled {
    fn to_rpc_params(self) -> Result<Option<Box<RawValue>>, serde_json::Error> {
        Ok(Some(self.params))
    }
}

/// Sends a spooled batch as the agent sends after its session's first batch: its bytes as they
/// are (the bench checks the acknowledgement announces the array fields).
pub async fn report_as_agent(client: &impl ClientT, spooled: Spooled) -> anyhow::Result<ReportAck> {
    let ack: ReportAck = client.request("monitor_report", spooled).await?;
    anyhow::ensure!(
        ack.process_fields as usize >= vmmon_common::wire::PROCESS_FIELDS.len(),
        "the collector does not read array records"
    );
    Ok(ack)
}
