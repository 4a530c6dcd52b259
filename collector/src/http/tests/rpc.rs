//! The agents' RPC in process: the real [`RpcHandler`] called through jsonrpsee's
//! `RpcModule::call`, with the connection's token checked as the WebSocket upgrade checks it.
//! [`FakeAgent`] is the one fake agent of the collector's tests: it feeds the other API tests
//! through the same code path a real agent's reports take.

use std::sync::Arc;
use std::time::Duration;

use jsonrpsee::RpcModule;
use jsonrpsee::core::server::MethodsError;
use jsonrpsee::types::ErrorObjectOwned;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use vmmon_common::rpc::{MonitorApiServer, codes};
use vmmon_common::test_support::{self as ts, counters_batch};
use vmmon_common::wire::{
    Command, CommandAck, DesiredState, Heartbeat, Inventory, ReportAck, ReportBatch, Sample,
};

use super::{ADMIN_SID, World};
use crate::rpc::{AgentAuth, REVOCATION_CHECK, RpcHandler};
use crate::{App, admin, auth, store};

/// One agent connection: the handler the server would build for `token`.
pub(super) struct FakeAgent {
    module: RpcModule<RpcHandler>,
    seq: u64,
    /// Each instance's last sample time: `elapsed_ms` is what a monotonic clock would have
    /// measured since then (0 for the first sample, as after an agent start, and for a sample
    /// older than the last, which only a restarted agent could send).
    last_at: std::collections::HashMap<String, i64>,
}

impl FakeAgent {
    /// Connects with `token`, checked like the upgrade request's `Authorization` header.
    pub(super) async fn connect(app: &Arc<App>, token: &str) -> FakeAgent {
        let hash = auth::token_sha256(token);
        let row = app
            .store
            .read(move |c| store::users::agent_token_by_hash(c, &hash))
            .await
            .unwrap();
        let auth = match row {
            Some(r) if r.revoked_at_ms.is_none() => AgentAuth::Token(r),
            Some(_) => AgentAuth::Refused("agent token has been revoked".into()),
            None => AgentAuth::Refused("unknown agent token".into()),
        };
        FakeAgent {
            module: RpcHandler::new(app.clone(), auth).into_rpc(),
            seq: 0,
            last_at: std::collections::HashMap::new(),
        }
    }

    /// Creates a token for `project`/`region`/`party` and connects with it; returns the token id.
    pub(super) async fn new_token(
        app: &Arc<App>,
        project: &str,
        region: &str,
        party: &str,
    ) -> (FakeAgent, i64) {
        let (id, token) = admin::create_token(&app.store, project, region, party, false, &[])
            .await
            .unwrap();
        (FakeAgent::connect(app, &token).await, id)
    }

    /// Calls `monitor_<method>` with one parameter; the JSON-RPC error object on failure.
    pub(super) async fn call<P: serde::Serialize, T: DeserializeOwned + Clone>(
        &self,
        method: &str,
        param: P,
    ) -> Result<T, ErrorObjectOwned> {
        match self
            .module
            .call::<_, T>(&format!("monitor_{method}"), (param,))
            .await
        {
            Ok(v) => Ok(v),
            Err(MethodsError::JsonRpc(e)) => Err(e),
            Err(other) => panic!("monitor_{method}: {other}"),
        }
    }

    /// Registers `instance_id` (interval 30 s); panics when refused.
    pub(super) async fn register(&self, instance_id: &str, inventory: Inventory) -> DesiredState {
        self.call("register", ts::register_request(instance_id, 30, inventory))
            .await
            .unwrap_or_else(|e| panic!("register {instance_id}: {e}"))
    }

    /// Sends a batch as it is (e.g. a resend).
    pub(super) async fn send(&self, batch: &ReportBatch) -> Result<ReportAck, ErrorObjectOwned> {
        self.call("report", batch.clone()).await
    }

    /// Builds, sends and checks one new batch of `(sampled_at_ms, rx_total, tx_total)` readings.
    pub(super) async fn report(
        &mut self,
        instance_id: &str,
        readings: &[(i64, u64, u64)],
    ) -> ReportBatch {
        self.seq += 1;
        let mut b = counters_batch(instance_id, self.seq, readings);
        self.set_elapsed(&mut b);
        let ack = self.send(&b).await.unwrap();
        assert!(!ack.duplicate, "a new batch is stored");
        b
    }

    /// Sends one batch of whole samples.
    pub(super) async fn report_samples(
        &mut self,
        instance_id: &str,
        samples: Vec<Sample>,
    ) -> Result<ReportAck, ErrorObjectOwned> {
        self.seq += 1;
        let mut b = ts::batch(instance_id, self.seq, samples);
        self.set_elapsed(&mut b);
        self.send(&b).await
    }

    fn set_elapsed(&mut self, b: &mut ReportBatch) {
        for s in &mut b.samples {
            let at = s.vm.sampled_at_ms;
            let last = self.last_at.insert(b.instance_id.clone(), at);
            s.vm.elapsed_ms = match last {
                Some(l) if at > l => u64::try_from(at - l).unwrap(),
                _ => 0,
            };
        }
    }
}

