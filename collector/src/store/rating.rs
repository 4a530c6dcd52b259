//! Rating: module states, the deprecated collector mappings and states, hashmap rules, the
//! processing state, the samples a period is rated from, and the rated datapoints and totals.
//!
//! Decimals (costs, levels, quantities, prices) are stored as their exact text and parsed back
//! with [`crate::rating::decimal`]; SQLite never does arithmetic on them.

use super::db::{Connection, OptionalExtension, Row, params};
use rust_decimal::Decimal;

use super::{Result, StoreError};
use crate::rating::decimal;
use crate::rating::hashmap::{Field, Group, HashmapRules, MapType, Rule, Service};
use crate::rating::usage::{InstanceInfo, SampleRow};

/// Name of the processing state row: start of the next period to process, epoch ms.
pub const NEXT_PERIOD: &str = "next_period_ms";

fn corrupt(what: &str, v: &str) -> StoreError {
    StoreError::Corrupt(format!("{what} {v:?}"))
}

fn dec(what: &str, v: &str) -> Result<Decimal> {
    decimal::parse(v).map_err(|_| corrupt(what, v))
}

// ---------------------------------------------------------------------------------------------
// Modules, collector mappings and states

/// Stored module states `(module_id, enabled, priority)`.
pub fn module_rows(conn: &Connection) -> Result<Vec<(String, bool, i64)>> {
    let mut stmt = conn.prepare("SELECT module_id, enabled, priority FROM rating_modules")?;
    let rows = stmt.query_map(params![], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    rows.collect::<Result<Vec<_>>>()
}

/// Stores a module's state.
pub fn set_module(conn: &Connection, module_id: &str, enabled: bool, priority: i64) -> Result<()> {
    conn.execute(
        "INSERT INTO rating_modules (module_id, enabled, priority) VALUES (?1, ?2, ?3)
         ON CONFLICT(module_id) DO UPDATE SET enabled = excluded.enabled,
             priority = excluded.priority",
        params![module_id, enabled, priority],
    )?;
    Ok(())
}

/// Collector mappings `(service, collector)`, optionally of one collector, oldest first.
pub fn collector_mappings(
    conn: &Connection,
    collector: Option<&str>,
) -> Result<Vec<(String, String)>> {
    let mut stmt = conn.prepare(
        "SELECT service, collector FROM rating_collector_mappings
         WHERE ?1 IS NULL OR collector = ?1 ORDER BY rowid",
    )?;
    let rows = stmt.query_map([collector], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect::<Result<Vec<_>>>()
}

/// The collector a service is mapped to.
pub fn collector_mapping(conn: &Connection, service: &str) -> Result<Option<String>> {
    conn.query_row(
        "SELECT collector FROM rating_collector_mappings WHERE service = ?1",
        [service],
        |r| r.get(0),
    )
    .optional()
}

/// Maps a service to a collector (replacing an existing mapping).
pub fn set_collector_mapping(conn: &Connection, service: &str, collector: &str) -> Result<()> {
    conn.execute(
        "INSERT INTO rating_collector_mappings (service, collector) VALUES (?1, ?2)
         ON CONFLICT(service) DO UPDATE SET collector = excluded.collector",
        params![service, collector],
    )?;
    Ok(())
}

/// Deletes a service's mapping; false when there was none.
pub fn delete_collector_mapping(conn: &Connection, service: &str) -> Result<bool> {
    Ok(conn.execute(
        "DELETE FROM rating_collector_mappings WHERE service = ?1",
        [service],
    )? > 0)
}

/// A collector's stored enabled state.
pub fn collector_state(conn: &Connection, name: &str) -> Result<Option<bool>> {
    conn.query_row(
        "SELECT enabled FROM rating_collector_states WHERE name = ?1",
        [name],
        |r| r.get(0),
    )
    .optional()
}

/// Stores a collector's enabled state.
pub fn set_collector_state(conn: &Connection, name: &str, enabled: bool) -> Result<()> {
    conn.execute(
        "INSERT INTO rating_collector_states (name, enabled) VALUES (?1, ?2)
         ON CONFLICT(name) DO UPDATE SET enabled = excluded.enabled",
        params![name, enabled],
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Hashmap: services, fields, groups

fn service_row(r: &Row<'_>) -> Result<Service> {
    Ok(Service {
        service_id: r.get(0)?,
        name: r.get(1)?,
    })
}

/// Every service, oldest first.
pub fn services(conn: &Connection) -> Result<Vec<Service>> {
    let mut stmt = conn.prepare("SELECT service_id, name FROM hashmap_services ORDER BY rowid")?;
    let rows = stmt.query_map(params![], service_row)?;
    rows.collect::<Result<Vec<_>>>()
}

/// One service by id.
pub fn service(conn: &Connection, service_id: &str) -> Result<Option<Service>> {
    conn.query_row(
        "SELECT service_id, name FROM hashmap_services WHERE service_id = ?1",
        [service_id],
        service_row,
    )
    .optional()
}

/// One service by name.
pub fn service_by_name(conn: &Connection, name: &str) -> Result<Option<Service>> {
    conn.query_row(
        "SELECT service_id, name FROM hashmap_services WHERE name = ?1",
        [name],
        service_row,
    )
    .optional()
}

/// Creates a service (the caller checked the name is free).
pub fn insert_service(conn: &Connection, s: &Service) -> Result<()> {
    conn.execute(
        "INSERT INTO hashmap_services (service_id, name) VALUES (?1, ?2)",
        params![s.service_id, s.name],
    )?;
    Ok(())
}

/// Deletes a service with its fields and rules; false when unknown.
pub fn delete_service(conn: &Connection, service_id: &str) -> Result<bool> {
    Ok(conn.execute(
        "DELETE FROM hashmap_services WHERE service_id = ?1",
        [service_id],
    )? > 0)
}

fn field_row(r: &Row<'_>) -> Result<Field> {
    Ok(Field {
        field_id: r.get(0)?,
        service_id: r.get(1)?,
        name: r.get(2)?,
    })
}

/// Fields of a service (all fields when None), oldest first.
pub fn fields(conn: &Connection, service_id: Option<&str>) -> Result<Vec<Field>> {
    let mut stmt = conn.prepare(
        "SELECT field_id, service_id, name FROM hashmap_fields
         WHERE ?1 IS NULL OR service_id = ?1 ORDER BY rowid",
    )?;
    let rows = stmt.query_map([service_id], field_row)?;
    rows.collect::<Result<Vec<_>>>()
}

/// One field by id.
pub fn field(conn: &Connection, field_id: &str) -> Result<Option<Field>> {
    conn.query_row(
        "SELECT field_id, service_id, name FROM hashmap_fields WHERE field_id = ?1",
        [field_id],
        field_row,
    )
    .optional()
}

/// A service's field by name.
pub fn field_by_name(conn: &Connection, service_id: &str, name: &str) -> Result<Option<Field>> {
    conn.query_row(
        "SELECT field_id, service_id, name FROM hashmap_fields
             WHERE service_id = ?1 AND name = ?2",
        [service_id, name],
        field_row,
    )
    .optional()
}

/// Creates a field.
pub fn insert_field(conn: &Connection, f: &Field) -> Result<()> {
    conn.execute(
        "INSERT INTO hashmap_fields (field_id, service_id, name) VALUES (?1, ?2, ?3)",
        params![f.field_id, f.service_id, f.name],
    )?;
    Ok(())
}

/// Deletes a field with its rules; false when unknown.
pub fn delete_field(conn: &Connection, field_id: &str) -> Result<bool> {
    Ok(conn.execute("DELETE FROM hashmap_fields WHERE field_id = ?1", [field_id])? > 0)
}

fn group_row(r: &Row<'_>) -> Result<Group> {
    Ok(Group {
        group_id: r.get(0)?,
        name: r.get(1)?,
    })
}

/// Every group, oldest first.
pub fn groups(conn: &Connection) -> Result<Vec<Group>> {
    let mut stmt = conn.prepare("SELECT group_id, name FROM hashmap_groups ORDER BY rowid")?;
    let rows = stmt.query_map(params![], group_row)?;
    rows.collect::<Result<Vec<_>>>()
}

/// One group by id.
pub fn group(conn: &Connection, group_id: &str) -> Result<Option<Group>> {
    conn.query_row(
        "SELECT group_id, name FROM hashmap_groups WHERE group_id = ?1",
        [group_id],
        group_row,
    )
    .optional()
}

/// One group by name.
pub fn group_by_name(conn: &Connection, name: &str) -> Result<Option<Group>> {
    conn.query_row(
        "SELECT group_id, name FROM hashmap_groups WHERE name = ?1",
        [name],
        group_row,
    )
    .optional()
}

/// Creates a group.
pub fn insert_group(conn: &Connection, g: &Group) -> Result<()> {
    conn.execute(
        "INSERT INTO hashmap_groups (group_id, name) VALUES (?1, ?2)",
        params![g.group_id, g.name],
    )?;
    Ok(())
}

/// Deletes a group; with `recursive` its rules go too, else they fall back to the default group.
/// False when unknown.
pub fn delete_group(conn: &Connection, group_id: &str, recursive: bool) -> Result<bool> {
    if recursive {
        conn.execute(
            "DELETE FROM hashmap_mappings WHERE group_id = ?1",
            [group_id],
        )?;
        conn.execute(
            "DELETE FROM hashmap_thresholds WHERE group_id = ?1",
            [group_id],
        )?;
    }
    Ok(conn.execute("DELETE FROM hashmap_groups WHERE group_id = ?1", [group_id])? > 0)
}

// ---------------------------------------------------------------------------------------------
// Hashmap: mappings and thresholds

/// Which rule table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    /// `hashmap_mappings` (keyed by value).
    Mapping,
    /// `hashmap_thresholds` (keyed by level).
    Threshold,
}

impl RuleKind {
    fn table(self) -> &'static str {
        match self {
            RuleKind::Mapping => "hashmap_mappings",
            RuleKind::Threshold => "hashmap_thresholds",
        }
    }
    fn id_col(self) -> &'static str {
        match self {
            RuleKind::Mapping => "mapping_id",
            RuleKind::Threshold => "threshold_id",
        }
    }
    fn key_col(self) -> &'static str {
        match self {
            RuleKind::Mapping => "value",
            RuleKind::Threshold => "level",
        }
    }
}

