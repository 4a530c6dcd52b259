//! `/v1/rating/...` (alias `/v1/billing/...`): rating modules, quote, reload, and the modules'
//! own config APIs under `module_config/<module>`.

use axum::http::{Method, StatusCode};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::{Map, Value};

use super::{Ctx, Fault, Outcome, Reply};
use crate::rating::modules::{self, ModuleState};
use crate::rating::{DataPoint, Usage, decimal};
use crate::store;

/// Most resources one quote may describe.
const MAX_QUOTE_RESOURCES: usize = 10_000;

/// A module as v1 writes it (`hot-config` with a hyphen, as upstream's WSME type).
#[derive(Debug, Serialize)]
struct ModuleBody {
    module_id: &'static str,
    description: &'static str,
    enabled: bool,
    #[serde(rename = "hot-config")]
    hot_config: bool,
    priority: i64,
}

/// `{"modules":[…]}`.
#[derive(Debug, Serialize)]
struct ModuleList {
    modules: Vec<ModuleBody>,
}

fn module_json(s: &ModuleState) -> ModuleBody {
    ModuleBody {
        module_id: s.info.id,
        description: s.info.description,
        enabled: s.enabled,
        hot_config: s.info.hot_config,
        priority: s.priority,
    }
}

/// The quote: a JSON number written from the exact decimal text, with upstream's `.0` on an
/// integral total (upstream declares it a float; clients call `float()` on it).
struct QuoteNumber(String);

impl Serialize for QuoteNumber {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let text = if self.0.contains(['.', 'e', 'E']) {
            self.0.clone()
        } else {
            format!("{}.0", self.0)
        };
        serde_json::value::RawValue::from_string(text)
            .map_err(serde::ser::Error::custom)?
            .serialize(s)
    }
}

async fn states(ctx: &Ctx<'_>) -> Result<Vec<ModuleState>, Fault> {
    let rows = ctx
        .app
        .store
        .read(store::rating::module_rows)
        .await
        .map_err(Fault::store)?;
    Ok(modules::states(&rows))
}

/// Routes `/v1/rating/<rest>`.
pub async fn handle(ctx: &Ctx<'_>, rest: &[&str]) -> Outcome {
    match rest {
        ["modules"] => match ctx.method {
            Method::GET => {
                ctx.caller.require_admin("rating:list_modules")?;
                let modules = states(ctx).await?.iter().map(module_json).collect();
                Reply::ok(&ModuleList { modules })
            }
            Method::PUT => update(ctx, ctx.arg("module_id")).await,
            _ => Ok(Reply::BadMethod),
        },
        ["modules", id] => match ctx.method {
            Method::GET => {
                ctx.caller.require_admin("rating:get_module")?;
                match states(ctx).await?.iter().find(|s| s.info.id == *id) {
                    Some(s) => Reply::ok(&module_json(s)),
                    None => Err(Fault::not_found("Module not found.")),
                }
            }
            Method::PUT => update(ctx, Some((*id).to_string())).await,
            _ => Ok(Reply::BadMethod),
        },
        ["quote"] => match ctx.method {
            Method::POST => quote(ctx).await,
            _ => Ok(Reply::BadMethod),
        },
        ["reload_modules"] => match ctx.method {
            Method::GET => {
                // Module states and rules are read afresh for every period and quote.
                ctx.caller.require_admin("rating:module_config")?;
                Ok(Reply::NoContent)
            }
            _ => Ok(Reply::BadMethod),
        },
        ["module_config", module, sub @ ..] => {
            ctx.caller.require_admin("rating:module_config")?;
            match modules::find(module) {
                Some(m) if m.id == modules::HASHMAP => super::hashmap::handle(ctx, sub).await,
                Some(m) if m.id == modules::PYSCRIPTS => Err(Fault::conflict(
                    "Module is not configurable: vmmon never runs operator-supplied scripts",
                )),
                Some(_) => Err(Fault::conflict("Module is not configurable")),
                None => Err(Fault::not_found("Module not found.")),
            }
        }
        _ => Ok(Reply::NoRoute),
    }
}

async fn update(ctx: &Ctx<'_>, path_id: Option<String>) -> Outcome {
    ctx.caller.require_admin("rating:update_module")?;
    let body = ctx.body_object(
        "module",
        &[
            "module_id",
            "description",
            "enabled",
            "hot-config",
            "hot_config",
            "priority",
        ],
    )?;
    let body_id = match body.get("module_id") {
        Some(Value::String(s)) => s.clone(),
        None | Some(Value::Null) => return Err(Fault::mandatory("module_id")),
        Some(other) => {
            return Err(Fault::invalid(
                "module_id",
                &other.to_string(),
                "Value should be a string.",
            ));
        }
    };
    let id = path_id.unwrap_or(body_id);
    let Some(info) = modules::find(&id) else {
        return Err(Fault::not_found("Module not found."));
    };
    let current = states(ctx)
        .await?
        .into_iter()
        .find(|s| s.info.id == info.id)
        .ok_or_else(|| Fault::not_found("Module not found."))?;
    let enabled = match body.get("enabled") {
        None | Some(Value::Null) => current.enabled,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(Fault::invalid(
                "enabled",
                &other.to_string(),
                "Value should be a boolean.",
            ));
        }
    };
    let priority = match body.get("priority") {
        None | Some(Value::Null) => current.priority,
        Some(Value::Number(n)) if n.as_i64().is_some() => n.as_i64().unwrap_or(1),
        Some(other) => {
            return Err(Fault::invalid(
                "priority",
                &other.to_string(),
                "Value should be an integer.",
            ));
        }
    };
    if info.id == modules::PYSCRIPTS && enabled {
        return Err(Fault::bad(
            "pyscripts cannot be enabled: vmmon never runs operator-supplied scripts",
        ));
    }
    if info.id != modules::NOOP {
        let mid = info.id;
        ctx.app
            .store
            .write(move |c| store::rating::set_module(c, mid, enabled, priority))
            .await
            .map_err(Fault::store)?;
    }
    Ok(Reply::Found(format!("{}{}", ctx.origin, ctx.path)))
}

