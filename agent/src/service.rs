//! systemd integration: readiness and watchdog notifications (no-ops outside systemd).

use std::time::Duration;

/// Tells systemd the agent is ready (after its first sample was taken and spooled).
pub fn notify_ready() {
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        tracing::debug!(error = %e, "sd_notify READY failed.");
    }
}

/// Tells systemd the agent is reloading its configuration.
pub fn notify_reloading() {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Reloading]);
}

/// Pets the watchdog.
pub fn notify_watchdog() {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
}

/// How often to pet the watchdog: half of `WatchdogSec=`, or None when no watchdog is set.
pub fn watchdog_period() -> Option<Duration> {
    watchdog_usec().map(|usec| Duration::from_micros(usec / 2))
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
