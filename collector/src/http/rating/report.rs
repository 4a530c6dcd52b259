//! `/v1/report/{summary,total,tenants}` and `/v1/storage/dataframes`: answers from the stored
//! ratings. The window defaults to the current UTC month; a stored period counts when both its
//! begin and end fall inside `[begin, end]`. Scoping follows upstream: with `all_tenants=true`
//! every tenant (admin only), else `tenant_id`, else the caller's own project; a tenant naming
//! another tenant gets 403.

use std::collections::BTreeMap;

use axum::http::Method;
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::{Map, Value};

use super::{Caller, Ctx, Fault, Outcome, Reply};
use crate::rating::decimal;
use crate::rating::period::{iso, month_start};
use crate::store::{self, rating::ReportFilter};

/// Longest accepted tenant id or service filter.
const MAX_NAME: usize = 255;

fn window(ctx: &Ctx<'_>) -> Result<(i64, i64), Fault> {
    let now = store::now_ms();
    let this_month = month_start(now);
    // The first instant of next month: a day past this month's 28th is always in the next one.
    let next_month = month_start(this_month + 32 * 86_400_000);
    let begin = ctx.time_arg("begin")?.unwrap_or(this_month);
    let end = ctx.time_arg("end")?.unwrap_or(next_month);
    Ok((begin, end))
}

fn name_arg(ctx: &Ctx<'_>, name: &str) -> Result<Option<String>, Fault> {
    match ctx.arg(name) {
        Some(v) if v.chars().count() > MAX_NAME || v.chars().any(char::is_control) => {
            Err(Fault::invalid(
                name,
                &v,
                "Value should be at most 255 printable characters.",
            ))
        }
        v => Ok(v),
    }
}

/// The tenant a summary or total is about (None: every tenant), after the policy check.
fn target(ctx: &Ctx<'_>, rule: &str) -> Result<Option<String>, Fault> {
    let all = ctx.bool_arg("all_tenants", false)?;
    let tenant = name_arg(ctx, "tenant_id")?;
    let target = if all {
        None
    } else {
        tenant.or_else(|| ctx.caller.project().map(str::to_string))
    };
    ctx.caller.require_reader(rule, target.as_deref())?;
    Ok(target)
}

async fn totals(ctx: &Ctx<'_>, f: ReportFilter) -> Result<Vec<store::rating::TotalRow>, Fault> {
    ctx.app
        .store
        .read(move |c| store::rating::totals(c, &f))
        .await
        .map_err(Fault::store)
}

/// Routes `/v1/report/<rest>`.
pub async fn handle(ctx: &Ctx<'_>, rest: &[&str]) -> Outcome {
    let [what] = rest else {
        return Ok(Reply::NoRoute);
    };
    if !matches!(*what, "summary" | "total" | "tenants") {
        return Ok(Reply::NoRoute);
    }
    if ctx.method != Method::GET {
        return Ok(Reply::BadMethod);
    }
    let (begin_ms, end_ms) = window(ctx)?;
    match *what {
        "tenants" => {
            ctx.caller.require_admin("report:list_tenants")?;
            let list = ctx
                .app
                .store
                .read(move |c| store::rating::tenants(c, begin_ms, end_ms))
                .await
                .map_err(Fault::store)?;
            Reply::ok(&list)
        }
        "total" => {
            let tenant_id = target(ctx, "report:get_total")?;
            let res_type = name_arg(ctx, "service")?;
            let rows = totals(
                ctx,
                ReportFilter {
                    begin_ms,
                    end_ms,
                    tenant_id,
                    res_type,
                },
            )
            .await?;
            let mut sum = Decimal::ZERO;
            for r in rows {
                sum = sum
                    .checked_add(r.rate)
                    .ok_or_else(|| Fault::bad("total overflows"))?;
            }
            Reply::ok(&decimal::to_text(sum))
        }
        _ => summary(ctx, begin_ms, end_ms).await,
    }
}

/// A summary element's (tenant, type) when grouped by them.
type GroupKey = (Option<String>, Option<String>);

