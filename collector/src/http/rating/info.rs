//! `/v1/info/...`: the metrics config (open, no auth). `metrics` and `services` (deprecated) are
//! the same data, each under its plural and singular spelling.

use axum::http::Method;
use serde_json::{Value, json};

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
        Err(_) if rest == ["config"] => return Reply::ok(&json!({})),
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
            let list: Vec<Value> = metrics.metrics.iter().map(|m| m.info()).collect();
            Reply::ok(&json!({"metrics": list}))
        }
        [_, id] => match metrics.find(id) {
            Some(m) => Reply::ok(&m.info()),
            None => Err(Fault::not_found(*id)),
        },
        _ => Ok(Reply::NoRoute),
    }
}
