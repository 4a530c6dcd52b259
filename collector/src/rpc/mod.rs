//! The agents' JSON-RPC endpoint: `impl MonitorApiServer`, one handler per WebSocket connection.
//!
//! The connection's agent token is checked once at the upgrade (see [`crate::server`]) and the
//! result travels in the handler, so every method knows which project it may touch.

pub mod hub;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use jsonrpsee::PendingSubscriptionSink;
use jsonrpsee::core::{SubscriptionResult, async_trait};
use jsonrpsee::types::ErrorObjectOwned;
use vmmon_common::PROTOCOL_VERSION;
use vmmon_common::rpc::MonitorApiServer;
use vmmon_common::wire::{
    CommandAck, DesiredState, Heartbeat, MAX_PROCESSES_PER_SAMPLE, MAX_SAMPLES_PER_BATCH,
    RegisterRequest, ReportAck, ReportBatch,
};

use crate::error::CollectorError;
use crate::store::{self, AgentTokenRow, RegisterOutcome};
use crate::{App, api};

/// How the connection's token checked out.
#[derive(Debug, Clone)]
pub enum AgentAuth {
    /// A valid token.
    Token(AgentTokenRow),
    /// Why the token was refused (shown to the agent).
    Refused(String),
}

/// Serves one agent connection.
pub struct RpcHandler {
    app: Arc<App>,
    auth: AgentAuth,
    conn_id: u64,
    /// Instances registered on this connection: reports for others are refused.
    registered: Mutex<HashSet<String>>,
    /// When the token was last found not revoked (reports re-check at most this often).
    token_checked: Mutex<Option<std::time::Instant>>,
}

/// How stale a report's "token not revoked" check may be.
const TOKEN_RECHECK: std::time::Duration = std::time::Duration::from_secs(10);
/// Longest inventory string (hostname, OS, agent version) and IP address text.
const MAX_INVENTORY_TEXT: usize = 255;
/// Most LAN or WAN addresses one inventory may list.
const MAX_INVENTORY_IPS: usize = 64;
/// Longest `cmd` stored; longer ones are cut (a user in the VM controls `argv[0]`).
const MAX_CMD_BYTES: usize = 255;
/// Samples stamped further ahead of the collector's clock than this are refused.
const MAX_FUTURE_MS: i64 = 86_400_000;

impl RpcHandler {
    /// A handler for a connection authenticated as `auth`.
    pub fn new(app: Arc<App>, auth: AgentAuth) -> RpcHandler {
        let conn_id = app.hub.next_conn_id();
        RpcHandler {
            app,
            auth,
            conn_id,
            registered: Mutex::new(HashSet::new()),
            token_checked: Mutex::new(None),
        }
    }

    fn token(&self) -> Result<&AgentTokenRow, CollectorError> {
        match &self.auth {
            AgentAuth::Token(t) => Ok(t),
            AgentAuth::Refused(why) => Err(CollectorError::Unauthorized(why.clone())),
        }
    }

    fn ensure_registered(&self, instance_id: &str) -> Result<(), CollectorError> {
        let ok = self
            .registered
            .lock()
            .map(|set| set.contains(instance_id))
            .unwrap_or(false);
        if ok {
            Ok(())
        } else {
            Err(CollectorError::NotRegistered(format!(
                "instance {instance_id:?} has not registered on this connection"
            )))
        }
    }

    /// [`Self::ensure_token_live`], at most every [`TOKEN_RECHECK`] (reports are the hot path).
    async fn ensure_token_live_recently(&self) -> Result<(), CollectorError> {
        let fresh = self
            .token_checked
            .lock()
            .ok()
            .and_then(|g| *g)
            .is_some_and(|t| t.elapsed() < TOKEN_RECHECK);
        if fresh {
            return Ok(());
        }
        self.ensure_token_live().await?;
        if let Ok(mut g) = self.token_checked.lock() {
            *g = Some(std::time::Instant::now());
        }
        Ok(())
    }

    /// Re-reads the token so a revocation takes effect on a live connection.
    async fn ensure_token_live(&self) -> Result<(), CollectorError> {
        let id = self.token()?.id;
        let row = self
            .app
            .store
            .read(move |c| store::users::agent_token_by_id(c, id))
            .await?;
        match row {
            Some(t) if t.revoked_at_ms.is_none() => Ok(()),
            _ => Err(CollectorError::Unauthorized(
                "agent token has been revoked".into(),
            )),
        }
    }
}

