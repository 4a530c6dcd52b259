//! `GET /metrics`: the fleet and the collector itself in the Prometheus text exposition format
//! (0.0.4), or OpenMetrics 1.0 when the scraper asks for it (`Accept: application/openmetrics-text`).
//!
//! Access: an admin session (`X-Auth-Token`) or the scrape token (`metrics_token` in the config,
//! sent as `Authorization: Bearer …`); anything else answers 401/403 `{"msg","code"}`.
//!
//! Why hand-written: the per-VM figures are a snapshot read from the store at each scrape (one
//! index lookup per instance), not long-lived metric objects; the exposition is ~100 lines of
//! formatting, where a client library would add a registry to rebuild on every scrape.
//!
//! Names follow Prometheus conventions: base units (bytes, seconds, ratios 0–1), `_total` for
//! counters. Per VM (labels `instance_id`, `project`, `region`):
//! `vmmon_vm_up`, `vmmon_vm_cpu_usage_ratio`, `vmmon_vm_cpu_steal_ratio` (when the agent reports
//! steal), `vmmon_vm_memory_usage_ratio`, `vmmon_vm_disk_{read,written}_bytes_per_second`,
//! `vmmon_vm_network_{receive,transmit}_bytes_total` (the agents' exact cumulative counters),
//! `vmmon_vm_processes`, `vmmon_vm_dropped_samples_total`, `vmmon_vm_last_sample_timestamp_seconds`;
//! with `metrics_top_processes = N`, `vmmon_process_cpu_usage_ratio` of each VM's N busiest
//! processes (off by default: bounded cardinality).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::MsgError;
use crate::app::App;
use crate::store::{self, samples::FleetRow};
use crate::telemetry::HistogramSnapshot;

/// Path of the exposition.
pub const METRICS_PATH: &str = "/metrics";
/// Content type of the text format.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Content type of OpenMetrics.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Gauge,
    Counter,
    Histogram,
}

/// Writes one exposition in either format.
struct Exposition {
    out: String,
    open_metrics: bool,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

impl Exposition {
    /// Starts a family. Counters are named without `_total` here; samples add it.
    fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let (type_name, kind_text) = match kind {
            Kind::Gauge => (name.to_string(), "gauge"),
            Kind::Histogram => (name.to_string(), "histogram"),
            Kind::Counter if self.open_metrics => (name.to_string(), "counter"),
            Kind::Counter => (format!("{name}_total"), "counter"),
        };
        let _ = writeln!(self.out, "# HELP {type_name} {help}");
        let _ = writeln!(self.out, "# TYPE {type_name} {kind_text}");
        if self.open_metrics {
            for unit in ["seconds", "bytes", "ratio"] {
                if name.ends_with(&format!("_{unit}")) {
                    let _ = writeln!(self.out, "# UNIT {name} {unit}");
                }
            }
        }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", number(value));
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &HistogramSnapshot) {
        for (le, n) in &h.buckets {
            let le = number(*le);
            let mut l: Vec<(&str, &str)> = labels.to_vec();
            l.push(("le", &le));
            self.sample(&format!("{name}_bucket"), &l, *n as f64);
        }
        let mut l: Vec<(&str, &str)> = labels.to_vec();
        l.push(("le", "+Inf"));
        self.sample(&format!("{name}_bucket"), &l, h.count as f64);
        self.sample(&format!("{name}_sum"), labels, h.sum_secs);
        self.sample(&format!("{name}_count"), labels, h.count as f64);
    }
}

/// Who may scrape: the scrape token or an admin session.
async fn authorize(app: &App, headers: &HeaderMap) -> Result<(), MsgError> {
    let settings = app.settings();
    if let Some(expected) = &settings.config.metrics_token
        && let Some(given) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
    {
        if bool::from(given.trim().as_bytes().ct_eq(expected.as_bytes())) {
            return Ok(());
        }
        return Err(MsgError::new(
            StatusCode::UNAUTHORIZED,
            "the bearer token is not the collector's metrics_token",
        ));
    }
    let Some(sid) = headers.get("x-auth-token").and_then(|v| v.to_str().ok()) else {
        return Err(MsgError::new(
            StatusCode::UNAUTHORIZED,
            "send Authorization: Bearer <metrics_token> or X-Auth-Token of an admin session",
        ));
    };
    let user = crate::auth::session_user(
        &app.store,
        app.settings().config.session_idle_ms(),
        sid.trim(),
    )
    .await
    .map_err(|e| {
        tracing::error!(error = %e, "Metrics cannot check a session.");
        MsgError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the store is unavailable",
        )
    })?
    .ok_or_else(|| MsgError::new(StatusCode::UNAUTHORIZED, "session expired or unknown"))?;
    if user.is_admin {
        Ok(())
    } else {
        Err(MsgError::new(
            StatusCode::FORBIDDEN,
            "metrics show every tenant's VMs: an admin session or the metrics_token is needed",
        ))
    }
}

