//! `POST /wsgi_app.py`: the method-coded API of seed 001 (SPEC §3.1).
//!
//! Every answer is HTTP 200 with `{"status_code","message","method","session_id","message_id","data"}`;
//! every bad request answers `status_code` 3 with a message naming the problem and changes nothing.
//! A tenant user sees only its own project's instances: another project's id answers exactly like
//! an unknown one, so ids cannot be probed.

// A failed request is answered with the same `Reply` a successful one gets; it is built once per
// request, so its size on the error path does not matter.
#![allow(clippy::result_large_err)]

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Json, Response};
use chrono::TimeZone;
use serde::Serialize;
use serde_json::{Map, Value};
use vmmon_common::legacy::*;
use vmmon_common::vocab::{IntervalSecs, validate_instance_id};

use super::read_body;
use super::repr::{self, ObjectId};
use crate::app::App;
use crate::auth;
use crate::auth::guard::{PASSWORD_WAIT, ThrottleKey};
use crate::control::{self, Change};
use crate::hub::PushOutcome;
use crate::store::{self, InstanceRow, ProcessRow, SessionUser, VmRow};

/// Longest user name or password a login may send.
const MAX_CREDENTIAL_BYTES: usize = 1024;
/// Most instance ids one request may name.
const MAX_INSTANCES_PER_REQUEST: usize = 100;
/// Table tags in `_id`.
const TAG_VM: u8 = 0x01;
const TAG_PROC: u8 = 0x02;

/// A finished answer (before the method echo is added).
struct Reply {
    status_code: i64,
    message: String,
    session_id: String,
    data: Option<Records>,
}

impl Reply {
    fn fail(message: impl Into<String>) -> Reply {
        Reply {
            status_code: STATUS_FAILURE,
            message: message.into(),
            session_id: String::new(),
            data: None,
        }
    }
}

type Outcome = Result<Reply, Reply>;

/// Every answer of this API, successes and failures alike, with HTTP 200 (seed 001).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Envelope {
    /// 1 created/accepted, 2 confirmed, 3 failure, 4 timeout.
    pub status_code: i64,
    /// For a person; the seed's texts are quoted Python strings (`'success query …'`).
    pub message: String,
    /// The request's `method`, echoed (a numeric string as a number).
    pub method: Value,
    /// The new session (login) or the one the request sent.
    pub session_id: String,
    /// Always empty.
    pub message_id: &'static str,
    /// The records, or null.
    pub data: Option<Records>,
}

/// The `data` of a query answer: records as JSON objects, or as Python repr strings when the
/// request said `"legacy_repr": true`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Records {
    /// 611611 records.
    Vm(Vec<VmRecord>),
    /// 611711 / 611712 records.
    Proc(Vec<ProcRecord>),
    /// Either kind, as the old server's Python 2 repr strings.
    Repr(Vec<String>),
}

impl IntoResponse for Envelope {
    fn into_response(self) -> Response {
        Json(self).into_response()
    }
}

/// Handles one request.
pub async fn handle(State(app): State<Arc<App>>, req: Request) -> Envelope {
    let app = &*app;
    let client = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let body = match read_body(req.into_body(), app.settings().config.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => return envelope(Value::Null, Reply::fail(e.to_string())),
    };
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return envelope(
                Value::Null,
                Reply::fail(format!("malformed JSON body: {e}")),
            );
        }
    };
    let Value::Object(obj) = parsed else {
        return envelope(
            Value::Null,
            Reply::fail("request body must be a JSON object"),
        );
    };
    let method_echo = obj.get("method").cloned().unwrap_or(Value::Null);
    let reply = match dispatch(app, &obj, client).await {
        Ok(r) | Err(r) => r,
    };
    // Echo the session the caller sent unless the reply carries a new one.
    let reply = if reply.session_id.is_empty() {
        let sid = obj
            .get("session_id")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        Reply {
            session_id: sid,
            ..reply
        }
    } else {
        reply
    };
    envelope(method_echo, reply)
}

fn envelope(method: Value, reply: Reply) -> Envelope {
    let method = match &method {
        Value::String(s) => s.trim().parse::<i64>().map(Value::from).unwrap_or(method),
        _ => method,
    };
    Envelope {
        status_code: reply.status_code,
        message: reply.message,
        method,
        session_id: reply.session_id,
        message_id: "",
        data: reply.data,
    }
}