async fn summary(ctx: &Ctx<'_>, begin_ms: i64, end_ms: i64) -> Outcome {
    let tenant_id = target(ctx, "report:get_summary")?;
    let res_type = name_arg(ctx, "service")?;
    let groupby = ctx.arg("groupby").unwrap_or_default();
    let by_tenant = groupby.contains("tenant_id");
    let by_type = groupby.contains("res_type");
    let rows = totals(
        ctx,
        ReportFilter {
            begin_ms,
            end_ms,
            tenant_id: tenant_id.clone(),
            res_type: res_type.clone(),
        },
    )
    .await?;
    let mut sums: BTreeMap<GroupKey, Decimal> = BTreeMap::new();
    if !by_tenant && !by_type {
        // Without a grouping there is exactly one element, even with no data.
        sums.insert((None, None), Decimal::ZERO);
    }
    for r in rows {
        let key = (
            by_tenant.then(|| r.tenant_id.clone()),
            by_type.then(|| r.res_type.clone()),
        );
        let e = sums.entry(key).or_insert(Decimal::ZERO);
        *e = e
            .checked_add(r.rate)
            .ok_or_else(|| Fault::bad("total overflows"))?;
    }
    let mut list: Vec<(GroupKey, Decimal)> = sums.into_iter().collect();
    list.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
    let all = || "ALL".to_string();
    let summary = list
        .into_iter()
        .map(|((t, r), rate)| SummaryElement {
            begin: iso(begin_ms),
            end: iso(end_ms),
            tenant_id: t.or_else(|| tenant_id.clone()).unwrap_or_else(all),
            res_type: r.or_else(|| res_type.clone()).unwrap_or_else(all),
            rate: decimal::summary_text(rate),
        })
        .collect();
    Reply::ok(&Summary { summary })
}

/// Routes `/v1/storage/<rest>`.
pub async fn storage(ctx: &Ctx<'_>, rest: &[&str]) -> Outcome {
    if rest != ["dataframes"] {
        return Ok(Reply::NoRoute);
    }
    if ctx.method != Method::GET {
        return Ok(Reply::BadMethod);
    }
    let (begin_ms, end_ms) = window(ctx)?;
    let asked = name_arg(ctx, "tenant_id")?;
    let res_type = name_arg(ctx, "resource_type")?;
    let rule = "storage:list_data_frames";
    let tenant_id = match &ctx.caller {
        c if c.is_admin() => asked,
        Caller::User {
            admin: false,
            project: None,
            ..
        } => return Reply::ok(&Dataframes { dataframes: vec![] }),
        c => {
            let t = asked.or_else(|| c.project().map(str::to_string));
            c.require_reader(rule, t.as_deref())?;
            t
        }
    };
    let f = ReportFilter {
        begin_ms,
        end_ms,
        tenant_id,
        res_type,
    };
    let rows = ctx
        .app
        .store
        .read(move |c| store::rating::points(c, &f))
        .await
        .map_err(Fault::store)?;
    // One frame per period, tenant and rated type.
    let mut dataframes: Vec<Frame> = Vec::new();
    let mut key: Option<(i64, String, String)> = None;
    for r in rows {
        let desc: Value =
            serde_json::from_str(&r.desc).unwrap_or_else(|_| Value::Object(Map::new()));
        let k = (r.begin_ms, r.tenant_id.clone(), r.res_type.clone());
        let resource = Resource {
            service: r.res_type,
            volume: r.qty,
            rating: r.rating,
            desc,
        };
        if key.as_ref() == Some(&k)
            && let Some(f) = dataframes.last_mut()
        {
            f.resources.push(resource);
            continue;
        }
        dataframes.push(Frame {
            begin: iso(r.begin_ms),
            end: iso(r.end_ms),
            tenant_id: r.tenant_id,
            resources: vec![resource],
        });
        key = Some(k);
    }
    Reply::ok(&Dataframes { dataframes })
}

/// One `/v1/report/summary` element; decimals are strings.
#[derive(Debug, Serialize)]
struct SummaryElement {
    begin: String,
    end: String,
    tenant_id: String,
    res_type: String,
    rate: String,
}

/// `{"summary":[…]}`.
#[derive(Debug, Serialize)]
struct Summary {
    summary: Vec<SummaryElement>,
}

/// One rated resource of a v1 dataframe; decimals are strings, `desc` the stored description.
#[derive(Debug, Serialize)]
struct Resource {
    service: String,
    volume: String,
    rating: String,
    desc: Value,
}

/// One v1 dataframe: a period, tenant and type.
#[derive(Debug, Serialize)]
struct Frame {
    begin: String,
    end: String,
    tenant_id: String,
    resources: Vec<Resource>,
}

/// `{"dataframes":[…]}`.
#[derive(Debug, Serialize)]
struct Dataframes {
    dataframes: Vec<Frame>,
}