/// `GET /metrics`.
pub async fn handle(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&app, &headers).await {
        return e.into_response();
    }
    let open_metrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    let top = app.settings().config.metrics_top_processes;
    let snapshot = app
        .store
        .read(move |c| {
            let fleet = store::samples::fleet(c, None)?;
            let db_size = store::database_size(c)?;
            let mut procs = Vec::new();
            if top > 0 {
                for row in &fleet {
                    if let Some(vm) = &row.vm {
                        procs.push((
                            vm.instance_id.clone(),
                            store::samples::latest_processes(
                                c,
                                store::InstanceKey {
                                    project: &row.project,
                                    instance_id: &vm.instance_id,
                                },
                                top,
                            )?,
                        ));
                    }
                }
            }
            Ok((fleet, procs, db_size))
        })
        .await;
    let (fleet, procs, db_size) = match snapshot {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "Metrics cannot read the store.");
            return MsgError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the store is unavailable",
            )
            .into_response();
        }
    };
    let size = db_size.unwrap_or_else(|| store_size_bytes(&app));
    let body = render(&app, &fleet, &procs, size, store::now_ms(), open_metrics);
    let content_type = if open_metrics {
        OPENMETRICS_CONTENT_TYPE
    } else {
        TEXT_CONTENT_TYPE
    };
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response()
}

