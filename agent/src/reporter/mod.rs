//! The delivery side: one WebSocket session at a time to the collector, sending the spool oldest
//! first, applying pushed commands, and heartbeating; reconnects with backoff on any failure.

pub mod retry;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use jsonrpsee::core::client::ClientT;
use jsonrpsee::core::client::Error as ClientError;
use jsonrpsee::rpc_params;
use jsonrpsee::ws_client::{HeaderMap, HeaderValue, WsClient, WsClientBuilder};
use tokio::sync::watch;
use vmmon_common::PROTOCOL_VERSION;
use vmmon_common::rpc::MonitorApiClient;
use vmmon_common::wire::ext::{self, InventoryExt};
use vmmon_common::wire::{
    CommandAck, DesiredState, Heartbeat, Inventory, RegisterRequest, ReportAck,
};

use crate::Shared;
use retry::{Backoff, RetryAction, classify};

/// The report method's wire name (`MonitorApi::report`).
const REPORT_METHOD: &str = "monitor_report";
/// The register method's wire name (`MonitorApi::register`).
const REGISTER_METHOD: &str = "monitor_register";
/// Batches sent before the session loop looks at commands again.
const BATCHES_PER_TURN: usize = 16;
/// First reconnect wait ceiling.
const BASE_BACKOFF: Duration = Duration::from_millis(500);

/// How to reach the collector.
#[derive(Clone)]
pub struct ReporterConfig {
    /// `ws://host:port/rpc`.
    pub url: String,
    /// Agent token.
    pub token: String,
    /// This instance.
    pub instance_id: String,
    /// The interval from the agent's own configuration.
    pub configured_interval_secs: u32,
    /// This agent's identity ([`crate::identity::agent_uid`]).
    pub agent_uid: String,
    /// Longest reconnect wait.
    pub max_backoff: Duration,
    /// For `wss://`: how the collector is verified (see [`tls`]).
    pub tls: Option<rustls::ClientConfig>,
}

/// Never prints the token.
impl std::fmt::Debug for ReporterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReporterConfig")
            .field("url", &self.url)
            .field("token", &"<redacted>")
            .field("instance_id", &self.instance_id)
            .field("configured_interval_secs", &self.configured_interval_secs)
            .field("agent_uid", &self.agent_uid)
            .field("max_backoff", &self.max_backoff)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Why a session ended.
#[derive(Debug)]
struct SessionEnd {
    action: RetryAction,
    reason: String,
    /// Whether the session got as far as a successful registration.
    registered: bool,
    /// The TLS handshake was refused (the reason is in `reason`).
    tls_refused: bool,
}

fn ended(action: RetryAction, reason: impl Into<String>, registered: bool) -> SessionEnd {
    SessionEnd {
        action,
        reason: reason.into(),
        registered,
        tls_refused: false,
    }
}

fn from_client(err: &ClientError, registered: bool) -> SessionEnd {
    if let Some(why) = tls::refusal_reason(err) {
        return SessionEnd {
            tls_refused: true,
            ..ended(RetryAction::Reconnect, why, registered)
        };
    }
    ended(classify(err), err.to_string(), registered)
}

/// Runs sessions until `shutdown` flips to true.
pub async fn run(
    cfg: ReporterConfig,
    shared: Arc<Shared>,
    inventory: impl Fn() -> (Inventory, InventoryExt),
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(BASE_BACKOFF, cfg.max_backoff);
    loop {
        if *shutdown.borrow() {
            return;
        }
        let end = tokio::select! {
            end = session(&cfg, &shared, inventory(), &mut backoff) => end,
            _ = shutdown.changed() => return,
        };
        let delay = match end.action {
            RetryAction::AuthRefused => {
                tracing::error!(collector = %cfg.url, reason = %end.reason,
                    "Collector refused this agent's token; fix the token or its project. Backing off.");
                backoff.refused_delay()
            }
            _ if end.tls_refused => {
                tracing::error!(collector = %cfg.url, reason = %end.reason,
                    "Collector's TLS certificate refused; samples stay spooled until it is fixed. Backing off.");
                backoff.next_delay()
            }
            _ => {
                if end.registered {
                    tracing::warn!(reason = %end.reason, "Connection to the collector lost; reconnecting.");
                } else {
                    tracing::warn!(collector = %cfg.url, reason = %end.reason, "Cannot reach the collector; will retry.");
                }
                backoff.next_delay()
            }
        };
        tracing::debug!(delay_ms = delay.as_millis() as u64, "Reconnect backoff.");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {},
            _ = shutdown.changed() => return,
        }
    }
}