fn code(r: Result<impl std::fmt::Debug, ErrorObjectOwned>) -> (i32, String) {
    let e = r.expect_err("must be refused");
    (e.code(), e.message().to_string())
}

#[tokio::test]
async fn reports_for_an_instance_not_registered_on_this_connection_are_refused() {
    let w = World::new().await;
    let (mut pa, _) = FakeAgent::new_token(&w.app, "pa", "r1", "x").await;
    let (other, _) = FakeAgent::new_token(&w.app, "pa", "r1", "x").await;
    let (pb, _) = FakeAgent::new_token(&w.app, "pb", "r1", "x").await;
    pa.register("a1", Inventory::default()).await;
    let at = vmmon_common::vocab::now_ms() - 60_000;
    let one = || {
        vec![Sample {
            vm: ts::vm_sample(at, 0, 0),
            processes: None,
        }]
    };
    assert!(
        pa.report_samples("a1", one()).await.is_ok(),
        "registered here: accepted"
    );

    // (who, instance): another connection of the same project, another project's token, and an
    // instance nobody registered; each is refused on every method, and nothing is stored.
    let mut agents = [pa, other, pb];
    for (i, instance) in [(1, "a1"), (2, "a1"), (0, "a2"), (2, "b1")] {
        let agent = &mut agents[i];
        let (c, msg) = code(agent.report_samples(instance, one()).await);
        assert_eq!(c, codes::NOT_REGISTERED, "report {instance}: {msg}");
        assert_eq!(
            msg,
            format!("instance {instance:?} has not registered on this connection")
        );
        let hb = Heartbeat {
            instance_id: instance.into(),
            applied: DesiredState {
                monitoring: false,
                interval_secs: 30,
            },
            spooled_batches: 0,
            dropped_samples_total: 0,
        };
        assert_eq!(
            code(agent.call::<_, DesiredState>("heartbeat", hb).await).0,
            codes::NOT_REGISTERED
        );
        let ack = CommandAck {
            instance_id: instance.into(),
            id: 1,
        };
        assert_eq!(
            code(agent.call::<_, ()>("ackCommand", ack).await).0,
            codes::NOT_REGISTERED
        );
        let sub = agent
            .module
            .subscribe_unbounded("monitor_subscribeCommands", (instance,))
            .await;
        assert!(sub.is_err(), "subscribe {instance}");
    }
    let stored = w
        .app
        .store
        .read(move |c| {
            c.query_row(
                "SELECT COUNT(*) FROM vm_samples WHERE sampled_at_ms = ?1",
                [at],
                |r| r.get::<_, i64>(0),
            )
        })
        .await
        .unwrap();
    assert_eq!(
        stored, 1,
        "only the registered connection's report was stored"
    );
    // Another project's token may not even register an instance it does not own.
    let (c, msg) = code(
        agents[2]
            .call::<_, DesiredState>(
                "register",
                ts::register_request("a1", 30, Inventory::default()),
            )
            .await,
    );
    assert_eq!(c, codes::FORBIDDEN, "{msg}");
}

#[tokio::test]
async fn a_revoked_token_closes_an_open_command_subscription() {
    let w = World::with_config(crate::CollectorConfig {
        command_timeout_ms: 300,
        ..crate::CollectorConfig::default()
    })
    .await;
    let (agent, id) = FakeAgent::new_token(&w.app, "pa", "r1", "x").await;
    agent.register("a1", Inventory::default()).await;
    let mut sub = agent
        .module
        .subscribe_unbounded("monitor_subscribeCommands", ("a1",))
        .await
        .unwrap();
    // Commands still flow before the revocation.
    let v = w
        .legacy(json!({"method": 32524, "session_id": ADMIN_SID, "data": {"instance_id": "a1"}}))
        .await;
    assert_eq!(
        v["status_code"], 4,
        "connected but never acknowledging: {v}"
    );
    let cmd = tokio::time::timeout(Duration::from_secs(10), sub.next::<Command>())
        .await
        .expect("the command is pushed")
        .unwrap()
        .unwrap()
        .0;
    assert!(!cmd.state.monitoring);

    assert!(admin::revoke_token(&w.app.store, id).await.unwrap());
    let revoked = std::time::Instant::now();
    // The subscription ends (with an error notification or closed) within two checks, although
    // this agent never reports or heartbeats.
    let end = tokio::time::timeout(
        REVOCATION_CHECK * 2 + Duration::from_secs(1),
        sub.next::<Value>(),
    )
    .await
    .expect("subscription closed after the revocation");
    assert!(
        !matches!(end, Some(Ok(_))),
        "no more commands after the revocation: {end:?}"
    );
    assert!(
        revoked.elapsed() < Duration::from_secs(10),
        "README: within 10 s"
    );
    // And the open connection's other calls are refused too.
    let (c, msg) = code(
        agent
            .call::<_, DesiredState>(
                "register",
                ts::register_request("a1", 30, Inventory::default()),
            )
            .await,
    );
    assert_eq!(
        (c, msg.as_str()),
        (codes::UNAUTHORIZED, "agent token has been revoked")
    );
}