/// Filters of a rule listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleFilter {
    /// Rules of this service.
    pub service_id: Option<String>,
    /// Rules of this field.
    pub field_id: Option<String>,
    /// Rules of this group.
    pub group_id: Option<String>,
    /// Only rules without a group.
    pub no_group: bool,
    /// `Some(t)`: only rules whose tenant is `t` (None: global rules only).
    pub tenant: Option<Option<String>>,
}

fn rule_columns(kind: RuleKind) -> String {
    format!(
        "{}, {}, map_type, cost, service_id, field_id, group_id, tenant_id, start_ms, end_ms, \
         name, description",
        kind.id_col(),
        kind.key_col()
    )
}

fn rule_from(kind: RuleKind, r: &Row<'_>) -> Result<(Rule, String, String)> {
    let key: Option<String> = r.get(1)?;
    let map_type: String = r.get(2)?;
    let cost: String = r.get(3)?;
    let rule = Rule {
        id: r.get(0)?,
        value: if kind == RuleKind::Mapping {
            key.clone()
        } else {
            None
        },
        level: None,
        map_type: MapType::parse(&map_type).unwrap_or(MapType::Flat),
        cost: Decimal::ZERO,
        service_id: r.get(4)?,
        field_id: r.get(5)?,
        group_id: r.get(6)?,
        tenant_id: r.get(7)?,
        start_ms: r.get(8)?,
        end_ms: r.get(9)?,
        name: r.get(10)?,
        description: r.get(11)?,
    };
    Ok((rule, key.unwrap_or_default(), cost))
}

