//! VM and process samples: deduplicated batch inserts and the legacy API's queries.

use super::db::{Connection, OptionalExtension, Row, params};
use vmmon_common::wire::ReportBatch;

use super::{InstanceKey, Result};

/// A stored VM sample.
#[derive(Debug, Clone, PartialEq)]
pub struct VmRow {
    /// Row id (feeds the ObjectId-style `_id`).
    pub id: i64,
    /// Instance id.
    pub instance_id: String,
    /// Sample time, epoch ms.
    pub sampled_at_ms: i64,
    /// Busy share of all CPUs, %.
    pub cpu_pct: f64,
    /// Memory used, %.
    pub mem_pct: f64,
    /// KB/s.
    pub disk_read: f64,
    /// KB/s.
    pub disk_write: f64,
    /// KB/s.
    pub net_in: f64,
    /// KB/s.
    pub net_out: f64,
    /// Cumulative bytes.
    pub rx_bytes_total: i64,
    /// Cumulative bytes.
    pub tx_bytes_total: i64,
    /// Process count.
    pub proc_count: i64,
    /// Traffic attributed to processes / not, KB/s: `[in, out, unattributed in, unattributed
    /// out]`; `None` where it was not measured.
    pub net_attribution: Option<[f64; 4]>,
    /// Steal share of all CPUs, %; `None` when the agent did not report it.
    pub cpu_steal_pct: Option<f64>,
    /// Processes with a figure the agent could not read; `None` when not reported.
    pub unreadable_procs: Option<i64>,
}

/// A stored process sample.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessRow {
    /// Row id (feeds the ObjectId-style `_id`).
    pub id: i64,
    /// Instance id.
    pub instance_id: String,
    /// Sample time, epoch ms.
    pub sampled_at_ms: i64,
    /// Process id.
    pub pid: i64,
    /// Start time, epoch seconds.
    pub start_time: f64,
    /// Process name.
    pub cmd: String,
    /// Share of the VM's CPU, %.
    pub cpu_pct: f64,
    /// RSS share of MemTotal, %.
    pub mem_pct: f64,
    /// KB/s.
    pub disk_read: f64,
    /// KB/s.
    pub disk_write: f64,
    /// KB/s.
    pub net_in: f64,
    /// KB/s.
    pub net_out: f64,
    /// Epoch seconds on an exited process's final record.
    pub shutdown_time: Option<f64>,
    /// The agent could not read the disk figures (`/proc/PID/io` refused): they are null.
    pub disk_unreadable: bool,
}

/// Stores a batch unless this instance sent its id before (dedup is per instance); true when
/// stored, false for a duplicate. (Store tests only: ingest runs [`remember_batch`] and
/// [`insert_samples`] itself, with the time axis between them.)
#[cfg(test)]
pub fn insert_batch(
    conn: &Connection,
    batch: &ReportBatch,
    project: &str,
    now_ms: i64,
) -> Result<bool> {
    if !remember_batch(conn, batch, project, now_ms)? {
        return Ok(false);
    }
    insert_samples(conn, batch, project)?;
    Ok(true)
}

/// Remembers the batch's id for its instance (of `project`: the column exists on PostgreSQL
/// only, [`InstanceKey`]); false when it was remembered before (a resend).
pub fn remember_batch(
    conn: &Connection,
    batch: &ReportBatch,
    project: &str,
    now_ms: i64,
) -> Result<bool> {
    // Cached: runs once per ingested batch.
    let sql = if conn.is_pg() {
        "INSERT INTO batches (batch_id, instance_id, received_at_ms, seq, project)
         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING"
    } else {
        "INSERT INTO batches (batch_id, instance_id, received_at_ms, seq)
         VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING"
    };
    let inserted = conn.prepare_cached(sql)?.execute(conn.scoped(params![
        batch.batch_id.to_string(),
        batch.instance_id,
        now_ms,
        i64::try_from(batch.seq).ok(),
        project
    ]))?;
    Ok(inserted > 0)
}

/// What ingest needs to know before storing a new batch, read with its dedup (on PostgreSQL in
/// the same statement, one round trip).
#[derive(Debug, Clone, PartialEq)]
pub struct BatchStart {
    /// The instance's time-axis state ([`super::instances::clock_state`]).
    pub clock: Option<crate::timeaxis::ClockState>,
    /// The instance's project and region; `None` for an unknown instance.
    pub owner: Option<(String, String)>,
    /// The instance's last bandwidth counter reading ([`super::bandwidth::last_reading`]).
    pub last_reading: Option<crate::bandwidth::Reading>,
    /// The project the batch's rows are stored with: always the agent token's (an instance of
    /// that id registered by another project makes the batch [`Start::Foreign`] instead).
    pub project: String,
}

