//! CDN flow (SPEC §3.4, seed 004): the signed `POST /api/flow` query's rules and the CDN user
//! name and domain rules, as pure functions. The HTTP glue is [`crate::http::cdn`], the SQL
//! [`crate::store::cdn`], the `cdn-user` actions [`crate::admin::cdn`], the checks on agents'
//! CDN deltas [`crate::ingest::checks`]; decisions are in `docs/cdn.md`.

use std::collections::{BTreeMap, HashSet};

use chrono::{NaiveDate, NaiveDateTime};
use chrono_tz::Tz;
use md5::{Digest, Md5};
use serde::Serialize;
use serde_json::Value;
use subtle::{Choice, ConstantTimeEq};
use vmmon_common::wire::{CDN_BUCKET_SECS, valid_cdn_domain};

/// Longest query span.
pub const MAX_SPAN_SECS: i64 = 31 * 86_400;
/// Bytes per MB in the answer (MiB, like the rest of vmmon's KB = 1024 bytes).
pub const BYTES_PER_MB: f64 = 1_048_576.0;
/// Longest user name.
pub const MAX_NAME_LEN: usize = 128;
/// Most domains one CDN user may own.
pub const MAX_DOMAINS_PER_USER: usize = 1_000;

/// The `status` of every answer: 0 success, one distinct code per error.
pub mod status {
    /// Success (`msg` "成功").
    pub const OK: i64 = 0;
    /// The body is not a JSON object / form, or a field has the wrong type or is given twice.
    pub const MALFORMED: i64 = 1001;
    /// `username`, `signature` or `start_time` is missing or empty.
    pub const MISSING_FIELD: i64 = 1002;
    /// No such CDN user (or revoked).
    pub const UNKNOWN_USER: i64 = 1003;
    /// The signature matches none of yesterday's, today's or tomorrow's.
    pub const BAD_SIGNATURE: i64 = 1004;
    /// `start_time` or `end_time` is not `yyyy-mm-dd hh:mi`.
    pub const BAD_TIME: i64 = 1005;
    /// `end_time` is before `start_time`.
    pub const END_BEFORE_START: i64 = 1006;
    /// More than 31 days between `start_time` and `end_time`.
    pub const SPAN_TOO_LONG: i64 = 1007;
    /// A requested domain is not one of the user's.
    pub const UNOWNED_DOMAIN: i64 = 1008;
    /// The body is larger than the collector's `max_body_bytes`.
    pub const TOO_LARGE: i64 = 1009;
    /// Not a POST.
    pub const METHOD_NOT_ALLOWED: i64 = 1010;
    /// The collector failed (store unavailable); try again.
    pub const INTERNAL: i64 = 1500;
}

/// A failed query: its non-zero `status` and `msg`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowError {
    /// One of [`status`].
    pub status: i64,
    /// What went wrong, for a person.
    pub msg: String,
}

impl FlowError {
    /// An error with `status` and `msg`.
    pub fn new(status: i64, msg: impl Into<String>) -> FlowError {
        FlowError {
            status,
            msg: msg.into(),
        }
    }

    /// The error's body: `{"status", "msg", "data": []}`.
    pub fn body(&self) -> FlowErrorBody<'_> {
        FlowErrorBody {
            status: self.status,
            msg: &self.msg,
            data: [],
        }
    }
}

/// The body of a [`FlowError`].
#[derive(Debug, Serialize)]
pub struct FlowErrorBody<'a> {
    /// Non-zero status.
    pub status: i64,
    /// Message.
    pub msg: &'a str,
    /// Always empty.
    pub data: [(); 0],
}

/// The request's fields.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FlowRequest {
    /// CDN user name.
    pub username: String,
    /// Lower-hex MD5 of `yyyymmdd + username + secret`.
    pub signature: String,
    /// Comma-separated domains; empty = the sum of all the user's domains.
    pub domain: String,
    /// `yyyy-mm-dd hh:mi`, collector-local time.
    pub start_time: String,
    /// Same format; None = now.
    pub end_time: Option<String>,
}

/// Where a field came from, for "given twice" messages.
type Fields = BTreeMap<String, Option<String>>;

fn put(fields: &mut Fields, key: &str, value: Option<String>) -> Result<(), FlowError> {
    if fields.insert(key.to_string(), value).is_some() {
        return Err(FlowError::new(
            status::MALFORMED,
            format!("malformed request: field {key} is given more than once"),
        ));
    }
    Ok(())
}

fn put_form(fields: &mut Fields, raw: &[u8]) -> Result<(), FlowError> {
    for (k, v) in url::form_urlencoded::parse(raw) {
        put(fields, &k, Some(v.into_owned()))?;
    }
    Ok(())
}