fn parse_method(obj: &Map<String, Value>) -> Result<i64, Reply> {
    match obj.get("method") {
        None | Some(Value::Null) => Err(Reply::fail(
            "missing \"method\": give a method code such as 458753",
        )),
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| Reply::fail(format!("\"method\" must be an integer code, got {n}"))),
        // The seed documents method as a String; accept a numeric string too.
        Some(Value::String(s)) => s
            .trim()
            .parse::<i64>()
            .map_err(|_| Reply::fail(format!("\"method\" must be an integer code, got {s:?}"))),
        Some(other) => Err(Reply::fail(format!(
            "\"method\" must be an integer code, got {other}"
        ))),
    }
}

async fn dispatch(app: &App, obj: &Map<String, Value>, client: Option<IpAddr>) -> Outcome {
    let method = parse_method(obj)?;
    let legacy_repr = match obj.get("legacy_repr") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(Reply::fail("\"legacy_repr\" must be true or false")),
    };
    let known = [
        METHOD_LOGIN,
        METHOD_VM_DATA,
        METHOD_PROC_DATA,
        METHOD_PROC_BY_NAME,
        METHOD_START_MONITOR,
        METHOD_STOP_MONITOR,
        METHOD_SET_INTERVAL,
        METHOD_LOGOUT,
    ];
    if !known.contains(&method) {
        return Err(Reply::fail(format!(
            "unknown method code {method}; known codes: 458753 login, 611611 getVMMonitoringData, \
             611711 getVMMonitoringProcData, 611712 getVMMonitoringProcByNameData, \
             32523 startmonitor, 32524 stopmonitor, 32525 setinterval, 458754 logout"
        )));
    }
    let data = match obj.get("data") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(Reply::fail("\"data\" must be a JSON object")),
    };
    if method == METHOD_LOGIN {
        return login(app, &data, client).await;
    }
    let user = session(app, obj).await?;
    if method == METHOD_LOGOUT {
        auth::end_session(&app.store, &user.session_id)
            .await
            .map_err(store_failure)?;
        return Ok(Reply {
            status_code: STATUS_SUCCESS,
            message: "'logged out'".into(),
            session_id: String::new(),
            data: None,
        });
    }
    let instances = resolve_instances(app, &user, &data).await?;
    match method {
        METHOD_VM_DATA => vm_data(app, obj, &instances, legacy_repr).await,
        METHOD_PROC_DATA => proc_data(app, obj, &instances, legacy_repr).await,
        METHOD_PROC_BY_NAME => proc_by_name(app, obj, &data, &instances, legacy_repr).await,
        METHOD_START_MONITOR => command(app, &instances, Change::Monitoring(true)).await,
        METHOD_STOP_MONITOR => command(app, &instances, Change::Monitoring(false)).await,
        _ => {
            if !user.is_admin {
                return Err(Reply::fail("setinterval (32525) needs an admin session"));
            }
            let secs = match data.get("interval_secs") {
                Some(Value::Number(n)) => n.as_u64().and_then(|s| IntervalSecs::new(s).ok()),
                _ => None,
            }
            .ok_or_else(|| {
                Reply::fail(format!(
                    "data.interval_secs must be an integer number of seconds within {}..={}",
                    vmmon_common::vocab::MIN_INTERVAL_SECS,
                    vmmon_common::vocab::MAX_INTERVAL_SECS
                ))
            })?;
            command(app, &instances, Change::Interval(secs)).await
        }
    }
}

fn store_failure(e: store::StoreError) -> Reply {
    tracing::error!(error = %e, "Legacy API store failure.");
    Reply::fail("internal error: the store is unavailable, try again")
}

