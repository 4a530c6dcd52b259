//! The listener: one accept loop, routed by path.
//!
//! Choice: a single address serves both the agents' WebSocket JSON-RPC (`/rpc`, handed to a
//! jsonrpsee tower service built per request) and the HTTP APIs (everything else, see
//! [`crate::http`]), following jsonrpsee's `jsonrpsee_as_service` example. One port keeps firewall
//! rules and the agents' config simple. The agent token is read from the upgrade request and
//! checked once per connection; the result is baked into that connection's [`RpcHandler`].
//!
//! TLS: with `tls_cert_file`/`tls_key_file` configured, every accepted socket goes through a
//! rustls handshake (bounded by the connection's header read timeout, so a slow or silent
//! client cannot hold a slot longer than a slow HTTP client could) before hyper sees it; the
//! same port then carries HTTPS and WSS only. The certificate comes from [`crate::tls::CertResolver`],
//! which a reload swaps without touching established connections. Without them the listener
//! speaks plain HTTP/WS, meant for loopback and development.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use futures::FutureExt;
use hyper::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use jsonrpsee::server::middleware::rpc::RpcServiceBuilder;
use jsonrpsee::server::ws::is_upgrade_request;
use jsonrpsee::server::{
    BatchRequestConfig, PingConfig, ServerConfig, StopHandle, TowerServiceBuilder, stop_channel,
};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tower::{Service, ServiceExt};
use vmmon_common::RPC_PATH;
use vmmon_common::rpc::MonitorApiServer;

use crate::app::App;
use crate::auth;
use crate::http;
use crate::rpc::budget::{REPORT_BYTES_IN_FLIGHT, ReportBudgetLayer};
use crate::rpc::receive::{self, RECEIVE_BYTES_IN_FLIGHT, ReceiveBudget};
use crate::rpc::{AgentAuth, RpcHandler};
use crate::store;

/// Most agent connections at once (jsonrpsee's default of 100 would refuse the 101st agent).
const MAX_AGENT_CONNECTIONS: u32 = 100_000;

/// Largest message on a connection whose agent token was refused (enough for `register`).
const REFUSED_MAX_MESSAGE_BYTES: u32 = 16 * 1024;
/// Most connections with refused tokens at once.
const REFUSED_MAX_CONNECTIONS: u32 = 256;

/// Largest JSON-RPC message from an agent. A batch holds one tick's sample; its largest legal
/// form, [`vmmon_common::wire::MAX_PROCESSES_PER_SAMPLE`] (100,000) process records of about
/// 215–230 bytes of JSON each as objects (~62 as arrays), is ~23 MB, so 32 MiB refuses nothing
/// an agent can legitimately send
/// while halving what one message may make the collector buffer (it was 64 MiB).
const MAX_RPC_MESSAGE_BYTES: u32 = 32 * 1024 * 1024;

/// A connection must deliver a request's complete head within this long, counted from when it
/// opened or finished its previous answer: it is both the header read timeout and the idle
/// keep-alive timeout (hyper starts the same timer for both). WebSocket connections, once
/// upgraded, are not subject to it.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections at once that are not (yet) agent WebSockets: HTTP API clients and connections
/// still sending their first request. Slow or idle ones are closed by [`HEADER_READ_TIMEOUT`]
/// and the body deadline, so they cannot hold these for long; agents' WebSockets leave this pool
/// once upgraded (they are bounded by [`MAX_AGENT_CONNECTIONS`]).
pub const MAX_HTTP_CONNECTIONS: usize = 1024;
/// Connections accepted beyond [`MAX_HTTP_CONNECTIONS`]: they must send their request head within
/// [`OVERFLOW_HEADER_READ_TIMEOUT`], so idle or slow sockets holding the main pool cannot keep a
/// prompt client (an agent opening its WebSocket, a health check) out.
pub const OVERFLOW_CONNECTIONS: usize = 256;
/// Header read timeout of an overflow connection.
pub const OVERFLOW_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// A running server.
pub struct Running {
    /// The bound address (useful with port 0).
    pub local_addr: SocketAddr,
    stop: jsonrpsee::server::ServerHandle,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops accepting and waits for the accept loop to end.
    pub async fn stop(self) {
        let _ = self.stop.stop();
        let _ = self.task.await;
    }
}