/// Checks what an inventory may hold before it is stored and served.
fn validate_inventory(inv: &vmmon_common::wire::Inventory) -> Result<(), String> {
    for (name, v) in [
        ("hostname", &inv.hostname),
        ("os", &inv.os),
        ("agent_version", &inv.agent_version),
    ] {
        if v.len() > MAX_INVENTORY_TEXT {
            return Err(format!(
                "inventory {name} is longer than {MAX_INVENTORY_TEXT} bytes"
            ));
        }
    }
    for (name, ips) in [("lan_ips", &inv.lan_ips), ("wan_ips", &inv.wan_ips)] {
        if ips.len() > MAX_INVENTORY_IPS || ips.iter().any(|ip| ip.len() > 64 || ip.contains(',')) {
            return Err(format!(
                "inventory {name} must be at most {MAX_INVENTORY_IPS} addresses"
            ));
        }
    }
    // Stored as SQLite integers (i64).
    if inv.mem_total_bytes > i64::MAX as u64 || inv.disk_total_bytes > i64::MAX as u64 {
        return Err("inventory sizes are out of range".into());
    }
    Ok(())
}

/// Refuses samples the store cannot keep consistently: stamped far in the future, or older than
/// raw-sample retention (their batch ids would no longer be remembered, so a resend could not
/// be recognised).
fn validate_times(batch: &ReportBatch, now_ms: i64, retention_days: u32) -> Result<(), String> {
    for s in &batch.samples {
        let at = s.vm.sampled_at_ms;
        if at > now_ms.saturating_add(MAX_FUTURE_MS) {
            return Err(format!(
                "sample at {at} ms is more than a day ahead of the collector's clock"
            ));
        }
        if retention_days > 0 && at < now_ms - i64::from(retention_days) * 86_400_000 {
            return Err(format!(
                "sample at {at} ms is older than the {retention_days}-day raw retention"
            ));
        }
    }
    Ok(())
}

/// Cuts oversized process names instead of refusing the whole batch for one of them.
fn cap_cmds(batch: &mut ReportBatch) {
    for p in batch
        .samples
        .iter_mut()
        .flat_map(|s| s.processes.iter_mut().flatten())
    {
        if p.cmd.len() > MAX_CMD_BYTES {
            let mut end = MAX_CMD_BYTES;
            while !p.cmd.is_char_boundary(end) {
                end -= 1;
            }
            p.cmd.truncate(end);
        }
    }
}

fn validate_batch(batch: &ReportBatch) -> Result<(), String> {
    if batch.samples.is_empty() {
        return Err("no samples".into());
    }
    crate::cdn::validate_batch(batch)?;
    if batch.samples.len() > MAX_SAMPLES_PER_BATCH {
        return Err(format!("more than {MAX_SAMPLES_PER_BATCH} samples"));
    }
    for s in &batch.samples {
        let vm = &s.vm;
        let figures = [
            vm.cpu_pct,
            vm.mem_pct,
            vm.disk_read_kib_per_sec,
            vm.disk_write_kib_per_sec,
            vm.net_in_kib_per_sec,
            vm.net_out_kib_per_sec,
        ];
        if figures.iter().any(|v| !v.is_finite() || *v < 0.0) {
            return Err(format!(
                "VM sample at {} has a negative or non-finite figure",
                vm.sampled_at_ms
            ));
        }
        if vm.sampled_at_ms <= 0 {
            return Err("sample time must be positive epoch milliseconds".into());
        }
        let Some(procs) = &s.processes else { continue };
        if procs.len() > MAX_PROCESSES_PER_SAMPLE {
            return Err(format!(
                "more than {MAX_PROCESSES_PER_SAMPLE} processes in one sample"
            ));
        }
        for p in procs {
            let figures = [
                p.cpu_pct,
                p.mem_pct,
                p.disk_read_kib_per_sec,
                p.disk_write_kib_per_sec,
                p.net_in_kib_per_sec,
                p.net_out_kib_per_sec,
                p.start_time,
            ];
            if figures.iter().any(|v| !v.is_finite() || *v < 0.0) {
                return Err(format!(
                    "process {} has a negative or non-finite figure",
                    p.pid
                ));
            }
        }
    }
    Ok(())
}

