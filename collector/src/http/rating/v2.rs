//! `/v2/...`: CloudKitty's v2 API (flask-restful upstream), which today's clients use: the
//! `cloudkitty` CLI by default and Horizon's Rating, Reporting and Rating Summary panels.
//!
//! | route | methods | policy (upstream's) |
//! |---|---|---|
//! | `/v2` | GET | open: the v2 version document |
//! | `/v2/summary` | GET | reader-or-admin (`summary:get_summary`) |
//! | `/v2/dataframes` | GET, POST | GET reader-or-admin, POST admin |
//! | `/v2/scope` | GET, PUT (reset), PATCH | admin |
//! | `/v2/rating/modules[/{id}]` | GET, PUT | admin |
//! | `/v2/task/reprocesses[/{scope_id}]` | GET, POST | admin |
//!
//! Shapes follow upstream's resources and functional tests: errors are `{"message": "..."}` with
//! the status (an unknown URL too); quantities and prices are JSON numbers, written from their
//! exact decimal text; datetimes of summaries and dataframes are ISO-8601 with `+00:00`, those of
//! scopes and reprocessing schedules naive UTC. Query lists take repeated parameters and
//! comma-separated values; `filters` is `key:value[,key:value]`; `offset` (default 0) and `limit`
//! (default 100, at least 1) page the answers.
//!
//! vmmon's model behind them:
//! * A **scope** is a project (the scope key is `project_id`): every project with instances or
//!   stored ratings. All active scopes are rated on one schedule (the processing loop), so a
//!   scope's `last_processed_timestamp` is the time up to which it is rated: the start of the next
//!   period the loop rates, or earlier while a reset or reprocessing of the scope is under way.
//!   An inactive scope (PATCH `active=false`) is skipped by the loop and keeps its ratings.
//! * A **reset** (PUT) moves scopes back to a time: their ratings from that time on are rated
//!   again, period by period, replacing what was stored (vmmon's idempotent re-rating). Moving a
//!   scope forward (skipping periods) is refused: vmmon never leaves periods unrated.
//! * A **reprocessing** (POST `/v2/task/reprocesses`) re-rates `[start, end)` of scopes the same
//!   way, in the background ([`crate::jobs::rating::drain_reprocesses`]); its progress is
//!   `current_reprocess_time`.
//! * The report window is the v1 API's: a stored period counts when it lies inside
//!   `[begin, end]`, so `/v2/summary` and `/v1/report/total` agree for the same window.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::auth::{self, Caller};
use super::{Fault, parse_bool, parse_datetime, percent_decode};
use crate::app::App;
use crate::http::{BodyError, read_body};
use crate::rating::decimal;
use crate::rating::metrics::{MetricsConfig, SCOPE_KEY};
use crate::rating::modules::{self, ModuleState};
use crate::rating::period::{iso, month_start, period_start};
use crate::store::{self, rating as db};

/// Path prefix of this API.
pub const PREFIX: &str = "/v2";
/// Default page size (upstream's).
const DEFAULT_LIMIT: u64 = 100;
/// Most datapoints one `POST /v2/dataframes` may carry.
const MAX_PUSHED_POINTS: usize = 100_000;
/// Longest accepted id, filter value or reason.
const MAX_TEXT: usize = 255;
/// Tenant of pushed datapoints without a `project_id` (upstream v1 storage's word).
const UNDEF_TENANT: &str = "__UNDEF__";

// ---------------------------------------------------------------------------------------------
// Errors and answers

/// A v2 error: `{"message": "..."}` with the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V2Fault {
    /// HTTP status.
    pub status: StatusCode,
    /// `message`.
    pub message: String,
}

impl V2Fault {
    fn new(status: StatusCode, message: impl Into<String>) -> V2Fault {
        V2Fault {
            status,
            message: message.into(),
        }
    }
    fn bad(message: impl Into<String>) -> V2Fault {
        V2Fault::new(StatusCode::BAD_REQUEST, message)
    }
    fn not_found(message: impl Into<String>) -> V2Fault {
        V2Fault::new(StatusCode::NOT_FOUND, message)
    }
    fn nothing_found() -> V2Fault {
        V2Fault::not_found("No resource found for provided filters.")
    }
    /// voluptuous's 400, as upstream's input schemas word it.
    fn invalid(data: &str, why: &str, path: &str) -> V2Fault {
        V2Fault::bad(format!("Invalid data '{data}' : {why} (path: '[{path}]')"))
    }
    fn store(e: store::StoreError) -> V2Fault {
        V2Fault::from(Fault::store(e))
    }
}

impl From<Fault> for V2Fault {
    /// A v1 fault in v2 words: a policy denial is upstream's v2 403 text.
    fn from(f: Fault) -> V2Fault {
        let message = if f.status == StatusCode::FORBIDDEN {
            "You are not authorized to perform this action".to_string()
        } else {
            f.message
        };
        V2Fault::new(f.status, message)
    }
}

#[derive(Serialize)]
struct MessageBody<'a> {
    message: &'a str,
}

impl IntoResponse for V2Fault {
    fn into_response(self) -> Response {
        json_answer(
            self.status,
            &MessageBody {
                message: &self.message,
            },
        )
    }
}

fn json_answer<T: Serialize + ?Sized>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_string(body) {
        Ok(text) => (status, [(header::CONTENT_TYPE, "application/json")], text).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "v2 answer cannot be serialized.");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// A successful answer.
enum Answer {
    /// A JSON body with a status (200, or 202 for upstream's accepted `{}`).
    Json(StatusCode, Box<RawValue>),
    /// 204, empty.
    NoContent,
}

type Outcome = Result<Answer, V2Fault>;

fn ok<T: Serialize + ?Sized>(status: StatusCode, v: &T) -> Outcome {
    serde_json::value::to_raw_value(v)
        .map(|raw| Answer::Json(status, raw))
        .map_err(|e| {
            tracing::error!(error = %e, "v2 answer cannot be serialized.");
            V2Fault::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        })
}

/// Upstream's `{}` with 202 (accepted, done in the background).
#[derive(Serialize)]
struct Empty {}

/// A decimal written as a JSON number with its exact digits (upstream writes floats; no float
/// touches a price here).
struct Num(Decimal);

impl Serialize for Num {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let text = decimal::to_text(self.0);
        match RawValue::from_string(text) {
            Ok(raw) => raw.serialize(s),
            Err(e) => Err(serde::ser::Error::custom(e)),
        }
    }
}

/// ISO-8601 with an explicit UTC offset, as upstream writes summary and dataframe times.
fn iso_utc(ms: i64) -> String {
    format!("{}+00:00", iso(ms))
}

// ---------------------------------------------------------------------------------------------
// Requests

/// One parsed v2 request.
struct Ctx<'a> {
    app: &'a Arc<App>,
    method: Method,
    segs: Vec<String>,
    /// Every query parameter, in order, repeated names kept.
    query: Vec<(String, String)>,
    body: Value,
    caller: Caller,
    /// `scheme://host` for links (see `origin_for`).
    origin: String,
}