fn finish(kind: RuleKind, (mut rule, key, cost): (Rule, String, String)) -> Result<Rule> {
    rule.cost = dec("hashmap cost", &cost)?;
    if kind == RuleKind::Threshold {
        rule.level = Some(dec("hashmap threshold level", &key)?);
    }
    Ok(rule)
}

/// Rules matching `filter`, oldest first.
pub fn rules(conn: &Connection, kind: RuleKind, filter: &RuleFilter) -> Result<Vec<Rule>> {
    let sql = format!(
        "SELECT {} FROM {} WHERE (?1 IS NULL OR service_id = ?1) AND (?2 IS NULL OR field_id = ?2)
         AND (?3 IS NULL OR group_id = ?3) AND (?4 = 0 OR group_id IS NULL)
         AND (?5 = 0 OR tenant_id IS NOT DISTINCT FROM ?6) ORDER BY rowid",
        rule_columns(kind),
        kind.table()
    );
    let mut stmt = conn.prepare(&sql)?;
    let (has_tenant, tenant) = match &filter.tenant {
        Some(t) => (true, t.clone()),
        None => (false, None),
    };
    let rows = stmt.query_map(
        params![
            filter.service_id,
            filter.field_id,
            filter.group_id,
            filter.no_group,
            has_tenant,
            tenant
        ],
        |r| rule_from(kind, r),
    )?;
    rows.map(|r| finish(kind, r?)).collect()
}

/// One rule by id.
pub fn rule(conn: &Connection, kind: RuleKind, id: &str) -> Result<Option<Rule>> {
    let sql = format!(
        "SELECT {} FROM {} WHERE {} = ?1",
        rule_columns(kind),
        kind.table(),
        kind.id_col()
    );
    let row = conn
        .query_row(&sql, [id], |r| rule_from(kind, r))
        .optional()?;
    row.map(|r| finish(kind, r)).transpose()
}

fn key_text(kind: RuleKind, r: &Rule) -> Option<String> {
    match kind {
        RuleKind::Mapping => r.value.clone(),
        RuleKind::Threshold => r.level.map(decimal::to_text),
    }
}