/// Binds `addr` and serves until stopped.
pub async fn start(app: Arc<App>, listener: TcpListener) -> std::io::Result<Running> {
    let local_addr = listener.local_addr()?;
    let tls = match app.tls() {
        Some(resolver) => Some(TlsAcceptor::from(
            crate::tls::server_config(resolver).map_err(std::io::Error::other)?,
        )),
        None => {
            if !local_addr.ip().is_loopback() {
                tracing::warn!(addr = %local_addr,
                    "Serving plain HTTP on a non-loopback address: agent tokens, passwords and sessions cross the network unencrypted. Set tls_cert_file and tls_key_file.");
            }
            None
        }
    };
    let (stop_handle, server_handle) = stop_channel();
    // WebSocket pings find dead agent connections (a VM that vanished without closing its TCP
    // connection), so their instances can be claimed by a new agent within a few minutes.
    let ping = PingConfig::new()
        .ping_interval(Duration::from_secs(30))
        .inactive_limit(Duration::from_secs(90));
    // One budget for report bytes being decoded and stored, shared by every agent connection
    // (each connection gets its own layer over it, see `accept_loop`).
    let budget = ReportBudgetLayer::new(REPORT_BYTES_IN_FLIGHT);
    let config = ServerConfig::builder()
        .enable_ws_ping(ping)
        .set_batch_request_config(BatchRequestConfig::Disabled)
        .max_request_body_size(MAX_RPC_MESSAGE_BYTES)
        .max_response_body_size(MAX_RPC_MESSAGE_BYTES)
        .max_connections(MAX_AGENT_CONNECTIONS)
        .build();
    let builder = jsonrpsee::server::Server::builder()
        .set_config(config)
        .to_service_builder()
        .set_rpc_middleware(RpcServiceBuilder::new().layer(budget.clone()))
        .max_connections(MAX_AGENT_CONNECTIONS);
    // A connection whose token was refused still gets typed JSON-RPC errors (so its agent can
    // log why and back off), but may only send tiny messages and holds few slots: nobody without
    // a token can make the collector parse large payloads or hold many connections.
    let refused_config = ServerConfig::builder()
        .set_batch_request_config(BatchRequestConfig::Disabled)
        .max_request_body_size(REFUSED_MAX_MESSAGE_BYTES)
        .max_response_body_size(REFUSED_MAX_MESSAGE_BYTES)
        .max_connections(REFUSED_MAX_CONNECTIONS)
        .max_subscriptions_per_connection(1)
        .build();
    let refused = jsonrpsee::server::Server::builder()
        .set_config(refused_config)
        .to_service_builder()
        .set_rpc_middleware(RpcServiceBuilder::new().layer(budget.clone()))
        .max_connections(REFUSED_MAX_CONNECTIONS);
    let services = AgentServices {
        builder,
        refused,
        budget,
        receive: ReceiveBudget::new(RECEIVE_BYTES_IN_FLIGHT, MAX_RPC_MESSAGE_BYTES),
    };
    let task = tokio::spawn(accept_loop(app, listener, tls, stop_handle, services));
    Ok(Running {
        local_addr,
        stop: server_handle,
        task,
    })
}

/// How each agent connection's JSON-RPC service is built: the report budget as RPC middleware.
type AgentServiceBuilder = TowerServiceBuilder<
    tower::layer::util::Stack<ReportBudgetLayer, tower::layer::util::Identity>,
    tower::layer::util::Identity,
>;

