//! `/v1/...`: the CloudKitty-compatible rating API (SPEC §3.3, seed 003, docs/rating.md).
//!
//! Upstream's observable behaviour is kept: `/v1/billing/...` is an alias of `/v1/rating/...`;
//! a trailing slash is optional; scalar arguments come from the path, the query string or the top
//! level of a JSON body; decimals are written as JSON strings and datetimes as naive UTC
//! ISO-8601; errors are `{"faultcode","faultstring","debuginfo":null}` with the right status,
//! and a URL that matches no route gets a plain (not JSON) 404.

mod auth;
mod collector;
mod hashmap;
mod info;
mod modules;
mod report;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::{BodyError, read_body};
use crate::app::App;
use crate::store::StoreError;

pub use auth::Caller;

/// Path prefix of this API.
pub const PREFIX: &str = "/v1";

/// A JSON error: status and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// HTTP status.
    pub status: StatusCode,
    /// `faultstring`.
    pub message: String,
}

impl Fault {
    /// A fault with `status`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Fault {
        Fault {
            status,
            message: message.into(),
        }
    }
    /// 400.
    pub fn bad(message: impl Into<String>) -> Fault {
        Fault::new(StatusCode::BAD_REQUEST, message)
    }
    /// 401.
    pub fn unauthorized(message: &str) -> Fault {
        Fault::new(StatusCode::UNAUTHORIZED, message)
    }
    /// 403 for policy `rule`.
    pub fn policy(rule: &str) -> Fault {
        Fault::new(
            StatusCode::FORBIDDEN,
            format!("Policy doesn't allow {rule} to be performed."),
        )
    }
    /// 404.
    pub fn not_found(message: impl Into<String>) -> Fault {
        Fault::new(StatusCode::NOT_FOUND, message)
    }
    /// 409.
    pub fn conflict(message: impl Into<String>) -> Fault {
        Fault::new(StatusCode::CONFLICT, message)
    }
    /// 500, logged; the client gets no detail.
    pub fn store(e: StoreError) -> Fault {
        tracing::error!(error = %e, "Rating API store failure.");
        Fault::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error: the store is unavailable, try again",
        )
    }
    /// A missing mandatory attribute, in WSME's words.
    pub fn mandatory(attr: &str) -> Fault {
        Fault::bad(format!(
            "Invalid input for field/attribute {attr}. Value: 'None'. Mandatory field missing."
        ))
    }
    /// An attribute with a bad value, in WSME's words.
    pub fn invalid(attr: &str, value: &str, why: &str) -> Fault {
        Fault::bad(format!(
            "Invalid input for field/attribute {attr}. Value: '{value}'. {why}"
        ))
    }
}

/// The body of a [`Fault`] (WSME's error shape).
#[derive(Debug, Serialize)]
struct FaultBody<'a> {
    faultcode: &'static str,
    faultstring: &'a str,
    debuginfo: Option<()>,
}

impl IntoResponse for Fault {
    fn into_response(self) -> Response {
        let faultcode = if self.status.is_server_error() {
            "Server"
        } else {
            "Client"
        };
        let body = FaultBody {
            faultcode,
            faultstring: &self.message,
            debuginfo: None,
        };
        (self.status, Json(body)).into_response()
    }
}

/// A successful (or plain-404) answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// 200 with a JSON body.
    Ok(Value),
    /// 201 with the created object and `Location: <collection url>/<id>`.
    Created(Value, String),
    /// 204, empty.
    NoContent,
    /// 302 to `Location` (upstream's answer to an update), empty.
    Found(String),
    /// A URL that matches no route: the framework's plain 404.
    NoRoute,
    /// A known URL with a method it does not take: plain 405.
    BadMethod,
}

type Outcome = Result<Reply, Fault>;

fn empty(status: StatusCode) -> Response {
    (status, Body::empty()).into_response()
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=UTF-8"),
        )],
        text,
    )
        .into_response()
}

fn with_location(mut r: Response, location: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        match self {
            Reply::Ok(v) => Json(v).into_response(),
            Reply::Created(v, loc) => {
                with_location((StatusCode::CREATED, Json(v)).into_response(), &loc)
            }
            Reply::NoContent => empty(StatusCode::NO_CONTENT),
            Reply::Found(loc) => with_location(empty(StatusCode::FOUND), &loc),
            Reply::NoRoute => plain(
                StatusCode::NOT_FOUND,
                "404 Not Found\n\nThe resource could not be found.\n",
            ),
            Reply::BadMethod => plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "405 Method Not Allowed\n\nThe method is not allowed for this resource.\n",
            ),
        }
    }
}

