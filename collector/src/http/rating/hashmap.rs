//! `/v1/rating/module_config/hashmap/...`: the hashmap module's config API (all admin).
//!
//! Collections are wrapped (`{"services":[…]}`); a create answers 201 with
//! `Location: <collection>/<uuid>`, an update 302 with `Location` and no body, a delete 204.
//! Ids come from the path, the query or the body. Messages are upstream's, e.g. 409
//! `Service compute already exists (UUID: …)`, 404 `No such mapping: …`.
//!
//! Decisions: an update (PUT) changes only the attributes it carries (upstream's client sends the
//! whole object back, which works the same); a duplicate is the same key (value or level),
//! parent, tenant and group with an overlapping validity period.
//!
//! Validity periods (upstream 2025.2): a rule may carry `start` and `end` (naive UTC ISO
//! datetimes) and then charges only periods with `start <= period begin < end`. A `start` in the
//! past is refused unless `?force=true`; `end` before `start` is refused. Once a rule with a
//! `start` has started, only its `end` may change (and only while it has none, to a time not in
//! the past), as upstream. Rules without `start` (vmmon's rules from before validity periods)
//! charge every period and stay freely editable. `name` and `description` are stored and shown;
//! the audit attributes (`created_at`, `created_by`, ...) are accepted and ignored. `start`,
//! `end`, `name` and `description` are written only when set.

use axum::http::Method;
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::{Map, Value};

use super::{Ctx, Fault, Outcome, Reply};
use crate::rating::decimal;
use crate::rating::hashmap::{Field, Group, MapType, Rule, Service};
use crate::rating::period::iso;
use crate::store::{self, rating::RuleFilter, rating::RuleKind};

/// Longest service, field, group or tenant name and mapping value.
const MAX_NAME: usize = 255;
/// Attributes of newer releases accepted on rules: the validity period and labels (used), then
/// the audit attributes (ignored).
const IGNORED_RULE_ATTRS: &[&str] = &[
    "name",
    "description",
    "start",
    "end",
    "created_at",
    "created_by",
    "updated_by",
    "deleted",
    "deleted_by",
    "is_active",
];

type Inner<T> = Result<T, Fault>;

fn uuid_of(attr: &str, v: &str) -> Result<String, Fault> {
    uuid::Uuid::parse_str(v)
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| Fault::invalid(attr, v, "Value should be UUID format"))
}

fn opt_uuid(attr: &str, v: Option<String>) -> Result<Option<String>, Fault> {
    v.map(|v| uuid_of(attr, &v)).transpose()
}

fn new_id() -> String {
    uuid::Uuid::new_v4().hyphenated().to_string()
}

fn text(attr: &str, v: &Value) -> Result<Option<String>, Fault> {
    let s = match v {
        Value::Null => return Ok(None),
        Value::String(s) => s.clone(),
        Value::Number(_) | Value::Bool(_) => decimal::python_str(v),
        other => {
            return Err(Fault::invalid(
                attr,
                &other.to_string(),
                "Value should be a string.",
            ));
        }
    };
    if s.chars().count() > MAX_NAME || s.chars().any(char::is_control) {
        return Err(Fault::invalid(
            attr,
            &s,
            "Value should be at most 255 printable characters.",
        ));
    }
    Ok(Some(s))
}

fn name_in(body: &Map<String, Value>) -> Result<String, Fault> {
    match body
        .get("name")
        .map(|v| text("name", v))
        .transpose()?
        .flatten()
    {
        Some(n) if !n.is_empty() => Ok(n),
        _ => Err(Fault::mandatory("name")),
    }
}

/// `{"service_id","name"}`.
#[derive(Debug, Serialize)]
struct ServiceBody<'a> {
    service_id: &'a str,
    name: &'a str,
}

fn service_json(s: &Service) -> ServiceBody<'_> {
    ServiceBody {
        service_id: &s.service_id,
        name: &s.name,
    }
}

/// `{"field_id","name","service_id"}`.
#[derive(Debug, Serialize)]
struct FieldBody<'a> {
    field_id: &'a str,
    name: &'a str,
    service_id: &'a str,
}