/// Another rule with the same key, parent, tenant and group as `r` whose validity period
/// overlaps `r`'s (a duplicate); its id. (The casts type a NULL bound for PostgreSQL, which
/// cannot infer it from `?8 IS NULL`.)
pub fn duplicate_rule(conn: &Connection, kind: RuleKind, r: &Rule) -> Result<Option<String>> {
    let sql = format!(
        "SELECT {id} FROM {t} WHERE {k} IS NOT DISTINCT FROM ?1 AND service_id IS NOT DISTINCT FROM ?2
         AND field_id IS NOT DISTINCT FROM ?3 AND tenant_id IS NOT DISTINCT FROM ?4
         AND group_id IS NOT DISTINCT FROM ?5 AND {id} <> ?6
         AND (start_ms IS NULL OR ?8 IS NULL OR start_ms < CAST(?8 AS BIGINT))
         AND (end_ms IS NULL OR ?7 IS NULL OR CAST(?7 AS BIGINT) < end_ms) LIMIT 1",
        id = kind.id_col(),
        t = kind.table(),
        k = kind.key_col()
    );
    conn.query_row(
        &sql,
        params![
            key_text(kind, r),
            r.service_id,
            r.field_id,
            r.tenant_id,
            r.group_id,
            r.id,
            r.start_ms,
            r.end_ms
        ],
        |row| row.get(0),
    )
    .optional()
}

/// Inserts or replaces (by id) a rule.
pub fn save_rule(conn: &Connection, kind: RuleKind, r: &Rule) -> Result<()> {
    let sql = format!(
        "INSERT INTO {t} ({cols}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
         ON CONFLICT({id}) DO UPDATE SET {k} = excluded.{k}, map_type = excluded.map_type,
             cost = excluded.cost, group_id = excluded.group_id, tenant_id = excluded.tenant_id,
             start_ms = excluded.start_ms, end_ms = excluded.end_ms, name = excluded.name,
             description = excluded.description",
        t = kind.table(),
        cols = rule_columns(kind),
        id = kind.id_col(),
        k = kind.key_col()
    );
    conn.execute(
        &sql,
        params![
            r.id,
            key_text(kind, r),
            r.map_type.as_str(),
            decimal::to_text(r.cost),
            r.service_id,
            r.field_id,
            r.group_id,
            r.tenant_id,
            r.start_ms,
            r.end_ms,
            r.name,
            r.description
        ],
    )?;
    Ok(())
}

/// Deletes a rule; false when unknown.
pub fn delete_rule(conn: &Connection, kind: RuleKind, id: &str) -> Result<bool> {
    let sql = format!("DELETE FROM {} WHERE {} = ?1", kind.table(), kind.id_col());
    Ok(conn.execute(&sql, [id])? > 0)
}

/// Every hashmap rule (for pricing).
pub fn hashmap_rules(conn: &Connection) -> Result<HashmapRules> {
    Ok(HashmapRules {
        services: services(conn)?,
        fields: fields(conn, None)?,
        mappings: rules(conn, RuleKind::Mapping, &RuleFilter::default())?,
        thresholds: rules(conn, RuleKind::Threshold, &RuleFilter::default())?,
    })
}

// ---------------------------------------------------------------------------------------------
// Processing

/// A stored processing state value.
pub fn state(conn: &Connection, name: &str) -> Result<Option<i64>> {
    conn.query_row(
        "SELECT value FROM rating_state WHERE name = ?1",
        [name],
        |r| r.get(0),
    )
    .optional()
}

/// Stores a processing state value.
pub fn set_state(conn: &Connection, name: &str, value: i64) -> Result<()> {
    conn.execute(
        "INSERT INTO rating_state (name, value) VALUES (?1, ?2)
         ON CONFLICT(name) DO UPDATE SET value = excluded.value",
        params![name, value],
    )?;
    Ok(())
}

/// One instance's inputs for a period: inventory, counter baseline, samples.
pub type PeriodSamples = (InstanceInfo, Option<SampleRow>, Vec<SampleRow>);

const SAMPLE_COLUMNS: &str = "sampled_at_ms, elapsed_ms, cpu_pct, rx_bytes_total, tx_bytes_total";

fn sample_row(r: &Row<'_>) -> Result<SampleRow> {
    Ok(SampleRow {
        at_ms: r.get(0)?,
        elapsed_ms: r.get(1)?,
        cpu_pct: r.get(2)?,
        // Counters are stored bit-for-bit as i64.
        rx_bytes: r.get::<_, i64>(3)? as u64,
        tx_bytes: r.get::<_, i64>(4)? as u64,
    })
}