async fn login(app: &App, data: &Map<String, Value>, client: Option<IpAddr>) -> Outcome {
    let (Some(Value::String(name)), Some(Value::String(password))) =
        (data.get("user_name"), data.get("password"))
    else {
        return Err(Reply::fail(
            "login needs data.user_name and data.password as strings",
        ));
    };
    if name.len() > MAX_CREDENTIAL_BYTES || password.len() > MAX_CREDENTIAL_BYTES {
        return Err(Reply::fail(format!(
            "user_name and password must be at most {MAX_CREDENTIAL_BYTES} bytes"
        )));
    }
    let mut keys = vec![ThrottleKey::User(name.clone())];
    keys.extend(client.map(ThrottleKey::Addr));
    app.logins
        .check(&keys, Instant::now())
        .map_err(|t| Reply::fail(format!("'{t}'")))?;
    let lookup = name.clone();
    let user = app
        .store
        .read(move |c| store::users::user_by_name(c, &lookup))
        .await
        .map_err(store_failure)?;
    // Verify against a dummy hash for unknown users so timing does not reveal which names exist.
    let (hash, user) = match user {
        Some(u) => (u.password_hash.clone(), Some(u)),
        None => (dummy_hash().to_string(), None),
    };
    let ok = app
        .passwords
        .verify(password, &hash, PASSWORD_WAIT)
        .await
        .map_err(|busy| Reply::fail(format!("'{busy}'")))?;
    let Some(user) = user.filter(|_| ok) else {
        app.logins.failed(&keys, Instant::now());
        // Debug-escaped: a name holding a newline cannot forge a log line.
        tracing::info!(user = ?name, client = ?client, "Login refused.");
        return Err(Reply::fail(
            "'authentication failed: wrong user name or password'",
        ));
    };
    app.logins.succeeded(&keys);
    let session_id = uuid::Uuid::new_v4().to_string();
    let sid = session_id.clone();
    app.store
        .write(move |c| store::users::create_session(c, &sid, user.id, store::now_ms()))
        .await
        .map_err(store_failure)?;
    Ok(Reply {
        status_code: STATUS_CREATED,
        message: "'User authenticated sucessfully...'".into(),
        session_id,
        data: None,
    })
}

/// An argon2id hash of a random password, so unknown users cost the same to refuse.
fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| auth::hash_password(&auth::generate_password()).unwrap_or_default())
}

/// The session's user, or a failure naming what is wrong with the session.
async fn session(app: &App, obj: &Map<String, Value>) -> Result<SessionUser, Reply> {
    let sid = match obj.get("session_id") {
        None | Some(Value::Null) => {
            return Err(Reply::fail(
                "missing session_id: log in first (method 458753)",
            ));
        }
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(_) => {
            return Err(Reply::fail(
                "session_id must be the string returned by login (method 458753)",
            ));
        }
    };
    auth::session_user(&app.store, app.settings().config.session_idle_ms(), &sid)
        .await
        .map_err(store_failure)?
        .ok_or_else(|| Reply::fail("session expired or unknown: log in again (method 458753)"))
}