impl Ctx<'_> {
    /// Every value of a list parameter: repeated names and comma-separated values.
    fn multi(&self, name: &str) -> Vec<String> {
        self.query
            .iter()
            .filter(|(k, _)| k == name)
            .flat_map(|(_, v)| v.split(','))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect()
    }

    /// A single-valued parameter (the first given; empty counts as absent).
    fn single(&self, name: &str) -> Option<String> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    fn query_text(&self) -> String {
        let mut m: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (k, v) in &self.query {
            m.entry(k).or_default().push(v);
        }
        format!("{m:?}")
    }

    /// An integer parameter with a minimum.
    fn int(&self, name: &str, default: u64, min: u64) -> Result<u64, V2Fault> {
        match self.single(name) {
            None => Ok(default),
            Some(v) => match v.parse::<u64>() {
                Ok(n) if n >= min => Ok(n),
                Ok(_) => Err(V2Fault::invalid(
                    &self.query_text(),
                    &format!("value must be at least {min}"),
                    name,
                )),
                Err(_) => Err(V2Fault::invalid(&self.query_text(), "expected int", name)),
            },
        }
    }

    /// `(offset, limit)`.
    fn page(&self) -> Result<(u64, u64), V2Fault> {
        Ok((
            self.int("offset", 0, 0)?,
            self.int("limit", DEFAULT_LIMIT, 1)?,
        ))
    }

    /// A datetime parameter as epoch ms.
    fn time(&self, name: &str) -> Result<Option<i64>, V2Fault> {
        self.single(name)
            .map(|v| {
                parse_datetime(&v).ok_or_else(|| {
                    V2Fault::invalid(&self.query_text(), "not a valid ISO-8601 datetime", name)
                })
            })
            .transpose()
    }

    /// `filters=key:value[,key:value]` (repeatable), in order.
    fn filters(&self) -> Result<Vec<(String, String)>, V2Fault> {
        let mut out = Vec::new();
        for item in self.multi("filters") {
            match item.split_once(':') {
                Some((k, v)) if !k.is_empty() && !v.contains(':') => {
                    out.push((k.trim().to_string(), v.trim().to_string()));
                }
                _ => {
                    return Err(V2Fault::invalid(
                        &self.query_text(),
                        "filters must be key:value",
                        "filters",
                    ));
                }
            }
        }
        if out
            .iter()
            .any(|(k, v)| k.chars().count() > MAX_TEXT || v.chars().count() > MAX_TEXT)
        {
            return Err(V2Fault::invalid(
                &self.query_text(),
                "filter keys and values are at most 255 characters",
                "filters",
            ));
        }
        Ok(out)
    }

    /// The body as an object with only `allowed` keys (upstream's schemas refuse extra keys).
    fn body_object(&self, allowed: &[&str]) -> Result<Map<String, Value>, V2Fault> {
        let obj = match &self.body {
            Value::Null => Map::new(),
            Value::Object(m) => m.clone(),
            other => {
                return Err(V2Fault::invalid(
                    &other.to_string(),
                    "expected a dictionary",
                    "",
                ));
            }
        };
        if let Some(k) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(V2Fault::invalid(
                &self.body.to_string(),
                "extra keys not allowed",
                &format!("'{k}'"),
            ));
        }
        Ok(obj)
    }

    /// 401 for a caller without (valid) credentials, in the words of the auth mode.
    fn unauthenticated(&self) -> Result<(), V2Fault> {
        match &self.caller {
            // A reader check on no target fails with 401 for these callers before any policy.
            Caller::Anonymous | Caller::Invalid(_) => {
                self.caller.require_reader("", None).map_err(V2Fault::from)
            }
            _ => Ok(()),
        }
    }

    fn require_admin(&self, rule: &str) -> Result<(), V2Fault> {
        self.caller.require_admin(rule).map_err(V2Fault::from)
    }
}

/// A text value of a body key: a string, or a list of strings (comma-separated values split).
fn body_list(body: &Map<String, Value>, key: &str) -> Result<Option<Vec<String>>, V2Fault> {
    let bad = || {
        V2Fault::invalid(
            &Value::Object(body.clone()).to_string(),
            "expected str",
            &format!("'{key}'"),
        )
    };
    let items: Vec<String> = match body.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or_else(bad))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad()),
    };
    let list: Vec<String> = items
        .iter()
        .flat_map(|s| s.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if list.iter().any(|s| s.chars().count() > MAX_TEXT) {
        return Err(bad());
    }
    Ok(Some(list))
}

fn body_bool(body: &Map<String, Value>, key: &str) -> Result<Option<bool>, V2Fault> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) => parse_bool(s).map(Some).ok_or_else(|| {
            V2Fault::invalid(
                &Value::Object(body.clone()).to_string(),
                "expected boolean",
                &format!("'{key}'"),
            )
        }),
        Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n <= 1) => {
            Ok(Some(n.as_u64() == Some(1)))
        }
        Some(_) => Err(V2Fault::invalid(
            &Value::Object(body.clone()).to_string(),
            "expected boolean",
            &format!("'{key}'"),
        )),
    }
}

fn body_time(body: &Map<String, Value>, key: &str) -> Result<Option<i64>, V2Fault> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => parse_datetime(s).map(Some).ok_or_else(|| {
            V2Fault::invalid(
                &Value::Object(body.clone()).to_string(),
                "not a valid ISO-8601 datetime",
                &format!("'{key}'"),
            )
        }),
        Some(_) => Err(V2Fault::invalid(
            &Value::Object(body.clone()).to_string(),
            "expected an ISO-8601 datetime",
            &format!("'{key}'"),
        )),
    }
}

/// Handles one request under [`PREFIX`].
pub async fn handle(State(app): State<Arc<App>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let head = parts.method == Method::HEAD;
    let raw_path = parts.uri.path().trim_end_matches('/').to_string();
    let segs: Vec<String> = raw_path
        .split('/')
        .filter(|s| !s.is_empty())
        .skip(1)
        .map(percent_decode)
        .collect();
    let query: Vec<(String, String)> =
        url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
    let bytes = match read_body(body, app.settings().config.max_body_bytes).await {
        Ok(b) => b,
        Err(BodyError::TooLarge(n)) => {
            return V2Fault::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body exceeds the limit of {n} bytes"),
            )
            .into_response();
        }
        Err(e) => return V2Fault::bad(e.to_string()).into_response(),
    };
    let body: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(e) => {
                return V2Fault::bad(format!("Failed to decode JSON object: {e}")).into_response();
            }
        }
    };
    let peer = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let caller = match auth::identify(&app, &parts.headers, peer).await {
        Ok(c) => c,
        Err(f) => return V2Fault::from(f).into_response(),
    };
    let origin = super::origin_for(&app, &parts.headers, peer);
    let ctx = Ctx {
        app: &app,
        method: if head { Method::GET } else { parts.method },
        segs,
        query,
        body,
        caller,
        origin,
    };
    let mut resp = match dispatch(&ctx).await {
        Ok(Answer::Json(status, raw)) => json_answer(status, &raw),
        Ok(Answer::NoContent) => StatusCode::NO_CONTENT.into_response(),
        Err(f) => f.into_response(),
    };
    if head {
        *resp.body_mut() = axum::body::Body::empty();
    }
    resp
}