#[async_trait]
impl MonitorApiServer for RpcHandler {
    async fn register(&self, request: RegisterRequest) -> Result<DesiredState, ErrorObjectOwned> {
        let token = self.token()?.clone();
        self.ensure_token_live().await?;
        if request.protocol_version != PROTOCOL_VERSION {
            return Err(CollectorError::InvalidBatch(format!(
                "protocol version {} is not supported (collector speaks {PROTOCOL_VERSION})",
                request.protocol_version
            ))
            .into());
        }
        if let Err(why) = api::validate_instance_id(&request.instance_id) {
            return Err(CollectorError::Forbidden(why).into());
        }
        validate_inventory(&request.inventory).map_err(CollectorError::InvalidBatch)?;
        let interval = if (1..=86_400).contains(&request.configured_interval_secs) {
            request.configured_interval_secs
        } else {
            self.app.config.default_interval_secs
        };
        let id = request.instance_id.clone();
        let tok = token.clone();
        let outcome = self
            .app
            .store
            .write(move |c| {
                store::instances::register(
                    c,
                    &id,
                    &tok,
                    &request.inventory,
                    interval,
                    store::now_ms(),
                )
            })
            .await
            .map_err(CollectorError::from)?;
        match outcome {
            RegisterOutcome::ForeignProject => {
                tracing::warn!(instance_id = %request.instance_id, project = %token.project,
                    "Refused registration of an instance owned by another project.");
                Err(CollectorError::Forbidden(format!(
                    "instance {:?} is registered to another project; token of project {:?} may not report it",
                    request.instance_id, token.project
                ))
                .into())
            }
            RegisterOutcome::Registered(desired) => {
                if let Ok(mut set) = self.registered.lock() {
                    set.insert(request.instance_id.clone());
                }
                tracing::info!(instance_id = %request.instance_id, project = %token.project,
                    monitoring = desired.monitoring, interval_secs = desired.interval_secs,
                    "Agent registered.");
                Ok(desired)
            }
        }
    }

    async fn heartbeat(&self, heartbeat: Heartbeat) -> Result<DesiredState, ErrorObjectOwned> {
        self.token()?;
        self.ensure_registered(&heartbeat.instance_id)?;
        self.ensure_token_live().await?;
        let id = heartbeat.instance_id.clone();
        let row = self
            .app
            .store
            .write(move |c| {
                store::instances::record_seen(
                    c,
                    &id,
                    store::now_ms(),
                    Some(heartbeat.dropped_samples_total),
                    Some(heartbeat.spooled_batches),
                )?;
                store::instances::get(c, &id)
            })
            .await
            .map_err(CollectorError::from)?;
        match row {
            Some(row) => Ok(row.desired),
            None => Err(CollectorError::NotRegistered("instance no longer exists".into()).into()),
        }
    }

    async fn report(&self, mut batch: ReportBatch) -> Result<ReportAck, ErrorObjectOwned> {
        let token = self.token()?;
        if !token.cdn_edge && (!batch.cdn.is_empty() || batch.cdn_tail.is_some()) {
            return Err(CollectorError::InvalidBatch(
                "this agent token may not report CDN traffic: use a CDN edge token \
                 (vmmon-collector token create --cdn)"
                    .into(),
            )
            .into());
        }
        self.ensure_registered(&batch.instance_id)?;
        self.ensure_token_live_recently().await?;
        cap_cmds(&mut batch);
        validate_batch(&batch).map_err(CollectorError::InvalidBatch)?;
        validate_times(&batch, store::now_ms(), self.app.config.raw_retention_days)
            .map_err(CollectorError::InvalidBatch)?;
        let batch_id = batch.batch_id;
        let stored = self
            .app
            .store
            .write_unguarded(move |c| {
                let now = store::now_ms();
                let stored = store::samples::insert_batch(c, &batch, now)?;
                let newest = batch
                    .samples
                    .iter()
                    .map(|s| s.vm.sampled_at_ms)
                    .max()
                    .unwrap_or(now);
                store::instances::record_seen(
                    c,
                    &batch.instance_id,
                    newest.min(now),
                    Some(batch.dropped_samples_total),
                    None,
                )?;
                Ok(stored)
            })
            .await
            .map_err(CollectorError::from)?;
        Ok(ReportAck {
            batch_id,
            duplicate: !stored,
        })
    }