fn field_json(f: &Field) -> FieldBody<'_> {
    FieldBody {
        field_id: &f.field_id,
        name: &f.name,
        service_id: &f.service_id,
    }
}

/// `{"group_id","name"}`.
#[derive(Debug, Serialize)]
struct GroupBody<'a> {
    group_id: &'a str,
    name: &'a str,
}

fn group_json(g: &Group) -> GroupBody<'_> {
    GroupBody {
        group_id: &g.group_id,
        name: &g.name,
    }
}

/// The attributes mappings and thresholds share, after their id and key. Decimals are strings;
/// the validity period and labels are written only when set.
#[derive(Debug, Serialize)]
struct RuleCommon<'a> {
    #[serde(rename = "type")]
    map_type: &'static str,
    cost: String,
    service_id: Option<&'a str>,
    field_id: Option<&'a str>,
    group_id: Option<&'a str>,
    tenant_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    start: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    end: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
}

/// A mapping: `{"mapping_id","value",<common>}`.
#[derive(Debug, Serialize)]
struct MappingBody<'a> {
    mapping_id: &'a str,
    value: Option<&'a str>,
    #[serde(flatten)]
    common: RuleCommon<'a>,
}

/// A threshold: `{"threshold_id","level",<common>}`.
#[derive(Debug, Serialize)]
struct ThresholdBody<'a> {
    threshold_id: &'a str,
    level: Option<String>,
    #[serde(flatten)]
    common: RuleCommon<'a>,
}

/// A mapping or a threshold, as the API writes it.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum RuleBody<'a> {
    Mapping(MappingBody<'a>),
    Threshold(ThresholdBody<'a>),
}

fn rule_json(kind: RuleKind, r: &Rule) -> RuleBody<'_> {
    let common = RuleCommon {
        map_type: r.map_type.as_str(),
        cost: decimal::to_text(r.cost),
        service_id: r.service_id.as_deref(),
        field_id: r.field_id.as_deref(),
        group_id: r.group_id.as_deref(),
        tenant_id: r.tenant_id.as_deref(),
        start: r.start_ms.map(iso),
        end: r.end_ms.map(iso),
        name: r.name.as_deref(),
        description: r.description.as_deref(),
    };
    match kind {
        RuleKind::Mapping => RuleBody::Mapping(MappingBody {
            mapping_id: &r.id,
            value: r.value.as_deref(),
            common,
        }),
        RuleKind::Threshold => RuleBody::Threshold(ThresholdBody {
            threshold_id: &r.id,
            level: r.level.map(decimal::to_text),
            common,
        }),
    }
}