/// How a batch starts ([`start_batch`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Start {
    /// A new batch (its id is now remembered), with the state ingest continues from.
    New(BatchStart),
    /// A resend: stored before.
    Duplicate,
    /// Its instance id is registered by another project than the batch's token (removed and
    /// taken while the agent was still connected): not remembered, not to be stored.
    Foreign,
}

/// [`remember_batch`] and, for a new batch, the state ingest continues from ([`Start`]). PostgreSQL does both in one statement ([`start_batches`]): the dedup
/// insert as a data-modifying `WITH`, the state read beside it. `project` is the agent token's:
/// the rows are stored with it, and the state is read only from an instance of that project.
pub fn start_batch(
    conn: &Connection,
    batch: &ReportBatch,
    project: &str,
    now_ms: i64,
) -> Result<Start> {
    if conn.is_pg() {
        return Ok(start_batches(conn, &[(batch, project, now_ms)])?
            .pop()
            .unwrap_or(Start::Duplicate));
    }
    let id = &batch.instance_id;
    let owner = super::bandwidth::owner(conn, id)?;
    if owner.as_ref().is_some_and(|(p, _)| p != project) {
        return Ok(Start::Foreign);
    }
    if !remember_batch(conn, batch, project, now_ms)? {
        return Ok(Start::Duplicate);
    }
    let (clock, last_reading) = match owner {
        Some(_) => (
            super::instances::clock_state(conn, id)?,
            super::bandwidth::last_reading(conn, id)?,
        ),
        None => (None, None),
    };
    Ok(Start::New(BatchStart {
        clock,
        project: project.to_string(),
        owner,
        last_reading,
    }))
}

/// [`start_batch`] for several batches at once (the writer's group, in arrival order): one
/// statement on PostgreSQL. A batch id repeated within `batches` is new at most once (its first
/// time). The state is the stored one: a caller storing two batches of one instance carries the
/// state from the first to the second itself.
pub fn start_batches(
    conn: &Connection,
    batches: &[(&ReportBatch, &str, i64)],
) -> Result<Vec<Start>> {
    let Connection::Pg(pg) = conn else {
        return batches
            .iter()
            .map(|(b, project, now_ms)| start_batch(conn, b, project, *now_ms))
            .collect();
    };
    // Only a batch id's first occurrence in the group goes to the database.
    let mut seen = std::collections::HashMap::new();
    let first_of: Vec<usize> = (0..batches.len())
        .map(|k| {
            let b = batches[k].0;
            *seen
                .entry((b.instance_id.as_str(), b.batch_id))
                .or_insert(k)
        })
        .collect();
    let firsts: Vec<usize> = (0..batches.len()).filter(|&k| first_of[k] == k).collect();
    let ids: Vec<String> = firsts
        .iter()
        .map(|&k| batches[k].0.batch_id.to_string())
        .collect();
    let instances: Vec<&str> = firsts
        .iter()
        .map(|&k| batches[k].0.instance_id.as_str())
        .collect();
    let received: Vec<i64> = firsts.iter().map(|&k| batches[k].2).collect();
    let projects: Vec<&str> = firsts.iter().map(|&k| batches[k].1).collect();
    let seqs: Vec<Option<i64>> = firsts
        .iter()
        .map(|&k| i64::try_from(batches[k].0.seq).ok())
        .collect();
    // One read of each batch's instance: whether another project holds the id, and otherwise
    // its state (a foreign batch's state columns are that project's, and are not used).
    let rows = pg.query_native(
        "WITH input AS (
             SELECT t.*, t.token_project AS project,
                 x.project IS NOT NULL AND x.project <> t.token_project AS foreign_instance,
                 x.clock_last_raw_ms, x.clock_last_placed_ms, x.clock_offset_ms,
                 x.clock_last_uptime_ms, x.project AS owner_project, x.region AS owner_region
             FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], $5::text[])
                 WITH ORDINALITY AS t(batch_id, instance_id, received_at_ms, seq, token_project, n)
             LEFT JOIN instances x ON x.instance_id = t.instance_id),
         new AS (
             INSERT INTO batches (batch_id, instance_id, received_at_ms, seq, project)
             SELECT batch_id, instance_id, received_at_ms, seq, project FROM input
             WHERE NOT foreign_instance ORDER BY n
             ON CONFLICT DO NOTHING RETURNING batch_id, instance_id)
         SELECT new.batch_id IS NOT NULL, input.clock_last_raw_ms, input.clock_last_placed_ms,
             input.clock_offset_ms, input.clock_last_uptime_ms, input.owner_project,
             input.owner_region, c.sampled_at_ms, c.rx_bytes, c.tx_bytes, input.project,
             input.foreign_instance
         FROM input
         LEFT JOIN new ON new.batch_id = input.batch_id AND new.instance_id = input.instance_id
         LEFT JOIN bandwidth_counters c
             ON c.instance_id = input.instance_id AND c.project = input.project
         ORDER BY input.n",
        &[&ids, &instances, &received, &seqs, &projects],
    )?;
    if rows.len() != firsts.len() {
        return Err(super::StoreError::Corrupt(format!(
            "batch dedup answered {} rows for {} batches",
            rows.len(),
            firsts.len()
        )));
    }
    // A repeat of an id within the group is a duplicate (a foreign one's is foreign, below).
    let mut out: Vec<Start> = vec![Start::Duplicate; batches.len()];
    for (&k, r) in firsts.iter().zip(&rows) {
        let r = Row::Pg(r);
        let new: bool = r.get(0)?;
        let foreign: bool = r.get(11)?;
        if foreign {
            out[k] = Start::Foreign;
        } else if new {
            let mut start = start_from_row(&r, 1)?;
            start.project = r.get(10)?;
            out[k] = Start::New(start);
        }
    }
    for (k, &first) in first_of.iter().enumerate() {
        if first != k && out[first] == Start::Foreign {
            out[k] = Start::Foreign;
        }
    }
    Ok(out)
}

