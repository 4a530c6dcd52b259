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
pub mod v2;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

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

/// A JSON answer body, serialized from a typed record (the wire shape is the record's).
#[derive(Debug)]
pub struct JsonBody(Box<serde_json::value::RawValue>);

impl JsonBody {
    /// Serializes `v`. Only a map with non-string keys can fail, which no record here has; it
    /// would answer 500.
    pub fn of<T: Serialize + ?Sized>(v: &T) -> Result<JsonBody, Fault> {
        serde_json::value::to_raw_value(v)
            .map(JsonBody)
            .map_err(|e| {
                tracing::error!(error = %e, "Rating API answer cannot be serialized.");
                Fault::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
            })
    }
}

/// A successful (or plain-404) answer.
#[derive(Debug)]
pub enum Reply {
    /// 200 with a JSON body.
    Ok(JsonBody),
    /// 201 with the created object and `Location: <collection url>/<id>`.
    Created(JsonBody, String),
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

impl Reply {
    /// 200 with `v` as the body.
    pub fn ok<T: Serialize + ?Sized>(v: &T) -> Outcome {
        Ok(Reply::Ok(JsonBody::of(v)?))
    }
    /// 201 with `v` as the body and `Location: location`.
    pub fn created<T: Serialize + ?Sized>(v: &T, location: String) -> Outcome {
        Ok(Reply::Created(JsonBody::of(v)?, location))
    }
}

fn json_response(status: StatusCode, body: JsonBody) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body.0.get().to_string(),
    )
        .into_response()
}

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
            Reply::Ok(b) => json_response(StatusCode::OK, b),
            Reply::Created(b, loc) => with_location(json_response(StatusCode::CREATED, b), &loc),
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
    for f in [
        "%Y-%m-%dT%H:%M:%S%.f%z",
        "%Y-%m-%d %H:%M:%S%.f%z",
        // ISO-8601 basic format (upstream's tests push `20190723T122810Z`).
        "%Y%m%dT%H%M%S%#z",
        "%Y%m%dT%H%M%S%z",
    ] {
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

/// Whether `h` is a plain host name or address with an optional port (anything else, e.g. a
/// value holding a path or quotes, is never reflected into links).
fn plain_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.parse::<axum::http::uri::Authority>()
            .is_ok_and(|a| a.as_str() == h)
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
}

/// `scheme://host[:port]` for absolute links and Location headers: the configured `public_url`;
/// else, on a connection from one of `rating.trusted_proxies`, the proxy's `X-Forwarded-Proto`
/// (`http` or `https`) and `X-Forwarded-Host` (the first of a list) over the request's own;
/// else the request's `Host` over `http`. A host that is not a plain host name or address with
/// an optional port gives relative links instead of being reflected.
fn origin_for(
    app: &App,
    headers: &axum::http::HeaderMap,
    peer: Option<std::net::IpAddr>,
) -> String {
    let settings = app.settings();
    if let Some(url) = &settings.config.public_url {
        return url.as_str().trim_end_matches('/').to_string();
    }
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|h| h.to_str().ok())
            .map(|v| v.split(',').next().unwrap_or("").trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let proxied = peer.is_some_and(|ip| {
        settings
            .config
            .rating
            .trusted_proxies
            .iter()
            .any(|net| net.contains(&ip))
    });
    let (mut scheme, mut host) = ("http".to_string(), text(header::HOST.as_str()));
    if proxied {
        if let Some(p) = text("x-forwarded-proto").map(|p| p.to_ascii_lowercase())
            && (p == "http" || p == "https")
        {
            scheme = p;
        }
        if let Some(h) = text("x-forwarded-host") {
            host = Some(h);
        }
    }
    host.filter(|h| plain_host(h))
        .map(|h| format!("{scheme}://{h}"))
        .unwrap_or_default()
}

/// One API version as the versions documents write it.
#[derive(Debug, Serialize)]
pub struct VersionDoc {
    /// `v1` or `v2`.
    pub id: &'static str,
    /// `[{"href": <origin>/<id>, "rel": "self"}]`.
    pub links: Vec<Link>,
    /// `CURRENT` (v1) or `EXPERIMENTAL` (v2), as upstream.
    pub status: &'static str,
}

