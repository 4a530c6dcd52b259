//! The delivery side: one WebSocket session at a time to the collector, sending the spool oldest
//! first, applying pushed commands, and heartbeating; reconnects with backoff on any failure.
//! Given several collector URLs (collectors sharing one store), it moves to the next when one
//! cannot be reached, and backs off only once every URL failed in a row ([`Failover`]).

pub mod retry;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use jsonrpsee::core::client::ClientT;
use jsonrpsee::core::client::Error as ClientError;
use jsonrpsee::core::traits::ToRpcParams;
use jsonrpsee::rpc_params;
use jsonrpsee::ws_client::{HeaderMap, HeaderValue, WsClient, WsClientBuilder};
use serde_json::value::RawValue;
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
    /// `ws://host:port/rpc` of each collector, in the order they are tried (at least one).
    pub urls: Vec<String>,
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
            .field("urls", &self.urls)
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
    let mut failover = Failover::new(cfg.urls.len());
    loop {
        if *shutdown.borrow() {
            return;
        }
        let url = cfg.urls.get(failover.current()).map_or("", String::as_str);
        let end = tokio::select! {
            end = session(&cfg, url, &shared, inventory(), &mut backoff) => end,
            _ = shutdown.changed() => return,
        };
        let wait = failover.session_ended(end.registered);
        let delay = match end.action {
            RetryAction::AuthRefused => {
                tracing::error!(collector = %url, reason = %end.reason,
                    "Collector refused this agent's token; fix the token or its project. Backing off.");
                if wait {
                    backoff.refused_delay()
                } else {
                    Duration::ZERO
                }
            }
            _ if end.tls_refused => {
                tracing::error!(collector = %url, reason = %end.reason,
                    "Collector's TLS certificate refused; samples stay spooled until it is fixed. Backing off.");
                if wait {
                    backoff.next_delay()
                } else {
                    Duration::ZERO
                }
            }
            _ => {
                if end.registered {
                    tracing::warn!(collector = %url, reason = %end.reason, "Connection to the collector lost; reconnecting.");
                } else {
                    tracing::warn!(collector = %url, reason = %end.reason, "Cannot reach the collector; will retry.");
                }
                if wait {
                    backoff.next_delay()
                } else {
                    Duration::ZERO
                }
            }
        };
        if !wait {
            tracing::info!(from = %url, to = %cfg.urls[failover.current()], "Trying the next collector.");
        }
        tracing::debug!(delay_ms = delay.as_millis() as u64, "Reconnect backoff.");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {},
            _ = shutdown.changed() => return,
        }
    }
}

/// Which collector URL to try, and whether to back off before trying it.
///
/// A session that registered and then ended is retried on the same collector after the (reset,
/// short) backoff; a collector that could not be reached or refused is left for the next one at
/// once; the agent waits its backoff only after every URL failed in a row, so one dead collector
/// costs one refused connection, not a backoff.
#[derive(Debug, Clone)]
pub struct Failover {
    urls: usize,
    current: usize,
    failed_in_row: usize,
}

impl Failover {
    /// For `urls` collector URLs (at least one is assumed; zero behaves as one).
    pub fn new(urls: usize) -> Failover {
        Failover {
            urls: urls.max(1),
            current: 0,
            failed_in_row: 0,
        }
    }

    /// Index of the URL to try now.
    pub fn current(&self) -> usize {
        self.current
    }

    /// Records how a session ended; returns whether to wait the backoff before the next attempt.
    pub fn session_ended(&mut self, registered: bool) -> bool {
        if registered {
            self.failed_in_row = 0;
            return true;
        }
        self.failed_in_row += 1;
        self.current = (self.current + 1) % self.urls;
        self.failed_in_row % self.urls == 0
    }
}

async fn connect(cfg: &ReporterConfig, url: &str) -> Result<WsClient, SessionEnd> {
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
        .build(url)
        .await
        .map_err(|e| from_client(&e, false))
}