/// A [`BatchStart`] from the columns at `from`: the four clock columns, project, region and
/// the three counter columns.
fn start_from_row(r: &Row<'_>, from: usize) -> Result<BatchStart> {
    let col = |k: usize| -> Result<Option<i64>> { r.get(from + k) };
    let project: Option<String> = r.get(from + 4)?;
    let region: Option<String> = r.get(from + 5)?;
    Ok(BatchStart {
        clock: match (col(0)?, col(1)?, col(2)?) {
            (Some(last_raw_ms), Some(last_placed_ms), Some(offset_ms)) => {
                Some(crate::timeaxis::ClockState {
                    last_raw_ms,
                    last_placed_ms,
                    offset_ms,
                    last_uptime_ms: col(3)?,
                })
            }
            _ => None,
        },
        owner: project.zip(region),
        last_reading: match (col(6)?, col(7)?, col(8)?) {
            // Counters are stored bit-for-bit as i64.
            (Some(at_ms), Some(rx), Some(tx)) => Some(crate::bandwidth::Reading {
                at_ms,
                rx: rx as u64,
                tx: tx as u64,
            }),
            _ => None,
        },
        project: String::new(),
    })
}

/// [`insert_samples`] for several new batches, each with its instance's project: on
/// PostgreSQL each table's rows of all of them in one statement.
pub fn insert_samples_many(conn: &Connection, batches: &[(&ReportBatch, &str)]) -> Result<()> {
    match conn {
        Connection::Pg(pg) => insert_samples_pg(pg, batches)?,
        Connection::Sqlite(_) => {
            for (b, _) in batches {
                insert_samples_sqlite(conn, b)?;
            }
        }
    }
    super::series::add_to_minutes_many(conn, batches)
}

/// Stores the batch's VM and process samples (with `project`, its instance's, on PostgreSQL:
/// [`InstanceKey`]), and adds the VM samples to the per-minute rollup the charts read
/// ([`super::series::add_to_minutes`]). Call after [`remember_batch`] said the batch is new, in
/// the same transaction.
pub fn insert_samples(conn: &Connection, batch: &ReportBatch, project: &str) -> Result<()> {
    insert_samples_many(conn, &[(batch, project)])
}