/// What rating `[begin_ms, end_ms)` needs, per instance: its inventory, its last sample before
/// the period (counter baseline), and its samples taken in the period plus its first one at or
/// after the end (whose window reaches back into the period; at most `max_window_ms` later).
/// Instances with no sample in the period nor in that tail are left out.
pub fn period_samples(
    conn: &Connection,
    begin_ms: i64,
    end_ms: i64,
    max_window_ms: i64,
) -> Result<Vec<PeriodSamples>> {
    let mut inst = conn.prepare(
        "SELECT instance_id, project, region, party, hostname, cpu_count, mem_total_bytes,
             disk_total_bytes, os, agent_version FROM instances
         WHERE last_seen_ms >= ?1 ORDER BY instance_id",
    )?;
    // Instances silent since well before the period have no sample in it (last_seen_ms follows
    // the newest sample, clamped to the collector's clock; a day of slack covers guest clocks
    // running ahead), so a catch-up over many empty periods stays cheap.
    let infos = inst
        .query_map([begin_ms.saturating_sub(max_window_ms)], |r| {
            Ok(InstanceInfo {
                instance_id: r.get(0)?,
                project: r.get(1)?,
                region: r.get(2)?,
                party: r.get(3)?,
                hostname: r.get(4)?,
                cpu_count: r.get(5)?,
                mem_total_bytes: r.get::<_, i64>(6)?.max(0) as u64,
                disk_total_bytes: r.get::<_, i64>(7)?.max(0) as u64,
                os: r.get(8)?,
                agent_version: r.get(9)?,
            })
        })?
        .collect::<Result<Vec<_>>>()?;
    // Each instance's samples under its project (one shard on Citus: `InstanceKey`).
    let (t4, t3) = (conn.project_filter(4), conn.project_filter(3));
    let mut in_period = conn.prepare_cached(&format!(
        "SELECT {SAMPLE_COLUMNS} FROM vm_samples WHERE instance_id = ?1
         AND sampled_at_ms >= ?2 AND sampled_at_ms < ?3{t4} ORDER BY sampled_at_ms, id"
    ))?;
    let mut tail = conn.prepare_cached(&format!(
        "SELECT {SAMPLE_COLUMNS} FROM vm_samples WHERE instance_id = ?1
         AND sampled_at_ms >= ?2 AND sampled_at_ms < ?3{t4} ORDER BY sampled_at_ms, id LIMIT 1"
    ))?;
    let mut before = conn.prepare_cached(&format!(
        "SELECT {SAMPLE_COLUMNS} FROM vm_samples WHERE instance_id = ?1
         AND sampled_at_ms < ?2{t3} ORDER BY sampled_at_ms DESC, id DESC LIMIT 1"
    ))?;
    let mut out = Vec::new();
    for info in infos {
        let mut rows = in_period
            .query_map(
                conn.scoped(params![info.instance_id, begin_ms, end_ms, info.project]),
                sample_row,
            )?
            .collect::<Result<Vec<_>>>()?;
        if let Some(t) = tail
            .query_row(
                conn.scoped(params![
                    info.instance_id,
                    end_ms,
                    end_ms.saturating_add(max_window_ms),
                    info.project
                ]),
                sample_row,
            )
            .optional()?
        {
            rows.push(t);
        }
        if rows.is_empty() {
            continue;
        }
        let prev = before
            .query_row(
                conn.scoped(params![info.instance_id, begin_ms, info.project]),
                sample_row,
            )
            .optional()?;
        out.push((info, prev, rows));
    }
    Ok(out)
}

/// One rated datapoint as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct PointRow {
    /// Period start, epoch ms.
    pub begin_ms: i64,
    /// Period end, epoch ms.
    pub end_ms: i64,
    /// Tenant (project).
    pub tenant_id: String,
    /// Rated type (metric alt_name).
    pub res_type: String,
    /// Unit.
    pub unit: String,
    /// Quantity (decimal text).
    pub qty: String,
    /// Price (decimal text).
    pub rating: String,
    /// Description (JSON object text).
    pub desc: String,
}

/// A period's total for one tenant and type.
#[derive(Debug, Clone, PartialEq)]
pub struct TotalRow {
    /// Period start, epoch ms.
    pub begin_ms: i64,
    /// Period end, epoch ms.
    pub end_ms: i64,
    /// Tenant (project).
    pub tenant_id: String,
    /// Rated type.
    pub res_type: String,
    /// Sum of the prices.
    pub rate: Decimal,
}

/// Which tenants' stored ratings a re-rating of a period replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replace<'a> {
    /// Every tenant except the inactive scopes (whose ratings stay as they are).
    Active,
    /// One tenant (a scope's reprocessing).
    Only(&'a str),
}

