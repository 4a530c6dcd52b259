//! The operator dashboard at `/ui/` (issue 18): a page and its scripts embedded in the binary,
//! plus the few JSON reads the other APIs do not already answer.
//!
//! The page is one `index.html` with `app.js` (hash routes: login, fleet, VM, bandwidth, rating,
//! CDN) and the vendored uPlot chart library (`collector/ui/vendor/uplot/`, its version and
//! licence beside it). Everything is compiled in with `include_bytes!`: no CDN, no build step.
//!
//! **Sessions.** The page logs in with method 458753 (`POST /wsgi_app.py`), keeps the session id
//! in the tab's `sessionStorage`, and sends it as `X-Auth-Token` (mana_api, rating, these reads)
//! or as the body's `session_id` (method-coded API). No cookie carries it, so a cross-site page
//! cannot act with the operator's session (no CSRF), and every state-changing call (32523,
//! 32524, 32525) carries the session explicitly. Every answer under `/ui` and `/api/series` has a
//! `Content-Security-Policy` without inline scripts or styles, `nosniff`, no framing and no
//! referrer.
//!
//! **Scope.** A tenant sees its own project only: an instance of another project answers 404
//! exactly like an unknown one. The CDN view is for admins.
//!
//! | path | what |
//! |---|---|
//! | `GET /ui/` | the page |
//! | `GET /ui/assets/{file}` | its scripts, styles and the chart library |
//! | `GET /ui/api/me` | the session's user ([`Me`]) |
//! | `GET /ui/api/fleet` | every VM with its newest figures and CPU sparkline ([`Fleet`]) |
//! | `GET /ui/api/cdn/users` | CDN users and their domains, admin ([`CdnUsers`]) |
//! | `GET /ui/api/cdn?user=&start=&end=` | per-domain 5-minute flow and hit flow, admin ([`CdnFlow`]) |
//! | `GET /api/series?instance_id=&metric=&start=&end=&points=` | a downsampled VM metric ([`series`]) |

pub mod series;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde::Serialize;

use super::MsgError;
use crate::app::App;
use crate::store::{self, SessionUser};

/// The dashboard's page.
pub const UI_PATH: &str = "/ui";
/// Prefix of the embedded files.
pub const ASSETS_PREFIX: &str = "/ui/assets";
/// `GET`: the session's user.
pub const ME_PATH: &str = "/ui/api/me";
/// `GET`: the fleet table.
pub const FLEET_PATH: &str = "/ui/api/fleet";
/// `GET`: CDN users (admin).
pub const CDN_USERS_PATH: &str = "/ui/api/cdn/users";
/// `GET`: one CDN user's per-domain flow (admin).
pub const CDN_FLOW_PATH: &str = "/ui/api/cdn";

/// The policy on every dashboard answer: scripts, styles, images and fetches from this origin
/// only; no inline script or style attribute, no plugins, no framing, forms post nowhere else.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Length of the fleet's sparklines, ms (the last hour).
pub const SPARK_SPAN_MS: i64 = 3_600_000;
/// Points in each fleet sparkline (2-minute steps).
pub const SPARK_POINTS: u32 = 30;
/// Longest window of one CDN flow request, ms.
pub const MAX_CDN_SPAN_MS: i64 = 31 * 86_400_000;

/// One embedded file.
struct Asset {
    name: &'static str,
    mime: &'static str,
    body: &'static [u8],
}

/// The page's files, compiled in.
const ASSETS: &[Asset] = &[
    Asset {
        name: "app.js",
        mime: "text/javascript; charset=utf-8",
        body: include_bytes!("../../../ui/app.js"),
    },
    Asset {
        name: "app.css",
        mime: "text/css; charset=utf-8",
        body: include_bytes!("../../../ui/app.css"),
    },
    Asset {
        name: "uPlot.iife.min.js",
        mime: "text/javascript; charset=utf-8",
        body: include_bytes!("../../../ui/vendor/uplot/uPlot.iife.min.js"),
    },
    Asset {
        name: "uPlot.min.css",
        mime: "text/css; charset=utf-8",
        body: include_bytes!("../../../ui/vendor/uplot/uPlot.min.css"),
    },
    Asset {
        name: "uPlot.LICENSE.txt",
        mime: "text/plain; charset=utf-8",
        body: include_bytes!("../../../ui/vendor/uplot/LICENSE"),
    },
];

const INDEX_HTML: &[u8] = include_bytes!("../../../ui/index.html");

/// The dashboard's routes (the page, its files, its reads, and `GET /api/series`).
pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route(UI_PATH, get(index))
        .route(&format!("{ASSETS_PREFIX}/{{file}}"), get(asset))
        .route(ME_PATH, get(me))
        .route(FLEET_PATH, get(fleet))
        .route(CDN_USERS_PATH, get(cdn_users))
        .route(CDN_FLOW_PATH, get(cdn_flow))
        .route(series::SERIES_PATH, get(series::handle))
        .layer(axum::middleware::map_response(secure_headers))
}

/// Adds the dashboard's security headers to every answer of [`routes`].
async fn secure_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    resp
}

