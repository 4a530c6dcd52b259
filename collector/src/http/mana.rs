//! `GET /mana_api/vm`, `/mana_api/flow`, `/mana_api/flow_monthly` (SPEC §3.2, seeds 002 and 000).
//!
//! Auth: `X-Auth-Token` carries a session id from the method-coded login (458753). Admins see
//! every project; a tenant sees its own project only and gets 403 with the seed's
//! "URL's project_id … doesn't match Context's project_id …" message when it names another one.
//! Errors are `{"msg", "code"}` with the HTTP status in both places. The full contract, with every
//! decision (omitted filters, paging, times, bandwidth method), is in `docs/mana_api.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{MethodRouter, get};
use chrono::{NaiveDate, NaiveDateTime};
use chrono_tz::Tz;
use serde::Serialize;

use super::MsgError;
use crate::app::App;
use crate::bandwidth::{self, BUCKET_MS, Month, MonthlyBandwidth};
use crate::store::{self, InstanceRow, SessionUser};

/// The VM list.
pub const VM_PATH: &str = "/mana_api/vm";
/// Bandwidth per 10-minute bucket (the seed's name for it is "flow").
pub const BANDWIDTH_PATH: &str = "/mana_api/flow";
/// Monthly bandwidth peaks and totals.
pub const BANDWIDTH_MONTHLY_PATH: &str = "/mana_api/flow_monthly";
/// `DELETE` ends the session of `X-Auth-Token` (logout).
pub const SESSION_PATH: &str = "/mana_api/session";
/// Header carrying the session id.
pub const TOKEN_HEADER: &str = "x-auth-token";
/// Longest time range one `/mana_api/flow` request may cover.
pub const MAX_BANDWIDTH_SPAN_MS: i64 = 31 * 24 * 3600 * 1000;
/// An agent silent for this many of its intervals is SHUTOFF.
pub const SILENT_INTERVALS: i64 = 3;
/// Longest project, region or party name (as `vmmon-collector token create` accepts).
const MAX_NAME_LEN: usize = 128;
const GIB: u64 = 1024 * 1024 * 1024;

/// An error answer of this API: `{"msg", "code"}`.
pub type ApiError = MsgError;

type Answer<T> = Result<T, ApiError>;

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, msg)
}

fn internal(e: store::StoreError) -> ApiError {
    tracing::error!(error = %e, "mana_api store failure.");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal error: the store is unavailable, try again",
    )
}

/// The routes of this API; other methods answer 405, other paths under `/mana_api` 404.
pub fn routes() -> Router<Arc<App>> {
    fn only_get(path: &'static str, r: MethodRouter<Arc<App>>) -> MethodRouter<Arc<App>> {
        r.fallback(move || async move { MsgError::method(format!("use GET for {path}")) })
    }
    Router::new()
        .route(VM_PATH, only_get(VM_PATH, get(vm)))
        .route(
            BANDWIDTH_PATH,
            only_get(BANDWIDTH_PATH, get(bandwidth_detail)),
        )
        .route(
            BANDWIDTH_MONTHLY_PATH,
            only_get(BANDWIDTH_MONTHLY_PATH, get(bandwidth_monthly)),
        )
        .route(
            SESSION_PATH,
            axum::routing::delete(logout)
                .fallback(|| async { MsgError::method(format!("use DELETE for {SESSION_PATH}")) }),
        )
}