/// A quote resource's description: `groupby`/`metadata` when they are objects (upstream's format
/// since 2021), otherwise the whole flat description (what the Horizon dashboard sends) as
/// metadata. Lists are refused.
/// A description split into (groupby, metadata).
type Described = (Map<String, Value>, Map<String, Value>);

fn describe(desc: &Map<String, Value>) -> Result<Described, Fault> {
    for (k, v) in desc {
        if v.is_array() {
            return Err(Fault::invalid(
                "desc",
                k,
                "Description values may be text, numbers or objects, not lists.",
            ));
        }
    }
    let nested = |k: &str| match desc.get(k) {
        Some(Value::Object(m)) => Some(m.clone()),
        _ => None,
    };
    match (nested("groupby"), nested("metadata")) {
        (None, None) => Ok((Map::new(), desc.clone())),
        (g, m) => Ok((g.unwrap_or_default(), m.unwrap_or_default())),
    }
}

async fn quote(ctx: &Ctx<'_>) -> Outcome {
    // Upstream CloudKitty requires a token for a quote too; an anonymous quote would let anyone
    // spend the collector's CPU.
    ctx.caller
        .require_reader("rating:quote", ctx.caller.project())?;
    let list = match &ctx.body {
        Value::Object(o) => {
            if let Some(k) = o.keys().find(|k| *k != "resources") {
                return Err(Fault::bad(format!(
                    "Unknown attribute for argument res_data: {k}"
                )));
            }
            match o.get("resources") {
                Some(Value::Array(a)) => a.clone(),
                None | Some(Value::Null) => return Err(Fault::mandatory("resources")),
                Some(_) => return Err(Fault::bad("resources must be a list of resources")),
            }
        }
        Value::Array(a) => a.clone(),
        Value::Null => return Err(Fault::mandatory("resources")),
        _ => return Err(Fault::bad("the body must be {\"resources\": [...]}")),
    };
    if list.len() > MAX_QUOTE_RESOURCES {
        return Err(Fault::bad(format!(
            "a quote takes at most {MAX_QUOTE_RESOURCES} resources"
        )));
    }
    let mut usage: Usage = Vec::new();
    let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for r in &list {
        let Value::Object(r) = r else {
            return Err(Fault::bad("each resource must be a JSON object"));
        };
        if let Some(k) = r
            .keys()
            .find(|k| !["service", "volume", "desc"].contains(&k.as_str()))
        {
            return Err(Fault::bad(format!(
                "Unknown attribute for argument res_data: {k}"
            )));
        }
        let service = match r.get("service") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            None | Some(Value::Null) => return Err(Fault::mandatory("service")),
            Some(other) => {
                return Err(Fault::invalid(
                    "service",
                    &other.to_string(),
                    "Value should be a non-empty string.",
                ));
            }
        };
        let qty = match r.get("volume") {
            None | Some(Value::Null) => return Err(Fault::mandatory("volume")),
            Some(v) => decimal::from_json(v)
                .map_err(|e| Fault::invalid("volume", &decimal::python_str(v), &e))?,
        };
        let (groupby, metadata) = match r.get("desc") {
            None | Some(Value::Null) => (Map::new(), Map::new()),
            Some(Value::Object(d)) => describe(d)?,
            Some(other) => {
                return Err(Fault::invalid(
                    "desc",
                    &other.to_string(),
                    "Value should be an object.",
                ));
            }
        };
        let point = DataPoint {
            unit: "undef".into(),
            qty,
            price: Decimal::ZERO,
            groupby,
            metadata,
        };
        match index.get(&service) {
            Some(&i) => usage[i].1.push(point),
            None => {
                index.insert(service.clone(), usage.len());
                usage.push((service, vec![point]));
            }
        }
    }
    let (rows, rules) = ctx
        .app
        .store
        .read(|c| {
            Ok((
                store::rating::module_rows(c)?,
                store::rating::hashmap_rules(c)?,
            ))
        })
        .await
        .map_err(Fault::store)?;
    // Pricing is CPU work: off the async workers, bounded (see `App::run_cpu`).
    let usage = ctx
        .app
        .run_cpu(move || {
            let order = modules::run_order(&modules::states(&rows));
            let rules = rules.at(crate::store::now_ms());
            crate::rating::rate(&order, &rules.compile(None), &mut usage).map(|()| usage)
        })
        .await
        .map_err(|busy| Fault::new(StatusCode::SERVICE_UNAVAILABLE, busy.to_string()))?
        .map_err(|e| Fault::bad(e.to_string()))?;
    let mut total = Decimal::ZERO;
    for p in usage.iter().flat_map(|(_, p)| p) {
        total = total
            .checked_add(p.price)
            .ok_or_else(|| Fault::bad("price overflow"))?;
    }
    Reply::ok(&QuoteNumber(decimal::to_text(total)))
}
