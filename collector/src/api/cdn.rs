//! `POST /api/flow`: CDN flow and hit flow per 5-minute bucket (SPEC §3.4, seed 004).
//!
//! Every answer is `{"status", "msg", "data"}`; `status` 0 is success, each error has its own
//! non-zero code ([`crate::cdn::status`]). API errors answer HTTP 200, as the original service
//! did; only a wrong method (405), an oversized body (413) and a store failure (500) change the
//! HTTP status too. Checks run in this order: body → required fields → user → signature → times
//! → domains, so nothing about a user's data is revealed before the signature checks out.

use std::collections::BTreeMap;

use chrono::Utc;
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde_json::Value;

use super::{BodyError, Response, json_response, read_body};
use crate::App;
use crate::cdn::{self, FlowError, status};
use crate::store;

/// Path of the CDN flow query.
pub const FLOW_PATH: &str = "/api/flow";

fn fail(http: StatusCode, e: FlowError) -> Response {
    json_response(http, &e.to_json())
}

/// Handles one request to [`FLOW_PATH`].
pub async fn handle(app: &App, req: Request<Incoming>) -> Response {
    if req.method() != Method::POST {
        return fail(
            StatusCode::METHOD_NOT_ALLOWED,
            FlowError::new(status::METHOD_NOT_ALLOWED, "use POST for /api/flow"),
        );
    }
    let (parts, body) = req.into_parts();
    let body = match read_body(body, app.config.max_body_bytes).await {
        Ok(b) => b,
        Err(BodyError::TooLarge(max)) => {
            return fail(
                StatusCode::PAYLOAD_TOO_LARGE,
                FlowError::new(
                    status::TOO_LARGE,
                    format!("request body exceeds the limit of {max} bytes"),
                ),
            );
        }
        Err(BodyError::Read(e)) => {
            return fail(
                StatusCode::BAD_REQUEST,
                FlowError::new(
                    status::MALFORMED,
                    format!("cannot read the request body: {e}"),
                ),
            );
        }
    };
    let content_type = parts
        .headers
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let query = parts.uri.query().unwrap_or("");
    match flow(app, query, content_type, &body).await {
        Ok(v) => json_response(StatusCode::OK, &v),
        Err(e) if e.status == status::INTERNAL => fail(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(e) => {
            tracing::debug!(status = e.status, msg = %e.msg, "CDN flow query refused.");
            fail(StatusCode::OK, e)
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
) -> Result<Value, FlowError> {
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
    let today = now.with_timezone(&app.tz).date_naive();
    if !cdn::signature_ok(&req.signature, &user.name, &user.secret, today) {
        return Err(FlowError::new(
            status::BAD_SIGNATURE,
            "bad signature: expected lower-hex MD5 of yyyymmdd + username + secret (date in the collector's time zone; yesterday's, today's and tomorrow's are accepted)",
        ));
    }
    let w = cdn::window(
        app.tz,
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
