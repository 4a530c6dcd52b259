//! Ingest: what happens to an agent's report batch, in order, in one write transaction.
//!
//! 1. [`checks`] refuse what can never be stored (and cut oversized `cmd`s) — before the store;
//! 2. [`store::samples::start_batch`] remembers the batch id for its instance (and reads the
//!    instance's time-axis state, owner and last counter reading with it); an id seen
//!    before stops here (a resend counts once); the samples are placed on the instance's time
//!    axis ([`crate::timeaxis`]: a stepped or fast guest clock corrected) and
//!    [`store::samples::insert_samples`] stores the raw VM and process samples;
//! 3. [`store::bandwidth::apply_batch`] adds the interval bytes to the 10-minute and daily
//!    bandwidth rollups;
//! 4. [`store::cdn::apply_batch`] adds the CDN deltas and access-log positions;
//! 5. [`store::instances::record_ingest`] marks the instance seen with its agent's drop count
//!    (also for a resend; not for a batch refused as another project's instance) and stores
//!    its time-axis state.
//!
//! Steps 2–5 run in one transaction of the store's writer, so a batch is stored whole or not at
//! all, and the agent's acknowledgement means "durable".

pub mod checks;

use vmmon_common::vocab::now_ms;
use vmmon_common::wire::ReportBatch;

use crate::app::App;
use crate::error::CollectorError;
use crate::store::{self, AgentTokenRow};
use crate::telemetry::Anomaly;
use crate::timeaxis;

/// Checks and stores `batch` from an agent holding `token`; `Ok(true)` when it was new, `Ok(false)`
/// for a batch id stored before (nothing is counted again).
///
/// Errors: [`CollectorError::InvalidBatch`] for a batch that can never be stored (the agent drops
/// it), [`CollectorError::Store`] when the store failed (the agent keeps it and retries).
pub async fn ingest(
    app: &App,
    token: &AgentTokenRow,
    mut batch: ReportBatch,
) -> Result<bool, CollectorError> {
    // The semaphore is never closed, so acquiring only waits.
    let _slot = app.ingest_slots.acquire().await.ok();
    let refused = |why: String| {
        app.telemetry.anomaly(Anomaly::BatchRefused);
        CollectorError::InvalidBatch(why)
    };
    checks::check_cdn_permission(token, &batch).map_err(refused)?;
    if !batch.cdn.is_empty() {
        keep_bound_domains(app, token, &mut batch).await?;
    }
    checks::cap_cmds(&mut batch);
    checks::clamp_percentages(&mut batch);
    checks::validate_batch(&batch).map_err(refused)?;
    let retention_days = app.settings().config.raw_retention_days;
    checks::validate_times(&batch, now_ms(), retention_days).map_err(refused)?;
    let (samples, process_rows) = (
        batch.samples.len(),
        batch
            .samples
            .iter()
            .map(|s| s.processes.as_ref().map_or(0, Vec::len))
            .sum::<usize>(),
    );
    let started = std::time::Instant::now();
    // The writer stores this batch together with the others waiting for the same transaction
    // (`store_batches`).
    let instance_id = batch.instance_id.clone();
    let (stored, anomalies) = app
        .store
        .write_grouped(Received {
            batch,
            received_ms: now_ms(),
            project: token.project.clone(),
        })
        .await?
        .map_err(|ForeignInstance| {
            CollectorError::NotRegistered(format!(
                "instance {instance_id:?} is now registered by another project: \
                 this agent's registration of it ended"
            ))
        })?;
    let t = &app.telemetry;
    t.store_write.observe(started.elapsed());
    if stored {
        t.batch_stored(samples, process_rows);
    }
    for a in anomalies {
        t.anomaly(match a {
            timeaxis::ClockAnomaly::Stepped { .. } => Anomaly::ClockStep,
            timeaxis::ClockAnomaly::Ahead { .. } => Anomaly::ClockAhead,
        });
    }
    Ok(stored)
}

