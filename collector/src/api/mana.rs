//! `GET /mana_api/vm`, `/mana_api/flow`, `/mana_api/flow_monthly` (SPEC §3.2, seeds 002 and 000).
//!
//! Auth: `X-Auth-Token` carries a session id from the method-coded login (458753). Admins see
//! every project; a tenant sees its own project only and gets 403 with the seed's
//! "URL's project_id … doesn't match Context's project_id …" message when it names another one.
//! Errors are `{"msg", "code"}` with the HTTP status in both places. The full contract, with every
//! decision (omitted filters, paging, times, bandwidth method), is in `docs/mana_api.md`.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{NaiveDate, NaiveDateTime};
use chrono_tz::Tz;
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Method, Request, StatusCode};
use serde_json::{Map, Value, json};

use super::{Response, error_json, json_response};
use crate::App;
use crate::flow::{self, BUCKET_MS, Month, MonthlyFlow};
use crate::store::{self, InstanceRow, SessionUser};

/// Path prefix of this API.
pub const PREFIX: &str = "/mana_api";
/// The VM list.
pub const VM_PATH: &str = "/mana_api/vm";
/// Bandwidth per 10-minute bucket.
pub const FLOW_PATH: &str = "/mana_api/flow";
/// Monthly bandwidth peaks and totals.
pub const FLOW_MONTHLY_PATH: &str = "/mana_api/flow_monthly";
/// Header carrying the session id.
pub const TOKEN_HEADER: &str = "x-auth-token";
/// Longest time range one `/mana_api/flow` request may cover.
pub const MAX_FLOW_SPAN_MS: i64 = 31 * 24 * 3600 * 1000;
/// An agent silent for this many of its intervals is SHUTOFF.
pub const SILENT_INTERVALS: i64 = 3;
/// Longest project, region or party name (as `vmmon-collector token create` accepts).
const MAX_NAME_LEN: usize = 128;
const GIB: u64 = 1024 * 1024 * 1024;

/// Whether `path` belongs to this API (known or not: unknown ones answer 404 here).
pub fn owns(path: &str) -> bool {
    path == PREFIX || path.starts_with("/mana_api/")
}

#[derive(Clone, Copy)]
enum Endpoint {
    Vm,
    Flow,
    FlowMonthly,
}

/// An error answer: its status and message (rendered as `{"msg", "code"}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status (also the body's `code`).
    pub status: StatusCode,
    /// The body's `msg`.
    pub msg: String,
}

impl ApiError {
    fn new(status: StatusCode, msg: impl Into<String>) -> ApiError {
        ApiError {
            status,
            msg: msg.into(),
        }
    }

    fn into_response(self) -> Response {
        error_json(self.status, &self.msg)
    }
}

type Answer = Result<Value, ApiError>;

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