fn insert_samples_sqlite(conn: &Connection, batch: &ReportBatch) -> Result<()> {
    let mut vm_stmt = conn.prepare_cached(
        "INSERT INTO vm_samples (instance_id, sampled_at_ms, elapsed_ms, cpu_pct, mem_pct,
             disk_read, disk_write, net_in, net_out, rx_bytes_total, tx_bytes_total, proc_count,
            net_attributed_in, net_attributed_out, net_unattributed_in, net_unattributed_out,
            cpu_steal_pct, unreadable_procs)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
    )?;
    let mut proc_stmt = conn.prepare_cached(
        "INSERT INTO process_samples (instance_id, sampled_at_ms, pid, start_time, cmd, cpu_pct,
             mem_pct, disk_read, disk_write, net_in, net_out, shutdown_time, disk_unreadable)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?;
    for sample in &batch.samples {
        let vm = &sample.vm;
        vm_stmt.execute(params![
            batch.instance_id,
            vm.sampled_at_ms,
            vm.elapsed_ms as i64,
            vm.cpu_pct,
            vm.mem_pct,
            vm.disk_read_kib_per_sec,
            vm.disk_write_kib_per_sec,
            vm.net_in_kib_per_sec,
            vm.net_out_kib_per_sec,
            vm.rx_bytes_total as i64,
            vm.tx_bytes_total as i64,
            vm.proc_count,
            vm.net_attribution.map(|a| a.attributed_in_kib_per_sec),
            vm.net_attribution.map(|a| a.attributed_out_kib_per_sec),
            vm.net_attribution.map(|a| a.unattributed_in_kib_per_sec),
            vm.net_attribution.map(|a| a.unattributed_out_kib_per_sec),
            vm.cpu_steal_pct,
            vm.unreadable_procs,
        ])?;
        for p in sample.processes.iter().flatten() {
            proc_stmt.execute(params![
                batch.instance_id,
                vm.sampled_at_ms,
                p.pid,
                p.start_time,
                p.cmd,
                p.cpu_pct,
                p.mem_pct,
                p.disk_read_kib_per_sec,
                p.disk_write_kib_per_sec,
                p.net_in_kib_per_sec,
                p.net_out_kib_per_sec,
                p.shutdown_time,
                p.unreadable.iter().any(|f| f.starts_with("disk_")),
            ])?;
        }
    }
    Ok(())
}

const VM_COLUMNS: &str = "id, instance_id, sampled_at_ms, cpu_pct, mem_pct, disk_read, disk_write,
    net_in, net_out, rx_bytes_total, tx_bytes_total, proc_count,
    net_attributed_in, net_attributed_out, net_unattributed_in, net_unattributed_out,
    cpu_steal_pct, unreadable_procs";

fn vm_from_row(r: &Row<'_>) -> Result<VmRow> {
    Ok(VmRow {
        id: r.get(0)?,
        instance_id: r.get(1)?,
        sampled_at_ms: r.get(2)?,
        cpu_pct: r.get(3)?,
        mem_pct: r.get(4)?,
        disk_read: r.get(5)?,
        disk_write: r.get(6)?,
        net_in: r.get(7)?,
        net_out: r.get(8)?,
        rx_bytes_total: r.get(9)?,
        tx_bytes_total: r.get(10)?,
        proc_count: r.get(11)?,
        net_attribution: match (r.get(12)?, r.get(13)?, r.get(14)?, r.get(15)?) {
            (Some(a), Some(b), Some(c), Some(d)) => Some([a, b, c, d]),
            _ => None,
        },
        cpu_steal_pct: r.get(16)?,
        unreadable_procs: r.get(17)?,
    })
}

const PROC_COLUMNS: &str = "id, instance_id, sampled_at_ms, pid, start_time, cmd, cpu_pct, mem_pct,
    disk_read, disk_write, net_in, net_out, shutdown_time, disk_unreadable";

fn proc_from_row(r: &Row<'_>) -> Result<ProcessRow> {
    Ok(ProcessRow {
        id: r.get(0)?,
        instance_id: r.get(1)?,
        sampled_at_ms: r.get(2)?,
        pid: r.get(3)?,
        start_time: r.get(4)?,
        cmd: r.get(5)?,
        cpu_pct: r.get(6)?,
        mem_pct: r.get(7)?,
        disk_read: r.get(8)?,
        disk_write: r.get(9)?,
        net_in: r.get(10)?,
        net_out: r.get(11)?,
        shutdown_time: r.get(12)?,
        disk_unreadable: r.get(13)?,
    })
}

/// How far before an instance's `last_seen_ms` [`newest_first`] looks first, ms (one day).
const RECENT_WINDOW_MS: i64 = 86_400_000;

/// The condition [`newest_first`] adds (on PostgreSQL only) to a query on one instance's
/// samples (`?1`) of a project (`?{project}`).
fn recent_window(project: usize) -> String {
    format!(
        " AND sampled_at_ms >= (SELECT last_seen_ms FROM instances
             WHERE instance_id = ?1 AND project = ?{project}) - {RECENT_WINDOW_MS}"
    )
}

