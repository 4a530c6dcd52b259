//! `/v1/info/...`: the metrics config (open, no auth). `metrics` and `services` (deprecated) are
//! the same data, each under its plural and singular spelling.

use axum::http::Method;
use serde::Serialize;
use serde_json::Map;

use crate::rating::metrics::MetricInfo;

/// `{"metrics":[…]}`.
#[derive(Debug, Serialize)]
struct MetricList<'a> {
    metrics: Vec<MetricInfo<'a>>,
}

use super::{Ctx, Fault, Outcome, Reply};

/// Routes `/v1/info/<rest>`.
pub fn handle(ctx: &Ctx<'_>, rest: &[&str]) -> Outcome {
    let known = matches!(
        rest,
        ["config"]
            | ["metrics" | "metric" | "services" | "service"]
            | ["metrics" | "metric" | "services" | "service", _]
    );
    if !known {
        return Ok(Reply::NoRoute);
    }
    if ctx.method != Method::GET {
        return Ok(Reply::BadMethod);
    }
    let settings = ctx.app.settings();
    let metrics = match &settings.rating.metrics {
        Ok(m) => m,
        Err(_) if rest == ["config"] => return Reply::ok(&Map::new()),
        Err(_) => {
            return Err(Fault {
                status: axum::http::StatusCode::METHOD_NOT_ALLOWED,
                message: "Invalid endpoint: no metrics in current configuration.".into(),
            });
        }
    };
    match rest {
        ["config"] => Reply::ok(&metrics.raw.clone()),
        [_] => {
            let metrics = metrics.metrics.iter().map(|m| m.info()).collect();
            Reply::ok(&MetricList { metrics })
        }
        [_, id] => match metrics.find(id) {
            Some(m) => Reply::ok(&m.info()),
            None => Err(Fault::not_found(*id)),
        },
        _ => Ok(Reply::NoRoute),
    }
}