/// Handles one request under [`PREFIX`].
pub async fn handle(app: &App, req: Request<Incoming>) -> Response {
    let path = req.uri().path();
    let endpoint = match path {
        VM_PATH => Endpoint::Vm,
        FLOW_PATH => Endpoint::Flow,
        FLOW_MONTHLY_PATH => Endpoint::FlowMonthly,
        _ => return error_json(StatusCode::NOT_FOUND, &format!("no such path: {path}")),
    };
    if req.method() != Method::GET {
        return error_json(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("use GET for {path}"),
        );
    }
    let user = match authenticate(app, req.headers()).await {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    let query = match Query::parse(req.uri().query().unwrap_or("")) {
        Ok(q) => q,
        Err(e) => return e.into_response(),
    };
    let now = store::now_ms();
    let answer = match endpoint {
        Endpoint::Vm => vm(app, &user, &query, now).await,
        Endpoint::Flow => flow_detail(app, &user, &query, now).await,
        Endpoint::FlowMonthly => flow_monthly(app, &user, &query).await,
    };
    match answer {
        Ok(v) => json_response(StatusCode::OK, &v),
        Err(e) => e.into_response(),
    }
}

/// The session behind `X-Auth-Token`, or 401.
async fn authenticate(app: &App, headers: &HeaderMap) -> Result<SessionUser, ApiError> {
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
    crate::auth::session_user(app, &sid)
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

/// One `vm_servers` entry.
pub fn vm_entry(tz: Tz, row: &InstanceRow, now_ms: i64) -> Value {
    let inv = &row.inventory;
    let name = if inv.hostname.is_empty() {
        row.instance_id.clone()
    } else {
        inv.hostname.clone()
    };
    json!({
        "instance_name": name,
        "instance_id": row.instance_id,
        "cpu_num": inv.cpu_count,
        "mem_size": gib(inv.mem_total_bytes),
        "disk_size": gib(inv.disk_total_bytes),
        "lan_ip_set": inv.lan_ips.join(","),
        "wan_ip_set": inv.wan_ips.join(","),
        "status": status(row, now_ms),
        "create_at": flow::format_local(tz, row.created_at_ms),
        "update_at": flow::format_local(tz, row.updated_at_ms),
        "tenant_id": row.project,
        "party": row.party,
        "region": row.region,
        "dropped_samples": row.dropped_samples,
    })
}

async fn vm(app: &App, user: &SessionUser, q: &Query, now: i64) -> Answer {
    let project = scope(user, q.name("tenant_id")?, "tenant_id")?;
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
    let page: Vec<Value> = matching
        .into_iter()
        .skip(from - 1)
        .take(take)
        .map(|r| vm_entry(app.tz, r, now))
        .collect();
    Ok(json!({"code": 200, "vm_servers": page, "total": total}))
}

/// Parses `YYYY-MM-DD` or `YYYY-MM-DD HH:MM:SS` (also with `T`) as a local time in `tz`; a bare
/// date means its midnight, or the next midnight when `end_of_day` (an inclusive end day).
pub fn parse_local(tz: Tz, s: &str, end_of_day: bool) -> Option<i64> {
    let s = s.trim();
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        let d = if end_of_day { d.succ_opt()? } else { d };
        return flow::local_to_utc_ms(tz, d.and_hms_opt(0, 0, 0)?);
    }
    let t = NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S")
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S"))
        .ok()?;
    flow::local_to_utc_ms(tz, t)
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

/// One `/mana_api/flow` row.
pub fn flow_row(
    tz: Tz,
    project: &str,
    region: &str,
    bucket_start_ms: i64,
    in_bytes: i64,
    out_bytes: i64,
) -> Value {
    json!({
        "begin_rate_date": flow::format_local(tz, bucket_start_ms),
        "date": flow::format_local_date(tz, bucket_start_ms),
        "end_rate_date": flow::format_local(tz, bucket_start_ms + BUCKET_MS),
        "in_rate": flow::rate(in_bytes),
        "out_rate": flow::rate(out_bytes),
        "project_id": project,
        "region": region,
        "in_bytes": in_bytes,
        "out_bytes": out_bytes,
    })
}

async fn flow_detail(app: &App, user: &SessionUser, q: &Query, now: i64) -> Answer {
    let tz = app.tz;
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
    if end - start > MAX_FLOW_SPAN_MS {
        return Err(bad("start to end may span at most 31 days"));
    }
    // Buckets overlapping [start, end), none that starts in the future.
    let first = flow::bucket_start(start);
    let stop = end.min(flow::bucket_start(now) + BUCKET_MS);
    let filter = store::flow::Filter {
        project: project.clone(),
        region: region.clone(),
        from_ms: Some(first),
        to_ms: Some(stop),
    };
    let (p, r) = (project.clone(), region.clone());
    let (rows, known) = app
        .store
        .read(move |c| {
            let rows = store::flow::buckets(c, &filter)?;
            let known = store::flow::instance_series(c, p.as_deref(), r.as_deref())?;
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
            data.push(flow_row(tz, p, r, b, i, o));
            b += BUCKET_MS;
        }
    }
    Ok(json!({"data": data}))
}

/// One `monthly_data` entry.
pub fn monthly_entry(tz: Tz, m: &MonthlyFlow) -> Value {
    json!({
        "date": m.month.label(),
        "max_in_rate": flow::rate(m.max_in_bytes),
        "max_in_rate_date": flow::format_local(tz, m.max_in_at_ms),
        "max_out_rate": flow::rate(m.max_out_bytes),
        "max_out_rate_date": flow::format_local(tz, m.max_out_at_ms),
        "project_id": m.project,
        "region": m.region,
        "total_in": m.total_in,
        "total_out": m.total_out,
    })
}

/// The `{"monthly_data": […]}` answer for `filter` (shared with the bench).
pub fn monthly_answer(
    conn: &rusqlite::Connection,
    tz: Tz,
    filter: &store::flow::Filter,
) -> store::Result<Value> {
    let months = store::flow::monthly(conn, tz, filter)?;
    let list: Vec<Value> = months.iter().map(|m| monthly_entry(tz, m)).collect();
    let mut out = Map::new();
    out.insert("monthly_data".into(), Value::Array(list));
    Ok(Value::Object(out))
}

async fn flow_monthly(app: &App, user: &SessionUser, q: &Query) -> Answer {
    let tz = app.tz;
    let project = scope(user, q.name("project_id")?, "project_id")?;
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
    let filter = store::flow::Filter {
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