/// Builds the request from the query string and the body (JSON object or form-encoded, chosen by
/// `Content-Type`, else by whether the body starts with `{` or `[`). A field may come from either place,
/// not both; unknown fields are ignored; JSON values must be strings (`null` = absent).
pub fn parse_request(
    query: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<FlowRequest, FlowError> {
    let mut fields = Fields::new();
    put_form(&mut fields, query.as_bytes())?;
    let text = std::str::from_utf8(body)
        .map_err(|_| FlowError::new(status::MALFORMED, "malformed request: body is not UTF-8"))?;
    let trimmed = text.trim();
    if !trimmed.is_empty() {
        let ct = content_type.unwrap_or("").to_ascii_lowercase();
        let json = if ct.contains("json") {
            true
        } else if ct.contains("x-www-form-urlencoded") {
            false
        } else if ct.is_empty() || ct.starts_with("text/plain") {
            trimmed.starts_with(['{', '['])
        } else {
            return Err(FlowError::new(
                status::MALFORMED,
                format!(
                    "malformed request: Content-Type {ct:?} is not supported; send JSON or application/x-www-form-urlencoded"
                ),
            ));
        };
        if json {
            let value: Value = serde_json::from_str(trimmed).map_err(|e| {
                FlowError::new(
                    status::MALFORMED,
                    format!("malformed request: body is not valid JSON ({e})"),
                )
            })?;
            let Value::Object(map) = value else {
                return Err(FlowError::new(
                    status::MALFORMED,
                    "malformed request: the JSON body must be an object",
                ));
            };
            for (k, v) in map {
                let v = match v {
                    Value::String(s) => Some(s),
                    Value::Null => None,
                    _ if !is_known(&k) => continue,
                    other => {
                        return Err(FlowError::new(
                            status::MALFORMED,
                            format!(
                                "malformed request: {k} must be a string, got {}",
                                kind(&other)
                            ),
                        ));
                    }
                };
                put(&mut fields, &k, v)?;
            }
        } else {
            put_form(&mut fields, trimmed.as_bytes())?;
        }
    }
    let mut take = |k: &str| {
        fields
            .remove(k)
            .flatten()
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let mut missing = Vec::new();
    let mut required = |k: &'static str, v: Option<String>| {
        if v.is_none() {
            missing.push(k);
        }
        v.unwrap_or_default()
    };
    let username = required("username", take("username"));
    let signature = required("signature", take("signature"));
    let start_time = required("start_time", take("start_time"));
    let req = FlowRequest {
        username,
        signature,
        domain: take("domain").unwrap_or_default(),
        start_time,
        end_time: take("end_time"),
    };
    if !missing.is_empty() {
        return Err(FlowError::new(
            status::MISSING_FIELD,
            format!("missing required field(s): {}", missing.join(", ")),
        ));
    }
    Ok(req)
}

fn is_known(k: &str) -> bool {
    matches!(
        k,
        "username" | "signature" | "domain" | "start_time" | "end_time"
    )
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
        _ => "something else",
    }
}

/// Lower-hex MD5 of `yyyymmdd + username + secret`.
pub fn signature(date: NaiveDate, username: &str, secret: &str) -> String {
    let mut h = Md5::new();
    h.update(date.format("%Y%m%d").to_string().as_bytes());
    h.update(username.as_bytes());
    h.update(secret.as_bytes());
    hex::encode(h.finalize())
}

/// Whether `given` (hex, any case) is the signature of yesterday, `today` or tomorrow. All three
/// are compared in constant time, without stopping at the first match.
pub fn signature_ok(given: &str, username: &str, secret: &str, today: NaiveDate) -> bool {
    let given = given.trim().to_ascii_lowercase();
    let mut ok = Choice::from(0);
    for date in [today.pred_opt(), Some(today), today.succ_opt()]
        .into_iter()
        .flatten()
    {
        let want = signature(date, username, secret);
        ok |= want.as_bytes().ct_eq(given.as_bytes());
    }
    ok.into()
}

/// Parses `yyyy-mm-dd hh:mi` (also `hh:mi:ss`, and `T` for the space) as local time in `tz`;
/// epoch seconds.
pub fn parse_time(tz: Tz, s: &str) -> Option<i64> {
    let s = s.trim();
    let t = [
        "%Y-%m-%d %H:%M",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%dT%H:%M:%S",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())?;
    crate::bandwidth::local_to_utc_ms(tz, t).map(|ms| ms.div_euclid(1000))
}

fn floor_bucket(secs: i64) -> i64 {
    secs.div_euclid(CDN_BUCKET_SECS) * CDN_BUCKET_SECS
}

/// The buckets a query covers: starts from `first` to `last` inclusive, step 5 minutes; empty
/// when `last < first`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// First bucket start, epoch seconds.
    pub first: i64,
    /// Last bucket start, epoch seconds.
    pub last: i64,
}

impl Window {
    /// The bucket starts.
    pub fn starts(self) -> impl Iterator<Item = i64> {
        (self.first..=self.last).step_by(CDN_BUCKET_SECS as usize)
    }
}