/// The exposition for a fleet snapshot taken at `now_ms`.
fn render(
    app: &App,
    fleet: &[FleetRow],
    procs: &[(String, Vec<store::ProcessRow>)],
    store_size: u64,
    now_ms: i64,
    open_metrics: bool,
) -> String {
    let mut e = Exposition {
        out: String::with_capacity(256 + fleet.len() * 1200),
        open_metrics,
    };
    let with_vm: Vec<(&FleetRow, &store::VmRow)> = fleet
        .iter()
        .filter_map(|r| r.vm.as_ref().map(|vm| (r, vm)))
        .collect();
    let labels = |r: &FleetRow, vm: &store::VmRow| -> [(&'static str, String); 3] {
        [
            ("instance_id", vm.instance_id.clone()),
            ("project", r.project.clone()),
            ("region", r.region.clone()),
        ]
    };
    type Figure = fn(&FleetRow, &store::VmRow, i64) -> f64;
    let vm_families: [(&str, Kind, &str, Figure); 10] = [
        (
            "vmmon_vm_up",
            Kind::Gauge,
            "1 while the VM's agent reports (ACTIVE), 0 after 3 silent intervals (SHUTOFF).",
            |r, _, now| {
                let interval_ms = i64::from(r.interval_secs.max(1)) * 1000;
                f64::from(u8::from(now - r.last_seen_ms <= 3 * interval_ms))
            },
        ),
        (
            "vmmon_vm_cpu_usage_ratio",
            Kind::Gauge,
            "Share of all the VM's CPUs the guest ran, 0-1 (611611 cpu_util / 100).",
            |_, vm, _| vm.cpu_pct / 100.0,
        ),
        (
            "vmmon_vm_memory_usage_ratio",
            Kind::Gauge,
            "(MemTotal - MemAvailable) / MemTotal, 0-1 (611611 mem / 100).",
            |_, vm, _| vm.mem_pct / 100.0,
        ),
        (
            "vmmon_vm_disk_read_bytes_per_second",
            Kind::Gauge,
            "Read from physical disks, bytes/s.",
            |_, vm, _| vm.disk_read * 1024.0,
        ),
        (
            "vmmon_vm_disk_written_bytes_per_second",
            Kind::Gauge,
            "Written to physical disks, bytes/s.",
            |_, vm, _| vm.disk_write * 1024.0,
        ),
        (
            "vmmon_vm_network_receive_bytes",
            Kind::Counter,
            "Bytes received on the VM's own NICs (the agent's cumulative counter, 611611 rx_bytes).",
            |_, vm, _| vm.rx_bytes_total as f64,
        ),
        (
            "vmmon_vm_network_transmit_bytes",
            Kind::Counter,
            "Bytes sent on the VM's own NICs (611611 tx_bytes).",
            |_, vm, _| vm.tx_bytes_total as f64,
        ),
        (
            "vmmon_vm_processes",
            Kind::Gauge,
            "Processes in the VM.",
            |_, vm, _| vm.proc_count as f64,
        ),
        (
            "vmmon_vm_dropped_samples",
            Kind::Counter,
            "Samples the agent had to drop (spool full).",
            |r, _, _| r.dropped_samples as f64,
        ),
        (
            "vmmon_vm_last_sample_timestamp_seconds",
            Kind::Gauge,
            "Time of the VM's newest sample, epoch seconds.",
            |_, vm, _| vm.sampled_at_ms as f64 / 1000.0,
        ),
    ];
    for (name, kind, help, figure) in vm_families {
        e.family(name, kind, help);
        let sample_name = if kind == Kind::Counter {
            format!("{name}_total")
        } else {
            name.to_string()
        };
        for (r, vm) in &with_vm {
            let l = labels(r, vm);
            let l: Vec<(&str, &str)> = l.iter().map(|(k, v)| (*k, v.as_str())).collect();
            e.sample(&sample_name, &l, figure(r, vm, now_ms));
        }
    }
    // Steal only for VMs whose agent reports it (no sample rather than a false 0).
    e.family(
        "vmmon_vm_cpu_steal_ratio",
        Kind::Gauge,
        "Share of all the VM's CPUs the hypervisor withheld (steal), 0-1 (611611 cpu_steal / 100).",
    );
    for (r, vm) in &with_vm {
        if let Some(steal) = vm.cpu_steal_pct {
            let l = labels(r, vm);
            let l: Vec<(&str, &str)> = l.iter().map(|(k, v)| (*k, v.as_str())).collect();
            e.sample("vmmon_vm_cpu_steal_ratio", &l, steal / 100.0);
        }
    }
    if !procs.is_empty() {
        e.family(
            "vmmon_process_cpu_usage_ratio",
            Kind::Gauge,
            "Share of the whole VM's CPU of each VM's busiest processes (metrics_top_processes).",
        );
        for (instance_id, rows) in procs {
            for p in rows {
                let pid = p.pid.to_string();
                e.sample(
                    "vmmon_process_cpu_usage_ratio",
                    &[("instance_id", instance_id), ("pid", &pid), ("cmd", &p.cmd)],
                    p.cpu_pct / 100.0,
                );
            }
        }
    }

    let t = &app.telemetry;
    let gauge = |e: &mut Exposition, name: &str, help: &str, v: f64| {
        e.family(name, Kind::Gauge, help);
        e.sample(name, &[], v);
    };
    let counter = |e: &mut Exposition, name: &str, help: &str, v: u64| {
        e.family(name, Kind::Counter, help);
        e.sample(&format!("{name}_total"), &[], v as f64);
    };
    gauge(
        &mut e,
        "vmmon_collector_agents_connected",
        "Agents holding a command subscription now.",
        app.hub.connected_agents() as f64,
    );
    gauge(
        &mut e,
        "vmmon_collector_instances",
        "Registered instances.",
        fleet.len() as f64,
    );
    counter(
        &mut e,
        "vmmon_collector_ingested_batches",
        "Agent batches stored (resends not counted).",
        t.ingested_batches.load(Ordering::Relaxed),
    );
    counter(
        &mut e,
        "vmmon_collector_ingested_samples",
        "VM samples stored.",
        t.ingested_samples.load(Ordering::Relaxed),
    );
    counter(
        &mut e,
        "vmmon_collector_ingested_process_rows",
        "Process rows stored.",
        t.ingested_process_rows.load(Ordering::Relaxed),
    );
    counter(
        &mut e,
        "vmmon_collector_rating_periods_processed",
        "Rating periods processed by the loop.",
        t.rating_periods.load(Ordering::Relaxed),
    );
    gauge(
        &mut e,
        "vmmon_collector_store_size_bytes",
        "Size of the store: the SQLite files (database and WAL), or the PostgreSQL database.",
        store_size as f64,
    );
    e.family(
        "vmmon_collector_store_write_duration_seconds",
        Kind::Histogram,
        "From handing an agent batch to the store writer to its commit.",
    );
    e.histogram(
        "vmmon_collector_store_write_duration_seconds",
        &[],
        &t.store_write.snapshot(),
    );
    e.family(
        "vmmon_collector_anomalies",
        Kind::Counter,
        "Inputs the collector refused or corrected, by kind.",
    );
    for (kind, n) in t.anomalies() {
        e.sample(
            "vmmon_collector_anomalies_total",
            &[("kind", kind.label())],
            n as f64,
        );
    }
    e.family(
        "vmmon_collector_http_requests",
        Kind::Counter,
        "HTTP answers by route and status.",
    );
    for ((route, status), n) in t.http_requests() {
        let status = status.to_string();
        e.sample(
            "vmmon_collector_http_requests_total",
            &[("route", &route), ("status", &status)],
            n as f64,
        );
    }
    e.family(
        "vmmon_collector_http_request_duration_seconds",
        Kind::Histogram,
        "HTTP answer latency by route.",
    );
    for (route, h) in t.http_latency() {
        e.histogram(
            "vmmon_collector_http_request_duration_seconds",
            &[("route", &route)],
            &h,
        );
    }
    if open_metrics {
        e.out.push_str("# EOF\n");
    }
    e.out
}

/// The SQLite store's files (0 on PostgreSQL, whose size comes from the database).
fn store_size_bytes(app: &App) -> u64 {
    let Some(path) = app.store.path() else {
        return 0;
    };
    let mut total = 0;
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        total += std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
    }
    total
}