fn no_route() -> V2Fault {
    V2Fault::not_found(
        "The requested URL was not found on the server. If you entered the URL manually please \
         check your spelling and try again.",
    )
}

fn bad_method() -> V2Fault {
    V2Fault::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "The method is not allowed for the requested URL.",
    )
}

async fn dispatch(ctx: &Ctx<'_>) -> Outcome {
    let segs: Vec<&str> = ctx.segs.iter().map(String::as_str).collect();
    let m = &ctx.method;
    match segs.as_slice() {
        [] if *m == Method::GET => ok(StatusCode::OK, &super::VersionDoc::of(&ctx.origin, "v2")),
        ["summary"] if *m == Method::GET => summary(ctx).await,
        ["dataframes"] if *m == Method::GET => get_dataframes(ctx).await,
        ["dataframes"] if *m == Method::POST => post_dataframes(ctx).await,
        ["scope"] if *m == Method::GET => get_scopes(ctx).await,
        ["scope"] if *m == Method::PUT => reset_scopes(ctx).await,
        ["scope"] if *m == Method::PATCH => patch_scope(ctx).await,
        ["rating", "modules"] if *m == Method::GET => list_modules(ctx).await,
        ["rating", "modules", id] if *m == Method::GET => get_module(ctx, id).await,
        ["rating", "modules", id] if *m == Method::PUT => put_module(ctx, id).await,
        ["task", "reprocesses"] if *m == Method::GET => get_reprocesses(ctx, None).await,
        ["task", "reprocesses", id] if *m == Method::GET => {
            get_reprocesses(ctx, Some((*id).to_string())).await
        }
        ["task", "reprocesses"] if *m == Method::POST => post_reprocess(ctx).await,
        []
        | ["summary" | "dataframes" | "scope"]
        | ["rating", "modules"]
        | ["rating", "modules", _]
        | ["task", "reprocesses"]
        | ["task", "reprocesses", _] => Err(bad_method()),
        _ => Err(no_route()),
    }
}

// ---------------------------------------------------------------------------------------------
// Report window and filters shared by summary and dataframes

/// The window (default: the current UTC month).
fn window(ctx: &Ctx<'_>) -> Result<(i64, i64), V2Fault> {
    let now = store::now_ms();
    let this_month = month_start(now);
    let next_month = month_start(this_month + 32 * 86_400_000);
    Ok((
        ctx.time("begin")?.unwrap_or(this_month),
        ctx.time("end")?.unwrap_or(next_month),
    ))
}

/// What a summary or dataframes request selects, after the policy forced a tenant's project.
#[derive(Debug, Clone, Default)]
struct Selection {
    /// Metric types (`filters=type:...`); empty: all.
    types: Vec<String>,
    /// Projects; empty: all.
    projects: Vec<String>,
    /// Other desc attributes, compared as Python `str()` text.
    attrs: Vec<(String, String)>,
}

impl Selection {
    fn from_filters(filters: Vec<(String, String)>) -> Selection {
        let mut s = Selection::default();
        for (k, v) in filters {
            match k.as_str() {
                "type" => s.types.push(v),
                SCOPE_KEY => s.projects.push(v),
                _ => s.attrs.push((k, v)),
            }
        }
        s
    }

    fn filter(&self, begin_ms: i64, end_ms: i64) -> db::ReportFilter {
        db::ReportFilter {
            begin_ms,
            end_ms,
            tenant_id: (self.projects.len() == 1).then(|| self.projects[0].clone()),
            res_type: (self.types.len() == 1).then(|| self.types[0].clone()),
        }
    }

    fn matches(&self, p: &db::PointRow, desc: &Map<String, Value>) -> bool {
        (self.types.is_empty() || self.types.contains(&p.res_type))
            && (self.projects.is_empty() || self.projects.contains(&p.tenant_id))
            && self
                .attrs
                .iter()
                .all(|(k, v)| desc.get(k).is_some_and(|d| decimal::python_str(d) == *v))
    }
}

/// Applies the reader-or-admin policy: `Ok(None)` when a project-less tenant must get an empty
/// answer (upstream's "unscoped non-admin user").
fn scoped(ctx: &Ctx<'_>, mut sel: Selection) -> Result<Option<Selection>, V2Fault> {
    ctx.unauthenticated()?;
    if ctx.caller.is_admin() {
        return Ok(Some(sel));
    }
    match ctx.caller.project() {
        None => Ok(None),
        Some(own) => {
            sel.projects = vec![own.to_string()];
            Ok(Some(sel))
        }
    }
}

fn desc_of(p: &db::PointRow) -> Map<String, Value> {
    match serde_json::from_str(&p.desc) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// GET /v2/summary

/// One grouping of a summary.
#[derive(Debug, Clone, PartialEq, Eq)]
enum GroupKey {
    /// `type`: the rated type.
    Type,
    /// `project_id`: the tenant.
    Project,
    /// `time`: one group per period (begin/end are the period's).
    Time,
    /// `time-d|w|m|y`: the period's day of the year, ISO week, month or year (as text).
    Calendar(&'static str),
    /// A desc attribute.
    Attr(String),
}

impl GroupKey {
    fn parse(g: &str) -> Result<GroupKey, V2Fault> {
        Ok(match g {
            "type" => GroupKey::Type,
            SCOPE_KEY => GroupKey::Project,
            "time" => GroupKey::Time,
            "time-d" | "day_of_the_year" => GroupKey::Calendar("day_of_the_year"),
            "time-w" | "week_of_the_year" => GroupKey::Calendar("week_of_the_year"),
            "time-m" | "month" => GroupKey::Calendar("month"),
            "time-y" | "year" => GroupKey::Calendar("year"),
            t if t.starts_with("time-") => {
                return Err(V2Fault::bad(format!(
                    "Invalid groupby time option. There is no groupby processing for [{t}]."
                )));
            }
            other => GroupKey::Attr(other.to_string()),
        })
    }

    /// The column name (None for `time`, which sets begin/end instead).
    fn column(&self) -> Option<&str> {
        match self {
            GroupKey::Type => Some("type"),
            GroupKey::Project => Some(SCOPE_KEY),
            GroupKey::Time => None,
            GroupKey::Calendar(c) => Some(c),
            GroupKey::Attr(a) => Some(a),
        }
    }

    fn value(&self, p: &db::PointRow, desc: &Map<String, Value>) -> Value {
        use chrono::{Datelike, TimeZone, Utc};
        match self {
            GroupKey::Type => Value::String(p.res_type.clone()),
            GroupKey::Project => Value::String(p.tenant_id.clone()),
            GroupKey::Time => Value::Null,
            GroupKey::Calendar(c) => {
                let t = Utc
                    .timestamp_millis_opt(p.begin_ms)
                    .single()
                    .unwrap_or_default();
                Value::String(match *c {
                    "day_of_the_year" => t.ordinal().to_string(),
                    "week_of_the_year" => t.iso_week().week().to_string(),
                    "month" => t.month().to_string(),
                    _ => t.year().to_string(),
                })
            }
            GroupKey::Attr(a) => desc
                .get(a)
                .cloned()
                .unwrap_or_else(|| Value::String(String::new())),
        }
    }
}

/// One summary row: its group values (in groupby order), period (with `time`), sums.
struct SumRow {
    begin_ms: i64,
    end_ms: i64,
    groups: Vec<Value>,
    qty: Decimal,
    rate: Decimal,
}

/// A row in `object` format: `{"begin","end","qty","rate",<groupby columns>}`.
struct RowObject<'a> {
    row: &'a SumRow,
    columns: &'a [&'a str],
}