async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX_HTML,
    )
        .into_response()
}

async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.name == file) {
        Some(a) => (
            [
                (header::CONTENT_TYPE, a.mime),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            a.body,
        )
            .into_response(),
        None => {
            MsgError::new(StatusCode::NOT_FOUND, format!("no such file: {file}")).into_response()
        }
    }
}

fn internal(e: store::StoreError) -> MsgError {
    tracing::error!(error = %e, "Dashboard store failure.");
    MsgError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal error: the store is unavailable, try again",
    )
}

fn bad(msg: impl Into<String>) -> MsgError {
    MsgError::new(StatusCode::BAD_REQUEST, msg)
}

fn answer<T: Serialize>(a: Result<T, MsgError>) -> Response {
    match a {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// The project a session may see: `None` for an admin (every project), its own for a tenant; a
/// tenant without a project sees nothing (403).
fn visible_project(user: &SessionUser) -> Result<Option<String>, MsgError> {
    if user.is_admin {
        return Ok(None);
    }
    user.project
        .clone()
        .map(Some)
        .ok_or_else(|| MsgError::new(StatusCode::FORBIDDEN, "this user belongs to no project"))
}

fn require_admin(user: &SessionUser) -> Result<(), MsgError> {
    if user.is_admin {
        Ok(())
    } else {
        Err(MsgError::new(
            StatusCode::FORBIDDEN,
            "this view needs an admin session",
        ))
    }
}

/// Decoded query parameters (the last of a repeated name wins; empty counts as omitted).
fn query_map(raw: Option<&str>) -> std::collections::BTreeMap<String, String> {
    url::form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .filter(|(_, v)| !v.trim().is_empty())
        .map(|(k, v)| (k.into_owned(), v.trim().to_string()))
        .collect()
}

/// An epoch-milliseconds parameter.
/// Largest time a `start`/`end` parameter may give, epoch ms (2^53 − 1).
const MAX_EPOCH_MS: i64 = (1 << 53) - 1;

fn ms_param(
    q: &std::collections::BTreeMap<String, String>,
    name: &str,
) -> Result<Option<i64>, MsgError> {
    match q.get(name) {
        None => Ok(None),
        // 0..=2^53: what a JavaScript client can send exactly; keeps window arithmetic far from
        // i64 overflow.
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|t| (0..=MAX_EPOCH_MS).contains(t))
            .map(Some)
            .ok_or_else(|| {
                bad(format!(
                    "{name} must be a time in epoch milliseconds, got {v:?}"
                ))
            }),
    }
}

/// `GET /ui/api/me`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Me {
    /// Login name.
    pub name: String,
    /// Admins see every project and may change agents.
    pub is_admin: bool,
    /// A tenant's project; null for an admin.
    pub project: Option<String>,
}

async fn me(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    answer(super::mana::authenticate(&app, &headers).await.map(|u| Me {
        name: u.name,
        is_admin: u.is_admin,
        project: u.project,
    }))
}

/// One row of the fleet table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetVm {
    /// Instance id.
    pub instance_id: String,
    /// The guest's hostname (the instance id when it sent none).
    pub name: String,
    /// `ACTIVE` or `SHUTOFF` (as `/mana_api/vm`).
    pub status: &'static str,
    /// Project of the agent's token.
    pub project: String,
    /// Region of the agent's token.
    pub region: String,
    /// Per-process sampling on.
    pub monitoring: bool,
    /// Sampling interval, seconds.
    pub interval_secs: u32,
    /// Samples the agent had to drop, total.
    pub dropped_samples: i64,
    /// Newest sample's CPU, %; null before the first sample.
    pub cpu_pct: Option<f64>,
    /// Newest sample's memory, %; null before the first sample.
    pub mem_pct: Option<f64>,
    /// Newest sample's time, epoch ms.
    pub sampled_at_ms: Option<i64>,
    /// Average CPU % per step of the last hour, oldest first ([`SPARK_POINTS`] values, null
    /// where no sample fell).
    pub cpu_spark: Vec<Option<f64>>,
}

/// `GET /ui/api/fleet`: every VM the session may see, by instance id.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fleet {
    /// The collector's clock, epoch ms.
    pub now_ms: i64,
    /// Start of the sparklines, epoch ms.
    pub spark_start_ms: i64,
    /// Sparkline step, ms.
    pub spark_step_ms: i64,
    /// The VMs.
    pub vms: Vec<FleetVm>,
}

async fn fleet(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    answer(fleet_answer(&app, &headers).await)
}