/// Runs a "newest rows of one instance" query. On PostgreSQL an unbounded query reads every
/// day partition (an index descent in each, ~30 of them); the newest rows are almost always
/// in the day before the instance was last seen, so the query (`sql(window)`) first runs with
/// the window [`recent_window`] (execution-time partition pruning leaves a day or two) and falls
/// back to all days only when that holds fewer than `enough` rows. Rows inside the window are
/// newer than any row outside it, so the answer is the same either way. SQLite runs the
/// unbounded query. The project is the query's parameter `project`.
fn newest_first<T>(
    conn: &Connection,
    project: usize,
    sql: impl Fn(&str) -> String,
    enough: usize,
    run: impl Fn(&str) -> Result<Vec<T>>,
) -> Result<Vec<T>> {
    if conn.is_pg() {
        let rows = run(&sql(&recent_window(project)))?;
        if rows.len() >= enough {
            return Ok(rows);
        }
    }
    run(&sql(""))
}

/// The newest `limit` VM samples of an instance, newest first.
pub fn latest_vm(conn: &Connection, key: InstanceKey<'_>, limit: u32) -> Result<Vec<VmRow>> {
    let tenant = conn.project_filter(3);
    newest_first(
        conn,
        3,
        |window| {
            format!(
                "SELECT {VM_COLUMNS} FROM vm_samples WHERE instance_id = ?1{tenant}{window}
                 ORDER BY sampled_at_ms DESC, id DESC LIMIT ?2"
            )
        },
        limit as usize,
        |sql| {
            let mut stmt = conn.prepare_cached(sql)?;
            let p = params![key.instance_id, limit, key.project];
            let rows = stmt.query_map(conn.scoped(p), vm_from_row)?;
            rows.collect::<Result<Vec<_>>>()
        },
    )
}

/// One instance's newest VM sample with the instance's labels, for `/metrics`.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetRow {
    /// Project of the instance.
    pub project: String,
    /// Region of the instance.
    pub region: String,
    /// Samples the agent dropped, total.
    pub dropped_samples: i64,
    /// Last register, heartbeat or report, epoch ms.
    pub last_seen_ms: i64,
    /// Sampling interval, seconds.
    pub interval_secs: u32,
    /// The newest VM sample, if any.
    pub vm: Option<VmRow>,
}

/// Every instance (of `project`, or all) with its newest VM sample, by instance id: one index
/// lookup per instance.
pub fn fleet(conn: &Connection, project: Option<&str>) -> Result<Vec<FleetRow>> {
    if conn.is_pg() {
        return fleet_pg(conn, project);
    }
    let mut list = conn.prepare_cached(
        "SELECT instance_id, project, region, dropped_samples, last_seen_ms, interval_secs
         FROM instances WHERE ?1 IS NULL OR project = ?1 ORDER BY instance_id",
    )?;
    let instances = list
        .query_map([project], |r| fleet_row(r, 0, None))?
        .collect::<Result<Vec<_>>>()?;
    with_newest_vm(conn, instances)
}

/// An instance's id and its [`FleetRow`] from the columns `instance_id, project, region,
/// dropped_samples, last_seen_ms, interval_secs` starting at column `at`.
fn fleet_row(r: &Row<'_>, at: usize, vm: Option<VmRow>) -> Result<(String, FleetRow)> {
    Ok((
        r.get(at)?,
        FleetRow {
            project: r.get(at + 1)?,
            region: r.get(at + 2)?,
            dropped_samples: r.get(at + 3)?,
            last_seen_ms: r.get(at + 4)?,
            interval_secs: r.get(at + 5)?,
            vm,
        },
    ))
}

/// The rows, each instance without a sample yet given its newest one ([`latest_vm`]).
fn with_newest_vm(conn: &Connection, rows: Vec<(String, FleetRow)>) -> Result<Vec<FleetRow>> {
    let mut out = Vec::with_capacity(rows.len());
    for (id, mut row) in rows {
        if row.vm.is_none() {
            let key = InstanceKey {
                project: &row.project,
                instance_id: &id,
            };
            row.vm = latest_vm(conn, key, 1)?.pop();
        }
        out.push(row);
    }
    Ok(out)
}