/// A wrapped collection: `{"services":[…]}` and so on.
#[derive(Debug, Serialize)]
#[serde(rename_all = "lowercase")]
enum Wrapped<'a> {
    Services(Vec<ServiceBody<'a>>),
    Fields(Vec<FieldBody<'a>>),
    Groups(Vec<GroupBody<'a>>),
    Mappings(Vec<RuleBody<'a>>),
    Thresholds(Vec<RuleBody<'a>>),
}

/// `GET /types`.
const TYPES: [&str; 2] = ["flat", "rate"];

fn no_service(id: &str) -> Fault {
    Fault::not_found(format!("No such service: None (UUID: {id})"))
}

fn no_field(id: &str) -> Fault {
    Fault::not_found(format!("No such field: {id}"))
}

fn no_group(id: &str) -> Fault {
    Fault::not_found(format!("No such group: None (UUID: {id})"))
}

fn no_rule(kind: RuleKind, id: &str) -> Fault {
    match kind {
        RuleKind::Mapping => Fault::not_found(format!("No such mapping: {id}")),
        RuleKind::Threshold => Fault::not_found(format!("No such threshold: {id}")),
    }
}

/// A 404 turned into a 400 (an unknown parent named in a body is bad input, not a missing URL).
fn as_bad(f: Fault) -> Fault {
    Fault::bad(f.message)
}

async fn write<T, F>(ctx: &Ctx<'_>, f: F) -> Result<T, Fault>
where
    T: Send + 'static,
    F: FnOnce(&crate::store::Connection) -> store::Result<Inner<T>> + Send + 'static,
{
    ctx.app.store.write(f).await.map_err(Fault::store)?
}

async fn read<T, F>(ctx: &Ctx<'_>, f: F) -> Result<T, Fault>
where
    T: Send + 'static,
    F: FnOnce(&crate::store::Connection) -> store::Result<T> + Send + 'static,
{
    ctx.app.store.read(f).await.map_err(Fault::store)
}

/// Routes `/v1/rating/module_config/hashmap/<rest>`.
pub async fn handle(ctx: &Ctx<'_>, rest: &[&str]) -> Outcome {
    use RuleKind::{Mapping, Threshold};
    match rest {
        ["types"] => match ctx.method {
            Method::GET => Reply::ok(&TYPES),
            _ => Ok(Reply::BadMethod),
        },
        ["services"] => services(ctx, None).await,
        ["services", "fields", r @ ..] if r.len() <= 1 => fields(ctx, r, None).await,
        ["services", "mappings", r @ ..] if r.len() <= 1 => rules(ctx, Mapping, r, None).await,
        ["services", "thresholds", r @ ..] if r.len() <= 1 => rules(ctx, Threshold, r, None).await,
        ["services", id] => services(ctx, Some(id)).await,
        ["services", id, "fields", r @ ..] if r.len() <= 1 => {
            fields(ctx, r, Some(uuid_of("service_id", id)?)).await
        }
        ["services", id, "mappings", r @ ..] if r.len() <= 1 => {
            rules(ctx, Mapping, r, Some(uuid_of("service_id", id)?)).await
        }
        ["services", id, "thresholds", r @ ..] if r.len() <= 1 => {
            rules(ctx, Threshold, r, Some(uuid_of("service_id", id)?)).await
        }
        ["fields", r @ ..] if r.len() <= 1 => fields(ctx, r, None).await,
        ["groups", "mappings"] => group_rules(ctx, Mapping).await,
        ["groups", "thresholds"] => group_rules(ctx, Threshold).await,
        ["groups", r @ ..] if r.len() <= 1 => groups(ctx, r.first().copied()).await,
        ["mappings", r @ ..] if r.len() <= 1 => rules(ctx, Mapping, r, None).await,
        ["thresholds", r @ ..] if r.len() <= 1 => rules(ctx, Threshold, r, None).await,
        _ => Ok(Reply::NoRoute),
    }
}

// ---------------------------------------------------------------------------------------------
// Services

async fn services(ctx: &Ctx<'_>, path_id: Option<&str>) -> Outcome {
    let id = match path_id {
        Some(p) => Some(uuid_of("service_id", p)?),
        None => opt_uuid("service_id", ctx.arg("service_id"))?,
    };
    match (&ctx.method, path_id, id) {
        (&Method::GET, None, _) => {
            let list = read(ctx, store::rating::services).await?;
            Reply::ok(&Wrapped::Services(list.iter().map(service_json).collect()))
        }
        (&Method::GET, Some(_), Some(id)) => {
            let lookup = id.clone();
            match read(ctx, move |c| store::rating::service(c, &lookup)).await? {
                Some(s) => Reply::ok(&service_json(&s)),
                None => Err(no_service(&id)),
            }
        }
        (&Method::POST, None, _) => {
            let body = ctx.body_object("service_data", &["service_id", "name"])?;
            let name = name_in(&body)?;
            let created = write(ctx, move |c| {
                if let Some(s) = store::rating::service_by_name(c, &name)? {
                    return Ok(Err(Fault::conflict(format!(
                        "Service {} already exists (UUID: {})",
                        s.name, s.service_id
                    ))));
                }
                let s = Service {
                    service_id: new_id(),
                    name,
                };
                store::rating::insert_service(c, &s)?;
                Ok(Ok(s))
            })
            .await?;
            Reply::created(
                &service_json(&created),
                ctx.location_of(&created.service_id),
            )
        }
        (&Method::DELETE, _, Some(id)) => {
            let del = id.clone();
            if write(ctx, move |c| {
                Ok(Ok(store::rating::delete_service(c, &del)?))
            })
            .await?
            {
                Ok(Reply::NoContent)
            } else {
                Err(no_service(&id))
            }
        }
        (&Method::DELETE, _, None) => Err(Fault::bad("Missing argument: \"service_id\"")),
        _ => Ok(Reply::BadMethod),
    }
}

// ---------------------------------------------------------------------------------------------
// Fields

async fn fields(ctx: &Ctx<'_>, rest: &[&str], parent: Option<String>) -> Outcome {
    let path_id = rest.first().copied();
    let id = match path_id {
        Some(p) => Some(uuid_of("field_id", p)?),
        None => opt_uuid("field_id", ctx.arg("field_id"))?,
    };
    match (&ctx.method, path_id, id) {
        (&Method::GET, None, _) => {
            let service_id = match parent.clone() {
                Some(p) => p,
                None => opt_uuid("service_id", ctx.arg("service_id"))?
                    .ok_or_else(|| Fault::bad("Missing argument: \"service_id\""))?,
            };
            let list = read(ctx, move |c| store::rating::fields(c, Some(&service_id))).await?;
            Reply::ok(&Wrapped::Fields(list.iter().map(field_json).collect()))
        }
        (&Method::GET, Some(_), Some(id)) => {
            let lookup = id.clone();
            match read(ctx, move |c| store::rating::field(c, &lookup)).await? {
                Some(f) => Reply::ok(&field_json(&f)),
                None => Err(no_field(&id)),
            }
        }
        (&Method::POST, None, _) => {
            let body = ctx.body_object("field_data", &["field_id", "service_id", "name"])?;
            let name = name_in(&body)?;
            let service_id = match (parent.clone(), body.get("service_id")) {
                (Some(p), _) => p,
                (None, Some(Value::String(s))) => uuid_of("service_id", s)?,
                _ => return Err(Fault::mandatory("service_id")),
            };
            let created = write(ctx, move |c| {
                if store::rating::service(c, &service_id)?.is_none() {
                    return Ok(Err(as_bad(no_service(&service_id))));
                }
                if let Some(f) = store::rating::field_by_name(c, &service_id, &name)? {
                    return Ok(Err(Fault::conflict(format!(
                        "Field {} already exists (UUID: {})",
                        f.name, f.field_id
                    ))));
                }
                let f = Field {
                    field_id: new_id(),
                    service_id,
                    name,
                };
                store::rating::insert_field(c, &f)?;
                Ok(Ok(f))
            })
            .await?;
            Reply::created(&field_json(&created), ctx.location_of(&created.field_id))
        }
        (&Method::DELETE, _, Some(id)) => {
            let del = id.clone();
            if write(ctx, move |c| Ok(Ok(store::rating::delete_field(c, &del)?))).await? {
                Ok(Reply::NoContent)
            } else {
                Err(no_field(&id))
            }
        }
        (&Method::DELETE, _, None) => Err(Fault::bad("Missing argument: \"field_id\"")),
        _ => Ok(Reply::BadMethod),
    }
}

// ---------------------------------------------------------------------------------------------
// Groups

async fn groups(ctx: &Ctx<'_>, path_id: Option<&str>) -> Outcome {
    let id = match path_id {
        Some(p) => Some(uuid_of("group_id", p)?),
        None => opt_uuid("group_id", ctx.arg("group_id"))?,
    };
    match (&ctx.method, path_id, id) {
        (&Method::GET, None, _) => {
            let list = read(ctx, store::rating::groups).await?;
            Reply::ok(&Wrapped::Groups(list.iter().map(group_json).collect()))
        }
        (&Method::GET, Some(_), Some(id)) => {
            let lookup = id.clone();
            match read(ctx, move |c| store::rating::group(c, &lookup)).await? {
                Some(g) => Reply::ok(&group_json(&g)),
                None => Err(no_group(&id)),
            }
        }
        (&Method::POST, None, _) => {
            let body = ctx.body_object("group_data", &["group_id", "name"])?;
            let name = name_in(&body)?;
            let created = write(ctx, move |c| {
                if let Some(g) = store::rating::group_by_name(c, &name)? {
                    return Ok(Err(Fault::conflict(format!(
                        "Group {} already exists (UUID: {})",
                        g.name, g.group_id
                    ))));
                }
                let g = Group {
                    group_id: new_id(),
                    name,
                };
                store::rating::insert_group(c, &g)?;
                Ok(Ok(g))
            })
            .await?;
            Reply::created(&group_json(&created), ctx.location_of(&created.group_id))
        }
        (&Method::DELETE, _, Some(id)) => {
            let recursive = ctx.bool_arg("recursive", false)?;
            let del = id.clone();
            if write(ctx, move |c| {
                Ok(Ok(store::rating::delete_group(c, &del, recursive)?))
            })
            .await?
            {
                Ok(Reply::NoContent)
            } else {
                Err(no_group(&id))
            }
        }
        (&Method::DELETE, _, None) => Err(Fault::bad("Missing argument: \"group_id\"")),
        _ => Ok(Reply::BadMethod),
    }
}

async fn group_rules(ctx: &Ctx<'_>, kind: RuleKind) -> Outcome {
    if ctx.method != Method::GET {
        return Ok(Reply::BadMethod);
    }
    let group_id = opt_uuid("group_id", ctx.arg("group_id"))?
        .ok_or_else(|| Fault::bad("Missing argument: \"group_id\""))?;
    let filter = RuleFilter {
        group_id: Some(group_id),
        ..RuleFilter::default()
    };
    let list = read(ctx, move |c| store::rating::rules(c, kind, &filter)).await?;
    Reply::ok(&collection(kind, &list))
}

// ---------------------------------------------------------------------------------------------
// Mappings and thresholds

fn collection(kind: RuleKind, list: &[Rule]) -> Wrapped<'_> {
    let items = list.iter().map(|r| rule_json(kind, r)).collect();
    match kind {
        RuleKind::Mapping => Wrapped::Mappings(items),
        RuleKind::Threshold => Wrapped::Thresholds(items),
    }
}

fn id_attr(kind: RuleKind) -> &'static str {
    match kind {
        RuleKind::Mapping => "mapping_id",
        RuleKind::Threshold => "threshold_id",
    }
}

async fn rules(ctx: &Ctx<'_>, kind: RuleKind, rest: &[&str], parent: Option<String>) -> Outcome {
    let attr = id_attr(kind);
    if rest == ["group"] {
        if ctx.method != Method::GET {
            return Ok(Reply::BadMethod);
        }
        let id = opt_uuid(attr, ctx.arg(attr))?
            .ok_or_else(|| Fault::bad(format!("Missing argument: \"{attr}\"")))?;
        let lookup = id.clone();
        let group = read(ctx, move |c| {
            let Some(r) = store::rating::rule(c, kind, &lookup)? else {
                return Ok(None);
            };
            match r.group_id {
                Some(g) => store::rating::group(c, &g),
                None => Ok(None),
            }
        })
        .await?;
        let what = match kind {
            RuleKind::Mapping => "Mapping",
            RuleKind::Threshold => "Threshold",
        };
        return match group {
            Some(g) => Reply::ok(&group_json(&g)),
            None => Err(Fault::not_found(format!(
                "{what} has no group (UUID: {id})"
            ))),
        };
    }
    let path_id = rest.first().copied();
    let id = match path_id {
        Some(p) => Some(uuid_of(attr, p)?),
        None => opt_uuid(attr, ctx.arg(attr))?,
    };
    match (&ctx.method, path_id, id) {
        (&Method::GET, None, _) => list_rules(ctx, kind, parent).await,
        (&Method::GET, Some(_), Some(id)) => {
            let lookup = id.clone();
            match read(ctx, move |c| store::rating::rule(c, kind, &lookup)).await? {
                Some(r) => Reply::ok(&rule_json(kind, &r)),
                None => Err(no_rule(kind, &id)),
            }
        }
        (&Method::POST, None, _) => create_rule(ctx, kind, parent).await,
        (&Method::PUT, _, Some(id)) => update_rule(ctx, kind, id).await,
        (&Method::PUT, _, None) => Err(Fault::bad(format!("Missing argument: \"{attr}\""))),
        (&Method::DELETE, _, Some(id)) => {
            let del = id.clone();
            if write(ctx, move |c| {
                Ok(Ok(store::rating::delete_rule(c, kind, &del)?))
            })
            .await?
            {
                Ok(Reply::NoContent)
            } else {
                Err(no_rule(kind, &id))
            }
        }
        (&Method::DELETE, _, None) => Err(Fault::bad(format!("Missing argument: \"{attr}\""))),
        _ => Ok(Reply::BadMethod),
    }
}

async fn list_rules(ctx: &Ctx<'_>, kind: RuleKind, parent: Option<String>) -> Outcome {
    let service_id = match parent {
        Some(p) => Some(p),
        None => opt_uuid("service_id", ctx.arg("service_id"))?,
    };
    let field_id = opt_uuid("field_id", ctx.arg("field_id"))?;
    let group_id = opt_uuid("group_id", ctx.arg("group_id"))?;
    let no_group = ctx.bool_arg("no_group", false)?;
    let all = ctx.bool_arg("all", false)?;
    if service_id.is_none() && field_id.is_none() && group_id.is_none() && !no_group && !all {
        return Err(Fault::bad(
            "You must specify either service_id, field_id or group_id (or all=true).",
        ));
    }
    let tenant = if ctx.bool_arg("filter_tenant", false)? {
        Some(ctx.arg("tenant_id"))
    } else {
        None
    };
    let filter = RuleFilter {
        service_id,
        field_id,
        group_id,
        no_group,
        tenant,
    };
    let list = read(ctx, move |c| store::rating::rules(c, kind, &filter)).await?;
    Reply::ok(&collection(kind, &list))
}

fn allowed_attrs(kind: RuleKind) -> Vec<&'static str> {
    let mut v = vec![
        id_attr(kind),
        "type",
        "cost",
        "service_id",
        "field_id",
        "group_id",
        "tenant_id",
    ];
    v.push(match kind {
        RuleKind::Mapping => "value",
        RuleKind::Threshold => "level",
    });
    v.extend_from_slice(IGNORED_RULE_ATTRS);
    v
}

fn decimal_attr(attr: &str, v: &Value) -> Result<Decimal, Fault> {
    let shown = decimal::python_str(v);
    let d = decimal::from_json(v).map_err(|e| Fault::invalid(attr, &shown, &e))?;
    if !decimal::fits_cost(d) {
        return Err(Fault::invalid(
            attr,
            &shown,
            "Value should have at most 12 integer digits.",
        ));
    }
    Ok(d)
}

fn type_attr(v: &Value) -> Result<MapType, Fault> {
    let s = match v {
        Value::String(s) => s.as_str(),
        _ => "",
    };
    MapType::parse(s).ok_or_else(|| {
        Fault::invalid(
            "type",
            &decimal::python_str(v),
            "Value should be one of: flat, rate",
        )
    })
}

/// Applies the body's attributes to `r` (a new rule or a stored one).
fn apply_body(kind: RuleKind, r: &mut Rule, body: &Map<String, Value>) -> Result<(), Fault> {
    if let Some(v) = body.get("cost").filter(|v| !v.is_null()) {
        r.cost = decimal_attr("cost", v)?;
    }
    if let Some(v) = body.get("type").filter(|v| !v.is_null()) {
        r.map_type = type_attr(v)?;
    }
    match kind {
        RuleKind::Mapping => {
            if let Some(v) = body.get("value") {
                r.value = text("value", v)?.filter(|s| !s.is_empty());
            }
        }
        RuleKind::Threshold => {
            if let Some(v) = body.get("level").filter(|v| !v.is_null()) {
                r.level = Some(decimal_attr("level", v)?);
            }
        }
    }
    if let Some(v) = body.get("group_id") {
        r.group_id = match v {
            Value::Null => None,
            Value::String(s) if s.is_empty() => None,
            Value::String(s) => Some(uuid_of("group_id", s)?),
            other => {
                return Err(Fault::invalid(
                    "group_id",
                    &other.to_string(),
                    "Value should be UUID format",
                ));
            }
        };
    }
    if let Some(v) = body.get("tenant_id") {
        r.tenant_id = text("tenant_id", v)?.filter(|s| !s.is_empty());
    }
    if let Some(v) = body.get("start") {
        r.start_ms = time_attr("start", v)?;
    }
    if let Some(v) = body.get("end") {
        r.end_ms = time_attr("end", v)?;
    }
    if let Some(v) = body.get("name") {
        r.name = text("name", v)?.filter(|s| !s.is_empty());
    }
    if let Some(v) = body.get("description") {
        r.description = text("description", v)?.filter(|s| !s.is_empty());
    }
    Ok(())
}

/// A datetime attribute (ISO-8601; naive is UTC) as epoch ms; null is None.
fn time_attr(attr: &str, v: &Value) -> Result<Option<i64>, Fault> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) if s.is_empty() => Ok(None),
        Value::String(s) => super::parse_datetime(s).map(Some).ok_or_else(|| {
            Fault::invalid(attr, s, "Value should be an ISO-8601 date or datetime.")
        }),
        other => Err(Fault::invalid(
            attr,
            &decimal::python_str(other),
            "Value should be an ISO-8601 date or datetime.",
        )),
    }
}