/// Replaces what is stored for periods overlapping `[begin_ms, end_ms)` of the tenants `which`
/// names with `points` and `totals` (so rerunning a period never double-counts); returns how
/// many rows were removed.
pub fn replace_period(
    conn: &Connection,
    begin_ms: i64,
    end_ms: i64,
    which: Replace<'_>,
    points: &[PointRow],
    totals: &[TotalRow],
    now_ms: i64,
) -> Result<usize> {
    let (cond, tenant) = match which {
        Replace::Active => (
            "tenant_id NOT IN (SELECT scope_id FROM rating_scopes WHERE active = 0) AND ?3 IS NULL",
            None,
        ),
        Replace::Only(t) => ("tenant_id = ?3", Some(t)),
    };
    let removed = conn.execute(
        &format!("DELETE FROM rated_points WHERE begin_ms < ?2 AND end_ms > ?1 AND {cond}"),
        params![begin_ms, end_ms, tenant],
    )?;
    conn.execute(
        &format!("DELETE FROM rated_totals WHERE begin_ms < ?2 AND end_ms > ?1 AND {cond}"),
        params![begin_ms, end_ms, tenant],
    )?;
    let mut ins = conn.prepare_cached(
        "INSERT INTO rated_points (begin_ms, end_ms, tenant_id, res_type, unit, qty, rating,
             descr, processed_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    for p in points {
        ins.execute(params![
            p.begin_ms,
            p.end_ms,
            p.tenant_id,
            p.res_type,
            p.unit,
            p.qty,
            p.rating,
            p.desc,
            now_ms
        ])?;
    }
    let mut tot = conn.prepare_cached(
        "INSERT INTO rated_totals (begin_ms, end_ms, tenant_id, res_type, rate)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for t in totals {
        tot.execute(params![
            t.begin_ms,
            t.end_ms,
            t.tenant_id,
            t.res_type,
            decimal::to_text(t.rate)
        ])?;
    }
    Ok(removed)
}

/// Which stored ratings a report covers: rows whose whole period lies in `[begin_ms, end_ms]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportFilter {
    /// Window start, epoch ms.
    pub begin_ms: i64,
    /// Window end, epoch ms.
    pub end_ms: i64,
    /// One tenant, or all.
    pub tenant_id: Option<String>,
    /// One rated type, or all.
    pub res_type: Option<String>,
}

/// Per-period totals matching `f`.
pub fn totals(conn: &Connection, f: &ReportFilter) -> Result<Vec<TotalRow>> {
    let mut stmt = conn.prepare(
        "SELECT begin_ms, end_ms, tenant_id, res_type, rate FROM rated_totals
         WHERE begin_ms >= ?1 AND end_ms <= ?2 AND (?3 IS NULL OR tenant_id = ?3)
           AND (?4 IS NULL OR res_type = ?4)
         ORDER BY begin_ms, tenant_id, res_type",
    )?;
    let rows = stmt.query_map(
        params![f.begin_ms, f.end_ms, f.tenant_id, f.res_type],
        |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
            ))
        },
    )?;
    rows.map(|r| {
        let (begin_ms, end_ms, tenant_id, res_type, rate) = r?;
        Ok(TotalRow {
            begin_ms,
            end_ms,
            tenant_id,
            res_type,
            rate: dec("rated total", &rate)?,
        })
    })
    .collect()
}

/// Tenants with rated data in the window, sorted.
pub fn tenants(conn: &Connection, begin_ms: i64, end_ms: i64) -> Result<Vec<String>> {
    let mut stmt = conn.prepare(
        "SELECT DISTINCT tenant_id FROM rated_totals WHERE begin_ms >= ?1 AND end_ms <= ?2
         ORDER BY tenant_id",
    )?;
    let rows = stmt.query_map(params![begin_ms, end_ms], |r| r.get(0))?;
    rows.collect::<Result<Vec<_>>>()
}

/// Rated datapoints matching `f`, by period, tenant, type and insertion.
pub fn points(conn: &Connection, f: &ReportFilter) -> Result<Vec<PointRow>> {
    let mut stmt = conn.prepare(
        "SELECT begin_ms, end_ms, tenant_id, res_type, unit, qty, rating, descr FROM rated_points
         WHERE begin_ms >= ?1 AND end_ms <= ?2 AND (?3 IS NULL OR tenant_id = ?3)
           AND (?4 IS NULL OR res_type = ?4)
         ORDER BY begin_ms, tenant_id, res_type, id",
    )?;
    let rows = stmt.query_map(
        params![f.begin_ms, f.end_ms, f.tenant_id, f.res_type],
        |r| {
            Ok(PointRow {
                begin_ms: r.get(0)?,
                end_ms: r.get(1)?,
                tenant_id: r.get(2)?,
                res_type: r.get(3)?,
                unit: r.get(4)?,
                qty: r.get(5)?,
                rating: r.get(6)?,
                desc: r.get(7)?,
            })
        },
    )?;
    rows.collect::<Result<Vec<_>>>()
}

/// Calls `each` with every rated datapoint matching `f` (by period, tenant, type and insertion),
/// without holding them all in memory; stops at the first error `each` returns.
pub fn for_each_point(
    conn: &Connection,
    f: &ReportFilter,
    mut each: impl FnMut(PointRow) -> Result<()>,
) -> Result<()> {
    let mut stmt = conn.prepare(
        "SELECT begin_ms, end_ms, tenant_id, res_type, unit, qty, rating, descr FROM rated_points
         WHERE begin_ms >= ?1 AND end_ms <= ?2 AND (?3 IS NULL OR tenant_id = ?3)
           AND (?4 IS NULL OR res_type = ?4)
         ORDER BY begin_ms, tenant_id, res_type, id",
    )?;
    stmt.for_each(
        params![f.begin_ms, f.end_ms, f.tenant_id, f.res_type],
        |r| {
            each(PointRow {
                begin_ms: r.get(0)?,
                end_ms: r.get(1)?,
                tenant_id: r.get(2)?,
                res_type: r.get(3)?,
                unit: r.get(4)?,
                qty: r.get(5)?,
                rating: r.get(6)?,
                desc: r.get(7)?,
            })
        },
    )
}