/// One request, parsed.
pub struct Ctx<'a> {
    /// Shared state.
    pub app: &'a App,
    /// Method.
    pub method: Method,
    /// The request path as sent, without a trailing slash.
    pub path: String,
    /// Path segments after `/v1`, percent-decoded, `billing` read as `rating`.
    pub segs: Vec<String>,
    /// Query parameters (the first of repeated names).
    pub query: Vec<(String, String)>,
    /// The JSON body (Null when there is none).
    pub body: Value,
    /// Who calls.
    pub caller: Caller,
    /// `http://host` for absolute Location headers ("" without a Host header).
    pub origin: String,
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).and_then(|b| hex(*b)),
                bytes.get(i + 2).and_then(|b| hex(*b)),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Ctx<'_> {
    /// A scalar argument from the query string, else the top level of the JSON body.
    pub fn arg(&self, name: &str) -> Option<String> {
        if let Some((_, v)) = self.query.iter().find(|(k, _)| k == name) {
            return Some(v.clone()).filter(|v| !v.is_empty());
        }
        match self.body.get(name) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(Value::Bool(b)) => Some(b.to_string()),
            _ => None,
        }
    }

    /// A boolean argument (true/t/yes/y/on/1, false/f/no/n/off/0), `default` when absent.
    pub fn bool_arg(&self, name: &str, default: bool) -> Result<bool, Fault> {
        match self.arg(name) {
            None => Ok(default),
            Some(v) => parse_bool(&v)
                .ok_or_else(|| Fault::invalid(name, &v, "Value should be a boolean (true/false).")),
        }
    }

    /// A datetime argument as epoch ms.
    pub fn time_arg(&self, name: &str) -> Result<Option<i64>, Fault> {
        match self.arg(name) {
            None => Ok(None),
            Some(v) => parse_datetime(&v).map(Some).ok_or_else(|| {
                Fault::invalid(name, &v, "Value should be an ISO-8601 date or datetime.")
            }),
        }
    }

    /// The body as an object whose keys are all in `allowed` (else 400, as WSME does for a
    /// typed body); an absent body is an empty object.
    pub fn body_object(&self, arg: &str, allowed: &[&str]) -> Result<Map<String, Value>, Fault> {
        let obj = match &self.body {
            Value::Null => Map::new(),
            Value::Object(m) => m.clone(),
            _ => {
                return Err(Fault::bad(format!(
                    "the body ({arg}) must be a JSON object"
                )));
            }
        };
        let unknown: Vec<&str> = obj
            .keys()
            .map(String::as_str)
            .filter(|k| !allowed.contains(k))
            .collect();
        if !unknown.is_empty() {
            return Err(Fault::bad(format!(
                "Unknown attribute for argument {arg}: {}",
                unknown.join(", ")
            )));
        }
        Ok(obj)
    }

    /// `origin + path + "/" + id`, the Location of a created object.
    pub fn location_of(&self, id: &str) -> String {
        format!("{}{}/{id}", self.origin, self.path)
    }
}

/// Booleans as upstream accepts them.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "t" | "yes" | "y" | "on" | "1" => Some(true),
        "false" | "f" | "no" | "n" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// ISO-8601 with or without a zone (naive means UTC), or a date alone; epoch ms.
pub fn parse_datetime(v: &str) -> Option<i64> {
    let v = v.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Some(t.timestamp_millis());
    }
    for f in ["%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%d %H:%M:%S%.f%z"] {
        if let Ok(t) = DateTime::parse_from_str(v, f) {
            return Some(t.timestamp_millis());
        }
    }
    for f in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(v, f) {
            return Some(Utc.from_utc_datetime(&t).timestamp_millis());
        }
    }
    NaiveDate::parse_from_str(v, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| Utc.from_utc_datetime(&t).timestamp_millis())
}

/// `scheme://host[:port]` for absolute links and Location headers: the configured `public_url`,
/// else the request's `Host` when it is a plain host name or address with an optional port
/// (anything else, e.g. a Host holding a path or quotes, gives relative links instead of
/// reflecting it).
fn origin(app: &App, headers: &axum::http::HeaderMap) -> String {
    if let Some(url) = &app.settings().config.public_url {
        return url.as_str().trim_end_matches('/').to_string();
    }
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.parse::<axum::http::uri::Authority>()
                    .is_ok_and(|a| a.as_str() == *h)
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .map(|h| format!("http://{h}"))
        .unwrap_or_default()
}

