//! Registered instances: inventory, ownership and the persisted desired state.

use super::db::{Connection, OptionalExtension, Row, params};
use vmmon_common::wire::{DesiredState, Inventory};

use super::{AgentTokenRow, Result};
use crate::timeaxis::ClockState;

/// A registered instance.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceRow {
    /// Instance id.
    pub instance_id: String,
    /// Owning project (from the registering agent's token).
    pub project: String,
    /// Region (from the token).
    pub region: String,
    /// Vendor (from the token).
    pub party: String,
    /// Last inventory.
    pub inventory: Inventory,
    /// First registration, epoch ms.
    pub created_at_ms: i64,
    /// Last inventory change, epoch ms.
    pub updated_at_ms: i64,
    /// Last register, heartbeat or report, epoch ms.
    pub last_seen_ms: i64,
    /// Persisted desired state.
    pub desired: DesiredState,
    /// Samples the agent reports it dropped (cumulative).
    pub dropped_samples: i64,
    /// Batches waiting in the agent's spool at its last heartbeat.
    pub spooled_batches: i64,
    /// Placed minus guest wall-clock time of the newest sample, ms ([`crate::timeaxis`]).
    pub clock_offset_ms: i64,
    /// Times a second live agent for this instance was refused (a cloned image).
    pub agent_conflicts: i64,
}

/// Result of a registration attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum RegisterOutcome {
    /// Registered or updated; the state the agent must apply.
    Registered(DesiredState),
    /// The instance id belongs to another project; nothing changed.
    ForeignProject,
    /// A new id equal but for letter case to an existing one (ids are unique ignoring case).
    CaseCollision {
        /// The id already registered.
        existing: String,
    },
    /// The token already registered its quota of instances.
    QuotaExceeded {
        /// The quota.
        limit: u32,
    },
    /// The token registered its allowance of new instances in the last minute.
    RateLimited {
        /// New instances allowed per minute.
        per_minute: u32,
    },
}

/// Registration limits are configuration; the store applies them.
pub use crate::config::RegisterLimits;

const COLUMNS: &str = "instance_id, project, region, party, hostname, cpu_count, mem_total_bytes,
    disk_total_bytes, lan_ips, wan_ips, agent_version, os, created_at_ms, updated_at_ms,
    last_seen_ms, monitoring, interval_secs, dropped_samples, spooled_batches, clock_offset_ms, agent_conflicts, net_interfaces";

fn split_ips(s: String) -> Vec<String> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

fn from_row(r: &Row<'_>) -> Result<InstanceRow> {
    Ok(InstanceRow {
        instance_id: r.get(0)?,
        project: r.get(1)?,
        region: r.get(2)?,
        party: r.get(3)?,
        inventory: Inventory {
            hostname: r.get(4)?,
            cpu_count: r.get(5)?,
            mem_total_bytes: r.get::<_, i64>(6)? as u64,
            disk_total_bytes: r.get::<_, i64>(7)? as u64,
            lan_ips: split_ips(r.get(8)?),
            wan_ips: split_ips(r.get(9)?),
            agent_version: r.get(10)?,
            os: r.get(11)?,
            net_interfaces_counted: split_ips(r.get(21)?),
        },
        created_at_ms: r.get(12)?,
        updated_at_ms: r.get(13)?,
        last_seen_ms: r.get(14)?,
        desired: DesiredState {
            monitoring: r.get(15)?,
            interval_secs: r.get(16)?,
        },
        dropped_samples: r.get(17)?,
        spooled_batches: r.get(18)?,
        clock_offset_ms: r.get(19)?,
        agent_conflicts: r.get(20)?,
    })
}