/// Adds pushed datapoints (`POST /v2/dataframes`) to what is stored: the points are inserted
/// and each (period, tenant, type) total grows by their prices (exact decimals). A later
/// re-rating of the period replaces them, as upstream's reprocessing does.
pub fn add_points(conn: &Connection, points: &[PointRow], now_ms: i64) -> Result<()> {
    let mut ins = conn.prepare_cached(
        "INSERT INTO rated_points (begin_ms, end_ms, tenant_id, res_type, unit, qty, rating,
             descr, processed_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    let mut sums: std::collections::BTreeMap<(i64, String, String), (i64, Decimal)> =
        std::collections::BTreeMap::new();
    for p in points {
        ins.execute(params![
            p.begin_ms,
            p.end_ms,
            p.tenant_id,
            p.res_type,
            p.unit,
            p.qty,
            p.rating,
            p.desc,
            now_ms
        ])?;
        let price = dec("pushed price", &p.rating)?;
        let e = sums
            .entry((p.begin_ms, p.tenant_id.clone(), p.res_type.clone()))
            .or_insert((p.end_ms, Decimal::ZERO));
        e.1 =
            e.1.checked_add(price)
                .ok_or_else(|| corrupt("pushed total overflows", &p.rating))?;
    }
    for ((begin_ms, tenant_id, res_type), (end_ms, add)) in sums {
        let old: Option<String> = conn
            .query_row(
                "SELECT rate FROM rated_totals WHERE begin_ms = ?1 AND tenant_id = ?2
                 AND res_type = ?3",
                params![begin_ms, tenant_id, res_type],
                |r| r.get(0),
            )
            .optional()?;
        let sum = match old {
            Some(t) => dec("rated total", &t)?
                .checked_add(add)
                .ok_or_else(|| corrupt("pushed total overflows", &t))?,
            None => add,
        };
        conn.execute(
            "INSERT INTO rated_totals (begin_ms, end_ms, tenant_id, res_type, rate)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(begin_ms, tenant_id, res_type) DO UPDATE SET rate = excluded.rate",
            params![begin_ms, end_ms, tenant_id, res_type, decimal::to_text(sum)],
        )?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Scopes (CloudKitty v2 scope state) and reprocessing schedules

/// A scope (a project) and its stored state attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeRow {
    /// The project id.
    pub scope_id: String,
    /// Informative (default `project_id`).
    pub scope_key: String,
    /// Informative (default `vmmon`).
    pub fetcher: String,
    /// Informative (default `vmmon`).
    pub collector: String,
    /// Inactive scopes are skipped by the processing loop.
    pub active: bool,
    /// When `active` last changed, epoch ms (None: never).
    pub toggled_ms: Option<i64>,
}

/// Every scope: the projects with instances or stored ratings, and those with a stored state,
/// by id.
pub fn scopes(conn: &Connection) -> Result<Vec<ScopeRow>> {
    let mut stmt = conn.prepare(
        "SELECT s.id, COALESCE(r.scope_key, 'project_id'), COALESCE(r.fetcher, 'vmmon'),
             COALESCE(r.collector, 'vmmon'), COALESCE(r.active, 1), r.toggled_ms
         FROM (SELECT project AS id FROM instances WHERE project IS NOT NULL AND project <> ''
               UNION SELECT tenant_id FROM rated_totals
               UNION SELECT scope_id FROM rating_scopes) s
         LEFT JOIN rating_scopes r ON r.scope_id = s.id ORDER BY s.id",
    )?;
    let rows = stmt.query_map(params![], |r| {
        Ok(ScopeRow {
            scope_id: r.get(0)?,
            scope_key: r.get(1)?,
            fetcher: r.get(2)?,
            collector: r.get(3)?,
            active: r.get(4)?,
            toggled_ms: r.get(5)?,
        })
    })?;
    rows.collect::<Result<Vec<_>>>()
}

/// Stores a scope's state attributes.
pub fn set_scope(conn: &Connection, s: &ScopeRow, now_ms: i64) -> Result<()> {
    conn.execute(
        "INSERT INTO rating_scopes (scope_id, scope_key, fetcher, collector, active, toggled_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT(scope_id) DO UPDATE SET scope_key = excluded.scope_key,
             fetcher = excluded.fetcher, collector = excluded.collector,
             active = excluded.active, toggled_ms = excluded.toggled_ms",
        params![
            s.scope_id,
            s.scope_key,
            s.fetcher,
            s.collector,
            s.active,
            s.toggled_ms.unwrap_or(now_ms)
        ],
    )?;
    Ok(())
}

/// Ids of the inactive scopes.
pub fn inactive_scopes(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt = conn.prepare("SELECT scope_id FROM rating_scopes WHERE active = 0")?;
    let rows = stmt.query_map(params![], |r| r.get(0))?;
    rows.collect::<Result<Vec<_>>>()
}

/// A reprocessing schedule: re-rate `[start_ms, end_ms)` of one scope, period by period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReprocessRow {
    /// Row id (creation order).
    pub id: i64,
    /// The scope (project).
    pub scope_id: String,
    /// Why (free text, required).
    pub reason: String,
    /// First period start, epoch ms.
    pub start_ms: i64,
    /// End of the last period, epoch ms.
    pub end_ms: i64,
    /// Start of the next period to re-rate; `end_ms` once done.
    pub current_ms: i64,
}

const REPROCESS_COLUMNS: &str = "id, scope_id, reason, start_ms, end_ms, current_ms";

fn reprocess_row(r: &Row<'_>) -> Result<ReprocessRow> {
    Ok(ReprocessRow {
        id: r.get(0)?,
        scope_id: r.get(1)?,
        reason: r.get(2)?,
        start_ms: r.get(3)?,
        end_ms: r.get(4)?,
        current_ms: r.get(5)?,
    })
}

/// Schedules a reprocessing; its id.
pub fn add_reprocess(
    conn: &Connection,
    scope_id: &str,
    reason: &str,
    start_ms: i64,
    end_ms: i64,
    now_ms: i64,
) -> Result<i64> {
    conn.query_row(
        "INSERT INTO rating_reprocesses (scope_id, reason, start_ms, end_ms, current_ms,
             created_ms) VALUES (?1, ?2, ?3, ?4, ?3, ?5) RETURNING id",
        params![scope_id, reason, start_ms, end_ms, now_ms],
        |r| r.get(0),
    )
}