/// `end` not before `start` (upstream's words).
fn check_period(r: &Rule) -> Result<(), Fault> {
    if let (Some(s), Some(e)) = (r.start_ms, r.end_ms)
        && e < s
    {
        return Err(Fault::bad(format!(
            "Cannot create a rule with start after end. start=[{}] end=[{}].",
            iso(s),
            iso(e)
        )));
    }
    Ok(())
}

/// What an update of `current` into `new` may change at `now_ms`: once a rule with a `start`
/// has started, only an `end` it does not have yet, not in the past (upstream 2025.2).
fn check_update(current: &Rule, new: &Rule, now_ms: i64) -> Result<(), Fault> {
    let Some(start) = current.start_ms.filter(|s| *s <= now_ms) else {
        return check_period(new);
    };
    if current.end_ms.is_some() {
        return Err(Fault::bad(
            "Cannot update a rule that was already processed and has a defined end date.",
        ));
    }
    let mut only_end = current.clone();
    only_end.end_ms = new.end_ms;
    if *new != only_end {
        return Err(Fault::bad(format!(
            "You are allowed to update only the attribute [end] as this rule is already running \
             as it started on [{}]",
            iso(start)
        )));
    }
    if let Some(e) = new.end_ms
        && e < now_ms
    {
        return Err(Fault::bad(format!(
            "End date must be in the future. end=[{}] current time=[{}]",
            iso(e),
            iso(now_ms)
        )));
    }
    Ok(())
}