async fn resolve_instances(
    app: &App,
    user: &SessionUser,
    data: &Map<String, Value>,
) -> Result<Vec<InstanceRow>, Reply> {
    let raw = match data.get("instance_id") {
        Some(Value::String(s)) => s.clone(),
        None | Some(Value::Null) => return Err(Reply::fail("missing data.instance_id")),
        Some(_) => {
            return Err(Reply::fail(
                "data.instance_id must be a string of ids separated by ';'",
            ));
        }
    };
    let mut seen = HashSet::new();
    let ids: Vec<String> = raw
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .filter(|s| seen.insert(s.to_string()))
        .map(str::to_string)
        .collect();
    if ids.is_empty() {
        return Err(Reply::fail("data.instance_id names no instance"));
    }
    if ids.len() > MAX_INSTANCES_PER_REQUEST {
        return Err(Reply::fail(format!(
            "data.instance_id names more than {MAX_INSTANCES_PER_REQUEST} instances"
        )));
    }
    for id in &ids {
        validate_instance_id(id).map_err(|e| Reply::fail(e.to_string()))?;
    }
    let lookup = ids.clone();
    let rows = app
        .store
        .read(move |c| {
            lookup
                .iter()
                .map(|id| store::instances::get(c, id))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(store_failure)?;
    let mut out = Vec::with_capacity(ids.len());
    for (id, row) in ids.iter().zip(rows) {
        match row {
            Some(row) if user.is_admin || user.project.as_deref() == Some(row.project.as_str()) => {
                out.push(row)
            }
            _ => return Err(Reply::fail(format!("unknown instance_id {id:?}"))),
        }
    }
    Ok(out)
}

fn limit(app: &App, obj: &Map<String, Value>, default: u32) -> Result<u32, Reply> {
    let n = match obj.get("limit") {
        None | Some(Value::Null) => return Ok(default.min(app.settings().config.max_limit)),
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
        Some(_) => None,
    };
    match n {
        Some(n) if n >= 1 => Ok(n.min(app.settings().config.max_limit as u64) as u32),
        _ => Err(Reply::fail("limit must be a positive integer")),
    }
}

fn create_date(app: &App, ms: i64) -> String {
    match app.settings().config.timezone.timestamp_millis_opt(ms) {
        chrono::LocalResult::Single(t) => t.format("%Y-%m-%dT%H:%M:%S%.6f").to_string(),
        _ => String::new(),
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// A 611611 record: one VM sample, the seed's fields in the seed's order, then vmmon's own.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VmRecord {
    /// Received, KB/s.
    pub net_incoming: f64,
    /// Written to physical disks, KB/s.
    pub disk_write: f64,
    /// (MemTotal − MemAvailable) / MemTotal, %.
    pub mem: f64,
    /// Sent, KB/s.
    pub net_outgoing: f64,
    /// Instance id.
    pub instance_id: String,
    /// Busy share of all CPUs, %.
    pub cpu_util: f64,
    /// Read from physical disks, KB/s.
    pub disk_read: f64,
    /// Sample time, local ISO-8601 with microseconds.
    pub create_date: String,
    /// Stable per record.
    #[serde(rename = "_id")]
    pub id: ObjectId,
    /// Processes.
    pub proc: i64,
    /// Cumulative received bytes (the agent's counter).
    pub rx_bytes: i64,
    /// Cumulative sent bytes (the agent's counter).
    pub tx_bytes: i64,
    /// Samples the agent had to drop, total.
    pub dropped_samples: i64,
    /// Of net_incoming, KB/s attributed to processes; null when not measured (process
    /// sampling off, no sock_diag, an older agent).
    pub net_attributed_in: Option<f64>,
    /// Of net_outgoing, KB/s attributed to processes; null when not measured.
    pub net_attributed_out: Option<f64>,
    /// Of net_incoming, KB/s not attributed; null when not measured.
    pub net_unattributed_in: Option<f64>,
    /// Of net_outgoing, KB/s not attributed; null when not measured.
    pub net_unattributed_out: Option<f64>,
    /// Share of all CPUs the hypervisor withheld (steal), %; `cpu_util` excludes it; null when
    /// the agent did not report it.
    pub cpu_steal: Option<f64>,
    /// Processes of this sample with a figure the agent could not read (those figures are null
    /// on their records); null while process sampling is off.
    pub unreadable_procs: Option<i64>,
}

/// A 611711/611712 record: one process in one sample, in the seed's field order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcRecord {
    /// The process's received traffic, KB/s.
    pub net_incoming: f64,
    /// Epoch seconds on an exited process's final record, else null.
    pub shutdown_time: Option<f64>,
    /// RSS / MemTotal, %.
    pub mem: f64,
    /// The process's sent traffic, KB/s.
    pub net_outgoing: f64,
    /// Process name.
    pub cmd: String,
    /// Pid.
    pub pid: i64,
    /// Instance id.
    pub instance_id: String,
    /// `/proc/PID/io` `write_bytes`, KB/s; null when the agent could not read it.
    pub disk_write: Option<f64>,
    /// `/proc/PID/io` `read_bytes`, KB/s; null when the agent could not read it.
    pub disk_read: Option<f64>,
    /// Sample time, local ISO-8601 with microseconds.
    pub create_date: String,
    /// Stable per record.
    #[serde(rename = "_id")]
    pub id: ObjectId,
    /// Share of the whole VM, %.
    pub cpu_util: f64,
    /// Start time, epoch seconds.
    pub running_time: f64,
}

fn vm_record(app: &App, r: &VmRow, dropped: i64) -> VmRecord {
    let attr = |i: usize| r.net_attribution.map(|a| round2(a[i]));
    VmRecord {
        net_incoming: round2(r.net_in),
        disk_write: round2(r.disk_write),
        mem: round2(r.mem_pct),
        net_outgoing: round2(r.net_out),
        instance_id: r.instance_id.clone(),
        cpu_util: round2(r.cpu_pct),
        disk_read: round2(r.disk_read),
        create_date: create_date(app, r.sampled_at_ms),
        id: ObjectId::new(r.sampled_at_ms / 1000, TAG_VM, r.id),
        proc: r.proc_count,
        rx_bytes: r.rx_bytes_total,
        tx_bytes: r.tx_bytes_total,
        dropped_samples: dropped,
        net_attributed_in: attr(0),
        net_attributed_out: attr(1),
        net_unattributed_in: attr(2),
        net_unattributed_out: attr(3),
        cpu_steal: r.cpu_steal_pct.map(round2),
        unreadable_procs: r.unreadable_procs,
    }
}

fn proc_record(app: &App, r: &ProcessRow) -> ProcRecord {
    ProcRecord {
        net_incoming: round2(r.net_in),
        shutdown_time: r.shutdown_time.map(round2),
        mem: round2(r.mem_pct),
        net_outgoing: round2(r.net_out),
        cmd: r.cmd.clone(),
        pid: r.pid,
        instance_id: r.instance_id.clone(),
        disk_write: (!r.disk_unreadable).then(|| round2(r.disk_write)),
        disk_read: (!r.disk_unreadable).then(|| round2(r.disk_read)),
        create_date: create_date(app, r.sampled_at_ms),
        id: ObjectId::new(r.sampled_at_ms / 1000, TAG_PROC, r.id),
        cpu_util: round2(r.cpu_pct),
        running_time: round2(r.start_time),
    }
}

/// `records` as JSON objects, or as repr strings.
fn records<T: Serialize>(
    records: Vec<T>,
    legacy_repr: bool,
    wrap: fn(Vec<T>) -> Records,
) -> Result<Records, Reply> {
    if !legacy_repr {
        return Ok(wrap(records));
    }
    records
        .iter()
        .map(repr::to_python_repr)
        .collect::<Result<Vec<_>, _>>()
        .map(Records::Repr)
        .map_err(|e| {
            tracing::error!(error = %e, "Cannot write a record as Python repr.");
            Reply::fail("internal error: cannot write the records as Python repr")
        })
}

fn success(message: &str, data: Records) -> Reply {
    Reply {
        status_code: STATUS_CREATED,
        message: message.into(),
        session_id: String::new(),
        data: Some(data),
    }
}

async fn vm_data(
    app: &App,
    obj: &Map<String, Value>,
    instances: &[InstanceRow],
    legacy_repr: bool,
) -> Outcome {
    let limit = limit(app, obj, 1)?;
    let rows = rows_per_instance(app, instances, limit, move |c, id, n| {
        store::samples::latest_vm(c, id, n)
    })
    .await?;
    let dropped: std::collections::HashMap<&str, i64> = instances
        .iter()
        .map(|i| (i.instance_id.as_str(), i.dropped_samples))
        .collect();
    let rows: Vec<(VmRow, i64)> = rows
        .into_iter()
        .map(|r| {
            let d = dropped.get(r.instance_id.as_str()).copied().unwrap_or(0);
            (r, d)
        })
        .collect();
    let recs = rows.iter().map(|(r, d)| vm_record(app, r, *d)).collect();
    Ok(success(
        "'success query vm information'",
        records(recs, legacy_repr, Records::Vm)?,
    ))
}

async fn proc_data(
    app: &App,
    obj: &Map<String, Value>,
    instances: &[InstanceRow],
    legacy_repr: bool,
) -> Outcome {
    // Without a limit: every process of the newest sample.
    let limit = limit(app, obj, u32::MAX)?;
    let rows = rows_per_instance(app, instances, limit, move |c, id, n| {
        store::samples::latest_processes(c, id, n)
    })
    .await?;
    let recs = rows.iter().map(|r| proc_record(app, r)).collect();
    Ok(success(
        "'success query proc information'",
        records(recs, legacy_repr, Records::Proc)?,
    ))
}

/// Runs `query` for each instance (at most `limit` rows each) on one read connection and
/// concatenates the rows, in the order the ids were given. One answer holds at most `max_limit`
/// records across all ids (the collector builds it in memory): asking for more fails with a
/// message saying so, before more than `max_limit + 1` rows are read.
async fn rows_per_instance<R, Q>(
    app: &App,
    instances: &[InstanceRow],
    limit: u32,
    query: Q,
) -> Result<Vec<R>, Reply>
where
    R: Send + 'static,
    Q: Fn(
            &crate::store::Connection,
            store::InstanceKey<'_>,
            u32,
        ) -> Result<Vec<R>, store::StoreError>
        + Send
        + 'static,
{
    let max = app.settings().config.max_limit as usize;
    let ids: Vec<(String, String)> = instances
        .iter()
        .map(|i| (i.instance_id.clone(), i.project.clone()))
        .collect();
    let rows = app
        .store
        .read(move |c| {
            let mut out = Vec::new();
            for (id, project) in &ids {
                let room = (max + 1).saturating_sub(out.len());
                if room == 0 {
                    break;
                }
                let n = limit.min(u32::try_from(room).unwrap_or(u32::MAX));
                let key = store::InstanceKey {
                    project,
                    instance_id: id,
                };
                out.extend(query(c, key, n)?);
            }
            Ok(out)
        })
        .await
        .map_err(store_failure)?;
    if rows.len() > max {
        return Err(Reply::fail(format!(
            "the answer would hold more than {max} records (max_limit) across the {} instance ids: \
             give a smaller limit or fewer ids",
            instances.len()
        )));
    }
    Ok(rows)
}

async fn proc_by_name(
    app: &App,
    obj: &Map<String, Value>,
    data: &Map<String, Value>,
    instances: &[InstanceRow],
    legacy_repr: bool,
) -> Outcome {
    // The seed sends proc_name at the top level; accept it inside data as well.
    let name = match obj.get("proc_name").or_else(|| data.get("proc_name")) {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        None | Some(Value::Null) => {
            return Err(Reply::fail(
                "missing proc_name (the process name to look up)",
            ));
        }
        Some(_) => return Err(Reply::fail("proc_name must be a non-empty string")),
    };
    if name.len() > 4096 {
        return Err(Reply::fail("proc_name is too long"));
    }
    let limit = limit(app, obj, 1)?;
    let rows = rows_per_instance(app, instances, limit, move |c, id, n| {
        store::samples::process_history(c, id, &name, n)
    })
    .await?;
    let recs = rows.iter().map(|r| proc_record(app, r)).collect();
    Ok(success(
        "'success query proc information'",
        records(recs, legacy_repr, Records::Proc)?,
    ))
}

async fn command(app: &App, instances: &[InstanceRow], change: Change) -> Outcome {
    // All ids were resolved and authorised before anything changes; now apply them concurrently so
    // one silent agent does not add its timeout to the others.
    let futures = instances
        .iter()
        .map(|i| control::apply(app, &i.instance_id, change));
    let outcomes = futures::future::join_all(futures).await;
    let mut parts = Vec::with_capacity(instances.len());
    let mut status = STATUS_SUCCESS;
    for (inst, outcome) in instances.iter().zip(outcomes) {
        let outcome = outcome.map_err(store_failure)?;
        let (code, text) = match outcome {
            Some(PushOutcome::Acked) => (STATUS_SUCCESS, "agent confirmed"),
            Some(PushOutcome::NotConnected) => (
                STATUS_CREATED,
                "queued: agent not connected, applied when it connects",
            ),
            Some(PushOutcome::TimedOut) => (
                STATUS_TIMEOUT,
                "agent connected but did not confirm in time; applied when it does",
            ),
            None => (STATUS_FAILURE, "instance vanished"),
        };
        // Worst outcome wins: failure > timeout > queued > confirmed.
        status = worst(status, code);
        parts.push(format!("{}: {text}", inst.instance_id));
    }
    let what = match change {
        Change::Monitoring(true) => "startmonitor".to_string(),
        Change::Monitoring(false) => "stopmonitor".to_string(),
        Change::Interval(s) => format!("setinterval {s}s"),
    };
    Ok(Reply {
        status_code: status,
        message: format!("'{what}: {}'", parts.join("; ")),
        session_id: String::new(),
        data: None,
    })
}

fn worst(a: i64, b: i64) -> i64 {
    let rank = |s: i64| match s {
        STATUS_FAILURE => 3,
        STATUS_TIMEOUT => 2,
        STATUS_CREATED => 1,
        _ => 0,
    };
    if rank(b) > rank(a) { b } else { a }
}