/// `DELETE /mana_api/session`: ends the caller's session; 204.
async fn logout(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let ended = async {
        let user = authenticate(&app, &headers).await?;
        crate::auth::end_session(&app.store, &user.session_id)
            .await
            .map_err(internal)
    };
    match ended.await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

/// What every endpoint starts with: the caller's session and the decoded query.
struct Call {
    user: SessionUser,
    query: Query,
}

impl Call {
    async fn new(app: &App, headers: &HeaderMap, raw: Option<String>) -> Answer<Call> {
        let user = authenticate(app, headers).await?;
        let query = Query::parse(raw.as_deref().unwrap_or(""))?;
        Ok(Call { user, query })
    }
}

fn answer<T: Serialize>(a: Answer<T>) -> Response {
    match a {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// The session behind `X-Auth-Token`, or 401.
pub(crate) async fn authenticate(app: &App, headers: &HeaderMap) -> Result<SessionUser, ApiError> {
    let unauthorized = |msg: &str| ApiError::new(StatusCode::UNAUTHORIZED, msg);
    let sid = match headers.get(TOKEN_HEADER).map(|v| v.to_str()) {
        None => {
            return Err(unauthorized(
                "missing X-Auth-Token header: log in (POST /wsgi_app.py, method 458753) and send its session_id",
            ));
        }
        Some(Ok(s)) if !s.trim().is_empty() && s.trim().len() <= 256 => s.trim().to_string(),
        Some(_) => {
            return Err(unauthorized(
                "X-Auth-Token must be the session_id returned by login",
            ));
        }
    };
    crate::auth::session_user(&app.store, app.settings().config.session_idle_ms(), &sid)
        .await
        .map_err(internal)?
        .ok_or_else(|| {
            unauthorized("X-Auth-Token is expired or unknown: log in again (method 458753)")
        })
}

/// Decoded query parameters; an empty value counts as omitted, unknown names are ignored.
struct Query(BTreeMap<String, String>);

impl Query {
    fn parse(raw: &str) -> Result<Query, ApiError> {
        let mut map = BTreeMap::new();
        for (k, v) in url::form_urlencoded::parse(raw.as_bytes()) {
            if map.insert(k.to_string(), v.trim().to_string()).is_some() {
                return Err(bad(format!("parameter {k} is given more than once")));
            }
        }
        Ok(Query(map))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// A project, region or party name: 1–128 printable characters without commas.
    fn name(&self, param: &str) -> Result<Option<String>, ApiError> {
        let Some(v) = self.get(param) else {
            return Ok(None);
        };
        if v.chars().count() > MAX_NAME_LEN || v.chars().any(|c| c.is_control() || c == ',') {
            return Err(bad(format!(
                "{param} must be 1–{MAX_NAME_LEN} printable characters without commas"
            )));
        }
        Ok(Some(v.to_string()))
    }

    /// A 1-based page bound.
    fn page_bound(&self, param: &str) -> Result<Option<usize>, ApiError> {
        let Some(v) = self.get(param) else {
            return Ok(None);
        };
        match v.parse::<usize>() {
            Ok(n) if n >= 1 && v.bytes().all(|b| b.is_ascii_digit()) => Ok(Some(n)),
            _ => Err(bad(format!(
                "{param} must be a positive integer (1-based, inclusive), got {v:?}"
            ))),
        }
    }
}

/// The project a request may see: an admin gets what it asked for (None = every project); a
/// tenant gets its own project, and 403 when it asked for another one.
fn scope(
    user: &SessionUser,
    asked: Option<String>,
    param: &str,
) -> Result<Option<String>, ApiError> {
    if user.is_admin {
        return Ok(asked);
    }
    let Some(own) = user.project.clone() else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "this user belongs to no project",
        ));
    };
    match asked {
        Some(a) if a != own => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "Malformed request URL: URL's {param} '{a}' doesn't match Context's project_id '{own}'"
            ),
        )),
        _ => Ok(Some(own)),
    }
}

/// Whole GiB, rounded to nearest; at least 1 for a non-zero size (MemTotal of a "16 GB" VM is a
/// little under 16 GiB and must still say 16).
pub fn gib(bytes: u64) -> u64 {
    if bytes == 0 {
        0
    } else {
        (bytes.saturating_add(GIB / 2) / GIB).max(1)
    }
}

/// ACTIVE while the agent reports, SHUTOFF once it has been silent for [`SILENT_INTERVALS`] of
/// its sampling intervals.
pub fn status(row: &InstanceRow, now_ms: i64) -> &'static str {
    let interval_ms = i64::from(row.desired.interval_secs.max(1)) * 1000;
    if now_ms - row.last_seen_ms > SILENT_INTERVALS * interval_ms {
        "SHUTOFF"
    } else {
        "ACTIVE"
    }
}