/// What agent connections are served with.
#[derive(Clone)]
struct AgentServices {
    /// Connections with a valid token.
    builder: AgentServiceBuilder,
    /// Connections whose token was refused.
    refused: AgentServiceBuilder,
    /// The decode-and-store budget, layered per connection.
    budget: ReportBudgetLayer,
    /// The bound on received messages (see [`crate::rpc::receive`]).
    receive: ReceiveBudget,
}

async fn accept_loop(
    app: Arc<App>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    stop_handle: StopHandle,
    services: AgentServices,
) {
    let api = http::router(app.clone());
    let http_slots = Arc::new(Semaphore::new(MAX_HTTP_CONNECTIONS));
    let overflow_slots = Arc::new(Semaphore::new(OVERFLOW_CONNECTIONS));
    loop {
        let (sock, peer) = tokio::select! {
            res = listener.accept() => match res {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, most likely: back off instead of spinning.
                    tracing::warn!(error = %e, "Accept failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop_handle.clone().shutdown() => break,
        };
        let (slot, header_timeout) = match http_slots.clone().try_acquire_owned() {
            Ok(slot) => (slot, HEADER_READ_TIMEOUT),
            Err(_) => match overflow_slots.clone().try_acquire_owned() {
                Ok(slot) => (slot, OVERFLOW_HEADER_READ_TIMEOUT),
                Err(_) => {
                    tracing::warn!(%peer, max = MAX_HTTP_CONNECTIONS + OVERFLOW_CONNECTIONS,
                        "Too many HTTP connections; closing a new one.");
                    drop(sock);
                    continue;
                }
            },
        };
        // The slot is released when the connection ends, or when it becomes an agent WebSocket.
        let slot = Arc::new(std::sync::Mutex::new(Some(slot)));
        let conn = services.receive.connection();
        let app = app.clone();
        let stop = stop_handle.clone();
        let services_ = services.clone();
        let api = api.clone();
        let conn_slot = slot.clone();
        let svc_conn = conn.clone();
        let svc = tower::service_fn(move |mut req: Request<Incoming>| {
            let api = api.clone();
            let app = app.clone();
            let stop = stop.clone();
            let services = services_.clone();
            let slot = conn_slot.clone();
            let conn = svc_conn.clone();
            async move {
                let first = conn.first_request();
                if req.uri().path() != RPC_PATH {
                    if first {
                        conn.http();
                    }
                    req.extensions_mut().insert(ConnectInfo(peer));
                    let resp = api.oneshot(req.map(Body::new)).await;
                    return Ok::<_, Box<dyn std::error::Error + Send + Sync>>(match resp {
                        Ok(r) => r,
                        Err(never) => match never {},
                    });
                }
                // The receive budget must know where the WebSocket stream starts: right after
                // the connection's first request head, which must have no body.
                if !first || !is_upgrade_request(&req) || has_body(&req) {
                    conn.http();
                    return Ok(rpc_not_upgrade());
                }
                let auth = authenticate(&app, &req).await;
                let (builder, max_message) = match auth {
                    AgentAuth::Token(_) => {
                        release(&slot);
                        (services.builder, MAX_RPC_MESSAGE_BYTES)
                    }
                    AgentAuth::Refused(_) => (services.refused, REFUSED_MAX_MESSAGE_BYTES),
                };
                conn.agent(max_message);
                let builder = builder.set_rpc_middleware(
                    RpcServiceBuilder::new().layer(services.budget.for_connection(conn.clone())),
                );
                let methods = RpcHandler::new(app, auth).into_rpc();
                let mut rpc = builder.build(methods, stop);
                let resp = rpc.call(req).await.map(|r| r.map(Body::new))?;
                if resp.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
                    conn.http();
                }
                Ok(resp)
            }
            .boxed()
        });
        let stopped = stop_handle.clone().shutdown();
        let Some(acceptor) = tls.clone() else {
            let io = services.receive.wrap(sock, conn);
            tokio::spawn(serve_connection(io, svc, stopped, slot, header_timeout));
            continue;
        };
        tokio::spawn(serve_tls_connection(
            acceptor,
            sock,
            peer,
            (services.receive.clone(), conn),
            svc,
            stopped,
            slot,
            header_timeout,
        ));
    }
}

/// Whether a request announces a body (`/rpc` upgrades must not: the WebSocket stream starts
/// right after the head).
fn has_body(req: &Request<Incoming>) -> bool {
    let headers = req.headers();
    headers.contains_key(hyper::header::TRANSFER_ENCODING)
        || headers
            .get(hyper::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// The answer to a `/rpc` request that is not a WebSocket upgrade opening its connection.
fn rpc_not_upgrade() -> hyper::Response<Body> {
    use axum::response::IntoResponse;
    (
        hyper::StatusCode::BAD_REQUEST,
        "/rpc serves agents over WebSocket only: send the upgrade request, without a body, as the first request of a new connection\n",
    )
        .into_response()
}

fn release(slot: &std::sync::Mutex<Option<OwnedSemaphorePermit>>) {
    if let Ok(mut s) = slot.lock() {
        s.take();
    }
}

/// Completes the TLS handshake within `header_timeout`, then serves the connection as
/// [`serve_connection`] does; a failed or slow handshake closes it.
#[allow(clippy::too_many_arguments)]
async fn serve_tls_connection<S, B>(
    acceptor: TlsAcceptor,
    sock: tokio::net::TcpStream,
    peer: SocketAddr,
    (receive, conn): (ReceiveBudget, Arc<receive::Connection>),
    svc: S,
    stopped: impl std::future::Future<Output = ()>,
    slot: Arc<std::sync::Mutex<Option<OwnedSemaphorePermit>>>,
    header_timeout: Duration,
) where
    S: tower::Service<Request<Incoming>, Response = hyper::Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match tokio::time::timeout(header_timeout, acceptor.accept(sock)).await {
        Ok(Ok(stream)) => {
            let io = receive.wrap(stream, conn);
            serve_connection(io, svc, stopped, slot, header_timeout).await
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed.");
            release(&slot);
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out.");
            release(&slot);
        }
    }
}

/// Serves one connection with HTTP/1.1 (upgrades to WebSocket allowed) until it ends or the
/// server stops; a stop lets the request in progress finish.
async fn serve_connection<I, S, B>(
    sock: I,
    svc: S,
    stopped: impl std::future::Future<Output = ()>,
    slot: Arc<std::sync::Mutex<Option<OwnedSemaphorePermit>>>,
    header_timeout: Duration,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<Request<Incoming>, Response = hyper::Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    let conn = http
        .serve_connection(TokioIo::new(sock), TowerToHyperService::new(svc))
        .with_upgrades();
    tokio::pin!(conn, stopped);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(error = %e, "Connection ended with an error.");
            }
        }
        _ = &mut stopped => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
    release(&slot);
}

/// Checks `Authorization: Bearer <agent token>` on the upgrade request.
async fn authenticate(app: &App, req: &Request<Incoming>) -> AgentAuth {
    let header = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some(token) = header
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
    else {
        return AgentAuth::Refused(
            "missing agent token: send Authorization: Bearer <token>".into(),
        );
    };
    let hash = auth::token_sha256(token);
    match app
        .store
        .read(move |c| store::users::agent_token_by_hash(c, &hash))
        .await
    {
        Ok(Some(row)) if row.revoked_at_ms.is_none() => AgentAuth::Token(row),
        Ok(Some(_)) => AgentAuth::Refused("agent token has been revoked".into()),
        Ok(None) => AgentAuth::Refused("unknown agent token".into()),
        Err(e) => {
            tracing::error!(error = %e, "Cannot check an agent token.");
            AgentAuth::Refused("collector cannot check tokens right now".into())
        }
    }
}