/// The buckets overlapping `[start_time, end_time]` (end default now), never one starting after
/// now. Errors: bad time format, end before start, span above 31 days.
pub fn window(tz: Tz, start: &str, end: Option<&str>, now: i64) -> Result<Window, FlowError> {
    let bad = |field: &str, v: &str| {
        FlowError::new(
            status::BAD_TIME,
            format!(
                "{field} must be yyyy-mm-dd hh:mi (e.g. 2016-12-14 07:00), local time in {tz}; got {v:?}"
            ),
        )
    };
    let start_secs = parse_time(tz, start).ok_or_else(|| bad("start_time", start))?;
    let end_secs = match end {
        Some(e) => parse_time(tz, e).ok_or_else(|| bad("end_time", e))?,
        None => now,
    };
    if end_secs < start_secs {
        return Err(FlowError::new(
            status::END_BEFORE_START,
            "end_time is before start_time",
        ));
    }
    if end_secs - start_secs > MAX_SPAN_SECS {
        return Err(FlowError::new(
            status::SPAN_TOO_LONG,
            "start_time to end_time may span at most 31 days",
        ));
    }
    Ok(Window {
        first: floor_bucket(start_secs),
        last: floor_bucket(end_secs.min(now)),
    })
}

/// The domains asked for, lower-cased, in order, without repeats; empty = all the user's (one
/// summed entry). Every one must be the user's.
pub fn requested_domains(spec: &str, owned: &[String]) -> Result<Vec<String>, FlowError> {
    let mut seen = HashSet::new();
    let asked: Vec<String> = spec
        .split(',')
        .map(|d| d.trim().to_ascii_lowercase())
        .filter(|d| !d.is_empty())
        .filter(|d| seen.insert(d.clone()))
        .collect();
    let unowned: Vec<&str> = asked
        .iter()
        .filter(|d| !owned.contains(d))
        .map(String::as_str)
        .collect();
    if !unowned.is_empty() {
        return Err(FlowError::new(
            status::UNOWNED_DOMAIN,
            format!(
                "domain(s) not owned by this user: {}",
                unowned
                    .iter()
                    .map(|d| d.chars().take(MAX_NAME_LEN * 2).collect::<String>())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        ));
    }
    Ok(asked)
}

/// Bytes as MB (2^20 bytes), rounded to 6 decimals.
pub fn mb(bytes: i64) -> f64 {
    (bytes as f64 / BYTES_PER_MB * 1e6).round() / 1e6
}

/// One domain's flow: `{"domain", "data": [[ts, flow_MB, hit_flow_MB], …]}` (seed 004).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlowEntry {
    /// The domain, or `""` for the sum of all the user's domains.
    pub domain: String,
    /// Per 5-minute bucket: start (epoch seconds), bytes sent (MB), cache-hit bytes (MB).
    pub data: Vec<(i64, f64, f64)>,
}

/// The success answer: `{"status": 0, "msg": "成功", "data": [entries]}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlowAnswer {
    /// Always [`status::OK`].
    pub status: i64,
    /// Always "成功".
    pub msg: &'static str,
    /// One entry per domain asked for.
    pub data: Vec<FlowEntry>,
}

/// The entry of `domain`: every bucket of `w`, zero where nothing was recorded. `sums` maps
/// bucket start → (bytes, hit bytes).
pub fn entry(domain: &str, w: Window, sums: &BTreeMap<i64, (i64, i64)>) -> FlowEntry {
    let data = w
        .starts()
        .map(|ts| {
            let (b, h) = sums.get(&ts).copied().unwrap_or((0, 0));
            (ts, mb(b), mb(h))
        })
        .collect();
    FlowEntry {
        domain: domain.to_string(),
        data,
    }
}

/// The success answer.
pub fn answer(entries: Vec<FlowEntry>) -> FlowAnswer {
    FlowAnswer {
        status: status::OK,
        msg: "成功",
        data: entries,
    }
}

/// A CDN user name: 1–128 characters without spaces or control characters.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.chars().count() > MAX_NAME_LEN
        || name.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(format!(
            "CDN user name must be 1–{MAX_NAME_LEN} characters without spaces or control characters"
        ));
    }
    Ok(())
}

/// Parses `a.com,b.com` for `cdn-user add`: lower-cased, sorted, without repeats.
pub fn parse_domain_list(list: &str) -> Result<Vec<String>, String> {
    let mut domains: Vec<String> = list
        .split(',')
        .map(|d| d.trim().to_ascii_lowercase())
        .filter(|d| !d.is_empty())
        .collect();
    domains.sort();
    domains.dedup();
    if domains.is_empty() {
        return Err(
            "--domains needs at least one domain, e.g. --domains www.a.com,www.b.com".into(),
        );
    }
    if domains.len() > MAX_DOMAINS_PER_USER {
        return Err(format!(
            "at most {MAX_DOMAINS_PER_USER} domains per CDN user"
        ));
    }
    if let Some(bad) = domains.iter().find(|d| !valid_cdn_domain(d)) {
        return Err(format!(
            "{bad:?} is not a domain (letters, digits, '-', '.', '_'; no scheme or path)"
        ));
    }
    Ok(domains)
}

#[cfg(test)]
mod tests;