/// Registers `instance_id` for the token's project, or refreshes its inventory.
pub fn register(
    conn: &Connection,
    instance_id: &str,
    token: &AgentTokenRow,
    inventory: &Inventory,
    configured_interval_secs: u32,
    now_ms: i64,
    limits: RegisterLimits,
) -> Result<RegisterOutcome> {
    let existing = get(conn, instance_id)?;
    if existing
        .as_ref()
        .is_some_and(|row| row.project != token.project)
    {
        return Ok(RegisterOutcome::ForeignProject);
    }
    if existing.is_none() {
        let twin_sql = if conn.is_pg() {
            "SELECT instance_id FROM instances WHERE lower(instance_id) = lower(?1) LIMIT 1"
        } else {
            "SELECT instance_id FROM instances WHERE instance_id = ?1 COLLATE NOCASE LIMIT 1"
        };
        let twin: Option<String> = conn
            .query_row(twin_sql, [instance_id], |r| r.get(0))
            .optional()?;
        if let Some(existing) = twin {
            return Ok(RegisterOutcome::CaseCollision { existing });
        }
        let (total, recent): (i64, i64) = conn.query_row(
            "SELECT COUNT(*), COALESCE(SUM(CASE WHEN created_at_ms > ?2 THEN 1 ELSE 0 END), 0) FROM instances
             WHERE token_id = ?1",
            params![token.id, now_ms - 60_000],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        if total >= i64::from(limits.max_instances_per_token) {
            return Ok(RegisterOutcome::QuotaExceeded {
                limit: limits.max_instances_per_token,
            });
        }
        if recent >= i64::from(limits.max_new_per_minute) {
            return Ok(RegisterOutcome::RateLimited {
                per_minute: limits.max_new_per_minute,
            });
        }
    }
    // `updated_at` moves only when what the VM list shows changes.
    let changed = existing.as_ref().is_none_or(|row| {
        row.inventory != *inventory || row.region != token.region || row.party != token.party
    });
    // PostgreSQL's key holds the project (the Citus distribution column); it never changes for
    // an instance (`ForeignProject` above), so the conflict is the same row either way.
    let key = if conn.is_pg() {
        "instance_id, project"
    } else {
        "instance_id"
    };
    conn.execute(
        &format!("INSERT INTO instances AS t (instance_id, project, region, party, token_id, hostname,
             cpu_count, mem_total_bytes, disk_total_bytes, lan_ips, wan_ips, agent_version,
             os, created_at_ms, updated_at_ms, last_seen_ms, monitoring, interval_secs,
             net_interfaces)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?14, ?14, 0, ?15,
             ?17)
         ON CONFLICT({key}) DO UPDATE SET
             region = excluded.region, party = excluded.party, token_id = excluded.token_id,
             hostname = excluded.hostname, cpu_count = excluded.cpu_count,
             mem_total_bytes = excluded.mem_total_bytes,
             disk_total_bytes = excluded.disk_total_bytes, lan_ips = excluded.lan_ips,
             wan_ips = excluded.wan_ips, agent_version = excluded.agent_version, os = excluded.os,
             net_interfaces = excluded.net_interfaces,
             last_seen_ms = excluded.last_seen_ms,
             updated_at_ms = CASE WHEN ?16 <> 0 THEN excluded.updated_at_ms ELSE t.updated_at_ms END,
             interval_secs = CASE WHEN t.interval_by_admin <> 0 THEN t.interval_secs
                                  ELSE excluded.interval_secs END"),
        params![
            instance_id,
            token.project,
            token.region,
            token.party,
            token.id,
            inventory.hostname,
            inventory.cpu_count,
            inventory.mem_total_bytes as i64,
            inventory.disk_total_bytes as i64,
            inventory.lan_ips.join(","),
            inventory.wan_ips.join(","),
            inventory.agent_version,
            inventory.os,
            now_ms,
            configured_interval_secs,
            changed,
            inventory.net_interfaces_counted.join(","),
        ],
    )?;
    let desired = get(conn, instance_id)?.map_or(
        DesiredState {
            monitoring: false,
            interval_secs: configured_interval_secs,
        },
        |r| r.desired,
    );
    Ok(RegisterOutcome::Registered(desired))
}

/// One instance.
pub fn get(conn: &Connection, instance_id: &str) -> Result<Option<InstanceRow>> {
    let sql = format!("SELECT {COLUMNS} FROM instances WHERE instance_id = ?1");
    conn.query_row(&sql, [instance_id], from_row).optional()
}

/// Instances of one project (all projects when `project` is None), by instance id.
pub fn list(conn: &Connection, project: Option<&str>) -> Result<Vec<InstanceRow>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM instances WHERE (?1 IS NULL OR project = ?1) ORDER BY instance_id"
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map([project], from_row)?;
    rows.collect::<Result<Vec<_>>>()
}

/// Persists a new desired state; false when the instance does not exist. `interval_by_admin`
/// pins the interval against the agent's own configuration on later registrations.
pub fn set_desired(
    conn: &Connection,
    instance_id: &str,
    desired: DesiredState,
    interval_by_admin: bool,
) -> Result<bool> {
    Ok(conn.execute(
        "UPDATE instances SET monitoring = ?2, interval_secs = ?3,
             interval_by_admin = CASE WHEN interval_by_admin <> 0 OR ?4 <> 0 THEN 1 ELSE 0 END
         WHERE instance_id = ?1",
        params![
            instance_id,
            desired.monitoring,
            desired.interval_secs,
            interval_by_admin
        ],
    )? > 0)
}

