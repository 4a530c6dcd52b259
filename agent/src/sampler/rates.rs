//! Pure counter → rate arithmetic: no I/O, no clock, so every rule is table-tested.
//!
//! The one rule shared by every rate: a counter that went backwards (wrap, reset, a device that
//! vanished and came back) or an elapsed time of zero yields `None`, which callers report as 0 and
//! treat as a fresh baseline. A negative or huge rate is never produced.

use std::time::Duration;

/// Bytes in one KB as the API uses it (1 KB = 1024 B).
pub const BYTES_PER_KIB: f64 = 1024.0;

/// `cur − prev`, or `None` when the counter went backwards.
#[must_use]
pub fn counter_delta(prev: u64, cur: u64) -> Option<u64> {
    cur.checked_sub(prev)
}

/// Per-second rate of a monotonic counter; `None` when it went backwards or `elapsed` is zero.
#[must_use]
pub fn per_sec(prev: u64, cur: u64, elapsed: Duration) -> Option<f64> {
    let delta = counter_delta(prev, cur)?;
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return None;
    }
    Some(delta as f64 / secs)
}

/// KB/s (1 KB = 1024 B) of a byte counter; 0 when [`per_sec`] has no answer.
#[must_use]
pub fn kib_per_sec(prev_bytes: u64, cur_bytes: u64, elapsed: Duration) -> f64 {
    per_sec(prev_bytes, cur_bytes, elapsed).map_or(0.0, |b| b / BYTES_PER_KIB)
}

/// The aggregate `cpu ` line of `/proc/stat`, reduced to what the shares need (clock ticks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuTimes {
    /// user + nice + system + idle + iowait + irq + softirq + steal: all the CPUs' time. Guest
    /// time is already included in user and nice, so it is not added again.
    pub total: u64,
    /// idle + iowait.
    pub idle: u64,
    /// steal: time the hypervisor ran something else while this guest wanted the CPU; `None`
    /// on kernels that do not print it.
    pub steal: Option<u64>,
}

/// Share of the whole VM the guest actually ran between two `/proc/stat` readings, 0–100:
/// (total − idle − steal) / total. Steal is not the guest's use (the scheduler does not charge
/// it to any task: `kernel/sched/cputime.c` `account_process_tick` subtracts it), so processes,
/// measured against wall time × CPUs, sum to this figure.
///
/// `None` when either sum went backwards. Idle can lag total by a tick on some kernels
/// (iowait is known to decrease); the result is clamped to 0–100 rather than trusted blindly.
#[must_use]
pub fn vm_cpu_pct(prev: CpuTimes, cur: CpuTimes) -> Option<f64> {
    let total = counter_delta(prev.total, cur.total)?;
    let idle = counter_delta(prev.idle, cur.idle)?;
    if total == 0 {
        return None;
    }
    let steal = match (prev.steal, cur.steal) {
        (Some(p), Some(c)) => counter_delta(p, c).unwrap_or(0),
        _ => 0,
    };
    let busy = total.saturating_sub(idle).saturating_sub(steal);
    Some(clamp_pct(busy as f64 / total as f64 * 100.0))
}

/// Share of the whole VM withheld by the hypervisor (steal) between two readings, 0–100;
/// `None` without a steal column or when a sum went backwards.
#[must_use]
pub fn vm_steal_pct(prev: CpuTimes, cur: CpuTimes) -> Option<f64> {
    let total = counter_delta(prev.total, cur.total)?;
    let steal = counter_delta(prev.steal?, cur.steal?)?;
    if total == 0 {
        return None;
    }
    Some(clamp_pct(steal as f64 / total as f64 * 100.0))
}

/// A process's share of the whole VM, 0–100: `cpu_ticks` of CPU time used over `elapsed`
/// of wall time on a VM with `ncpu` CPUs ticking at `clk_tck` per second. Processes therefore
/// sum to the VM's busy share. `None` when `elapsed`, `clk_tck` or `ncpu` is zero.
#[must_use]
pub fn process_cpu_pct(cpu_ticks: u64, elapsed: Duration, clk_tck: u64, ncpu: u32) -> Option<f64> {
    let capacity_ticks = elapsed.as_secs_f64() * clk_tck as f64 * f64::from(ncpu);
    if capacity_ticks <= 0.0 {
        return None;
    }
    Some(clamp_pct(cpu_ticks as f64 / capacity_ticks * 100.0))
}

/// `part / whole × 100`, clamped to 0–100; 0 when `whole` is 0.
#[must_use]
pub fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        return 0.0;
    }
    clamp_pct(part as f64 / whole as f64 * 100.0)
}

fn clamp_pct(v: f64) -> f64 {
    if v.is_nan() { 0.0 } else { v.clamp(0.0, 100.0) }
}

#[cfg(test)]
mod tests;