impl Serialize for RowObject<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(4 + self.columns.len()))?;
        m.serialize_entry("begin", &iso_utc(self.row.begin_ms))?;
        m.serialize_entry("end", &iso_utc(self.row.end_ms))?;
        m.serialize_entry("qty", &Num(self.row.qty))?;
        m.serialize_entry("rate", &Num(self.row.rate))?;
        for (c, v) in self.columns.iter().zip(&self.row.groups) {
            m.serialize_entry(c, v)?;
        }
        m.end()
    }
}

/// A row in `table` format: the values in column order.
struct RowList<'a>(RowObject<'a>);

impl Serialize for RowList<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let r = self.0.row;
        let mut q = s.serialize_seq(Some(4 + r.groups.len()))?;
        q.serialize_element(&iso_utc(r.begin_ms))?;
        q.serialize_element(&iso_utc(r.end_ms))?;
        q.serialize_element(&Num(r.qty))?;
        q.serialize_element(&Num(r.rate))?;
        for v in &r.groups {
            q.serialize_element(v)?;
        }
        q.end()
    }
}

/// `table` format: `{"total","columns","results":[[...]],"format":"table"}`.
#[derive(Serialize)]
struct SummaryTable<'a> {
    total: usize,
    columns: Vec<&'a str>,
    results: Vec<RowList<'a>>,
    format: &'static str,
}

/// `object` format: `{"total","results":[{...}],"format":"object"}`.
#[derive(Serialize)]
struct SummaryObjects<'a> {
    total: usize,
    results: Vec<RowObject<'a>>,
    format: &'static str,
}

async fn summary(ctx: &Ctx<'_>) -> Outcome {
    let format = ctx.single("response_format").unwrap_or("table".into());
    if format != "table" && format != "object" {
        return Err(V2Fault::invalid(
            &ctx.query_text(),
            &format!("Invalid response format [{format}]. Valid format are [['table', 'object']]."),
            "response_format",
        ));
    }
    let (offset, limit) = ctx.page()?;
    let (begin_ms, end_ms) = window(ctx)?;
    let groupby: Vec<GroupKey> = ctx
        .multi("groupby")
        .iter()
        .map(|g| GroupKey::parse(g))
        .collect::<Result<_, _>>()?;
    let sel = Selection::from_filters(ctx.filters()?);
    let Some(sel) = scoped(ctx, sel)? else {
        return summary_answer(&format, 0, &[], &[]);
    };
    let by_time = groupby.contains(&GroupKey::Time);
    let keyed: Vec<GroupKey> = groupby
        .iter()
        .filter(|g| **g != GroupKey::Time)
        .cloned()
        .collect();
    let f = sel.filter(begin_ms, end_ms);
    let rows = ctx
        .app
        .store
        .read(move |c| {
            // Group key: (group values as JSON text, period) → (values, begin, end, qty, rate).
            let mut sums: BTreeMap<(Vec<String>, i64), SumRow> = BTreeMap::new();
            db::for_each_point(c, &f, |p| {
                let desc = desc_of(&p);
                if !sel.matches(&p, &desc) {
                    return Ok(());
                }
                let groups: Vec<Value> = keyed.iter().map(|g| g.value(&p, &desc)).collect();
                let (b, e) = if by_time {
                    (p.begin_ms, p.end_ms)
                } else {
                    (begin_ms, end_ms)
                };
                let sort: Vec<String> = groups.iter().map(decimal::python_str).collect();
                let row = sums.entry((sort, b)).or_insert_with(|| SumRow {
                    begin_ms: b,
                    end_ms: e,
                    groups,
                    qty: Decimal::ZERO,
                    rate: Decimal::ZERO,
                });
                let corrupt = |what: &str, v: &str| {
                    store::StoreError::Corrupt(format!("rated point {what} {v:?}"))
                };
                let qty = decimal::parse(&p.qty).map_err(|_| corrupt("qty", &p.qty))?;
                let rate = decimal::parse(&p.rating).map_err(|_| corrupt("rating", &p.rating))?;
                row.qty = row
                    .qty
                    .checked_add(qty)
                    .ok_or_else(|| corrupt("qty sum overflows", &p.qty))?;
                row.rate = row
                    .rate
                    .checked_add(rate)
                    .ok_or_else(|| corrupt("rate sum overflows", &p.rating))?;
                Ok(())
            })?;
            Ok(sums.into_values().collect::<Vec<SumRow>>())
        })
        .await
        .map_err(V2Fault::store)?;
    let columns: Vec<&str> = groupby.iter().filter_map(GroupKey::column).collect();
    let total = rows.len();
    let page: Vec<SumRow> = rows
        .into_iter()
        .skip(usize::try_from(offset).unwrap_or(usize::MAX))
        .take(usize::try_from(limit).unwrap_or(usize::MAX))
        .collect();
    summary_answer(&format, total, &columns, &page)
}

fn summary_answer(format: &str, total: usize, columns: &[&str], rows: &[SumRow]) -> Outcome {
    let objects: Vec<RowObject<'_>> = rows.iter().map(|row| RowObject { row, columns }).collect();
    if format == "object" {
        return ok(
            StatusCode::OK,
            &SummaryObjects {
                total,
                results: objects,
                format: "object",
            },
        );
    }
    let mut all_columns = Vec::new();
    if !rows.is_empty() {
        all_columns.extend(["begin", "end", "qty", "rate"]);
        all_columns.extend_from_slice(columns);
    }
    ok(
        StatusCode::OK,
        &SummaryTable {
            total,
            columns: all_columns,
            results: objects.into_iter().map(RowList).collect(),
            format: "table",
        },
    )
}

// ---------------------------------------------------------------------------------------------
// /v2/dataframes

/// `{"unit","qty"}`.
#[derive(Serialize)]
struct Vol {
    unit: String,
    qty: Num,
}

/// `{"price"}`.
#[derive(Serialize)]
struct Rating {
    price: Num,
}

/// One datapoint of a dataframe.
#[derive(Serialize)]
struct PointBody {
    vol: Vol,
    rating: Rating,
    groupby: Map<String, Value>,
    metadata: Map<String, Value>,
}

/// `{"begin","end"}`.
#[derive(Serialize)]
struct PeriodBody {
    begin: String,
    end: String,
}

/// One dataframe: a period and its datapoints per type (in order of appearance).
#[derive(Serialize)]
struct FrameBody {
    usage: Vec<(String, Vec<PointBody>)>,
    period: PeriodBody,
}

