//! The HTTP APIs (everything but the agents' `/rpc`), on axum.
//!
//! One [`router`] serves every path of SPEC §3; each API keeps its own error envelope, written as
//! a type that implements [`IntoResponse`] so it cannot drift:
//!
//! | API | module | error envelope |
//! |---|---|---|
//! | `POST /wsgi_app.py` (seed 001) | [`legacy`] | HTTP 200 `{"status_code": 3, "message", …}` ([`legacy::Envelope`]) |
//! | `GET /mana_api/…` (seeds 000, 002) | [`mana`] | `{"msg", "code"}` ([`MsgError`]) |
//! | `/v1/…` CloudKitty (seed 003) | [`rating`] | `{"faultcode", "faultstring", "debuginfo"}` ([`rating::Fault`]) |
//! | `POST /api/flow` CDN (seed 004) | [`cdn`] | `{"status", "msg", "data"}` ([`crate::cdn::FlowError`]) |
//!
//! Unknown paths and methods answer `{"msg", "code"}` 404/405; `GET` routes answer `HEAD` too; a
//! trailing slash is ignored. Bodies are read by [`read_body`] against `max_body_bytes` (each API
//! answers an oversized body in its own envelope, so tower-http's body limit layer is not used).

pub mod cdn;
pub mod legacy;
pub mod mana;
pub mod metrics;
pub mod rating;
pub mod repr;
pub mod ui;

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, Request, State};
use axum::http::{HeaderName, StatusCode, Uri};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{any, get, post};
use http_body_util::BodyExt;
use serde::Serialize;
use tower::ServiceBuilder;
use tower::util::MapRequest;
use tower_http::compression::CompressionLayer;
use tower_http::normalize_path::NormalizePath;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;

use crate::app::App;

/// Path of the method-coded API (seed 001).
pub const LEGACY_PATH: &str = "/wsgi_app.py";
/// Liveness probe, no auth.
pub const HEALTH_PATH: &str = "/healthz";
/// Header carrying the request id (set when the client sends none, echoed in the answer).
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The whole HTTP API as one service: the router, with trailing slashes trimmed before routing
/// (the path as sent is kept in a [`SentPath`] extension for error messages).
pub type HttpService = MapRequest<NormalizePath<Router>, fn(Request) -> Request>;

/// The request path as the client sent it, before trailing slashes were trimmed.
#[derive(Debug, Clone)]
pub struct SentPath(pub String);

fn keep_sent_path(mut req: Request) -> Request {
    let sent = SentPath(req.uri().path().to_string());
    req.extensions_mut().insert(sent);
    req
}

/// Builds the HTTP API over the shared state.
pub fn router(app: Arc<App>) -> HttpService {
    let request_id = HeaderName::from_static(REQUEST_ID_HEADER);
    let layers = ServiceBuilder::new()
        .layer(SetSensitiveRequestHeadersLayer::new([
            axum::http::header::AUTHORIZATION,
            HeaderName::from_static(mana::TOKEN_HEADER),
            axum::http::header::COOKIE,
        ]))
        .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
        .layer(TraceLayer::new_for_http())
        .layer(PropagateRequestIdLayer::new(request_id))
        .layer(CompressionLayer::new());
    let router = Router::new()
        .route("/", get(index))
        .route(HEALTH_PATH, get(health))
        .route(
            LEGACY_PATH,
            post(legacy::handle)
                .fallback(|| async { MsgError::method("use POST for /wsgi_app.py") }),
        )
        .merge(mana::routes())
        .route(cdn::FLOW_PATH, any(cdn::handle))
        .route(metrics::METRICS_PATH, get(metrics::handle))
        .merge(rating::routes(app.clone()))
        .merge(ui::routes())
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            count_request,
        ))
        .layer(layers)
        .with_state(app);
    MapRequest::new(
        NormalizePath::trim_trailing_slash(router),
        keep_sent_path as fn(Request) -> Request,
    )
}

/// `GET /`: who answers here and where its APIs are.
#[derive(Debug, Serialize)]
pub struct Index {
    /// `vmmon-collector`.
    pub name: &'static str,
    /// The collector's version.
    pub version: &'static str,
    /// The API paths served on this port.
    pub paths: Vec<IndexPath>,
    /// The CloudKitty versions document (what CloudKitty clients read at `GET /`).
    pub versions: Vec<rating::VersionDoc>,
}

/// One entry of [`Index::paths`].
#[derive(Debug, Serialize)]
pub struct IndexPath {
    /// Path or prefix.
    pub path: &'static str,
    /// HTTP methods.
    pub methods: &'static str,
    /// What it is.
    pub what: &'static str,
}