async fn connect(cfg: &ReporterConfig) -> Result<WsClient, SessionEnd> {
    let mut headers = HeaderMap::new();
    let value = HeaderValue::from_str(&format!("Bearer {}", cfg.token)).map_err(|_| {
        ended(
            RetryAction::AuthRefused,
            "agent token contains characters not allowed in a header",
            false,
        )
    })?;
    let mut value = value;
    value.set_sensitive(true);
    headers.insert("authorization", value);
    let mut builder = WsClientBuilder::default();
    if let Some(tls) = &cfg.tls {
        builder = builder.with_custom_cert_store(tls.clone());
    }
    builder
        .set_headers(headers)
        .connection_timeout(Duration::from_secs(10))
        .request_timeout(Duration::from_secs(30))
        .max_request_size(64 * 1024 * 1024)
        .build(&cfg.url)
        .await
        .map_err(|e| from_client(&e, false))
}

async fn session(
    cfg: &ReporterConfig,
    shared: &Shared,
    (inventory, inventory_ext): (Inventory, InventoryExt),
    backoff: &mut Backoff,
) -> SessionEnd {
    let client = match connect(cfg).await {
        Ok(c) => c,
        Err(e) => return e,
    };
    let request = RegisterRequest {
        instance_id: cfg.instance_id.clone(),
        inventory,
        protocol_version: PROTOCOL_VERSION,
        configured_interval_secs: cfg.configured_interval_secs,
        agent_uid: Some(cfg.agent_uid.clone()),
    };
    // Sent as JSON with the inventory's extension keys (vmmon_common::wire::ext).
    let mut request = match serde_json::to_value(&request) {
        Ok(v) => v,
        Err(e) => return ended(RetryAction::Reconnect, format!("cannot encode: {e}"), false),
    };
    if let Some(inv) = request.get_mut("inventory") {
        ext::merge_object(inv, &inventory_ext);
    }
    let registered: Result<DesiredState, ClientError> =
        client.request(REGISTER_METHOD, rpc_params![request]).await;
    let desired = match registered {
        Ok(d) => d,
        Err(e) => return from_client(&e, false),
    };
    if shared.apply_desired(desired).is_err() {
        return ended(
            RetryAction::Reconnect,
            format!(
                "the collector answered register with an invalid interval of {} s",
                desired.interval_secs
            ),
            false,
        );
    }
    let mut commands = match client.subscribe_commands(cfg.instance_id.clone()).await {
        Ok(s) => s,
        Err(e) => return from_client(&e, true),
    };
    if shared
        .cdn_resume_wanted
        .load(std::sync::atomic::Ordering::Relaxed)
        && shared
            .cdn_resume
            .lock()
            .map(|g| g.is_none())
            .unwrap_or(false)
    {
        let positions = match client.cdn_positions(cfg.instance_id.clone()).await {
            Ok(p) => p,
            Err(e) => {
                // An older collector, or no edge token: read the logs as before.
                tracing::warn!(error = %e, "The collector has no CDN positions for us; reading the access logs from their start.");
                None
            }
        };
        if let Ok(mut g) = shared.cdn_resume.lock() {
            *g = Some(positions);
        }
    }
    backoff.reset();
    tracing::info!(collector = %cfg.url, instance_id = %cfg.instance_id,
        monitoring = desired.monitoring, interval_secs = desired.interval_secs, "Connected to the collector.");

    let mut desired_rx = shared.desired.subscribe();
    let mut heartbeat =
        tokio::time::interval(Duration::from_secs(u64::from(desired.interval_secs)));
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Start by draining whatever the spool holds from before.
    shared.new_batch.notify_one();
    loop {
        tokio::select! {
            biased;
            cmd = commands.next() => {
                let cmd = match cmd {
                    Some(Ok(cmd)) => cmd,
                    Some(Err(e)) => return ended(RetryAction::Reconnect, format!("bad command from collector: {e}"), true),
                    None => return ended(RetryAction::Reconnect, "command subscription closed", true),
                };
                tracing::info!(id = cmd.id, monitoring = cmd.state.monitoring, interval_secs = cmd.state.interval_secs, "Command from the collector.");
                if shared.apply_desired(cmd.state).is_err() {
                    // Not acknowledged: the collector reports the command as not confirmed.
                    continue;
                }
                let ack = CommandAck { instance_id: cfg.instance_id.clone(), id: cmd.id };
                if let Err(e) = client.ack_command(ack).await {
                    return from_client(&e, true);
                }
            }
            _ = client.on_disconnect() => {
                return ended(RetryAction::Reconnect, "collector closed the connection", true);
            }
            _ = shared.new_batch.notified() => {
                if let Err(end) = drain(shared, &client).await {
                    return end;
                }
            }
            _ = heartbeat.tick() => {
                let (spooled, dropped) = shared.spool_counts();
                let hb = Heartbeat {
                    instance_id: cfg.instance_id.clone(),
                    applied: *shared.desired.borrow(),
                    spooled_batches: spooled,
                    dropped_samples_total: dropped,
                };
                match client.heartbeat(hb).await {
                    Ok(d) => {
                        let _ = shared.apply_desired(d);
                    }
                    Err(e) => return from_client(&e, true),
                }
            }
            changed = desired_rx.changed() => {
                if changed.is_ok() {
                    let secs = desired_rx.borrow_and_update().interval_secs;
                    heartbeat = tokio::time::interval(Duration::from_secs(u64::from(secs)));
                    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    heartbeat.reset();
                }
            }
        }
    }
}

