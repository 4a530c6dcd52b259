//! Method and status codes of the method-coded `wsgi_app.py` API (SPEC §3.1, seed 001).

/// `login`: `user_name` + `password` → `session_id`.
pub const METHOD_LOGIN: i64 = 458753;
/// `getVMMonitoringData`: newest VM records of each instance.
pub const METHOD_VM_DATA: i64 = 611611;
/// `getVMMonitoringProcData`: processes of the newest sample, busiest first.
pub const METHOD_PROC_DATA: i64 = 611711;
/// `getVMMonitoringProcByNameData`: one process name's history, newest first.
pub const METHOD_PROC_BY_NAME: i64 = 611712;
/// `startmonitor`: turn per-process sampling on.
pub const METHOD_START_MONITOR: i64 = 32523;
/// `stopmonitor`: turn per-process sampling off (vmmon's addition).
pub const METHOD_STOP_MONITOR: i64 = 32524;
/// `setinterval`: change an agent's sampling interval (vmmon's addition, admin only).
pub const METHOD_SET_INTERVAL: i64 = 32525;
/// `logout`: ends the request's session (vmmon's addition, next to login's 458753).
pub const METHOD_LOGOUT: i64 = 458754;

/// Created / accepted: a handled query, or a command queued for an agent that is not connected.
pub const STATUS_CREATED: i64 = 1;
/// Success confirmed: the agent acknowledged the command.
pub const STATUS_SUCCESS: i64 = 2;
/// Failure: bad session, bad input, unknown instance; the message says which.
pub const STATUS_FAILURE: i64 = 3;
/// Timeout: the agent is connected but did not answer in time.
pub const STATUS_TIMEOUT: i64 = 4;
