//! `POST /api/flow`: CDN flow and hit flow per 5-minute bucket (SPEC §3.4, seed 004).
//!
//! Every answer is `{"status", "msg", "data"}`; `status` 0 is success, each error has its own
//! non-zero code ([`crate::cdn::status`]). API errors answer HTTP 200, as the original service
//! did; only a wrong method (405), an oversized body (413) and a store failure (500) change the
//! HTTP status too. Checks run in this order: body → required fields → user → signature → times
//! → domains, so nothing about a user's data is revealed before the signature checks out.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use chrono::Utc;

use super::{BodyError, read_body};
use crate::app::App;
use crate::cdn::{self, FlowError, status};
use crate::store;

/// Path of the CDN flow query.
pub const FLOW_PATH: &str = "/api/flow";

impl IntoResponse for FlowError {
    /// HTTP 200 for API errors (as the original service answered), 405/413/500 for a wrong
    /// method, an oversized body and a store failure.
    fn into_response(self) -> Response {
        let http = match self.status {
            status::METHOD_NOT_ALLOWED => StatusCode::METHOD_NOT_ALLOWED,
            status::TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
            status::INTERNAL => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::OK,
        };
        (http, Json(self.body())).into_response()
    }
}

/// Handles one request to [`FLOW_PATH`].
pub async fn handle(State(app): State<Arc<App>>, req: Request) -> Response {
    if req.method() != Method::POST {
        return FlowError::new(status::METHOD_NOT_ALLOWED, "use POST for /api/flow")
            .into_response();
    }
    let (parts, body) = req.into_parts();
    let body = match read_body(body, app.settings().config.max_body_bytes).await {
        Ok(b) => b,
        Err(BodyError::TooLarge(max)) => {
            return FlowError::new(
                status::TOO_LARGE,
                format!("request body exceeds the limit of {max} bytes"),
            )
            .into_response();
        }
        Err(BodyError::Read(e)) => {
            return FlowError::new(
                status::MALFORMED,
                format!("cannot read the request body: {e}"),
            )
            .into_response();
        }
    };
    let content_type = parts
        .headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let query = parts.uri.query().unwrap_or("");
    match flow(&app, query, content_type, &body).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => {
            if e.status != status::INTERNAL {
                tracing::debug!(status = e.status, msg = %e.msg, "CDN flow query refused.");
            }
            e.into_response()
        }
    }
}

fn internal(e: store::StoreError) -> FlowError {
    tracing::error!(error = %e, "CDN flow store failure.");
    FlowError::new(
        status::INTERNAL,
        "internal error: the store is unavailable, try again",
    )
}

async fn flow(
    app: &App,
    query: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<cdn::FlowAnswer, FlowError> {
    let req = cdn::parse_request(query, content_type, body)?;
    let unknown = || {
        FlowError::new(
            status::UNKNOWN_USER,
            format!(
                "unknown CDN user {:?}",
                req.username
                    .chars()
                    .take(cdn::MAX_NAME_LEN)
                    .collect::<String>()
            ),
        )
    };
    if req.username.chars().count() > cdn::MAX_NAME_LEN {
        return Err(unknown());
    }
    let name = req.username.clone();
    let user = app
        .store
        .read(move |c| store::cdn::user_by_name(c, &name))
        .await
        .map_err(internal)?
        .filter(|u| u.revoked_at_ms.is_none())
        .ok_or_else(unknown)?;
    let now = Utc::now();
    let today = now
        .with_timezone(&app.settings().config.timezone)
        .date_naive();
    if !cdn::signature_ok(&req.signature, &user.name, &user.secret, today) {
        return Err(FlowError::new(
            status::BAD_SIGNATURE,
            "bad signature: expected lower-hex MD5 of yyyymmdd + username + secret (date in the collector's time zone; yesterday's, today's and tomorrow's are accepted)",
        ));
    }
    let w = cdn::window(
        app.settings().config.timezone,
        &req.start_time,
        req.end_time.as_deref(),
        now.timestamp(),
    )?;
    let asked = cdn::requested_domains(&req.domain, &user.domains)?;
    let (sum_all, domains) = if asked.is_empty() {
        (true, user.domains.clone())
    } else {
        (false, asked)
    };
    let lookup = domains.clone();
    let per_domain = app
        .store
        .read(move |c| {
            let mut out = Vec::with_capacity(lookup.len());
            for d in &lookup {
                let mut sums = BTreeMap::new();
                for r in store::cdn::buckets(c, d, w.first, w.last)? {
                    sums.insert(r.bucket_start, (r.bytes, r.hit_bytes));
                }
                out.push(sums);
            }
            Ok(out)
        })
        .await
        .map_err(internal)?;
    let entries = if sum_all {
        let mut total: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
        for sums in &per_domain {
            for (ts, (b, h)) in sums {
                let e = total.entry(*ts).or_default();
                e.0 = e.0.saturating_add(*b);
                e.1 = e.1.saturating_add(*h);
            }
        }
        vec![cdn::entry("", w, &total)]
    } else {
        domains
            .iter()
            .zip(&per_domain)
            .map(|(d, sums)| cdn::entry(d, w, sums))
            .collect()
    };
    Ok(cdn::answer(entries))
}
