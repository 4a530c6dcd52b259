//! HTTP APIs other than the agents' `/rpc`: routing and shared request/response helpers.

pub mod cdn;
pub mod legacy;
pub mod mana;
pub mod rating;
mod repr;

use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, StatusCode};
use jsonrpsee::server::HttpBody;
use serde_json::{Value, json};

use crate::App;

/// Path of the method-coded API (seed 001).
pub const LEGACY_PATH: &str = "/wsgi_app.py";
/// Liveness probe, no auth.
pub const HEALTH_PATH: &str = "/healthz";
/// Longest accepted instance id.
pub const MAX_INSTANCE_ID_LEN: usize = 128;

/// The response type shared with the JSON-RPC service.
pub type Response = hyper::Response<HttpBody>;

/// Routes one non-RPC HTTP request.
pub async fn route(app: Arc<App>, req: Request<Incoming>) -> Response {
    let path = req.uri().path().to_string();
    match (req.method().clone(), path.as_str()) {
        (Method::GET | Method::HEAD, HEALTH_PATH) => health(&app).await,
        (Method::POST, LEGACY_PATH) => legacy::handle(&app, req).await,
        (_, LEGACY_PATH) => error_json(StatusCode::METHOD_NOT_ALLOWED, "use POST for /wsgi_app.py"),
        (_, p) if mana::owns(p) => mana::handle(&app, req).await,
        (_, p) if rating::owns(p) => rating::handle(&app, req).await,
        (_, cdn::FLOW_PATH) => cdn::handle(&app, req).await,
        _ => error_json(StatusCode::NOT_FOUND, &format!("no such path: {path}")),
    }
}

async fn health(app: &App) -> Response {
    match app
        .store
        .read(|c| Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?))
        .await
    {
        Ok(_) => json_response(StatusCode::OK, &json!({"status": "ok"})),
        Err(e) => {
            tracing::error!(error = %e, "Health check cannot read the store.");
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"status": "store unavailable"}),
            )
        }
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

/// Reads a whole body, keeping at most `max` bytes; a larger body is drained (up to a bound)
/// without being buffered and refused.
pub async fn read_body(mut body: Incoming, max: usize) -> Result<Bytes, BodyError> {
    let mut buf: Vec<u8> = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
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

/// A JSON response.
pub fn json_response(status: StatusCode, value: &Value) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = hyper::Response::new(HttpBody::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// The `{"msg", "code"}` error body used outside the legacy API.
pub fn error_json(status: StatusCode, msg: &str) -> Response {
    json_response(status, &json!({"msg": msg, "code": status.as_u16()}))
}

/// Instance ids: 1–128 of `[A-Za-z0-9._:-]`; anything else is refused before any lookup.
pub fn validate_instance_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("instance_id is empty".into());
    }
    if id.len() > MAX_INSTANCE_ID_LEN {
        return Err(format!(
            "instance_id is longer than {MAX_INSTANCE_ID_LEN} characters"
        ));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(format!(
            "instance_id {id:?} contains the character {bad:?}; allowed are letters, digits and . _ : -"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids() {
        assert!(validate_instance_id("6abf5a1e-b85c-4e5f-ba02-f96e22cbd02e").is_ok());
        assert!(validate_instance_id("i-1.a_b:c").is_ok());
        assert!(validate_instance_id("").is_err());
        assert!(validate_instance_id("x' OR '1'='1").is_err());
        assert!(validate_instance_id(&"a".repeat(129)).is_err());
    }
}
