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
    let mut usec = 0u64;
    if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
        Some(Duration::from_micros(usec / 2))
    } else {
        None
    }
}