/// A link of a [`VersionDoc`].
#[derive(Debug, Serialize)]
pub struct Link {
    /// Absolute when the origin is known.
    pub href: String,
    /// `self`.
    pub rel: &'static str,
}

impl VersionDoc {
    /// The document of version `id` under `origin`.
    pub fn of(origin: &str, id: &'static str) -> VersionDoc {
        VersionDoc {
            id,
            links: vec![Link {
                href: format!("{origin}/{id}"),
                rel: "self",
            }],
            status: if id == "v1" {
                "CURRENT"
            } else {
                "EXPERIMENTAL"
            },
        }
    }

    /// Both versions, as `GET /` lists them under `versions`.
    pub fn all(origin: &str) -> Vec<VersionDoc> {
        vec![VersionDoc::of(origin, "v1"), VersionDoc::of(origin, "v2")]
    }
}

/// The origin for the versions list of `GET /`.
pub fn root_origin(
    app: &App,
    headers: &axum::http::HeaderMap,
    peer: Option<std::net::IpAddr>,
) -> String {
    origin_for(app, headers, peer)
}

/// The routes of both CloudKitty APIs (`/v1`, `/v2`), behind [`openstack`].
pub fn routes(app: Arc<App>) -> axum::Router<Arc<App>> {
    use axum::routing::any;
    axum::Router::new()
        .route(PREFIX, any(handle))
        .route(&format!("{PREFIX}/{{*rest}}"), any(handle))
        .route(v2::PREFIX, any(v2::handle))
        .route(&format!("{}/{{*rest}}", v2::PREFIX), any(v2::handle))
        .layer(axum::middleware::from_fn_with_state(app, openstack))
}

/// OpenStack's request id header: `req-<the request's x-request-id>`.
pub const OPENSTACK_REQUEST_ID: &str = "x-openstack-request-id";

/// What OpenStack clients and browsers expect around every CloudKitty answer:
/// `x-openstack-request-id`, and CORS for the origins in `rating.cors_allowed_origins` (a
/// preflight `OPTIONS` from an allowed origin answers 200 with the allowed methods and headers;
/// other origins get no CORS headers, so browsers refuse them).
pub async fn openstack(
    State(app): State<Arc<App>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let request_id = req
        .headers()
        .get(super::REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|v| format!("req-{v}"));
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .filter(|o| {
            app.settings()
                .config
                .rating
                .cors_allowed_origins
                .iter()
                .any(|a| a == "*" || a.eq_ignore_ascii_case(o))
        })
        .and_then(|o| HeaderValue::from_str(o).ok());
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut resp = match (&origin, preflight) {
        (Some(_), true) => {
            let mut r = empty(StatusCode::OK);
            let h = r.headers_mut();
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static(
                    "Content-Type, Cache-Control, Content-Language, Expires, Last-Modified, \
                     Pragma, X-Auth-Token, X-Openstack-Request-Id, X-Project-Id, X-Roles, \
                     X-Identity-Status, X-Request-Id",
                ),
            );
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("3600"),
            );
            r
        }
        _ => next.run(req).await,
    };
    let h = resp.headers_mut();
    if let Some(id) = request_id.and_then(|v| HeaderValue::from_str(&v).ok()) {
        h.insert(OPENSTACK_REQUEST_ID, id);
    }
    if let Some(o) = origin {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("X-Openstack-Request-Id, Location"),
        );
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    resp
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
    let origin = origin_for(app, &parts.headers, peer);
    let head = parts.method == Method::HEAD;
    let ctx = Ctx {
        app,
        method: if head { Method::GET } else { parts.method },
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
    let mut resp = match dispatch(&ctx).await {
        Ok(r) => r.into_response(),
        Err(f) => f.into_response(),
    };
    if head {
        *resp.body_mut() = Body::empty();
    }
    resp
}

async fn dispatch(ctx: &Ctx<'_>) -> Outcome {
    let segs: Vec<&str> = ctx.segs.iter().map(String::as_str).collect();
    match segs.split_first() {
        None => match ctx.method {
            Method::GET => Reply::ok(&VersionDoc::of(&ctx.origin, "v1")),
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