async fn session(
    cfg: &ReporterConfig,
    url: &str,
    shared: &Shared,
    (inventory, inventory_ext): (Inventory, InventoryExt),
    backoff: &mut Backoff,
) -> SessionEnd {
    let client = match connect(cfg, url).await {
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
    tracing::info!(collector = %url, instance_id = %cfg.instance_id,
        monitoring = desired.monitoring, interval_secs = desired.interval_secs, "Connected to the collector.");

    let mut desired_rx = shared.desired.subscribe();
    let mut heartbeat =
        tokio::time::interval(Duration::from_secs(u64::from(desired.interval_secs)));
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Start by draining whatever the spool holds from before.
    shared.new_batch.notify_one();
    // Whether this collector reads process records as arrays (the spool's form): unknown until
    // its first acknowledgement says so, so the session's first batch goes as objects.
    let mut process_arrays = false;
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
                if let Err(end) = drain(shared, &client, &mut process_arrays).await {
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
/// `process_arrays`: whether the collector said it reads process records as arrays of every
/// field this agent writes (updated from each acknowledgement); while not, records are sent as
/// objects.
async fn drain(
    shared: &Shared,
    client: &WsClient,
    process_arrays: &mut bool,
) -> Result<(), SessionEnd> {
    for _ in 0..BATCHES_PER_TURN {
        let (seq, params) = match shared.with_spool(|s| s.next_to_send()) {
            Ok(Some(out)) => (out.seq, ReportParams(out.params)),
            Ok(None) => return Ok(()),
            Err(e) => {
                tracing::error!(error = %e, "Cannot read the spool.");
                return Ok(());
            }
        };
        // Until this returns (answer, error, or the session dropping this future), the spool's
        // bound leaves the batch alone.
        let _in_flight = InFlight { shared, seq };
        // Sent as written (extension keys included), its process records as objects unless
        // this collector reads the arrays. The conversion runs on this task (streamed, ~1 ms
        // for 1,000 processes), only for a session's first batch or an older collector.
        let params = if *process_arrays {
            params
        } else {
            // A record that does not read as a batch is sent as it is: the collector refuses
            // it, and it is dropped and counted below like any refused batch.
            params.with_process_objects().unwrap_or_else(|(params, e)| {
                tracing::warn!(seq, error = %e, "A spooled batch does not read as a batch.");
                params
            })
        };
        let sent: Result<ReportAck, ClientError> = client.request(REPORT_METHOD, params).await;
        match sent {
            Ok(ack) => {
                *process_arrays = usize::try_from(ack.process_fields)
                    .is_ok_and(|n| n >= vmmon_common::wire::PROCESS_FIELDS.len());
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

/// Marks the end of a batch's send when dropped ([`crate::spool::Spool::end_in_flight`]), on
/// every way out of the send, a cancelled one included.
struct InFlight<'a> {
    shared: &'a Shared,
    seq: u64,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.shared.with_spool(|s| s.end_in_flight(self.seq));
    }
}

/// `monitor_report`'s params as the spool made them ([`crate::spool::Outgoing`]): handed to the
/// client as they are, not serialised again.
#[derive(Debug)]
pub struct ReportParams(pub Box<RawValue>);

impl ReportParams {
    /// The same batch with every process record as a JSON object
    /// ([`ext::WithProcessObjects`]: nothing else changes), for a collector whose
    /// [`ReportAck::process_fields`] does not cover the array form the spool writes (see
    /// [`vmmon_common::wire::ProcessSample`]), or has not said yet. Costs a parse and a
    /// serialisation of the batch, so only a session's first batch and batches to such a
    /// collector pay it. On error the params are handed back unchanged.
    pub fn with_process_objects(self) -> Result<Self, (Self, serde_json::Error)> {
        let converted = serde_json::from_str::<[&RawValue; 1]>(self.0.get())
            .and_then(|[batch]| serde_json::value::to_raw_value(&[ext::WithProcessObjects(batch)]));
        match converted {
            Ok(params) => Ok(Self(params)),
            Err(e) => Err((self, e)),
        }
    }
}

impl ToRpcParams for ReportParams {
    fn to_rpc_params(self) -> Result<Option<Box<RawValue>>, serde_json::Error> {
        Ok(Some(self.0))
    }
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

#[cfg(test)]
mod tests {
    use super::{Failover, ReportParams};
    use serde_json::{Value, json};
    use vmmon_common::wire::ext::{ProcessSampleExt, SampleExt, VmSampleExt};
    use vmmon_common::wire::{ProcessSample, ReportAck, ReportBatch, Sample, VmSample};

    fn process(pid: u32) -> ProcessSample {
        ProcessSample {
            pid,
            start_time: 1_764_600_000.5,
            cmd: format!("p{pid}"),
            cpu_pct: 1.5,
            mem_pct: 0.25,
            disk_read_kib_per_sec: 2.0,
            disk_write_kib_per_sec: 3.0,
            net_in_kib_per_sec: 4.0,
            net_out_kib_per_sec: 5.0,
            shutdown_time: (pid == 2).then_some(1_764_600_001.0),
            unreadable: Vec::new(),
        }
    }

    /// The spool writes process records as arrays; a collector that has not said it reads
    /// them gets the same batch with objects, extension keys included.
    #[test]
    fn spooled_array_records_go_as_objects_to_a_collector_that_did_not_announce_them() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = crate::spool::Spool::open(dir.path(), 1 << 20).unwrap();
        let sample = Sample {
            vm: VmSample {
                sampled_at_ms: 1_764_600_000_000,
                proc_count: 2,
                ..VmSample::default()
            },
            processes: Some(vec![process(1), process(2)]),
        };
        let ext = SampleExt {
            vm: VmSampleExt {
                cpu_steal_pct: Some(3.5),
                unreadable_procs: Some(1),
            },
            processes: vec![(
                1,
                ProcessSampleExt {
                    unreadable: vec!["disk_read_kib_per_sec".into()],
                },
            )],
        };
        spool
            .push_batch_ext("i-1", vec![sample.clone()], &[ext], Vec::new(), None)
            .unwrap();
        let out = spool.next_to_send().unwrap().unwrap();
        let spooled: Value = serde_json::from_str(out.params.get()).unwrap();
        assert!(spooled[0]["samples"][0]["processes"][0].is_array());

        let sent = ReportParams(out.params).with_process_objects().unwrap();
        let sent: Value = serde_json::from_str(sent.0.get()).unwrap();
        let procs = &sent[0]["samples"][0]["processes"];
        assert_eq!(procs[0]["pid"], 1);
        assert_eq!(procs[0]["net_out_kib_per_sec"], 5.0);
        assert!(procs[0].get("unreadable").is_none());
        assert_eq!(procs[1]["shutdown_time"], 1_764_600_001.0);
        assert_eq!(procs[1]["unreadable"], json!(["disk_read_kib_per_sec"]));
        assert_eq!(sent[0]["samples"][0]["vm"]["cpu_steal_pct"], 3.5);
        // Both forms are the same batch.
        let (a,): (ReportBatch,) = serde_json::from_value(spooled).unwrap();
        let (b,): (ReportBatch,) = serde_json::from_value(sent).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.samples[0].processes.as_ref().unwrap()[0], process(1));

        // What does not read as a batch is handed back as it was.
        let junk = serde_json::value::RawValue::from_string(r#"[{"seq":1},2]"#.into()).unwrap();
        let (back, _) = ReportParams(junk).with_process_objects().unwrap_err();
        assert_eq!(back.0.get(), r#"[{"seq":1},2]"#);
        let junk = serde_json::value::RawValue::from_string(r#"[{"samples":1}]"#.into()).unwrap();
        let (back, _) = ReportParams(junk).with_process_objects().unwrap_err();
        assert_eq!(back.0.get(), r#"[{"samples":1}]"#);
    }

    /// A collector that predates the array form answers without the key: objects.
    #[test]
    fn an_acknowledgement_without_the_key_means_objects() {
        let old: ReportAck = serde_json::from_value(json!({
            "batch_id": "00000000-0000-0000-0000-000000000000",
            "duplicate": false
        }))
        .unwrap();
        assert_eq!(old.process_fields, 0);
    }

    /// Drives the policy through a sequence of session outcomes: (registered?, expected wait,
    /// expected URL index tried next).
    fn run(urls: usize, steps: &[(bool, bool, usize)]) {
        let mut f = Failover::new(urls);
        assert_eq!(f.current(), 0);
        for (i, &(registered, wait, next)) in steps.iter().enumerate() {
            assert_eq!(f.session_ended(registered), wait, "step {i}: wait");
            assert_eq!(f.current(), next, "step {i}: next url");
        }
    }

    #[test]
    fn one_url_always_backs_off_on_the_same_url() {
        run(1, &[(false, true, 0), (false, true, 0), (true, true, 0)]);
    }

    #[test]
    fn a_dead_collector_is_left_at_once_and_a_full_round_backs_off() {
        run(
            3,
            &[
                // A was up, then lost: retry A after the short backoff.
                (true, true, 0),
                // A refuses: on to B without waiting; B refuses: on to C at once.
                (false, false, 1),
                (false, false, 2),
                // C refuses too: every URL failed in a row, back off, start again at A.
                (false, true, 0),
                (false, false, 1),
                // B answers and later drops: retry B.
                (true, true, 1),
                (false, false, 2),
            ],
        );
    }
}