/// One `vm_servers` entry (seed 002), fields in the seed's order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VmServer {
    /// The guest's hostname (the instance id when the agent sent none).
    pub instance_name: String,
    /// Instance id.
    pub instance_id: String,
    /// vCPUs.
    pub cpu_num: u32,
    /// Memory, whole GiB ([`gib`]).
    pub mem_size: u64,
    /// Disk, whole GiB ([`gib`]).
    pub disk_size: u64,
    /// LAN addresses, comma-separated.
    pub lan_ip_set: String,
    /// WAN addresses, comma-separated.
    pub wan_ip_set: String,
    /// `ACTIVE` or `SHUTOFF` ([`status`]).
    pub status: &'static str,
    /// First registration, local time.
    pub create_at: String,
    /// Last inventory change, local time.
    pub update_at: String,
    /// Project of the agent's token.
    pub tenant_id: String,
    /// Party (vendor) of the agent's token.
    pub party: String,
    /// Region of the agent's token.
    pub region: String,
    /// Samples the agent had to drop (spool full), total.
    pub dropped_samples: i64,
    /// How far the guest's clock is ahead of the time its samples are placed at, seconds
    /// (negative: behind); 0 for a good clock. See `collector/src/timeaxis.rs`.
    pub clock_skew_secs: i64,
    /// Times a second live agent reporting this instance id was refused (a cloned image).
    pub agent_conflicts: i64,
    /// The interfaces the VM's network figures count, comma-separated (empty from older
    /// agents).
    pub net_interfaces: String,
}

/// The `/mana_api/vm` answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VmList {
    /// Always 200.
    pub code: u16,
    /// The page asked for.
    pub vm_servers: Vec<VmServer>,
    /// Matching VMs before paging.
    pub total: usize,
}

/// One `vm_servers` entry.
pub fn vm_entry(tz: Tz, row: &InstanceRow, now_ms: i64) -> VmServer {
    let inv = &row.inventory;
    let name = if inv.hostname.is_empty() {
        row.instance_id.clone()
    } else {
        inv.hostname.clone()
    };
    VmServer {
        instance_name: name,
        instance_id: row.instance_id.clone(),
        cpu_num: inv.cpu_count,
        mem_size: gib(inv.mem_total_bytes),
        disk_size: gib(inv.disk_total_bytes),
        lan_ip_set: inv.lan_ips.join(","),
        wan_ip_set: inv.wan_ips.join(","),
        status: status(row, now_ms),
        create_at: bandwidth::format_local(tz, row.created_at_ms),
        update_at: bandwidth::format_local(tz, row.updated_at_ms),
        tenant_id: row.project.clone(),
        party: row.party.clone(),
        region: row.region.clone(),
        dropped_samples: row.dropped_samples,
        clock_skew_secs: -row.clock_offset_ms / 1000,
        agent_conflicts: row.agent_conflicts,
        net_interfaces: inv.net_interfaces_counted.join(","),
    }
}

async fn vm(State(app): State<Arc<App>>, headers: HeaderMap, RawQuery(raw): RawQuery) -> Response {
    answer(vm_list(&app, &headers, raw).await)
}

async fn vm_list(app: &App, headers: &HeaderMap, raw: Option<String>) -> Answer<VmList> {
    let Call { user, query: q } = Call::new(app, headers, raw).await?;
    let now = store::now_ms();
    let project = scope(&user, q.name("tenant_id")?, "tenant_id")?;
    let region = q.name("region")?;
    let party = q.name("party")?;
    let from = q.page_bound("f")?.unwrap_or(1);
    let to = q.page_bound("t")?;
    if let Some(t) = to
        && t < from
    {
        return Err(bad(format!("t ({t}) must not be smaller than f ({from})")));
    }
    let rows = app
        .store
        .read(move |c| store::instances::list(c, project.as_deref()))
        .await
        .map_err(internal)?;
    let matching: Vec<&InstanceRow> = rows
        .iter()
        .filter(|r| region.as_deref().is_none_or(|x| r.region == x))
        .filter(|r| party.as_deref().is_none_or(|x| r.party == x))
        .collect();
    let total = matching.len();
    let take = to.map_or(usize::MAX, |t| t - from + 1);
    let tz = app.settings().config.timezone;
    let vm_servers = matching
        .into_iter()
        .skip(from - 1)
        .take(take)
        .map(|r| vm_entry(tz, r, now))
        .collect();
    Ok(VmList {
        code: 200,
        vm_servers,
        total,
    })
}