async fn fleet_answer(app: &App, headers: &HeaderMap) -> Result<Fleet, MsgError> {
    let user = super::mana::authenticate(app, headers).await?;
    let project = visible_project(&user)?;
    let now = store::now_ms();
    // Whole minutes up to the current one, so the hour is exactly SPARK_POINTS steps of the
    // per-minute rollup.
    let spark_end = store::series::minute_ceil(now + 1);
    let start = spark_end - SPARK_SPAN_MS;
    let (rows, latest, sparklines) = app
        .store
        .read(move |c| {
            let p = project.as_deref();
            Ok((
                store::instances::list(c, p)?,
                store::samples::fleet(c, p)?,
                store::series::cpu_sparklines(c, p, start, spark_end, SPARK_POINTS)?,
            ))
        })
        .await
        .map_err(internal)?;
    let latest: std::collections::HashMap<&str, &store::VmRow> = latest
        .iter()
        .filter_map(|f| f.vm.as_ref().map(|v| (v.instance_id.as_str(), v)))
        .collect();
    let (spark_start_ms, spark_step_ms) = (sparklines.start_ms, sparklines.step_ms);
    let mut sparks: std::collections::HashMap<String, Vec<Option<f64>>> = sparklines
        .lines
        .into_iter()
        .map(|s| (s.instance_id, s.cpu_pct))
        .collect();
    let vms = rows
        .iter()
        .map(|r| {
            let vm = latest.get(r.instance_id.as_str());
            FleetVm {
                instance_id: r.instance_id.clone(),
                name: if r.inventory.hostname.is_empty() {
                    r.instance_id.clone()
                } else {
                    r.inventory.hostname.clone()
                },
                status: super::mana::status(r, now),
                project: r.project.clone(),
                region: r.region.clone(),
                monitoring: r.desired.monitoring,
                interval_secs: r.desired.interval_secs,
                dropped_samples: r.dropped_samples,
                cpu_pct: vm.map(|v| v.cpu_pct),
                mem_pct: vm.map(|v| v.mem_pct),
                sampled_at_ms: vm.map(|v| v.sampled_at_ms),
                cpu_spark: sparks.remove(&r.instance_id).unwrap_or_default(),
            }
        })
        .collect();
    Ok(Fleet {
        now_ms: now,
        spark_start_ms,
        spark_step_ms,
        vms,
    })
}

/// One CDN user (its secret is never shown).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CdnUser {
    /// The user's name (`user` of `POST /api/flow`).
    pub name: String,
    /// Its domains.
    pub domains: Vec<String>,
    /// Revoked users keep their history.
    pub revoked: bool,
}

/// `GET /ui/api/cdn/users`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CdnUsers {
    /// Every CDN user, by name.
    pub users: Vec<CdnUser>,
}

async fn cdn_users(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let a = async {
        let user = super::mana::authenticate(&app, &headers).await?;
        require_admin(&user)?;
        let rows = app
            .store
            .read(store::cdn::list_users)
            .await
            .map_err(internal)?;
        Ok(CdnUsers {
            users: rows
                .into_iter()
                .map(|u| CdnUser {
                    name: u.name,
                    domains: u.domains,
                    revoked: u.revoked_at_ms.is_some(),
                })
                .collect(),
        })
    };
    answer(a.await)
}

/// One domain's 5-minute buckets, as columns.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CdnDomainFlow {
    /// The domain.
    pub domain: String,
    /// Bucket starts, epoch seconds.
    pub t_s: Vec<i64>,
    /// Bytes served in each bucket.
    pub bytes: Vec<i64>,
    /// Of those, bytes served from cache.
    pub hit_bytes: Vec<i64>,
}

/// `GET /ui/api/cdn`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CdnFlow {
    /// The CDN user.
    pub user: String,
    /// One entry per domain of the user.
    pub domains: Vec<CdnDomainFlow>,
}

async fn cdn_flow(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    answer(cdn_flow_answer(&app, &headers, raw.as_deref()).await)
}

async fn cdn_flow_answer(
    app: &App,
    headers: &HeaderMap,
    raw: Option<&str>,
) -> Result<CdnFlow, MsgError> {
    let user = super::mana::authenticate(app, headers).await?;
    require_admin(&user)?;
    let q = query_map(raw);
    let name = q
        .get("user")
        .cloned()
        .ok_or_else(|| bad("missing user (a CDN user's name)"))?;
    let now = store::now_ms();
    let end = ms_param(&q, "end")?.unwrap_or(now);
    let start = ms_param(&q, "start")?.unwrap_or(end - 86_400_000);
    if end <= start {
        return Err(bad("end must be later than start"));
    }
    if end - start > MAX_CDN_SPAN_MS {
        return Err(bad("the window may span at most 31 days"));
    }
    let lookup = name.clone();
    let domains = app
        .store
        .read(move |c| {
            let Some(u) = store::cdn::list_users(c)?
                .into_iter()
                .find(|u| u.name == lookup)
            else {
                return Ok(None);
            };
            let mut out = Vec::with_capacity(u.domains.len());
            for d in u.domains {
                let rows = store::cdn::buckets(c, &d, start / 1000, end / 1000)?;
                out.push(CdnDomainFlow {
                    domain: d,
                    t_s: rows.iter().map(|r| r.bucket_start).collect(),
                    bytes: rows.iter().map(|r| r.bytes).collect(),
                    hit_bytes: rows.iter().map(|r| r.hit_bytes).collect(),
                });
            }
            Ok(Some(out))
        })
        .await
        .map_err(internal)?
        .ok_or_else(|| MsgError::new(StatusCode::NOT_FOUND, format!("no CDN user {name:?}")))?;
    Ok(CdnFlow {
        user: name,
        domains,
    })
}