/// Drops the CDN deltas of domains that no CDN user bound to the edge token owns (each drop is
/// logged with its bytes): an edge token bills only its own customers' domains. The rest of the
/// batch, and its access-log positions, are kept, so the lines are not read again.
async fn keep_bound_domains(
    app: &App,
    token: &AgentTokenRow,
    batch: &mut ReportBatch,
) -> Result<(), CollectorError> {
    let id = token.id;
    let allowed = app
        .store
        .read(move |c| store::cdn::token_domains(c, id))
        .await?;
    let before = batch.cdn.len();
    let mut dropped_bytes = 0u64;
    batch.cdn.retain(|d| {
        let ok = allowed.binary_search(&d.domain).is_ok();
        if !ok {
            dropped_bytes = dropped_bytes.saturating_add(d.bytes);
        }
        ok
    });
    if batch.cdn.len() < before {
        app.telemetry.anomaly(Anomaly::CdnForeignDomain);
        tracing::warn!(
            instance_id = %batch.instance_id, token_id = id, deltas = before - batch.cdn.len(),
            bytes = dropped_bytes,
            "Dropped CDN traffic of domains no CDN user bound to this edge token owns."
        );
    }
    Ok(())
}

/// A checked batch on its way to the store, with when the collector received it (epoch ms).
pub struct Received {
    /// The batch (its times are placed on the time axis when it is stored).
    pub batch: ReportBatch,
    /// When the collector received it, epoch ms.
    pub received_ms: i64,
    /// The project of the agent's token: the rows are stored with it (registration refuses
    /// another project's token, so it is the instance's; a batch for an instance removed and
    /// registered by another project while this agent was still connected is refused:
    /// [`ForeignInstance`]).
    pub project: String,
}

/// A batch's instance id is registered by another project than the batch's agent token (it was
/// removed and taken while the agent was still connected): the batch is neither remembered nor
/// stored, and the agent is told it is no longer registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForeignInstance;

/// What storing one batch came to: whether it was new and the clock corrections made placing
/// it, or [`ForeignInstance`].
pub type Stored = Result<(bool, Vec<timeaxis::ClockAnomaly>), ForeignInstance>;

impl store::GroupedWrite for Received {
    type Output = Stored;

    fn run_group(
        conn: &crate::store::Connection,
        writes: Vec<Received>,
    ) -> store::Result<Vec<Self::Output>> {
        let mut writes = writes;
        store_batches(conn, &mut writes)
    }
}

/// Steps 2–5 for the batches the writer found waiting (in arrival order), in set-based steps:
/// one dedup-and-state statement for all of them, then each table's rows of all of them in one
/// statement on PostgreSQL. A later batch of an instance continues the time axis and the
/// bandwidth counter from the earlier one. Per batch: whether it was new and the clock
/// corrections made placing it, or [`ForeignInstance`].
pub fn store_batches(
    conn: &crate::store::Connection,
    writes: &mut [Received],
) -> store::Result<Vec<Stored>> {
    let starts = {
        let keys: Vec<(&ReportBatch, &str, i64)> = writes
            .iter()
            .map(|w| (&w.batch, w.project.as_str(), w.received_ms))
            .collect();
        store::samples::start_batches(conn, &keys)?
    };
    // The time-axis state per instance as this group leaves it (`None` until it has one).
    let mut clocks: std::collections::BTreeMap<String, Option<timeaxis::ClockState>> =
        std::collections::BTreeMap::new();
    let mut out = Vec::with_capacity(writes.len());
    let mut owners = Vec::with_capacity(writes.len());
    // The project each new batch's rows are stored with (the instance's).
    let mut projects: Vec<Option<String>> = Vec::with_capacity(writes.len());
    for (w, start) in writes.iter_mut().zip(starts) {
        let mut anomalies = Vec::new();
        let start = match start {
            store::samples::Start::New(start) => start,
            other => {
                out.push(if other == store::samples::Start::Foreign {
                    Err(ForeignInstance)
                } else {
                    Ok((false, anomalies))
                });
                owners.push(None);
                projects.push(None);
                continue;
            }
        };
        projects.push(Some(start.project));
        let state = match clocks.get(&w.batch.instance_id) {
            Some(carried) => *carried,
            None => start.clock,
        };
        let placed = place_on_time_axis(&mut w.batch, w.received_ms, state, &mut anomalies);
        clocks.insert(w.batch.instance_id.clone(), placed);
        out.push(Ok((true, anomalies)));
        owners.push(Some((start.owner, start.last_reading)));
    }
    let new: Vec<(&ReportBatch, &str)> = writes
        .iter()
        .zip(&projects)
        .filter_map(|(w, p)| Some((&w.batch, p.as_deref()?)))
        .collect();
    store::samples::insert_samples_many(conn, &new)?;
    let flows: Vec<store::bandwidth::BatchFlow<'_>> = writes
        .iter()
        .zip(owners)
        .filter_map(|(w, o)| {
            o.map(|(owner, start)| store::bandwidth::BatchFlow {
                batch: &w.batch,
                now_ms: w.received_ms,
                owner,
                start,
            })
        })
        .collect();
    store::bandwidth::apply_batches(conn, &flows)?;
    for (w, project) in writes.iter().zip(&projects) {
        if let Some(project) = project {
            store::cdn::apply_batch(conn, &w.batch, project, w.received_ms)?;
        }
    }
    // Step 5 for every batch not refused (a resend too: it has no stored project here, the
    // token's is the instance's), with each instance's clock state as this group leaves it
    // (given once, with its first new batch). A refused batch marks nothing: another project's
    // instance is not seen by this agent.
    let mut seen = Vec::with_capacity(writes.len());
    let mut clocked = std::collections::HashSet::new();
    for ((w, project), stored) in writes.iter().zip(&projects).zip(&out) {
        if stored.is_err() {
            continue;
        }
        let id = w.batch.instance_id.as_str();
        let clock = match project {
            Some(_) if clocked.insert(id) => clocks.get(id).copied().flatten(),
            _ => None,
        };
        seen.push(seen_of(
            &w.batch,
            project.as_deref().unwrap_or(&w.project),
            w.received_ms,
            clock,
        ));
    }
    store::instances::record_ingest(conn, &seen)?;
    Ok(out)
}

