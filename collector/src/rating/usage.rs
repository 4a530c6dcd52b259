//! From stored agent samples to one instance's usage during one period (pure arithmetic).
//!
//! A VM sample taken at `t` with `elapsed_ms` describes the window `[t − elapsed, t)`: the
//! instance was up (its agent was sampling) and its CPU was busy `cpu_pct` % of the time. Usage of
//! a period `[b, e)` is therefore the part of each window inside the period, so the samples read
//! for a period are those taken in `[b, e)` plus each instance's first one at or after `e` (whose
//! window reaches back into the period). Network bytes come from the cumulative counters like the
//! mana_api flow rollup: the difference of two consecutive readings is spread over their interval
//! in proportion to time (in whole bytes, cumulative floor, so consecutive periods add up to the
//! counter difference exactly); the first reading is only a baseline; a counter that went
//! backwards (reboot) contributes nothing for that interval and restarts from the new value.

use rust_decimal::Decimal;

/// Longest window one sample may describe (an agent's interval is at most a day).
pub const MAX_WINDOW_MS: i64 = 86_400_000;
/// Counter readings further apart than this are not attributed (like the flow rollup).
pub const MAX_GAP_MS: i64 = 31 * 86_400_000;
const GIB: u64 = 1024 * 1024 * 1024;

/// One stored VM sample, as far as rating needs it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleRow {
    /// Sample time, epoch ms.
    pub at_ms: i64,
    /// Window the rates cover, ms.
    pub elapsed_ms: i64,
    /// Busy share of all CPUs during the window, %.
    pub cpu_pct: f64,
    /// Cumulative received bytes.
    pub rx_bytes: u64,
    /// Cumulative sent bytes.
    pub tx_bytes: u64,
}

/// The inventory and ownership of an instance.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InstanceInfo {
    /// Instance id.
    pub instance_id: String,
    /// Project (the rating scope, `project_id`).
    pub project: String,
    /// Region.
    pub region: String,
    /// Vendor.
    pub party: String,
    /// Hostname.
    pub hostname: String,
    /// CPUs.
    pub cpu_count: u32,
    /// MemTotal, bytes.
    pub mem_total_bytes: u64,
    /// Disk size, bytes.
    pub disk_total_bytes: u64,
    /// Operating system.
    pub os: String,
    /// Agent version.
    pub agent_version: String,
}

/// What one instance used during one period.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceUsage {
    /// The instance.
    pub info: InstanceInfo,
    /// Time the instance was up during the period, ms.
    pub uptime_ms: i64,
    /// CPU time used, core-seconds.
    pub cpu_core_secs: Decimal,
    /// Bytes received during the period.
    pub rx_bytes: u64,
    /// Bytes sent during the period.
    pub tx_bytes: u64,
}

/// Whole GiB, rounded to nearest; at least 1 for a non-zero size (as mana_api's sizes).
pub fn gib(bytes: u64) -> u64 {
    if bytes == 0 {
        0
    } else {
        bytes.saturating_add(GIB / 2) / GIB
    }
    .max(u64::from(bytes != 0))
}

fn overlap(a0: i64, a1: i64, b: i64, e: i64) -> i64 {
    (a1.min(e) - a0.max(b)).max(0)
}

/// Bytes of `delta` moved during `[t0, t1)` that fall in `[b, e)`, proportional to time, with the
/// cumulative floor so adjacent periods add up to `delta`.
pub fn bytes_in(t0: i64, t1: i64, delta: u64, b: i64, e: i64) -> u64 {
    if t1 <= t0 || overlap(t0, t1, b, e) == 0 {
        return 0;
    }
    let span = (t1 - t0) as u128;
    let upto = |t: i64| -> u128 { u128::from(delta) * ((t.clamp(t0, t1) - t0) as u128) / span };
    (upto(e) - upto(b)) as u64
}

