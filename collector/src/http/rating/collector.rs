//! `/v1/collector/...`: the deprecated service-to-collector mappings and collector states. They
//! are kept in a small key-value store for clients that still call them and, as upstream since
//! 2018, change nothing in how usage is collected. All admin.

use axum::http::Method;
use serde::Serialize;
use serde_json::Value;

use super::{Ctx, Fault, Outcome, Reply};
use crate::store;

/// Longest service or collector name.
const MAX_NAME: usize = 255;

fn name(what: &str, v: Option<String>) -> Result<String, Fault> {
    let v = v.ok_or_else(|| Fault::bad(format!("Missing argument: \"{what}\"")))?;
    if v.is_empty() || v.chars().count() > MAX_NAME || v.chars().any(char::is_control) {
        return Err(Fault::invalid(
            what,
            &v,
            "Value should be 1-255 printable characters.",
        ));
    }
    Ok(v)
}

/// `{"service","collector"}`.
#[derive(Debug, Serialize)]
struct MappingBody<'a> {
    service: &'a str,
    collector: &'a str,
}

fn mapping<'a>(service: &'a str, collector: &'a str) -> MappingBody<'a> {
    MappingBody { service, collector }
}

/// `{"mappings":[…]}`.
#[derive(Debug, Serialize)]
struct MappingList<'a> {
    mappings: Vec<MappingBody<'a>>,
}

/// `{"name","enabled"}`.
#[derive(Debug, Serialize)]
struct StateBody<'a> {
    name: &'a str,
    enabled: bool,
}

/// Routes `/v1/collector/<rest>`.
pub async fn handle(ctx: &Ctx<'_>, rest: &[&str]) -> Outcome {
    let m = &ctx.method;
    match rest {
        [] if *m == Method::GET => Ok(Reply::NoContent),
        [] => Ok(Reply::BadMethod),
        ["mappings", path @ ..] if path.len() <= 2 => mappings(ctx, path).await,
        ["states"] => state(ctx, ctx.arg("name")).await,
        ["states", n] | [n, "states"] => state(ctx, Some((*n).to_string())).await,
        _ => Ok(Reply::NoRoute),
    }
}

async fn mappings(ctx: &Ctx<'_>, path: &[&str]) -> Outcome {
    let store = &ctx.app.store;
    let owned = |i: usize| path.get(i).map(|s| (*s).to_string());
    match (&ctx.method, path.len()) {
        (&Method::GET, 0) => {
            ctx.caller.require_admin("collector:list_mappings")?;
            let filter = ctx.arg("collector");
            let rows = store
                .read(move |c| store::rating::collector_mappings(c, filter.as_deref()))
                .await
                .map_err(Fault::store)?;
            let mappings = rows.iter().map(|(s, c)| mapping(s, c)).collect();
            Reply::ok(&MappingList { mappings })
        }
        (&Method::GET, 1) => {
            ctx.caller.require_admin("collector:get_mapping")?;
            let service = name("service", owned(0))?;
            let s = service.clone();
            match store
                .read(move |c| store::rating::collector_mapping(c, &s))
                .await
                .map_err(Fault::store)?
            {
                Some(collector) => Reply::ok(&mapping(&service, &collector)),
                None => Err(Fault::not_found(format!(
                    "No mapping for service: {service}"
                ))),
            }
        }
        (&Method::POST, _) => {
            ctx.caller.require_admin("collector:manage_mapping")?;
            let collector = name("collector", owned(0).or_else(|| ctx.arg("collector")))?;
            let service = name("service", owned(1).or_else(|| ctx.arg("service")))?;
            let (s, c) = (service.clone(), collector.clone());
            store
                .write(move |conn| store::rating::set_collector_mapping(conn, &s, &c))
                .await
                .map_err(Fault::store)?;
            Reply::ok(&mapping(&service, &collector))
        }
        (&Method::DELETE, 0 | 1) => {
            ctx.caller.require_admin("collector:manage_mapping")?;
            let service = name("service", owned(0).or_else(|| ctx.arg("service")))?;
            let s = service.clone();
            if store
                .write(move |c| store::rating::delete_collector_mapping(c, &s))
                .await
                .map_err(Fault::store)?
            {
                Ok(Reply::NoContent)
            } else {
                Err(Fault::not_found(format!(
                    "No mapping for service: {service}"
                )))
            }
        }
        (_, 0 | 1) => Ok(Reply::BadMethod),
        _ => Ok(Reply::NoRoute),
    }
}

async fn state(ctx: &Ctx<'_>, path_name: Option<String>) -> Outcome {
    let store = &ctx.app.store;
    match ctx.method {
        Method::GET => {
            ctx.caller.require_admin("collector:get_state")?;
            let n = name("name", path_name)?;
            let key = n.clone();
            let enabled = store
                .read(move |c| store::rating::collector_state(c, &key))
                .await
                .map_err(Fault::store)?
                .unwrap_or(false);
            Reply::ok(&StateBody { name: &n, enabled })
        }
        Method::PUT => {
            ctx.caller.require_admin("collector:update_state")?;
            let body = ctx.body_object("infos", &["name", "enabled"])?;
            let n = name(
                "name",
                path_name.or_else(|| body.get("name").and_then(Value::as_str).map(str::to_string)),
            )?;
            let enabled = match body.get("enabled") {
                Some(Value::Bool(b)) => *b,
                Some(Value::String(s)) => super::parse_bool(s)
                    .ok_or_else(|| Fault::invalid("enabled", s, "Value should be a boolean."))?,
                None | Some(Value::Null) => return Err(Fault::mandatory("enabled")),
                Some(other) => {
                    return Err(Fault::invalid(
                        "enabled",
                        &other.to_string(),
                        "Value should be a boolean.",
                    ));
                }
            };
            let key = n.clone();
            store
                .write(move |c| store::rating::set_collector_state(c, &key, enabled))
                .await
                .map_err(Fault::store)?;
            Reply::ok(&StateBody { name: &n, enabled })
        }
        _ => Ok(Reply::BadMethod),
    }
}