/// Parses `YYYY-MM-DD` or `YYYY-MM-DD HH:MM:SS` (also with `T`) as a local time in `tz`; a bare
/// date means its midnight, or the next midnight when `end_of_day` (an inclusive end day).
pub fn parse_local(tz: Tz, s: &str, end_of_day: bool) -> Option<i64> {
    let s = s.trim();
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        let d = if end_of_day { d.succ_opt()? } else { d };
        return bandwidth::local_to_utc_ms(tz, d.and_hms_opt(0, 0, 0)?);
    }
    let t = NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S")
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S"))
        .ok()?;
    bandwidth::local_to_utc_ms(tz, t)
}

fn time_param(tz: Tz, q: &Query, param: &str, end_of_day: bool) -> Result<Option<i64>, ApiError> {
    let Some(v) = q.get(param) else {
        return Ok(None);
    };
    parse_local(tz, v, end_of_day).map(Some).ok_or_else(|| {
        bad(format!(
            "{param} must be YYYY-MM-DD or YYYY-MM-DD HH:MM:SS (local time), got {v:?}"
        ))
    })
}

/// One `/mana_api/flow` row: a 10-minute bucket of one project and region (seed 000).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BandwidthRow {
    /// Bucket start, local time.
    pub begin_rate_date: String,
    /// Bucket day, local date.
    pub date: String,
    /// Bucket end, local time.
    pub end_rate_date: String,
    /// Received, B/s over the bucket.
    pub in_rate: f64,
    /// Sent, B/s over the bucket.
    pub out_rate: f64,
    /// Project.
    pub project_id: String,
    /// Region.
    pub region: String,
    /// Received in the bucket, bytes.
    pub in_bytes: i64,
    /// Sent in the bucket, bytes.
    pub out_bytes: i64,
}

/// The `/mana_api/flow` answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BandwidthDetail {
    /// One row per bucket and series, series by (project, region), buckets in time order.
    pub data: Vec<BandwidthRow>,
}

/// One `/mana_api/flow` row.
pub fn bandwidth_row(
    tz: Tz,
    project: &str,
    region: &str,
    bucket_start_ms: i64,
    in_bytes: i64,
    out_bytes: i64,
) -> BandwidthRow {
    BandwidthRow {
        begin_rate_date: bandwidth::format_local(tz, bucket_start_ms),
        date: bandwidth::format_local_date(tz, bucket_start_ms),
        end_rate_date: bandwidth::format_local(tz, bucket_start_ms + BUCKET_MS),
        in_rate: bandwidth::rate(in_bytes),
        out_rate: bandwidth::rate(out_bytes),
        project_id: project.to_string(),
        region: region.to_string(),
        in_bytes,
        out_bytes,
    }
}

async fn bandwidth_detail(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    answer(bandwidth_detail_answer(&app, &headers, raw).await)
}

async fn bandwidth_detail_answer(
    app: &App,
    headers: &HeaderMap,
    raw: Option<String>,
) -> Answer<BandwidthDetail> {
    let Call { user, query } = Call::new(app, headers, raw).await?;
    let (q, user) = (&query, &user);
    let now = store::now_ms();
    let tz = app.settings().config.timezone;
    // One row per bucket per series: an admin names the project, so the answer stays bounded.
    let Some(project) = scope(user, q.name("project_id")?, "project_id")? else {
        return Err(bad(
            "project_id is required with an admin session (a tenant may omit it for its own project)",
        ));
    };
    let project = Some(project);
    let region = q.name("region")?;
    let start = time_param(tz, q, "start", false)?;
    let end = time_param(tz, q, "end", true)?.unwrap_or(now);
    let start = start.unwrap_or(end - 24 * 3600 * 1000);
    if end <= start {
        return Err(bad("end must be later than start"));
    }
    if end - start > MAX_BANDWIDTH_SPAN_MS {
        return Err(bad("start to end may span at most 31 days"));
    }
    // Buckets overlapping [start, end), none that starts in the future.
    let first = bandwidth::bucket_start(start);
    let stop = end.min(bandwidth::bucket_start(now) + BUCKET_MS);
    let filter = store::bandwidth::Filter {
        project: project.clone(),
        region: region.clone(),
        from_ms: Some(first),
        to_ms: Some(stop),
    };
    let (p, r) = (project.clone(), region.clone());
    let (rows, known) = app
        .store
        .read(move |c| {
            let rows = store::bandwidth::buckets(c, &filter)?;
            let known = store::bandwidth::instance_series(c, p.as_deref(), r.as_deref())?;
            Ok((rows, known))
        })
        .await
        .map_err(internal)?;
    // Every series with data or with instances gets one row per bucket (zero when nothing was
    // measured); an explicitly named project and region always gets its rows.
    let mut series: BTreeSet<(String, String)> = known.into_iter().collect();
    series.extend(rows.iter().map(|r| (r.project.clone(), r.region.clone())));
    if let (Some(p), Some(r)) = (&project, &region) {
        series.insert((p.clone(), r.clone()));
    }
    let mut by_key: BTreeMap<(&str, &str, i64), (i64, i64)> = BTreeMap::new();
    for r in &rows {
        by_key.insert(
            (&r.project, &r.region, r.bucket_start_ms),
            (r.in_bytes, r.out_bytes),
        );
    }
    let mut data = Vec::new();
    for (p, r) in &series {
        let mut b = first;
        while b < stop {
            let (i, o) = by_key
                .get(&(p.as_str(), r.as_str(), b))
                .copied()
                .unwrap_or((0, 0));
            data.push(bandwidth_row(tz, p, r, b, i, o));
            b += BUCKET_MS;
        }
    }
    Ok(BandwidthDetail { data })
}