/// Sends up to [`BATCHES_PER_TURN`] batches oldest first; re-arms itself when more remain.
async fn drain(shared: &Shared, client: &WsClient) -> Result<(), SessionEnd> {
    for _ in 0..BATCHES_PER_TURN {
        let (seq, batch) = match shared.with_spool(|s| s.oldest_raw()) {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(()),
            Err(e) => {
                tracing::error!(error = %e, "Cannot read the spool.");
                return Ok(());
            }
        };
        // Sent as written, so the extension keys (vmmon_common::wire::ext) reach the collector.
        let sent: Result<ReportAck, ClientError> =
            client.request(REPORT_METHOD, rpc_params![batch]).await;
        match sent {
            Ok(ack) => {
                if ack.duplicate {
                    tracing::debug!(seq, "Collector already had this batch.");
                }
                if let Err(e) = shared.with_spool(|s| s.remove(seq)) {
                    tracing::error!(error = %e, seq, "Cannot delete an acknowledged batch.");
                }
            }
            // This session registered this agent's own instance, so "not registered" can only
            // mean a batch spooled under another instance id (the id changed while the state dir
            // kept its spool): no retry can deliver it. Set it aside, counted, and go on.
            Err(ClientError::Call(ref o))
                if o.code() == vmmon_common::rpc::codes::NOT_REGISTERED =>
            {
                tracing::warn!(seq, error = %o.message(),
                    "A spooled batch of another instance id cannot be delivered; dropped and counted.");
                if let Err(e) = shared.with_spool(|s| s.discard(seq)) {
                    tracing::error!(error = %e, seq, "Cannot discard an undeliverable batch.");
                }
            }
            Err(e) => match classify(&e) {
                RetryAction::DropBatch => {
                    tracing::warn!(seq, error = %e, "Collector refused a batch as invalid; dropped and counted.");
                    if let Err(e) = shared.with_spool(|s| s.discard(seq)) {
                        tracing::error!(error = %e, seq, "Cannot discard a refused batch.");
                    }
                }
                _ => return Err(from_client(&e, true)),
            },
        }
    }
    // More may remain: come back after looking at commands.
    shared.new_batch.notify_one();
    Ok(())
}

/// The desired state a fresh agent applies before the collector says otherwise.
pub fn initial_desired(
    persisted: Option<DesiredState>,
    configured_interval_secs: u32,
) -> DesiredState {
    // A persisted state outside the contract (written by an older agent) is not resumed.
    persisted
        .filter(|d| vmmon_common::vocab::IntervalSecs::new(u64::from(d.interval_secs)).is_ok())
        .unwrap_or(DesiredState {
            monitoring: false,
            interval_secs: configured_interval_secs,
        })
}