/// Usage of `info` during `[b, e)` from `prev` (its last sample before `b`, the counter baseline)
/// and `samples` (taken in `[b, e)` plus its first one at or after `e`), in any order. None when
/// the instance was neither up nor moved bytes during the period.
pub fn usage(
    info: &InstanceInfo,
    prev: Option<SampleRow>,
    samples: &[SampleRow],
    b: i64,
    e: i64,
) -> Option<InstanceUsage> {
    let mut sorted: Vec<SampleRow> = samples.to_vec();
    sorted.sort_by_key(|s| s.at_ms);
    let mut uptime_ms = 0i64;
    let mut cpu_core_ms = Decimal::ZERO;
    let cpus = Decimal::from(info.cpu_count);
    for s in &sorted {
        let window = s.elapsed_ms.clamp(0, MAX_WINDOW_MS);
        let o = overlap(s.at_ms - window, s.at_ms, b, e);
        if o == 0 {
            continue;
        }
        uptime_ms += o;
        let pct = super::decimal::from_f64(s.cpu_pct.clamp(0.0, 100.0));
        cpu_core_ms += pct * cpus * Decimal::from(o) / Decimal::ONE_HUNDRED;
    }
    let (mut rx, mut tx) = (0u64, 0u64);
    let mut last = prev;
    for cur in sorted {
        if let Some(l) = last {
            if cur.at_ms <= l.at_ms {
                continue;
            }
            if cur.at_ms - l.at_ms <= MAX_GAP_MS {
                if cur.rx_bytes >= l.rx_bytes {
                    rx += bytes_in(l.at_ms, cur.at_ms, cur.rx_bytes - l.rx_bytes, b, e);
                }
                if cur.tx_bytes >= l.tx_bytes {
                    tx += bytes_in(l.at_ms, cur.at_ms, cur.tx_bytes - l.tx_bytes, b, e);
                }
            }
        }
        last = Some(cur);
    }
    if uptime_ms == 0 && rx == 0 && tx == 0 {
        return None;
    }
    Some(InstanceUsage {
        info: info.clone(),
        uptime_ms,
        cpu_core_secs: cpu_core_ms / Decimal::ONE_THOUSAND,
        rx_bytes: rx,
        tx_bytes: tx,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 1_700_002_800_000; // a whole hour
    const MIN: i64 = 60_000;

    fn s(at: i64, elapsed: i64, cpu: f64, rx: u64, tx: u64) -> SampleRow {
        SampleRow {
            at_ms: at,
            elapsed_ms: elapsed,
            cpu_pct: cpu,
            rx_bytes: rx,
            tx_bytes: tx,
        }
    }

    fn info(cpus: u32) -> InstanceInfo {
        InstanceInfo {
            instance_id: "i".into(),
            project: "p".into(),
            cpu_count: cpus,
            ..InstanceInfo::default()
        }
    }

    #[test]
    fn windows_are_clipped_to_the_period() {
        // Baseline at H (elapsed 0), then every 10 minutes up to H+60m, whose window is the last
        // 10 minutes of the period.
        let mut rows = vec![s(H, 0, 0.0, 1000, 0)];
        for k in 1..=6 {
            rows.push(s(
                H + k * 10 * MIN,
                10 * MIN,
                50.0,
                1000 + k as u64 * 600,
                0,
            ));
        }
        let u = usage(&info(2), None, &rows, H, H + 60 * MIN).unwrap();
        assert_eq!(u.uptime_ms, 3_600_000);
        assert_eq!(u.cpu_core_secs, Decimal::from(3600));
        assert_eq!((u.rx_bytes, u.tx_bytes), (3600, 0));
        // The next period sees nothing of these samples' windows.
        assert!(
            usage(
                &info(2),
                rows.last().copied(),
                &rows[6..],
                H + 60 * MIN,
                H + 120 * MIN
            )
            .is_none()
        );
    }

    #[test]
    fn a_window_across_the_boundary_is_split() {
        let rows = [s(H + 5 * MIN, 10 * MIN, 100.0, 2000, 10)];
        let prev = Some(s(H - 5 * MIN, 10 * MIN, 0.0, 1000, 10));
        let before = usage(&info(1), prev, &rows, H - 60 * MIN, H).unwrap();
        let after = usage(&info(1), prev, &rows, H, H + 60 * MIN).unwrap();
        assert_eq!(before.uptime_ms, 5 * MIN);
        assert_eq!(after.uptime_ms, 5 * MIN);
        assert_eq!(before.rx_bytes + after.rx_bytes, 1000);
        assert_eq!(after.rx_bytes, 500);
        assert_eq!(after.cpu_core_secs, Decimal::from(300));
    }

    #[test]
    fn counter_resets_and_odd_splits() {
        // Reboot: counter back to 100 → that interval moves nothing, then 100 → 400.
        let rows = [
            s(H + MIN, MIN, 0.0, 100, 0),
            s(H + 2 * MIN, MIN, 0.0, 400, 0),
        ];
        let prev = Some(s(H, 0, 0.0, 5000, 0));
        assert_eq!(
            usage(&info(1), prev, &rows, H, H + 60 * MIN)
                .unwrap()
                .rx_bytes,
            300
        );
        // 10 bytes over 3 periods of equal length: 3 + 3 + 4 (cumulative floor), summing to 10.
        let parts: Vec<u64> = (0..3).map(|i| bytes_in(0, 3, 10, i, i + 1)).collect();
        assert_eq!(parts, vec![3, 3, 4]);
        assert_eq!(gib(0), 0);
        assert_eq!(gib(1), 1);
        assert_eq!(gib(4 * GIB - 100), 4);
    }
}
