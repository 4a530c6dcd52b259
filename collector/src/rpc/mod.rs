//! The agents' JSON-RPC endpoint: `impl MonitorApiServer`, one handler per WebSocket connection.
//!
//! The connection's agent token is checked once at the upgrade (see [`crate::server`]) and the
//! result travels in the handler, so every method knows which project it may touch.

pub mod budget;
pub mod receive;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use jsonrpsee::PendingSubscriptionSink;
use jsonrpsee::core::{SubscriptionResult, async_trait};
use jsonrpsee::types::ErrorObjectOwned;
use vmmon_common::PROTOCOL_VERSION;
use vmmon_common::rpc::MonitorApiServer;
use vmmon_common::vocab::{IntervalSecs, validate_instance_id};
use vmmon_common::wire::{
    CdnTailState, CommandAck, DesiredState, Heartbeat, RegisterRequest, ReportAck, ReportBatch,
};

use crate::app::App;
use crate::error::CollectorError;
use crate::ingest::{self, checks};
use crate::store::{self, AgentTokenRow, RegisterOutcome};

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

/// [`vmmon_common::wire::ReportAck::process_fields`]: every field of `ProcessSample`, which
/// `ReportBatch`'s derived `Deserialize` reads in the array form as in the object form.
const PROCESS_FIELDS_READ: u32 = {
    let n = vmmon_common::wire::PROCESS_FIELDS.len();
    assert!(n <= u32::MAX as usize);
    n as u32
};

/// How often an open command subscription re-reads its token, so that a revocation reaches a
/// connected agent within 10 s (README) whatever its reporting interval.
pub(crate) const REVOCATION_CHECK: std::time::Duration = std::time::Duration::from_secs(4);