/// Parent and value rules, in upstream's order and words.
fn check_shape(kind: RuleKind, r: &Rule) -> Result<(), Fault> {
    match (&r.service_id, &r.field_id) {
        (Some(_), Some(_)) => return Err(Fault::bad("You can only specify one parent.")),
        (None, None) => return Err(Fault::bad("You must specify one parent.")),
        _ => {}
    }
    if kind == RuleKind::Mapping {
        if r.value.is_some() && r.service_id.is_some() {
            return Err(Fault::bad("You can't specify a value and a service_id."));
        }
        if r.value.is_none() && r.field_id.is_some() {
            return Err(Fault::bad("You must specify a value for a field mapping."));
        }
    }
    Ok(())
}

/// Inside the write transaction: parents exist, no duplicate; then saves.
fn check_and_save(
    c: &crate::store::Connection,
    kind: RuleKind,
    r: &Rule,
) -> store::Result<Inner<()>> {
    if let Some(s) = &r.service_id
        && store::rating::service(c, s)?.is_none()
    {
        return Ok(Err(as_bad(no_service(s))));
    }
    if let Some(f) = &r.field_id
        && store::rating::field(c, f)?.is_none()
    {
        return Ok(Err(as_bad(no_field(f))));
    }
    if let Some(g) = &r.group_id
        && store::rating::group(c, g)?.is_none()
    {
        return Ok(Err(as_bad(no_group(g))));
    }
    if store::rating::duplicate_rule(c, kind, r)?.is_some() {
        let (what, key) = match kind {
            RuleKind::Mapping => ("Mapping", r.value.clone()),
            RuleKind::Threshold => ("Threshold", r.level.map(decimal::to_text)),
        };
        let (ptype, pid) = match (&r.field_id, &r.service_id) {
            (Some(f), _) => ("field", f.clone()),
            (None, Some(s)) => ("service", s.clone()),
            (None, None) => ("service", String::new()),
        };
        return Ok(Err(Fault::conflict(format!(
            "{what} '{}' already exists for {ptype} '{pid}', tenant: '{}'",
            key.unwrap_or_else(|| "None".into()),
            r.tenant_id.clone().unwrap_or_else(|| "None".into()),
        ))));
    }
    store::rating::save_rule(c, kind, r)?;
    Ok(Ok(()))
}