/// [`fleet`] on PostgreSQL in one statement: an instance at a time, its newest sample in the day
/// before it was last seen (a lateral join, so the plan is made once and each instance's lookup
/// reads the one or two day partitions run-time pruning leaves, as [`newest_first`] does), then
/// [`latest_vm`] over all days for the instances with nothing in that window. One query per
/// instance instead took 1.7 – 2.3 s for 1,000 VMs on 50M rows, planning all 31 partitions each
/// time (docs/benchmarks.md §3).
fn fleet_pg(conn: &Connection, project: Option<&str>) -> Result<Vec<FleetRow>> {
    let sql = format!(
        "SELECT s.*, i.instance_id, i.project, i.region, i.dropped_samples, i.last_seen_ms,
             i.interval_secs
         FROM instances i LEFT JOIN LATERAL (
             SELECT {VM_COLUMNS} FROM vm_samples v
             WHERE v.project = i.project AND v.instance_id = i.instance_id
               AND v.sampled_at_ms >= i.last_seen_ms - {RECENT_WINDOW_MS}
             ORDER BY v.sampled_at_ms DESC, v.id DESC LIMIT 1) s ON true
         WHERE ?1 IS NULL OR i.project = ?1
         ORDER BY i.instance_id"
    );
    // The instance's columns follow the sample's (`VM_COLUMNS` are plain column names).
    let at = VM_COLUMNS.split(',').count();
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt
        .query_map([project], |r| {
            let found: Option<i64> = r.get(0)?;
            fleet_row(r, at, found.map(|_| vm_from_row(r)).transpose()?)
        })?
        .collect::<Result<Vec<_>>>()?;
    with_newest_vm(conn, rows)
}

/// The processes of an instance's newest process sample, busiest first, at most `limit`.
pub fn latest_processes(
    conn: &Connection,
    key: InstanceKey<'_>,
    limit: u32,
) -> Result<Vec<ProcessRow>> {
    let tenant = conn.project_filter(2);
    let newest: Vec<i64> = newest_first(
        conn,
        2,
        |window| {
            format!(
                "SELECT MAX(sampled_at_ms) FROM process_samples
                 WHERE instance_id = ?1{tenant}{window}"
            )
        },
        1,
        |sql| {
            let p = params![key.instance_id, key.project];
            let max: Option<i64> = conn.query_row(sql, conn.scoped(p), |r| r.get(0))?;
            Ok(max.into_iter().collect())
        },
    )?;
    let Some(&newest) = newest.first() else {
        return Ok(Vec::new());
    };
    let sql = format!(
        "SELECT {PROC_COLUMNS} FROM process_samples
         WHERE instance_id = ?1 AND sampled_at_ms = ?2{}
         ORDER BY cpu_pct DESC, pid LIMIT ?3",
        conn.project_filter(4)
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let p = params![key.instance_id, newest, limit, key.project];
    let rows = stmt.query_map(conn.scoped(p), proc_from_row)?;
    rows.collect::<Result<Vec<_>>>()
}

/// The newest `limit` records of processes named `cmd` on an instance, newest first.
pub fn process_history(
    conn: &Connection,
    key: InstanceKey<'_>,
    cmd: &str,
    limit: u32,
) -> Result<Vec<ProcessRow>> {
    let tenant = conn.project_filter(4);
    newest_first(
        conn,
        4,
        |window| {
            format!(
                "SELECT {PROC_COLUMNS} FROM process_samples
                 WHERE instance_id = ?1 AND cmd = ?2{tenant}{window}
                 ORDER BY sampled_at_ms DESC, id DESC LIMIT ?3"
            )
        },
        limit as usize,
        |sql| {
            let mut stmt = conn.prepare_cached(sql)?;
            let p = params![key.instance_id, cmd, limit, key.project];
            let rows = stmt.query_map(conn.scoped(p), proc_from_row)?;
            rows.collect::<Result<Vec<_>>>()
        },
    )
}

/// Count of VM samples of an instance (diagnostics and tests).
pub fn vm_sample_count(conn: &Connection, instance_id: &str) -> Result<i64> {
    conn.query_row(
        "SELECT COUNT(*) FROM vm_samples WHERE instance_id = ?1",
        [instance_id],
        |r| r.get(0),
    )
}

/// Deletes up to `max_rows` of each raw table's rows older than `cutoff_ms` (samples by sample
/// time, per-minute rollup rows whose minute ended by then, batch ids by receipt time); returns
/// how many rows went. Called repeatedly in small
/// chunks so the single writer never stalls ingest for long.
///
/// Sample ids grow with arrival, which is almost time order, so the old rows are the low ids:
/// each step finds the first row that must stay and deletes below it, costing time proportional
/// to what is deleted instead of a scan of the table. (A sample that arrives after newer ones,
/// e.g. from a long agent outage, is kept until the rows before it age out.)
pub fn purge_raw_before(conn: &Connection, cutoff_ms: i64, max_rows: i64) -> Result<usize> {
    let mut n = 0;
    for table in ["process_samples", "vm_samples"] {
        let keep_from: Option<i64> = conn
            .query_row(
                &format!("SELECT id FROM {table} WHERE sampled_at_ms >= ?1 ORDER BY id LIMIT 1"),
                [cutoff_ms],
                |r| r.get(0),
            )
            .optional()?;
        let bound = match keep_from {
            Some(id) => id,
            None => conn.query_row(
                &format!("SELECT COALESCE(MAX(id), 0) + 1 FROM {table}"),
                params![],
                |r| r.get(0),
            )?,
        };
        n += conn.execute(
            &format!(
                "DELETE FROM {table} WHERE sampled_at_ms < ?2 AND id IN (
                     SELECT id FROM {table} WHERE id < ?1 AND sampled_at_ms < ?2 ORDER BY id LIMIT ?3)"
            ),
            params![bound, cutoff_ms, max_rows],
        )?;
    }
    n += conn.execute(
        "DELETE FROM vm_minutes WHERE (instance_id, minute_ms) IN (
             SELECT instance_id, minute_ms FROM vm_minutes WHERE minute_ms <= ?1 LIMIT ?2)",
        params![cutoff_ms.saturating_sub(super::series::MINUTE_MS), max_rows],
    )?;
    n += conn.execute(
        "DELETE FROM batches WHERE (instance_id, batch_id) IN (
             SELECT instance_id, batch_id FROM batches WHERE received_at_ms < ?1 LIMIT ?2)",
        params![cutoff_ms, max_rows],
    )?;
    Ok(n)
}