/// Handles one request under [`PREFIX`].
pub async fn handle(State(app): State<Arc<App>>, req: Request) -> Response {
    let app = &*app;
    let (parts, body) = req.into_parts();
    let raw_path = parts.uri.path().trim_end_matches('/').to_string();
    let mut segs: Vec<String> = raw_path
        .split('/')
        .filter(|s| !s.is_empty())
        .skip(1)
        .map(percent_decode)
        .collect();
    if segs.first().is_some_and(|s| s == "billing") {
        segs[0] = "rating".into();
    }
    let query: Vec<(String, String)> = {
        let mut q: Vec<(String, String)> = Vec::new();
        for (k, v) in url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes()) {
            if !q.iter().any(|(n, _)| *n == k) {
                q.push((k.into_owned(), v.trim().to_string()));
            }
        }
        q
    };
    let bytes = match read_body(body, app.settings().config.max_body_bytes).await {
        Ok(b) => b,
        Err(BodyError::TooLarge(n)) => {
            return Fault::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body exceeds the limit of {n} bytes"),
            )
            .into_response();
        }
        Err(e) => return Fault::bad(e.to_string()).into_response(),
    };
    let body: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(e) => return Fault::bad(format!("malformed JSON body: {e}")).into_response(),
        }
    };
    let peer = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let caller = match auth::identify(app, &parts.headers, peer).await {
        Ok(c) => c,
        Err(f) => return f.into_response(),
    };
    let origin = origin(app, &parts.headers);
    let ctx = Ctx {
        app,
        method: parts.method,
        path: if raw_path.is_empty() {
            "/".into()
        } else {
            raw_path
        },
        segs,
        query,
        body,
        caller,
        origin,
    };
    match dispatch(&ctx).await {
        Ok(r) => r.into_response(),
        Err(f) => f.into_response(),
    }
}

async fn dispatch(ctx: &Ctx<'_>) -> Outcome {
    let segs: Vec<&str> = ctx.segs.iter().map(String::as_str).collect();
    match segs.split_first() {
        None => match ctx.method {
            Method::GET => Ok(Reply::Ok(json!({
                "id": "v1",
                "links": [{"href": format!("{}/v1", ctx.origin), "rel": "self"}],
                "status": "CURRENT",
            }))),
            _ => Ok(Reply::BadMethod),
        },
        Some((&"collector", rest)) => collector::handle(ctx, rest).await,
        Some((&"session", [])) => match ctx.method {
            // vmmon's logout for a session used on this API (upstream has Keystone for that).
            Method::DELETE => match &ctx.caller {
                Caller::User {
                    session_id: Some(sid),
                    ..
                } => {
                    crate::auth::end_session(&ctx.app.store, sid)
                        .await
                        .map_err(Fault::store)?;
                    Ok(Reply::NoContent)
                }
                Caller::Invalid(why) => Err(Fault::unauthorized(why)),
                _ => Err(Fault::unauthorized("no session to end: send X-Auth-Token")),
            },
            _ => Ok(Reply::BadMethod),
        },
        Some((&"info", rest)) => info::handle(ctx, rest),
        Some((&"rating", rest)) => modules::handle(ctx, rest).await,
        Some((&"report", rest)) => report::handle(ctx, rest).await,
        Some((&"storage", rest)) => report::storage(ctx, rest).await,
        _ => Ok(Reply::NoRoute),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing_helpers() {
        let ms = |s: &str| parse_datetime(s);
        let h = Some(1_420_376_400_000); // 2015-01-04T13:00:00Z
        assert_eq!(ms("2015-01-04T13:00:00"), h);
        assert_eq!(ms("2015-01-04T13:00:00Z"), h);
        assert_eq!(ms("2015-01-04T14:00:00+01:00"), h);
        assert_eq!(ms("2015-01-04 13:00:00"), h);
        assert_eq!(ms("2015-01-04T13:00:00.000000"), h);
        assert_eq!(ms("2015-01-04T13:00"), h);
        assert_eq!(ms("2015-01-04"), Some(1_420_329_600_000));
        assert_eq!(ms("yesterday"), None);
        for (t, want) in [
            ("T", Some(true)),
            ("on", Some(true)),
            ("0", Some(false)),
            ("2", None),
        ] {
            assert_eq!(parse_bool(t), want, "{t}");
        }
        assert_eq!(percent_decode("image%2Esize"), "image.size");
        assert_eq!(percent_decode("a%2"), "a%2");
    }
}