/// One `monthly_data` entry: a month of one project and region (seed 000).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MonthlyEntry {
    /// `YYYY-MM`.
    pub date: String,
    /// Highest 10-minute received rate, B/s.
    pub max_in_rate: f64,
    /// Start of that bucket, local time.
    pub max_in_rate_date: String,
    /// Highest 10-minute sent rate, B/s.
    pub max_out_rate: f64,
    /// Start of that bucket, local time.
    pub max_out_rate_date: String,
    /// Project.
    pub project_id: String,
    /// Region.
    pub region: String,
    /// Received in the month, bytes.
    pub total_in: i64,
    /// Sent in the month, bytes.
    pub total_out: i64,
}

/// The `/mana_api/flow_monthly` answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MonthlyList {
    /// One entry per month, project and region.
    pub monthly_data: Vec<MonthlyEntry>,
}

/// One `monthly_data` entry.
pub fn monthly_entry(tz: Tz, m: &MonthlyBandwidth) -> MonthlyEntry {
    MonthlyEntry {
        date: m.month.label(),
        max_in_rate: bandwidth::rate(m.max_in_bytes),
        max_in_rate_date: bandwidth::format_local(tz, m.max_in_at_ms),
        max_out_rate: bandwidth::rate(m.max_out_bytes),
        max_out_rate_date: bandwidth::format_local(tz, m.max_out_at_ms),
        project_id: m.project.clone(),
        region: m.region.clone(),
        total_in: m.total_in,
        total_out: m.total_out,
    }
}

/// The `{"monthly_data": […]}` answer for `filter` (shared with the bench).
pub fn monthly_answer(
    conn: &crate::store::Connection,
    tz: Tz,
    filter: &store::bandwidth::Filter,
) -> store::Result<MonthlyList> {
    let months = store::bandwidth::monthly(conn, tz, filter)?;
    Ok(MonthlyList {
        monthly_data: months.iter().map(|m| monthly_entry(tz, m)).collect(),
    })
}

async fn bandwidth_monthly(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    answer(bandwidth_monthly_answer(&app, &headers, raw).await)
}