async fn index(State(app): State<Arc<App>>, req: Request) -> Json<Index> {
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let origin = rating::root_origin(&app, req.headers(), peer);
    let p = |path, methods, what| IndexPath {
        path,
        methods,
        what,
    };
    Json(Index {
        name: "vmmon-collector",
        version: env!("CARGO_PKG_VERSION"),
        paths: vec![
            p(
                vmmon_common::RPC_PATH,
                "GET (WebSocket)",
                "agents' JSON-RPC",
            ),
            p(LEGACY_PATH, "POST", "method-coded API (wsgi_app.py)"),
            p(mana::VM_PATH, "GET", "VM list"),
            p(mana::BANDWIDTH_PATH, "GET", "bandwidth per 10 minutes"),
            p(
                mana::BANDWIDTH_MONTHLY_PATH,
                "GET",
                "monthly bandwidth peaks and totals",
            ),
            p(
                rating::PREFIX,
                "GET POST PUT DELETE",
                "CloudKitty-compatible rating API v1",
            ),
            p(
                rating::v2::PREFIX,
                "GET POST PUT PATCH",
                "CloudKitty-compatible rating API v2",
            ),
            p(cdn::FLOW_PATH, "POST", "CDN flow query"),
            p(HEALTH_PATH, "GET", "liveness"),
            p(ui::UI_PATH, "GET", "operator dashboard (browser)"),
            p(
                ui::series::SERIES_PATH,
                "GET",
                "a VM metric downsampled for charts",
            ),
            p(
                metrics::METRICS_PATH,
                "GET",
                "Prometheus exposition (admin or metrics_token)",
            ),
        ],
        versions: rating::VersionDoc::all(&origin),
    })
}

/// `GET /healthz` body.
#[derive(Debug, Serialize)]
struct Health {
    status: &'static str,
}

async fn health(State(app): State<Arc<App>>) -> Response {
    match app.store.read(crate::store::ping).await {
        Ok(()) => Json(Health { status: "ok" }).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "Health check cannot read the store.");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(Health {
                    status: "store unavailable",
                }),
            )
                .into_response()
        }
    }
}

/// Counts each answer by its route pattern (never the raw path: bounded label values) and status.
async fn count_request(
    State(app): State<Arc<App>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    app.telemetry
        .http_request(&route, resp.status().as_u16(), started.elapsed());
    resp
}

async fn not_found(uri: Uri, sent: Option<Extension<SentPath>>) -> MsgError {
    let path = sent.map_or_else(|| uri.path().to_string(), |Extension(p)| p.0);
    MsgError::new(StatusCode::NOT_FOUND, format!("no such path: {path}"))
}

/// The `{"msg", "code"}` error used outside the legacy, rating and CDN APIs (mana_api, unknown
/// paths and methods): `code` repeats the HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsgError {
    /// HTTP status (also the body's `code`).
    pub status: StatusCode,
    /// The body's `msg`.
    pub msg: String,
}

#[derive(Serialize)]
struct MsgBody<'a> {
    msg: &'a str,
    code: u16,
}

impl MsgError {
    /// An error with `status` and `msg`.
    pub fn new(status: StatusCode, msg: impl Into<String>) -> MsgError {
        MsgError {
            status,
            msg: msg.into(),
        }
    }

    /// 405 with `msg`.
    pub fn method(msg: impl Into<String>) -> MsgError {
        MsgError::new(StatusCode::METHOD_NOT_ALLOWED, msg)
    }
}

impl IntoResponse for MsgError {
    fn into_response(self) -> Response {
        let body = MsgBody {
            msg: &self.msg,
            code: self.status.as_u16(),
        };
        (self.status, Json(body)).into_response()
    }
}

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Larger than the configured cap.
    #[error("request body exceeds the limit of {0} bytes")]
    TooLarge(usize),
    /// The connection failed mid-body.
    #[error("cannot read request body: {0}")]
    Read(String),
}

/// Bytes of an oversized body read and discarded so the client still receives the error answer
/// (closing mid-upload makes most clients report a reset instead). Past this the connection is
/// simply closed.
const DRAIN_OVERSIZED_BYTES: usize = 16 * 1024 * 1024;

/// Longest a client may take to send a whole request body (a body trickled byte by byte would
/// otherwise hold its connection and buffer forever).
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Reads a whole body within [`BODY_READ_TIMEOUT`], keeping at most `max` bytes; a larger body is
/// drained (up to a bound) without being buffered, and refused.
pub async fn read_body(mut body: Body, max: usize) -> Result<Bytes, BodyError> {
    let deadline = tokio::time::Instant::now() + BODY_READ_TIMEOUT;
    let mut buf: Vec<u8> = Vec::new();
    let mut seen = 0usize;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(_) => {
                return Err(BodyError::Read(format!(
                    "the body did not arrive within {} s",
                    BODY_READ_TIMEOUT.as_secs()
                )));
            }
        };
        let frame = frame.map_err(|e| BodyError::Read(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            seen = seen.saturating_add(data.len());
            if seen <= max {
                buf.extend_from_slice(&data);
            } else if seen > max.saturating_add(DRAIN_OVERSIZED_BYTES) {
                return Err(BodyError::TooLarge(max));
            }
        }
    }
    if seen > max {
        return Err(BodyError::TooLarge(max));
    }
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests;
