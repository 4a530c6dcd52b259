//! `GET /api/series?instance_id=&metric=&start=&end=&points=`: one VM metric over a window,
//! downsampled by the store (min/avg/max per step), so 30 days of 1 s samples draw from at most
//! `points` points.
//!
//! * `instance_id` (required): an instance the session may see; another project's instance
//!   answers 404 like an unknown one.
//! * `metric` (required): `cpu`, `mem` (%), `disk_read`, `disk_write`, `net_in`, `net_out`
//!   (KB/s).
//! * `start`, `end`: epoch milliseconds, `[start, end)`; default the last hour up to now; at most
//!   [`MAX_SPAN_MS`].
//! * `points`: most steps in the answer, 1..=[`store::series::MAX_POINTS`], default
//!   [`DEFAULT_POINTS`].
//!
//! Auth is `X-Auth-Token` (a login session, as mana_api); errors are `{"msg", "code"}`.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Serialize;
use vmmon_common::vocab::validate_instance_id;

use super::{MsgError, answer, bad, internal, ms_param, query_map};
use crate::app::App;
use crate::store::{self, series::VmMetric};

/// The endpoint's path.
pub const SERIES_PATH: &str = "/api/series";
/// Steps in an answer when `points` is omitted.
pub const DEFAULT_POINTS: u32 = 500;
/// Longest window one request may cover, ms (a little over a year).
pub const MAX_SPAN_MS: i64 = 366 * 86_400_000;

/// The answer: the steps as columns (what chart libraries take), oldest first; a step without
/// samples is absent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Series {
    /// Instance id.
    pub instance_id: String,
    /// The metric's name.
    pub metric: &'static str,
    /// `%` or `KB/s`.
    pub unit: &'static str,
    /// Window start, epoch ms (inclusive): `start`, or the start of its minute when the figures
    /// come from the per-minute rollup.
    pub start_ms: i64,
    /// Window end, epoch ms (exclusive): `end`, or the end of its minute likewise.
    pub end_ms: i64,
    /// Step length, ms (whole minutes when read from the rollup).
    pub step_ms: i64,
    /// `samples` (raw samples, steps under a minute) or `minutes` (the per-minute rollup).
    pub resolution: &'static str,
    /// Step starts, epoch ms.
    pub t_ms: Vec<i64>,
    /// Smallest value per step.
    pub min: Vec<f64>,
    /// Mean per step.
    pub avg: Vec<f64>,
    /// Largest value per step.
    pub max: Vec<f64>,
    /// Samples per step.
    pub count: Vec<i64>,
}

/// Handles `GET /api/series`.
pub async fn handle(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    answer(series(&app, &headers, raw.as_deref()).await)
}

async fn series(app: &App, headers: &HeaderMap, raw: Option<&str>) -> Result<Series, MsgError> {
    let user = crate::http::mana::authenticate(app, headers).await?;
    let q = query_map(raw);
    let id = q
        .get("instance_id")
        .cloned()
        .ok_or_else(|| bad("missing instance_id"))?;
    validate_instance_id(&id).map_err(|e| bad(e.to_string()))?;
    let metric: VmMetric = q
        .get("metric")
        .ok_or_else(|| {
            bad("missing metric: give one of cpu, mem, disk_read, disk_write, net_in, net_out")
        })?
        .parse()
        .map_err(|e: store::series::UnknownMetric| bad(e.to_string()))?;
    let points = match q.get("points") {
        None => DEFAULT_POINTS,
        Some(v) => match v.parse::<u32>() {
            Ok(n) if (1..=store::series::MAX_POINTS).contains(&n) => n,
            _ => {
                return Err(bad(format!(
                    "points must be an integer from 1 to {}, got {v:?}",
                    store::series::MAX_POINTS
                )));
            }
        },
    };
    let now = store::now_ms();
    let end = ms_param(&q, "end")?.unwrap_or(now);
    let start = ms_param(&q, "start")?.unwrap_or(end - 3_600_000);
    if end <= start {
        return Err(bad("end must be later than start"));
    }
    if end - start > MAX_SPAN_MS {
        return Err(bad("the window may span at most 366 days"));
    }
    let lookup = id.clone();
    let project = (!user.is_admin).then(|| user.project.clone());
    let series = app
        .store
        .read(move |c| {
            let Some(row) = store::instances::get(c, &lookup)? else {
                return Ok(None);
            };
            if let Some(own) = &project
                && own.as_deref() != Some(row.project.as_str())
            {
                return Ok(None);
            }
            let key = store::InstanceKey {
                project: &row.project,
                instance_id: &row.instance_id,
            };
            store::series::vm_series(c, key, metric, start, end, points).map(Some)
        })
        .await
        .map_err(internal)?
        .ok_or_else(|| {
            MsgError::new(StatusCode::NOT_FOUND, format!("unknown instance_id {id:?}"))
        })?;
    let points_rows = &series.points;
    Ok(Series {
        instance_id: id,
        metric: metric.name(),
        unit: metric.unit(),
        start_ms: series.start_ms,
        end_ms: series.end_ms,
        step_ms: series.step_ms,
        resolution: series.resolution.name(),
        t_ms: points_rows.iter().map(|p| p.t_ms).collect(),
        min: points_rows.iter().map(|p| p.min).collect(),
        avg: points_rows.iter().map(|p| p.avg).collect(),
        max: points_rows.iter().map(|p| p.max).collect(),
        count: points_rows.iter().map(|p| p.count).collect(),
    })
}