    async fn ack_command(&self, ack: CommandAck) -> Result<(), ErrorObjectOwned> {
        self.token()?;
        self.ensure_registered(&ack.instance_id)?;
        if !self.app.hub.ack(&ack.instance_id, ack.id) {
            tracing::debug!(instance_id = %ack.instance_id, id = ack.id, "Late or unknown command ack.");
        }
        Ok(())
    }

    async fn subscribe_commands(
        &self,
        pending: PendingSubscriptionSink,
        instance_id: String,
    ) -> SubscriptionResult {
        if let Err(e) = self
            .token()
            .and_then(|_| self.ensure_registered(&instance_id))
        {
            pending.reject(ErrorObjectOwned::from(e)).await;
            return Ok(());
        }
        let sink = pending.accept().await?;
        let app = self.app.clone();
        let conn_id = self.conn_id;
        let mut rx = app.hub.attach(&instance_id, conn_id);
        tracing::debug!(%instance_id, conn_id, "Agent command subscription attached.");
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    cmd = rx.recv() => {
                        let Some(cmd) = cmd else { break };
                        let Ok(msg) = serde_json::value::to_raw_value(&cmd) else { break };
                        if sink.send(msg).await.is_err() {
                            break;
                        }
                    }
                    _ = sink.closed() => break,
                }
            }
            app.hub.detach(&instance_id, conn_id);
            tracing::debug!(%instance_id, conn_id, "Agent command subscription detached.");
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmmon_common::wire::{Inventory, ProcessSample, Sample, VmSample};

    fn batch(at_ms: i64, cmd: &str) -> ReportBatch {
        serde_json::from_value(serde_json::json!({
            "batch_id": uuid::Uuid::new_v4(), "instance_id": "i", "seq": 0, "dropped_samples_total": 0,
            "samples": [Sample {
                vm: VmSample {
                    sampled_at_ms: at_ms, elapsed_ms: 1000, cpu_pct: 1.0, mem_pct: 1.0,
                    disk_read_kib_per_sec: 0.0, disk_write_kib_per_sec: 0.0, net_in_kib_per_sec: 0.0,
                    net_out_kib_per_sec: 0.0, rx_bytes_total: 0, tx_bytes_total: 0, proc_count: 1,
                    net_attribution: None,
                },
                processes: Some(vec![ProcessSample {
                    pid: 1, start_time: 1.0, cmd: cmd.into(), cpu_pct: 0.0, mem_pct: 0.0,
                    disk_read_kib_per_sec: 0.0, disk_write_kib_per_sec: 0.0, net_in_kib_per_sec: 0.0,
                    net_out_kib_per_sec: 0.0, shutdown_time: None,
                }]),
            }],
        }))
        .unwrap()
    }

    #[test]
    fn oversized_cmd_is_cut_not_refused() {
        let mut b = batch(1_000, &"x".repeat(10_000));
        cap_cmds(&mut b);
        assert!(validate_batch(&b).is_ok());
        assert_eq!(
            b.samples[0].processes.as_ref().unwrap()[0].cmd.len(),
            MAX_CMD_BYTES
        );
    }

    #[test]
    fn samples_outside_the_time_window_are_refused() {
        let now = 100 * 86_400_000;
        assert!(validate_times(&batch(now, "a"), now, 30).is_ok());
        assert!(
            validate_times(&batch(now - 31 * 86_400_000, "a"), now, 30)
                .unwrap_err()
                .contains("retention")
        );
        assert!(
            validate_times(&batch(now - 31 * 86_400_000, "a"), now, 0).is_ok(),
            "0 keeps forever"
        );
        assert!(
            validate_times(&batch(now + 2 * 86_400_000, "a"), now, 30)
                .unwrap_err()
                .contains("ahead")
        );
    }

    #[test]
    fn inventory_limits() {
        assert!(validate_inventory(&Inventory::default()).is_ok());
        let long = Inventory {
            hostname: "h".repeat(300),
            ..Inventory::default()
        };
        assert!(validate_inventory(&long).is_err());
        let many = Inventory {
            wan_ips: vec!["1.2.3.4".into(); 65],
            ..Inventory::default()
        };
        assert!(validate_inventory(&many).is_err());
        let huge = Inventory {
            mem_total_bytes: u64::MAX,
            ..Inventory::default()
        };
        assert!(validate_inventory(&huge).is_err());
    }
}