/// Records liveness and the agent's delivery counters.
pub fn record_seen(
    conn: &Connection,
    key: super::InstanceKey<'_>,
    now_ms: i64,
    dropped_samples_total: Option<u64>,
    spooled_batches: Option<u64>,
) -> Result<()> {
    // Cached statements: these run once per ingested batch.
    let sql = if conn.is_pg() {
        "UPDATE instances SET last_seen_ms = GREATEST(last_seen_ms, ?2),
             dropped_samples = GREATEST(dropped_samples, COALESCE(CAST(?3 AS BIGINT), 0)),
             spooled_batches = COALESCE(CAST(?4 AS BIGINT), spooled_batches)
         WHERE instance_id = ?1 AND project = ?5"
    } else {
        "UPDATE instances SET last_seen_ms = MAX(last_seen_ms, ?2),
             dropped_samples = MAX(dropped_samples, COALESCE(?3, 0)),
             spooled_batches = COALESCE(?4, spooled_batches)
         WHERE instance_id = ?1"
    };
    conn.execute_later(
        sql,
        conn.scoped(params![
            key.instance_id,
            now_ms,
            // Beyond `i64` (no agent drops that many): ignored, not wrapped negative.
            dropped_samples_total.and_then(|v| i64::try_from(v).ok()),
            spooled_batches.and_then(|v| i64::try_from(v).ok()),
            key.project
        ]),
    )
}

/// What one stored (or resent) batch leaves on its instance's row: [`record_seen`]'s figures,
/// and, with the instance's first new batch of a group, its time-axis state as the group leaves
/// it.
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    /// The instance (with its project: [`super::InstanceKey`]).
    pub key: super::InstanceKey<'a>,
    /// Newest sample time of the batch (never after its receipt), epoch ms.
    pub seen_ms: i64,
    /// The agent's dropped-samples total in the batch.
    pub dropped_samples_total: u64,
    /// The time-axis state to store ([`set_clock_state`]).
    pub clock: Option<ClockState>,
}

/// [`set_clock_state`] and [`record_seen`] for the batches a writer stores in one
/// transaction. On PostgreSQL one `UPDATE … FROM UNNEST` for all their instances instead of one
/// statement per batch and one per instance (the last seen time and the drop count are maxima,
/// the clock state the last given per instance: the same row either way); on SQLite those
/// statements. A drop count beyond `i64` is ignored, as [`record_seen`] ignores it.
pub fn record_ingest(conn: &Connection, seen: &[Seen<'_>]) -> Result<()> {
    let Connection::Pg(pg) = conn else {
        for s in seen {
            if let Some(clock) = s.clock {
                set_clock_state(conn, s.key, clock)?;
            }
        }
        for s in seen {
            record_seen(conn, s.key, s.seen_ms, Some(s.dropped_samples_total), None)?;
        }
        return Ok(());
    };
    // Per instance: (newest seen, largest drop count, last clock state).
    let mut rows: Vec<(super::InstanceKey<'_>, i64, i64, Option<ClockState>)> = Vec::new();
    let mut at: std::collections::HashMap<(&str, &str), usize> = std::collections::HashMap::new();
    for s in seen {
        let dropped = i64::try_from(s.dropped_samples_total).unwrap_or(0);
        match at.get(&(s.key.project, s.key.instance_id)) {
            Some(&i) => {
                let r = &mut rows[i];
                r.1 = r.1.max(s.seen_ms);
                r.2 = r.2.max(dropped);
                r.3 = s.clock.or(r.3);
            }
            None => {
                at.insert((s.key.project, s.key.instance_id), rows.len());
                rows.push((s.key, s.seen_ms, dropped, s.clock));
            }
        }
    }
    if rows.is_empty() {
        return Ok(());
    }
    let clock = |f: fn(&ClockState) -> Option<i64>| -> Vec<Option<i64>> {
        rows.iter().map(|r| r.3.as_ref().and_then(f)).collect()
    };
    pg.execute_native_later(
        "UPDATE instances AS i SET
             last_seen_ms = GREATEST(i.last_seen_ms, u.seen_ms),
             dropped_samples = GREATEST(i.dropped_samples, u.dropped),
             clock_last_raw_ms = CASE WHEN u.clocked THEN u.raw_ms ELSE i.clock_last_raw_ms END,
             clock_last_placed_ms =
                 CASE WHEN u.clocked THEN u.placed_ms ELSE i.clock_last_placed_ms END,
             clock_offset_ms = CASE WHEN u.clocked THEN u.offset_ms ELSE i.clock_offset_ms END,
             clock_last_uptime_ms =
                 CASE WHEN u.clocked THEN u.uptime_ms ELSE i.clock_last_uptime_ms END
         FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], $5::bool[], $6::int8[],
                     $7::int8[], $8::int8[], $9::int8[])
             AS u(project, instance_id, seen_ms, dropped, clocked, raw_ms, placed_ms,
                  offset_ms, uptime_ms)
         WHERE i.project = u.project AND i.instance_id = u.instance_id",
        vec![
            Box::new(
                rows.iter()
                    .map(|r| r.0.project.to_owned())
                    .collect::<Vec<String>>(),
            ),
            Box::new(
                rows.iter()
                    .map(|r| r.0.instance_id.to_owned())
                    .collect::<Vec<String>>(),
            ),
            Box::new(rows.iter().map(|r| r.1).collect::<Vec<i64>>()),
            Box::new(rows.iter().map(|r| r.2).collect::<Vec<i64>>()),
            Box::new(rows.iter().map(|r| r.3.is_some()).collect::<Vec<bool>>()),
            Box::new(clock(|c| Some(c.last_raw_ms))),
            Box::new(clock(|c| Some(c.last_placed_ms))),
            Box::new(clock(|c| Some(c.offset_ms))),
            Box::new(clock(|c| c.last_uptime_ms)),
        ],
    )
}