/// `usage` as a JSON object in order.
struct UsageMap<'a>(&'a [(String, Vec<PointBody>)]);

impl Serialize for UsageMap<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

#[derive(Serialize)]
struct FrameOut<'a> {
    usage: UsageMap<'a>,
    period: &'a PeriodBody,
}

/// `{"total","dataframes"}`.
#[derive(Serialize)]
struct DataframesBody<'a> {
    total: usize,
    dataframes: Vec<FrameOut<'a>>,
}

/// Splits a stored desc into (groupby, metadata) by the metric's config (the scope key is always
/// a groupby attribute; a type the config does not know keeps everything else as metadata).
fn split_desc(
    metrics: Option<&MetricsConfig>,
    res_type: &str,
    tenant: &str,
    desc: Map<String, Value>,
) -> (Map<String, Value>, Map<String, Value>) {
    let def = metrics.and_then(|m| m.find(res_type));
    let mut groupby = Map::new();
    let mut metadata = Map::new();
    for (k, v) in desc {
        let is_group = k == SCOPE_KEY || def.is_some_and(|d| d.groupby.contains(&k));
        if is_group {
            groupby.insert(k, v);
        } else {
            metadata.insert(k, v);
        }
    }
    if !groupby.contains_key(SCOPE_KEY) {
        groupby.insert(SCOPE_KEY.into(), Value::String(tenant.to_string()));
    }
    (groupby, metadata)
}

async fn get_dataframes(ctx: &Ctx<'_>) -> Outcome {
    let (offset, limit) = ctx.page()?;
    let (begin_ms, end_ms) = window(ctx)?;
    let sel = Selection::from_filters(ctx.filters()?);
    let Some(sel) = scoped(ctx, sel)? else {
        return ok(
            StatusCode::OK,
            &DataframesBody {
                total: 0,
                dataframes: Vec::new(),
            },
        );
    };
    let f = sel.filter(begin_ms, end_ms);
    let (skip, take) = (
        usize::try_from(offset).unwrap_or(usize::MAX),
        usize::try_from(limit).unwrap_or(usize::MAX),
    );
    let (total, page) = ctx
        .app
        .store
        .read(move |c| {
            let mut total = 0usize;
            let mut page = Vec::new();
            db::for_each_point(c, &f, |p| {
                let desc = desc_of(&p);
                if sel.matches(&p, &desc) {
                    if total >= skip && page.len() < take {
                        page.push((p, desc));
                    }
                    total += 1;
                }
                Ok(())
            })?;
            Ok((total, page))
        })
        .await
        .map_err(V2Fault::store)?;
    if total == 0 {
        return Err(V2Fault::nothing_found());
    }
    let settings = ctx.app.settings();
    let metrics = settings.rating.metrics.as_ref().ok().map(|m| &**m);
    let mut frames: Vec<(i64, i64, FrameBody)> = Vec::new();
    for (p, desc) in page {
        let (groupby, metadata) = split_desc(metrics, &p.res_type, &p.tenant_id, desc);
        let parse = |v: &str| decimal::parse(v).unwrap_or(Decimal::ZERO);
        let point = PointBody {
            vol: Vol {
                unit: p.unit.clone(),
                qty: Num(parse(&p.qty)),
            },
            rating: Rating {
                price: Num(parse(&p.rating)),
            },
            groupby,
            metadata,
        };
        let frame = match frames.last_mut() {
            Some((b, e, f)) if *b == p.begin_ms && *e == p.end_ms => f,
            _ => {
                frames.push((
                    p.begin_ms,
                    p.end_ms,
                    FrameBody {
                        usage: Vec::new(),
                        period: PeriodBody {
                            begin: iso_utc(p.begin_ms),
                            end: iso_utc(p.end_ms),
                        },
                    },
                ));
                let Some((_, _, f)) = frames.last_mut() else {
                    continue;
                };
                f
            }
        };
        let list = match frame.usage.iter().position(|(t, _)| *t == p.res_type) {
            Some(i) => &mut frame.usage[i].1,
            None => {
                frame.usage.push((p.res_type.clone(), Vec::new()));
                let last = frame.usage.len() - 1;
                &mut frame.usage[last].1
            }
        };
        list.push(point);
    }
    let dataframes: Vec<FrameOut<'_>> = frames
        .iter()
        .map(|(_, _, f)| FrameOut {
            usage: UsageMap(&f.usage),
            period: &f.period,
        })
        .collect();
    ok(StatusCode::OK, &DataframesBody { total, dataframes })
}

/// A pushed dataframe's datapoint, checked.
fn pushed_point(
    v: &Value,
    path: &str,
    begin_ms: i64,
    end_ms: i64,
    res_type: &str,
) -> Result<db::PointRow, V2Fault> {
    let bad = |why: &str| V2Fault::bad(format!("Invalid data: {why} (path: '{path}')"));
    let Value::Object(o) = v else {
        return Err(bad("a datapoint must be a dictionary"));
    };
    if let Some(k) = o
        .keys()
        .find(|k| !["vol", "rating", "groupby", "metadata"].contains(&k.as_str()))
    {
        return Err(bad(&format!("extra keys not allowed: {k}")));
    }
    let vol = o
        .get("vol")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("required key not provided: vol"))?;
    let unit = vol
        .get("unit")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("required key not provided: vol.unit"))?;
    let qty = vol
        .get("qty")
        .ok_or_else(|| bad("required key not provided: vol.qty"))
        .and_then(|q| decimal::from_json(q).map_err(|e| bad(&format!("vol.qty: {e}"))))?;
    let price = o
        .get("rating")
        .and_then(Value::as_object)
        .and_then(|r| r.get("price"))
        .ok_or_else(|| bad("required key not provided: rating.price"))
        .and_then(|q| decimal::from_json(q).map_err(|e| bad(&format!("rating.price: {e}"))))?;
    let dict = |k: &str| -> Result<Map<String, Value>, V2Fault> {
        match o.get(k) {
            Some(Value::Object(m)) => Ok(m.clone()),
            _ => Err(bad(&format!("required key not provided: {k}"))),
        }
    };
    let groupby = dict("groupby")?;
    let metadata = dict("metadata")?;
    if unit.chars().count() > MAX_TEXT || res_type.chars().count() > MAX_TEXT {
        return Err(bad("unit and type are at most 255 characters"));
    }
    let tenant = match groupby.get(SCOPE_KEY) {
        Some(Value::String(t)) if !t.is_empty() && t.chars().count() <= MAX_TEXT => t.clone(),
        Some(Value::String(_)) | None => UNDEF_TENANT.to_string(),
        Some(_) => return Err(bad("groupby.project_id must be a string")),
    };
    let mut desc = metadata;
    for (k, v) in groupby {
        desc.insert(k, v);
    }
    Ok(db::PointRow {
        begin_ms,
        end_ms,
        tenant_id: tenant,
        res_type: res_type.to_string(),
        unit: unit.to_string(),
        qty: decimal::to_text(qty),
        rating: decimal::to_text(price),
        desc: Value::Object(desc).to_string(),
    })
}