async fn create_rule(ctx: &Ctx<'_>, kind: RuleKind, parent: Option<String>) -> Outcome {
    let body = ctx.body_object(
        match kind {
            RuleKind::Mapping => "mapping_data",
            RuleKind::Threshold => "threshold_data",
        },
        &allowed_attrs(kind),
    )?;
    if body.get("cost").is_none_or(Value::is_null) {
        return Err(Fault::mandatory("cost"));
    }
    if kind == RuleKind::Threshold && body.get("level").is_none_or(Value::is_null) {
        return Err(Fault::mandatory("level"));
    }
    let id_from = |attr: &str| -> Result<Option<String>, Fault> {
        match body.get(attr) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => uuid_of(attr, s).map(Some),
            Some(other) => Err(Fault::invalid(
                attr,
                &other.to_string(),
                "Value should be UUID format",
            )),
        }
    };
    let mut rule = Rule {
        id: new_id(),
        value: None,
        level: None,
        map_type: MapType::Flat,
        cost: Decimal::ZERO,
        service_id: match parent {
            Some(p) => Some(p),
            None => id_from("service_id")?,
        },
        field_id: id_from("field_id")?,
        group_id: None,
        tenant_id: None,
        start_ms: None,
        end_ms: None,
        name: None,
        description: None,
    };
    apply_body(kind, &mut rule, &body)?;
    check_shape(kind, &rule)?;
    let now = store::now_ms();
    if let Some(start) = rule.start_ms
        && start < now
        && !ctx.bool_arg("force", false)?
    {
        return Err(Fault::bad(format!(
            "Cannot create a rule with start in the past. start=[{}] current time=[{}].",
            iso(start),
            iso(now)
        )));
    }
    check_period(&rule)?;
    let saved = rule.clone();
    write(ctx, move |c| check_and_save(c, kind, &saved)).await?;
    Reply::created(&rule_json(kind, &rule), ctx.location_of(&rule.id))
}

async fn update_rule(ctx: &Ctx<'_>, kind: RuleKind, id: String) -> Outcome {
    let body = ctx.body_object(
        match kind {
            RuleKind::Mapping => "mapping",
            RuleKind::Threshold => "threshold",
        },
        &allowed_attrs(kind),
    )?;
    let lookup = id.clone();
    let Some(mut rule) = read(ctx, move |c| store::rating::rule(c, kind, &lookup)).await? else {
        return Err(no_rule(kind, &id));
    };
    // The parent never changes (upstream ignores service_id/field_id on update).
    let current = rule.clone();
    apply_body(kind, &mut rule, &body)?;
    check_shape(kind, &rule)?;
    check_update(&current, &rule, store::now_ms())?;
    write(ctx, move |c| {
        if store::rating::rule(c, kind, &rule.id)?.is_none() {
            return Ok(Err(no_rule(kind, &rule.id)));
        }
        check_and_save(c, kind, &rule)
    })
    .await?;
    let location = if ctx.path.ends_with(&id) {
        format!("{}{}", ctx.origin, ctx.path)
    } else {
        ctx.location_of(&id)
    };
    Ok(Reply::Found(location))
}