/// Schedules of the scopes `scope_ids` (all when empty), by id ascending or descending, paged.
pub fn reprocesses(
    conn: &Connection,
    scope_ids: &[String],
    descending: bool,
    offset: u64,
    limit: u64,
) -> Result<Vec<ReprocessRow>> {
    let order = if descending { "DESC" } else { "ASC" };
    let ids = serde_json::Value::from(scope_ids.to_vec()).to_string();
    // The scope ids travel as one JSON array parameter, unpacked by each dialect.
    let elements = if conn.is_pg() {
        "SELECT jsonb_array_elements_text(CAST(?1 AS jsonb))"
    } else {
        "SELECT value FROM json_each(?1)"
    };
    let mut stmt = conn.prepare(&format!(
        "SELECT {REPROCESS_COLUMNS} FROM rating_reprocesses
         WHERE ?1 = '[]' OR scope_id IN ({elements})
         ORDER BY id {order} LIMIT ?2 OFFSET ?3"
    ))?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let offset = i64::try_from(offset).unwrap_or(i64::MAX);
    let rows = stmt.query_map(params![ids, limit, offset], reprocess_row)?;
    rows.collect::<Result<Vec<_>>>()
}

/// An unfinished schedule of `scope_id` overlapping `[start_ms, end_ms)`.
pub fn overlapping_reprocess(
    conn: &Connection,
    scope_id: &str,
    start_ms: i64,
    end_ms: i64,
) -> Result<Option<ReprocessRow>> {
    conn.query_row(
        &format!(
            "SELECT {REPROCESS_COLUMNS} FROM rating_reprocesses WHERE scope_id = ?1
             AND current_ms < end_ms AND start_ms < ?3 AND ?2 < end_ms ORDER BY id LIMIT 1"
        ),
        params![scope_id, start_ms, end_ms],
        reprocess_row,
    )
    .optional()
}

/// The oldest unfinished schedule.
pub fn next_reprocess(conn: &Connection) -> Result<Option<ReprocessRow>> {
    conn.query_row(
        &format!(
            "SELECT {REPROCESS_COLUMNS} FROM rating_reprocesses WHERE current_ms < end_ms
             ORDER BY id LIMIT 1"
        ),
        params![],
        reprocess_row,
    )
    .optional()
}

/// The earliest period start still to re-rate per scope (unfinished schedules only).
pub fn pending_reprocess_starts(conn: &Connection) -> Result<Vec<(String, i64)>> {
    let mut stmt = conn.prepare(
        "SELECT scope_id, MIN(current_ms) FROM rating_reprocesses WHERE current_ms < end_ms
         GROUP BY scope_id ORDER BY scope_id",
    )?;
    let rows = stmt.query_map(params![], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect::<Result<Vec<_>>>()
}

/// Records that a schedule re-rated up to `current_ms`.
pub fn advance_reprocess(conn: &Connection, id: i64, current_ms: i64) -> Result<()> {
    conn.execute(
        "UPDATE rating_reprocesses SET current_ms = ?2 WHERE id = ?1",
        params![id, current_ms],
    )?;
    Ok(())
}