async fn post_dataframes(ctx: &Ctx<'_>) -> Outcome {
    ctx.require_admin("dataframes:add")?;
    let body = ctx.body_object(&["dataframes"])?;
    let frames = match body.get("dataframes") {
        Some(Value::Array(a)) => a,
        Some(_) => {
            return Err(V2Fault::invalid(
                &ctx.body.to_string(),
                "expected a list",
                "'dataframes'",
            ));
        }
        None => {
            return Err(V2Fault::invalid(
                &ctx.body.to_string(),
                "required key not provided",
                "'dataframes'",
            ));
        }
    };
    if frames.is_empty() {
        return Err(V2Fault::bad("Parameter dataframes must not be empty."));
    }
    let mut points = Vec::new();
    for (i, frame) in frames.iter().enumerate() {
        let path = format!("dataframes[{i}]");
        let bad = |why: &str| V2Fault::bad(format!("Invalid data: {why} (path: '{path}')"));
        let Value::Object(f) = frame else {
            return Err(bad("a dataframe must be a dictionary"));
        };
        let period = f
            .get("period")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("required key not provided: period"))?;
        let time = |k: &str| -> Result<i64, V2Fault> {
            period
                .get(k)
                .and_then(Value::as_str)
                .and_then(parse_datetime)
                .ok_or_else(|| bad(&format!("period.{k} is not an ISO-8601 datetime")))
        };
        let (b, e) = (time("begin")?, time("end")?);
        if e <= b {
            return Err(bad("period.end must be after period.begin"));
        }
        let usage = f
            .get("usage")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("required key not provided: usage"))?;
        for (res_type, list) in usage {
            let Value::Array(list) = list else {
                return Err(bad(&format!("usage.{res_type} must be a list")));
            };
            for (j, p) in list.iter().enumerate() {
                points.push(pushed_point(
                    p,
                    &format!("{path}.usage.{res_type}[{j}]"),
                    b,
                    e,
                    res_type,
                )?);
                if points.len() > MAX_PUSHED_POINTS {
                    return Err(V2Fault::bad(format!(
                        "at most {MAX_PUSHED_POINTS} datapoints per request"
                    )));
                }
            }
        }
    }
    ctx.app
        .store
        .write(move |c| db::add_points(c, &points, store::now_ms()))
        .await
        .map_err(V2Fault::store)?;
    Ok(Answer::NoContent)
}

// ---------------------------------------------------------------------------------------------
// /v2/scope

/// A scope's state as upstream writes it.
#[derive(Serialize)]
struct ScopeBody {
    scope_id: String,
    scope_key: String,
    fetcher: String,
    collector: String,
    last_processed_timestamp: String,
    active: bool,
    scope_activation_toggle_date: Option<String>,
    /// The same time as `last_processed_timestamp`, under the key the `cloudkitty scope state
    /// get` command of python-cloudkittyclient shows (older servers' name).
    state: String,
}

#[derive(Serialize)]
struct ScopeList {
    results: Vec<ScopeBody>,
}

/// The period length and the start of the next period the loop rates (epoch ms).
async fn schedule(ctx: &Ctx<'_>) -> Result<(i64, i64), V2Fault> {
    let period_ms = (ctx.app.settings().config.rating.period_secs as i64).saturating_mul(1000);
    let stored = ctx
        .app
        .store
        .read(|c| db::state(c, db::NEXT_PERIOD))
        .await
        .map_err(V2Fault::store)?;
    let next = stored.unwrap_or_else(|| period_start(month_start(store::now_ms()), period_ms));
    Ok((period_ms, next))
}

/// Every scope with the time up to which it is rated.
async fn scope_states(ctx: &Ctx<'_>) -> Result<Vec<(db::ScopeRow, i64)>, V2Fault> {
    let (_, next) = schedule(ctx).await?;
    let (rows, pending) = ctx
        .app
        .store
        .read(|c| Ok((db::scopes(c)?, db::pending_reprocess_starts(c)?)))
        .await
        .map_err(V2Fault::store)?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let at = pending
                .iter()
                .find(|(s, _)| *s == r.scope_id)
                .map_or(next, |(_, p)| (*p).min(next));
            (r, at)
        })
        .collect())
}

fn scope_body((r, at): (db::ScopeRow, i64)) -> ScopeBody {
    ScopeBody {
        scope_id: r.scope_id,
        scope_key: r.scope_key,
        fetcher: r.fetcher,
        collector: r.collector,
        last_processed_timestamp: iso(at),
        active: r.active,
        scope_activation_toggle_date: r.toggled_ms.map(iso),
        state: iso(at),
    }
}

/// Whether a scope passes list filters (empty = any).
fn scope_matches(
    r: &db::ScopeRow,
    ids: &[String],
    keys: &[String],
    fetchers: &[String],
    collectors: &[String],
) -> bool {
    let pass = |list: &[String], v: &str| list.is_empty() || list.iter().any(|x| x == v);
    pass(ids, &r.scope_id)
        && pass(keys, &r.scope_key)
        && pass(fetchers, &r.fetcher)
        && pass(collectors, &r.collector)
}

async fn get_scopes(ctx: &Ctx<'_>) -> Outcome {
    ctx.require_admin("scope:get_state")?;
    let (offset, limit) = ctx.page()?;
    let (ids, keys, fetchers, collectors) = (
        ctx.multi("scope_id"),
        ctx.multi("scope_key"),
        ctx.multi("fetcher"),
        ctx.multi("collector"),
    );
    let mut active = Vec::new();
    for a in ctx.multi("active") {
        match a.parse::<i64>() {
            Ok(n) => active.push(n != 0),
            Err(_) => {
                return Err(V2Fault::invalid(
                    &ctx.query_text(),
                    "expected int",
                    "active",
                ));
            }
        }
    }
    let results: Vec<ScopeBody> = scope_states(ctx)
        .await?
        .into_iter()
        .filter(|(r, _)| scope_matches(r, &ids, &keys, &fetchers, &collectors))
        .filter(|(r, _)| active.is_empty() || active.contains(&r.active))
        .skip(usize::try_from(offset).unwrap_or(usize::MAX))
        .take(usize::try_from(limit).unwrap_or(usize::MAX))
        .map(scope_body)
        .collect();
    if results.is_empty() {
        return Err(V2Fault::nothing_found());
    }
    ok(StatusCode::OK, &ScopeList { results })
}