/// Step 5: what the batch leaves on its instance's row: seen at its newest sample (never after
/// `now_ms`), its agent's drop count, and `clock`, the instance's time-axis state to store.
fn seen_of<'a>(
    batch: &'a ReportBatch,
    project: &'a str,
    now_ms: i64,
    clock: Option<timeaxis::ClockState>,
) -> store::instances::Seen<'a> {
    let newest = batch
        .samples
        .iter()
        .map(|s| s.vm.sampled_at_ms)
        .max()
        .unwrap_or(now_ms);
    store::instances::Seen {
        key: store::InstanceKey {
            project,
            instance_id: &batch.instance_id,
        },
        seen_ms: newest.min(now_ms),
        dropped_samples_total: batch.dropped_samples_total,
        clock,
    }
}

/// Steps 2–5 for one batch the caller keeps (tests, benches, tools): works on a copy. The
/// ingest path hands batches to the writer ([`Received`]), which runs [`store_batches`] on all
/// the batches waiting for one transaction. `now_ms` is when the collector received the batch.
/// The rows get the registered instance's project (`''` for an instance not registered).
pub fn store_batch(
    conn: &crate::store::Connection,
    batch: &ReportBatch,
    now_ms: i64,
) -> store::Result<bool> {
    let project = store::bandwidth::owner(conn, &batch.instance_id)?
        .map(|(project, _)| project)
        .unwrap_or_default();
    let mut one = [Received {
        batch: batch.clone(),
        received_ms: now_ms,
        project,
    }];
    Ok(store_batches(conn, &mut one)?
        .pop()
        .is_some_and(|stored| matches!(stored, Ok((true, _)))))
}

/// Moves the batch's sample times onto the instance's time axis ([`crate::timeaxis`]) in
/// place (no copy of the batch on the ingest path), continuing from `state` (the instance's
/// state before this batch); returns the state after it. Each correction is logged.
fn place_on_time_axis(
    batch: &mut ReportBatch,
    received_ms: i64,
    mut state: Option<timeaxis::ClockState>,
    anomalies: &mut Vec<timeaxis::ClockAnomaly>,
) -> Option<timeaxis::ClockState> {
    for sample in &mut batch.samples {
        let raw = sample.vm.sampled_at_ms;
        let link = timeaxis::Monotonic {
            elapsed_ms: i64::try_from(sample.vm.elapsed_ms).unwrap_or(i64::MAX),
            uptime_ms: sample.vm.uptime_ms.and_then(|u| i64::try_from(u).ok()),
        };
        let (placed, next, anomaly) = timeaxis::place(state, raw, link, received_ms);
        state = Some(next);
        anomalies.extend(anomaly);
        match anomaly {
            Some(timeaxis::ClockAnomaly::Stepped { step_ms }) => tracing::warn!(
                instance_id = %batch.instance_id, step_ms, sampled_at_ms = raw, placed_at_ms = placed,
                "Agent clock stepped; placing its samples by its monotonic clock."
            ),
            Some(timeaxis::ClockAnomaly::Ahead { ahead_ms }) => tracing::warn!(
                instance_id = %batch.instance_id, ahead_ms, sampled_at_ms = raw, placed_at_ms = placed,
                "Agent clock is ahead of the collector; placing the sample at its receive time."
            ),
            None => {}
        }
        sample.vm.sampled_at_ms = placed;
    }
    state
}