async fn bandwidth_monthly_answer(
    app: &App,
    headers: &HeaderMap,
    raw: Option<String>,
) -> Answer<MonthlyList> {
    let Call { user, query: q } = Call::new(app, headers, raw).await?;
    let tz = app.settings().config.timezone;
    let project = scope(&user, q.name("project_id")?, "project_id")?;
    let region = q.name("region")?;
    let (from_ms, to_ms) = match q.get("month") {
        None => (None, None),
        Some(m) => {
            let month =
                Month::parse(m).ok_or_else(|| bad(format!("month must be YYYY-MM, got {m:?}")))?;
            let (a, b) = month
                .window(tz)
                .ok_or_else(|| bad(format!("month {m:?} is out of range")))?;
            (Some(a), Some(b))
        }
    };
    let filter = store::bandwidth::Filter {
        project,
        region,
        from_ms,
        to_ms,
    };
    app.store
        .read(move |c| monthly_answer(c, tz, &filter))
        .await
        .map_err(internal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmmon_common::wire::{DesiredState, Inventory};

    fn user(admin: bool, project: Option<&str>) -> SessionUser {
        SessionUser {
            session_id: "s".into(),
            user_id: 1,
            name: "u".into(),
            is_admin: admin,
            project: project.map(str::to_string),
            last_seen_ms: 0,
        }
    }

    #[test]
    fn gib_rounding() {
        assert_eq!(gib(0), 0);
        assert_eq!(gib(1), 1);
        assert_eq!(gib(16 * GIB - 300 * 1024 * 1024), 16);
        assert_eq!(gib(20 * GIB), 20);
        assert_eq!(gib(GIB + GIB / 2), 2);
        assert_eq!(gib(GIB + GIB / 2 - 1), 1);
    }

    #[test]
    fn scope_rules() {
        let admin = user(true, None);
        assert_eq!(scope(&admin, None, "tenant_id").ok(), Some(None));
        assert_eq!(
            scope(&admin, Some("p9".into()), "tenant_id").ok(),
            Some(Some("p9".into()))
        );
        let tenant = user(false, Some("p1"));
        assert_eq!(
            scope(&tenant, None, "project_id").ok(),
            Some(Some("p1".into()))
        );
        assert_eq!(
            scope(&tenant, Some("p1".into()), "project_id").ok(),
            Some(Some("p1".into()))
        );
        let denied = scope(&tenant, Some("p2".into()), "project_id")
            .err()
            .unwrap();
        assert_eq!(denied.status, StatusCode::FORBIDDEN);
    }

    #[test]
    fn status_follows_interval() {
        let row = InstanceRow {
            instance_id: "i".into(),
            project: "p".into(),
            region: "r".into(),
            party: "x".into(),
            inventory: Inventory::default(),
            created_at_ms: 0,
            updated_at_ms: 0,
            last_seen_ms: 100_000,
            desired: DesiredState {
                monitoring: false,
                interval_secs: 30,
            },
            dropped_samples: 0,
            spooled_batches: 0,
            clock_offset_ms: 0,
            agent_conflicts: 0,
        };
        assert_eq!(status(&row, 100_000 + 90_000), "ACTIVE");
        assert_eq!(status(&row, 100_000 + 90_001), "SHUTOFF");
    }

    #[test]
    fn local_time_parsing() {
        let sh: Tz = "Asia/Shanghai".parse().unwrap();
        let day = parse_local(sh, "2025-02-01", false).unwrap();
        assert_eq!(day, 1_738_368_000_000 - 8 * 3_600_000);
        assert_eq!(
            parse_local(sh, "2025-02-01", true).unwrap(),
            day + 86_400_000
        );
        assert_eq!(
            parse_local(sh, "2025-02-01 00:10:00", true).unwrap(),
            day + 600_000
        );
        assert_eq!(
            parse_local(sh, "2025-02-01T00:10:00", false).unwrap(),
            day + 600_000
        );
        for bad in [
            "2025-02-30",
            "yesterday",
            "2025-02-01 25:00:00",
            "",
            "1738368000",
        ] {
            assert_eq!(parse_local(sh, bad, false), None, "{bad}");
        }
    }

    #[test]
    fn query_parsing() {
        let q = Query::parse("a=1&b=&c=x%20y&tenant_id=p%2C1").ok().unwrap();
        assert_eq!(q.get("a"), Some("1"));
        assert_eq!(q.get("b"), None);
        assert_eq!(q.get("c"), Some("x y"));
        assert!(q.name("tenant_id").is_err());
        assert!(Query::parse("a=1&a=2").is_err());
        let q = Query::parse("f=0&t=x&g=3").ok().unwrap();
        assert!(q.page_bound("f").is_err());
        assert!(q.page_bound("t").is_err());
        assert_eq!(q.page_bound("g").ok(), Some(Some(3)));
        let q = Query::parse("f=%2B3").ok().unwrap();
        assert!(q.page_bound("f").is_err(), "a sign is not a digit");
    }
}