/// Process rows from which [`insert_samples_pg`] copies them with a binary `COPY` (two round
/// trips, cheaper per row) instead of an `UNNEST` insert queued with the other writes.
const COPY_MIN_ROWS: usize = 2_000;

/// PostgreSQL: each table's rows of the batches in one statement (`UNNEST` of column arrays),
/// queued and sent pipelined with the other writes ([`Connection::execute_later`]); a group's
/// process rows from [`COPY_MIN_ROWS`] on with a binary `COPY` instead.
fn insert_samples_pg(pg: &super::db::PgConn, batches: &[(&ReportBatch, &str)]) -> Result<()> {
    use vmmon_common::wire::{ProcessSample, VmSample};
    let vms: Vec<(&str, &VmSample)> = batches
        .iter()
        .flat_map(|(b, _)| b.samples.iter().map(|s| (b.instance_id.as_str(), &s.vm)))
        .collect();
    // The project of each VM row (the batches' samples in the same order).
    let vm_projects: Vec<String> = batches
        .iter()
        .flat_map(|(b, project)| b.samples.iter().map(move |_| project.to_string()))
        .collect();
    if !vms.is_empty() {
        let col_i =
            |f: &dyn Fn(&VmSample) -> i64| vms.iter().map(|(_, v)| f(v)).collect::<Vec<i64>>();
        let col_f =
            |f: &dyn Fn(&VmSample) -> f64| vms.iter().map(|(_, v)| f(v)).collect::<Vec<f64>>();
        let col_of = |f: &dyn Fn(&VmSample) -> Option<f64>| {
            vms.iter().map(|(_, v)| f(v)).collect::<Vec<Option<f64>>>()
        };
        let to_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let ids: Vec<String> = vms.iter().map(|(id, _)| id.to_string()).collect();
        let unreadable: Vec<Option<i64>> = vms
            .iter()
            .map(|(_, v)| v.unreadable_procs.map(i64::from))
            .collect();
        pg.execute_native_later(
            "INSERT INTO vm_samples (instance_id, sampled_at_ms, elapsed_ms, cpu_pct, mem_pct,
                 disk_read, disk_write, net_in, net_out, rx_bytes_total, tx_bytes_total, proc_count,
                 net_attributed_in, net_attributed_out, net_unattributed_in, net_unattributed_out,
                 cpu_steal_pct, unreadable_procs, project)
             SELECT * FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::float8[], $5::float8[],
                 $6::float8[], $7::float8[], $8::float8[], $9::float8[], $10::int8[], $11::int8[],
                 $12::int8[], $13::float8[], $14::float8[], $15::float8[], $16::float8[],
                 $17::float8[], $18::int8[], $19::text[])",
            vec![
                Box::new(ids),
                Box::new(col_i(&|v| v.sampled_at_ms)),
                Box::new(col_i(&|v| to_i64(v.elapsed_ms))),
                Box::new(col_f(&|v| v.cpu_pct)),
                Box::new(col_f(&|v| v.mem_pct)),
                Box::new(col_f(&|v| v.disk_read_kib_per_sec)),
                Box::new(col_f(&|v| v.disk_write_kib_per_sec)),
                Box::new(col_f(&|v| v.net_in_kib_per_sec)),
                Box::new(col_f(&|v| v.net_out_kib_per_sec)),
                Box::new(col_i(&|v| to_i64(v.rx_bytes_total))),
                Box::new(col_i(&|v| to_i64(v.tx_bytes_total))),
                Box::new(col_i(&|v| i64::from(v.proc_count))),
                Box::new(col_of(&|v| {
                    v.net_attribution.map(|a| a.attributed_in_kib_per_sec)
                })),
                Box::new(col_of(&|v| {
                    v.net_attribution.map(|a| a.attributed_out_kib_per_sec)
                })),
                Box::new(col_of(&|v| {
                    v.net_attribution.map(|a| a.unattributed_in_kib_per_sec)
                })),
                Box::new(col_of(&|v| {
                    v.net_attribution.map(|a| a.unattributed_out_kib_per_sec)
                })),
                Box::new(col_of(&|v| v.cpu_steal_pct)),
                Box::new(unreadable),
                Box::new(vm_projects),
            ],
        )?;
    }
    let procs: Vec<(&str, i64, &ProcessSample, &str)> = batches
        .iter()
        .flat_map(|&(b, project)| {
            b.samples.iter().flat_map(move |s| {
                s.processes
                    .iter()
                    .flatten()
                    .map(move |p| (b.instance_id.as_str(), s.vm.sampled_at_ms, p, project))
            })
        })
        .collect();
    if procs.is_empty() {
        return Ok(());
    }
    let f = |g: &dyn Fn(&ProcessSample) -> f64| {
        procs.iter().map(|(_, _, p, _)| g(p)).collect::<Vec<f64>>()
    };
    let ids: Vec<&str> = procs.iter().map(|(id, _, _, _)| *id).collect();
    let at: Vec<i64> = procs.iter().map(|(_, t, _, _)| *t).collect();
    let projects: Vec<&str> = procs.iter().map(|(_, _, _, project)| *project).collect();
    let pid: Vec<i64> = procs.iter().map(|(_, _, p, _)| i64::from(p.pid)).collect();
    let start = f(&|p| p.start_time);
    let cmd: Vec<&str> = procs.iter().map(|(_, _, p, _)| p.cmd.as_str()).collect();
    let (cpu, mem) = (f(&|p| p.cpu_pct), f(&|p| p.mem_pct));
    let (dr, dw) = (
        f(&|p| p.disk_read_kib_per_sec),
        f(&|p| p.disk_write_kib_per_sec),
    );
    let (ni, no) = (f(&|p| p.net_in_kib_per_sec), f(&|p| p.net_out_kib_per_sec));
    let shut: Vec<Option<f64>> = procs.iter().map(|(_, _, p, _)| p.shutdown_time).collect();
    let unread: Vec<i64> = procs
        .iter()
        .map(|(_, _, p, _)| i64::from(p.unreadable.iter().any(|f| f.starts_with("disk_"))))
        .collect();
    if procs.len() >= COPY_MIN_ROWS {
        let mut rows = super::db::CopyRows::new();
        for k in 0..procs.len() {
            rows.row(14);
            rows.text(ids[k]);
            rows.int8(at[k]);
            rows.int8(pid[k]);
            rows.float8(Some(start[k]));
            rows.text(cmd[k]);
            for col in [&cpu, &mem, &dr, &dw, &ni, &no] {
                rows.float8(Some(col[k]));
            }
            rows.float8(shut[k]);
            rows.int8(unread[k]);
            rows.text(projects[k]);
        }
        pg.copy_in_binary(
            "COPY process_samples (instance_id, sampled_at_ms, pid, start_time, cmd, cpu_pct,
                 mem_pct, disk_read, disk_write, net_in, net_out, shutdown_time, disk_unreadable,
                 project)
             FROM STDIN (FORMAT binary)",
            rows,
        )?;
        return Ok(());
    }
    let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<String>>();
    pg.execute_native_later(
        "INSERT INTO process_samples (instance_id, sampled_at_ms, pid, start_time, cmd, cpu_pct,
             mem_pct, disk_read, disk_write, net_in, net_out, shutdown_time, disk_unreadable,
             project)
         SELECT * FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::float8[], $5::text[],
             $6::float8[], $7::float8[], $8::float8[], $9::float8[], $10::float8[], $11::float8[],
             $12::float8[], $13::int8[], $14::text[])",
        vec![
            Box::new(owned(&ids)),
            Box::new(at),
            Box::new(pid),
            Box::new(start),
            Box::new(owned(&cmd)),
            Box::new(cpu),
            Box::new(mem),
            Box::new(dr),
            Box::new(dw),
            Box::new(ni),
            Box::new(no),
            Box::new(shut),
            Box::new(unread),
            Box::new(owned(&projects)),
        ],
    )?;
    Ok(())
}