/// Records which agent reports the instance. When it is another agent than before (a clone that
/// took over, a reinstalled VM), the bandwidth baseline and the time axis restart, so counters
/// are never differenced across two agents. Returns whether the agent changed.
pub fn set_agent_uid(conn: &Connection, instance_id: &str, agent_uid: &str) -> Result<bool> {
    let before: Option<String> = conn
        .query_row(
            "SELECT agent_uid FROM instances WHERE instance_id = ?1",
            [instance_id],
            |r| r.get(0),
        )
        .optional()?
        .flatten();
    if before.as_deref() == Some(agent_uid) {
        return Ok(false);
    }
    conn.execute(
        "UPDATE instances SET agent_uid = ?2, clock_last_raw_ms = NULL,
             clock_last_placed_ms = NULL, clock_offset_ms = 0, clock_last_uptime_ms = NULL
         WHERE instance_id = ?1",
        params![instance_id, agent_uid],
    )?;
    conn.execute(
        "DELETE FROM bandwidth_counters WHERE instance_id = ?1",
        [instance_id],
    )?;
    Ok(before.is_some())
}

/// Counts a refused second live agent for the instance.
pub fn record_agent_conflict(conn: &Connection, instance_id: &str, now_ms: i64) -> Result<()> {
    conn.execute(
        "UPDATE instances SET agent_conflicts = agent_conflicts + 1, last_conflict_ms = ?2
         WHERE instance_id = ?1",
        params![instance_id, now_ms],
    )?;
    Ok(())
}

/// The instance's time-axis state, None before its first sample (or for an unknown id).
pub fn clock_state(conn: &Connection, instance_id: &str) -> Result<Option<ClockState>> {
    let row = conn
        .prepare_cached(
            "SELECT clock_last_raw_ms, clock_last_placed_ms, clock_offset_ms,
                 clock_last_uptime_ms
             FROM instances WHERE instance_id = ?1",
        )?
        .query_row([instance_id], |r| {
            Ok((
                r.get::<_, Option<i64>>(0)?,
                r.get::<_, Option<i64>>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Option<i64>>(3)?,
            ))
        })
        .optional()?;
    Ok(match row {
        Some((Some(last_raw_ms), Some(last_placed_ms), offset_ms, last_uptime_ms)) => {
            Some(ClockState {
                last_raw_ms,
                last_placed_ms,
                offset_ms,
                last_uptime_ms,
            })
        }
        _ => None,
    })
}

/// Keeps the instance's time-axis state after a batch.
pub fn set_clock_state(
    conn: &Connection,
    key: super::InstanceKey<'_>,
    s: ClockState,
) -> Result<()> {
    conn.execute_later(
        &format!(
            "UPDATE instances SET clock_last_raw_ms = ?2, clock_last_placed_ms = ?3,
                 clock_offset_ms = ?4, clock_last_uptime_ms = ?5 WHERE instance_id = ?1{}",
            conn.project_filter(6)
        ),
        conn.scoped(params![
            key.instance_id,
            s.last_raw_ms,
            s.last_placed_ms,
            s.offset_ms,
            s.last_uptime_ms,
            key.project
        ]),
    )
}

/// Removes an instance and its raw samples (VM, process, their per-minute chart rollup, dedup
/// ids, bandwidth counter reading);
/// rollups already computed stay. Frees the id for a registration by any project: for
/// decommissioned VMs, and for ids another project registered first. False when unknown.
pub fn remove(conn: &Connection, instance_id: &str) -> Result<bool> {
    let project: Option<String> = conn
        .query_row(
            "DELETE FROM instances WHERE instance_id = ?1 RETURNING project",
            [instance_id],
            |r| r.get(0),
        )
        .optional()?;
    let Some(project) = project else {
        return Ok(false);
    };
    // On PostgreSQL each delete names the project (one shard on Citus).
    let tenant = conn.project_filter(2);
    for table in [
        "process_samples",
        "vm_samples",
        "vm_minutes",
        "batches",
        "bandwidth_counters",
    ] {
        conn.execute(
            &format!("DELETE FROM {table} WHERE instance_id = ?1{tenant}"),
            conn.scoped(params![instance_id, project]),
        )?;
    }
    Ok(true)
}