async fn reset_scopes(ctx: &Ctx<'_>) -> Outcome {
    ctx.require_admin("scope:reset_state")?;
    let body = ctx.body_object(&[
        "all_scopes",
        "scope_id",
        "scope_key",
        "fetcher",
        "collector",
        "last_processed_timestamp",
        // What python-cloudkittyclient sends for the timestamp.
        "state",
    ])?;
    let all = body_bool(&body, "all_scopes")?.unwrap_or(false);
    let ids = body_list(&body, "scope_id")?;
    if all && ids.is_some() {
        return Err(V2Fault::invalid(
            &ctx.body.to_string(),
            "two or more values in the same group of exclusion 'scope_selector'",
            "<scope_selector>",
        ));
    }
    if !all && ids.is_none() {
        return Err(V2Fault::bad(
            "Either all_scopes or a scope_id should be specified.",
        ));
    }
    let at = match body_time(&body, "last_processed_timestamp")? {
        Some(t) => t,
        None => body_time(&body, "state")?.ok_or_else(|| {
            V2Fault::bad("Variable 'last_processed_timestamp' cannot be empty/None.")
        })?,
    };
    let ids = ids.unwrap_or_default();
    let keys = body_list(&body, "scope_key")?.unwrap_or_default();
    let fetchers = body_list(&body, "fetcher")?.unwrap_or_default();
    let collectors = body_list(&body, "collector")?.unwrap_or_default();
    let chosen: Vec<(db::ScopeRow, i64)> = scope_states(ctx)
        .await?
        .into_iter()
        .filter(|(r, _)| scope_matches(r, &ids, &keys, &fetchers, &collectors))
        .collect();
    if chosen.is_empty() {
        return Err(V2Fault::nothing_found());
    }
    let (period_ms, next) = schedule(ctx).await?;
    let from = period_start(at, period_ms);
    if from > next {
        return Err(V2Fault::bad(format!(
            "Cannot move a scope's state forward to [{}]: vmmon rates every scope up to [{}] on \
             one schedule and never leaves periods unrated; a reset re-rates from an earlier time.",
            iso(at),
            iso(next)
        )));
    }
    check_retention(ctx, from)?;
    let scopes: Vec<String> = chosen
        .into_iter()
        .filter(|(_, rated_to)| from < *rated_to || from < next)
        .map(|(r, _)| r.scope_id)
        .collect();
    let reason = format!("scope state reset to {}", iso(at));
    if from < next {
        ctx.app
            .store
            .write(move |c| {
                let now = store::now_ms();
                for s in &scopes {
                    db::add_reprocess(c, s, &reason, from, next, now)?;
                }
                Ok(())
            })
            .await
            .map_err(V2Fault::store)?;
        crate::jobs::rating::spawn_drain(ctx.app.clone());
    }
    ok(StatusCode::ACCEPTED, &Empty {})
}

fn check_retention(ctx: &Ctx<'_>, from_ms: i64) -> Result<(), V2Fault> {
    let days = ctx.app.settings().config.raw_retention_days;
    crate::jobs::rating::check_retention(from_ms, store::now_ms(), days).map_err(V2Fault::bad)
}

async fn patch_scope(ctx: &Ctx<'_>) -> Outcome {
    ctx.require_admin("scope:patch_state")?;
    let body = ctx.body_object(&["scope_id", "scope_key", "fetcher", "collector", "active"])?;
    let id = match body_list(&body, "scope_id")? {
        Some(list) if list.len() == 1 => list[0].clone(),
        _ => {
            return Err(V2Fault::invalid(
                &ctx.body.to_string(),
                "required key not provided",
                "'scope_id'",
            ));
        }
    };
    let single = |k: &str| -> Result<Option<String>, V2Fault> {
        match body_list(&body, k)? {
            None => Ok(None),
            Some(l) if l.len() == 1 => Ok(Some(l[0].clone())),
            Some(_) => Err(V2Fault::invalid(
                &ctx.body.to_string(),
                "length of value must be 1",
                &format!("'{k}'"),
            )),
        }
    };
    let (key, fetcher, collector) = (
        single("scope_key")?,
        single("fetcher")?,
        single("collector")?,
    );
    let active = body_bool(&body, "active")?;
    let Some((mut row, at)) = scope_states(ctx)
        .await?
        .into_iter()
        .find(|(r, _)| r.scope_id == id)
    else {
        return Err(V2Fault::nothing_found());
    };
    let now = store::now_ms();
    if let Some(a) = active
        && a != row.active
    {
        row.active = a;
        row.toggled_ms = Some(now);
    }
    row.scope_key = key.unwrap_or(row.scope_key);
    row.fetcher = fetcher.unwrap_or(row.fetcher);
    row.collector = collector.unwrap_or(row.collector);
    let saved = row.clone();
    ctx.app
        .store
        .write(move |c| db::set_scope(c, &saved, now))
        .await
        .map_err(V2Fault::store)?;
    if row.toggled_ms.is_none() {
        row.toggled_ms = Some(now);
    }
    ok(StatusCode::OK, &scope_body((row, at)))
}

// ---------------------------------------------------------------------------------------------
// /v2/rating/modules

/// A module as v2 writes it (`hot_config` with an underscore, unlike v1's `hot-config`).
#[derive(Serialize)]
struct ModuleBody {
    module_id: &'static str,
    description: &'static str,
    enabled: bool,
    hot_config: bool,
    priority: i64,
}

#[derive(Serialize)]
struct ModuleList {
    modules: Vec<ModuleBody>,
}

fn module_body(s: &ModuleState) -> ModuleBody {
    ModuleBody {
        module_id: s.info.id,
        description: s.info.description,
        enabled: s.enabled,
        hot_config: s.info.hot_config,
        priority: s.priority,
    }
}

async fn module_states(ctx: &Ctx<'_>) -> Result<Vec<ModuleState>, V2Fault> {
    let rows = ctx
        .app
        .store
        .read(db::module_rows)
        .await
        .map_err(V2Fault::store)?;
    Ok(modules::states(&rows))
}

fn no_module(id: &str) -> V2Fault {
    V2Fault::not_found(format!("Module '{id}' not found"))
}

async fn list_modules(ctx: &Ctx<'_>) -> Outcome {
    ctx.require_admin("v2_rating:list_modules")?;
    let modules = module_states(ctx).await?.iter().map(module_body).collect();
    ok(StatusCode::OK, &ModuleList { modules })
}

async fn get_module(ctx: &Ctx<'_>, id: &str) -> Outcome {
    ctx.require_admin("v2_rating:get_module")?;
    match module_states(ctx).await?.iter().find(|s| s.info.id == id) {
        Some(s) => ok(StatusCode::OK, &module_body(s)),
        None => Err(no_module(id)),
    }
}

async fn put_module(ctx: &Ctx<'_>, id: &str) -> Outcome {
    ctx.require_admin("v2_rating:update_module")?;
    let body = ctx.body_object(&["enabled", "priority"])?;
    let Some(current) = module_states(ctx)
        .await?
        .into_iter()
        .find(|s| s.info.id == id)
    else {
        return Err(no_module(id));
    };
    let enabled = body_bool(&body, "enabled")?;
    let priority = match body.get("priority") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.as_i64().is_some_and(|p| p >= 1) => n.as_i64(),
        Some(_) => {
            return Err(V2Fault::invalid(
                &ctx.body.to_string(),
                "value must be at least 1",
                "'priority'",
            ));
        }
    };
    if current.info.id == modules::PYSCRIPTS && enabled == Some(true) {
        return Err(V2Fault::bad(
            "pyscripts cannot be enabled: vmmon never runs operator-supplied scripts",
        ));
    }
    if current.info.id != modules::NOOP {
        let mid = current.info.id;
        let (e, p) = (
            enabled.unwrap_or(current.enabled),
            priority.unwrap_or(current.priority),
        );
        ctx.app
            .store
            .write(move |c| db::set_module(c, mid, e, p))
            .await
            .map_err(V2Fault::store)?;
    }
    Ok(Answer::NoContent)
}