impl Drop for RpcHandler {
    /// The connection ended: its instances may be claimed by another agent.
    fn drop(&mut self) {
        self.app.hub.release(self.conn_id);
    }
}

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

    /// Re-reads the token so a revocation takes effect on a live connection, and the instances
    /// registered on this connection: one removed (`instance remove`, on any collector sharing
    /// the store) or now registered by another project is forgotten here, so the agent's next
    /// call gets `NOT_REGISTERED` and registers again (refused for another project's id)
    /// instead of storing into an instance that is no longer its own.
    async fn ensure_token_live(&self) -> Result<(), CollectorError> {
        let token = self.token()?;
        let id = token.id;
        let project = token.project.clone();
        let registered: Vec<String> = self
            .registered
            .lock()
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default();
        let (row, gone) = self
            .app
            .store
            .read(move |c| {
                let row = store::users::agent_token_by_id(c, id)?;
                let mut gone = Vec::new();
                for instance_id in registered {
                    match store::instances::get(c, &instance_id)? {
                        Some(i) if i.project == project => {}
                        _ => gone.push(instance_id),
                    }
                }
                Ok((row, gone))
            })
            .await?;
        if !gone.is_empty()
            && let Ok(mut set) = self.registered.lock()
        {
            for instance_id in &gone {
                set.remove(instance_id);
            }
        }
        match row {
            Some(t) if t.revoked_at_ms.is_none() => Ok(()),
            _ => Err(CollectorError::Unauthorized(
                "agent token has been revoked".into(),
            )),
        }
    }
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
        if let Err(why) = validate_instance_id(&request.instance_id) {
            return Err(CollectorError::Forbidden(why.to_string()).into());
        }
        checks::validate_inventory(&request.inventory).map_err(CollectorError::InvalidBatch)?;
        // An agent that says no interval (0) or an impossible one gets the collector's default.
        let interval = IntervalSecs::new(u64::from(request.configured_interval_secs))
            .unwrap_or(self.app.settings().config.default_interval)
            .get();
        let agent_uid = match request.agent_uid.as_deref() {
            Some(uid) => {
                checks::validate_agent_uid(uid).map_err(CollectorError::InvalidBatch)?;
                if let Err(owner) = self.app.hub.claim(&request.instance_id, self.conn_id, uid) {
                    let id = request.instance_id.clone();
                    let _ = self
                        .app
                        .store
                        .write(move |c| {
                            store::instances::record_agent_conflict(c, &id, store::now_ms())
                        })
                        .await;
                    self.app
                        .telemetry
                        .anomaly(crate::telemetry::Anomaly::AgentConflict);
                    tracing::warn!(instance_id = %request.instance_id, agent_uid = %uid, live_agent_uid = %owner,
                        "Refused a second live agent for an instance (a cloned image?).");
                    return Err(CollectorError::Forbidden(format!(
                        "instance {:?} is already reported by another live agent ({owner}); \
                         was this VM cloned from an image? give each VM its own instance id",
                        request.instance_id
                    ))
                    .into());
                }
                Some(uid.to_string())
            }
            None => None,
        };
        let id = request.instance_id.clone();
        let tok = token.clone();
        let limits = self.app.settings().config.register_limits;
        let outcome = self
            .app
            .store
            .write(move |c| {
                let outcome = store::instances::register(
                    c,
                    &id,
                    &tok,
                    &request.inventory,
                    interval,
                    store::now_ms(),
                    limits,
                )?;
                if let (RegisterOutcome::Registered(_), Some(uid)) = (&outcome, &agent_uid)
                    && store::instances::set_agent_uid(c, &id, uid)?
                {
                    tracing::info!(instance_id = %id, agent_uid = %uid,
                        "Another agent now reports this instance; its counters start a new baseline.");
                }
                Ok(outcome)
            })
            .await
            .map_err(CollectorError::from)?;
        match outcome {
            RegisterOutcome::ForeignProject => {
                self.app
                    .telemetry
                    .anomaly(crate::telemetry::Anomaly::RegistrationRefused);
                tracing::warn!(instance_id = %request.instance_id, project = %token.project,
                    "Refused registration of an instance owned by another project.");
                Err(CollectorError::Forbidden(format!(
                    "instance {:?} is registered to another project; token of project {:?} may not report it",
                    request.instance_id, token.project
                ))
                .into())
            }
            RegisterOutcome::CaseCollision { existing } => {
                self.app
                    .telemetry
                    .anomaly(crate::telemetry::Anomaly::RegistrationRefused);
                tracing::warn!(instance_id = %request.instance_id, %existing, project = %token.project,
                    "Refused an instance id that differs from a registered one only in letter case.");
                Err(CollectorError::Forbidden(format!(
                    "instance id {:?} differs from the registered {existing:?} only in letter case; \
                     instance ids are unique ignoring case",
                    request.instance_id
                ))
                .into())
            }
            RegisterOutcome::QuotaExceeded { limit } => {
                self.app
                    .telemetry
                    .anomaly(crate::telemetry::Anomaly::RegistrationRefused);
                tracing::warn!(instance_id = %request.instance_id, token_id = token.id, limit,
                    "Refused a registration: the token's instance quota is used up.");
                Err(CollectorError::Forbidden(format!(
                    "this agent token has registered its quota of {limit} instances \
                     (max_instances_per_token); an admin can remove instances or raise it"
                ))
                .into())
            }
            RegisterOutcome::RateLimited { per_minute } => {
                self.app
                    .telemetry
                    .anomaly(crate::telemetry::Anomaly::RegistrationRefused);
                tracing::warn!(instance_id = %request.instance_id, token_id = token.id, per_minute,
                    "Refused a registration: too many new instances from one token.");
                Err(CollectorError::Unavailable(format!(
                    "this agent token registered {per_minute} new instances in the last minute; \
                     retry later"
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
        let project = self.token()?.project.clone();
        self.ensure_token_live().await?;
        self.ensure_registered(&heartbeat.instance_id)?;
        let id = heartbeat.instance_id.clone();
        let row = self
            .app
            .store
            .write(move |c| {
                // The token's project is the instance's (registration refuses another's).
                let key = store::InstanceKey {
                    project: &project,
                    instance_id: &id,
                };
                store::instances::record_seen(
                    c,
                    key,
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

    async fn report(&self, batch: ReportBatch) -> Result<ReportAck, ErrorObjectOwned> {
        let token = self.token()?;
        self.ensure_token_live_recently().await?;
        self.ensure_registered(&batch.instance_id)?;
        let batch_id = batch.batch_id;
        let stored = ingest::ingest(&self.app, token, batch).await?;
        Ok(ReportAck {
            batch_id,
            duplicate: !stored,
            process_fields: PROCESS_FIELDS_READ,
        })
    }

    async fn cdn_positions(
        &self,
        instance_id: String,
    ) -> Result<Option<CdnTailState>, ErrorObjectOwned> {
        let token = self.token()?;
        if !token.cdn_edge {
            return Err(CollectorError::Forbidden(
                "only a CDN edge token has access-log positions".into(),
            )
            .into());
        }
        self.ensure_registered(&instance_id)?;
        // The token's project is the instance's (registration refuses another's).
        let project = token.project.clone();
        let positions = self
            .app
            .store
            .read(move |c| {
                let key = store::InstanceKey {
                    project: &project,
                    instance_id: &instance_id,
                };
                store::cdn::positions(c, key)
            })
            .await
            .map_err(CollectorError::from)?;
        Ok(positions)
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
        // jsonrpsee runs this future as its own task. The subscription is the one thing every
        // agent keeps open, so it also carries revocation to an agent whose interval is long:
        // the token is re-read every REVOCATION_CHECK, and a revoked one closes the
        // subscription with an error; the agent reconnects and is refused at the upgrade.
        let mut check = tokio::time::interval(REVOCATION_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let end = loop {
            tokio::select! {
                cmd = rx.recv() => {
                    let Some(cmd) = cmd else { break Ok(()) };
                    let Ok(msg) = serde_json::value::to_raw_value(&cmd) else { break Ok(()) };
                    if sink.send(msg).await.is_err() {
                        break Ok(());
                    }
                }
                _ = sink.closed() => break Ok(()),
                _ = check.tick() => {
                    if let Err(CollectorError::Unauthorized(why)) = self.ensure_token_live().await {
                        tracing::warn!(%instance_id, conn_id, "Agent token revoked; closing its command subscription.");
                        break Err(why);
                    }
                }
            }
        };
        app.hub.detach(&instance_id, conn_id);
        tracing::debug!(%instance_id, conn_id, "Agent command subscription detached.");
        end.map_err(Into::into)
    }
}
