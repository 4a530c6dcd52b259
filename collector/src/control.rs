//! Changing what agents do: persist the desired state first, then push it to a connected agent.

use std::time::Duration;

use vmmon_common::vocab::IntervalSecs;
use vmmon_common::wire::DesiredState;

use crate::app::App;
use crate::hub::PushOutcome;
use crate::store::{self, StoreError};

/// A change an operator asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Turn per-process sampling on or off.
    Monitoring(bool),
    /// Set the sampling interval.
    Interval(IntervalSecs),
}

/// Persists `change` for `instance_id` (which must exist) and delivers it if the agent is
/// connected. `Ok(None)` when the instance is unknown.
pub async fn apply(
    app: &App,
    instance_id: &str,
    change: Change,
) -> Result<Option<PushOutcome>, StoreError> {
    let id = instance_id.to_string();
    let desired = app
        .store
        .write(move |c| {
            let Some(row) = store::instances::get(c, &id)? else {
                return Ok(None);
            };
            let mut desired = row.desired;
            match change {
                Change::Monitoring(on) => desired.monitoring = on,
                Change::Interval(secs) => desired.interval_secs = secs.get(),
            }
            store::instances::set_desired(c, &id, desired, matches!(change, Change::Interval(_)))?;
            Ok(Some(desired))
        })
        .await?;
    let Some(desired): Option<DesiredState> = desired else {
        return Ok(None);
    };
    let timeout = Duration::from_millis(app.settings().config.command_timeout_ms);
    let mut outcome = app.hub.push(instance_id, desired, timeout).await;
    if outcome == PushOutcome::NotConnected {
        // Another collector sharing the store may have the agent.
        outcome = app
            .relay
            .push(&app.store, instance_id, desired, timeout)
            .await;
    }
    tracing::info!(instance_id, ?change, ?outcome, "Applied control change.");
    Ok(Some(outcome))
}
