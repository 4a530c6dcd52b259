//! systemd integration: readiness, reload and watchdog notifications (no-ops outside systemd).

use std::sync::Arc;
use std::time::Duration;

use vmmon_collector::App;

/// The store is open and the listener bound.
pub fn notify_ready() {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
}

/// A reload is under way.
pub fn notify_reloading() {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Reloading]);
}

/// Pets the watchdog at half of `WatchdogSec=`, but only after a write round-trip through the
/// store's writer succeeds: a wedged writer (the part that loses data if it hangs) stops the pets.
pub fn spawn_watchdog(app: Arc<App>) {
    let Some(usec) = watchdog_usec() else {
        return;
    };
    let period = Duration::from_micros(usec / 2);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            match tokio::time::timeout(period, app.store.write(|_| Ok(()))).await {
                Ok(Ok(())) => {
                    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
                }
                _ => tracing::warn!("Store writer did not answer; withholding the watchdog ping."),
            }
        }
    });
}

/// `WATCHDOG_USEC` as libsystemd's `sd_watchdog_enabled` reads it: a positive number, and
/// `WATCHDOG_PID`, when set, must name this process.
fn watchdog_usec() -> Option<u64> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.trim().parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then_some(usec)
}