// ---------------------------------------------------------------------------------------------
// /v2/task/reprocesses

/// A reprocessing schedule as upstream writes it.
#[derive(Serialize)]
struct ReprocessBody {
    scope_id: String,
    reason: String,
    start_reprocess_time: String,
    end_reprocess_time: String,
    current_reprocess_time: String,
}

#[derive(Serialize)]
struct ReprocessList {
    results: Vec<ReprocessBody>,
}

async fn get_reprocesses(ctx: &Ctx<'_>, path_scope: Option<String>) -> Outcome {
    ctx.require_admin("schedule:get_task_reprocesses")?;
    let (offset, limit) = ctx.page()?;
    let order = ctx
        .single("order")
        .unwrap_or_else(|| "desc".into())
        .to_ascii_lowercase();
    if order != "asc" && order != "desc" {
        return Err(V2Fault::bad(format!(
            "The order [{order}] is not valid. Accepted values are ['asc', 'desc']."
        )));
    }
    let ids = match path_scope {
        Some(s) => vec![s],
        None => ctx.multi("scope_ids"),
    };
    let rows = ctx
        .app
        .store
        .read(move |c| db::reprocesses(c, &ids, order == "desc", offset, limit))
        .await
        .map_err(V2Fault::store)?;
    let results = rows
        .into_iter()
        .map(|r| ReprocessBody {
            scope_id: r.scope_id,
            reason: r.reason,
            start_reprocess_time: iso(r.start_ms),
            end_reprocess_time: iso(r.end_ms),
            current_reprocess_time: if r.current_ms > r.start_ms {
                iso(r.current_ms)
            } else {
                String::new()
            },
        })
        .collect();
    ok(StatusCode::OK, &ReprocessList { results })
}

/// Python's `str(datetime)` of an aware UTC time, as upstream's messages show times.
fn py_time(ms: i64) -> String {
    format!("{}+00:00", iso(ms).replace('T', " "))
}

async fn post_reprocess(ctx: &Ctx<'_>) -> Outcome {
    ctx.require_admin("schedule:task_reprocesses")?;
    let body = ctx.body_object(&[
        "scope_ids",
        "start_reprocess_time",
        "end_reprocess_time",
        "reason",
    ])?;
    let required = |k: &str| {
        V2Fault::invalid(
            &ctx.body.to_string(),
            "required key not provided",
            &format!("'{k}'"),
        )
    };
    let ids = body_list(&body, "scope_ids")?.ok_or_else(|| required("scope_ids"))?;
    let start = body_time(&body, "start_reprocess_time")?
        .ok_or_else(|| required("start_reprocess_time"))?;
    let end =
        body_time(&body, "end_reprocess_time")?.ok_or_else(|| required("end_reprocess_time"))?;
    let reason = match body.get("reason") {
        Some(Value::String(s)) => s.clone(),
        None | Some(Value::Null) => return Err(required("reason")),
        Some(_) => {
            return Err(V2Fault::invalid(
                &ctx.body.to_string(),
                "expected str",
                "'reason'",
            ));
        }
    };
    if ids.iter().any(|s| s == "ALL") && ids.len() != 1 {
        return Err(V2Fault::bad(format!(
            "Cannot use 'ALL' with scope ID [{ids:?}]. Either schedule a reprocessing for all \
             active scopes using 'ALL' option, or inform only the scopes you desire to schedule \
             a reprocessing."
        )));
    }
    if reason.trim().is_empty() {
        return Err(V2Fault::bad(
            "Empty or blank reason text is not allowed. Please, do inform/register the reason \
             for the reprocessing of a previously processed timestamp.",
        ));
    }
    if reason.chars().count() > 4 * MAX_TEXT {
        return Err(V2Fault::bad("the reason is at most 1020 characters"));
    }
    if end < start {
        return Err(V2Fault::bad(format!(
            "End reprocessing timestamp [{}] cannot be less than start reprocessing timestamp \
             [{}].",
            py_time(start),
            py_time(end)
        )));
    }
    let (period_ms, _) = schedule(ctx).await?;
    let (vs, mut ve) = (period_start(start, period_ms), period_start(end, period_ms));
    if vs != start || ve != end {
        if vs == ve {
            ve += period_ms;
        }
        return Err(V2Fault::bad(format!(
            "The provided reprocess time window does not comply with the configured collector \
             period. A valid time window near the provided one is ['{}', '{}']",
            py_time(vs),
            py_time(ve)
        )));
    }
    let all = ids == ["ALL"];
    let states = scope_states(ctx).await?;
    let chosen: Vec<(db::ScopeRow, i64)> = states
        .into_iter()
        .filter(|(r, _)| {
            if all {
                r.active
            } else {
                ids.contains(&r.scope_id)
            }
        })
        .collect();
    if !all {
        let unknown: Vec<&String> = ids
            .iter()
            .filter(|i| !chosen.iter().any(|(r, _)| r.scope_id == **i))
            .collect();
        if !unknown.is_empty() {
            return Err(V2Fault::bad(format!(
                "Scopes {unknown:?} scheduled to reprocess [start={}, end={}] do not exist.",
                py_time(start),
                py_time(end)
            )));
        }
    }
    for (r, rated_to) in &chosen {
        if start > *rated_to {
            return Err(V2Fault::bad(format!(
                "Cannot execute a reprocessing [start={}] for scope [{}] starting after the last \
                 possible timestamp [{}].",
                py_time(start),
                r.scope_id,
                py_time(*rated_to)
            )));
        }
        if end > *rated_to {
            return Err(V2Fault::bad(format!(
                "Cannot execute a reprocessing [end={}] for scope [{}] ending after the last \
                 possible timestamp [{}].",
                py_time(end),
                r.scope_id,
                py_time(*rated_to)
            )));
        }
    }
    check_retention(ctx, start)?;
    let scopes: Vec<String> = chosen.into_iter().map(|(r, _)| r.scope_id).collect();
    ctx.app
        .store
        .write(move |c| {
            for s in &scopes {
                if let Some(o) = db::overlapping_reprocess(c, s, start, end)? {
                    return Ok(Err(V2Fault::bad(format!(
                        "Cannot schedule a reprocessing for scope [{s}] for reprocessing time \
                         [{} - {}], because it already has a schedule for a similar time range \
                         [{} - {}].",
                        py_time(start),
                        py_time(end),
                        py_time(o.start_ms),
                        py_time(o.end_ms)
                    ))));
                }
            }
            let now = store::now_ms();
            for s in &scopes {
                if end > start {
                    db::add_reprocess(c, s, &reason, start, end, now)?;
                }
            }
            Ok(Ok(()))
        })
        .await
        .map_err(V2Fault::store)??;
    crate::jobs::rating::spawn_drain(ctx.app.clone());
    ok(StatusCode::ACCEPTED, &Empty {})
}
